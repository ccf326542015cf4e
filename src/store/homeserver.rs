//! Homeserver API storage: the homeservers' bearer tokens (SHA-256 hashes) and the addresses
//! they unbound, which a deactivation with erasure reads back.

use diesel::prelude::*;

use super::schema::{homeserver_tokens, homeserver_unbinds};
use super::{DbConn, StoreError};
use crate::db_dispatch;

/// One homeserver's token row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = homeserver_tokens)]
pub struct HomeserverTokenRow {
    /// The homeserver's server name (lower-case).
    pub server_name: String,
    /// SHA-256 of the token, URL-safe unpadded base64.
    pub token_hash: String,
    /// When the token was made (ms).
    pub created_at: i64,
    /// Who made it (audit actor).
    pub created_by: String,
    /// When it was revoked (ms), if it was.
    pub revoked_at: Option<i64>,
    /// When it was last used (ms, to the minute).
    pub last_used_at: Option<i64>,
}

/// The token row of a server.
pub fn token_of(
    conn: &mut DbConn,
    server_name: &str,
) -> Result<Option<HomeserverTokenRow>, StoreError> {
    use homeserver_tokens::dsl as t;
    Ok(db_dispatch!(conn, c => t::homeserver_tokens
        .filter(t::server_name.eq(server_name))
        .select(HomeserverTokenRow::as_select())
        .first(c)
        .optional()?))
}

/// The row of an unrevoked token with this hash.
pub fn active_token(
    conn: &mut DbConn,
    token_hash: &str,
) -> Result<Option<HomeserverTokenRow>, StoreError> {
    use homeserver_tokens::dsl as t;
    Ok(db_dispatch!(conn, c => t::homeserver_tokens
        .filter(t::token_hash.eq(token_hash))
        .filter(t::revoked_at.is_null())
        .select(HomeserverTokenRow::as_select())
        .first(c)
        .optional()?))
}

/// Every token row, by server name.
pub fn tokens(conn: &mut DbConn) -> Result<Vec<HomeserverTokenRow>, StoreError> {
    use homeserver_tokens::dsl as t;
    Ok(db_dispatch!(conn, c => t::homeserver_tokens
        .order(t::server_name)
        .select(HomeserverTokenRow::as_select())
        .load(c)?))
}

/// Creates the server's row, or replaces it (a revoked token's row).
pub fn put_token(conn: &mut DbConn, row: &HomeserverTokenRow) -> Result<(), StoreError> {
    use homeserver_tokens::dsl as t;
    db_dispatch!(conn, c => diesel::insert_into(t::homeserver_tokens)
        .values(row)
        .on_conflict(t::server_name)
        .do_update()
        .set((
            t::token_hash.eq(&row.token_hash),
            t::created_at.eq(row.created_at),
            t::created_by.eq(&row.created_by),
            t::revoked_at.eq(row.revoked_at),
            t::last_used_at.eq(row.last_used_at),
        ))
        .execute(c)?);
    Ok(())
}

/// Marks the server's token revoked; false when it has no unrevoked token.
pub fn revoke_token(conn: &mut DbConn, server_name: &str, now_ms: i64) -> Result<bool, StoreError> {
    use homeserver_tokens::dsl as t;
    let n = db_dispatch!(conn, c => diesel::update(
        t::homeserver_tokens
            .filter(t::server_name.eq(server_name))
            .filter(t::revoked_at.is_null()),
    )
    .set(t::revoked_at.eq(Some(now_ms)))
    .execute(c)?);
    Ok(n > 0)
}

/// Records that the token was used at `now_ms`.
pub fn touch_token(conn: &mut DbConn, server_name: &str, now_ms: i64) -> Result<(), StoreError> {
    use homeserver_tokens::dsl as t;
    db_dispatch!(conn, c => diesel::update(t::homeserver_tokens.filter(t::server_name.eq(server_name)))
        .set(t::last_used_at.eq(Some(now_ms)))
        .execute(c)?);
    Ok(())
}

/// Remembers that the homeserver unbound `address` from `mxid` (the time is refreshed when it
/// is already known).
pub fn remember_unbind(
    conn: &mut DbConn,
    mxid: &str,
    medium: &str,
    address: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    use homeserver_unbinds::dsl as u;
    db_dispatch!(conn, c => diesel::insert_into(u::homeserver_unbinds)
        .values((
            u::mxid.eq(mxid),
            u::medium.eq(medium),
            u::address.eq(address),
            u::unbound_at.eq(now_ms),
        ))
        .on_conflict((u::mxid, u::medium, u::address))
        .do_update()
        .set(u::unbound_at.eq(now_ms))
        .execute(c)?);
    Ok(())
}

/// The `(medium, address)` pairs the homeserver unbound from `mxid` since `since_ms`.
pub fn unbinds_of(
    conn: &mut DbConn,
    mxid: &str,
    since_ms: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    use homeserver_unbinds::dsl as u;
    Ok(db_dispatch!(conn, c => u::homeserver_unbinds
        .filter(u::mxid.eq(mxid))
        .filter(u::unbound_at.ge(since_ms))
        .order((u::medium, u::address))
        .select((u::medium, u::address))
        .load(c)?))
}

/// Forgets what was remembered of `mxid`'s unbinds; how many rows.
pub fn forget_unbinds_of(conn: &mut DbConn, mxid: &str) -> Result<usize, StoreError> {
    use homeserver_unbinds::dsl as u;
    Ok(
        db_dispatch!(conn, c => diesel::delete(u::homeserver_unbinds.filter(u::mxid.eq(mxid)))
        .execute(c)?),
    )
}

/// Forgets every remembered unbind of an address (its erasure); how many rows.
pub fn forget_unbinds_of_address(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
) -> Result<usize, StoreError> {
    use homeserver_unbinds::dsl as u;
    Ok(db_dispatch!(conn, c => diesel::delete(
        u::homeserver_unbinds.filter(u::medium.eq(medium)).filter(u::address.eq(address)),
    )
    .execute(c)?))
}

/// Forgets unbinds older than `before_ms`; how many rows.
pub fn purge_unbinds(conn: &mut DbConn, before_ms: i64) -> Result<usize, StoreError> {
    use homeserver_unbinds::dsl as u;
    Ok(
        db_dispatch!(conn, c => diesel::delete(u::homeserver_unbinds.filter(u::unbound_at.lt(before_ms)))
        .execute(c)?),
    )
}
