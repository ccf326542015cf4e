//! Typed configuration: built-in defaults, then a TOML file, then `ANNUAIRE_SECTION__KEY`
//! environment variables. Unknown keys are rejected and every error names the key.
//!
//! `annuaire.example.toml` documents every key with its default; keep the two in step (a test
//! checks that the example parses and equals the defaults where it says so).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
        self.federation.validate()?;
        self.admin.validate(&self.ldap)?;
        self.directory.validate()?;
        self.ldap.validate()?;
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

/// Checks a `host[:port]` server name as the Matrix spec defines it.
pub fn validate_server_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("expected `host[:port]`, 1 to 255 characters".into());
    }
    let (host, port) = if let Some(rest) = name.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err("unclosed `[` in an IPv6 literal".into());
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{v6}` is not an IPv6 address"));
        }
        match after {
            "" => (v6, None),
            p if p.starts_with(':') => (v6, Some(&p[1..])),
            _ => return Err("unexpected text after `]`".into()),
        }
    } else {
        match name.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (name, None),
        }
    };
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("`{port}` is not a port number"));
    }
    if !name.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!(
            "`{host}` is not a host name (letters, digits, `-` and `.` only)"
        ));
    }
    if host.is_empty() {
        return Err("the host part is empty".into());
    }
    Ok(())
}

/// A duration written one way everywhere: humantime (`"30s"`, `"5m"`, `"24h"`, `"7days"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The duration in milliseconds, saturating.
    pub fn as_millis_i64(&self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration ({e}); write it like \"30s\", \"5m\", \"24h\""
                ))
            })
    }
}

/// A size in bytes, written `"1MiB"`, `"512KiB"`, `"64KB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, usize); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (unit, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: usize = digits
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write it like \"1MiB\" or \"64KiB\""))?;
        let factor = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "KB" | "kB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`; use B, KiB, MiB, GiB, KB, MB or GB"
                ));
            }
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => usize::try_from(n)
                .map(ByteSize)
                .map_err(|_| serde::de::Error::custom("size too large")),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

// ---- [policy] ----

/// `[policy]`: the allowlists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Folder of allowlist files imported at `serve` start (empty string: no import at start).
    pub allowlists_dir: PathBuf,
    /// What happens to addresses no rule matches.
    pub default: DefaultPolicyName,
    /// The externals' homeserver (required with `default = "invite_only"`).
    pub external_homeserver: Option<String>,
    /// How often each instance checks the database for rule changes.
    pub reload_interval: HumanDuration,
    /// A bind needs the mxid's server to be the address's homeserver or its shadow.
    pub bind_requires_matching_homeserver: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            allowlists_dir: PathBuf::from("allowlists"),
            default: DefaultPolicyName::Deny,
            external_homeserver: None,
            reload_interval: HumanDuration(Duration::from_secs(2)),
            bind_requires_matching_homeserver: true,
        }
    }
}

/// `policy.default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultPolicyName {
    /// Unknown domains are refused.
    Deny,
    /// Unknown domains go to the externals' homeserver, invitation required (Tchap).
    InviteOnly,
}

impl PolicyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(hs) = &self.external_homeserver {
            validate_server_name(hs)
                .map_err(|e| ConfigError(format!("policy.external_homeserver: {e}")))?;
        }
        if self.default == DefaultPolicyName::InviteOnly && self.external_homeserver.is_none() {
            return Err(ConfigError(
                "policy.external_homeserver: required when policy.default = \"invite_only\"".into(),
            ));
        }
        if self.reload_interval.0 < Duration::from_millis(100) {
            return Err(ConfigError(
                "policy.reload_interval: must be at least 100ms".into(),
            ));
        }
        Ok(())
    }

    /// The default as the engine takes it.
    pub fn default_policy(&self) -> crate::policy::DefaultPolicy {
        match (self.default, &self.external_homeserver) {
            (DefaultPolicyName::InviteOnly, Some(hs)) => crate::policy::DefaultPolicy::InviteOnly {
                external_homeserver: hs.clone(),
            },
            _ => crate::policy::DefaultPolicy::Deny,
        }
    }
}

// ---- [rate_limits] ----

/// A token bucket: `burst` requests at once, then one more every `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed at once.
    pub burst: u32,
    /// One more request allowed after each such interval.
    pub every: HumanDuration,
}

impl RateLimit {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.burst == 0 {
            return Err(ConfigError(format!("{key}.burst: must be at least 1")));
        }
        if self.every.0.is_zero() {
            return Err(ConfigError(format!("{key}.every: must be longer than 0s")));
        }
        Ok(())
    }
}

/// `[rate_limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// `GET /_matrix/identity/api/v1/info`, per client IP (ministries share NAT addresses:
    /// keep it generous).
    pub info_per_ip: RateLimit,
    /// `POST …/validate/email/requestToken`, per client IP (in each instance).
    pub request_token_per_ip: RateLimit,
    /// `POST …/validate/email/requestToken`, per email address (in the database: it holds
    /// across instances).
    pub request_token_per_address: RateLimit,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            info_per_ip: RateLimit {
                burst: 100,
                every: HumanDuration(Duration::from_millis(100)),
            },
            request_token_per_ip: RateLimit {
                burst: 20,
                every: HumanDuration(Duration::from_secs(10)),
            },
            request_token_per_address: RateLimit {
                burst: 5,
                every: HumanDuration(Duration::from_secs(300)),
            },
        }
    }
}

impl RateLimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.info_per_ip.validate("rate_limits.info_per_ip")?;
        self.request_token_per_ip
            .validate("rate_limits.request_token_per_ip")?;
        self.request_token_per_address
            .validate("rate_limits.request_token_per_address")
    }
}

// ---- [identity], [validation], [mail], [web], [terms], [invites], [federation] ----

/// `[identity]`: the Matrix Identity Service API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Require an Identity Service access token (and the accepted terms) on the validation
    /// endpoints, as the spec says (`GET …/submitToken` excepted: the mailed token is enough).
    pub require_auth: bool,
    /// Homeservers whose users may register identity accounts. Absent: every homeserver the
    /// allowlists name (and their shadows) plus `policy.external_homeserver`, evaluated live.
    pub allowed_homeservers: Option<Vec<String>>,
    /// How long an identity access token stays valid.
    pub token_lifetime: HumanDuration,
    /// Most addresses one `/v2/lookup` may ask about (413 `M_TOO_LARGE` beyond).
    pub max_lookup_addresses: usize,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            require_auth: true,
            allowed_homeservers: None,
            token_lifetime: HumanDuration(Duration::from_secs(30 * 24 * 3600)),
            max_lookup_addresses: 10_000,
        }
    }
}

impl IdentityConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for hs in self.allowed_homeservers.iter().flatten() {
            validate_server_name(hs)
                .map_err(|e| ConfigError(format!("identity.allowed_homeservers: {hs:?}: {e}")))?;
        }
        if self.token_lifetime.0 < Duration::from_secs(60) {
            return Err(ConfigError(
                "identity.token_lifetime: must be at least 1m".into(),
            ));
        }
        if self.max_lookup_addresses == 0 {
            return Err(ConfigError(
                "identity.max_lookup_addresses: must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// `[validation]`: email validation sessions (requestToken / submitToken).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// How long a token stays valid after it was issued (and its mail queued).
    pub token_lifetime: HumanDuration,
    /// How long a validated session can be used (bind) after its validation.
    pub session_lifetime: HumanDuration,
    /// Refuse (403 `M_THREEPID_DENIED`, no mail) addresses whose policy decision is `denied`.
    pub require_allowed: bool,
    /// Hosts to which `next_link` may point with `http://` (development); `https://` links may
    /// point anywhere.
    pub next_link_hosts: Vec<String>,
    /// How often expired sessions, old outbox rows and idle rate-limit rows are deleted.
    pub purge_interval: HumanDuration,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            token_lifetime: HumanDuration(Duration::from_secs(24 * 3600)),
            session_lifetime: HumanDuration(Duration::from_secs(24 * 3600)),
            require_allowed: true,
            next_link_hosts: Vec::new(),
            purge_interval: HumanDuration(Duration::from_secs(3600)),
        }
    }
}

impl ValidationConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("validation.token_lifetime", self.token_lifetime),
            ("validation.session_lifetime", self.session_lifetime),
        ] {
            if value.0 < Duration::from_secs(60) {
                return Err(ConfigError(format!("{key}: must be at least 1m")));
            }
        }
        if self.purge_interval.0 < Duration::from_secs(1) {
            return Err(ConfigError(
                "validation.purge_interval: must be at least 1s".into(),
            ));
        }
        for host in &self.next_link_hosts {
            let bracketed = host.starts_with('[') && host.ends_with(']');
            let valid = validate_server_name(host).is_ok() && (bracketed || !host.contains(':'));
            if !valid || host.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(ConfigError(format!(
                    "validation.next_link_hosts: `{host}` is not a lowercase host name \
                     (no scheme, no port, no path)"
                )));
            }
        }
        Ok(())
    }
}

/// `mail.transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransportKind {
    /// One `.eml` file per message in `mail.file.dir` (no mail server needed).
    File,
    /// An SMTP server (`[mail.smtp]`).
    Smtp,
}

/// `[mail]`: outgoing email.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// Where mails go: `file` (the zero-configuration default) or `smtp`.
    pub transport: MailTransportKind,
    /// The sender: `noreply@example.org` or `Name <noreply@example.org>`.
    pub from: String,
    /// The language of mails when the request's `Accept-Language` does not choose one.
    pub default_language: crate::mail::Language,
    /// A folder whose files override the embedded mail templates (`templates/email/`).
    pub templates_dir: Option<PathBuf>,
    pub smtp: SmtpConfig,
    pub file: FileMailConfig,
    pub outbox: OutboxConfig,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            transport: MailTransportKind::File,
            from: "noreply@localhost".into(),
            default_language: crate::mail::Language::Fr,
            templates_dir: None,
            smtp: SmtpConfig::default(),
            file: FileMailConfig::default(),
            outbox: OutboxConfig::default(),
        }
    }
}

/// `[mail.smtp]`: the SMTP server (certificates are always verified).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    /// `none` (a local relay), `starttls` (required, never opportunistic) or `tls`.
    pub security: crate::mail::SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A file holding the password (its first line), instead of `password`.
    pub password_file: Option<PathBuf>,
    /// Extra trust anchors (PEM), for a server whose certificate a private CA signed.
    pub ca_file: Option<PathBuf>,
    /// Limit for delivering one message.
    pub timeout: HumanDuration,
    /// The name announced in EHLO (default: the machine's host name).
    pub hello_name: Option<String>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 587,
            security: crate::mail::SmtpSecurity::StartTls,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            timeout: HumanDuration(Duration::from_secs(30)),
            hello_name: None,
        }
    }
}

// The password must not reach logs through `{:?}`.
impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("hello_name", &self.hello_name)
            .finish()
    }
}

impl SmtpConfig {
    /// The password: `password`, or the first line of `password_file` (read now).
    pub fn read_password(&self) -> Result<Option<String>, ConfigError> {
        match (&self.password, &self.password_file) {
            (Some(p), _) => Ok(Some(p.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!(
                        "mail.smtp.password_file: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                let line = text.lines().next().unwrap_or("").to_string();
                if line.is_empty() {
                    return Err(ConfigError(format!(
                        "mail.smtp.password_file: {} is empty",
                        path.display()
                    )));
                }
                Ok(Some(line))
            }
            (None, None) => Ok(None),
        }
    }
}

/// `[mail.file]`: the file transport.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileMailConfig {
    /// The folder receiving one `.eml` per message; default `{server.data_dir}/mail`.
    pub dir: Option<PathBuf>,
}

/// `[mail.outbox]`: delivery retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Wait before the first retry of a failed delivery; doubled at each further failure.
    pub initial_backoff: HumanDuration,
    /// The longest wait between two retries.
    pub max_backoff: HumanDuration,
    /// Deliveries tried before a message is given up (`failed`).
    pub max_attempts: u32,
    /// How often the worker looks for work nobody woke it for (rows queued by an instance
    /// that stopped before sending them).
    pub poll_interval: HumanDuration,
    /// How long sent and failed rows are kept (without their body) before the purge.
    pub retention: HumanDuration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            initial_backoff: HumanDuration(Duration::from_secs(5)),
            max_backoff: HumanDuration(Duration::from_secs(600)),
            max_attempts: 20,
            poll_interval: HumanDuration(Duration::from_secs(30)),
            retention: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

impl MailConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.from
            .trim()
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| {
                ConfigError(format!(
                    "mail.from: `{}` is not an address ({e}); write it like \
                     \"noreply@example.org\" or \"Name <noreply@example.org>\"",
                    self.from
                ))
            })?;
        let s = &self.smtp;
        if s.host.trim().is_empty() {
            return Err(ConfigError("mail.smtp.host: must not be empty".into()));
        }
        if s.port == 0 {
            return Err(ConfigError("mail.smtp.port: must not be 0".into()));
        }
        if s.password.is_some() && s.password_file.is_some() {
            return Err(ConfigError(
                "mail.smtp.password_file: set mail.smtp.password or mail.smtp.password_file, \
                 not both"
                    .into(),
            ));
        }
        let has_password = s.password.is_some() || s.password_file.is_some();
        if s.username.is_some() != has_password {
            return Err(ConfigError(
                "mail.smtp.username: the username and a password (mail.smtp.password or \
                 mail.smtp.password_file) go together"
                    .into(),
            ));
        }
        if s.timeout.0 < Duration::from_secs(1) || s.timeout.0 > Duration::from_secs(600) {
            return Err(ConfigError(
                "mail.smtp.timeout: must be between 1s and 10m".into(),
            ));
        }
        let o = &self.outbox;
        if o.initial_backoff.0 < Duration::from_millis(10) {
            return Err(ConfigError(
                "mail.outbox.initial_backoff: must be at least 10ms".into(),
            ));
        }
        if o.max_backoff < o.initial_backoff {
            return Err(ConfigError(
                "mail.outbox.max_backoff: must not be shorter than mail.outbox.initial_backoff"
                    .into(),
            ));
        }
        if o.max_attempts == 0 {
            return Err(ConfigError(
                "mail.outbox.max_attempts: must be at least 1".into(),
            ));
        }
        if o.poll_interval.0 < Duration::from_millis(100) {
            return Err(ConfigError(
                "mail.outbox.poll_interval: must be at least 100ms".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The folder of the file mail transport.
    pub fn mail_file_dir(&self) -> PathBuf {
        match &self.mail.file.dir {
            Some(dir) => dir.clone(),
            None => self.server.data_dir.join("mail"),
        }
    }
}

/// `[web]`: the pages served to browsers (the link in the confirmation mail).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// A folder whose files override the embedded page templates (`templates/web/`).
    pub templates_dir: Option<PathBuf>,
}

/// `[terms]`: the policies users accept before using the identity service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TermsConfig {
    /// The terms file (TOML, see `terms.example.toml`); absent: no terms to accept.
    pub file: Option<PathBuf>,
}

/// At most `max` events within any `within` (counted in the database, across instances).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowLimit {
    /// Events allowed within the window.
    pub max: u32,
    /// The sliding window.
    pub within: HumanDuration,
}

impl WindowLimit {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.max == 0 {
            return Err(ConfigError(format!("{key}.max: must be at least 1")));
        }
        if self.within.0.is_zero() {
            return Err(ConfigError(format!("{key}.within: must be longer than 0s")));
        }
        Ok(())
    }
}

/// `[invites]`: 3PID invitations (`/v2/store-invite`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvitesConfig {
    /// How long a stored invitation waits for its address to be bound.
    pub validity: HumanDuration,
    /// Invitations one Matrix user may send.
    pub per_sender: WindowLimit,
    /// Invitations one address may receive (each one sends a mail).
    pub per_address: WindowLimit,
    /// The web client invitation mails link to (`https://…`); absent: no link. The
    /// `org.matrix.web_client_location` of a request is not used: any token holder could put
    /// any link in our mail.
    pub web_client_url: Option<String>,
    /// Wait before the first retry of an `onbind` delivery; doubled after each further
    /// failure, up to `delivery_max_backoff`.
    pub delivery_initial_backoff: HumanDuration,
    /// Longest wait between two `onbind` delivery attempts.
    pub delivery_max_backoff: HumanDuration,
    /// `onbind` deliveries tried before an invitation is given up.
    pub delivery_max_attempts: u32,
}

impl Default for InvitesConfig {
    fn default() -> Self {
        Self {
            validity: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            per_sender: WindowLimit {
                max: 50,
                within: HumanDuration(Duration::from_secs(3600)),
            },
            per_address: WindowLimit {
                max: 10,
                within: HumanDuration(Duration::from_secs(24 * 3600)),
            },
            web_client_url: None,
            delivery_initial_backoff: HumanDuration(Duration::from_secs(30)),
            delivery_max_backoff: HumanDuration(Duration::from_secs(2 * 3600)),
            delivery_max_attempts: 12,
        }
    }
}

impl InvitesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.validity.0 < Duration::from_secs(60) {
            return Err(ConfigError("invites.validity: must be at least 1m".into()));
        }
        self.per_sender.validate("invites.per_sender")?;
        self.per_address.validate("invites.per_address")?;
        if let Some(url) = &self.web_client_url {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| ConfigError(format!("invites.web_client_url: `{url}`: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(ConfigError(
                    "invites.web_client_url: expected an https:// URL with a host".into(),
                ));
            }
        }
        if self.delivery_initial_backoff.0.is_zero() {
            return Err(ConfigError(
                "invites.delivery_initial_backoff: must be longer than 0s".into(),
            ));
        }
        if self.delivery_max_backoff.0 < self.delivery_initial_backoff.0 {
            return Err(ConfigError(
                "invites.delivery_max_backoff: must be at least invites.delivery_initial_backoff"
                    .into(),
            ));
        }
        if self.delivery_max_attempts == 0 {
            return Err(ConfigError(
                "invites.delivery_max_attempts: must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// `[federation]`: outbound calls to homeservers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Static overrides: server name → base URL (`https://10.0.0.5:8448`; `http://` allowed).
    /// Overridden servers are trusted: the private-network guard does not apply to them.
    pub homeservers: std::collections::BTreeMap<String, String>,
    /// Networks exempt from the guard that refuses private, loopback and link-local targets.
    pub allowed_networks: Vec<IpNet>,
    /// Extra trust anchors (PEM) for homeservers' certificates, added to the system's.
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout (connect, send, read the whole answer).
    pub timeout: HumanDuration,
    /// Largest answer accepted from a homeserver.
    pub max_response_size: ByteSize,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            homeservers: std::collections::BTreeMap::new(),
            allowed_networks: Vec::new(),
            ca_file: None,
            timeout: HumanDuration(Duration::from_secs(10)),
            max_response_size: ByteSize(1024 * 1024),
        }
    }
}

impl FederationConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.settings().map(|_| ())
    }

    /// The federation client's settings (overrides parsed as URLs).
    pub fn settings(&self) -> Result<crate::federation::FederationSettings, ConfigError> {
        let mut homeservers = std::collections::HashMap::new();
        for (name, url) in &self.homeservers {
            validate_server_name(name)
                .map_err(|e| ConfigError(format!("federation.homeservers: {name:?}: {e}")))?;
            let parsed = reqwest::Url::parse(url).map_err(|e| {
                ConfigError(format!("federation.homeservers.{name:?}: `{url}`: {e}"))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(ConfigError(format!(
                    "federation.homeservers.{name:?}: expected an http:// or https:// URL with a host"
                )));
            }
            homeservers.insert(name.clone(), parsed);
        }
        if self.timeout.0.is_zero() {
            return Err(ConfigError(
                "federation.timeout: must be longer than 0s".into(),
            ));
        }
        if self.max_response_size.0 < 1024 {
            return Err(ConfigError(
                "federation.max_response_size: must be at least 1KiB".into(),
            ));
        }
        Ok(crate::federation::FederationSettings {
            homeservers,
            allowed_networks: self.allowed_networks.clone(),
            ca_file: self.ca_file.clone(),
            timeout: self.timeout.0,
            max_response_bytes: self.max_response_size.0,
            ..crate::federation::FederationSettings::default()
        })
    }
}

// ---- [admin] ----

/// `[admin]`: the administration API (`/_annuaire/admin/v1/…`) and its accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// File holding the secret that signs admin tokens (at least 32 bytes); default: a secret
    /// created once in the database, shared by every instance.
    pub jwt_secret_file: Option<PathBuf>,
    /// Lifetime of the tokens `POST /_annuaire/admin/v1/login` gives.
    pub token_lifetime: HumanDuration,
    /// Failed logins in a row after which an account is locked.
    pub lockout_threshold: u32,
    /// How long a locked account stays locked.
    pub lockout_duration: HumanDuration,
    /// Login attempts per client IP.
    pub login_per_ip: RateLimit,
    /// Login attempts per username.
    pub login_per_username: RateLimit,
    /// LDAP login: the filter that finds the person logging in under `ldap.base_dn`, with
    /// `{username}` where the (escaped) username goes, e.g.
    /// `(&(objectClass=inetOrgPerson)(uid={username}))`. Unset: local accounts only.
    pub ldap_user_filter: Option<String>,
    /// DN of the group (`groupOfNames`) whose members may log in with LDAP, as editors.
    pub ldap_group: Option<String>,
    /// DN of a group whose members may log in with LDAP as viewers (an editor group member is
    /// an editor).
    pub ldap_viewer_group: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            jwt_secret_file: None,
            token_lifetime: HumanDuration(Duration::from_secs(15 * 60)),
            lockout_threshold: 5,
            lockout_duration: HumanDuration(Duration::from_secs(15 * 60)),
            login_per_ip: RateLimit {
                burst: 20,
                every: HumanDuration(Duration::from_secs(3)),
            },
            login_per_username: RateLimit {
                burst: 10,
                every: HumanDuration(Duration::from_secs(6)),
            },
            ldap_user_filter: None,
            ldap_group: None,
            ldap_viewer_group: None,
        }
    }
}

impl AdminConfig {
    /// Whether administrators may log in with an LDAP bind.
    pub fn ldap_login_enabled(&self) -> bool {
        self.ldap_user_filter.is_some()
    }

    fn validate(&self, ldap: &LdapConfig) -> Result<(), ConfigError> {
        self.validate_ldap(ldap)?;
        let lifetime = self.token_lifetime.0;
        if lifetime < Duration::from_secs(60) || lifetime > Duration::from_secs(24 * 3600) {
            return Err(ConfigError(
                "admin.token_lifetime: must be between 1m and 24h".into(),
            ));
        }
        if self.lockout_threshold == 0 {
            return Err(ConfigError(
                "admin.lockout_threshold: must be at least 1".into(),
            ));
        }
        if self.lockout_duration.0.is_zero() {
            return Err(ConfigError(
                "admin.lockout_duration: must be longer than 0s".into(),
            ));
        }
        self.login_per_ip.validate("admin.login_per_ip")?;
        self.login_per_username.validate("admin.login_per_username")
    }

    fn validate_ldap(&self, ldap: &LdapConfig) -> Result<(), ConfigError> {
        let groups = [
            ("admin.ldap_group", &self.ldap_group),
            ("admin.ldap_viewer_group", &self.ldap_viewer_group),
        ];
        let Some(filter) = &self.ldap_user_filter else {
            if let Some((key, _)) = groups.iter().find(|(_, g)| g.is_some()) {
                return Err(ConfigError(format!(
                    "{key}: needs admin.ldap_user_filter (the LDAP login is off without it)"
                )));
            }
            return Ok(());
        };
        let filter = filter.trim();
        if !(filter.starts_with('(') && filter.ends_with(')') && filter.contains("{username}")) {
            return Err(ConfigError(
                "admin.ldap_user_filter: expected a parenthesised LDAP filter containing \
                 {username}, such as `(&(objectClass=inetOrgPerson)(uid={username}))`"
                    .into(),
            ));
        }
        if ldap.url.is_none() {
            return Err(ConfigError(
                "admin.ldap_user_filter: needs ldap.url (the LDAP login uses the [ldap] connection)"
                    .into(),
            ));
        }
        if groups.iter().all(|(_, g)| g.is_none()) {
            return Err(ConfigError(
                "admin.ldap_group: required with admin.ldap_user_filter (the DN of the group \
                 whose members may log in)"
                    .into(),
            ));
        }
        for (key, group) in groups {
            if group.as_deref().is_some_and(|g| g.trim().is_empty()) {
                return Err(ConfigError(format!("{key}: must not be empty")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::load_from(None, &[]).unwrap();
        assert_eq!(c.server.name, "localhost:8090");
        assert_eq!(c.http.bind.to_string(), "127.0.0.1:8090");
        assert_eq!(c.database_url(), "sqlite://var/annuaire.db");
        assert_eq!(c.public_base_url(), "http://127.0.0.1:8090");
        assert_eq!(c.http.max_body, ByteSize(1 << 20));
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let c = Config::load_from(
            None,
            &env(&[
                ("ANNUAIRE_DATABASE__URL", "postgres://u@h/db"),
                ("ANNUAIRE_HTTP__BIND", "0.0.0.0:9000"),
                ("ANNUAIRE_HTTP__INTERNAL_NETWORKS", "[\"10.0.0.0/8\"]"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.database_url(), "postgres://u@h/db");
        assert_eq!(c.http.bind.port(), 9000);
        assert_eq!(c.http.internal_networks.len(), 1);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = Config::from_toml("[http]\nbindd = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(e.0.contains("bindd"), "{e}");
        assert!(e.0.contains("http"), "{e}");
        let e = Config::load_from(None, &env(&[("ANNUAIRE_HTTP__NOPE", "1")])).unwrap_err();
        assert!(e.0.contains("nope"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::from_toml("[http]\nbind = \"nowhere\"\n").unwrap_err();
        assert!(e.0.contains("http.bind"), "{e}");
        let e = Config::from_toml("[http]\nmax_body = \"1 parsec\"\n").unwrap_err();
        assert!(e.0.contains("http.max_body"), "{e}");
        let e = Config::from_toml("[server]\nname = \"a b\"\n").unwrap_err();
        assert!(e.0.contains("server.name"), "{e}");
        let e = Config::from_toml("[database]\nurl = \"mysql://x\"\n").unwrap_err();
        assert!(e.0.contains("database.url"), "{e}");
        let e = Config::from_toml("[database]\nconnection_timeout = \"soon\"\n").unwrap_err();
        assert!(e.0.contains("database.connection_timeout"), "{e}");
    }

    #[test]
    fn data_dir_moves_the_relative_defaults() {
        let c = Config::from_toml("[server]\ndata_dir = \"/srv/annuaire\"\n").unwrap();
        assert_eq!(c.database_url(), "sqlite:///srv/annuaire/annuaire.db");
    }

    #[test]
    fn policy_keys() {
        let c = Config::load_from(None, &[]).unwrap();
        assert_eq!(c.policy.allowlists_dir, PathBuf::from("allowlists"));
        assert_eq!(c.policy.default, DefaultPolicyName::Deny);
        let e = Config::from_toml("[policy]\ndefault = \"invite_only\"\n").unwrap_err();
        assert!(e.0.contains("policy.external_homeserver"), "{e}");
        let c = Config::from_toml(
            "[policy]\ndefault = \"invite_only\"\nexternal_homeserver = \"ext.example\"\n",
        )
        .unwrap();
        assert_eq!(
            c.policy.default_policy(),
            crate::policy::DefaultPolicy::InviteOnly {
                external_homeserver: "ext.example".into()
            }
        );
        let e = Config::from_toml("[policy]\ndefault = \"maybe\"\n").unwrap_err();
        assert!(e.0.contains("policy.default"), "{e}");
        let e = Config::from_toml("[rate_limits.info_per_ip]\nburst = 0\nevery = \"1s\"\n")
            .unwrap_err();
        assert!(e.0.contains("rate_limits.info_per_ip.burst"), "{e}");
    }

    #[test]
    fn validation_and_mail_defaults() {
        let c = Config::load_from(None, &[]).unwrap();
        assert!(c.identity.require_auth);
        assert_eq!(c.validation.token_lifetime.0, Duration::from_secs(86_400));
        assert_eq!(c.validation.session_lifetime.0, Duration::from_secs(86_400));
        assert!(c.validation.require_allowed);
        assert!(c.validation.next_link_hosts.is_empty());
        assert_eq!(c.mail.transport, MailTransportKind::File);
        assert_eq!(c.mail_file_dir(), PathBuf::from("var/mail"));
        assert_eq!(c.mail.default_language, crate::mail::Language::Fr);
        assert_eq!(c.mail.smtp.security, crate::mail::SmtpSecurity::StartTls);
        assert_eq!(c.mail.outbox.initial_backoff.0, Duration::from_secs(5));
        assert_eq!(c.mail.outbox.max_backoff.0, Duration::from_secs(600));
        assert_eq!(c.mail.outbox.max_attempts, 20);
        assert_eq!(c.rate_limits.request_token_per_address.burst, 5);
        assert_eq!(
            c.rate_limits.request_token_per_address.every.0,
            Duration::from_secs(300)
        );
        let c = Config::from_toml("[server]\ndata_dir = \"/srv/a\"\n").unwrap();
        assert_eq!(c.mail_file_dir(), PathBuf::from("/srv/a/mail"));
        let c = Config::from_toml("[mail.file]\ndir = \"/tmp/m\"\n").unwrap();
        assert_eq!(c.mail_file_dir(), PathBuf::from("/tmp/m"));
    }

    #[test]
    fn validation_and_mail_errors_name_the_key() {
        for (toml, key) in [
            ("[identity]\nrequire_auth = 1\n", "identity.require_auth"),
            (
                "[validation]\ntoken_lifetime = \"10s\"\n",
                "validation.token_lifetime",
            ),
            (
                "[validation]\nsession_lifetime = \"0s\"\n",
                "validation.session_lifetime",
            ),
            (
                "[validation]\npurge_interval = \"0s\"\n",
                "validation.purge_interval",
            ),
            (
                "[validation]\nnext_link_hosts = [\"http://x\"]\n",
                "validation.next_link_hosts",
            ),
            (
                "[validation]\nnext_link_hosts = [\"x:80\"]\n",
                "validation.next_link_hosts",
            ),
            (
                "[validation]\nnext_link_hosts = [\"Host\"]\n",
                "validation.next_link_hosts",
            ),
            (
                "[validation]\nrequire_allowed = \"yes\"\n",
                "validation.require_allowed",
            ),
            ("[mail]\ntransport = \"pigeon\"\n", "mail.transport"),
            ("[mail]\nfrom = \"not an address\"\n", "mail.from"),
            (
                "[mail]\ndefault_language = \"de\"\n",
                "mail.default_language",
            ),
            ("[mail.smtp]\nsecurity = \"ssl\"\n", "mail.smtp.security"),
            ("[mail.smtp]\nport = 0\n", "mail.smtp.port"),
            ("[mail.smtp]\nusername = \"u\"\n", "mail.smtp.username"),
            ("[mail.smtp]\npassword = \"p\"\n", "mail.smtp.username"),
            (
                "[mail.smtp]\nusername = \"u\"\npassword = \"p\"\npassword_file = \"/f\"\n",
                "mail.smtp.password_file",
            ),
            ("[mail.smtp]\ntimeout = \"1h\"\n", "mail.smtp.timeout"),
            (
                "[mail.outbox]\nmax_attempts = 0\n",
                "mail.outbox.max_attempts",
            ),
            (
                "[mail.outbox]\nmax_backoff = \"1s\"\n",
                "mail.outbox.max_backoff",
            ),
            (
                "[mail.outbox]\ninitial_backoff = \"0s\"\n",
                "mail.outbox.initial_backoff",
            ),
            (
                "[mail.outbox]\npoll_interval = \"1ms\"\n",
                "mail.outbox.poll_interval",
            ),
            ("[mail.outbox]\nretries = 3\n", "retries"),
            (
                "[rate_limits.request_token_per_address]\nburst = 0\nevery = \"1s\"\n",
                "rate_limits.request_token_per_address.burst",
            ),
            (
                "[rate_limits.request_token_per_ip]\nburst = 1\nevery = \"0s\"\n",
                "rate_limits.request_token_per_ip.every",
            ),
            ("[web]\ntemplates = \"x\"\n", "templates"),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert!(e.0.contains(key), "{toml}: {e}");
        }
        let ok = Config::from_toml(
            "[validation]\nnext_link_hosts = [\"localhost\", \"[::1]\", \"dev.example\"]\n\
             [mail]\nfrom = \"Annuaire <noreply@id.example.gouv.fr>\"\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn smtp_password_comes_from_the_file_and_is_not_debug_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let c = Config::from_toml(&format!(
            "[mail.smtp]\nusername = \"u\"\npassword_file = \"{}\"\n",
            file.display()
        ))
        .unwrap();
        assert_eq!(
            c.mail.smtp.read_password().unwrap().as_deref(),
            Some("s3cret")
        );
        let c =
            Config::from_toml("[mail.smtp]\nusername = \"u\"\npassword = \"hunter2\"\n").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = Config::from_toml(&format!(
            "[mail.smtp]\nusername = \"u\"\npassword_file = \"{}\"\n",
            dir.path().join("missing").display()
        ))
        .unwrap();
        let e = c.mail.smtp.read_password().unwrap_err();
        assert!(e.0.contains("mail.smtp.password_file"), "{e}");
    }

    #[test]
    fn admin_keys() {
        let c = Config::load_from(None, &[]).unwrap();
        assert_eq!(c.admin.token_lifetime.0, Duration::from_secs(900));
        assert_eq!(c.admin.lockout_threshold, 5);
        assert_eq!(c.admin.jwt_secret_file, None);
        assert_eq!(c.http.admin_bind, None);
        let e = Config::from_toml("[admin]\ntoken_lifetime = \"2days\"\n").unwrap_err();
        assert!(e.0.contains("admin.token_lifetime"), "{e}");
        let e = Config::from_toml("[admin]\nlockout_threshold = 0\n").unwrap_err();
        assert!(e.0.contains("admin.lockout_threshold"), "{e}");
        let e = Config::from_toml("[admin.login_per_ip]\nburst = 0\nevery = \"1s\"\n").unwrap_err();
        assert!(e.0.contains("admin.login_per_ip.burst"), "{e}");
        let e = Config::from_toml(
            "[http]\nbind = \"127.0.0.1:9000\"\nadmin_bind = \"127.0.0.1:9000\"\n",
        )
        .unwrap_err();
        assert!(e.0.contains("http.admin_bind"), "{e}");
        let c = Config::from_toml("[http]\nadmin_bind = \"127.0.0.1:9001\"\n").unwrap();
        assert_eq!(c.http.admin_bind.unwrap().port(), 9001);
    }

    #[test]
    fn admin_ldap_login_keys() {
        let c = Config::load_from(None, &[]).unwrap();
        assert!(!c.admin.ldap_login_enabled());
        assert_eq!(c.admin.ldap_group, None);
        let ldap = "[ldap]\nurl = \"ldap://127.0.0.1:389\"\nbase_dn = \"dc=x\"\n";
        let filter = "ldap_user_filter = \"(&(objectClass=inetOrgPerson)(uid={username}))\"\n";
        let c = Config::from_toml(&format!(
            "{ldap}[admin]\n{filter}ldap_group = \"cn=admins,dc=x\"\n"
        ))
        .unwrap();
        assert!(c.admin.ldap_login_enabled());
        assert_eq!(c.admin.ldap_group.as_deref(), Some("cn=admins,dc=x"));
        let c = Config::from_toml(&format!(
            "{ldap}[admin]\n{filter}ldap_viewer_group = \"cn=viewers,dc=x\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.admin.ldap_viewer_group.as_deref(),
            Some("cn=viewers,dc=x")
        );
        for (toml, key) in [
            (format!("{ldap}[admin]\n{filter}"), "admin.ldap_group"),
            (
                format!("[admin]\n{filter}ldap_group = \"cn=a\"\n"),
                "ldap.url",
            ),
            (
                format!(
                    "{ldap}[admin]\nldap_user_filter = \"(uid=alice)\"\nldap_group = \"cn=a\"\n"
                ),
                "{username}",
            ),
            (
                format!(
                    "{ldap}[admin]\nldap_user_filter = \"uid={{username}}\"\nldap_group = \"cn=a\"\n"
                ),
                "admin.ldap_user_filter",
            ),
            (
                format!("{ldap}[admin]\nldap_group = \"cn=a\"\n"),
                "admin.ldap_group: needs admin.ldap_user_filter",
            ),
            (
                format!("{ldap}[admin]\n{filter}ldap_group = \" \"\n"),
                "admin.ldap_group: must not be empty",
            ),
        ] {
            let e = Config::from_toml(&toml).unwrap_err();
            assert!(e.0.contains(key), "{toml}: {e}");
        }
    }

    /// Every key with a default must be documented in annuaire.example.toml, with that default.
    #[test]
    fn example_file_documents_every_key_with_its_default() {
        let text = include_str!("../annuaire.example.toml");
        let example = Config::from_toml(text).unwrap();
        assert_eq!(
            serde_json::to_value(&example).unwrap(),
            serde_json::to_value(Config::default()).unwrap(),
            "annuaire.example.toml must show the defaults"
        );
        let parsed: toml::Table = toml::from_str(text).unwrap();
        fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        let path = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        // A table of user-chosen keys (maps) is documented by example only.
                        if v.as_object().is_some_and(|m| m.is_empty()) {
                            continue;
                        }
                        leaves(&path, v, out);
                    }
                }
                serde_json::Value::Null => {}
                _ => out.push(prefix.to_string()),
            }
        }
        let mut paths = Vec::new();
        leaves(
            "",
            &serde_json::to_value(Config::default()).unwrap(),
            &mut paths,
        );
        for path in paths {
            let mut node = toml::Value::Table(parsed.clone());
            for part in path.split('.') {
                node = node
                    .get(part)
                    .unwrap_or_else(|| panic!("annuaire.example.toml does not document `{path}`"))
                    .clone();
            }
        }
    }

    #[test]
    fn byte_sizes_parse_and_print() {
        assert_eq!("1MiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
        assert_eq!("64KB".parse::<ByteSize>().unwrap(), ByteSize(64_000));
        assert_eq!("2048".parse::<ByteSize>().unwrap(), ByteSize(2048));
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert!("1 parsec".parse::<ByteSize>().is_err());
    }

    #[test]
    fn server_names() {
        for ok in [
            "localhost:8090",
            "id.example",
            "[::1]:8448",
            "1.2.3.4",
            "a-b.c",
        ] {
            assert!(validate_server_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "x:0", "x:99999", "[::1", "[zz]", ":80", "a/b"] {
            assert!(validate_server_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_keys_defaults_and_errors() {
        let c = Config::load_from(None, &[]).unwrap();
        assert_eq!(c.identity.allowed_homeservers, None);
        assert_eq!(
            c.identity.token_lifetime.0,
            Duration::from_secs(30 * 24 * 3600)
        );
        assert_eq!(c.identity.max_lookup_addresses, 10_000);
        assert_eq!(c.terms.file, None);
        assert_eq!(c.server.signing_key_file, None);
        assert!(c.policy.bind_requires_matching_homeserver);
        assert_eq!(c.invites.validity.0, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.invites.per_sender.max, 50);
        assert_eq!(
            c.invites.per_address.within.0,
            Duration::from_secs(24 * 3600)
        );
        let e = Config::from_toml("[identity]\nallowed_homeservers = [\"a b\"]\n").unwrap_err();
        assert!(e.0.contains("identity.allowed_homeservers"), "{e}");
        let e = Config::from_toml("[identity]\ntoken_lifetime = \"1s\"\n").unwrap_err();
        assert!(e.0.contains("identity.token_lifetime"), "{e}");
        let e = Config::from_toml("[identity]\nmax_lookup_addresses = 0\n").unwrap_err();
        assert!(e.0.contains("identity.max_lookup_addresses"), "{e}");
        let e = Config::from_toml("[invites]\nvalidity = \"1s\"\n").unwrap_err();
        assert!(e.0.contains("invites.validity"), "{e}");
        let e = Config::from_toml("[invites.per_address]\nmax = 0\nwithin = \"1h\"\n").unwrap_err();
        assert!(e.0.contains("invites.per_address.max"), "{e}");
        assert_eq!(c.invites.web_client_url, None);
        assert_eq!(
            c.invites.delivery_initial_backoff.0,
            Duration::from_secs(30)
        );
        assert_eq!(c.invites.delivery_max_backoff.0, Duration::from_secs(7200));
        assert_eq!(c.invites.delivery_max_attempts, 12);
        for (toml, key) in [
            (
                "[invites]\nweb_client_url = \"app.example\"\n",
                "invites.web_client_url",
            ),
            (
                "[invites]\nweb_client_url = \"ftp://app.example\"\n",
                "invites.web_client_url",
            ),
            (
                "[invites]\ndelivery_initial_backoff = \"0s\"\n",
                "invites.delivery_initial_backoff",
            ),
            (
                "[invites]\ndelivery_max_backoff = \"10s\"\n",
                "invites.delivery_max_backoff",
            ),
            (
                "[invites]\ndelivery_max_attempts = 0\n",
                "invites.delivery_max_attempts",
            ),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert!(e.0.contains(key), "{toml}: {e}");
        }
        let c =
            Config::from_toml("[invites]\nweb_client_url = \"https://app.example/\"\n").unwrap();
        assert_eq!(
            c.invites.web_client_url.as_deref(),
            Some("https://app.example/")
        );
        let e = Config::from_toml("[terms]\nfiles = \"x\"\n").unwrap_err();
        assert!(e.0.contains("files"), "{e}");
    }

    #[test]
    fn federation_keys_defaults_and_errors() {
        let c = Config::load_from(None, &[]).unwrap();
        let s = c.federation.settings().unwrap();
        assert!(s.homeservers.is_empty());
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!(s.max_response_bytes, 1 << 20);
        let c = Config::from_toml(
            "[federation]\nallowed_networks = [\"10.0.0.0/8\"]\nmax_response_size = \"64KiB\"\n\
             [federation.homeservers]\n\"hs1.example\" = \"http://127.0.0.1:8008\"\n",
        )
        .unwrap();
        let s = c.federation.settings().unwrap();
        assert_eq!(
            s.homeservers["hs1.example"].as_str(),
            "http://127.0.0.1:8008/"
        );
        assert_eq!(s.allowed_networks.len(), 1);
        assert_eq!(s.max_response_bytes, 64 << 10);
        let e = Config::from_toml("[federation.homeservers]\n\"hs1.example\" = \"ftp://x\"\n")
            .unwrap_err();
        assert!(e.0.contains("federation.homeservers"), "{e}");
        let e =
            Config::from_toml("[federation.homeservers]\n\"a b\" = \"https://x\"\n").unwrap_err();
        assert!(e.0.contains("federation.homeservers"), "{e}");
        let e = Config::from_toml("[federation]\ntimeout = \"0s\"\n").unwrap_err();
        assert!(e.0.contains("federation.timeout"), "{e}");
        let e = Config::from_toml("[federation]\nmax_response_size = 10\n").unwrap_err();
        assert!(e.0.contains("federation.max_response_size"), "{e}");
    }
}

// ---- [directory] ----

/// An `http://` or `https://` URL with a host.
fn parse_http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("`{text}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "`{text}` must be an http:// or https:// URL with a host"
        ));
    }
    Ok(url)
}

/// `[directory]`: the cross-shard directory and who may search it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// How a verified name is published: `{name}` and `{organisation}` placeholders.
    pub display_name_format: String,
    /// Whether entries of external (invite-required) users are returned to searches.
    pub show_externals: bool,
    /// Whether external users (and the externals' homeserver) may search.
    pub externals_may_search: bool,
    /// The client API host names a reverse proxy routes `user_directory/search` from: the
    /// `Host` header → the homeserver whose users call through it.
    pub client_hosts: std::collections::BTreeMap<String, ClientHostConfig>,
    /// How long a homeserver's whoami answer for a token is reused.
    pub whoami_cache_ttl: HumanDuration,
    /// Homeservers allowed to use the Tchap-compatible search and profile replication.
    pub allowed_homeservers: Vec<String>,
    /// Candidates fetched from the index per search tier before exact ranking (see
    /// `directory::service`): more is closer to a perfect ordering, slower on common prefixes.
    pub search_candidates: u32,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            display_name_format: crate::directory::names::DEFAULT_DISPLAY_NAME_FORMAT.into(),
            show_externals: false,
            externals_may_search: false,
            client_hosts: std::collections::BTreeMap::new(),
            whoami_cache_ttl: HumanDuration(Duration::from_secs(60)),
            allowed_homeservers: Vec::new(),
            search_candidates: 200,
        }
    }
}

/// `[directory.client_hosts."matrix.agent-a.example"]`: one homeserver's client API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientHostConfig {
    /// The homeserver's server name (the part after `:` in its user ids).
    pub server_name: String,
    /// Base URL of its client API (`https://matrix.agent-a.example`), where whoami is asked.
    pub client_url: String,
}

/// Bounds of `directory.search_candidates`.
pub const SEARCH_CANDIDATES_RANGE: std::ops::RangeInclusive<u32> = 50..=10_000;

impl DirectoryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        crate::directory::names::validate_display_name_format(&self.display_name_format)
            .map_err(|e| ConfigError(format!("directory.display_name_format: {e}")))?;
        for (host, target) in &self.client_hosts {
            validate_server_name(host)
                .map_err(|e| ConfigError(format!("directory.client_hosts: `{host}`: {e}")))?;
            validate_server_name(&target.server_name).map_err(|e| {
                ConfigError(format!(
                    "directory.client_hosts.\"{host}\".server_name: {e}"
                ))
            })?;
            parse_http_url(&target.client_url).map_err(|e| {
                ConfigError(format!("directory.client_hosts.\"{host}\".client_url: {e}"))
            })?;
        }
        for name in &self.allowed_homeservers {
            validate_server_name(name).map_err(|e| {
                ConfigError(format!("directory.allowed_homeservers: `{name}`: {e}"))
            })?;
        }
        if !SEARCH_CANDIDATES_RANGE.contains(&self.search_candidates) {
            return Err(ConfigError(format!(
                "directory.search_candidates: must be between {} and {}",
                SEARCH_CANDIDATES_RANGE.start(),
                SEARCH_CANDIDATES_RANGE.end()
            )));
        }
        Ok(())
    }

    /// The client host a request's `Host` header names (compared without case).
    pub fn client_host(&self, host: &str) -> Option<&ClientHostConfig> {
        self.client_hosts
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(host))
            .map(|(_, target)| target)
    }
}

// ---- [ldap] ----

/// `[ldap]`: the agency directory that verified names come from (`annuaire ldap sync`), and
/// whose connection settings the admin login reuses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapConfig {
    /// `ldap://host[:port]` or `ldaps://host[:port]`; unset = no LDAP.
    pub url: Option<String>,
    /// The service account to bind as (unset = anonymous).
    pub bind_dn: Option<String>,
    /// File holding that account's password (first line; trailing newline ignored).
    pub bind_password_file: Option<PathBuf>,
    /// Where people are searched (subtree).
    pub base_dn: String,
    /// Which entries are people (an LDAP filter, written by the operator).
    pub filter: String,
    /// Upgrade an `ldap://` connection with StartTLS.
    pub starttls: bool,
    /// Extra trust anchors (PEM) for the LDAP server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Connection and per-operation timeout.
    pub timeout: HumanDuration,
    /// Entries per page of the paged search.
    pub page_size: u32,
    /// Run `ldap sync` periodically in `serve` (unset = only by hand).
    pub sync_interval: Option<HumanDuration>,
    /// Which attributes hold what.
    pub attributes: LdapAttributesConfig,
}

impl Default for LdapConfig {
    fn default() -> Self {
        Self {
            url: None,
            bind_dn: None,
            bind_password_file: None,
            base_dn: String::new(),
            filter: "(objectClass=inetOrgPerson)".into(),
            starttls: false,
            ca_file: None,
            timeout: HumanDuration(Duration::from_secs(10)),
            page_size: 500,
            sync_interval: None,
            attributes: LdapAttributesConfig::default(),
        }
    }
}

/// `[ldap.attributes]`: attribute names of the agency directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapAttributesConfig {
    /// Email addresses (several values allowed).
    pub mail: String,
    /// The full name, preferred when present.
    pub display_name: String,
    /// First name, used with `surname` when there is no display name.
    pub given_name: String,
    /// Last name.
    pub surname: String,
    /// Organisation, used when the allowlist rule gives no label; empty = not read.
    pub organisation: String,
}

impl Default for LdapAttributesConfig {
    fn default() -> Self {
        Self {
            mail: "mail".into(),
            display_name: "displayName".into(),
            given_name: "givenName".into(),
            surname: "sn".into(),
            organisation: "o".into(),
        }
    }
}

impl LdapConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        let lower = url.to_ascii_lowercase();
        let ldaps = lower.starts_with("ldaps://");
        let host = lower
            .strip_prefix("ldaps://")
            .or_else(|| lower.strip_prefix("ldap://"));
        if host.is_none_or(|h| h.trim_end_matches('/').is_empty()) {
            return Err(ConfigError(
                "ldap.url: expected `ldap://host[:port]` or `ldaps://host[:port]`".into(),
            ));
        }
        if ldaps && self.starttls {
            return Err(ConfigError(
                "ldap.starttls: StartTLS is for ldap:// URLs; ldaps:// is already TLS".into(),
            ));
        }
        if self.base_dn.trim().is_empty() {
            return Err(ConfigError(
                "ldap.base_dn: required when ldap.url is set".into(),
            ));
        }
        match (&self.bind_dn, &self.bind_password_file) {
            (Some(_), None) => {
                return Err(ConfigError(
                    "ldap.bind_password_file: required when ldap.bind_dn is set".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError(
                    "ldap.bind_dn: required when ldap.bind_password_file is set".into(),
                ));
            }
            _ => {}
        }
        let filter = self.filter.trim();
        if !(filter.starts_with('(') && filter.ends_with(')')) {
            return Err(ConfigError(
                "ldap.filter: expected a parenthesised LDAP filter such as `(objectClass=inetOrgPerson)`"
                    .into(),
            ));
        }
        if self.page_size == 0 || self.page_size > 10_000 {
            return Err(ConfigError(
                "ldap.page_size: must be between 1 and 10000".into(),
            ));
        }
        if self.timeout.0.is_zero() {
            return Err(ConfigError("ldap.timeout: must be positive".into()));
        }
        if let Some(interval) = &self.sync_interval
            && interval.0 < Duration::from_secs(60)
        {
            return Err(ConfigError(
                "ldap.sync_interval: must be at least 1 minute".into(),
            ));
        }
        let a = &self.attributes;
        for (key, value) in [
            ("mail", &a.mail),
            ("display_name", &a.display_name),
            ("given_name", &a.given_name),
            ("surname", &a.surname),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError(format!(
                    "ldap.attributes.{key}: must name an attribute"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod directory_config_tests {
    use super::*;

    #[test]
    fn directory_and_ldap_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.directory.display_name_format, "{name} [{organisation}]");
        assert!(!c.directory.show_externals);
        assert!(!c.directory.externals_may_search);
        assert_eq!(c.directory.whoami_cache_ttl.0, Duration::from_secs(60));
        assert_eq!(c.directory.search_candidates, 200);
        assert!(c.directory.client_hosts.is_empty());
        assert!(c.ldap.url.is_none());
        assert_eq!(c.ldap.filter, "(objectClass=inetOrgPerson)");
        assert_eq!(c.ldap.page_size, 500);
        assert_eq!(c.ldap.attributes.mail, "mail");
        assert_eq!(c.ldap.attributes.organisation, "o");
    }

    #[test]
    fn client_hosts_parse_and_match_without_case() {
        let c = Config::from_toml(
            r#"
[directory.client_hosts."matrix.agent-a.example"]
server_name = "agent-a.example"
client_url = "https://matrix.agent-a.example"
"#,
        )
        .unwrap();
        let host = c.directory.client_host("Matrix.Agent-A.example").unwrap();
        assert_eq!(host.server_name, "agent-a.example");
        assert!(c.directory.client_host("matrix.agent-b.example").is_none());
    }

    #[test]
    fn directory_errors_name_the_key() {
        for (toml, key) in [
            (
                "[directory]\ndisplay_name_format = \"{nom}\"\n",
                "directory.display_name_format",
            ),
            (
                "[directory.client_hosts.\"h.example\"]\nserver_name = \"a b\"\nclient_url = \"https://h.example\"\n",
                "directory.client_hosts.\"h.example\".server_name",
            ),
            (
                "[directory.client_hosts.\"h.example\"]\nserver_name = \"a.example\"\nclient_url = \"ftp://h.example\"\n",
                "directory.client_hosts.\"h.example\".client_url",
            ),
            (
                "[directory.client_hosts.\"h.example\"]\nserver_name = \"a.example\"\n",
                "client_url",
            ),
            (
                "[directory]\nallowed_homeservers = [\"not a name\"]\n",
                "directory.allowed_homeservers",
            ),
            (
                "[directory]\nsearch_candidates = 5\n",
                "directory.search_candidates",
            ),
            (
                "[directory]\nwhoami_cache_ttl = \"soon\"\n",
                "directory.whoami_cache_ttl",
            ),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert!(e.0.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn ldap_errors_name_the_key() {
        let ok = "[ldap]\nurl = \"ldap://127.0.0.1:389\"\nbase_dn = \"dc=x\"\n";
        assert!(Config::from_toml(ok).is_ok());
        for (toml, key) in [
            (
                "[ldap]\nurl = \"http://x\"\nbase_dn = \"dc=x\"\n",
                "ldap.url",
            ),
            ("[ldap]\nurl = \"ldap://x\"\n", "ldap.base_dn"),
            (
                "[ldap]\nurl = \"ldaps://x\"\nbase_dn = \"dc=x\"\nstarttls = true\n",
                "ldap.starttls",
            ),
            (
                "[ldap]\nurl = \"ldap://x\"\nbase_dn = \"dc=x\"\nbind_dn = \"cn=a\"\n",
                "ldap.bind_password_file",
            ),
            (
                "[ldap]\nurl = \"ldap://x\"\nbase_dn = \"dc=x\"\nfilter = \"objectClass=person\"\n",
                "ldap.filter",
            ),
            (
                "[ldap]\nurl = \"ldap://x\"\nbase_dn = \"dc=x\"\npage_size = 0\n",
                "ldap.page_size",
            ),
            (
                "[ldap]\nurl = \"ldap://x\"\nbase_dn = \"dc=x\"\nsync_interval = \"5s\"\n",
                "ldap.sync_interval",
            ),
            (
                "[ldap]\nurl = \"ldap://x\"\nbase_dn = \"dc=x\"\n[ldap.attributes]\nmail = \"\"\n",
                "ldap.attributes.mail",
            ),
            ("[ldap]\nbind_password = \"x\"\n", "bind_password"),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert!(e.0.contains(key), "{toml}: {e}");
        }
    }
}
