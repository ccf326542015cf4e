//! The running service: assembles the domain services from the configuration (the only place
//! that knows them all) and starts the background jobs. It sits above the domains and below the
//! command line.

use std::sync::Arc;

use std::net::IpAddr;
use std::time::Duration;

use crate::admin::{Admin, AdminParts};
use crate::allowlist::{self, Allowlist, AllowlistError};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::directory::{DirectoryParts, DirectoryService};
use crate::domain_requests::{DomainRequests, DomainRequestsParts};
use crate::federation::FederationClient;
use crate::homeserver::{HomeserverParts, HomeserverService};
use crate::identity::{IdentityParts, IdentityService};
use crate::mail::outbox::Mailer;
use crate::ratelimit::KeyedLimit;
use crate::store::{self, Db, StoreError};
use crate::web::WebTemplates;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Something in the configuration or its files is wrong.
    #[error("{0}")]
    Config(String),
    /// The allowlists could not be imported or loaded.
    #[error("allowlists: {0}")]
    Allowlist(#[from] AllowlistError),
    /// The mail templates or transport are unusable.
    #[error("mail: {0}")]
    Mail(#[from] crate::mail::MailError),
    /// The web page templates are unusable.
    #[error("web pages: {0}")]
    Web(#[from] crate::web::WebError),
}

/// The in-process rate limits the HTTP layer applies itself.
#[derive(Debug)]
pub struct Limits {
    /// `/info` per client IP.
    pub info_per_ip: KeyedLimit<IpAddr>,
}

/// The running service: the configuration and the domain services, composed once and shared by
/// the HTTP handlers, the background jobs and the command line. It holds no logic of its own.
pub struct Annuaire {
    /// The configuration it was started with.
    pub config: Arc<Config>,
    /// The database.
    pub db: Db,
    /// The clock every expiry decision reads.
    pub clock: SharedClock,
    /// The live allowlist.
    pub allowlist: Arc<Allowlist>,
    /// Rate limits applied by the HTTP layer.
    pub limits: Limits,
    /// Outgoing mail: templates, transport, outbox worker.
    pub mailer: Arc<Mailer>,
    /// Pages served to browsers.
    pub web: Arc<WebTemplates>,
    /// The Identity Service.
    pub identity: Arc<IdentityService>,
    /// The cross-shard directory.
    pub directory: Arc<DirectoryService>,
    /// Administration.
    pub admin: Arc<Admin>,
    /// The homeserver API (homeservers reporting their accounts).
    pub homeserver: Arc<HomeserverService>,
    /// Agents' requests for their administration ("my administration is not listed").
    pub requests: Arc<DomainRequests>,
}

impl std::fmt::Debug for Annuaire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Annuaire")
            .field("server", &self.config.server.name)
            .field("db", &self.db)
            .finish()
    }
}

fn task_failed(e: tokio::task::JoinError) -> StartError {
    StartError::Config(format!("start-up task failed: {e}"))
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
                .map_err(task_failed)??
        };
        let now = clock.now_ms();
        let startup_db = db.clone();
        let startup_config = config.clone();
        let allowlist = tokio::task::spawn_blocking(move || {
            startup_db.with_startup_lock(|conn| startup_jobs(conn, &startup_config, now))
        })
        .await
        .map_err(task_failed)??;
        let allowlist = Arc::new(allowlist);
        let limits = Limits {
            info_per_ip: KeyedLimit::new(&config.rate_limits.info_per_ip),
        };
        // Templates are read and checked once: a broken override stops the start here.
        let mailer = Arc::new(Mailer::from_config(&config, db.clone(), clock.clone())?);
        let web = Arc::new(WebTemplates::load(config.web.templates_dir.as_deref())?);
        let federation_settings =
            crate::federation::FederationSettings::from_config(&config.federation)
                .map_err(|e| StartError::Config(e.to_string()))?;
        let federation = FederationClient::with_clock(federation_settings, clock.clone())
            .map_err(|e| StartError::Config(e.to_string()))?;
        let directory = Arc::new(DirectoryService::new(DirectoryParts {
            config: config.clone(),
            db: db.clone(),
            clock: clock.clone(),
            federation: federation.clone(),
        }));
        let identity = Arc::new(
            IdentityService::open(IdentityParts {
                config: config.clone(),
                db: db.clone(),
                clock: clock.clone(),
                allowlist: allowlist.clone(),
                mailer: mailer.clone(),
                federation,
                directory: directory.clone(),
            })
            .await
            .map_err(|e| StartError::Config(e.to_string()))?,
        );
        let homeserver = Arc::new(HomeserverService::new(HomeserverParts {
            db: db.clone(),
            clock: clock.clone(),
            allowlist: allowlist.clone(),
            identity: identity.clone(),
            directory: directory.clone(),
        }));
        let admin = Arc::new(
            Admin::open(AdminParts {
                config: config.clone(),
                db: db.clone(),
                clock: clock.clone(),
                allowlist: allowlist.clone(),
                identity: identity.clone(),
            })
            .await
            .map_err(|e| StartError::Config(format!("administration: {e}")))?,
        );
        let requests = Arc::new(DomainRequests::new(DomainRequestsParts {
            config: config.clone(),
            db: db.clone(),
            clock: clock.clone(),
            allowlist: allowlist.clone(),
            mailer: mailer.clone(),
            templates: crate::mail::domain_request::DomainRequestTemplates::load(
                config.mail.templates_dir.as_deref(),
            )?,
        }));
        Ok(Arc::new(Annuaire {
            config,
            db,
            clock,
            allowlist,
            limits,
            mailer,
            web,
            identity,
            directory,
            admin,
            homeserver,
            requests,
        }))
    }
}

/// Migrations, shared state, the allowlist import: what one instance does at start while it
/// holds the start-up lock.
fn startup_jobs(
    conn: &mut store::DbConn,
    config: &Config,
    now: i64,
) -> Result<Allowlist, StartError> {
    let applied = store::run_migrations(conn)?;
    if !applied.is_empty() {
        tracing::info!(count = applied.len(), "applied database migrations");
    }
    store::state::get_or_insert(
        conn,
        store::state::DATABASE_ID,
        &crate::secret::random_id(),
        now,
    )?;
    let default = config.policy.default_policy();
    import_allowlists(conn, config, &crate::audit::Actor::startup(), now)?;
    let allowlist = Allowlist::load(conn, default)?;
    tracing::info!(rules = allowlist.index().rules().len(), "allowlist loaded");
    Ok(allowlist)
}

/// Imports `policy.allowlists_dir` into the database (the caller holds the start-up lock), as
/// `serve` does at start and on SIGHUP; (added, changed, removed), or `None` when there is no
/// folder to import.
fn import_allowlists(
    conn: &mut store::DbConn,
    config: &Config,
    actor: &crate::audit::Actor,
    now: i64,
) -> Result<Option<(usize, usize, usize)>, StartError> {
    let default = config.policy.default_policy();
    let dir = &config.policy.allowlists_dir;
    if dir.as_os_str().is_empty() {
        tracing::info!("policy.allowlists_dir is empty: no allowlist import");
        return Ok(None);
    }
    if !dir.is_dir() {
        tracing::warn!(
            dir = %dir.display(),
            "allowlist folder not found: file rules left as they are"
        );
        return Ok(None);
    }
    let diff = crate::admin::rules::import_dir_audited(conn, dir, &default, false, actor, now)?;
    tracing::info!(
        dir = %dir.display(),
        added = diff.added.len(),
        changed = diff.changed.len(),
        removed = diff.removed.len(),
        "allowlists imported"
    );
    for line in allowlist::describe_diff(&diff) {
        tracing::debug!(change = %line, "allowlist change");
    }
    Ok(Some((
        diff.added.len(),
        diff.changed.len(),
        diff.removed.len(),
    )))
}

/// What a reload (SIGHUP) did, part by part; a failed part leaves what it reloads as it was.
#[derive(Debug)]
pub struct ReloadReport {
    /// The allowlist import: (added, changed, removed), `None` without a folder.
    pub allowlists: Result<Option<(usize, usize, usize)>, String>,
    /// `terms.file`.
    pub terms: Result<(), String>,
    /// The mail templates.
    pub mail_templates: Result<(), String>,
    /// The signing keys and admin token secrets (a rotation by the command line).
    pub keys: Result<(), String>,
}

impl ReloadReport {
    /// Whether every part reloaded.
    pub fn is_ok(&self) -> bool {
        self.allowlists.is_ok()
            && self.terms.is_ok()
            && self.mail_templates.is_ok()
            && self.keys.is_ok()
    }
}

impl Annuaire {
    /// Reloads what can change without a restart (SIGHUP, `systemctl reload annuaire`): imports
    /// the allowlists folder (under the start-up lock, audited as `reload`) and applies the
    /// rules, rereads `terms.file` and the mail templates, and the keys and secrets a rotation
    /// changed. The configuration file itself, the listeners and the web page templates are
    /// read at start only. Each part that fails is logged and leaves what it covers as it was.
    pub async fn reload(self: &Arc<Self>) -> ReloadReport {
        let app = self.clone();
        let now = self.clock.now_ms();
        let allowlists = tokio::task::spawn_blocking(move || {
            app.db.with_startup_lock(|conn| {
                let imported =
                    import_allowlists(conn, &app.config, &crate::audit::Actor::reload(), now)?;
                app.allowlist.reload_if_changed(conn, now)?;
                Ok::<_, StartError>(imported)
            })
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let terms = self.identity.reload_terms();
        let mail_templates = self.mailer.reload_templates().map_err(|e| e.to_string());
        let keys = match self.identity.refresh_keys().await {
            Ok(()) => self
                .admin
                .refresh_secrets()
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let report = ReloadReport {
            allowlists,
            terms,
            mail_templates,
            keys,
        };
        for (part, result) in [
            ("allowlists", report.allowlists.as_ref().map(|_| ())),
            ("terms", report.terms.as_ref().map(|_| ())),
            ("mail templates", report.mail_templates.as_ref().map(|_| ())),
            ("keys", report.keys.as_ref().map(|_| ())),
        ] {
            if let Err(e) = result {
                tracing::error!(part, error = %e, "reload failed; keeping what was loaded");
            }
        }
        tracing::info!(ok = report.is_ok(), "configuration reloaded");
        report
    }
}

/// Runs [`Annuaire::reload`] on every SIGHUP (on the current runtime; ends with it). Until it
/// is called, SIGHUP ends the process, as it does any program.
pub fn reload_on_sighup(app: &Arc<Annuaire>) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let app = app.clone();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            app.reload().await;
        }
    });
    Ok(())
}

/// Starts the periodic jobs of this instance on the current runtime; they end with it: the
/// outbox worker, the validation and identity purges, the identity change feed reader, the
/// invitation delivery worker, the periodic LDAP sync, the retention purge, the directory
/// gauges, the key refresh, and the rule reload with the attempt-counter flush and the rate
/// limiters' housekeeping.
pub fn start_background_jobs(app: &Arc<Annuaire>) {
    crate::mail::outbox::start_worker(&app.mailer);
    crate::identity::sessions::start_purge_job(&app.identity);
    crate::identity::start_housekeeping(&app.identity);
    crate::identity::live::start_sync(&app.identity);
    crate::identity::delivery::start_worker(&app.identity);
    crate::directory::ldap_sync::start_periodic_sync(&app.directory);
    crate::admin::retention::start_job(&app.admin);
    crate::directory::start_gauges(&app.directory);
    start_key_refresh(app);
    crate::domain_requests::start_purge_job(&app.requests);
    // The dashboard's directory counts, made once now rather than by the first visitor.
    let admin = app.admin.clone();
    tokio::spawn(async move {
        if let Err(e) = admin
            .directory_stats_snapshot(crate::admin::service::DASHBOARD_GROUPS)
            .await
        {
            tracing::warn!(error = %e, "directory count at start failed");
        }
    });
    let app = app.clone();
    tokio::spawn(async move {
        let interval = app.config.policy.reload_interval.0;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_flush = std::time::Instant::now();
        let mut last_housekeeping = std::time::Instant::now();
        loop {
            ticker.tick().await;
            let allowlist = app.allowlist.clone();
            let now = app.clock.now_ms();
            let flush = last_flush.elapsed() >= Duration::from_secs(10);
            let result = app
                .db
                .run(move |conn| {
                    allowlist
                        .reload_if_changed(conn, now)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    if flush {
                        allowlist.flush_attempts(conn)?;
                    }
                    Ok(())
                })
                .await;
            if flush {
                last_flush = std::time::Instant::now();
            }
            if let Err(e) = result {
                tracing::warn!(error = %e, "allowlist refresh failed; keeping the current rules");
            }
            if last_housekeeping.elapsed() >= Duration::from_secs(60) {
                app.limits.info_per_ip.housekeep();
                app.identity.housekeep();
                app.directory.housekeep();
                app.admin.housekeep();
                if let Err(e) = app.admin.purge_console_sessions().await {
                    tracing::warn!(error = %e, "console session purge failed");
                }
                last_housekeeping = std::time::Instant::now();
            }
        }
    });
}

/// Rereads the signing keys and the admin token secrets every
/// [`crate::identity::keys::KEY_REFRESH_INTERVAL`], so that a rotation made by the command line
/// (or another instance) reaches this one.
fn start_key_refresh(app: &Arc<Annuaire>) {
    let app = app.clone();
    tokio::spawn(async move {
        let every = crate::identity::keys::KEY_REFRESH_INTERVAL;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = app.identity.refresh_keys().await {
                tracing::warn!(error = %e, "could not reread the signing keys; keeping them");
            }
            if let Err(e) = app.admin.refresh_secrets().await {
                tracing::warn!(error = %e, "could not reread the admin token secrets; keeping them");
            }
        }
    });
}

impl Annuaire {
    /// Work to finish before the process exits (counters not yet written).
    pub async fn shutdown(self: &Arc<Self>) {
        let app = self.clone();
        if let Err(e) = self
            .db
            .run(move |conn| app.allowlist.flush_attempts(conn))
            .await
        {
            tracing::warn!(error = %e, "could not write the attempt counters at shutdown");
        }
    }
}
