-- Ephemeral invitation keys imported from Sydent (`annuaire import sydent`). Sydent keeps every
-- ephemeral key valid forever and does not record which invitation a key belongs to, so the
-- keys are kept here, apart from `invites`: /v2/pubkey/ephemeral/isvalid answers true for them,
-- as Sydent did. `created_at` is Sydent's `persistence_ts` (ms).
CREATE TABLE imported_ephemeral_keys (
    public_key TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL,
    imported_at BIGINT NOT NULL
);
