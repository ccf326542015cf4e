//! The assembled service: configuration, database and the domain services, shared by the HTTP
//! handlers, the background jobs and the CLI.

use std::sync::Arc;

use rand::Rng;
use rand::distributions::Alphanumeric;

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::store::{self, Db, StoreError};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Something in the configuration or its files is wrong.
    #[error("{0}")]
    Config(String),
}

/// The running service's shared parts.
pub struct Annuaire {
    /// The configuration it was started with.
    pub config: Arc<Config>,
    /// The database.
    pub db: Db,
    /// The clock every expiry decision reads.
    pub clock: SharedClock,
}

impl std::fmt::Debug for Annuaire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Annuaire")
            .field("server", &self.config.server.name)
            .field("db", &self.db)
            .finish()
    }
}

impl Annuaire {
    /// Opens the database, applies migrations and runs the start-up jobs (under the start-up
    /// lock on PostgreSQL), with the system clock.
    pub async fn open(config: Config) -> Result<Arc<Annuaire>, StartError> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Annuaire::open`], with an injected clock (tests).
    pub async fn open_with_clock(
        config: Config,
        clock: SharedClock,
    ) -> Result<Arc<Annuaire>, StartError> {
        let config = Arc::new(config);
        let url = config.database_url();
        let db = {
            let pool_size = config.database.pool_size;
            let timeout = config.database.connection_timeout.0;
            tokio::task::spawn_blocking(move || Db::connect(&url, pool_size, timeout))
                .await
                .map_err(|e| StartError::Config(format!("start-up task failed: {e}")))??
        };
        let now = clock.now_ms();
        let startup_db = db.clone();
        let applied = tokio::task::spawn_blocking(move || {
            startup_db.with_startup_lock(|conn| {
                let applied = store::run_migrations(conn)?;
                store::state::get_or_insert(conn, store::state::DATABASE_ID, &random_id(), now)?;
                Ok(applied)
            })
        })
        .await
        .map_err(|e| StartError::Config(format!("start-up task failed: {e}")))??;
        if !applied.is_empty() {
            tracing::info!(count = applied.len(), "applied database migrations");
        }
        Ok(Arc::new(Annuaire { config, db, clock }))
    }
}

/// A random identifier (24 alphanumeric characters).
pub fn random_id() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}
