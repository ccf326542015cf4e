-- Allowlist rules: the live source of truth shared by every instance. `rule_json` is the whole
-- rule (policy::Rule::to_json); the other columns are for filtering and ordering.
CREATE TABLE policy_rules (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    source TEXT NOT NULL,
    line INTEGER,
    label TEXT,
    homeserver TEXT,
    rule_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX policy_rules_source ON policy_rules (source);
CREATE INDEX policy_rules_value ON policy_rules (value);

-- Bumped in the same transaction as every rule change; instances poll it and reload.
CREATE TABLE policy_generation (
    id INTEGER PRIMARY KEY NOT NULL,
    generation BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO policy_generation (id, generation, updated_at) VALUES (1, 0, 0);

-- Denied and invite-required decisions met, per UTC day and domain ("who is knocking").
CREATE TABLE policy_attempts (
    day BIGINT NOT NULL,
    domain TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (day, domain, outcome)
);
