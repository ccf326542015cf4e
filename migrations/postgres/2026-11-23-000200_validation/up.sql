-- Email validation sessions (Matrix Identity Service API v2, requestToken/submitToken). One
-- session per (medium, address, client secret); secrets are stored as SHA-256 hashes (hex).
-- expires_at is the token's expiry until validation, then the validated session's.
CREATE TABLE validation_sessions (
    sid TEXT PRIMARY KEY NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    client_secret_hash TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    next_link TEXT,
    send_attempt BIGINT NOT NULL,
    wrong_tokens INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    token_issued_at BIGINT NOT NULL,
    validated_at BIGINT,
    expires_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX validation_sessions_pair
    ON validation_sessions (medium, address, client_secret_hash);
CREATE INDEX validation_sessions_expires ON validation_sessions (expires_at);

-- The mail outbox: every message is written here in the transaction that decided it, then
-- sent by a worker. (kind, dedupe_key) names one logical mail (a session's send attempt), so a
-- second enqueue is a no-op. body (the raw RFC 5322 message, which carries a token) and
-- recipient are erased once the row is finished. claimed_by/claimed_until: a worker's lease.
CREATE TABLE mail_outbox (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    recipient_domain TEXT NOT NULL,
    body BYTEA,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    claimed_by TEXT,
    claimed_until BIGINT,
    finished_at BIGINT
);
CREATE UNIQUE INDEX mail_outbox_dedupe ON mail_outbox (kind, dedupe_key);
CREATE INDEX mail_outbox_due ON mail_outbox (status, next_attempt_at);
CREATE INDEX mail_outbox_finished ON mail_outbox (finished_at);

-- Rate limits shared by every instance (GCRA): tat is the bucket's theoretical arrival time
-- (ms); a row whose tat has passed is a full bucket and may be deleted.
CREATE TABLE rate_limits (
    key TEXT PRIMARY KEY NOT NULL,
    tat BIGINT NOT NULL
);
CREATE INDEX rate_limits_tat ON rate_limits (tat);
