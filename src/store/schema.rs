//! Table definitions shared by both backends (same column types on each).

diesel::table! {
    /// Key-value state shared by every instance.
    instance_state (key) {
        key -> Text,
        value -> Text,
        updated_at -> BigInt,
    }
}

diesel::table! {
    /// Allowlist rules (file-sourced and admin-created).
    policy_rules (id) {
        id -> Text,
        kind -> Text,
        value -> Text,
        source -> Text,
        line -> Nullable<Integer>,
        label -> Nullable<Text>,
        homeserver -> Nullable<Text>,
        rule_json -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    /// The rules' change counter (one row, id 1).
    policy_generation (id) {
        id -> Integer,
        generation -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    /// Denied / invite-required attempts per day and domain.
    policy_attempts (day, domain, outcome) {
        day -> BigInt,
        domain -> Text,
        outcome -> Text,
        count -> BigInt,
        last_seen -> BigInt,
    }
}
