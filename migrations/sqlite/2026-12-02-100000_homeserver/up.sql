-- Homeservers connected through the homeserver API (/_annuaire/homeserver/v1, issue 11): one
-- bearer token per homeserver, stored as its SHA-256 hash (like identity tokens). A revoked
-- token's row stays (revoked_at set, for `annuaire homeserver list`) until `annuaire homeserver
-- add` gives the server a new token. Server names are stored lower-case.
CREATE TABLE homeserver_tokens (
    server_name TEXT PRIMARY KEY NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT,
    last_used_at BIGINT
);

-- Addresses a homeserver unbound through the API, kept a few days: Synapse removes a user's
-- addresses (unbind calls) before it reports the deactivation, and a deactivation with erasure
-- must still find them to erase what annuaire keeps about them. Erasing an address deletes its
-- rows here too; older rows are purged.
CREATE TABLE homeserver_unbinds (
    mxid TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    unbound_at BIGINT NOT NULL,
    PRIMARY KEY (mxid, medium, address)
);
CREATE INDEX homeserver_unbinds_address ON homeserver_unbinds (medium, address);
CREATE INDEX homeserver_unbinds_unbound_at ON homeserver_unbinds (unbound_at);

-- The display name the user set on their homeserver, as the homeserver API reports it: never
-- published (the verified name is), shown to administrators next to the verified one.
ALTER TABLE directory_entries ADD COLUMN user_displayname TEXT;
