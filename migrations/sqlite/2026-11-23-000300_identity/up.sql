-- Identity service accounts: one per Matrix user who exchanged an OpenID token with us.
-- `consent_version` is the terms fingerprint the user last accepted in full (NULL: none yet).
CREATE TABLE identity_accounts (
    user_id TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL,
    consent_version TEXT
);

-- Access tokens, stored as SHA-256 hashes only.
CREATE TABLE identity_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES identity_accounts (user_id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX identity_tokens_user ON identity_tokens (user_id);
CREATE INDEX identity_tokens_expiry ON identity_tokens (expires_at);

-- Terms URLs each account accepted (acceptances accumulate).
CREATE TABLE identity_accepted_terms (
    user_id TEXT NOT NULL REFERENCES identity_accounts (user_id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    accepted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, url)
);

-- 3PID associations: one Matrix ID per address (a new bind replaces the previous one).
CREATE TABLE associations (
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    mxid TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX associations_mxid ON associations (mxid);

-- Precomputed lookup hashes, one per association and pepper: during a pepper rotation rows for
-- the next pepper are filled in batches while lookups keep using the current one.
CREATE TABLE association_hashes (
    pepper_id BIGINT NOT NULL,
    lookup_hash TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (pepper_id, medium, address),
    FOREIGN KEY (medium, address) REFERENCES associations (medium, address) ON DELETE CASCADE
);
CREATE INDEX association_hashes_lookup ON association_hashes (pepper_id, lookup_hash);
CREATE INDEX association_hashes_address ON association_hashes (medium, address);

-- Pending 3PID invitations (store-invite) and their delivery to the invitee's homeserver once
-- the address is bound. The token is public (it is the invite's state key in the room).
CREATE TABLE invites (
    token TEXT PRIMARY KEY NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    details_json TEXT NOT NULL,
    ephemeral_public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    delivery_mxid TEXT,
    delivery_attempts INTEGER NOT NULL DEFAULT 0,
    next_delivery_at BIGINT,
    last_error TEXT,
    delivered_at BIGINT,
    delivery_failed_at BIGINT
);
CREATE INDEX invites_address ON invites (medium, address, expires_at);
CREATE INDEX invites_sender ON invites (sender, created_at);
CREATE UNIQUE INDEX invites_ephemeral_key ON invites (ephemeral_public_key);
CREATE INDEX invites_delivery ON invites (next_delivery_at);
