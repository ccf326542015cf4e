//! The command line: `annuaire [--config FILE] <command>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::runtime::Annuaire;
use crate::{http, telemetry};

mod admin;
mod allowlist;
mod directory;
mod homeserver;
mod keys;

pub use admin::AdminCommand;
pub use allowlist::AllowlistCommand;
pub use directory::{DirectoryCommand, LdapCommand};
pub use homeserver::HomeserverCommand;
pub use keys::KeysCommand;

use admin::{admin_command, unix_user};
use allowlist::allowlist_command;
use directory::{directory_command, ldap_command};
use homeserver::homeserver_command;
use keys::keys_command;

/// annuaire: identity and directory service for sovereign, sharded Matrix deployments.
///
/// It lets only people with an agency email address register, confirms their address by email,
/// tells each address which homeserver (shard) it belongs to, serves the Matrix Identity Service
/// API, and publishes a cross-shard directory of verified names.
#[derive(Debug, Parser)]
#[command(name = "annuaire", version, about, long_about)]
pub struct Cli {
    /// Configuration file (TOML). Default: `annuaire.toml` in the working directory if it exists,
    /// else built-in defaults. `ANNUAIRE_SECTION__KEY` environment variables override it
    /// (e.g. `ANNUAIRE_DATABASE__URL=postgres://…`). See annuaire.example.toml for every key.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service: applies database migrations and imports `policy.allowlists_dir`,
    /// then serves the Identity Service API, the policy endpoints (/info, /internal-info), the
    /// directory search, the administration API (/_annuaire, or on http.admin_bind) and the
    /// health and metrics endpoints, with the mail outbox and the periodic jobs, until SIGTERM
    /// or Ctrl-C. SIGHUP reimports the allowlists folder and rereads the terms file, the mail
    /// templates and rotated keys (the configuration file is read at start only).
    Serve,
    /// Apply pending database migrations and exit (serve also does it at start).
    Migrate,
    /// Check the configuration and the allowlist files and print the effective settings
    /// (secrets are not printed); exits non-zero and names the key or file:line when something
    /// is wrong.
    CheckConfig,
    /// Manage and test the domain allowlists.
    #[command(subcommand)]
    Allowlist(AllowlistCommand),
    /// The identity server's signing keys and lookup pepper: generate, rotate, list.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage the accounts of the administration API (/_annuaire/admin/v1). Changes are written
    /// to the audit log as `cli:<unix user>`.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The cross-shard directory: search it, fill it with synthetic people.
    #[command(subcommand)]
    Directory(DirectoryCommand),
    /// The agency LDAP directory: sync verified names from it, look one address up.
    #[command(subcommand)]
    Ldap(LdapCommand),
    /// The tokens of the homeserver API (/_annuaire/homeserver/v1), one per homeserver, which
    /// the Synapse module of contrib/synapse uses. Changes are written to the audit log as
    /// `cli:<unix user>`.
    #[command(subcommand)]
    Homeserver(HomeserverCommand),
}

/// A failed command: its message, and the process exit code.
#[derive(Debug)]
pub struct CliError {
    /// What went wrong, for the operator.
    pub message: String,
    /// 1 = runtime failure, 2 = bad configuration or usage.
    pub code: u8,
}

impl CliError {
    fn runtime(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            code: 1,
        }
    }
    fn config(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            code: 2,
        }
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("annuaire: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let config = Config::load(cli.config.as_deref()).map_err(CliError::config)?;
    telemetry::init_logging(&config.log);
    match cli.command {
        Command::Serve => block_on(serve(config)),
        Command::Migrate => block_on(migrate(config)),
        Command::CheckConfig => check_config(&config),
        Command::Allowlist(cmd) => allowlist_command(&config, cmd),
        Command::Keys(cmd) => keys_command(&config, cmd),
        Command::Admin(cmd) => admin_command(&config, cmd),
        Command::Directory(command) => block_on(directory_command(config, command)),
        Command::Ldap(command) => block_on(ldap_command(config, command)),
        Command::Homeserver(cmd) => homeserver_command(&config, cmd),
    }
}

fn block_on<F: std::future::Future<Output = Result<(), CliError>>>(f: F) -> Result<(), CliError> {
    actix_web::rt::System::new().block_on(f)
}

async fn serve(config: Config) -> Result<(), CliError> {
    telemetry::install_metrics();
    let bind = config.http.bind;
    let listener =
        http::bind(bind).map_err(|e| CliError::runtime(format!("cannot listen on {bind}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::runtime(format!("cannot listen on {bind}: {e}")))?;
    let admin_listener = match config.http.admin_bind {
        Some(addr) => Some(
            http::bind(addr)
                .map_err(|e| CliError::runtime(format!("cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    let admin_local = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|e| CliError::runtime(format!("cannot listen on the admin address: {e}")))?;
    let app = Annuaire::open(config).await.map_err(CliError::runtime)?;
    crate::runtime::reload_on_sighup(&app)
        .map_err(|e| CliError::runtime(format!("cannot handle SIGHUP: {e}")))?;
    let server = http::server_with_admin(app.clone(), listener, admin_listener)
        .map_err(CliError::runtime)?;
    crate::runtime::start_background_jobs(&app);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %local,
        admin_listen = admin_local.map(|a| a.to_string()),
        admin_api = http::AdminExposure::of(&app.config, admin_local.is_some()).describe(),
        public_base_url = %app.config.public_base_url(),
        database = app.db.backend().name(),
        data_dir = %app.config.server.data_dir.display(),
        server_name = %app.config.server.name,
        "annuaire started"
    );
    server
        .await
        .map_err(|e| CliError::runtime(format!("server error: {e}")))?;
    app.shutdown().await;
    tracing::info!("annuaire stopped");
    Ok(())
}

async fn migrate(config: Config) -> Result<(), CliError> {
    let url = config.database_url();
    let pool_size = config.database.pool_size;
    let timeout = config.database.connection_timeout.0;
    let applied = tokio::task::spawn_blocking(move || {
        let db = crate::store::Db::connect(&url, pool_size, timeout)?;
        db.migrate().map(|applied| (db.backend(), applied))
    })
    .await
    .map_err(CliError::runtime)?
    .map_err(CliError::runtime)?;
    let (backend, applied) = applied;
    if applied.is_empty() {
        println!("{}: the schema is up to date", backend.name());
    } else {
        for version in &applied {
            println!("{}: applied {version}", backend.name());
        }
    }
    Ok(())
}

fn check_config(config: &Config) -> Result<(), CliError> {
    let dir = &config.policy.allowlists_dir;
    let rules = if dir.as_os_str().is_empty() || !dir.is_dir() {
        None
    } else {
        let rules = crate::allowlist::parse_allowlist_dir(dir).map_err(CliError::config)?;
        crate::policy::PolicyIndex::build(rules.clone(), config.policy.default_policy())
            .map_err(|e| CliError::config(crate::allowlist::AllowlistError::Rules(e)))?;
        Some(rules.len())
    };
    // A broken override template would stop `serve`: say so now.
    crate::mail::Templates::load(config.mail.templates_dir.as_deref())
        .and_then(|t| t.check_default_language(config.mail.default_language))
        .map_err(CliError::config)?;
    crate::web::WebTemplates::load(config.web.templates_dir.as_deref())
        .map_err(CliError::config)?;
    if config.mail.transport == crate::config::MailTransportKind::Smtp {
        config.mail.smtp.read_password().map_err(CliError::config)?;
    }
    let terms = match &config.terms.file {
        Some(path) => Some(crate::identity::terms::Terms::load(path).map_err(CliError::config)?),
        None => None,
    };
    if let Some(path) = &config.server.signing_key_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::config(format!(
                "server.signing_key_file: cannot read {}: {e}",
                path.display()
            ))
        })?;
        crate::matrix::signing::SigningKey::parse_sydent(&text).map_err(|e| {
            CliError::config(format!("server.signing_key_file ({}): {e}", path.display()))
        })?;
    }
    println!("configuration is valid");
    println!("  server.name        = {}", config.server.name);
    println!(
        "  server.data_dir    = {}",
        config.server.data_dir.display()
    );
    println!("  http.bind          = {}", config.http.bind);
    println!(
        "  http.admin_bind    = {}",
        config
            .http
            .admin_bind
            .map_or_else(|| "unset".to_string(), |a| a.to_string())
    );
    println!(
        "  admin API, metrics = {}",
        http::AdminExposure::of(config, config.http.admin_bind.is_some()).describe()
    );
    println!(
        "  internal networks  = {}",
        list_or_none(&config.http.internal_networks)
    );
    println!(
        "  trusted proxies    = {}",
        list_or_none(&config.http.trusted_proxies)
    );
    println!("  public base URL    = {}", config.public_base_url());
    println!(
        "  TLS                = {}",
        if config.tls_enabled() { "on" } else { "off" }
    );
    println!(
        "  database           = {}",
        redact_url(&config.database_url())
    );
    println!("  http.max_body      = {}", config.http.max_body);
    println!(
        "  policy.default     = {}",
        match config.policy.default_policy() {
            crate::policy::DefaultPolicy::Deny => "deny".to_string(),
            crate::policy::DefaultPolicy::InviteOnly {
                external_homeserver,
            } => format!("invite_only (externals on {external_homeserver})"),
        }
    );
    match config.mail.transport {
        crate::config::MailTransportKind::File => println!(
            "  mail.transport     = file ({})",
            config.mail_file_dir().display()
        ),
        crate::config::MailTransportKind::Smtp => println!(
            "  mail.transport     = smtp ({}:{}, security {})",
            config.mail.smtp.host, config.mail.smtp.port, config.mail.smtp.security
        ),
    }
    println!(
        "  retention          = audit {}, attempts {}, purge every {}",
        days(config.retention.audit.0),
        days(config.retention.attempts.0),
        config.retention.interval
    );
    println!(
        "  signing key        = {}",
        match &config.server.signing_key_file {
            Some(path) => format!("{} (valid)", path.display()),
            None => "kept in the database".to_string(),
        }
    );
    println!(
        "  terms              = {}",
        match (&config.terms.file, &terms) {
            (Some(path), Some(t)) => format!(
                "{} (version {}, {} policies)",
                path.display(),
                t.master_version(),
                t.policies().len()
            ),
            _ => "none".to_string(),
        }
    );
    match rules {
        Some(n) => println!(
            "  allowlists         = {} ({n} rules, valid)",
            dir.display()
        ),
        None => println!(
            "  allowlists         = {} (not found: no import)",
            dir.display()
        ),
    }
    Ok(())
}

/// `a, b, c`, or `none`.
fn list_or_none<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_string();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A retention period in whole days when it is one (`365days`), else humantime's form.
fn days(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(86_400) && d.subsec_nanos() == 0 {
        format!("{}days", secs / 86_400)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Opens the database for a command (applying pending migrations under the start-up lock).
fn open_db(config: &Config) -> Result<crate::store::Db, CliError> {
    let db = crate::store::Db::connect(
        &config.database_url(),
        2,
        config.database.connection_timeout.0,
    )
    .map_err(CliError::runtime)?;
    db.migrate().map_err(CliError::runtime)?;
    Ok(db)
}

fn now_ms() -> i64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.now_ms()
}

fn live_rules(config: &Config) -> Result<Vec<crate::policy::Rule>, CliError> {
    let db = open_db(config)?;
    let mut conn = db.get().map_err(CliError::runtime)?;
    let rules = crate::store::policy::load_rules(&mut conn).map_err(CliError::runtime)?;
    Ok(rules.into_iter().map(|s| s.rule).collect())
}

/// Hides the password of a URL (`postgres://user:secret@host` → `postgres://user:***@host`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}
