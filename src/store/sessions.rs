//! Email validation sessions (`identity::sessions` holds the rules; this is their storage).

use diesel::prelude::*;

use super::schema::validation_sessions::{self, dsl as v};
use super::{DbConn, StoreError};
use crate::db_dispatch;

/// A stored validation session. Secrets are SHA-256 hashes (hex).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Insertable)]
#[diesel(table_name = validation_sessions)]
pub struct SessionRow {
    /// The session id.
    pub sid: String,
    /// `email`.
    pub medium: String,
    /// The normalised address.
    pub address: String,
    /// SHA-256 of the client secret.
    pub client_secret_hash: String,
    /// SHA-256 of the current token.
    pub token_hash: String,
    /// Where the browser goes after a successful validation (checked at requestToken).
    pub next_link: Option<String>,
    /// The greatest `send_attempt` seen.
    pub send_attempt: i64,
    /// Wrong tokens submitted so far.
    pub wrong_tokens: i32,
    /// Creation time (ms).
    pub created_at: i64,
    /// When the current token was issued (ms).
    pub token_issued_at: i64,
    /// When the address was validated (ms).
    pub validated_at: Option<i64>,
    /// The token's expiry until validation, then the validated session's (ms).
    pub expires_at: i64,
}

/// The session with this id.
pub fn find(conn: &mut DbConn, sid: &str) -> Result<Option<SessionRow>, StoreError> {
    let row = db_dispatch!(conn, c => v::validation_sessions
        .filter(v::sid.eq(sid))
        .first::<SessionRow>(c)
        .optional()?);
    Ok(row)
}

/// The session of (medium, address, client secret hash).
pub fn find_by_pair(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
    client_secret_hash: &str,
) -> Result<Option<SessionRow>, StoreError> {
    let row = db_dispatch!(conn, c => v::validation_sessions
        .filter(v::medium.eq(medium))
        .filter(v::address.eq(address))
        .filter(v::client_secret_hash.eq(client_secret_hash))
        .first::<SessionRow>(c)
        .optional()?);
    Ok(row)
}

/// Locks the session row until the end of the transaction (a no-op update: on PostgreSQL a row
/// lock, on SQLite the database write lock, taken before anything is read).
pub fn lock(conn: &mut DbConn, sid: &str) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::update(v::validation_sessions.filter(v::sid.eq(sid)))
        .set(v::wrong_tokens.eq(v::wrong_tokens))
        .execute(c)?);
    Ok(())
}

/// As [`lock`], for the session of a (medium, address, client secret hash), if it exists.
pub fn lock_pair(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
    client_secret_hash: &str,
) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::update(
        v::validation_sessions
            .filter(v::medium.eq(medium))
            .filter(v::address.eq(address))
            .filter(v::client_secret_hash.eq(client_secret_hash)),
    )
    .set(v::wrong_tokens.eq(v::wrong_tokens))
    .execute(c)?);
    Ok(())
}

/// Stores a new session.
pub fn insert(conn: &mut DbConn, row: &SessionRow) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::insert_into(v::validation_sessions)
        .values(row)
        .execute(c)?);
    Ok(())
}

/// Deletes a session; whether it existed.
pub fn delete(conn: &mut DbConn, sid: &str) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(v::validation_sessions.filter(v::sid.eq(sid)))
        .execute(c)?);
    Ok(n > 0)
}

/// A new token for a new send attempt, with the session's new expiry.
pub fn set_token(
    conn: &mut DbConn,
    sid: &str,
    token_hash: &str,
    send_attempt: i64,
    next_link: Option<&str>,
    now_ms: i64,
    expires_at: i64,
) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::update(v::validation_sessions.filter(v::sid.eq(sid)))
        .set((
            v::token_hash.eq(token_hash),
            v::send_attempt.eq(send_attempt),
            v::next_link.eq(next_link),
            v::token_issued_at.eq(now_ms),
            v::expires_at.eq(expires_at),
        ))
        .execute(c)?);
    Ok(())
}

/// Counts a wrong token; returns the new count.
pub fn add_wrong_token(conn: &mut DbConn, sid: &str) -> Result<i32, StoreError> {
    db_dispatch!(conn, c => diesel::update(v::validation_sessions.filter(v::sid.eq(sid)))
        .set(v::wrong_tokens.eq(v::wrong_tokens + 1))
        .execute(c)?);
    let n = db_dispatch!(conn, c => v::validation_sessions
        .filter(v::sid.eq(sid))
        .select(v::wrong_tokens)
        .first::<i32>(c)?);
    Ok(n)
}

/// Marks the session validated at `now_ms`, usable until `expires_at`.
pub fn set_validated(
    conn: &mut DbConn,
    sid: &str,
    now_ms: i64,
    expires_at: i64,
) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::update(v::validation_sessions.filter(v::sid.eq(sid)))
        .set((v::validated_at.eq(Some(now_ms)), v::expires_at.eq(expires_at)))
        .execute(c)?);
    Ok(())
}

/// Deletes the sessions expired at `now_ms`; how many.
pub fn purge_expired(conn: &mut DbConn, now_ms: i64) -> Result<usize, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(
        v::validation_sessions.filter(v::expires_at.le(now_ms)),
    )
    .execute(c)?);
    Ok(n)
}

/// How many sessions are stored (tests, metrics).
pub fn count(conn: &mut DbConn) -> Result<i64, StoreError> {
    let n = db_dispatch!(conn, c => v::validation_sessions.count().get_result::<i64>(c)?);
    Ok(n)
}
