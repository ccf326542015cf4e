//! Outbound calls to homeservers: server-name resolution ([`resolve`]), an SSRF guard
//! ([`ssrf`]), homeserver key fetch and caching ([`keys`]), the HTTP transport ([`transport`])
//! and the calls themselves ([`client`]: X-Matrix and signed-JSON verification, OpenID
//! userinfo, `onbind` delivery and client-API `whoami`).
//!
//! # Resolution (server-server spec, simplified)
//! 1. A static override (`federation.homeservers`) wins: its URL is used as configured
//!    (`http://` allowed) and is trusted, i.e. not subject to the SSRF guard.
//! 2. An IP literal → `https://ip:port` (port 8448 unless given).
//! 3. `host:port` → `https://host:port`.
//! 4. Otherwise `GET https://host/.well-known/matrix/server`; a valid `m.server` delegates
//!    to `https://delegated` (its port, else 8448). Answers are cached for an hour; failures
//!    (fall back to `https://host:8448`) for two minutes. Redirects are not followed.
//!
//! SRV records (`_matrix-fed._tcp`, `_matrix._tcp`) are **not** consulted: deployments that
//! rely on them need a `.well-known` file or an override. The `Host` header and TLS name
//! are those of the URL, i.e. the delegated name, as the spec asks.
//!
//! # SSRF guard
//! Every untrusted connection target is checked: names are resolved by a custom resolver
//! (`tokio::net::lookup_host`) that drops loopback, private (RFC 1918, ULA), link-local,
//! unspecified, multicast, CGNAT, benchmarking, reserved and documentation addresses
//! (IPv4-mapped, NAT64 and 6to4 IPv6 forms included) unless they fall inside
//! `federation.allowed_networks`; IP literals are checked the same way before connecting.
//! Because the filtered addresses are the ones connected to, DNS rebinding cannot slip a
//! private address in between check and use. No proxy is used.
//!
//! # TLS
//! rustls with the ring provider given explicitly (no reliance on a process default), the
//! platform trust store (`rustls-platform-verifier`) plus `federation.ca_file`.
//!
//! Tokens (OpenID, Matrix access tokens) are never logged; logs carry server names and
//! statuses only, and transport errors are stripped of their URL.

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

mod client;
mod keys;
mod resolve;
mod ssrf;
#[cfg(test)]
mod tests;
mod transport;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::{Client, Url};

use crate::cache::TtlCache;
use crate::clock::{SharedClock, SystemClock};
use crate::config::{ConfigError, FederationConfig};
use crate::matrix::xmatrix::XMatrixError;
use keys::CachedKeys;
use ssrf::GuardedResolver;
use transport::{http_client, tls_config};

/// How long a `.well-known` delegation is trusted.
const WELL_KNOWN_TTL_MS: i64 = 60 * 60 * 1000;
/// How long a failed `.well-known` lookup is remembered (we use port 8448 meanwhile).
const WELL_KNOWN_FAILURE_TTL_MS: i64 = 2 * 60 * 1000;
/// Upper bound on how long fetched keys are kept, whatever `valid_until_ts` says.
const KEY_CACHE_MAX_MS: i64 = 60 * 60 * 1000;
/// An unknown key id triggers a refetch at most this often per server.
const KEY_REFETCH_INTERVAL_MS: i64 = 60 * 1000;
/// Bound on cached servers, since origins in requests are chosen by strangers.
const MAX_CACHED_SERVERS: usize = 10_000;

/// Federation client settings, built from configuration.
#[derive(Debug, Clone)]
pub struct FederationSettings {
    /// Static overrides: server name → base URL (`https://10.0.0.5:8448`, `http://` allowed).
    pub homeservers: HashMap<String, Url>,
    /// Networks exempt from the SSRF guard.
    pub allowed_networks: Vec<IpNet>,
    /// Extra trust anchors (PEM), added to the platform's.
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout (connect, send and read the whole body).
    pub timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl FederationSettings {
    /// The settings of `[federation]` (validated by the configuration).
    pub fn from_config(config: &FederationConfig) -> Result<Self, ConfigError> {
        Ok(FederationSettings {
            homeservers: config.homeserver_urls()?,
            allowed_networks: config.allowed_networks.clone(),
            ca_file: config.ca_file.clone(),
            timeout: config.timeout.0,
            max_response_bytes: config.max_response_size.0,
            ..FederationSettings::default()
        })
    }
}

impl Default for FederationSettings {
    fn default() -> Self {
        Self {
            homeservers: HashMap::new(),
            allowed_networks: Vec::new(),
            ca_file: None,
            timeout: Duration::from_secs(10),
            max_response_bytes: 1024 * 1024,
            user_agent: format!("annuaire/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// What went wrong talking to (or verifying) a homeserver.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// Not a valid Matrix server name (`host[:port]`, IP literals allowed).
    #[error("invalid server name {0:?}")]
    InvalidServerName(String),
    /// A configured or given URL cannot be used (scheme other than http/https, no host).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The SSRF guard refused the target.
    #[error("refusing to connect to {target}: {reason}")]
    Forbidden {
        /// Host name or address refused.
        target: String,
        /// Why.
        reason: String,
    },
    /// No answer: DNS, connection, TLS or timeout failure.
    #[error("{server} is unreachable: {reason}")]
    Unreachable {
        /// The server we tried.
        server: String,
        /// Transport error, without URL.
        reason: String,
    },
    /// The homeserver answered 401/403 to a token check: the token is not valid there.
    #[error("{server} rejected the access token")]
    InvalidToken {
        /// The homeserver that refused.
        server: String,
    },
    /// An unexpected HTTP status (redirects included: they are not followed).
    #[error("{server} answered HTTP {status}")]
    Status {
        /// The server that answered.
        server: String,
        /// The status code.
        status: u16,
    },
    /// The response body exceeded `max_response_bytes`.
    #[error("{server} sent more than {limit} bytes")]
    TooLarge {
        /// The server that answered.
        server: String,
        /// The configured limit.
        limit: usize,
    },
    /// The response is not what the API promises (bad JSON, missing field, wrong server).
    #[error("invalid response from {server}: {reason}")]
    InvalidResponse {
        /// The server that answered.
        server: String,
        /// What was wrong.
        reason: String,
    },
    /// The X-Matrix header is malformed, addressed elsewhere, or its signature is wrong.
    #[error(transparent)]
    BadAuthorization(#[from] XMatrixError),
    /// A signed JSON object or key response does not carry a valid signature.
    #[error("bad signature from {server}: {reason}")]
    BadSignature {
        /// The server whose signature was checked.
        server: String,
        /// What failed.
        reason: String,
    },
    /// The server does not publish the key id used.
    #[error("{server} publishes no key {key_id}")]
    UnknownKey {
        /// The server.
        server: String,
        /// The key id looked for.
        key_id: String,
    },
    /// The settings cannot produce a client (bad CA file, no trust anchors, bad override).
    #[error("federation settings: {0}")]
    Config(String),
}

impl FederationError {
    /// A short name for the kind of failure: the `kind` label of
    /// `annuaire_federation_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidServerName(_) => "invalid_server_name",
            Self::InvalidUrl(_) => "invalid_url",
            Self::Forbidden { .. } => "forbidden_target",
            Self::Unreachable { .. } => "unreachable",
            Self::InvalidToken { .. } => "invalid_token",
            Self::Status { .. } => "http_status",
            Self::TooLarge { .. } => "too_large",
            Self::InvalidResponse { .. } => "invalid_response",
            Self::BadAuthorization(_) => "bad_authorization",
            Self::BadSignature { .. } => "bad_signature",
            Self::UnknownKey { .. } => "unknown_key",
            Self::Config(_) => "config",
        }
    }

    /// Counts this failure of an outbound `call` in `annuaire_federation_errors_total`.
    fn count(&self, call: &'static str) {
        metrics::counter!("annuaire_federation_errors_total", "call" => call, "kind" => self.kind())
            .increment(1);
    }

    /// Whether the error means the caller's credentials or signatures are bad (answer
    /// 401/403), as opposed to the remote side being unavailable or misbehaving.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(
            self,
            Self::InvalidServerName(_)
                | Self::InvalidToken { .. }
                | Self::BadAuthorization(_)
                | Self::BadSignature { .. }
                | Self::UnknownKey { .. }
        )
    }
}

/// HTTP client for homeservers. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct FederationClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FederationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationClient")
            .field(
                "overrides",
                &self.inner.overrides.keys().collect::<Vec<_>>(),
            )
            .field("allowed_networks", &self.inner.allowed_networks)
            .finish_non_exhaustive()
    }
}

struct Inner {
    overrides: HashMap<String, Url>,
    allowed_networks: Arc<[IpNet]>,
    max_response_bytes: usize,
    /// For targets found by resolution: goes through the SSRF resolver.
    guarded: Client,
    /// For URLs the operator configured (overrides, client URLs): plain system resolution.
    trusted: Client,
    clock: SharedClock,
    /// `.well-known` delegations: host name → base URL.
    delegations: TtlCache<String, Url>,
    /// Verified server keys: server name → keys.
    keys: TtlCache<String, CachedKeys>,
}

/// Where a request goes, and whether the SSRF guard applies.
#[derive(Debug, Clone)]
struct Target {
    base: Url,
    trusted: bool,
}

impl FederationClient {
    /// Builds the client (TLS roots, resolver, HTTP pools) with the system clock.
    pub fn new(settings: FederationSettings) -> Result<Self, FederationError> {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    /// Builds the client with an injected clock (cache expiry is decided by it).
    pub fn with_clock(
        settings: FederationSettings,
        clock: SharedClock,
    ) -> Result<Self, FederationError> {
        for (name, url) in &settings.homeservers {
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(FederationError::Config(format!(
                    "override for {name} must be an http(s) URL with a host, not {url}"
                )));
            }
        }
        let tls = tls_config(settings.ca_file.as_deref())?;
        let allowed_networks: Arc<[IpNet]> = settings.allowed_networks.clone().into();
        let resolver = Arc::new(GuardedResolver {
            allowed: Arc::clone(&allowed_networks),
        });
        let guarded = http_client(&settings, tls.clone(), Some(resolver))?;
        let trusted = http_client(&settings, tls, None)?;
        Ok(Self {
            inner: Arc::new(Inner {
                overrides: settings.homeservers,
                allowed_networks,
                max_response_bytes: settings.max_response_bytes,
                guarded,
                trusted,
                delegations: TtlCache::new(MAX_CACHED_SERVERS, clock.clone()),
                keys: TtlCache::new(MAX_CACHED_SERVERS, clock.clone()),
                clock,
            }),
        })
    }
}
