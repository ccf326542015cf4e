DROP TABLE identity_changes;
