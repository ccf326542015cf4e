-- Signing keys retired by `annuaire keys rotate-signing`: only their public half is kept, still
-- published at /_matrix/identity/v2/pubkey/{key_id} and valid for /pubkey/isvalid, so that what
-- they signed stays verifiable. The current key stays in instance_state (`signing_key`).
CREATE TABLE retired_signing_keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    public_key TEXT NOT NULL,
    retired_at BIGINT NOT NULL
);
CREATE INDEX retired_signing_keys_public_key ON retired_signing_keys (public_key);

-- The secrets that sign admin tokens, by `kid` (the JWT header). The one with no `retired_at`
-- signs; a retired one is still accepted for the tokens it signed until `accepted_until`.
CREATE TABLE admin_jwt_secrets (
    kid TEXT PRIMARY KEY NOT NULL,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT,
    accepted_until BIGINT
);
