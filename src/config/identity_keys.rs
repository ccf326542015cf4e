//! `[identity]`, `[validation]`, `[mail]`, `[web]`, `[terms]`, `[invites]`, `[federation]`: the Identity Service, email confirmation and outbound calls.

use std::collections::HashMap;

use super::*;

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
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
    pub default_language: Language,
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
            default_language: Language::FR,
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
    pub security: SmtpSecurity,
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
            security: SmtpSecurity::StartTls,
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
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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

/// `[web]`: the pages served to browsers: the agents' pages (`/`, the domain request form,
/// the confirmation link's page) and the administrators' console.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// A folder whose files override the embedded page templates (`templates/web/`).
    pub templates_dir: Option<PathBuf>,
    /// The service's name as agents know it, shown on every page.
    pub service_name: String,
    /// Who runs the service, shown on the agents' home page; absent: not shown.
    pub operator: Option<String>,
    /// The Matrix web client agents register with (`https://…`); `{homeserver}` in it is
    /// replaced by the homeserver the address belongs to. Absent: no link.
    pub client_url: Option<String>,
    /// Whether agents of an unknown administration may ask for it to be added.
    pub domain_requests: bool,
    /// How long domain requests are kept, whatever became of them.
    pub domain_requests_retention: HumanDuration,
    /// Domain requests per client IP (in each instance).
    pub domain_requests_per_ip: RateLimit,
    /// Domain requests per requested domain (in the database: it holds across instances).
    pub domain_requests_per_domain: RateLimit,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            templates_dir: None,
            service_name: "annuaire".into(),
            operator: None,
            client_url: None,
            domain_requests: true,
            domain_requests_retention: HumanDuration(Duration::from_secs(90 * 24 * 3600)),
            domain_requests_per_ip: RateLimit {
                burst: 5,
                every: HumanDuration(Duration::from_secs(600)),
            },
            domain_requests_per_domain: RateLimit {
                burst: 20,
                every: HumanDuration(Duration::from_secs(600)),
            },
        }
    }
}

impl WebConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let name = self.service_name.trim();
        if name.is_empty() || name.chars().any(char::is_control) || name.chars().count() > 80 {
            return Err(ConfigError(
                "web.service_name: 1 to 80 characters, no control characters".into(),
            ));
        }
        if let Some(operator) = &self.operator
            && (operator.trim().is_empty()
                || operator.chars().any(char::is_control)
                || operator.chars().count() > 200)
        {
            return Err(ConfigError(
                "web.operator: 1 to 200 characters, no control characters".into(),
            ));
        }
        if let Some(url) = &self.client_url {
            let probe = url.replace("{homeserver}", "hs.example");
            let parsed = reqwest::Url::parse(&probe)
                .map_err(|e| ConfigError(format!("web.client_url: `{url}`: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(ConfigError(
                    "web.client_url: expected an https:// URL with a host".into(),
                ));
            }
        }
        if self.domain_requests_retention.0 < Duration::from_secs(24 * 3600) {
            return Err(ConfigError(
                "web.domain_requests_retention: must be at least 1day".into(),
            ));
        }
        self.domain_requests_per_ip
            .validate("web.domain_requests_per_ip")?;
        self.domain_requests_per_domain
            .validate("web.domain_requests_per_domain")
    }
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
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
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
    /// The web client invitation mails link to (`https://…`) by default; absent: no link
    /// unless the request names an allowed one.
    pub web_client_url: Option<String>,
    /// Web clients a request's `org.matrix.web_client_location` may choose (exact URLs, a
    /// trailing `/` ignored). Any other value is ignored: a caller cannot put an arbitrary
    /// link in our mail.
    pub allowed_web_clients: Vec<String>,
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
            allowed_web_clients: Vec::new(),
            delivery_initial_backoff: HumanDuration(Duration::from_secs(30)),
            delivery_max_backoff: HumanDuration(Duration::from_secs(2 * 3600)),
            delivery_max_attempts: 12,
        }
    }
}

impl InvitesConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.validity.0 < Duration::from_secs(60) {
            return Err(ConfigError("invites.validity: must be at least 1m".into()));
        }
        self.per_sender.validate("invites.per_sender")?;
        self.per_address.validate("invites.per_address")?;
        let check_client = |key: &str, url: &str| {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| ConfigError(format!("{key}: `{url}`: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(ConfigError(format!(
                    "{key}: `{url}`: expected an https:// URL with a host"
                )));
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(ConfigError(format!(
                    "{key}: `{url}`: a web client URL has no query or fragment (the room link is added to it)"
                )));
            }
            Ok(())
        };
        if let Some(url) = &self.web_client_url {
            check_client("invites.web_client_url", url)?;
        }
        for url in &self.allowed_web_clients {
            check_client("invites.allowed_web_clients", url)?;
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
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.homeserver_urls().map(|_| ())
    }

    /// The overrides parsed as URLs (and the limits checked).
    pub fn homeserver_urls(&self) -> Result<HashMap<String, reqwest::Url>, ConfigError> {
        let mut homeservers = HashMap::new();
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
        Ok(homeservers)
    }
}
