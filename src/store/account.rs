//! What a user may read about themselves (`GET /_annuaire/account/v1/data`) and their choice to
//! leave the directory (`directory_opt_outs`).

use diesel::prelude::*;

use super::schema::directory_opt_outs::dsl as o;
use super::schema::identity_accepted_terms::dsl as t;
use super::schema::identity_accounts::dsl as a;
use super::schema::identity_tokens::dsl as k;
use super::{DbConn, StoreError};
use crate::db_dispatch;

/// The identity account of `user_id`: (created at, consent marker).
pub fn account(
    conn: &mut DbConn,
    user_id: &str,
) -> Result<Option<(i64, Option<String>)>, StoreError> {
    Ok(db_dispatch!(conn, c => a::identity_accounts
        .filter(a::user_id.eq(user_id))
        .select((a::created_at, a::consent_version))
        .first(c)
        .optional()?))
}

/// The access tokens of `user_id` (never their hashes): (created at, expires at), oldest first.
pub fn tokens(conn: &mut DbConn, user_id: &str) -> Result<Vec<(i64, i64)>, StoreError> {
    Ok(db_dispatch!(conn, c => k::identity_tokens
        .filter(k::user_id.eq(user_id))
        .select((k::created_at, k::expires_at))
        .order(k::created_at.asc())
        .load(c)?))
}

/// The terms URLs `user_id` accepted, with when: (url, accepted at).
pub fn accepted_terms(conn: &mut DbConn, user_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(db_dispatch!(conn, c => t::identity_accepted_terms
        .filter(t::user_id.eq(user_id))
        .select((t::url, t::accepted_at))
        .order(t::url.asc())
        .load(c)?))
}

/// Since when `mxid` has left the directory, if they have.
pub fn opted_out_at(conn: &mut DbConn, mxid: &str) -> Result<Option<i64>, StoreError> {
    Ok(db_dispatch!(conn, c => o::directory_opt_outs
        .filter(o::mxid.eq(mxid))
        .select(o::created_at)
        .first(c)
        .optional()?))
}

/// Records that `mxid` leaves the directory; false when they already had.
pub fn opt_out(conn: &mut DbConn, mxid: &str, now_ms: i64) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::insert_into(o::directory_opt_outs)
        .values((o::mxid.eq(mxid), o::created_at.eq(now_ms)))
        .on_conflict(o::mxid)
        .do_nothing()
        .execute(c)?);
    Ok(n > 0)
}

/// Records that `mxid` is back in the directory; false when they had not left it.
pub fn opt_in(conn: &mut DbConn, mxid: &str) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(o::directory_opt_outs.filter(o::mxid.eq(mxid)))
        .execute(c)?);
    Ok(n > 0)
}

/// Which of `mxids` have left the directory.
pub fn opted_out_among(conn: &mut DbConn, mxids: &[String]) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for chunk in mxids.chunks(super::directory::BULK_ROWS) {
        out.extend(db_dispatch!(conn, c => o::directory_opt_outs
            .filter(o::mxid.eq_any(chunk))
            .select(o::mxid)
            .load::<String>(c)?));
    }
    Ok(out)
}

/// How many users have left the directory.
pub fn count_opted_out(conn: &mut DbConn) -> Result<i64, StoreError> {
    Ok(db_dispatch!(conn, c => o::directory_opt_outs.count().get_result(c)?))
}

/// The validation sessions of an address: (created at, validated at, expires at), oldest first.
pub fn sessions_for(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
) -> Result<Vec<(i64, Option<i64>, i64)>, StoreError> {
    use super::schema::validation_sessions::dsl as v;
    Ok(db_dispatch!(conn, c => v::validation_sessions
        .filter(v::medium.eq(medium))
        .filter(v::address.eq(address))
        .select((v::created_at, v::validated_at, v::expires_at))
        .order(v::created_at.asc())
        .load(c)?))
}
