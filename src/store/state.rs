//! Shared instance state: small named values every instance must agree on (the database id,
//! later the signing key, the lookup pepper, the admin JWT secret).

use diesel::prelude::*;

use super::schema::instance_state::dsl as s;
use super::{DbConn, StoreError};
use crate::db_dispatch;

/// A random id created with the database; the readiness check reads it.
pub const DATABASE_ID: &str = "database_id";

/// Reads a value.
pub fn get(conn: &mut DbConn, key: &str) -> Result<Option<String>, StoreError> {
    let value = db_dispatch!(conn, c => s::instance_state
        .filter(s::key.eq(key))
        .select(s::value)
        .first::<String>(c)
        .optional()?);
    Ok(value)
}

/// Returns the stored value, or stores `candidate` if there is none yet. Safe when several
/// instances race: exactly one candidate wins and everyone gets it.
pub fn get_or_insert(
    conn: &mut DbConn,
    key: &str,
    candidate: &str,
    now_ms: i64,
) -> Result<String, StoreError> {
    db_dispatch!(conn, c => diesel::insert_into(s::instance_state)
        .values((s::key.eq(key), s::value.eq(candidate), s::updated_at.eq(now_ms)))
        .on_conflict(s::key)
        .do_nothing()
        .execute(c)?);
    get(conn, key)?.ok_or_else(|| StoreError::Corrupt(format!("state `{key}` vanished")))
}

/// Stores a value, replacing any previous one.
pub fn set(conn: &mut DbConn, key: &str, value: &str, now_ms: i64) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::insert_into(s::instance_state)
        .values((s::key.eq(key), s::value.eq(value), s::updated_at.eq(now_ms)))
        .on_conflict(s::key)
        .do_update()
        .set((s::value.eq(value), s::updated_at.eq(now_ms)))
        .execute(c)?);
    Ok(())
}
