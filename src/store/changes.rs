//! The identity change feed: one row per change that instances keep in memory (a revoked
//! token, an account's consent, the lookup pepper, an address's association), which every
//! instance reads in order to keep its caches true (`identity::live`).
//!
//! Rows are written in the transaction of the change itself, as its last statement, so a
//! change is in the feed exactly when it is committed. Readers go by increasing id and must
//! never see id n+1 committed before id n: on SQLite the database's single writer guarantees
//! it; on PostgreSQL, where sequence numbers are taken before commit, the writer takes a
//! transaction-level advisory lock before taking its number, so feed writers commit in number
//! order (they only wait for each other for the end of a transaction that has finished its
//! work).

use diesel::dsl::max;
use diesel::prelude::*;

use super::schema::identity_changes::dsl as c;
use super::{DbConn, StoreError};
use crate::db_dispatch;

/// Key of the PostgreSQL advisory lock that orders feed writers.
const FEED_LOCK_KEY: i64 = 0x6964_6368_616e_6765; // "idchange"

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// An access token was deleted (logout, revocation); the key is its hash.
    Token,
    /// An account's accepted terms changed; the key is its user ID.
    Account,
    /// The lookup pepper changed; the key is its sequence number.
    Pepper,
    /// An address's association changed (bound, rebound, unbound, erased); the key is
    /// `medium:address`.
    Association,
    /// Many associations changed at once (a bulk import): read them all again; the key is
    /// empty.
    AllAssociations,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Token => "token",
            ChangeKind::Account => "account",
            ChangeKind::Pepper => "pepper",
            ChangeKind::Association => "association",
            ChangeKind::AllAssociations => "all_associations",
        }
    }

    fn parse(s: &str) -> Option<ChangeKind> {
        match s {
            "token" => Some(ChangeKind::Token),
            "account" => Some(ChangeKind::Account),
            "pepper" => Some(ChangeKind::Pepper),
            "association" => Some(ChangeKind::Association),
            "all_associations" => Some(ChangeKind::AllAssociations),
            _ => None,
        }
    }
}

/// One row of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Increases with commit order.
    pub id: i64,
    /// What changed.
    pub kind: ChangeKind,
    /// Which one (see [`ChangeKind`]).
    pub key: String,
}

/// The key of an association change.
pub fn association_key(medium: &str, address: &str) -> String {
    format!("{medium}:{address}")
}

/// The medium and address of an association change's key.
pub fn split_association_key(key: &str) -> Option<(&str, &str)> {
    key.split_once(':')
}

/// Appends changes to the feed. Call it last in the transaction of the change (on PostgreSQL
/// it orders the transaction among feed writers until it ends).
pub fn record(
    conn: &mut DbConn,
    changes: &[(ChangeKind, &str)],
    now_ms: i64,
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    if let DbConn::Pg(pg) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(FEED_LOCK_KEY)
            .execute(pg)?;
    }
    for (kind, key) in changes {
        db_dispatch!(conn, x => diesel::insert_into(c::identity_changes)
            .values((c::kind.eq(kind.as_str()), c::key.eq(key), c::created_at.eq(now_ms)))
            .execute(x)?);
    }
    Ok(())
}

/// The last id written so far (0 for an empty feed): a reader starting now goes on from it.
pub fn last_id(conn: &mut DbConn) -> Result<i64, StoreError> {
    let id = db_dispatch!(conn, x => c::identity_changes
        .select(max(c::id))
        .first::<Option<i64>>(x)?);
    Ok(id.unwrap_or(0))
}

/// A page of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The changes read, in order (rows of kinds this version does not know are skipped).
    pub changes: Vec<Change>,
    /// The id of the last row read, or the position asked from when there was none.
    pub last: i64,
    /// Whether the page was full (more may follow).
    pub full: bool,
}

/// Up to `limit` rows after `after`, in order.
pub fn after(conn: &mut DbConn, after: i64, limit: i64) -> Result<Page, StoreError> {
    let rows = db_dispatch!(conn, x => c::identity_changes
        .filter(c::id.gt(after))
        .order(c::id)
        .limit(limit)
        .select((c::id, c::kind, c::key))
        .load::<(i64, String, String)>(x)?);
    let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit;
    let last = rows.last().map_or(after, |(id, _, _)| *id);
    let changes = rows
        .into_iter()
        .filter_map(|(id, kind, key)| ChangeKind::parse(&kind).map(|kind| Change { id, kind, key }))
        .collect();
    Ok(Page {
        changes,
        last,
        full,
    })
}

/// Deletes changes older than `before_ms`; how many.
pub fn purge(conn: &mut DbConn, before_ms: i64) -> Result<usize, StoreError> {
    Ok(
        db_dispatch!(conn, x => diesel::delete(c::identity_changes.filter(c::created_at.lt(before_ms)))
            .execute(x)?),
    )
}
