DROP TABLE imported_ephemeral_keys;
