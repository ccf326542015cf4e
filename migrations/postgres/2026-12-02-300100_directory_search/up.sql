-- Directory search at national scale (5.5 million entries).
--
-- The search reads `directory_search`, a copy of each entry's searchable fields kept in step by
-- the triggers below, for two reasons:
-- * It is hash partitioned. A search asks for at most a few hundred candidates; a scan of a
--   partitioned table goes through the partitions in turn and stops as soon as it has them, so
--   a common prefix (`jea`, `m`) costs one partition's postings instead of the whole directory's
--   (a GIN bitmap is built whole before the first row comes out).
-- * Its GIN index holds every word and every word prefix of up to 8 letters as a lexeme
--   (`annuaire_search_lexemes`: `dupont` gives `dupont`, `d*`, `du*`, ..., `dupont*`). A
--   prefix is one posting list rather than the union of every word it starts, and GIN
--   intersects the terms of a query by skipping through the longer lists. Longer prefixes are
--   cut to 8 letters, and the exact ranking in Rust checks the whole term.
-- Visibility, activity and the external flag are in each row, so that filtering on them needs
-- no visit to the entries. The operators' search (every entry) uses the same index.
CREATE FUNCTION annuaire_search_lexemes(words text) RETURNS tsvector
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    w text;
    n int;
    lexemes text[] := '{}';
BEGIN
    FOREACH w IN ARRAY string_to_array(words, ' ') LOOP
        CONTINUE WHEN w = '';
        lexemes := lexemes || w;
        FOR n IN 1 .. least(length(w), 8) LOOP
            lexemes := lexemes || (left(w, n) || '*');
        END LOOP;
    END LOOP;
    -- Sorted, duplicates removed.
    RETURN array_to_tsvector(lexemes);
END
$$;

CREATE TABLE directory_search (
    mxid TEXT PRIMARY KEY NOT NULL,
    visibility TEXT NOT NULL,
    active BOOLEAN NOT NULL,
    external BOOLEAN NOT NULL,
    organisation_key TEXT NOT NULL,
    search_all TEXT NOT NULL
) PARTITION BY HASH (mxid);

DO $$
BEGIN
    FOR i IN 0..31 LOOP
        EXECUTE format(
            'CREATE TABLE directory_search_%s PARTITION OF directory_search '
            'FOR VALUES WITH (MODULUS 32, REMAINDER %s)', i, i);
    END LOOP;
END
$$;

INSERT INTO directory_search (mxid, visibility, active, external, organisation_key, search_all)
SELECT mxid, visibility, active, external, organisation_key, search_all FROM directory_entries;

CREATE INDEX directory_search_lexemes
    ON directory_search USING gin (annuaire_search_lexemes(search_all));

-- Inserts: one statement per statement (bulk imports insert thousands of rows at once).
CREATE FUNCTION directory_search_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO directory_search (mxid, visibility, active, external, organisation_key, search_all)
    SELECT mxid, visibility, active, external, organisation_key, search_all FROM inserted;
    RETURN NULL;
END
$$;
CREATE TRIGGER directory_search_insert AFTER INSERT ON directory_entries
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION directory_search_inserted();

-- Updates: only when a searched field changes (an avatar or a name source does not).
CREATE FUNCTION directory_search_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE directory_search
    SET mxid = NEW.mxid, visibility = NEW.visibility, active = NEW.active,
        external = NEW.external, organisation_key = NEW.organisation_key,
        search_all = NEW.search_all
    WHERE mxid = OLD.mxid;
    RETURN NULL;
END
$$;
CREATE TRIGGER directory_search_update AFTER UPDATE ON directory_entries
    FOR EACH ROW
    WHEN (OLD.mxid IS DISTINCT FROM NEW.mxid
          OR OLD.visibility IS DISTINCT FROM NEW.visibility
          OR OLD.active IS DISTINCT FROM NEW.active
          OR OLD.external IS DISTINCT FROM NEW.external
          OR OLD.organisation_key IS DISTINCT FROM NEW.organisation_key
          OR OLD.search_all IS DISTINCT FROM NEW.search_all)
    EXECUTE FUNCTION directory_search_updated();

CREATE FUNCTION directory_search_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM directory_search WHERE mxid = OLD.mxid;
    RETURN NULL;
END
$$;
CREATE TRIGGER directory_search_delete AFTER DELETE ON directory_entries
    FOR EACH ROW EXECUTE FUNCTION directory_search_deleted();

-- The entries' own full-text index is no longer read.
DROP INDEX directory_entries_search;
ALTER TABLE directory_entries DROP COLUMN search_tsv;
