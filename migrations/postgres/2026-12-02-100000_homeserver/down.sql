ALTER TABLE directory_entries DROP COLUMN user_displayname;
DROP TABLE homeserver_unbinds;
DROP TABLE homeserver_tokens;
