-- The cross-shard directory: one entry per bound Matrix user.
-- `email_key` is sha256(normalised email) in hex: LDAP records match it without the address
-- being kept here in clear. The `search_*` columns are the folded search key (Rust computes them).
CREATE TABLE directory_entries (
    mxid TEXT PRIMARY KEY NOT NULL,
    homeserver TEXT NOT NULL,
    name TEXT NOT NULL,
    name_source TEXT NOT NULL,
    fallback_name TEXT NOT NULL,
    admin_name TEXT,
    organisation TEXT,
    policy_organisation TEXT,
    avatar_url TEXT,
    visibility TEXT NOT NULL DEFAULT 'visible',
    external BOOLEAN NOT NULL DEFAULT FALSE,
    active BOOLEAN NOT NULL DEFAULT TRUE,
    email_key TEXT NOT NULL,
    search_name TEXT NOT NULL,
    search_organisation TEXT NOT NULL,
    search_localpart TEXT NOT NULL,
    search_all TEXT NOT NULL,
    organisation_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- The folded key is already lower-case ASCII words: the 'simple' configuration indexes each
    -- word as it is, and prefix tsqueries (`jea:*`) match word prefixes through the GIN index.
    search_tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', search_all)) STORED
);
CREATE INDEX directory_entries_email_key ON directory_entries (email_key);
CREATE INDEX directory_entries_search ON directory_entries USING GIN (search_tsv);

-- Names from the agency LDAP directory, keyed like entries (sha256 of the normalised email).
-- `sync_run` marks the sync that last saw the record: records of older runs have left LDAP.
CREATE TABLE ldap_names (
    email_key TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    organisation TEXT,
    dn TEXT NOT NULL,
    sync_run TEXT NOT NULL,
    synced_at BIGINT NOT NULL
);
CREATE INDEX ldap_names_sync_run ON ldap_names (sync_run);

-- The last profile replication batch accepted from each homeserver (Tchap's replicate_profiles).
CREATE TABLE directory_replication (
    homeserver TEXT PRIMARY KEY NOT NULL,
    last_batch BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
