DROP TABLE directory_replication;
DROP TABLE ldap_names;
DROP TRIGGER directory_entries_fts_update;
DROP TRIGGER directory_entries_fts_delete;
DROP TRIGGER directory_entries_fts_insert;
DROP TABLE directory_fts;
DROP TABLE directory_entries;
