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

// ---- identity service ----

diesel::table! {
    /// Identity service accounts (one per Matrix user).
    identity_accounts (user_id) {
        user_id -> Text,
        created_at -> BigInt,
        consent_version -> Nullable<Text>,
    }
}

diesel::table! {
    /// Identity service access tokens (SHA-256 hashes).
    identity_tokens (token_hash) {
        token_hash -> Text,
        user_id -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::table! {
    /// Terms URLs accepted per account.
    identity_accepted_terms (user_id, url) {
        user_id -> Text,
        url -> Text,
        accepted_at -> BigInt,
    }
}

diesel::table! {
    /// 3PID associations.
    associations (medium, address) {
        medium -> Text,
        address -> Text,
        mxid -> Text,
        created_at -> BigInt,
        not_before -> BigInt,
        not_after -> BigInt,
    }
}

diesel::table! {
    /// Precomputed lookup hashes per association and pepper.
    association_hashes (pepper_id, medium, address) {
        pepper_id -> BigInt,
        lookup_hash -> Text,
        medium -> Text,
        address -> Text,
    }
}

diesel::table! {
    /// Stored 3PID invitations.
    invites (token) {
        token -> Text,
        medium -> Text,
        address -> Text,
        room_id -> Text,
        sender -> Text,
        details_json -> Text,
        ephemeral_public_key -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        delivery_mxid -> Nullable<Text>,
        delivery_attempts -> Integer,
        next_delivery_at -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<BigInt>,
        delivery_failed_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// Ephemeral invitation keys imported from Sydent (valid forever, as in Sydent).
    imported_ephemeral_keys (public_key) {
        public_key -> Text,
        created_at -> BigInt,
        imported_at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(associations, association_hashes);

diesel::table! {
    /// The identity change feed (store::changes).
    identity_changes (id) {
        id -> BigInt,
        kind -> Text,
        key -> Text,
        created_at -> BigInt,
    }
}
diesel::allow_tables_to_appear_in_same_query!(identity_accounts, identity_tokens);

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

diesel::table! {
    /// The cross-shard directory: one entry per bound Matrix user. (On SQLite the table also has
    /// an integer `id` for the FTS5 index, and on PostgreSQL triggers copy the searched fields
    /// into `directory_search`; queries that need them are written per backend.)
    directory_entries (mxid) {
        mxid -> Text,
        homeserver -> Text,
        name -> Text,
        name_source -> Text,
        fallback_name -> Text,
        admin_name -> Nullable<Text>,
        organisation -> Nullable<Text>,
        policy_organisation -> Nullable<Text>,
        avatar_url -> Nullable<Text>,
        visibility -> Text,
        external -> Bool,
        active -> Bool,
        email_key -> Text,
        search_name -> Text,
        search_organisation -> Text,
        search_localpart -> Text,
        search_all -> Text,
        organisation_key -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        user_displayname -> Nullable<Text>,
    }
}

diesel::table! {
    /// Verified names read from the agency LDAP directory, by email lookup key.
    ldap_names (email_key) {
        email_key -> Text,
        name -> Text,
        organisation -> Nullable<Text>,
        dn -> Text,
        sync_run -> Text,
        synced_at -> BigInt,
    }
}

diesel::table! {
    /// The last replication batch accepted per homeserver.
    directory_replication (homeserver) {
        homeserver -> Text,
        last_batch -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(directory_entries, ldap_names);

diesel::table! {
    /// Bearer tokens of the homeserver API, one per homeserver (SHA-256 hashes).
    homeserver_tokens (server_name) {
        server_name -> Text,
        token_hash -> Text,
        created_at -> BigInt,
        created_by -> Text,
        revoked_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// Sessions of the administrators' console (the cookie's token, hashed).
    console_sessions (id_hash) {
        id_hash -> Text,
        username -> Text,
        account_created_at -> BigInt,
        csrf_token -> Text,
        created_at -> BigInt,
        last_seen_at -> BigInt,
    }
}

diesel::table! {
    /// Signing keys retired by a rotation (public half only), still published.
    retired_signing_keys (key_id) {
        key_id -> Text,
        public_key -> Text,
        retired_at -> BigInt,
    }
}

diesel::table! {
    /// The secrets that sign admin tokens, by `kid`.
    admin_jwt_secrets (kid) {
        kid -> Text,
        secret -> Text,
        created_at -> BigInt,
        retired_at -> Nullable<BigInt>,
        accepted_until -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// Addresses unbound through the homeserver API, until a deactivation with erasure or the
    /// purge.
    homeserver_unbinds (mxid, medium, address) {
        mxid -> Text,
        medium -> Text,
        address -> Text,
        unbound_at -> BigInt,
    }
}

diesel::table! {
    /// Users who left the directory of their own accord.
    directory_opt_outs (mxid) {
        mxid -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    /// Agents' requests for their administration to be added.
    domain_requests (id) {
        id -> Text,
        domain -> Text,
        address -> Text,
        name -> Text,
        organisation -> Text,
        message -> Nullable<Text>,
        language -> Text,
        status -> Text,
        token_hash -> Nullable<Text>,
        created_at -> BigInt,
        confirmed_at -> Nullable<BigInt>,
        decided_at -> Nullable<BigInt>,
        decided_by -> Nullable<Text>,
        decision_message -> Nullable<Text>,
    }
}
