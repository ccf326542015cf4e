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
    /// Run the HTTP service: applies database migrations and imports `policy.allowlists_dir`,
    /// then serves the Identity Service API, the policy endpoints (/info, /internal-info), the
    /// directory search, the administration API (/_annuaire, or on http.admin_bind) and the
    /// health and metrics endpoints, with the mail outbox and the periodic jobs, until SIGTERM
    /// or Ctrl-C.
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
    /// The identity server's signing key and lookup pepper.
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
}

/// `annuaire keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new ed25519 signing key in Sydent's format (`ed25519 0 <base64 seed>`), for
    /// `server.signing_key_file`. Without that key, annuaire creates its key once and keeps it
    /// in the database; this command does not change the key in use.
    Generate {
        /// Write the key to FILE (mode 0600) instead of printing it.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Overwrite FILE if it exists (the old key is lost: signatures made with it stop
        /// verifying).
        #[arg(long, requires = "output")]
        force: bool,
    },
    /// Replace the lookup pepper: every bound address is rehashed in batches while lookups go
    /// on with the current pepper, then the new one is served. Clients holding the old pepper
    /// get M_INVALID_PEPPER with the new one. An interrupted rotation resumes when run again.
    RotatePepper {
        /// Associations hashed per transaction.
        #[arg(long, default_value_t = 1000, value_name = "N")]
        batch_size: i64,
    },
}

/// `annuaire admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a local admin account (argon2id password hash). The password is read from
    /// standard input (one line) unless --password-file is given; at least 12 characters.
    Add {
        /// Account name: 1 to 64 of a-z, 0-9, `.`, `_`, `-`.
        #[arg(value_name = "USER")]
        username: String,
        /// `viewer` (read only) or `editor` (read and change).
        #[arg(long, value_parser = ["viewer", "editor"])]
        role: String,
        /// Read the password from this file (its first line) instead of standard input.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Remove an admin account; its tokens stop working at once.
    Remove {
        /// Account name.
        #[arg(value_name = "USER")]
        username: String,
    },
    /// List the admin accounts (never their password hashes).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a token for automation (`Authorization: Bearer …`) on standard output.
    Token {
        /// Account name.
        #[arg(value_name = "USER")]
        username: String,
        /// Lifetime: "30m", "1h", "90days" (at most 366 days).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// `annuaire allowlist …`
#[derive(Debug, Subcommand)]
pub enum AllowlistCommand {
    /// Explain the decision for each address: outcome, homeserver, shadow homeserver,
    /// organisation, the rule that matched (file:line or admin:<id>) and why.
    Check {
        /// Read the rules from this folder of allowlist files only (no database needed);
        /// without it, the live rules in the database are used.
        #[arg(long, value_name = "DIR")]
        allowlists: Option<PathBuf>,
        /// One JSON object per line: {"address","outcome","homeserver","shadow_homeserver",
        /// "organisation","rule","reason"}.
        #[arg(long)]
        json: bool,
        /// Addresses to check. An invalid address gives outcome `invalid` (exit code 0).
        #[arg(required = true, value_name = "ADDRESS")]
        addresses: Vec<String>,
    },
    /// Make the database's file-sourced rules equal to the files in DIR (paths relative to DIR),
    /// printing what is added, changed and removed. Rules created through the admin API are left
    /// alone.
    Import {
        /// The allowlists folder.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Print the changes without applying them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write the live rules as allowlist files into DIR: one file per source file, and
    /// `admin.toml` for the rules created through the admin API.
    Export {
        /// The folder to write (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Overwrite files that already exist.
        #[arg(long)]
        force: bool,
    },
    /// List the live rules.
    List {
        /// Only rules that apply to this domain (the domain itself, its parents' subdomain
        /// rules, and addresses at it).
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
        /// One JSON rule per line (the admin API's format).
        #[arg(long)]
        json: bool,
    },
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
    let server = http::server_with_admin(app.clone(), listener, admin_listener)
        .map_err(CliError::runtime)?;
    crate::app::start_background_jobs(&app);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %local,
        admin_listen = admin_local.map(|a| a.to_string()),
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
    crate::mail::Templates::load(config.mail.templates_dir.as_deref()).map_err(CliError::config)?;
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
        crate::identity::signing::SigningKey::parse_sydent(&text).map_err(|e| {
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
            "  mail.transport     = smtp ({}:{}, {:?})",
            config.mail.smtp.host, config.mail.smtp.port, config.mail.smtp.security
        ),
    }
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

fn allowlist_command(config: &Config, cmd: AllowlistCommand) -> Result<(), CliError> {
    use crate::allowlist::{self, AllowlistError};
    use crate::policy::{PolicyIndex, normalize_email};
    match cmd {
        AllowlistCommand::Check {
            allowlists,
            json,
            addresses,
        } => {
            let rules = match &allowlists {
                Some(dir) => allowlist::parse_allowlist_dir(dir).map_err(CliError::config)?,
                None => live_rules(config)?,
            };
            let index = PolicyIndex::build(rules, config.policy.default_policy())
                .map_err(|e| CliError::config(AllowlistError::Rules(e)))?;
            let now = now_ms();
            for input in &addresses {
                let line = match normalize_email(input) {
                    Ok(address) => {
                        let d = index.decide(&address, now);
                        serde_json::json!({
                            "address": address.as_str(),
                            "outcome": d.outcome.as_str(),
                            "homeserver": d.homeserver,
                            "shadow_homeserver": d.shadow_homeserver,
                            "organisation": d.organisation,
                            "rule": d.rule,
                            "reason": d.reason,
                        })
                    }
                    Err(e) => serde_json::json!({
                        "address": input,
                        "outcome": "invalid",
                        "homeserver": null,
                        "shadow_homeserver": null,
                        "organisation": null,
                        "rule": null,
                        "reason": e.to_string(),
                    }),
                };
                if json {
                    println!("{line}");
                } else {
                    print_check(&line);
                }
            }
            Ok(())
        }
        AllowlistCommand::Import { dir, dry_run } => {
            if !dir.is_dir() {
                return Err(CliError::config(format!(
                    "{} is not a folder",
                    dir.display()
                )));
            }
            let db = open_db(config)?;
            let default = config.policy.default_policy();
            let now = now_ms();
            let diff = db
                .with_startup_lock(|conn| {
                    let actor = crate::admin::Actor::cli(&unix_user());
                    crate::admin::rules::import_dir_audited(
                        conn, &dir, &default, dry_run, &actor, now,
                    )
                })
                .map_err(|e| match e {
                    AllowlistError::Store(_) => CliError::runtime(e),
                    other => CliError::config(other),
                })?;
            for line in allowlist::describe_diff(&diff) {
                println!("{line}");
            }
            println!(
                "{} added, {} changed, {} removed{}",
                diff.added.len(),
                diff.changed.len(),
                diff.removed.len(),
                if dry_run {
                    " (dry run: nothing was changed)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        AllowlistCommand::Export { dir, force } => {
            let rules = live_rules(config)?;
            let mut files: std::collections::BTreeMap<String, Vec<crate::policy::Rule>> =
                std::collections::BTreeMap::new();
            for rule in rules {
                let path = match &rule.source {
                    crate::policy::RuleSource::File { path, .. } => path.clone(),
                    crate::policy::RuleSource::Admin => "admin.toml".to_string(),
                };
                files.entry(path).or_default().push(rule);
            }
            for (path, rules) in &files {
                let target = dir.join(path);
                if target.exists() && !force {
                    return Err(CliError::config(format!(
                        "{} exists; use --force to overwrite",
                        target.display()
                    )));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        CliError::runtime(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                std::fs::write(&target, crate::policy::render_allowlist_file(rules)).map_err(
                    |e| CliError::runtime(format!("cannot write {}: {e}", target.display())),
                )?;
                println!("wrote {} ({} rules)", target.display(), rules.len());
            }
            if files.is_empty() {
                println!("no rules to export");
            }
            Ok(())
        }
        AllowlistCommand::List { domain, json } => {
            let filter = match &domain {
                Some(d) => Some(
                    crate::policy::normalize_domain(d)
                        .map_err(|e| CliError::config(format!("--domain {d}: {e}")))?,
                ),
                None => None,
            };
            let rules = live_rules(config)?;
            let mut shown = 0;
            for rule in rules
                .iter()
                .filter(|r| filter.as_deref().is_none_or(|d| applies_to_domain(r, d)))
            {
                shown += 1;
                if json {
                    println!("{}", rule.to_json());
                } else {
                    println!(
                        "{:<18} {:<8} {:<40} {:<32} {:<16} {}",
                        rule.id,
                        rule.kind.as_str(),
                        rule.target.value(),
                        rule.homeserver.as_deref().unwrap_or("-"),
                        rule.label.as_deref().unwrap_or("-"),
                        rule.reference()
                    );
                }
            }
            if !json {
                println!("{shown} rules");
            }
            Ok(())
        }
    }
}

fn keys_command(config: &Config, cmd: KeysCommand) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Generate { output, force } => {
            let key = crate::identity::signing::SigningKey::generate(&mut rand::rngs::OsRng);
            let line = format!("{}\n", key.to_sydent_string());
            match output {
                None => print!("{line}"),
                Some(path) => {
                    write_secret_file(&path, &line, force)?;
                    println!(
                        "wrote {} (key id {}, public key {})",
                        path.display(),
                        key.key_id(),
                        key.public_key_base64()
                    );
                }
            }
            Ok(())
        }
        KeysCommand::RotatePepper { batch_size } => {
            if batch_size < 1 {
                return Err(CliError::config("--batch-size: must be at least 1"));
            }
            let db = open_db(config)?;
            let mut conn = db.get().map_err(CliError::runtime)?;
            let mut last_report = std::time::Instant::now();
            let rotation = crate::identity::lookup::rotate_pepper(
                &mut conn,
                &mut rand::rngs::OsRng,
                batch_size,
                now_ms(),
                &mut |step, n| {
                    if last_report.elapsed() >= std::time::Duration::from_secs(5) {
                        println!("{step}: {n}");
                        last_report = std::time::Instant::now();
                    }
                },
            )
            .map_err(CliError::runtime)?;
            println!(
                "lookup pepper rotated: pepper #{} replaces #{} ({} associations rehashed, {} \
                 bound during the rotation, {} old hashes deleted)",
                rotation.pepper.id,
                rotation.previous_id,
                rotation.rehashed,
                rotation.swept,
                rotation.deleted
            );
            Ok(())
        }
    }
}

/// Writes a secret to a new file readable by its owner only (`force`: replace an existing one).
fn write_secret_file(path: &std::path::Path, content: &str, force: bool) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::config(format!(
                "{} exists; use --force to replace it (its key is then lost)",
                path.display()
            ))
        } else {
            CliError::runtime(format!("cannot write {}: {e}", path.display()))
        }
    })?;
    file.write_all(content.as_bytes())
        .map_err(|e| CliError::runtime(format!("cannot write {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        // A replaced file keeps its old mode otherwise.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| CliError::runtime(format!("cannot protect {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Whether a rule is relevant to `domain` (ASCII): a domain rule on it or on a parent with
/// subdomains, or an address rule at it.
fn applies_to_domain(rule: &crate::policy::Rule, domain: &str) -> bool {
    use crate::policy::RuleTarget;
    match &rule.target {
        RuleTarget::Domain { name, subdomains } => {
            name == domain || (*subdomains && domain.ends_with(&format!(".{name}")))
        }
        RuleTarget::Email(email) => email
            .rsplit_once('@')
            .and_then(|(_, d)| crate::policy::normalize_domain(d).ok())
            .is_some_and(|d| d == domain),
        RuleTarget::Regex(_) => false,
    }
}

fn print_check(line: &serde_json::Value) {
    let field = |k: &str| line[k].as_str().unwrap_or("-").to_string();
    println!("{}: {}", field("address"), field("outcome"));
    for (label, key) in [
        ("homeserver", "homeserver"),
        ("shadow", "shadow_homeserver"),
        ("organisation", "organisation"),
        ("rule", "rule"),
        ("reason", "reason"),
    ] {
        println!("  {label:<13} {}", field(key));
    }
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

// ---- annuaire admin ----

/// Who runs this command, for the audit log: `$USER`, `$LOGNAME`, or the numeric uid.
fn unix_user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var)
            && !name.is_empty()
        {
            return name;
        }
    }
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self") {
        Ok(m) => format!("uid{}", m.uid()),
        Err(_) => "unknown".to_string(),
    }
}

/// The password: the first line of `file`, or of standard input.
fn read_password(file: Option<&std::path::Path>) -> Result<String, CliError> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::config(format!("--password-file {}: {e}", path.display())))?,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| CliError::runtime(format!("cannot read the password: {e}")))?;
            line
        }
    };
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(CliError::config(
            "no password given (one line on standard input, or --password-file)",
        ));
    }
    Ok(password)
}

fn admin_command(config: &Config, cmd: AdminCommand) -> Result<(), CliError> {
    use crate::admin::{self, Actor, AdminError, Role};
    let fail = |e: AdminError| match e {
        AdminError::InvalidInput(_) => CliError::config(e),
        other => CliError::runtime(other),
    };
    let actor = Actor::cli(&unix_user());
    // Read the password before touching the database, so that a bad input changes nothing.
    let password = match &cmd {
        AdminCommand::Add { password_file, .. } => Some(read_password(password_file.as_deref())?),
        _ => None,
    };
    let db = open_db(config)?;
    let mut conn = db.get().map_err(CliError::runtime)?;
    let now = now_ms();
    match cmd {
        AdminCommand::Add { username, role, .. } => {
            let role = Role::parse(&role)
                .ok_or_else(|| CliError::config("--role: expected viewer or editor"))?;
            let account = admin::auth::add_account(
                &mut conn,
                &username,
                role,
                password.as_deref().unwrap_or(""),
                &actor,
                now,
                &mut rand::rngs::OsRng,
            )
            .map_err(fail)?;
            println!(
                "created admin account {} ({})",
                account.username, account.role
            );
        }
        AdminCommand::Remove { username } => {
            let account =
                admin::auth::remove_account(&mut conn, &username, &actor, now).map_err(fail)?;
            println!(
                "removed admin account {} ({})",
                account.username, account.role
            );
        }
        AdminCommand::List { json } => {
            let accounts = admin::auth::list_accounts(&mut conn, now).map_err(fail)?;
            for a in &accounts {
                if json {
                    println!("{}", serde_json::to_string(a).map_err(CliError::runtime)?);
                } else {
                    let when = |ms: Option<i64>| {
                        ms.and_then(|ms| u64::try_from(ms).ok())
                            .map(|ms| {
                                humantime::format_rfc3339_seconds(
                                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                                )
                                .to_string()
                            })
                            .unwrap_or_else(|| "-".to_string())
                    };
                    println!(
                        "{:<24} {:<7} {:<6} last login {:<21} {}",
                        a.username,
                        a.role,
                        a.source,
                        when(a.last_login_at),
                        match a.locked_until {
                            Some(_) => format!("locked until {}", when(a.locked_until)),
                            None => String::new(),
                        }
                    );
                }
            }
            if !json {
                println!("{} admin accounts", accounts.len());
            }
        }
        AdminCommand::Token { username, ttl } => {
            let ttl = humantime::parse_duration(ttl.trim())
                .map_err(|e| CliError::config(format!("--ttl {ttl}: {e}")))?;
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let service =
                admin::Admin::open(&mut conn, config, now, &mut rand::rngs::OsRng).map_err(fail)?;
            let token = service
                .issue_token(
                    &mut conn,
                    &username,
                    ttl_ms,
                    &actor,
                    now,
                    &mut rand::rngs::OsRng,
                )
                .map_err(fail)?;
            println!("{}", token.access_token);
            eprintln!(
                "token for {} ({}), valid for {}",
                username,
                token.role,
                humantime::format_duration(std::time::Duration::from_secs(
                    u64::try_from(token.expires_in).unwrap_or(0)
                ))
            );
        }
    }
    Ok(())
}

// ---- directory and ldap commands ----

/// `annuaire directory …`.
#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Search the directory as its users see it: hidden, deactivated and (unless
    /// directory.show_externals) external entries are not shown.
    Search {
        /// Every word must begin a word of the name, the organisation or the user id
        /// (accents and case do not matter).
        term: String,
        /// Only entries of this organisation.
        #[arg(long)]
        organisation: Option<String>,
        /// At most this many results (1 to 50).
        #[arg(long, default_value_t = crate::directory::service::DEFAULT_LIMIT)]
        limit: u32,
        /// Print the results as JSON (the client API's shape).
        #[arg(long)]
        json: bool,
    },
    /// Add N fake but realistic people (French and German names, 20 organisations over 5
    /// homeservers) for demos and benchmarks; the same seed gives the same people.
    ImportSynthetic {
        /// How many people.
        n: usize,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// `annuaire ldap …`.
#[derive(Debug, Subcommand)]
pub enum LdapCommand {
    /// Read the agency directory (ldap.*) and update verified names of directory entries;
    /// prints progress on stderr and a summary.
    Sync {
        /// Read and compare, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the agency directory says about one address (the name it would verify).
    Lookup {
        /// The email address.
        address: String,
    },
}

async fn directory_command(config: Config, command: DirectoryCommand) -> Result<(), CliError> {
    let app = Annuaire::open(config).await.map_err(CliError::runtime)?;
    match command {
        DirectoryCommand::Search {
            term,
            organisation,
            limit,
            json,
        } => {
            let results = crate::directory::search(
                &app,
                &term,
                organisation.as_deref(),
                Some(limit),
                crate::directory::Viewer::Operator,
            )
            .await
            .map_err(|e| match e {
                crate::directory::DirectoryError::Query(_) => CliError::config(e),
                other => CliError::runtime(other),
            })?;
            if json {
                let text = serde_json::to_string_pretty(&results).map_err(CliError::runtime)?;
                println!("{text}");
                return Ok(());
            }
            if results.results.is_empty() {
                println!("no match");
            }
            for r in &results.results {
                println!("{}\t{}", r.display_name, r.user_id);
            }
            if results.limited {
                println!("(more entries match: refine the search or raise --limit)");
            }
            Ok(())
        }
        DirectoryCommand::ImportSynthetic { n, seed } => {
            let started = std::time::Instant::now();
            let mut bar = Progress::new("import");
            let summary = crate::directory::import_synthetic(&app, n, seed, move |done, total| {
                bar.show(&format!("{done}/{total} people"), done == total);
            })
            .await
            .map_err(CliError::runtime)?;
            println!(
                "imported {} synthetic entries ({} already present) in {:.1}s",
                summary.inserted,
                summary.existing,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

async fn ldap_command(config: Config, command: LdapCommand) -> Result<(), CliError> {
    let settings = crate::ldap::LdapSettings::from_config(&config.ldap)
        .map_err(CliError::config)?
        .ok_or_else(|| CliError::config(crate::ldap::LdapError::NotConfigured))?;
    match command {
        LdapCommand::Sync { dry_run, json } => {
            let app = Annuaire::open(config).await.map_err(CliError::runtime)?;
            let mut bar = Progress::new("ldap sync");
            let summary = crate::directory::ldap_sync::sync(&app, &settings, dry_run, |s| {
                bar.show(
                    &format!(
                        "{} read · {} matched · {} updated · {} skipped",
                        s.read,
                        s.matched,
                        s.updated,
                        s.skipped()
                    ),
                    false,
                );
            })
            .await
            .map_err(CliError::runtime)?;
            bar.done();
            if json {
                let text = serde_json::to_string_pretty(&summary).map_err(CliError::runtime)?;
                println!("{text}");
            } else {
                print_sync_summary(&summary);
            }
            Ok(())
        }
        LdapCommand::Lookup { address } => {
            let mut ldap = crate::ldap::connect(&settings)
                .await
                .map_err(CliError::runtime)?;
            let people = crate::ldap::find_by_mail(&mut ldap, &settings, address.trim())
                .await
                .map_err(CliError::runtime)?;
            if people.is_empty() {
                println!("no entry has this address");
            }
            for p in &people {
                let name = crate::directory::names::name_from_ldap(
                    p.display_name.as_deref(),
                    p.given_name.as_deref(),
                    p.surname.as_deref(),
                );
                println!("{}", p.dn);
                println!("  verified name: {}", name.as_deref().unwrap_or("(none)"));
                println!(
                    "  organisation:  {}",
                    p.organisation.as_deref().unwrap_or("(none)")
                );
            }
            Ok(())
        }
    }
}

fn print_sync_summary(s: &crate::directory::ldap_sync::SyncSummary) {
    if s.dry_run {
        println!("LDAP sync, dry run: nothing was written");
    } else {
        println!("LDAP sync done");
    }
    println!("  read      {:>8}  LDAP entries", s.read);
    println!("  records   {:>8}  names by address", s.records);
    println!("  matched   {:>8}  directory entries", s.matched);
    println!(
        "  updated   {:>8}  names or organisations changed",
        s.updated
    );
    println!("  removed   {:>8}  records of people who left", s.removed);
    println!(
        "  reverted  {:>8}  entries back to their address's name",
        s.reverted
    );
    println!("  skipped   {:>8}", s.skipped());
    println!("    no mail        {:>8}", s.skipped_no_mail);
    println!("    no name        {:>8}", s.skipped_no_name);
    println!("    invalid mail   {:>8}", s.skipped_invalid_mail);
    println!("    duplicate mail {:>8}", s.skipped_duplicate_mail);
}

/// Progress on stderr: a redrawn line with a moving bar on a terminal; otherwise plain lines,
/// at most one every few seconds (logs and CI output stay short).
struct Progress {
    label: &'static str,
    tty: bool,
    frame: usize,
    last_line: Option<std::time::Instant>,
    drawn: bool,
}

impl Progress {
    fn new(label: &'static str) -> Progress {
        use std::io::IsTerminal;
        Progress {
            label,
            tty: std::io::stderr().is_terminal(),
            frame: 0,
            last_line: None,
            drawn: false,
        }
    }

    fn show(&mut self, text: &str, last: bool) {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        if self.tty {
            // The total is unknown while reading (paged LDAP search): a bar that moves.
            const WIDTH: usize = 12;
            let pos = self.frame % (2 * WIDTH - 2);
            let pos = if pos < WIDTH {
                pos
            } else {
                2 * WIDTH - 2 - pos
            };
            let bar: String = (0..WIDTH)
                .map(|i| if i == pos { '#' } else { '-' })
                .collect();
            self.frame += 1;
            let _ = write!(err, "\r\x1b[2K{} [{bar}] {text}", self.label);
            if last {
                let _ = writeln!(err);
            }
            let _ = err.flush();
            self.drawn = !last;
        } else {
            let due = self
                .last_line
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(2));
            if due || last {
                let _ = writeln!(err, "{}: {text}", self.label);
                self.last_line = Some(std::time::Instant::now());
            }
        }
    }

    fn done(&mut self) {
        if self.tty && self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}
