//! `[admin]`: the administration API and its accounts.

use super::*;

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
    /// Serve `/_annuaire/*` and `/metrics` on a public listener that is not on loopback when
    /// `http.admin_bind` is unset (off: they are not served there at all).
    pub public_listener: bool,
    /// A console session (`/_annuaire/console/`) ends after this long without a request.
    pub console_idle_timeout: HumanDuration,
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
            public_listener: false,
            console_idle_timeout: HumanDuration(Duration::from_secs(15 * 60)),
        }
    }
}

impl AdminConfig {
    /// Whether administrators may log in with an LDAP bind.
    pub fn ldap_login_enabled(&self) -> bool {
        self.ldap_user_filter.is_some()
    }

    pub(super) fn validate(&self, ldap: &LdapConfig) -> Result<(), ConfigError> {
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
        let idle = self.console_idle_timeout.0;
        if idle < Duration::from_secs(1) || idle > Duration::from_secs(24 * 3600) {
            return Err(ConfigError(
                "admin.console_idle_timeout: must be between 1s and 24h".into(),
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

/// `[retention]`: how long personal data and counters are kept, and the purge job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Audit log rows older than this are deleted.
    pub audit: HumanDuration,
    /// Per-domain attempt counters (`policy_attempts`) older than this are deleted.
    pub attempts: HumanDuration,
    /// How often the purge job runs (one instance at a time, under the job lock).
    pub interval: HumanDuration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            audit: HumanDuration(Duration::from_secs(365 * 24 * 3600)),
            attempts: HumanDuration(Duration::from_secs(90 * 24 * 3600)),
            interval: HumanDuration(Duration::from_secs(3600)),
        }
    }
}

impl RetentionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let day = Duration::from_secs(24 * 3600);
        for (key, value) in [
            ("retention.audit", self.audit),
            ("retention.attempts", self.attempts),
        ] {
            if value.0 < day {
                return Err(ConfigError(format!("{key}: must be at least 1day")));
            }
        }
        if self.interval.0 < Duration::from_secs(60) || self.interval.0 > day {
            return Err(ConfigError(
                "retention.interval: must be between 1m and 1day".into(),
            ));
        }
        Ok(())
    }
}
