//! Typed configuration: built-in defaults, then a TOML file, then `ANNUAIRE_SECTION__KEY`
//! environment variables. Unknown keys are rejected and every error names the key.
//!
//! `annuaire.example.toml` documents every key with its default; keep the two in step (a test
//! checks that the example parses and equals the defaults where it says so).

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::matrix::server_name::validate_server_name;

mod admin_keys;
mod directory_keys;
mod identity_keys;
mod policy_keys;
mod units;

pub use admin_keys::*;
pub use directory_keys::*;
pub use identity_keys::*;
pub use policy_keys::*;
pub use units::*;

#[cfg(test)]
mod tests;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub policy: PolicyConfig,
    pub rate_limits: RateLimitsConfig,
    pub identity: IdentityConfig,
    pub validation: ValidationConfig,
    pub mail: MailConfig,
    pub web: WebConfig,
    pub terms: TermsConfig,
    pub invites: InvitesConfig,
    pub federation: FederationConfig,
    pub admin: AdminConfig,
    pub directory: DirectoryConfig,
    pub ldap: LdapConfig,
    pub retention: RetentionConfig,
}

/// `[server]`: who this identity server is and where it keeps its files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The identity server's name as homeservers write it in `id_server` (`host[:port]`).
    pub name: String,
    /// Folder for local state; relative defaults (SQLite database, mail folder) live in it.
    pub data_dir: PathBuf,
    /// The long-term signing key in Sydent's format (`ed25519 0 <seed>`); absent: a key created
    /// once and kept in the database, shared by every instance.
    pub signing_key_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            name: "localhost:8090".into(),
            data_dir: PathBuf::from("var"),
            signing_key_file: None,
        }
    }
}

/// `[http]`: listeners and request handling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the public listener.
    pub bind: SocketAddr,
    /// Base URL under which clients reach this server (links in mails); default `http(s)://{bind}`.
    pub public_base_url: Option<String>,
    /// Serve HTTPS with these PEM files.
    pub tls: TlsConfig,
    /// Largest accepted request body.
    pub max_body: ByteSize,
    /// Networks whose callers are "internal" (homeservers): `/internal-info`, unshadowed `/info`.
    pub internal_networks: Vec<IpNet>,
    /// Reverse proxies whose `X-Forwarded-For` header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Number of HTTP worker threads (0 = one per CPU).
    pub workers: usize,
    /// A second listener for `/_annuaire/*` and `/metrics`; when set, the public listener does
    /// not serve them.
    pub admin_bind: Option<SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8090)),
            public_base_url: None,
            tls: TlsConfig::default(),
            max_body: ByteSize(1024 * 1024),
            internal_networks: vec![
                IpNet::from_str("127.0.0.0/8").unwrap_or_default(),
                IpNet::from_str("::1/128").unwrap_or_default(),
            ],
            trusted_proxies: Vec::new(),
            workers: 0,
            admin_bind: None,
        }
    }
}

/// `[http.tls]`: certificate chain and private key (PEM) for HTTPS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[database]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` (relative to the working directory) or `postgres://…`;
    /// default `sqlite://{server.data_dir}/annuaire.db`.
    pub url: Option<String>,
    /// Connections in the pool.
    pub pool_size: u32,
    /// How long a request waits for a free connection.
    pub connection_timeout: HumanDuration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 10,
            connection_timeout: HumanDuration(Duration::from_secs(5)),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `info,annuaire=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration error, naming the key and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads the configuration: defaults, then `file` (if given; it must exist), then the
    /// environment. `file = None` looks for `annuaire.toml` in the working directory.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env = std::env::vars().collect::<Vec<_>>();
        Self::load_from(file, &env)
    }

    /// As [`Config::load`], with an explicit environment (tests).
    pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        match file {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError(format!(
                        "configuration file {} does not exist",
                        path.display()
                    )));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => {
                let default = Path::new("annuaire.toml");
                if default.is_file() {
                    figment = figment.merge(Toml::file_exact(default));
                }
            }
        }
        let env_provider = env_provider(env);
        figment = figment.merge(env_provider);
        let config: Config = figment.extract().map_err(describe_figment_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a configuration from TOML text alone (tests, `check-config` of snippets).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(describe_figment_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_server_name(&self.server.name)
            .map_err(|e| ConfigError(format!("server.name: {e}")))?;
        let url = self.database_url();
        if !(url.starts_with("sqlite://")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError(
                "database.url: expected `sqlite://PATH` or `postgres://…`".into(),
            ));
        }
        if url == "sqlite://" {
            return Err(ConfigError(
                "database.url: `sqlite://` needs a file path after it".into(),
            ));
        }
        if self.database.pool_size == 0 {
            return Err(ConfigError("database.pool_size: must be at least 1".into()));
        }
        match (&self.http.tls.cert, &self.http.tls.key) {
            (Some(_), None) => {
                return Err(ConfigError(
                    "http.tls.key: required when http.tls.cert is set".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError(
                    "http.tls.cert: required when http.tls.key is set".into(),
                ));
            }
            _ => {}
        }
        if let Some(base) = &self.http.public_base_url
            && !(base.starts_with("http://") || base.starts_with("https://"))
        {
            return Err(ConfigError(
                "http.public_base_url: expected an http:// or https:// URL".into(),
            ));
        }
        if self.http.max_body.0 < 1024 {
            return Err(ConfigError("http.max_body: must be at least 1KiB".into()));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError(format!("log.level: {e}")))?;
        self.policy.validate()?;
        self.rate_limits.validate()?;
        self.identity.validate()?;
        self.validation.validate()?;
        self.mail.validate()?;
        self.invites.validate()?;
        self.web.validate()?;
        self.federation.validate()?;
        self.admin.validate(&self.ldap)?;
        self.directory.validate()?;
        self.ldap.validate()?;
        self.retention.validate()?;
        if self
            .http
            .admin_bind
            .is_some_and(|a| a == self.http.bind && a.port() != 0)
        {
            return Err(ConfigError(
                "http.admin_bind: must differ from http.bind".into(),
            ));
        }
        Ok(())
    }

    /// The effective database URL.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}",
                self.server.data_dir.join("annuaire.db").display()
            ),
        }
    }

    /// The effective public base URL, without a trailing slash.
    pub fn public_base_url(&self) -> String {
        match &self.http.public_base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let scheme = if self.tls_enabled() { "https" } else { "http" };
                format!("{scheme}://{}", self.http.bind)
            }
        }
    }

    /// Whether the public listener serves HTTPS.
    pub fn tls_enabled(&self) -> bool {
        self.http.tls.cert.is_some() && self.http.tls.key.is_some()
    }
}

/// `ANNUAIRE_SECTION__KEY` variables (`ANNUAIRE_HTTP__BIND`, `ANNUAIRE_DATABASE__URL`): values are
/// read as TOML values when they parse as such (`8090`, `true`, `["10.0.0.0/8"]`), else as strings.
fn env_provider(env: &[(String, String)]) -> figment::providers::Serialized<figment::value::Dict> {
    // Figment's Env provider reads the process environment; building the dictionary ourselves
    // lets tests pass their own environment and keeps parsing identical.
    let mut dict = figment::value::Dict::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("ANNUAIRE_") else {
            continue;
        };
        if rest.is_empty() {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        let parsed = parse_env_value(value);
        insert_path(&mut dict, &path, parsed);
    }
    figment::providers::Serialized::defaults(dict)
}

fn parse_env_value(value: &str) -> figment::value::Value {
    value
        .parse::<figment::value::Value>()
        .unwrap_or_else(|_| figment::value::Value::from(value.to_string()))
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = figment::value::Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = figment::value::Value::from(inner);
            }
        }
    }
}

fn describe_figment_error(error: figment::Error) -> ConfigError {
    let mut lines = Vec::new();
    for e in error {
        let key = e
            .path
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(".");
        let source = e
            .metadata
            .as_ref()
            .map(|m| match &m.source {
                Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
                _ if m.name.contains("TOML") => format!(" (in {})", m.name),
                _ => " (from an ANNUAIRE_… environment variable)".to_string(),
            })
            .unwrap_or_default();
        let what = e.kind.to_string();
        if key.is_empty() {
            lines.push(format!("configuration: {what}{source}"));
        } else {
            lines.push(format!("configuration key `{key}`: {what}{source}"));
        }
    }
    ConfigError(lines.join("\n"))
}
