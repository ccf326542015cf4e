-- Directory search by word ranges (issue 13: 5.5 million entries, 8 concurrent clients).
--
-- `directory_search_words` holds one row per word of each entry's folded key (`search_all`),
-- with the whole key (` jean dupont finances `, spaces at both ends) and the flags the search
-- filters on. A btree on (word, mxid), covering the rest, answers a search term as one range
-- scan in word order (`word >= 'dup' AND word < 'duq'`, or `word = 'dupont'` for a whole word)
-- that stops as soon as it has its candidates: the other terms and the flags are checked on
-- the index tuples themselves (index-only scan), with no visit to the entries. A search tier
-- is driven by its rarest term as the planner estimates it (`annuaire_word_rows`).
--
-- A GIN bitmap is built whole before a limit applies, and a statement over 32 partitions took
-- longer to plan than to run: a single term (`j`, `dupont`) and a tier with one uncommon term
-- now read a few hundred index tuples. Tiers whose terms are all common (`thomas mul`) still
-- intersect the posting lists of `directory_search` (a range scan would read most of its
-- driving range for the few entries that have the others), as does the operators' search.
-- (`(word, mxid)` rather than `word` alone: the triggers delete an entry's rows by word.)
CREATE TABLE directory_search_words (
    word TEXT COLLATE "C" NOT NULL,
    mxid TEXT NOT NULL,
    words TEXT NOT NULL,
    listed BOOLEAN NOT NULL,
    external BOOLEAN NOT NULL
);

INSERT INTO directory_search_words (word, mxid, words, listed, external)
SELECT w.word, e.mxid, ' ' || e.search_all || ' ', e.visibility = 'visible' AND e.active, e.external
FROM directory_entries AS e, unnest(string_to_array(e.search_all, ' ')) AS w(word)
WHERE w.word <> '';

CREATE INDEX directory_search_words_range
    ON directory_search_words (word, mxid) INCLUDE (words, listed, external);
-- Common words (organisation labels, frequent first names) must be known to the planner one by
-- one for the driving term to be chosen well.
ALTER TABLE directory_search_words ALTER COLUMN word SET STATISTICS 1000;
-- A search reads a few hundred index tuples: starting parallel workers would cost more than that.
ALTER TABLE directory_search_words SET (parallel_workers = 0);
ANALYZE directory_search_words;

-- The planner's estimate of the rows of a word range: a statement's plan, not a count, so that
-- it costs the same for `j` as for `dupont` (VOLATILE: PostgreSQL runs EXPLAIN in no other kind).
CREATE FUNCTION annuaire_word_rows(lo text, hi text) RETURNS float8
LANGUAGE plpgsql VOLATILE STRICT AS $$
DECLARE
    plan json;
BEGIN
    EXECUTE format(
        'EXPLAIN (FORMAT JSON) SELECT 1 FROM directory_search_words WHERE word >= %L AND word < %L',
        lo, hi) INTO plan;
    RETURN (plan -> 0 -> 'Plan' ->> 'Plan Rows')::float8;
END
$$;

-- The triggers that keep `directory_search` in step keep the words too.
CREATE OR REPLACE FUNCTION directory_search_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO directory_search (mxid, visibility, active, external, organisation_key, search_all)
    SELECT mxid, visibility, active, external, organisation_key, search_all FROM inserted;
    INSERT INTO directory_search_words (word, mxid, words, listed, external)
    SELECT w.word, i.mxid, ' ' || i.search_all || ' ', i.visibility = 'visible' AND i.active,
           i.external
    FROM inserted AS i, unnest(string_to_array(i.search_all, ' ')) AS w(word)
    WHERE w.word <> '';
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION directory_search_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE directory_search
    SET mxid = NEW.mxid, visibility = NEW.visibility, active = NEW.active,
        external = NEW.external, organisation_key = NEW.organisation_key,
        search_all = NEW.search_all
    WHERE mxid = OLD.mxid;
    DELETE FROM directory_search_words
    WHERE word = ANY (string_to_array(OLD.search_all, ' ')) AND mxid = OLD.mxid;
    INSERT INTO directory_search_words (word, mxid, words, listed, external)
    SELECT w.word, NEW.mxid, ' ' || NEW.search_all || ' ',
           NEW.visibility = 'visible' AND NEW.active, NEW.external
    FROM unnest(string_to_array(NEW.search_all, ' ')) AS w(word)
    WHERE w.word <> '';
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION directory_search_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM directory_search WHERE mxid = OLD.mxid;
    DELETE FROM directory_search_words
    WHERE word = ANY (string_to_array(OLD.search_all, ' ')) AND mxid = OLD.mxid;
    RETURN NULL;
END
$$;
