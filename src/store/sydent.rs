//! Storage side of `annuaire import sydent`: reading a Sydent database (a foreign SQLite file,
//! opened read-only), and writing what is imported into annuaire's tables in batches.
//!
//! What the Sydent tables hold (mainline 2.x and Tchap's `dinsic` fork) is described at the
//! top of [`crate::identity::import_sydent`]; this module only reads the rows as they are.
//! Sydent's SQLite columns are loosely typed: integers are read as `BIGINT`, text as `TEXT`
//! (SQLite converts), and nullable columns as options.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::sqlite::SqliteConnection;

use super::changes::ChangeKind;
use super::identity::{AssociationRow, IN_CHUNK};
use super::schema::{
    association_hashes, associations, identity_accepted_terms, identity_accounts, identity_tokens,
    imported_ephemeral_keys, invites,
};
use super::{DbConn, StoreError};
use crate::db_dispatch;

/// Why a file cannot be read as a Sydent database.
#[derive(Debug, thiserror::Error)]
pub enum SydentDbError {
    /// No such file.
    #[error("{0}: no such file")]
    NotFound(PathBuf),
    /// The file cannot be read.
    #[error("{path}: cannot read it: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not an SQLite database.
    #[error(
        "{0} is not a Sydent database: it is not an SQLite file (Sydent's database is the \
         SQLite file that `db.file` in sydent.conf names)"
    )]
    NotSqlite(PathBuf),
    /// An SQLite database, but not Sydent's.
    #[error("{path} is not a Sydent database: {reason}")]
    NotSydent {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A query on the Sydent database failed.
    #[error("reading the Sydent database failed: {0}")]
    Query(#[from] diesel::result::Error),
}

/// The schema of an opened Sydent database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SydentSchema {
    /// `PRAGMA user_version` (mainline counts to 5, dinsic to 10: the numbers differ).
    pub user_version: i64,
    /// Tchap's fork (`dinsic` branch): replicated invitations and ephemeral keys, profiles.
    pub dinsic: bool,
    /// The tables present.
    pub tables: BTreeSet<String>,
}

impl SydentSchema {
    /// Whether the table exists.
    pub fn has(&self, table: &str) -> bool {
        self.tables.contains(table)
    }
}

/// A row of `local_threepid_associations`: a bind made on this Sydent. `mxid` is `None` for an
/// unbind (Sydent keeps the row as a tombstone).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct SydentLocalAssociation {
    /// Row id.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// `email` or `msisdn`.
    #[diesel(sql_type = Text)]
    pub medium: String,
    /// The address as Sydent stored it (case-folded since Sydent 2.0).
    #[diesel(sql_type = Text)]
    pub address: String,
    /// The Matrix user ID, `None` once unbound.
    #[diesel(sql_type = Nullable<Text>)]
    pub mxid: Option<String>,
    /// When it was bound or unbound (ms).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub ts: Option<i64>,
    /// Start of validity (ms).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub not_before: Option<i64>,
    /// End of validity (ms).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub not_after: Option<i64>,
}

/// A row of `global_threepid_associations`: every association Sydent answers lookups from, its
/// own binds and those replicated from peers, each with the signed JSON its origin made.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct SydentGlobalAssociation {
    /// Row id.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// `email` or `msisdn`.
    #[diesel(sql_type = Text)]
    pub medium: String,
    /// The address as stored.
    #[diesel(sql_type = Text)]
    pub address: String,
    /// The Matrix user ID.
    #[diesel(sql_type = Text)]
    pub mxid: String,
    /// When it was bound (ms).
    #[diesel(sql_type = BigInt)]
    pub ts: i64,
    /// Start of validity (ms).
    #[diesel(sql_type = BigInt)]
    pub not_before: i64,
    /// End of validity (ms).
    #[diesel(sql_type = BigInt)]
    pub not_after: i64,
    /// The identity server that made it (Sydent's own `server.name` for its binds).
    #[diesel(sql_type = Text)]
    pub origin_server: String,
    /// Its id there.
    #[diesel(sql_type = BigInt)]
    pub origin_id: i64,
    /// The signed association (JSON text) as the origin signed it.
    #[diesel(sql_type = Text)]
    pub sg_assoc: String,
}

/// A replication peer's public key (`peer_pubkeys`).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct SydentPeerKey {
    /// The peer's server name.
    #[diesel(sql_type = Text)]
    pub peer: String,
    /// `ed25519`.
    #[diesel(sql_type = Text)]
    pub alg: String,
    /// The public key (base64, or hex in old configurations).
    #[diesel(sql_type = Text)]
    pub key: String,
}

/// An identity-service account (`accounts`, schema v4+ / dinsic v8+).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct SydentAccount {
    /// The Matrix user ID.
    #[diesel(sql_type = Text)]
    pub user_id: String,
    /// When it was created (ms).
    #[diesel(sql_type = BigInt)]
    pub created_ts: i64,
    /// The terms `master_version` it last accepted (not annuaire's notion: not imported).
    #[diesel(sql_type = Nullable<Text>)]
    pub consent_version: Option<String>,
}

/// An access token (`tokens`), in clear: Sydent does not hash them.
#[derive(Clone, PartialEq, Eq, QueryableByName)]
pub struct SydentToken {
    /// The token.
    #[diesel(sql_type = Text)]
    pub token: String,
    /// Its user.
    #[diesel(sql_type = Text)]
    pub user_id: String,
}

impl std::fmt::Debug for SydentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SydentToken")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// A terms URL a user accepted (`accepted_terms_urls`).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct SydentAcceptedTerms {
    /// SQLite row id (paging).
    #[diesel(sql_type = BigInt)]
    pub rowid: i64,
    /// The user.
    #[diesel(sql_type = Text)]
    pub user_id: String,
    /// The accepted URL.
    #[diesel(sql_type = Text)]
    pub url: String,
}

/// A 3PID invitation (`invite_tokens`).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct SydentInvite {
    /// Row id.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// `email`.
    #[diesel(sql_type = Text)]
    pub medium: String,
    /// The invited address.
    #[diesel(sql_type = Text)]
    pub address: String,
    /// The room.
    #[diesel(sql_type = Text)]
    pub room_id: String,
    /// The inviter.
    #[diesel(sql_type = Text)]
    pub sender: String,
    /// The invitation token.
    #[diesel(sql_type = Text)]
    pub token: String,
    /// When Sydent stored it (**seconds**).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub received_ts: Option<i64>,
    /// When it was handed to the invitee's homeserver (seconds); `None` while pending.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub sent_ts: Option<i64>,
    /// dinsic: the identity server it was replicated from (`None`: made here).
    #[diesel(sql_type = Nullable<Text>)]
    pub origin_server: Option<String>,
}

/// An ephemeral invitation key (`ephemeral_public_keys`).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct SydentEphemeralKey {
    /// Row id.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// The public key (URL-safe unpadded base64, as Sydent encodes it).
    #[diesel(sql_type = Text)]
    pub public_key: String,
    /// When it was stored (**seconds**).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub persistence_ts: Option<i64>,
    /// dinsic: the identity server it was replicated from.
    #[diesel(sql_type = Nullable<Text>)]
    pub origin_server: Option<String>,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct OptionalText {
    #[diesel(sql_type = Nullable<Text>)]
    value: Option<String>,
}

/// The tables without which a file is not a Sydent database.
const REQUIRED_TABLES: [&str; 2] = [
    "local_threepid_associations",
    "global_threepid_associations",
];

/// A Sydent database, opened read-only.
pub struct SydentDb {
    conn: SqliteConnection,
    schema: SydentSchema,
}

impl std::fmt::Debug for SydentDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SydentDb")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl SydentDb {
    /// Opens `path` read-only and checks that it is a Sydent database.
    pub fn open(path: &Path) -> Result<SydentDb, SydentDbError> {
        check_sqlite_header(path)?;
        let uri = format!("file:{}?mode=ro", uri_path(path));
        let mut conn =
            SqliteConnection::establish(&uri).map_err(|e| SydentDbError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")
            .map_err(|e| not_sqlite_or(path, e))?;
        let tables: BTreeSet<String> =
            diesel::sql_query("SELECT name FROM sqlite_master WHERE type = 'table'")
                .load::<Name>(&mut conn)
                .map_err(|e| not_sqlite_or(path, e))?
                .into_iter()
                .map(|n| n.name)
                .collect();
        let missing: Vec<&str> = REQUIRED_TABLES
            .iter()
            .copied()
            .filter(|t| !tables.contains(*t))
            .collect();
        if !missing.is_empty() {
            return Err(SydentDbError::NotSydent {
                path: path.to_path_buf(),
                reason: format!("it has no table {}", missing.join(" or ")),
            });
        }
        let user_version = diesel::sql_query("SELECT user_version AS n FROM pragma_user_version")
            .get_result::<Number>(&mut conn)?
            .n;
        let invite_origin = tables.contains("invite_tokens")
            && has_column(&mut conn, "invite_tokens", "origin_server")?;
        let dinsic =
            tables.contains("profiles") || tables.contains("updated_invites") || invite_origin;
        Ok(SydentDb {
            conn,
            schema: SydentSchema {
                user_version,
                dinsic,
                tables,
            },
        })
    }

    /// The schema found.
    pub fn schema(&self) -> &SydentSchema {
        &self.schema
    }

    /// Rows in `table` (0 when it does not exist).
    pub fn count(&mut self, table: &str) -> Result<i64, SydentDbError> {
        if !self.schema.has(table) {
            return Ok(0);
        }
        // `table` is one of ours, checked against sqlite_master above; quoted all the same.
        let sql = format!(
            "SELECT count(*) AS n FROM \"{}\"",
            table.replace('"', "\"\"")
        );
        Ok(diesel::sql_query(sql)
            .get_result::<Number>(&mut self.conn)?
            .n)
    }

    /// The lookup pepper (`hashing_metadata`, schema v3+ / dinsic v7+).
    pub fn pepper(&mut self) -> Result<Option<String>, SydentDbError> {
        if !self.schema.has("hashing_metadata") {
            return Ok(None);
        }
        let row = diesel::sql_query(
            "SELECT lookup_pepper AS value FROM hashing_metadata ORDER BY id LIMIT 1",
        )
        .get_result::<OptionalText>(&mut self.conn)
        .optional()?;
        Ok(row.and_then(|r| r.value).filter(|p| !p.is_empty()))
    }

    /// Up to `limit` local associations with an id above `after`, by id.
    pub fn local_associations(
        &mut self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<SydentLocalAssociation>, SydentDbError> {
        Ok(diesel::sql_query(
            "SELECT id, medium, address, mxid, ts, notBefore AS not_before, notAfter AS not_after \
             FROM local_threepid_associations WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(limit)
        .load(&mut self.conn)?)
    }

    /// Up to `limit` global associations with an id above `after`, by id.
    pub fn global_associations(
        &mut self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<SydentGlobalAssociation>, SydentDbError> {
        Ok(diesel::sql_query(
            "SELECT id, medium, address, mxid, ts, notBefore AS not_before, \
             notAfter AS not_after, originServer AS origin_server, originId AS origin_id, \
             sgAssoc AS sg_assoc \
             FROM global_threepid_associations WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(limit)
        .load(&mut self.conn)?)
    }

    /// The replication peers' public keys.
    pub fn peer_keys(&mut self) -> Result<Vec<SydentPeerKey>, SydentDbError> {
        if !self.schema.has("peer_pubkeys") {
            return Ok(Vec::new());
        }
        Ok(
            diesel::sql_query("SELECT peername AS peer, alg, key FROM peer_pubkeys ORDER BY id")
                .load(&mut self.conn)?,
        )
    }

    /// Up to `limit` accounts whose user ID sorts after `after`.
    pub fn accounts(
        &mut self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<SydentAccount>, SydentDbError> {
        if !self.schema.has("accounts") {
            return Ok(Vec::new());
        }
        Ok(diesel::sql_query(
            "SELECT user_id, created_ts, consent_version FROM accounts \
             WHERE user_id > ? ORDER BY user_id LIMIT ?",
        )
        .bind::<Text, _>(after)
        .bind::<BigInt, _>(limit)
        .load(&mut self.conn)?)
    }

    /// Up to `limit` tokens that sort after `after`.
    pub fn tokens(&mut self, after: &str, limit: i64) -> Result<Vec<SydentToken>, SydentDbError> {
        if !self.schema.has("tokens") {
            return Ok(Vec::new());
        }
        Ok(diesel::sql_query(
            "SELECT token, user_id FROM tokens WHERE token > ? ORDER BY token LIMIT ?",
        )
        .bind::<Text, _>(after)
        .bind::<BigInt, _>(limit)
        .load(&mut self.conn)?)
    }

    /// Up to `limit` accepted terms URLs with a row id above `after`.
    pub fn accepted_terms(
        &mut self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<SydentAcceptedTerms>, SydentDbError> {
        if !self.schema.has("accepted_terms_urls") {
            return Ok(Vec::new());
        }
        Ok(diesel::sql_query(
            "SELECT rowid, user_id, url FROM accepted_terms_urls \
             WHERE rowid > ? ORDER BY rowid LIMIT ?",
        )
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(limit)
        .load(&mut self.conn)?)
    }

    /// Every invitation, by id (there are few: they are deleted once delivered).
    pub fn invites(&mut self) -> Result<Vec<SydentInvite>, SydentDbError> {
        if !self.schema.has("invite_tokens") {
            return Ok(Vec::new());
        }
        let origin = if self.schema.dinsic
            && has_column(&mut self.conn, "invite_tokens", "origin_server")?
        {
            "origin_server"
        } else {
            "NULL"
        };
        Ok(diesel::sql_query(format!(
            "SELECT id, medium, address, room_id, sender, token, received_ts, sent_ts, \
             {origin} AS origin_server FROM invite_tokens ORDER BY id"
        ))
        .load(&mut self.conn)?)
    }

    /// Every ephemeral invitation key, by id.
    pub fn ephemeral_keys(&mut self) -> Result<Vec<SydentEphemeralKey>, SydentDbError> {
        if !self.schema.has("ephemeral_public_keys") {
            return Ok(Vec::new());
        }
        let origin = if has_column(&mut self.conn, "ephemeral_public_keys", "origin_server")? {
            "origin_server"
        } else {
            "NULL"
        };
        Ok(diesel::sql_query(format!(
            "SELECT id, public_key, persistence_ts, {origin} AS origin_server \
             FROM ephemeral_public_keys ORDER BY id"
        ))
        .load(&mut self.conn)?)
    }
}

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

fn check_sqlite_header(path: &Path) -> Result<(), SydentDbError> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SydentDbError::NotFound(path.to_path_buf())
        } else {
            SydentDbError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        }
    })?;
    let mut header = [0u8; 16];
    match file.read_exact(&mut header) {
        Ok(()) if &header == SQLITE_HEADER => Ok(()),
        Ok(()) => Err(SydentDbError::NotSqlite(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(SydentDbError::NotSqlite(path.to_path_buf()))
        }
        Err(e) => Err(SydentDbError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// An error met while probing a file: "not a database" from SQLite means not SQLite at all.
fn not_sqlite_or(path: &Path, e: diesel::result::Error) -> SydentDbError {
    if e.to_string().contains("not a database") {
        SydentDbError::NotSqlite(path.to_path_buf())
    } else {
        SydentDbError::Query(e)
    }
}

/// The path as the path part of an SQLite `file:` URI (`?`, `#` and `%` escaped).
fn uri_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

fn has_column(
    conn: &mut SqliteConnection,
    table: &str,
    column: &str,
) -> Result<bool, SydentDbError> {
    let found = diesel::sql_query("SELECT name FROM pragma_table_info(?) WHERE name = ?")
        .bind::<Text, _>(table)
        .bind::<Text, _>(column)
        .load::<Name>(conn)?;
    Ok(!found.is_empty())
}

// ---- writing into annuaire ----

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
        super::changes::record(conn, &changes, at)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_paths_escape_what_sqlite_reads_as_query_or_fragment() {
        assert_eq!(
            uri_path(Path::new("/var/lib/sydent/sydent.db")),
            "/var/lib/sydent/sydent.db"
        );
        assert_eq!(uri_path(Path::new("/a?b#c%d")), "/a%3fb%23c%25d");
    }
}
