DROP TABLE admin_audit;
DROP TABLE admin_revoked_tokens;
DROP TABLE admin_accounts;
