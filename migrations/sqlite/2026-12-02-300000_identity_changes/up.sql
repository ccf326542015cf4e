-- The identity change feed: what instances keep in memory (access tokens, accounts' consent,
-- the lookup pepper, the lookup index of associations) changed. Each change writes one row in
-- its own transaction; every instance reads the rows in id order to keep its caches true.
-- AUTOINCREMENT: ids are never reused, even after the oldest rows are purged.
CREATE TABLE identity_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX identity_changes_created ON identity_changes (created_at);
