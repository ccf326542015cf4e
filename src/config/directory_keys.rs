//! `[directory]` and `[ldap]`: the cross-shard directory and the agency LDAP.

use super::*;

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
    /// Servers that may search the directory over federation (MSC4258), by server name; `"*"`
    /// admits any server whose signature verifies. Empty: nobody.
    pub federated_search_servers: Vec<String>,
    /// Candidates fetched from the index per search tier before exact ranking (see
    /// `directory::service`): more is closer to a perfect ordering, slower on common prefixes.
    pub search_candidates: u32,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            display_name_format: DEFAULT_DISPLAY_NAME_FORMAT.into(),
            show_externals: false,
            externals_may_search: false,
            client_hosts: std::collections::BTreeMap::new(),
            whoami_cache_ttl: HumanDuration(Duration::from_secs(60)),
            allowed_homeservers: Vec::new(),
            federated_search_servers: Vec::new(),
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
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        validate_display_name_format(&self.display_name_format)
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
        for name in &self.federated_search_servers {
            if name != "*" {
                validate_server_name(name).map_err(|e| {
                    ConfigError(format!(
                        "directory.federated_search_servers: `{name}`: {e} (or \"*\" for any server)"
                    ))
                })?;
            }
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
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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

/// The published form of a verified name unless configured otherwise.
pub const DEFAULT_DISPLAY_NAME_FORMAT: &str = "{name} [{organisation}]";

/// A parsed piece of a display-name format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamePiece<'a> {
    /// Text kept as written.
    Literal(&'a str),
    /// `{name}`.
    Name,
    /// `{organisation}`.
    Organisation,
}

/// The pieces of a `directory.display_name_format`, or what is wrong with it.
pub fn parse_display_name_format(format: &str) -> Result<Vec<NamePiece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = format;
    while !rest.is_empty() {
        let next = rest.find(['{', '}']).unwrap_or(rest.len());
        if next > 0 {
            pieces.push(NamePiece::Literal(&rest[..next]));
            rest = &rest[next..];
            continue;
        }
        if rest.starts_with('}') {
            return Err(format!(
                "display_name_format {format:?}: '}}' without a matching '{{'"
            ));
        }
        let Some(close) = rest.find('}') else {
            return Err(format!(
                "display_name_format {format:?}: '{{' without a matching '}}'"
            ));
        };
        pieces.push(match &rest[1..close] {
            "name" => NamePiece::Name,
            "organisation" => NamePiece::Organisation,
            other => {
                return Err(format!(
                    "display_name_format {format:?}: unknown placeholder {{{other}}} \
                     (known: {{name}}, {{organisation}})"
                ));
            }
        });
        rest = &rest[close + 1..];
    }
    if !pieces.contains(&NamePiece::Name) {
        return Err(format!(
            "display_name_format {format:?} must contain {{name}}"
        ));
    }
    Ok(pieces)
}

/// Checks a `directory.display_name_format`: it must contain `{name}`, and the only placeholders
/// are `{name}` and `{organisation}` (braces are not allowed otherwise).
pub fn validate_display_name_format(format: &str) -> Result<(), String> {
    parse_display_name_format(format).map(|_| ())
}
