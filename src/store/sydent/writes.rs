//! Writing what `annuaire import sydent` brings into annuaire's tables, in batches: what is
//! already there (to compare), and multi-row inserts that leave existing rows alone.

use std::collections::BTreeSet;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::db_dispatch;
use crate::store::changes::ChangeKind;
use crate::store::identity::{AssociationRow, IN_CHUNK};
use crate::store::schema::{
    association_hashes, associations, identity_accepted_terms, identity_accounts, identity_tokens,
    imported_ephemeral_keys, invites,
};
use crate::store::{DbConn, StoreError};

/// Prepares a connection for a bulk import: on SQLite, a page cache large enough for the
/// indexes being filled (random lookup hashes, the directory's full-text index) to stay in
/// memory, instead of the default 2 MB; the connection is the import's own, closed after it.
pub fn prepare_bulk_import(conn: &mut DbConn) -> Result<(), StoreError> {
    if let DbConn::Sqlite(c) = conn {
        c.batch_execute("PRAGMA cache_size = -262144")?; // 256 MiB
    }
    Ok(())
}

/// Refreshes PostgreSQL's statistics of the tables an import fills (a no-op on SQLite). Without
/// it the planner, which saw them empty, scans whole tables for each batch's lookups until
/// autovacuum catches up: a 300,000-row import took three times as long.
pub fn refresh_statistics(conn: &mut DbConn) -> Result<(), StoreError> {
    if let DbConn::Pg(pg) = conn {
        pg.batch_execute(
            "ANALYZE associations, association_hashes, identity_accounts, identity_tokens, \
             identity_accepted_terms, invites, imported_ephemeral_keys, directory_entries",
        )?;
    }
    Ok(())
}

/// The associations stored for these addresses of `medium`.
pub fn associations_of_addresses(
    conn: &mut DbConn,
    medium: &str,
    addresses: &[String],
) -> Result<Vec<AssociationRow>, StoreError> {
    use associations::dsl as a;
    let mut rows = Vec::new();
    for chunk in addresses.chunks(IN_CHUNK) {
        let found = db_dispatch!(conn, c => a::associations
            .filter(a::medium.eq(medium))
            .filter(a::address.eq_any(chunk))
            .select((a::medium, a::address, a::mxid, a::created_at, a::not_before, a::not_after))
            .load::<AssociationRow>(c)?);
        rows.extend(found);
    }
    Ok(rows)
}

/// Inserts or replaces associations (several rows per statement). Call first in its
/// transaction, as [`super::identity::upsert_association`].
pub fn upsert_associations(conn: &mut DbConn, rows: &[AssociationRow]) -> Result<(), StoreError> {
    use associations::dsl as a;
    use diesel::upsert::excluded;
    // 6 parameters a row: 100 rows stay far below both backends' parameter limits.
    for chunk in rows.chunks(100) {
        let values: Vec<_> = chunk
            .iter()
            .map(|r| {
                (
                    a::medium.eq(&r.medium),
                    a::address.eq(&r.address),
                    a::mxid.eq(&r.mxid),
                    a::created_at.eq(r.created_at),
                    a::not_before.eq(r.not_before),
                    a::not_after.eq(r.not_after),
                )
            })
            .collect();
        db_dispatch!(conn, c => diesel::insert_into(a::associations)
            .values(&values)
            .on_conflict((a::medium, a::address))
            .do_update()
            .set((
                a::mxid.eq(excluded(a::mxid)),
                a::created_at.eq(excluded(a::created_at)),
                a::not_before.eq(excluded(a::not_before)),
                a::not_after.eq(excluded(a::not_after)),
            ))
            .execute(c)?);
    }
    Ok(())
}

/// Stores lookup hashes `(pepper_id, hash, medium, address)`, several per statement; existing
/// rows are kept.
pub fn insert_hashes_batch(
    conn: &mut DbConn,
    rows: &[(i64, String, String, String)],
) -> Result<(), StoreError> {
    use association_hashes::dsl as h;
    for chunk in rows.chunks(150) {
        let values: Vec<_> = chunk
            .iter()
            .map(|(pepper_id, hash, medium, address)| {
                (
                    h::pepper_id.eq(*pepper_id),
                    h::lookup_hash.eq(hash),
                    h::medium.eq(medium),
                    h::address.eq(address),
                )
            })
            .collect();
        db_dispatch!(conn, c => diesel::insert_into(h::association_hashes)
            .values(&values)
            .on_conflict((h::pepper_id, h::medium, h::address))
            .do_nothing()
            .execute(c)?);
    }
    Ok(())
}

/// Which of these user IDs have an identity account.
pub fn existing_accounts(
    conn: &mut DbConn,
    user_ids: &[String],
) -> Result<Vec<String>, StoreError> {
    use identity_accounts::dsl as a;
    let mut found = Vec::new();
    for chunk in user_ids.chunks(IN_CHUNK) {
        found.extend(db_dispatch!(conn, c => a::identity_accounts
            .filter(a::user_id.eq_any(chunk))
            .select(a::user_id)
            .load::<String>(c)?));
    }
    Ok(found)
}

/// Creates accounts `(user_id, created_at)` that do not exist (no consent recorded).
pub fn insert_accounts(conn: &mut DbConn, rows: &[(String, i64)]) -> Result<(), StoreError> {
    use identity_accounts::dsl as a;
    for chunk in rows.chunks(200) {
        let values: Vec<_> = chunk
            .iter()
            .map(|(user_id, created_at)| (a::user_id.eq(user_id), a::created_at.eq(*created_at)))
            .collect();
        db_dispatch!(conn, c => diesel::insert_into(a::identity_accounts)
            .values(&values)
            .on_conflict(a::user_id)
            .do_nothing()
            .execute(c)?);
    }
    Ok(())
}

/// Which of these token hashes are stored.
pub fn existing_token_hashes(
    conn: &mut DbConn,
    hashes: &[String],
) -> Result<Vec<String>, StoreError> {
    use identity_tokens::dsl as t;
    let mut found = Vec::new();
    for chunk in hashes.chunks(IN_CHUNK) {
        found.extend(db_dispatch!(conn, c => t::identity_tokens
            .filter(t::token_hash.eq_any(chunk))
            .select(t::token_hash)
            .load::<String>(c)?));
    }
    Ok(found)
}

/// Stores tokens `(token_hash, user_id, created_at, expires_at)` (their accounts exist);
/// existing ones are kept as they are.
pub fn insert_tokens(
    conn: &mut DbConn,
    rows: &[(String, String, i64, i64)],
) -> Result<(), StoreError> {
    use identity_tokens::dsl as t;
    for chunk in rows.chunks(200) {
        let values: Vec<_> = chunk
            .iter()
            .map(|(hash, user_id, created_at, expires_at)| {
                (
                    t::token_hash.eq(hash),
                    t::user_id.eq(user_id),
                    t::created_at.eq(*created_at),
                    t::expires_at.eq(*expires_at),
                )
            })
            .collect();
        db_dispatch!(conn, c => diesel::insert_into(t::identity_tokens)
            .values(&values)
            .on_conflict(t::token_hash)
            .do_nothing()
            .execute(c)?);
    }
    Ok(())
}

/// The accepted terms `(user_id, url)` stored for these users.
pub fn accepted_terms_of(
    conn: &mut DbConn,
    user_ids: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    use identity_accepted_terms::dsl as t;
    let mut found = Vec::new();
    for chunk in user_ids.chunks(IN_CHUNK) {
        found.extend(db_dispatch!(conn, c => t::identity_accepted_terms
            .filter(t::user_id.eq_any(chunk))
            .select((t::user_id, t::url))
            .load::<(String, String)>(c)?));
    }
    Ok(found)
}

/// Stores accepted terms `(user_id, url, accepted_at)` (their accounts exist); already
/// accepted ones are kept.
pub fn insert_accepted_terms(
    conn: &mut DbConn,
    rows: &[(String, String, i64)],
) -> Result<(), StoreError> {
    use identity_accepted_terms::dsl as t;
    for chunk in rows.chunks(200) {
        let values: Vec<_> = chunk
            .iter()
            .map(|(user_id, url, at)| {
                (
                    t::user_id.eq(user_id),
                    t::url.eq(url),
                    t::accepted_at.eq(*at),
                )
            })
            .collect();
        db_dispatch!(conn, c => diesel::insert_into(t::identity_accepted_terms)
            .values(&values)
            .on_conflict((t::user_id, t::url))
            .do_nothing()
            .execute(c)?);
        // Running instances cache each account's consent: tell them, once per account.
        let users: BTreeSet<&str> = chunk
            .iter()
            .map(|(user_id, _, _)| user_id.as_str())
            .collect();
        let changes: Vec<(ChangeKind, &str)> = users
            .into_iter()
            .map(|u| (ChangeKind::Account, u))
            .collect();
        let at = chunk.iter().map(|(_, _, at)| *at).max().unwrap_or_default();
        crate::store::changes::record(conn, &changes, at)?;
    }
    Ok(())
}

/// Which of these invitation tokens are stored.
pub fn existing_invite_tokens(
    conn: &mut DbConn,
    tokens: &[String],
) -> Result<Vec<String>, StoreError> {
    use invites::dsl as i;
    let mut found = Vec::new();
    for chunk in tokens.chunks(IN_CHUNK) {
        found.extend(db_dispatch!(conn, c => i::invites
            .filter(i::token.eq_any(chunk))
            .select(i::token)
            .load::<String>(c)?));
    }
    Ok(found)
}

/// Which of these public keys are the ephemeral key of a stored invitation.
pub fn invite_ephemeral_keys_in_use(
    conn: &mut DbConn,
    keys: &[String],
) -> Result<Vec<String>, StoreError> {
    use invites::dsl as i;
    let mut found = Vec::new();
    for chunk in keys.chunks(IN_CHUNK) {
        found.extend(db_dispatch!(conn, c => i::invites
            .filter(i::ephemeral_public_key.eq_any(chunk))
            .select(i::ephemeral_public_key)
            .load::<String>(c)?));
    }
    Ok(found)
}

/// Which of these imported ephemeral keys are stored.
pub fn existing_imported_keys(
    conn: &mut DbConn,
    keys: &[String],
) -> Result<Vec<String>, StoreError> {
    use imported_ephemeral_keys::dsl as k;
    let mut found = Vec::new();
    for chunk in keys.chunks(IN_CHUNK) {
        found.extend(db_dispatch!(conn, c => k::imported_ephemeral_keys
            .filter(k::public_key.eq_any(chunk))
            .select(k::public_key)
            .load::<String>(c)?));
    }
    Ok(found)
}

/// Stores imported ephemeral keys `(public_key, created_at, imported_at)`; existing ones are
/// kept.
pub fn insert_imported_keys(
    conn: &mut DbConn,
    rows: &[(String, i64, i64)],
) -> Result<(), StoreError> {
    use imported_ephemeral_keys::dsl as k;
    for chunk in rows.chunks(200) {
        let values: Vec<_> = chunk
            .iter()
            .map(|(key, created_at, imported_at)| {
                (
                    k::public_key.eq(key),
                    k::created_at.eq(*created_at),
                    k::imported_at.eq(*imported_at),
                )
            })
            .collect();
        db_dispatch!(conn, c => diesel::insert_into(k::imported_ephemeral_keys)
            .values(&values)
            .on_conflict(k::public_key)
            .do_nothing()
            .execute(c)?);
    }
    Ok(())
}
