//! Table definitions shared by both backends (same column types on each).

diesel::table! {
    /// Key-value state shared by every instance.
    instance_state (key) {
        key -> Text,
        value -> Text,
        updated_at -> BigInt,
    }
}
