//! `[policy]` and `[rate_limits]`: the allowlists and the in-process rate limits.

use super::*;

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
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
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
    /// MSC4258 federated directory searches, per calling server (in each instance).
    pub federated_search_per_server: RateLimit,
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
            federated_search_per_server: RateLimit {
                burst: 50,
                every: HumanDuration(Duration::from_millis(200)),
            },
        }
    }
}

impl RateLimitsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.info_per_ip.validate("rate_limits.info_per_ip")?;
        self.request_token_per_ip
            .validate("rate_limits.request_token_per_ip")?;
        self.request_token_per_address
            .validate("rate_limits.request_token_per_address")?;
        self.federated_search_per_server
            .validate("rate_limits.federated_search_per_server")
    }
}
