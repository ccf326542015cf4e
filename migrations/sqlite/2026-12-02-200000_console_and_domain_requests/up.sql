-- Sessions of the administrators' console (/_annuaire/console/): the cookie carries a random
-- token, stored here only as its SHA-256. A session ends after admin.console_idle_timeout
-- without a request (`last_seen_at`), at logout, or when its account is removed (or removed and
-- created again: `account_created_at` no longer matches). `csrf_token` is the token every form
-- of the session carries.
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL,
    account_created_at BIGINT NOT NULL,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_last_seen ON console_sessions (last_seen_at);
CREATE INDEX console_sessions_username ON console_sessions (username);

-- "My administration is not listed": an agent whose domain is unknown asks for it. `status` is
-- 'unconfirmed' (the mail's link not followed yet: `token_hash` is the SHA-256 of its token),
-- 'pending' (in the console's queue), 'accepted' or 'declined' (the requester was told by mail).
-- Rows are deleted after web.domain_requests_retention, and unconfirmed ones sooner.
CREATE TABLE domain_requests (
    id TEXT PRIMARY KEY NOT NULL,
    domain TEXT NOT NULL,
    address TEXT NOT NULL,
    name TEXT NOT NULL,
    organisation TEXT NOT NULL,
    message TEXT,
    language TEXT NOT NULL,
    status TEXT NOT NULL,
    token_hash TEXT,
    created_at BIGINT NOT NULL,
    confirmed_at BIGINT,
    decided_at BIGINT,
    decided_by TEXT,
    decision_message TEXT
);
CREATE INDEX domain_requests_domain ON domain_requests (status, domain);
CREATE INDEX domain_requests_address ON domain_requests (address);
CREATE INDEX domain_requests_created ON domain_requests (created_at);
