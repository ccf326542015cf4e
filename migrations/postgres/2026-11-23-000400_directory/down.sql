DROP TABLE directory_replication;
DROP TABLE ldap_names;
DROP TABLE directory_entries;
