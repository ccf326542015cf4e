//! The command line: `annuaire [--config FILE] <command>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::Annuaire;
use crate::config::Config;
use crate::{http, telemetry};

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
    /// Run the HTTP service: applies database migrations, then serves the Identity Service API,
    /// the policy endpoints and the health and metrics endpoints until SIGTERM or Ctrl-C.
    Serve,
    /// Apply pending database migrations and exit (serve also does it at start).
    Migrate,
    /// Check the configuration and print the effective settings (secrets are not printed);
    /// exits non-zero and names the key when something is wrong.
    CheckConfig,
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
    let app = Annuaire::open(config).await.map_err(CliError::runtime)?;
    let server = http::server(app.clone(), listener).map_err(CliError::runtime)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %local,
        public_base_url = %app.config.public_base_url(),
        database = app.db.backend().name(),
        data_dir = %app.config.server.data_dir.display(),
        server_name = %app.config.server.name,
        "annuaire started"
    );
    server
        .await
        .map_err(|e| CliError::runtime(format!("server error: {e}")))?;
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
    println!("configuration is valid");
    println!("  server.name        = {}", config.server.name);
    println!(
        "  server.data_dir    = {}",
        config.server.data_dir.display()
    );
    println!("  http.bind          = {}", config.http.bind);
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
    Ok(())
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
