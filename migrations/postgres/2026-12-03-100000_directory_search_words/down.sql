CREATE OR REPLACE FUNCTION directory_search_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO directory_search (mxid, visibility, active, external, organisation_key, search_all)
    SELECT mxid, visibility, active, external, organisation_key, search_all FROM inserted;
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
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION directory_search_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM directory_search WHERE mxid = OLD.mxid;
    RETURN NULL;
END
$$;

DROP FUNCTION annuaire_word_rows(text, text);
DROP TABLE directory_search_words;
