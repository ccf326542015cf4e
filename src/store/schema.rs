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

diesel::table! {
    /// Administrators of the admin API.
    admin_accounts (username) {
        username -> Text,
        role -> Text,
        source -> Text,
        password_hash -> Nullable<Text>,
        failed_logins -> Integer,
        locked_until -> Nullable<BigInt>,
        last_login_at -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    /// Admin tokens revoked before their expiry.
    admin_revoked_tokens (jti) {
        jti -> Text,
        username -> Text,
        expires_at -> BigInt,
        revoked_at -> BigInt,
    }
}

diesel::table! {
    /// The audit log of administrative changes.
    admin_audit (seq) {
        seq -> BigInt,
        at -> BigInt,
        actor -> Text,
        action -> Text,
        target -> Text,
        before_json -> Nullable<Text>,
        after_json -> Nullable<Text>,
    }
}
