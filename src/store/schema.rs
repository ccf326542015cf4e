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
    /// Email validation sessions (requestToken / submitToken).
    validation_sessions (sid) {
        sid -> Text,
        medium -> Text,
        address -> Text,
        client_secret_hash -> Text,
        token_hash -> Text,
        next_link -> Nullable<Text>,
        send_attempt -> BigInt,
        wrong_tokens -> Integer,
        created_at -> BigInt,
        token_issued_at -> BigInt,
        validated_at -> Nullable<BigInt>,
        expires_at -> BigInt,
    }
}

diesel::table! {
    /// Mails to send (and sent, until the purge).
    mail_outbox (id) {
        id -> Text,
        kind -> Text,
        dedupe_key -> Text,
        message_id -> Text,
        sender -> Text,
        recipient -> Text,
        recipient_domain -> Text,
        body -> Nullable<Binary>,
        status -> Text,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        next_attempt_at -> BigInt,
        claimed_by -> Nullable<Text>,
        claimed_until -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// Rate limits shared by every instance (GCRA theoretical arrival times).
    rate_limits (key) {
        key -> Text,
        tat -> BigInt,
    }
}
