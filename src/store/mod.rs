//! Storage: diesel over SQLite (embedded default) or PostgreSQL (several instances), chosen by the
//! database URL's scheme.
//!
//! - One connection enum, [`DbConn`]. Queries are written once and compiled for both backends with
//!   [`db_dispatch!`](crate::db_dispatch), so that backend-specific diesel features (upserts,
//!   `RETURNING`) work; SQL that really differs is written per backend.
//! - Timestamps are BIGINT milliseconds and ids TEXT, so both schemas have the same types.
//! - Blocking diesel calls run on tokio's blocking pool ([`Db::run`]), never on the HTTP workers.
//! - Migrations are embedded (`migrations/sqlite`, `migrations/postgres`) and run at start and by
//!   `annuaire migrate`; on PostgreSQL under an advisory lock so instances starting together do
//!   not collide.

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

pub mod account;
pub mod admin;
pub mod audit;
pub mod changes;
pub mod console;
pub mod directory;
pub mod domain_requests;
pub mod erasure;
pub mod homeserver;
pub mod identity;
pub mod invites;
pub mod keys;
pub mod outbox;
pub mod policy;
pub mod ratelimits;
pub mod schema;
pub mod sessions;
pub mod state;
pub mod sydent;

use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::r2d2::{ManageConnection, Pool, PooledConnection};
use diesel::{PgConnection, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Key of the PostgreSQL advisory lock held by migrations and start-up jobs.
const STARTUP_LOCK_KEY: i64 = 0x616e_6e75_6169_7265; // "annuaire"

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    /// PostgreSQL.
    Pg(PgConnection),
    /// SQLite.
    Sqlite(SqliteConnection),
}

/// Runs `$body` with `$c` bound to the concrete connection (`&mut PgConnection` or
/// `&mut SqliteConnection`): the body is compiled once per backend.
#[macro_export]
macro_rules! db_dispatch {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::store::DbConn::Pg($c) => $body,
            $crate::store::DbConn::Sqlite($c) => $body,
        }
    };
}

/// Which database backend is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// `"sqlite"` or `"postgres"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A storage error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or the pool is exhausted.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Stored data could not be decoded.
    #[error("invalid stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database could not be used at all (down, restarting, the connection lost,
    /// or no free connection in time), as opposed to a query that failed: callers answer 503
    /// and retry later.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Query(Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _))
            | StoreError::Query(Error::BrokenTransactionManager) => true,
            StoreError::Query(Error::DatabaseError(_, info)) => {
                // libpq reports a server that went away mid-session with these texts.
                let message = info.message();
                [
                    "terminating connection",
                    "server closed the connection",
                    "connection to server",
                    "could not receive data from server",
                    "no connection to the server",
                    "the database system is shutting down",
                    "the database system is starting up",
                    "the database system is in recovery mode",
                ]
                .iter()
                .any(|text| message.contains(text))
            }
            _ => false,
        }
    }

    /// Whether this is a unique-constraint violation (a concurrent insert of the same key).
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            StoreError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }
}

/// Where the database lives, parsed from the URL.
#[derive(Debug, Clone)]
enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    fn parse(url: &str) -> Result<Location, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StoreError::Unavailable(
                    "sqlite:// needs a file path".into(),
                ));
            }
            Ok(Location::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Location::Postgres(url.to_string()))
        } else {
            Err(StoreError::Unavailable(
                "unsupported database URL: expected sqlite://PATH or postgres://…".into(),
            ))
        }
    }
}

/// Opens connections of the configured backend for the pool. (Never diesel's derived
/// `establish`, which falls through to SQLite for any string.)
#[derive(Debug)]
pub struct ConnectionManager {
    location: Location,
}

impl ConnectionManager {
    fn open(&self) -> Result<DbConn, ConnectionError> {
        match &self.location {
            Location::Sqlite(path) => {
                let path_str = path.to_str().ok_or_else(|| {
                    ConnectionError::BadConnection("database path is not UTF-8".into())
                })?;
                let mut conn = SqliteConnection::establish(path_str)?;
                // WAL lets readers proceed during writes; busy_timeout makes writers wait for
                // each other instead of failing; NORMAL is durable in WAL mode across crashes of
                // the process (only an OS crash may lose the last transactions).
                conn.batch_execute(
                    "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                )
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
                Ok(DbConn::Sqlite(conn))
            }
            Location::Postgres(url) => Ok(DbConn::Pg(PgConnection::establish(url)?)),
        }
    }
}

impl ManageConnection for ConnectionManager {
    type Connection = DbConn;
    type Error = ConnectionError;

    fn connect(&self) -> Result<DbConn, ConnectionError> {
        self.open()
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), ConnectionError> {
        conn.batch_execute("SELECT 1")
            .map_err(ConnectionError::CouldntSetupConfiguration)
    }

    fn has_broken(&self, _conn: &mut DbConn) -> bool {
        false
    }
}

/// A pooled connection.
pub type PooledConn = PooledConnection<ConnectionManager>;

/// The database: a pool of connections of one backend.
///
/// Blocking work ([`Db::run`]) waits, without a thread, for one of `pool_size` permits before it
/// takes a thread of the blocking pool: the number of threads doing database work stays the
/// pool's size however many requests wait (rather than one thread per waiting request, each
/// blocked on the pool).
#[derive(Clone)]
pub struct Db {
    pool: Pool<ConnectionManager>,
    backend: Backend,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    timeout: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Db {
    /// Connects to `url` (`sqlite://PATH`, creating the file and its folder, or `postgres://…`).
    pub fn connect(url: &str, pool_size: u32, timeout: Duration) -> Result<Db, StoreError> {
        let location = Location::parse(url)?;
        let backend = match &location {
            Location::Sqlite(path) => {
                create_parent(path)?;
                Backend::Sqlite
            }
            Location::Postgres(_) => Backend::Postgres,
        };
        let pool = Pool::builder()
            .max_size(pool_size)
            // No idle connections kept open in the background: connections are made when asked
            // for. (Replenishing in the background raced with process exit: libpq's OpenSSL
            // is torn down by exit handlers while a pool thread is still connecting.)
            .min_idle(Some(0))
            .connection_timeout(timeout)
            .error_handler(Box::new(PoolErrorLog))
            .build(ConnectionManager { location })
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Db {
            pool,
            backend,
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(pool_size.max(1) as usize)),
            timeout,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A connection from the pool (blocking; for the CLI and blocking tasks).
    pub fn get(&self) -> Result<PooledConn, StoreError> {
        checkout(&self.pool)
    }

    /// Sets the pool's gauges (`annuaire_db_pool_*`); called when metrics are scraped.
    pub fn record_pool_gauges(&self) {
        let state = self.pool.state();
        let in_use = state.connections.saturating_sub(state.idle_connections);
        metrics::gauge!("annuaire_db_pool_connections").set(f64::from(state.connections));
        metrics::gauge!("annuaire_db_pool_connections_in_use").set(f64::from(in_use));
        metrics::gauge!("annuaire_db_pool_size").set(f64::from(self.pool.max_size()));
    }

    /// Runs `f` with a pooled connection on the blocking thread pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut DbConn) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = tokio::time::timeout(self.timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| StoreError::Unavailable("no database connection became free".into()))?
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = checkout(&pool)?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("database task failed: {e}")))?
    }

    /// Runs `f` while holding the start-up lock (a PostgreSQL advisory lock; on SQLite, the
    /// database file's own locking is enough and `f` simply runs).
    pub fn with_startup_lock<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut DbConn) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.get()?;
        match &mut *conn {
            DbConn::Pg(pg) => {
                diesel::sql_query("SELECT pg_advisory_lock($1)")
                    .bind::<diesel::sql_types::BigInt, _>(STARTUP_LOCK_KEY)
                    .execute(pg)
                    .map_err(StoreError::from)?;
                let result = f(&mut conn);
                if let DbConn::Pg(pg) = &mut *conn {
                    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
                        .bind::<diesel::sql_types::BigInt, _>(STARTUP_LOCK_KEY)
                        .execute(pg);
                    if let Err(e) = unlocked {
                        tracing::warn!(error = %e, "could not release the start-up lock");
                    }
                }
                result
            }
            DbConn::Sqlite(_) => f(&mut conn),
        }
    }

    /// Applies pending migrations (under the start-up lock); returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<String>, StoreError> {
        self.with_startup_lock(run_migrations)
    }

    /// Whether the database answers (the readiness check).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            state::get(conn, state::DATABASE_ID)?;
            Ok(())
        })
        .await
    }
}

/// A connection from `pool`, with the pool's metrics: how long the checkout took (a free
/// connection, a new one, or a wait for one), whether every connection was busy, and whether
/// `database.connection_timeout` ran out.
fn checkout(pool: &Pool<ConnectionManager>) -> Result<PooledConn, StoreError> {
    let state = pool.state();
    let saturated = state.idle_connections == 0 && state.connections >= pool.max_size();
    let started = std::time::Instant::now();
    let result = pool.get();
    metrics::histogram!("annuaire_db_pool_wait_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    if saturated {
        metrics::counter!("annuaire_db_pool_waits_total").increment(1);
    }
    result.map_err(|e| {
        metrics::counter!("annuaire_db_pool_timeouts_total").increment(1);
        StoreError::Unavailable(e.to_string())
    })
}

/// Runs `f` in one transaction: committed when it returns `Ok`, rolled back otherwise. Domain
/// code uses this rather than naming diesel; its error type only needs `From<StoreError>`.
pub fn transaction<T, E: From<StoreError>>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> Result<T, E>,
) -> Result<T, E> {
    /// The closure's own error, or the database's (begin, commit, rollback).
    enum Failure<E> {
        Database(diesel::result::Error),
        Caller(E),
    }
    impl<E> From<diesel::result::Error> for Failure<E> {
        fn from(e: diesel::result::Error) -> Self {
            Failure::Database(e)
        }
    }
    // SQLite: an outermost transaction takes the write lock when it begins (`BEGIN IMMEDIATE`).
    // A deferred one that reads first and writes later cannot wait for another writer: SQLite
    // answers "database is locked" at once instead of honouring busy_timeout.
    let outermost_sqlite = match conn {
        DbConn::Sqlite(c) => matches!(
            AnsiTransactionManager::transaction_manager_status_mut(c).transaction_depth(),
            Ok(None)
        ),
        DbConn::Pg(_) => false,
    };
    let result = if outermost_sqlite {
        immediate_transaction(conn, |conn| f(conn).map_err(Failure::Caller))
    } else {
        conn.transaction(|conn| f(conn).map_err(Failure::Caller))
    };
    result.map_err(|failure| match failure {
        Failure::Database(e) => E::from(StoreError::Query(e)),
        Failure::Caller(e) => e,
    })
}

/// `BEGIN IMMEDIATE` on the SQLite connection inside `conn`, then `f`, then commit (or roll back
/// when `f` fails), as diesel's `SqliteConnection::immediate_transaction` does but with `f` given
/// the backend-neutral connection.
fn immediate_transaction<T, E: From<diesel::result::Error>>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> Result<T, E>,
) -> Result<T, E> {
    if let DbConn::Sqlite(c) = conn {
        AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?;
    }
    match f(conn) {
        Ok(value) => {
            <DbConn as Connection>::TransactionManager::commit_transaction(conn)?;
            Ok(value)
        }
        Err(e) => {
            <DbConn as Connection>::TransactionManager::rollback_transaction(conn)?;
            Err(e)
        }
    }
}

/// Applies pending migrations on `conn` (the caller holds the start-up lock).
pub fn run_migrations(conn: &mut DbConn) -> Result<Vec<String>, StoreError> {
    let applied = match conn {
        DbConn::Sqlite(c) => c
            .run_pending_migrations(SQLITE_MIGRATIONS)
            .map(|v| v.iter().map(|m| m.to_string()).collect()),
        DbConn::Pg(c) => c
            .run_pending_migrations(POSTGRES_MIGRATIONS)
            .map(|v| v.iter().map(|m| m.to_string()).collect()),
    };
    applied.map_err(|e| StoreError::Migration(e.to_string()))
}

fn create_parent(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    Ok(())
}

/// Logs pool connection failures once each (without the URL, which may hold a password).
#[derive(Debug)]
struct PoolErrorLog;

impl<E: std::fmt::Display> diesel::r2d2::HandleError<E> for PoolErrorLog {
    fn handle_error(&self, error: E) {
        tracing::warn!(error = %error, "database connection failed");
    }
}

/// Escapes `%`, `_` and `\` for a LIKE pattern with `ESCAPE '\'`.
pub fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(escape_like("a_b%c\\d"), "a\\_b\\%c\\\\d");
        assert_eq!(escape_like("rule."), "rule.");
    }
}
