//! Key material that rotates: the signing keys retired by `annuaire keys rotate-signing` (public
//! half only) and the secrets that sign admin tokens, by `kid`.

use diesel::prelude::*;

use super::schema::admin_jwt_secrets::dsl as j;
use super::schema::instance_state::dsl as s;
use super::schema::retired_signing_keys::dsl as r;
use super::{DbConn, StoreError};
use crate::db_dispatch;

// ---- signing keys ----

/// A signing key that no longer signs, still published.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct RetiredKeyRow {
    /// `ed25519:N`.
    pub key_id: String,
    /// Standard unpadded base64.
    pub public_key: String,
    /// When it stopped signing (ms).
    pub retired_at: i64,
}

/// Every retired signing key, newest first.
pub fn retired_keys(conn: &mut DbConn) -> Result<Vec<RetiredKeyRow>, StoreError> {
    Ok(db_dispatch!(conn, c => r::retired_signing_keys
        .select((r::key_id, r::public_key, r::retired_at))
        .order(r::retired_at.desc())
        .load(c)?))
}

/// The retired key published under `key_id`.
pub fn retired_key(conn: &mut DbConn, key_id: &str) -> Result<Option<RetiredKeyRow>, StoreError> {
    Ok(db_dispatch!(conn, c => r::retired_signing_keys
        .filter(r::key_id.eq(key_id))
        .select((r::key_id, r::public_key, r::retired_at))
        .first(c)
        .optional()?))
}

/// Whether `public_key` (canonical form) is a retired key.
pub fn is_retired_public_key(conn: &mut DbConn, public_key: &str) -> Result<bool, StoreError> {
    let n: i64 = db_dispatch!(conn, c => r::retired_signing_keys
        .filter(r::public_key.eq(public_key))
        .count()
        .get_result(c)?);
    Ok(n > 0)
}

/// Records a key as retired (fails with a unique violation if that key id already is).
pub fn insert_retired_key(conn: &mut DbConn, row: &RetiredKeyRow) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::insert_into(r::retired_signing_keys)
        .values((
            r::key_id.eq(&row.key_id),
            r::public_key.eq(&row.public_key),
            r::retired_at.eq(row.retired_at),
        ))
        .execute(c)?);
    Ok(())
}

/// Reads an `instance_state` value, locking its row until the transaction ends on PostgreSQL
/// (SQLite serialises writers by itself): two rotations at once run one after the other.
pub fn state_for_update(conn: &mut DbConn, key: &str) -> Result<Option<String>, StoreError> {
    let query = s::instance_state.filter(s::key.eq(key)).select(s::value);
    Ok(match conn {
        DbConn::Pg(c) => query.for_update().first::<String>(c).optional()?,
        DbConn::Sqlite(c) => query.first::<String>(c).optional()?,
    })
}

// ---- admin token secrets ----

/// A secret that signs (or signed) admin tokens.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct JwtSecretRow {
    /// The JWT `kid`.
    pub kid: String,
    /// The secret, base64.
    pub secret: String,
    /// When it was created (ms).
    pub created_at: i64,
    /// When it stopped signing (ms); `None` for the current one.
    pub retired_at: Option<i64>,
    /// Tokens it signed are accepted until then (ms); `None` for the current one.
    pub accepted_until: Option<i64>,
}

/// Every admin token secret, newest first.
pub fn jwt_secrets(conn: &mut DbConn) -> Result<Vec<JwtSecretRow>, StoreError> {
    Ok(db_dispatch!(conn, c => j::admin_jwt_secrets
        .select((j::kid, j::secret, j::created_at, j::retired_at, j::accepted_until))
        .order(j::created_at.desc())
        .load(c)?))
}

/// Inserts a secret unless its kid exists (instances starting together agree on the first).
pub fn insert_jwt_secret(conn: &mut DbConn, row: &JwtSecretRow) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::insert_into(j::admin_jwt_secrets)
        .values((
            j::kid.eq(&row.kid),
            j::secret.eq(&row.secret),
            j::created_at.eq(row.created_at),
            j::retired_at.eq(row.retired_at),
            j::accepted_until.eq(row.accepted_until),
        ))
        .on_conflict(j::kid)
        .do_nothing()
        .execute(c)?);
    Ok(())
}

/// Retires the current secret `kid` (if it still is current); whether it did.
pub fn retire_jwt_secret(
    conn: &mut DbConn,
    kid: &str,
    now_ms: i64,
    accepted_until: i64,
) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::update(
        j::admin_jwt_secrets
            .filter(j::kid.eq(kid))
            .filter(j::retired_at.is_null()),
    )
    .set((
        j::retired_at.eq(Some(now_ms)),
        j::accepted_until.eq(Some(accepted_until)),
    ))
    .execute(c)?);
    Ok(n > 0)
}

/// Deletes the retired secrets no token of which is accepted any more; how many.
pub fn purge_jwt_secrets(conn: &mut DbConn, now_ms: i64) -> Result<usize, StoreError> {
    Ok(db_dispatch!(conn, c => diesel::delete(
        j::admin_jwt_secrets
            .filter(j::retired_at.is_not_null())
            .filter(j::accepted_until.lt(now_ms)),
    )
    .execute(c)?))
}
