//! Directory storage: entries, their full-text index (SQLite FTS5 kept in step by triggers;
//! PostgreSQL `directory_search_words`, one row per word under a covering btree, and the
//! partitioned `directory_search` with a GIN index of word and prefix lexemes, both kept in step
//! by triggers), LDAP name records and the replication batch counters.
//!
//! Search is the one place where the SQL differs per backend: both apply the prefix query and
//! the visibility filters in the database and return a bounded number of candidates in index
//! order, which `directory::service` ranks exactly. PostgreSQL scans the word range of a tier's
//! rarest term, or intersects GIN posting lists when every term is common (see `PgSearch`).

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};

use super::schema::directory_entries::dsl as e;
use super::schema::directory_replication::dsl as r;
use super::schema::ldap_names::dsl as l;
use super::schema::{directory_entries, directory_replication, ldap_names};
use super::{DbConn, StoreError};
use crate::db_dispatch;

mod search;

pub use search::{IndexQuery, MAX_INDEXED_PREFIX, SearchFilter, SearchTiers, TermMatch, search};

/// Rows written per statement by bulk inserts (21 columns: well under both backends' limits on
/// bound parameters).
pub const BULK_ROWS: usize = 500;

/// One stored directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = directory_entries)]
#[diesel(treat_none_as_null = true)]
pub struct EntryRow {
    pub mxid: String,
    pub homeserver: String,
    pub name: String,
    pub name_source: String,
    pub fallback_name: String,
    pub admin_name: Option<String>,
    pub organisation: Option<String>,
    pub policy_organisation: Option<String>,
    pub avatar_url: Option<String>,
    pub visibility: String,
    pub external: bool,
    pub active: bool,
    pub email_key: String,
    pub search_name: String,
    pub search_organisation: String,
    pub search_localpart: String,
    pub search_all: String,
    pub organisation_key: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// What the user typed as display name on their homeserver (never published).
    pub user_displayname: Option<String>,
}

/// What a search needs of a matching entry.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
#[diesel(table_name = directory_entries)]
pub struct Candidate {
    pub mxid: String,
    pub name: String,
    pub organisation: Option<String>,
    pub avatar_url: Option<String>,
    pub search_name: String,
    pub search_organisation: String,
    pub search_localpart: String,
}

/// The entry of `mxid`.
pub fn get(conn: &mut DbConn, mxid: &str) -> Result<Option<EntryRow>, StoreError> {
    Ok(db_dispatch!(conn, c => e::directory_entries
        .filter(e::mxid.eq(mxid))
        .select(EntryRow::as_select())
        .first(c)
        .optional()?))
}

/// Creates or replaces the entry of `row.mxid` (its `created_at` is kept when it exists).
pub fn upsert(conn: &mut DbConn, row: &EntryRow) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::insert_into(e::directory_entries)
        .values(row)
        .on_conflict(e::mxid)
        .do_update()
        .set((
            e::homeserver.eq(&row.homeserver),
            e::name.eq(&row.name),
            e::name_source.eq(&row.name_source),
            e::fallback_name.eq(&row.fallback_name),
            e::admin_name.eq(&row.admin_name),
            e::organisation.eq(&row.organisation),
            e::policy_organisation.eq(&row.policy_organisation),
            e::avatar_url.eq(&row.avatar_url),
            e::visibility.eq(&row.visibility),
            e::external.eq(row.external),
            e::active.eq(row.active),
            e::email_key.eq(&row.email_key),
            e::search_name.eq(&row.search_name),
            e::search_organisation.eq(&row.search_organisation),
            e::search_localpart.eq(&row.search_localpart),
            e::search_all.eq(&row.search_all),
            e::organisation_key.eq(&row.organisation_key),
            e::updated_at.eq(row.updated_at),
            e::user_displayname.eq(&row.user_displayname),
        ))
        .execute(c)?);
    Ok(())
}

/// Overwrites an existing entry; false when there is none.
pub fn update(conn: &mut DbConn, row: &EntryRow) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::update(e::directory_entries.filter(e::mxid.eq(&row.mxid)))
        .set(row)
        .execute(c)?);
    Ok(n > 0)
}

/// Deletes the entry of `mxid`; false when there was none.
pub fn delete(conn: &mut DbConn, mxid: &str) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(e::directory_entries.filter(e::mxid.eq(mxid)))
        .execute(c)?);
    Ok(n > 0)
}

/// Inserts entries whose mxid is not taken yet (at most [`BULK_ROWS`] per statement; the caller
/// holds the transaction); returns how many were inserted.
pub fn insert_new(conn: &mut DbConn, rows: &[EntryRow]) -> Result<usize, StoreError> {
    let mut inserted = 0;
    for chunk in rows.chunks(BULK_ROWS) {
        inserted += match conn {
            DbConn::Pg(c) => diesel::insert_into(e::directory_entries)
                .values(chunk)
                .on_conflict_do_nothing()
                .execute(c)?,
            DbConn::Sqlite(c) => diesel::insert_or_ignore_into(e::directory_entries)
                .values(chunk)
                .execute(c)?,
        };
    }
    Ok(inserted)
}

/// Entries whose email lookup key is one of `keys`.
pub fn by_email_keys(conn: &mut DbConn, keys: &[String]) -> Result<Vec<EntryRow>, StoreError> {
    let mut rows = Vec::new();
    for chunk in keys.chunks(BULK_ROWS) {
        rows.extend(db_dispatch!(conn, c => e::directory_entries
            .filter(e::email_key.eq_any(chunk))
            .select(EntryRow::as_select())
            .load(c)?));
    }
    Ok(rows)
}

/// Up to `limit` entries that took their name or organisation from an LDAP record that no
/// longer exists.
pub fn orphaned_ldap_entries(conn: &mut DbConn, limit: i64) -> Result<Vec<EntryRow>, StoreError> {
    let record = l::ldap_names
        .filter(l::email_key.eq(e::email_key))
        .select(l::email_key);
    let from_ldap = e::name_source.eq("ldap").or(e::policy_organisation
        .is_null()
        .and(e::organisation.is_not_null()));
    Ok(db_dispatch!(conn, c => e::directory_entries
        .filter(from_ldap)
        .filter(diesel::dsl::not(diesel::dsl::exists(record)))
        .order(e::mxid)
        .limit(limit)
        .select(EntryRow::as_select())
        .load(c)?))
}

/// How many entries there are.
pub fn count(conn: &mut DbConn) -> Result<i64, StoreError> {
    Ok(db_dispatch!(conn, c => e::directory_entries.count().get_result(c)?))
}

/// Records that replication batch `batch` of `homeserver` is being applied, unless it is not
/// newer than the last one accepted: returns false for a stale batch (one statement, so two
/// concurrent deliveries cannot both pass).
pub fn accept_replication_batch(
    conn: &mut DbConn,
    homeserver: &str,
    batch: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    use diesel::query_dsl::methods::FilterDsl;
    let n = db_dispatch!(conn, c => FilterDsl::filter(
        diesel::insert_into(r::directory_replication)
            .values((
                r::homeserver.eq(homeserver),
                r::last_batch.eq(batch),
                r::updated_at.eq(now_ms),
            ))
            .on_conflict(r::homeserver)
            .do_update()
            .set((r::last_batch.eq(batch), r::updated_at.eq(now_ms))),
        r::last_batch.lt(batch),
    )
    .execute(c)?);
    Ok(n > 0)
}

/// The last batch accepted from `homeserver`.
pub fn last_replication_batch(
    conn: &mut DbConn,
    homeserver: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(db_dispatch!(conn, c => directory_replication::table
        .filter(r::homeserver.eq(homeserver))
        .select(r::last_batch)
        .first(c)
        .optional()?))
}

/// Applies a replicated profile to the entry of `mxid` on `homeserver` (an entry of another
/// homeserver is never touched); false when there is no such entry.
pub fn apply_replicated_profile(
    conn: &mut DbConn,
    mxid: &str,
    homeserver: &str,
    avatar_url: Option<&str>,
    active: bool,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let target = e::directory_entries
        .filter(e::mxid.eq(mxid))
        .filter(e::homeserver.eq(homeserver));
    let n = if active {
        db_dispatch!(conn, c => diesel::update(target)
            .set((e::avatar_url.eq(avatar_url), e::active.eq(true), e::updated_at.eq(now_ms)))
            .execute(c)?)
    } else {
        // A deactivated account's profile is gone; its avatar is kept for a reactivation.
        db_dispatch!(conn, c => diesel::update(target)
            .set((e::active.eq(false), e::updated_at.eq(now_ms)))
            .execute(c)?)
    };
    Ok(n > 0)
}

/// A name record read from the agency LDAP directory.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = ldap_names)]
#[diesel(treat_none_as_null = true)]
pub struct LdapNameRow {
    pub email_key: String,
    pub name: String,
    pub organisation: Option<String>,
    pub dn: String,
    pub sync_run: String,
    pub synced_at: i64,
}

/// The LDAP record of an email lookup key.
pub fn ldap_name(conn: &mut DbConn, email_key: &str) -> Result<Option<LdapNameRow>, StoreError> {
    Ok(db_dispatch!(conn, c => l::ldap_names
        .filter(l::email_key.eq(email_key))
        .select(LdapNameRow::as_select())
        .first(c)
        .optional()?))
}

/// The LDAP records of these email lookup keys.
pub fn ldap_names_by_keys(
    conn: &mut DbConn,
    keys: &[String],
) -> Result<Vec<LdapNameRow>, StoreError> {
    let mut rows = Vec::new();
    for chunk in keys.chunks(BULK_ROWS) {
        rows.extend(db_dispatch!(conn, c => l::ldap_names
            .filter(l::email_key.eq_any(chunk))
            .select(LdapNameRow::as_select())
            .load(c)?));
    }
    Ok(rows)
}

/// Which of these user IDs have an entry.
pub fn existing_mxids(conn: &mut DbConn, mxids: &[String]) -> Result<Vec<String>, StoreError> {
    let mut found = Vec::new();
    for chunk in mxids.chunks(BULK_ROWS) {
        found.extend(db_dispatch!(conn, c => e::directory_entries
            .filter(e::mxid.eq_any(chunk))
            .select(e::mxid)
            .load::<String>(c)?));
    }
    Ok(found)
}

/// Creates or replaces LDAP records.
pub fn upsert_ldap_names(conn: &mut DbConn, rows: &[LdapNameRow]) -> Result<(), StoreError> {
    for row in rows {
        db_dispatch!(conn, c => diesel::insert_into(l::ldap_names)
            .values(row)
            .on_conflict(l::email_key)
            .do_update()
            .set(row)
            .execute(c)?);
    }
    Ok(())
}

/// Deletes the LDAP records that sync run `run` did not see; returns how many.
pub fn delete_ldap_names_not_in_run(conn: &mut DbConn, run: &str) -> Result<usize, StoreError> {
    Ok(
        db_dispatch!(conn, c => diesel::delete(l::ldap_names.filter(l::sync_run.ne(run)))
        .execute(c)?),
    )
}

/// Every stored LDAP record's key (a dry-run sync compares them with what it read).
pub fn ldap_name_keys(conn: &mut DbConn) -> Result<Vec<String>, StoreError> {
    Ok(db_dispatch!(conn, c => l::ldap_names.select(l::email_key).load(c)?))
}

/// The email keys of entries that took their name or organisation from LDAP.
pub fn ldap_sourced_email_keys(conn: &mut DbConn) -> Result<Vec<String>, StoreError> {
    let from_ldap = e::name_source.eq("ldap").or(e::policy_organisation
        .is_null()
        .and(e::organisation.is_not_null()));
    Ok(db_dispatch!(conn, c => e::directory_entries
        .filter(from_ldap)
        .select(e::email_key)
        .load(c)?))
}

/// A held job lock: a PostgreSQL session advisory lock on a connection kept out of the pool
/// until dropped (drop it on a blocking thread: it unlocks). On SQLite one instance owns the
/// database, so the lock is always granted.
pub struct JobLock {
    conn: super::PooledConn,
    key: i64,
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock").field("key", &self.key).finish()
    }
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Takes the job lock `key` unless another session holds it (blocking; call from a blocking
/// thread).
pub fn try_job_lock(db: &super::Db, key: i64) -> Result<Option<JobLock>, StoreError> {
    let mut conn = db.get()?;
    if let DbConn::Pg(pg) = &mut *conn {
        let row: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind::<BigInt, _>(key)
            .get_result(pg)?;
        if !row.locked {
            return Ok(None);
        }
    }
    Ok(Some(JobLock { conn, key }))
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if let DbConn::Pg(pg) = &mut *self.conn {
            let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
                .bind::<BigInt, _>(self.key)
                .execute(pg);
            if let Err(e) = unlocked {
                tracing::warn!(error = %e, "could not release a job lock");
            }
        }
    }
}
