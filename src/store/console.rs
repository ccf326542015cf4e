//! Sessions of the administrators' console: one row per logged-in browser, found by the SHA-256
//! of the cookie's token.

use diesel::prelude::*;

use super::schema::console_sessions::dsl as s;
use super::{DbConn, StoreError};
use crate::db_dispatch;

/// A console session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct ConsoleSessionRow {
    /// SHA-256 (hex) of the cookie's token.
    pub id_hash: String,
    /// The admin account.
    pub username: String,
    /// That account's creation instant when the session began.
    pub account_created_at: i64,
    /// The token every form of the session carries.
    pub csrf_token: String,
    /// When the session began (ms).
    pub created_at: i64,
    /// The session's last request (ms).
    pub last_seen_at: i64,
}

/// Stores a new session.
pub fn insert(conn: &mut DbConn, row: &ConsoleSessionRow) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::insert_into(s::console_sessions)
        .values((
            s::id_hash.eq(&row.id_hash),
            s::username.eq(&row.username),
            s::account_created_at.eq(row.account_created_at),
            s::csrf_token.eq(&row.csrf_token),
            s::created_at.eq(row.created_at),
            s::last_seen_at.eq(row.last_seen_at),
        ))
        .execute(c)?);
    Ok(())
}

/// The session with this token hash.
pub fn get(conn: &mut DbConn, id_hash: &str) -> Result<Option<ConsoleSessionRow>, StoreError> {
    Ok(db_dispatch!(conn, c => s::console_sessions
        .filter(s::id_hash.eq(id_hash))
        .select((s::id_hash, s::username, s::account_created_at, s::csrf_token, s::created_at, s::last_seen_at))
        .first::<ConsoleSessionRow>(c)
        .optional()?))
}

/// Records a request of the session.
pub fn touch(conn: &mut DbConn, id_hash: &str, now_ms: i64) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::update(s::console_sessions.filter(s::id_hash.eq(id_hash)))
        .set(s::last_seen_at.eq(now_ms))
        .execute(c)?);
    Ok(())
}

/// Ends a session; whether it existed.
pub fn delete(conn: &mut DbConn, id_hash: &str) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(s::console_sessions.filter(s::id_hash.eq(id_hash)))
        .execute(c)?);
    Ok(n > 0)
}

/// Ends every session of an account (removed, or its role changed by another administrator).
pub fn delete_for_account(conn: &mut DbConn, username: &str) -> Result<usize, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(s::console_sessions.filter(s::username.eq(username)))
        .execute(c)?);
    Ok(n)
}

/// Deletes the sessions idle since before `before_ms` or begun before `started_before_ms`.
pub fn purge(
    conn: &mut DbConn,
    before_ms: i64,
    started_before_ms: i64,
) -> Result<usize, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(
        s::console_sessions.filter(s::last_seen_at.lt(before_ms).or(s::created_at.lt(started_before_ms))),
    )
    .execute(c)?);
    Ok(n)
}
