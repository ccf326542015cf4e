ALTER TABLE directory_entries
    ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', search_all)) STORED;
CREATE INDEX directory_entries_search ON directory_entries USING GIN (search_tsv);
DROP TRIGGER directory_search_delete ON directory_entries;
DROP TRIGGER directory_search_update ON directory_entries;
DROP TRIGGER directory_search_insert ON directory_entries;
DROP FUNCTION directory_search_deleted();
DROP FUNCTION directory_search_updated();
DROP FUNCTION directory_search_inserted();
DROP TABLE directory_search;
DROP FUNCTION annuaire_search_lexemes(text);
