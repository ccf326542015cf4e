-- Administrators of the admin API. `source` is 'local' (argon2id `password_hash`) or 'ldap'
-- (no hash: the LDAP bind decides). Failed logins in a row and the lock live here so that every
-- instance enforces the same lock.
CREATE TABLE admin_accounts (
    username TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL,
    source TEXT NOT NULL,
    password_hash TEXT,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until BIGINT,
    last_login_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Admin tokens revoked by logout, kept until they expire (then purged).
CREATE TABLE admin_revoked_tokens (
    jti TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX admin_revoked_tokens_expires ON admin_revoked_tokens (expires_at);

-- Every administrative change: who, when, what, before and after (JSON). Append-only through the
-- application: no API deletes or edits it. `seq` orders it and pages through it.
CREATE TABLE admin_audit (
    seq BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before_json TEXT,
    after_json TEXT
);
CREATE INDEX admin_audit_at ON admin_audit (at);
CREATE INDEX admin_audit_actor ON admin_audit (actor, seq);
CREATE INDEX admin_audit_target ON admin_audit (target, seq);
CREATE INDEX admin_audit_action ON admin_audit (action, seq);
