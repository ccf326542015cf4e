//! Identity service storage: accounts and hashed access tokens, accepted terms, associations and
//! their precomputed lookup hashes, and 3PID invitations.
//!
//! Write paths that must not interleave with a pepper rotation (an association and its hashes)
//! start with a write, so that on SQLite the transaction holds the write lock before it reads,
//! and on PostgreSQL it holds the table's row-exclusive lock that the rotation's switch waits
//! for.

use diesel::dsl::{count_star, exists, not};
use diesel::prelude::*;

use super::changes::{self, ChangeKind, association_key};
use super::schema::{
    association_hashes, associations, identity_accepted_terms, identity_accounts, identity_tokens,
};
use super::{DbConn, StoreError};
use crate::db_dispatch;

/// Rows per `IN (…)` list: well under SQLite's and PostgreSQL's bound-parameter limits.
pub const IN_CHUNK: usize = 500;

// ---- accounts and tokens ----

/// An account as the token check sees it.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct AccountRow {
    /// The Matrix user ID.
    pub user_id: String,
    /// The terms fingerprint last accepted in full.
    pub consent_version: Option<String>,
}

/// Creates the account if needed and stores a new token for it (one transaction).
pub fn insert_token(
    conn: &mut DbConn,
    user_id: &str,
    token_hash: &str,
    now_ms: i64,
    expires_at: i64,
) -> Result<(), StoreError> {
    use identity_accounts::dsl as a;
    use identity_tokens::dsl as t;
    super::transaction(conn, |conn| {
        db_dispatch!(conn, c => diesel::insert_into(a::identity_accounts)
            .values((a::user_id.eq(user_id), a::created_at.eq(now_ms)))
            .on_conflict(a::user_id)
            .do_nothing()
            .execute(c)?);
        db_dispatch!(conn, c => diesel::insert_into(t::identity_tokens)
            .values((
                t::token_hash.eq(token_hash),
                t::user_id.eq(user_id),
                t::created_at.eq(now_ms),
                t::expires_at.eq(expires_at),
            ))
            .execute(c)?);
        Ok(())
    })
}

/// The account owning an unexpired token, and when the token expires.
pub fn account_by_token(
    conn: &mut DbConn,
    token_hash: &str,
    now_ms: i64,
) -> Result<Option<(AccountRow, i64)>, StoreError> {
    use identity_accounts::dsl as a;
    use identity_tokens::dsl as t;
    let row = db_dispatch!(conn, c => t::identity_tokens
        .inner_join(a::identity_accounts.on(a::user_id.eq(t::user_id)))
        .filter(t::token_hash.eq(token_hash))
        .filter(t::expires_at.gt(now_ms))
        .select(((a::user_id, a::consent_version), t::expires_at))
        .first::<(AccountRow, i64)>(c)
        .optional()?);
    Ok(row)
}

/// Deletes one token (every instance forgets it: see `store::changes`); whether it existed.
pub fn delete_token(conn: &mut DbConn, token_hash: &str, now_ms: i64) -> Result<bool, StoreError> {
    use identity_tokens::dsl as t;
    conn.transaction(|conn| {
        let n = db_dispatch!(conn, c => diesel::delete(t::identity_tokens.filter(t::token_hash.eq(token_hash)))
            .execute(c)?);
        if n > 0 {
            changes::record(conn, &[(ChangeKind::Token, token_hash)], now_ms)?;
        }
        Ok(n > 0)
    })
}

/// Deletes tokens expired before `now_ms`; how many.
pub fn purge_expired_tokens(conn: &mut DbConn, now_ms: i64) -> Result<usize, StoreError> {
    use identity_tokens::dsl as t;
    let n = db_dispatch!(conn, c => diesel::delete(t::identity_tokens.filter(t::expires_at.le(now_ms)))
        .execute(c)?);
    Ok(n)
}

/// Records that `user_id` accepted the current terms in full (every instance re-reads the
/// account: see `store::changes`).
pub fn set_consent(
    conn: &mut DbConn,
    user_id: &str,
    version: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    use identity_accounts::dsl as a;
    conn.transaction(|conn| {
        db_dispatch!(conn, c => diesel::update(a::identity_accounts.filter(a::user_id.eq(user_id)))
            .set(a::consent_version.eq(version))
            .execute(c)?);
        changes::record(conn, &[(ChangeKind::Account, user_id)], now_ms)
    })
}

/// Adds accepted terms URLs (already accepted ones are kept as they are).
pub fn add_accepted_terms(
    conn: &mut DbConn,
    user_id: &str,
    urls: &[String],
    now_ms: i64,
) -> Result<(), StoreError> {
    use identity_accepted_terms::dsl as t;
    if urls.is_empty() {
        return Ok(());
    }
    super::transaction(conn, |conn| {
        for url in urls {
            db_dispatch!(conn, c => diesel::insert_into(t::identity_accepted_terms)
                .values((t::user_id.eq(user_id), t::url.eq(url), t::accepted_at.eq(now_ms)))
                .on_conflict((t::user_id, t::url))
                .do_nothing()
                .execute(c)?);
        }
        Ok(())
    })
}

/// Every terms URL `user_id` accepted.
pub fn accepted_terms(conn: &mut DbConn, user_id: &str) -> Result<Vec<String>, StoreError> {
    use identity_accepted_terms::dsl as t;
    let urls = db_dispatch!(conn, c => t::identity_accepted_terms
        .filter(t::user_id.eq(user_id))
        .select(t::url)
        .load::<String>(c)?);
    Ok(urls)
}

// ---- associations ----

/// One stored association.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct AssociationRow {
    /// `email`.
    pub medium: String,
    /// The normalised address.
    pub address: String,
    /// The Matrix user ID it is bound to.
    pub mxid: String,
    /// When it was bound (ms).
    pub created_at: i64,
    /// Start of validity (ms).
    pub not_before: i64,
    /// End of validity (ms).
    pub not_after: i64,
}

/// The association of an address.
pub fn association(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
) -> Result<Option<AssociationRow>, StoreError> {
    use associations::dsl as a;
    let row = db_dispatch!(conn, c => a::associations
        .filter(a::medium.eq(medium))
        .filter(a::address.eq(address))
        .select((a::medium, a::address, a::mxid, a::created_at, a::not_before, a::not_after))
        .first::<AssociationRow>(c)
        .optional()?);
    Ok(row)
}

/// The associations of a Matrix ID (most recent first).
pub fn associations_of(conn: &mut DbConn, mxid: &str) -> Result<Vec<AssociationRow>, StoreError> {
    use associations::dsl as a;
    let rows = db_dispatch!(conn, c => a::associations
        .filter(a::mxid.eq(mxid))
        .order(a::created_at.desc())
        .select((a::medium, a::address, a::mxid, a::created_at, a::not_before, a::not_after))
        .load::<AssociationRow>(c)?);
    Ok(rows)
}

/// Inserts or replaces the association of `row.address` (its lookup hashes stay valid: they
/// depend on the address only), and tells every instance (`store::changes`). Call first in its
/// transaction (see the module doc).
pub fn upsert_association(conn: &mut DbConn, row: &AssociationRow) -> Result<(), StoreError> {
    use associations::dsl as a;
    db_dispatch!(conn, c => diesel::insert_into(a::associations)
        .values((
            a::medium.eq(&row.medium),
            a::address.eq(&row.address),
            a::mxid.eq(&row.mxid),
            a::created_at.eq(row.created_at),
            a::not_before.eq(row.not_before),
            a::not_after.eq(row.not_after),
        ))
        .on_conflict((a::medium, a::address))
        .do_update()
        .set((
            a::mxid.eq(&row.mxid),
            a::created_at.eq(row.created_at),
            a::not_before.eq(row.not_before),
            a::not_after.eq(row.not_after),
        ))
        .execute(c)?);
    let key = association_key(&row.medium, &row.address);
    changes::record(conn, &[(ChangeKind::Association, &key)], row.created_at)
}

/// Deletes the association of an address (its hashes go with it; every instance is told);
/// whether one existed.
pub fn delete_association(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    use association_hashes::dsl as h;
    use associations::dsl as a;
    super::transaction(conn, |conn| {
        // Explicitly, not only by the foreign key: it must hold on connections without it.
        db_dispatch!(conn, c => diesel::delete(
            h::association_hashes.filter(h::medium.eq(medium)).filter(h::address.eq(address)),
        )
        .execute(c)?);
        let n = db_dispatch!(conn, c => diesel::delete(
            a::associations.filter(a::medium.eq(medium)).filter(a::address.eq(address)),
        )
        .execute(c)?);
        if n > 0 {
            let key = association_key(medium, address);
            changes::record(conn, &[(ChangeKind::Association, &key)], now_ms)?;
        }
        Ok(n > 0)
    })
}

/// Deletes the association of an address if it is bound to `mxid` (its hashes go with it;
/// every instance is told); whether one was deleted. The delete comes first (see the module doc), and a concurrent
/// bind of the address to someone else is never undone by it.
pub fn delete_association_of(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
    mxid: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    use association_hashes::dsl as h;
    use associations::dsl as a;
    super::transaction(conn, |conn| {
        let n = db_dispatch!(conn, c => diesel::delete(
            a::associations
                .filter(a::medium.eq(medium))
                .filter(a::address.eq(address))
                .filter(a::mxid.eq(mxid)),
        )
        .execute(c)?);
        if n > 0 {
            // Explicitly, not only by the foreign key: it must hold on connections without it.
            db_dispatch!(conn, c => diesel::delete(
                h::association_hashes.filter(h::medium.eq(medium)).filter(h::address.eq(address)),
            )
            .execute(c)?);
            let key = association_key(medium, address);
            changes::record(conn, &[(ChangeKind::Association, &key)], now_ms)?;
        }
        Ok(n > 0)
    })
}

/// Stores lookup hashes `(pepper_id, hash, medium, address)`; existing rows are kept.
pub fn insert_hashes(
    conn: &mut DbConn,
    rows: &[(i64, String, String, String)],
) -> Result<(), StoreError> {
    use association_hashes::dsl as h;
    for (pepper_id, hash, medium, address) in rows {
        db_dispatch!(conn, c => diesel::insert_into(h::association_hashes)
            .values((
                h::pepper_id.eq(pepper_id),
                h::lookup_hash.eq(hash),
                h::medium.eq(medium),
                h::address.eq(address),
            ))
            .on_conflict((h::pepper_id, h::medium, h::address))
            .do_nothing()
            .execute(c)?);
    }
    Ok(())
}

/// Inserts associations with their lookup hash under one pepper, as a bulk import does
/// (multi-row statements; the caller holds the transaction; every instance reads its
/// associations again). Addresses
/// already bound are left as they are; returns how many associations were inserted.
pub fn import_associations(
    conn: &mut DbConn,
    pepper_id: i64,
    rows: &[(AssociationRow, String)],
) -> Result<usize, StoreError> {
    use association_hashes::dsl as h;
    use associations::dsl as a;
    let mut inserted = 0;
    for chunk in rows.chunks(IN_CHUNK) {
        let associations: Vec<_> = chunk
            .iter()
            .map(|(row, _)| {
                (
                    a::medium.eq(&row.medium),
                    a::address.eq(&row.address),
                    a::mxid.eq(&row.mxid),
                    a::created_at.eq(row.created_at),
                    a::not_before.eq(row.not_before),
                    a::not_after.eq(row.not_after),
                )
            })
            .collect();
        let hashes: Vec<_> = chunk
            .iter()
            .map(|(row, hash)| {
                (
                    h::pepper_id.eq(pepper_id),
                    h::lookup_hash.eq(hash),
                    h::medium.eq(&row.medium),
                    h::address.eq(&row.address),
                )
            })
            .collect();
        inserted += match conn {
            DbConn::Pg(c) => {
                let n = diesel::insert_into(a::associations)
                    .values(&associations)
                    .on_conflict_do_nothing()
                    .execute(c)?;
                diesel::insert_into(h::association_hashes)
                    .values(&hashes)
                    .on_conflict_do_nothing()
                    .execute(c)?;
                n
            }
            DbConn::Sqlite(c) => {
                let n = diesel::insert_or_ignore_into(a::associations)
                    .values(&associations)
                    .execute(c)?;
                diesel::insert_or_ignore_into(h::association_hashes)
                    .values(&hashes)
                    .execute(c)?;
                n
            }
        };
    }
    if let Some((first, _)) = rows.first() {
        changes::record(conn, &[(ChangeKind::AllAssociations, "")], first.created_at)?;
    }
    Ok(inserted)
}

/// `(lookup_hash, mxid)` for the hashes among `hashes` known under `pepper_id`, for
/// associations valid at `now_ms`.
pub fn lookup_hashed(
    conn: &mut DbConn,
    pepper_id: i64,
    hashes: &[String],
    now_ms: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    use association_hashes::dsl as h;
    use associations::dsl as a;
    let mut found = Vec::new();
    for chunk in hashes.chunks(IN_CHUNK) {
        let rows = db_dispatch!(conn, c => h::association_hashes
            .inner_join(a::associations.on(a::medium.eq(h::medium).and(a::address.eq(h::address))))
            .filter(h::pepper_id.eq(pepper_id))
            .filter(h::lookup_hash.eq_any(chunk))
            .filter(a::not_before.le(now_ms))
            .filter(a::not_after.gt(now_ms))
            .select((h::lookup_hash, a::mxid))
            .load::<(String, String)>(c)?);
        found.extend(rows);
    }
    Ok(found)
}

/// `(medium, address, mxid)` for the addresses among `addresses` that are bound (any medium),
/// valid at `now_ms`.
pub fn lookup_plain(
    conn: &mut DbConn,
    addresses: &[String],
    now_ms: i64,
) -> Result<Vec<(String, String, String)>, StoreError> {
    use associations::dsl as a;
    let mut found = Vec::new();
    for chunk in addresses.chunks(IN_CHUNK) {
        let rows = db_dispatch!(conn, c => a::associations
            .filter(a::address.eq_any(chunk))
            .filter(a::not_before.le(now_ms))
            .filter(a::not_after.gt(now_ms))
            .select((a::medium, a::address, a::mxid))
            .load::<(String, String, String)>(c)?);
        found.extend(rows);
    }
    Ok(found)
}

/// Up to `limit` association keys after `after` (exclusive), in key order: a pepper
/// rotation walks the table with this cursor.
pub fn association_keys_after(
    conn: &mut DbConn,
    after: Option<(&str, &str)>,
    limit: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    use associations::dsl as a;
    let rows = match after {
        None => db_dispatch!(conn, c => a::associations
            .select((a::medium, a::address))
            .order((a::medium, a::address))
            .limit(limit)
            .load::<(String, String)>(c)?),
        Some((medium, address)) => db_dispatch!(conn, c => a::associations
            .filter(a::medium.gt(medium).or(a::medium.eq(medium).and(a::address.gt(address))))
            .select((a::medium, a::address))
            .order((a::medium, a::address))
            .limit(limit)
            .load::<(String, String)>(c)?),
    };
    Ok(rows)
}

/// Up to `limit` associations after `after` (exclusive), in key order (the lookup index is
/// built from these pages).
pub fn associations_after(
    conn: &mut DbConn,
    after: Option<(&str, &str)>,
    limit: i64,
) -> Result<Vec<AssociationRow>, StoreError> {
    use associations::dsl as a;
    let columns = (
        a::medium,
        a::address,
        a::mxid,
        a::created_at,
        a::not_before,
        a::not_after,
    );
    let rows = match after {
        None => db_dispatch!(conn, c => a::associations
            .select(columns)
            .order((a::medium, a::address))
            .limit(limit)
            .load::<AssociationRow>(c)?),
        Some((medium, address)) => db_dispatch!(conn, c => a::associations
            .filter(a::medium.gt(medium).or(a::medium.eq(medium).and(a::address.gt(address))))
            .select(columns)
            .order((a::medium, a::address))
            .limit(limit)
            .load::<AssociationRow>(c)?),
    };
    Ok(rows)
}

/// Up to `limit` associations that have no hash under `pepper_id` (the final sweep of a
/// rotation: associations bound while the walk ran).
pub fn associations_without_hash(
    conn: &mut DbConn,
    pepper_id: i64,
    limit: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    use association_hashes::dsl as h;
    use associations::dsl as a;
    let rows = db_dispatch!(conn, c => a::associations
        .filter(not(exists(
            h::association_hashes
                .filter(h::pepper_id.eq(pepper_id))
                .filter(h::medium.eq(a::medium))
                .filter(h::address.eq(a::address)),
        )))
        .select((a::medium, a::address))
        .order((a::medium, a::address))
        .limit(limit)
        .load::<(String, String)>(c)?);
    Ok(rows)
}

/// Deletes up to about `limit` hashes made with peppers older than `pepper_id`; how many.
pub fn delete_old_hashes(
    conn: &mut DbConn,
    pepper_id: i64,
    limit: i64,
) -> Result<usize, StoreError> {
    use association_hashes::dsl as h;
    let addresses = db_dispatch!(conn, c => h::association_hashes
        .filter(h::pepper_id.lt(pepper_id))
        .select(h::address)
        .limit(limit)
        .load::<String>(c)?);
    if addresses.is_empty() {
        return Ok(0);
    }
    let mut deleted = 0;
    for chunk in addresses.chunks(IN_CHUNK) {
        deleted += db_dispatch!(conn, c => diesel::delete(
            h::association_hashes
                .filter(h::pepper_id.lt(pepper_id))
                .filter(h::address.eq_any(chunk)),
        )
        .execute(c)?);
    }
    Ok(deleted)
}

/// Blocks association writes until the end of the current transaction (PostgreSQL; on SQLite
/// the caller's first write already holds the database's write lock). Reads go on.
pub fn lock_associations(conn: &mut DbConn) -> Result<(), StoreError> {
    if let DbConn::Pg(pg) = conn {
        diesel::sql_query("LOCK TABLE associations IN EXCLUSIVE MODE").execute(pg)?;
    }
    Ok(())
}

/// Number of associations.
pub fn count_associations(conn: &mut DbConn) -> Result<i64, StoreError> {
    use associations::dsl as a;
    let n = db_dispatch!(conn, c => a::associations.select(count_star()).first::<i64>(c)?);
    Ok(n)
}

/// Removes a shared state value (a finished pepper rotation's marker).
pub fn delete_state(conn: &mut DbConn, key: &str) -> Result<(), StoreError> {
    use super::schema::instance_state::dsl as s;
    db_dispatch!(conn, c => diesel::delete(s::instance_state.filter(s::key.eq(key))).execute(c)?);
    Ok(())
}
