-- The identity change feed: what instances keep in memory (access tokens, accounts' consent,
-- the lookup pepper, the lookup index of associations) changed. Each change writes one row in
-- its own transaction; every instance reads the rows in id order to keep its caches true.
-- Writers take an advisory lock before their row (store::changes), so ids commit in order.
CREATE TABLE identity_changes (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX identity_changes_created ON identity_changes (created_at);
