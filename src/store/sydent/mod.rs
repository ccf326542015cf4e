//! Storage side of `annuaire import sydent`: reading a Sydent database (a foreign SQLite file,
//! opened read-only), here, and writing what is imported into annuaire's tables in batches
//! ([`writes`], re-exported).
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

mod writes;
pub use writes::*;

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
