-- State every instance shares (database id, later: signing key, lookup pepper, JWT secret).
CREATE TABLE instance_state (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
