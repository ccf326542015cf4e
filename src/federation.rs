//! Outbound calls to homeservers: server-name resolution, an SSRF guard, homeserver key
//! fetch and caching, X-Matrix and signed-JSON verification, OpenID userinfo, `onbind`
//! delivery and client-API `whoami`.
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

use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use reqwest::{Client, Method, RequestBuilder, StatusCode, Url};
use serde_json::Value;

use crate::clock::{SharedClock, SystemClock};
use crate::matrix::server_name::{DEFAULT_FEDERATION_PORT, ServerName};
use crate::matrix::signing::{is_valid_public_key, verify_json};
use crate::matrix::xmatrix::{XMatrixAuth, XMatrixError, verify_request};

/// Default federation port when neither the server name nor its delegation gives one.
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
    delegations: Mutex<HashMap<String, CachedDelegation>>,
    keys: Mutex<HashMap<String, CachedKeys>>,
}

#[derive(Clone)]
struct CachedDelegation {
    base: Url,
    expires_at_ms: i64,
}

#[derive(Clone)]
struct CachedKeys {
    keys: HashMap<String, String>,
    expires_at_ms: i64,
    fetched_at_ms: i64,
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
                clock,
                delegations: Mutex::new(HashMap::new()),
                keys: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The base URL of `server_name`'s federation API (see the module doc for the steps).
    pub async fn resolve(&self, server_name: &str) -> Result<Url, FederationError> {
        Ok(self.resolve_target(server_name).await?.base)
    }

    /// `GET /_matrix/federation/v1/openid/userinfo` on `server_name`: the token owner's
    /// user id (`sub`). The caller checks that it belongs to `server_name`.
    pub async fn openid_userinfo(
        &self,
        server_name: &str,
        access_token: &str,
    ) -> Result<String, FederationError> {
        let target = self.resolve_target(server_name).await?;
        let mut url = endpoint(&target.base, "/_matrix/federation/v1/openid/userinfo");
        url.query_pairs_mut()
            .append_pair("access_token", access_token);
        let (status, body) = self
            .fetch(server_name, &target, Method::GET, url, |r| r)
            .await?;
        match status {
            StatusCode::OK => json_string_field(server_name, &body, "sub"),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(FederationError::InvalidToken {
                    server: server_name.to_owned(),
                })
            }
            other => Err(status_error(server_name, other)),
        }
    }

    /// The server's current signing keys (key id → unpadded base64), from
    /// `GET /_matrix/key/v2/server`, self-signature verified. Includes `old_verify_keys`
    /// not yet expired. Cached until `valid_until_ts`, at most an hour.
    pub async fn server_keys(
        &self,
        server_name: &str,
    ) -> Result<HashMap<String, String>, FederationError> {
        let now = self.inner.clock.now_ms();
        if let Some(cached) = self.cached_keys(server_name, now) {
            return Ok(cached.keys);
        }
        Ok(self.fetch_keys(server_name, now).await?.keys)
    }

    /// Verifies an `Authorization: X-Matrix …` header of a request we received; returns
    /// the origin server name.
    ///
    /// `destination` is our own server name, `uri` the request target as received (path and
    /// query). Synapse sends one header per signing key; passing any one is enough. Callers
    /// that only accept some origins can [`XMatrixAuth::parse`] first and check the origin
    /// before calling, so that no key is fetched from strangers.
    pub async fn verify_xmatrix(
        &self,
        auth_header: &str,
        method: &str,
        uri: &str,
        destination: &str,
        content: Option<&Value>,
    ) -> Result<String, FederationError> {
        let auth = XMatrixAuth::parse(auth_header)?;
        // Checked before any key fetch, so a misaddressed request costs nothing.
        if let Some(found) = &auth.destination
            && found != destination
        {
            return Err(XMatrixError::WrongDestination {
                expected: destination.to_owned(),
                found: found.clone(),
            }
            .into());
        }
        let public_key = self.key_for(&auth.origin, &auth.key).await?;
        verify_request(&auth, method, uri, destination, content, &public_key)?;
        Ok(auth.origin)
    }

    /// Verifies that `value` carries a valid signature of `server_name` (signed-JSON
    /// authentication, as Tchap's `replicate_profiles` uses). Every signature by a key we
    /// can find must verify, and at least one must.
    pub async fn verify_signed_json(
        &self,
        value: &Value,
        server_name: &str,
    ) -> Result<(), FederationError> {
        let bad = |reason: String| FederationError::BadSignature {
            server: server_name.to_owned(),
            reason,
        };
        let key_ids: Vec<String> = value
            .get("signatures")
            .and_then(|s| s.get(server_name))
            .and_then(Value::as_object)
            .map(|by_key| {
                by_key
                    .keys()
                    .filter(|id| id.starts_with("ed25519:"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if key_ids.is_empty() {
            return Err(bad("no ed25519 signature by this server".to_owned()));
        }
        let mut verified = 0;
        let mut unknown = None;
        for key_id in key_ids {
            match self.key_for(server_name, &key_id).await {
                Ok(public_key) => {
                    verify_json(value, server_name, &key_id, &public_key)
                        .map_err(|e| bad(format!("{key_id}: {e}")))?;
                    verified += 1;
                }
                Err(e @ FederationError::UnknownKey { .. }) => unknown = Some(e),
                Err(e) => return Err(e),
            }
        }
        match (verified, unknown) {
            (0, Some(e)) => Err(e),
            (0, None) => Err(bad("no verifiable signature".to_owned())),
            _ => Ok(()),
        }
    }

    /// `POST /_matrix/federation/v1/3pid/onbind` (Synapse serves only POST, not the spec's
    /// PUT): delivers pending invites for a newly bound address. Success means a 2xx.
    pub async fn post_onbind(
        &self,
        server_name: &str,
        body: &Value,
    ) -> Result<(), FederationError> {
        let target = self.resolve_target(server_name).await?;
        let url = endpoint(&target.base, "/_matrix/federation/v1/3pid/onbind");
        let (status, _) = self
            .fetch(server_name, &target, Method::POST, url, |r| r.json(body))
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(status_error(server_name, status))
        }
    }

    /// `GET {client_url}/_matrix/client/v3/account/whoami` with the caller's own token:
    /// the token owner's user id. `client_url` comes from configuration and is trusted.
    pub async fn whoami(
        &self,
        client_url: &Url,
        access_token: &str,
    ) -> Result<String, FederationError> {
        if !matches!(client_url.scheme(), "http" | "https") {
            return Err(FederationError::InvalidUrl(format!(
                "client URL must be http(s): {client_url}"
            )));
        }
        let server = client_url
            .host_str()
            .ok_or_else(|| FederationError::InvalidUrl(format!("no host in {client_url}")))?
            .to_owned();
        let target = Target {
            base: client_url.clone(),
            trusted: true,
        };
        let url = endpoint(client_url, "/_matrix/client/v3/account/whoami");
        let (status, body) = self
            .fetch(&server, &target, Method::GET, url, |r| {
                r.bearer_auth(access_token)
            })
            .await?;
        match status {
            StatusCode::OK => json_string_field(&server, &body, "user_id"),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(FederationError::InvalidToken { server })
            }
            other => Err(status_error(&server, other)),
        }
    }

    // ----- resolution -----

    async fn resolve_target(&self, server_name: &str) -> Result<Target, FederationError> {
        if let Some(base) = self.inner.overrides.get(server_name) {
            return Ok(Target {
                base: base.clone(),
                trusted: true,
            });
        }
        let parsed = parse_server_name(server_name)?;
        let base = match direct_base(&parsed)? {
            Some(base) => base,
            None => self.delegated_base(&parsed.host_text()).await?,
        };
        self.check_literal(&base)?;
        Ok(Target {
            base,
            trusted: false,
        })
    }

    /// Steps 4+ of the resolution: `.well-known`, cached either way.
    async fn delegated_base(&self, hostname: &str) -> Result<Url, FederationError> {
        let now = self.inner.clock.now_ms();
        if let Some(cached) = lock(&self.inner.delegations)
            .get(hostname)
            .filter(|c| c.expires_at_ms > now)
        {
            return Ok(cached.base.clone());
        }
        let (base, ttl) = match self.fetch_well_known(hostname).await {
            Ok(delegated) => {
                tracing::debug!(server = hostname, delegated = %delegated.authority(), "well-known delegation");
                (base_url(&delegated)?, WELL_KNOWN_TTL_MS)
            }
            Err(e) => {
                tracing::debug!(server = hostname, error = %e, "no usable well-known; using port 8448");
                (
                    https_base(hostname, DEFAULT_FEDERATION_PORT)?,
                    WELL_KNOWN_FAILURE_TTL_MS,
                )
            }
        };
        insert_bounded(
            &mut lock(&self.inner.delegations),
            hostname.to_owned(),
            CachedDelegation {
                base: base.clone(),
                expires_at_ms: now.saturating_add(ttl),
            },
            |c| c.expires_at_ms,
        );
        Ok(base)
    }

    async fn fetch_well_known(&self, hostname: &str) -> Result<ServerName, FederationError> {
        let base = https_base(hostname, 443)?;
        let url = endpoint(&base, "/.well-known/matrix/server");
        let target = Target {
            base,
            trusted: false,
        };
        let (status, body) = self
            .fetch(hostname, &target, Method::GET, url, |r| r)
            .await?;
        if status != StatusCode::OK {
            return Err(status_error(hostname, status));
        }
        parse_well_known(&body).ok_or_else(|| FederationError::InvalidResponse {
            server: hostname.to_owned(),
            reason: "no valid m.server in .well-known/matrix/server".to_owned(),
        })
    }

    // ----- keys -----

    fn cached_keys(&self, server_name: &str, now: i64) -> Option<CachedKeys> {
        lock(&self.inner.keys)
            .get(server_name)
            .filter(|c| c.expires_at_ms > now)
            .cloned()
    }

    async fn fetch_keys(&self, server_name: &str, now: i64) -> Result<CachedKeys, FederationError> {
        let target = self.resolve_target(server_name).await?;
        let url = endpoint(&target.base, "/_matrix/key/v2/server");
        let (status, body) = self
            .fetch(server_name, &target, Method::GET, url, |r| r)
            .await?;
        if status != StatusCode::OK {
            return Err(status_error(server_name, status));
        }
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| FederationError::InvalidResponse {
                server: server_name.to_owned(),
                reason: format!("not JSON: {e}"),
            })?;
        let key_set = parse_key_response(server_name, &value, now)?;
        let cached = CachedKeys {
            keys: key_set.keys,
            expires_at_ms: key_set.expires_at_ms,
            fetched_at_ms: now,
        };
        tracing::debug!(
            server = server_name,
            keys = cached.keys.len(),
            "fetched homeserver keys"
        );
        insert_bounded(
            &mut lock(&self.inner.keys),
            server_name.to_owned(),
            cached.clone(),
            |c| c.expires_at_ms,
        );
        Ok(cached)
    }

    /// The public key `key_id` of `server_name`, refetching (at most once a minute) when a
    /// cached key set lacks it, since servers rotate keys.
    async fn key_for(&self, server_name: &str, key_id: &str) -> Result<String, FederationError> {
        let now = self.inner.clock.now_ms();
        let unknown = || FederationError::UnknownKey {
            server: server_name.to_owned(),
            key_id: key_id.to_owned(),
        };
        if let Some(cached) = self.cached_keys(server_name, now) {
            if let Some(key) = cached.keys.get(key_id) {
                return Ok(key.clone());
            }
            if now - cached.fetched_at_ms < KEY_REFETCH_INTERVAL_MS {
                return Err(unknown());
            }
        }
        self.fetch_keys(server_name, now)
            .await?
            .keys
            .get(key_id)
            .cloned()
            .ok_or_else(unknown)
    }

    // ----- transport -----

    /// Refuses an untrusted URL whose host is a forbidden IP literal (names are checked by
    /// the resolver at connect time).
    fn check_literal(&self, url: &Url) -> Result<(), FederationError> {
        let host = url
            .host_str()
            .ok_or_else(|| FederationError::InvalidUrl("no host".to_owned()))?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = IpAddr::from_str(literal)
            && !is_permitted(ip, &self.inner.allowed_networks)
        {
            return Err(FederationError::Forbidden {
                target: host.to_owned(),
                reason: "not a public address and not in federation.allowed_networks".to_owned(),
            });
        }
        Ok(())
    }

    /// Sends one request and reads the body with the size cap.
    async fn fetch(
        &self,
        server: &str,
        target: &Target,
        method: Method,
        url: Url,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), FederationError> {
        let client = if target.trusted {
            &self.inner.trusted
        } else {
            self.check_literal(&url)?;
            &self.inner.guarded
        };
        let response = build(client.request(method, url))
            .send()
            .await
            .map_err(|e| send_error(server, e))?;
        let status = response.status();
        tracing::debug!(server, status = status.as_u16(), "homeserver answered");
        let body = read_capped(server, response, self.inner.max_response_bytes).await?;
        Ok((status, body))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a cache lock leaves a usable map; keep going.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Inserts into a cache, evicting the entry closest to expiry when full.
fn insert_bounded<V>(
    map: &mut HashMap<String, V>,
    key: String,
    value: V,
    expires_at: impl Fn(&V) -> i64,
) {
    if map.len() >= MAX_CACHED_SERVERS
        && !map.contains_key(&key)
        && let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| expires_at(v))
            .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
    map.insert(key, value);
}

/// `base` + `path`, keeping any path prefix of `base` (`https://proxy/hs1/` + `/_matrix/…`).
fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url.set_query(None);
    url.set_fragment(None);
    url
}

fn https_base(host: &str, port: u16) -> Result<Url, FederationError> {
    Url::parse(&format!("https://{host}:{port}/"))
        .map_err(|e| FederationError::InvalidServerName(format!("{host}: {e}")))
}

fn status_error(server: &str, status: StatusCode) -> FederationError {
    FederationError::Status {
        server: server.to_owned(),
        status: status.as_u16(),
    }
}

fn json_string_field(server: &str, body: &[u8], field: &str) -> Result<String, FederationError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| FederationError::InvalidResponse {
            server: server.to_owned(),
            reason: format!("not JSON: {e}"),
        })?;
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| FederationError::InvalidResponse {
            server: server.to_owned(),
            reason: format!("no string `{field}`"),
        })
}

async fn read_capped(
    server: &str,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, FederationError> {
    let too_large = || FederationError::TooLarge {
        server: server.to_owned(),
        limit,
    };
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| send_error(server, e))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Maps a transport error, recognising the SSRF guard's refusal in the source chain.
fn send_error(server: &str, error: reqwest::Error) -> FederationError {
    // The URL may carry a token (`?access_token=`): never keep it.
    let error = error.without_url();
    let mut source: Option<&(dyn StdError + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(blocked) = e.downcast_ref::<BlockedTarget>() {
            return FederationError::Forbidden {
                target: blocked.host.clone(),
                reason: blocked.to_string(),
            };
        }
        source = e.source();
    }
    let reason = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error_chain(&error)
    };
    tracing::debug!(server, %reason, "homeserver unreachable");
    FederationError::Unreachable {
        server: server.to_owned(),
        reason,
    }
}

fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn http_client(
    settings: &FederationSettings,
    tls: rustls::ClientConfig,
    resolver: Option<Arc<GuardedResolver>>,
) -> Result<Client, FederationError> {
    let mut builder = Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(settings.user_agent.clone());
    if let Some(resolver) = resolver {
        builder = builder.dns_resolver(resolver);
    }
    builder
        .build()
        .map_err(|e| FederationError::Config(error_chain(&e)))
}

/// TLS with the ring provider passed explicitly (so building a client never depends on a
/// process-wide default), the platform roots and the optional extra CA file.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, FederationError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra_roots = match ca_file {
        Some(path) => load_ca_file(path)?,
        None => Vec::new(),
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, Arc::clone(&provider))
            .map_err(|e| {
                FederationError::Config(format!(
                    "no usable TLS trust anchors ({e}); install the system CA certificates or set federation.ca_file"
                ))
            })?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FederationError::Config(format!("TLS: {e}")))?
        .dangerous() // the rustls name for "bring your own verifier"; this one verifies fully
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // reqwest is built without HTTP/2 here.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn load_ca_file(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, FederationError> {
    use rustls_pki_types::pem::PemObject as _;
    let bad = |e: String| FederationError::Config(format!("ca_file {}: {e}", path.display()));
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".to_owned()));
    }
    Ok(certs)
}

// ----- server names -----

/// Parses a server name met in a request or a response.
fn parse_server_name(text: &str) -> Result<ServerName, FederationError> {
    ServerName::parse(text).map_err(|_| FederationError::InvalidServerName(text.to_owned()))
}

/// The base URL when no `.well-known` lookup is needed (IP literal or explicit port).
fn direct_base(name: &ServerName) -> Result<Option<Url>, FederationError> {
    match (name.is_ip_literal(), name.port()) {
        (false, None) => Ok(None),
        (_, port) => {
            https_base(&name.host_text(), port.unwrap_or(DEFAULT_FEDERATION_PORT)).map(Some)
        }
    }
}

/// The base URL of a delegated server name (SRV not consulted: port or 8448).
fn base_url(name: &ServerName) -> Result<Url, FederationError> {
    https_base(
        &name.host_text(),
        name.port().unwrap_or(DEFAULT_FEDERATION_PORT),
    )
}

/// The `m.server` of a `.well-known/matrix/server` body, if valid.
fn parse_well_known(body: &[u8]) -> Option<ServerName> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let delegated = value.get("m.server")?.as_str()?;
    ServerName::parse(delegated).ok()
}

// ----- keys -----

/// Keys from a `/_matrix/key/v2/server` response, and until when they may be cached.
#[derive(Debug)]
struct KeySet {
    keys: HashMap<String, String>,
    expires_at_ms: i64,
}

/// Checks a key response: it is `server_name`'s, signed by its own `verify_keys` (every
/// such signature must verify; at least one must exist). Keeps `verify_keys` and the
/// `old_verify_keys` not yet expired.
fn parse_key_response(
    server_name: &str,
    value: &Value,
    now_ms: i64,
) -> Result<KeySet, FederationError> {
    let invalid = |reason: &str| FederationError::InvalidResponse {
        server: server_name.to_owned(),
        reason: reason.to_owned(),
    };
    if value.get("server_name").and_then(Value::as_str) != Some(server_name) {
        return Err(invalid("server_name is not the server asked"));
    }
    let mut keys = HashMap::new();
    let verify_keys = value
        .get("verify_keys")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("no verify_keys"))?;
    for (key_id, entry) in verify_keys {
        if !key_id.starts_with("ed25519:") {
            continue; // unknown algorithm: ignored, as the spec says
        }
        let key = entry
            .get("key")
            .and_then(Value::as_str)
            .filter(|k| is_valid_public_key(k))
            .ok_or_else(|| invalid("malformed ed25519 verify key"))?;
        keys.insert(key_id.clone(), key.to_owned());
    }
    if keys.is_empty() {
        return Err(invalid("no ed25519 verify key"));
    }

    let signed_by: Vec<&String> = value
        .get("signatures")
        .and_then(|s| s.get(server_name))
        .and_then(Value::as_object)
        .map(|by_key| by_key.keys().filter(|id| keys.contains_key(*id)).collect())
        .unwrap_or_default();
    if signed_by.is_empty() {
        return Err(FederationError::BadSignature {
            server: server_name.to_owned(),
            reason: "key response not signed by its own verify_keys".to_owned(),
        });
    }
    for key_id in signed_by {
        let key = keys.get(key_id).map(String::as_str).unwrap_or_default();
        verify_json(value, server_name, key_id, key).map_err(|e| {
            FederationError::BadSignature {
                server: server_name.to_owned(),
                reason: format!("key response signature {key_id}: {e}"),
            }
        })?;
    }

    let valid_until = value
        .get("valid_until_ts")
        .and_then(Value::as_i64)
        .unwrap_or(now_ms);
    let mut expires_at_ms = valid_until.min(now_ms.saturating_add(KEY_CACHE_MAX_MS));
    if let Some(old) = value.get("old_verify_keys").and_then(Value::as_object) {
        for (key_id, entry) in old {
            let expired_ts = entry.get("expired_ts").and_then(Value::as_i64);
            let key = entry
                .get("key")
                .and_then(Value::as_str)
                .filter(|k| is_valid_public_key(k));
            if let (true, Some(expired_ts), Some(key)) =
                (key_id.starts_with("ed25519:"), expired_ts, key)
                && expired_ts > now_ms
            {
                keys.entry(key_id.clone()).or_insert_with(|| key.to_owned());
                // Stop trusting the cache when the first old key expires.
                expires_at_ms = expires_at_ms.min(expired_ts);
            }
        }
    }
    Ok(KeySet {
        keys,
        expires_at_ms,
    })
}

// ----- SSRF guard -----

/// The resolver refused every address of a name.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves only to non-public addresses (e.g. {ip}) outside federation.allowed_networks"
)]
struct BlockedTarget {
    host: String,
    ip: IpAddr,
}

/// A DNS resolver that drops non-public addresses unless they are explicitly allowed.
struct GuardedResolver {
    allowed: Arc<[IpNet]>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = Arc::clone(&self.allowed);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let refused = found
                .iter()
                .map(SocketAddr::ip)
                .find(|ip| !is_permitted(*ip, &allowed));
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| is_permitted(a.ip(), &allowed))
                .collect();
            if kept.is_empty() {
                let error: Box<dyn StdError + Send + Sync> = match refused {
                    Some(ip) => Box::new(BlockedTarget { host, ip }),
                    None => Box::new(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{host} has no address"),
                    )),
                };
                return Err(error);
            }
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether connecting to `ip` is allowed: public, or inside an allowed network.
fn is_permitted(ip: IpAddr, allowed: &[IpNet]) -> bool {
    // `::ffff:10.0.0.1` is 10.0.0.1 on the wire: judge (and match networks) as IPv4.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    allowed.iter().any(|net| net.contains(&ip)) || is_public(ip)
}

/// Whether an address is globally routable (not loopback, private, link-local, …).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = a == 0 // "this network", includes 0.0.0.0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10 CGNAT
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24 IETF protocol assignments
        || ip.is_documentation()
        || (a == 198 && (b & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || ip.is_multicast()
        || a >= 240; // 240.0.0.0/4 reserved, and broadcast
    !special
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        // 64:ff9b::/96 NAT64 reaches the embedded IPv4 address.
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        // 6to4 relays to the embedded IPv4 address.
        return is_public_v4(embedded_v4(s[1], s[2]));
    }
    let special = s[..6] == [0; 6] // ::/96: unspecified, loopback, IPv4-compatible
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32 documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // 3fff::/20 documentation
        || (s[0] == 0x0100 && s[1..4] == [0; 3]) // 100::/64 discard
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // 64:ff9b:1::/48 local NAT64
        || (s[0] == 0x2001 && s[1] == 0); // 2001::/32 Teredo (embeds any IPv4)
    !special
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::matrix::signing::{SigningKey, sign_json};
    use crate::matrix::xmatrix::sign_request;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::json;
    use wiremock::matchers::{bearer_token, body_json, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const T0: i64 = 1_700_000_000_000;
    const HS: &str = "hs.test";
    const IS: &str = "is.test";

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut StdRng::seed_from_u64(seed))
    }

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new(T0))
    }

    fn settings() -> FederationSettings {
        FederationSettings {
            timeout: Duration::from_secs(5),
            ..FederationSettings::default()
        }
    }

    /// A client that reaches `server` as homeserver `HS` through an override.
    fn client_for(server: &MockServer, clock: &Arc<ManualClock>) -> FederationClient {
        let mut settings = settings();
        settings
            .homeservers
            .insert(HS.to_owned(), Url::parse(&server.uri()).unwrap());
        let shared: SharedClock = clock.clone();
        FederationClient::with_clock(settings, shared).unwrap()
    }

    fn key_response(server: &str, key: &SigningKey, valid_until_ts: i64) -> Value {
        let mut response = json!({
            "server_name": server,
            "verify_keys": {key.key_id(): {"key": key.public_key_base64()}},
            "old_verify_keys": {},
            "valid_until_ts": valid_until_ts,
        });
        sign_json(&mut response, server, key).unwrap();
        response
    }

    async fn mount_keys(server: &MockServer, response: Value, times: u64) {
        Mock::given(method("GET"))
            .and(path("/_matrix/key/v2/server"))
            .respond_with(ResponseTemplate::new(200).set_body_json(response))
            .expect(times)
            .mount(server)
            .await;
    }

    #[test]
    fn client_is_cheap_to_share_across_tasks() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<FederationClient>();
    }

    // ----- server names and resolution (pure parts) -----

    #[test]
    fn resolution_steps_without_lookup() {
        let direct = |name: &str| {
            direct_base(&ServerName::parse(name).unwrap())
                .unwrap()
                .map(|u| u.to_string())
        };
        assert_eq!(direct("1.2.3.4").as_deref(), Some("https://1.2.3.4:8448/"));
        assert_eq!(direct("1.2.3.4:99").as_deref(), Some("https://1.2.3.4:99/"));
        assert_eq!(
            direct("[2001:db8::1]").as_deref(),
            Some("https://[2001:db8::1]:8448/")
        );
        assert_eq!(
            direct("hs.example:443").as_deref(),
            Some("https://hs.example/")
        );
        assert_eq!(
            direct("hs.example:8449").as_deref(),
            Some("https://hs.example:8449/")
        );
        assert_eq!(direct("hs.example"), None, "needs .well-known");
    }

    #[test]
    fn well_known_delegation_parsing() {
        let base = |body: &str| {
            parse_well_known(body.as_bytes()).map(|s| base_url(&s).unwrap().to_string())
        };
        assert_eq!(
            base(r#"{"m.server": "matrix.hs.example:443"}"#).as_deref(),
            Some("https://matrix.hs.example/")
        );
        assert_eq!(
            base(r#"{"m.server": "matrix.hs.example"}"#).as_deref(),
            Some("https://matrix.hs.example:8448/")
        );
        assert_eq!(
            base(r#"{"m.server": "5.6.7.8"}"#).as_deref(),
            Some("https://5.6.7.8:8448/")
        );
        for bad in [
            r#"{}"#,
            r#"{"m.server": 1}"#,
            r#"{"m.server": "a/b"}"#,
            "not json",
            "[]",
        ] {
            assert_eq!(base(bad), None, "{bad}");
        }
    }

    #[test]
    fn endpoints_keep_a_base_path_prefix() {
        let base = Url::parse("https://proxy.example/hs1/").unwrap();
        assert_eq!(
            endpoint(&base, "/_matrix/key/v2/server").as_str(),
            "https://proxy.example/hs1/_matrix/key/v2/server"
        );
        let base = Url::parse("http://10.0.0.5:8448").unwrap();
        assert_eq!(
            endpoint(&base, "/_matrix/key/v2/server").as_str(),
            "http://10.0.0.5:8448/_matrix/key/v2/server"
        );
    }

    // ----- SSRF guard -----

    #[test]
    fn address_classification() {
        let forbidden = [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
        ];
        for ip in forbidden {
            assert!(
                !is_permitted(ip.parse().unwrap(), &[]),
                "{ip} must be refused"
            );
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "198.17.0.1",
            "198.20.0.1",
            "2a01:4f8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        for ip in public {
            assert!(
                is_permitted(ip.parse().unwrap(), &[]),
                "{ip} must be allowed"
            );
        }
        let allowed: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        assert!(is_permitted("10.2.3.4".parse().unwrap(), &allowed));
        assert!(is_permitted("::ffff:10.2.3.4".parse().unwrap(), &allowed));
        assert!(is_permitted("fd00::5".parse().unwrap(), &allowed));
        assert!(!is_permitted("192.168.0.1".parse().unwrap(), &allowed));
    }

    #[tokio::test]
    async fn resolver_drops_non_public_addresses_unless_allowed() {
        use reqwest::dns::Resolve as _;
        let guarded = GuardedResolver {
            allowed: Vec::new().into(),
        };
        let err = guarded
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert!(err.downcast_ref::<BlockedTarget>().is_some(), "{err}");

        let open = GuardedResolver {
            allowed: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()].into(),
        };
        let addrs: Vec<SocketAddr> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[tokio::test]
    async fn private_targets_are_refused_without_an_override() {
        let server = MockServer::start().await;
        let port = server.address().port();
        let client = FederationClient::new(settings()).unwrap();
        for name in [
            format!("127.0.0.1:{port}"),
            "10.0.0.1".to_owned(),
            "169.254.169.254".to_owned(),
            "[::1]:8448".to_owned(),
            "[fd00::1]".to_owned(),
        ] {
            let err = client.openid_userinfo(&name, "tok").await.unwrap_err();
            assert!(
                matches!(err, FederationError::Forbidden { .. }),
                "{name}: {err}"
            );
            assert!(matches!(
                client.resolve(&name).await,
                Err(FederationError::Forbidden { .. })
            ));
        }
        // A name is checked when it resolves, before any connection.
        let err = client
            .openid_userinfo(&format!("localhost:{port}"), "tok")
            .await
            .unwrap_err();
        assert!(matches!(err, FederationError::Forbidden { .. }), "{err}");
        assert!(server.received_requests().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn allowed_networks_open_the_guard() {
        // Wiremock speaks plain HTTP and resolution always yields https://, so the request
        // then fails at TLS: what matters is that it got past the guard to the server.
        let server = MockServer::start().await;
        let port = server.address().port();
        let client = FederationClient::new(FederationSettings {
            allowed_networks: vec!["127.0.0.0/8".parse().unwrap()],
            ..settings()
        })
        .unwrap();
        let name = format!("127.0.0.1:{port}");
        assert_eq!(
            client.resolve(&name).await.unwrap().as_str(),
            format!("https://127.0.0.1:{port}/")
        );
        let err = client.openid_userinfo(&name, "tok").await.unwrap_err();
        assert!(matches!(err, FederationError::Unreachable { .. }), "{err}");
        let err = client
            .openid_userinfo(&format!("localhost:{port}"), "tok")
            .await
            .unwrap_err();
        assert!(
            !matches!(err, FederationError::Forbidden { .. }),
            "localhost resolves to 127.0.0.1 (and maybe ::1): {err}"
        );
    }

    #[test]
    fn overrides_must_be_http_urls() {
        let mut settings = settings();
        settings
            .homeservers
            .insert(HS.to_owned(), Url::parse("ftp://10.0.0.5/").unwrap());
        assert!(matches!(
            FederationClient::new(settings),
            Err(FederationError::Config(_))
        ));
    }

    #[test]
    fn a_bad_ca_file_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        for ca_file in [missing, empty] {
            let err = FederationClient::new(FederationSettings {
                ca_file: Some(ca_file),
                ..settings()
            })
            .unwrap_err();
            assert!(matches!(err, FederationError::Config(_)), "{err}");
        }
    }

    // ----- OpenID -----

    #[tokio::test]
    async fn openid_userinfo_through_an_override() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/_matrix/federation/v1/openid/userinfo"))
            .and(query_param("access_token", "s3cr3t+/="))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"sub": "@alice:hs.test"})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let client = client_for(&server, &clock());
        assert_eq!(
            client.openid_userinfo(HS, "s3cr3t+/=").await.unwrap(),
            "@alice:hs.test"
        );
    }

    #[tokio::test]
    async fn openid_errors_are_distinguished() {
        let server = MockServer::start().await;
        let respond = |token: &str, template: ResponseTemplate| {
            Mock::given(path("/_matrix/federation/v1/openid/userinfo"))
                .and(query_param("access_token", token))
                .respond_with(template)
        };
        respond(
            "expired",
            ResponseTemplate::new(401).set_body_json(json!({"errcode": "M_UNKNOWN_TOKEN"})),
        )
        .mount(&server)
        .await;
        respond("forbidden", ResponseTemplate::new(403))
            .mount(&server)
            .await;
        respond("broken", ResponseTemplate::new(500))
            .mount(&server)
            .await;
        respond(
            "nosub",
            ResponseTemplate::new(200).set_body_json(json!({"user": "@a:hs.test"})),
        )
        .mount(&server)
        .await;
        respond(
            "garbage",
            ResponseTemplate::new(200).set_body_string("<html>"),
        )
        .mount(&server)
        .await;
        let client = client_for(&server, &clock());

        for token in ["expired", "forbidden"] {
            let err = client.openid_userinfo(HS, token).await.unwrap_err();
            assert!(matches!(err, FederationError::InvalidToken { .. }), "{err}");
            assert!(err.is_authentication_failure());
        }
        let err = client.openid_userinfo(HS, "broken").await.unwrap_err();
        assert!(
            matches!(err, FederationError::Status { status: 500, .. }),
            "{err}"
        );
        assert!(!err.is_authentication_failure());
        for token in ["nosub", "garbage"] {
            let err = client.openid_userinfo(HS, token).await.unwrap_err();
            assert!(
                matches!(err, FederationError::InvalidResponse { .. }),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn unreachable_homeservers_are_reported_without_the_token() {
        // A port nobody listens on (bound then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut settings = settings();
        settings.homeservers.insert(
            HS.to_owned(),
            Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        );
        let client = FederationClient::new(settings).unwrap();
        let err = client
            .openid_userinfo(HS, "very-secret-token")
            .await
            .unwrap_err();
        assert!(matches!(err, FederationError::Unreachable { .. }), "{err}");
        assert!(!err.is_authentication_failure());
        assert!(!format!("{err} {err:?}").contains("very-secret-token"));
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let server = MockServer::start().await;
        Mock::given(path("/_matrix/federation/v1/openid/userinfo"))
            .respond_with(
                ResponseTemplate::new(302)
                    .insert_header("location", format!("{}/elsewhere", server.uri())),
            )
            .mount(&server)
            .await;
        Mock::given(path("/elsewhere"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"sub": "@x:hs.test"})))
            .expect(0)
            .mount(&server)
            .await;
        let client = client_for(&server, &clock());
        let err = client.openid_userinfo(HS, "tok").await.unwrap_err();
        assert!(
            matches!(err, FederationError::Status { status: 302, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn response_size_is_capped() {
        let server = MockServer::start().await;
        let big = format!(r#"{{"sub": "@a:hs.test", "pad": "{}"}}"#, "x".repeat(4096));
        Mock::given(path("/_matrix/federation/v1/openid/userinfo"))
            .respond_with(ResponseTemplate::new(200).set_body_string(big))
            .mount(&server)
            .await;
        let mut settings = settings();
        settings.max_response_bytes = 1024;
        settings
            .homeservers
            .insert(HS.to_owned(), Url::parse(&server.uri()).unwrap());
        let client = FederationClient::new(settings.clone()).unwrap();
        let err = client.openid_userinfo(HS, "tok").await.unwrap_err();
        assert!(
            matches!(err, FederationError::TooLarge { limit: 1024, .. }),
            "{err}"
        );

        settings.max_response_bytes = 8192;
        let client = FederationClient::new(settings).unwrap();
        assert_eq!(
            client.openid_userinfo(HS, "tok").await.unwrap(),
            "@a:hs.test"
        );
    }

    #[tokio::test]
    async fn slow_homeservers_time_out() {
        let server = MockServer::start().await;
        Mock::given(path("/_matrix/federation/v1/openid/userinfo"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"sub": "@a:hs.test"}))
                    .set_delay(Duration::from_secs(3)),
            )
            .mount(&server)
            .await;
        let mut settings = settings();
        settings.timeout = Duration::from_millis(300);
        settings
            .homeservers
            .insert(HS.to_owned(), Url::parse(&server.uri()).unwrap());
        let client = FederationClient::new(settings).unwrap();
        let started = std::time::Instant::now();
        let err = client.openid_userinfo(HS, "tok").await.unwrap_err();
        assert!(
            matches!(&err, FederationError::Unreachable { reason, .. } if reason == "timed out"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    // ----- keys -----

    #[tokio::test]
    async fn server_keys_are_verified_and_cached() {
        let server = MockServer::start().await;
        let hs_key = key(1);
        mount_keys(&server, key_response(HS, &hs_key, T0 + 10 * 60 * 1000), 1).await;
        let client = client_for(&server, &clock());
        let keys = client.server_keys(HS).await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["ed25519:0"], hs_key.public_key_base64());
        // Second call: from the cache (the mock expects exactly one request).
        assert_eq!(client.server_keys(HS).await.unwrap(), keys);
        server.verify().await;
    }

    #[tokio::test]
    async fn key_cache_follows_valid_until_capped_at_an_hour() {
        let server = MockServer::start().await;
        let hs_key = key(1);
        // valid_until_ts ten minutes ahead: refetched after ten minutes.
        mount_keys(&server, key_response(HS, &hs_key, T0 + 10 * 60 * 1000), 2).await;
        let clock = clock();
        let client = client_for(&server, &clock);
        client.server_keys(HS).await.unwrap();
        clock.advance(10 * 60 * 1000 - 1);
        client.server_keys(HS).await.unwrap();
        clock.advance(1);
        client.server_keys(HS).await.unwrap();
        server.verify().await;

        // valid_until_ts a week ahead: still refetched after an hour.
        let server = MockServer::start().await;
        let week = 7 * 24 * 3600 * 1000;
        mount_keys(&server, key_response(HS, &hs_key, T0 + week), 2).await;
        let clock = self::clock();
        let client = client_for(&server, &clock);
        client.server_keys(HS).await.unwrap();
        clock.advance(KEY_CACHE_MAX_MS - 1);
        client.server_keys(HS).await.unwrap();
        clock.advance(1);
        client.server_keys(HS).await.unwrap();
        server.verify().await;
    }

    #[test]
    fn key_responses_are_checked() {
        let hs_key = key(1);
        let other = key(2);
        let good = key_response(HS, &hs_key, T0 + 1000);
        let set = parse_key_response(HS, &good, T0).unwrap();
        assert_eq!(set.expires_at_ms, T0 + 1000);

        // Another server's name.
        let err = parse_key_response("other.test", &good, T0).unwrap_err();
        assert!(
            matches!(err, FederationError::InvalidResponse { .. }),
            "{err}"
        );

        // Signed by a key that is not among its verify_keys.
        let mut foreign = json!({
            "server_name": HS,
            "verify_keys": {"ed25519:0": {"key": hs_key.public_key_base64()}},
            "valid_until_ts": T0 + 1000,
        });
        sign_json(
            &mut foreign,
            HS,
            &other.clone().with_key_id("ed25519:1").unwrap(),
        )
        .unwrap();
        assert!(matches!(
            parse_key_response(HS, &foreign, T0),
            Err(FederationError::BadSignature { .. })
        ));

        // Tampered after signing.
        let mut tampered = good.clone();
        tampered["valid_until_ts"] = json!(T0 + 999_999_999);
        assert!(matches!(
            parse_key_response(HS, &tampered, T0),
            Err(FederationError::BadSignature { .. })
        ));

        // Signature under the right key id but made by another key.
        let mut forged = json!({
            "server_name": HS,
            "verify_keys": {"ed25519:0": {"key": hs_key.public_key_base64()}},
            "valid_until_ts": T0 + 1000,
        });
        sign_json(&mut forged, HS, &other).unwrap();
        assert!(matches!(
            parse_key_response(HS, &forged, T0),
            Err(FederationError::BadSignature { .. })
        ));

        // Unsigned, or without ed25519 keys, or with a broken key.
        let unsigned = json!({
            "server_name": HS,
            "verify_keys": {"ed25519:0": {"key": hs_key.public_key_base64()}},
            "valid_until_ts": T0 + 1000,
        });
        assert!(parse_key_response(HS, &unsigned, T0).is_err());
        let mut no_keys = json!({"server_name": HS, "verify_keys": {}, "valid_until_ts": T0});
        sign_json(&mut no_keys, HS, &hs_key).unwrap();
        assert!(matches!(
            parse_key_response(HS, &no_keys, T0),
            Err(FederationError::InvalidResponse { .. })
        ));
        let broken = json!({"server_name": HS, "verify_keys": {"ed25519:0": {"key": "AAAA"}}});
        assert!(matches!(
            parse_key_response(HS, &broken, T0),
            Err(FederationError::InvalidResponse { .. })
        ));
    }

    #[test]
    fn old_keys_are_kept_only_until_they_expire() {
        let current = key(1);
        let old_live = key(3);
        let old_dead = key(4);
        let mut response = json!({
            "server_name": HS,
            "verify_keys": {"ed25519:0": {"key": current.public_key_base64()}},
            "old_verify_keys": {
                "ed25519:live": {"key": old_live.public_key_base64(), "expired_ts": T0 + 5000},
                "ed25519:dead": {"key": old_dead.public_key_base64(), "expired_ts": T0 - 1},
                "curve25519:x": {"key": old_live.public_key_base64(), "expired_ts": T0 + 5000},
            },
            "valid_until_ts": T0 + 60_000,
            "unknown_field": true,
        });
        sign_json(&mut response, HS, &current).unwrap();
        let set = parse_key_response(HS, &response, T0).unwrap();
        let mut ids: Vec<&str> = set.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["ed25519:0", "ed25519:live"]);
        // The cache ends when the live old key expires.
        assert_eq!(set.expires_at_ms, T0 + 5000);
    }

    // ----- X-Matrix -----

    #[tokio::test]
    async fn verify_xmatrix_end_to_end() {
        let server = MockServer::start().await;
        let hs_key = key(1);
        mount_keys(&server, key_response(HS, &hs_key, T0 + 3_600_000), 1).await;
        let client = client_for(&server, &clock());
        let uri = "/_matrix/identity/v2/3pid/unbind";
        let content = json!({"mxid": "@alice:hs.test",
            "threepid": {"medium": "email", "address": "alice@example.org"}});
        let header = sign_request(&hs_key, HS, "POST", uri, IS, Some(&content)).unwrap();

        let origin = client
            .verify_xmatrix(&header, "POST", uri, IS, Some(&content))
            .await
            .unwrap();
        assert_eq!(origin, HS);

        let other = json!({"mxid": "@bob:hs.test", "threepid": content["threepid"].clone()});
        let err = client
            .verify_xmatrix(&header, "POST", uri, IS, Some(&other))
            .await
            .unwrap_err();
        assert!(matches!(err, FederationError::BadAuthorization(_)), "{err}");
        assert!(err.is_authentication_failure());

        let err = client
            .verify_xmatrix(&header, "POST", uri, "another-is.test", Some(&content))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                FederationError::BadAuthorization(XMatrixError::WrongDestination { .. })
            ),
            "{err}"
        );
        let err = client
            .verify_xmatrix("Bearer abc", "POST", uri, IS, Some(&content))
            .await
            .unwrap_err();
        assert!(matches!(err, FederationError::BadAuthorization(_)), "{err}");
        // One key fetch for all of the above.
        server.verify().await;
    }

    #[tokio::test]
    async fn verify_xmatrix_accepts_synapse_unbind_signatures() {
        let server = MockServer::start().await;
        let hs_key = key(1);
        mount_keys(&server, key_response(HS, &hs_key, T0 + 3_600_000), 1).await;
        let client = client_for(&server, &clock());
        let uri = "/_matrix/identity/v2/3pid/unbind";
        let content = json!({"mxid": "@alice:hs.test",
            "threepid": {"medium": "email", "address": "alice@example.org"}});
        let mut object =
            crate::matrix::xmatrix::identity_request_json("POST", uri, HS, IS, Some(&content));
        sign_json(&mut object, HS, &hs_key).unwrap();
        let sig = object["signatures"][HS]["ed25519:0"].as_str().unwrap();
        let header =
            format!(r#"X-Matrix origin="{HS}",key="ed25519:0",sig="{sig}",destination="{IS}""#);
        assert_eq!(
            client
                .verify_xmatrix(&header, "POST", uri, IS, Some(&content))
                .await
                .unwrap(),
            HS
        );
    }

    #[tokio::test]
    async fn rotated_keys_are_refetched_at_most_once_a_minute() {
        let server = MockServer::start().await;
        let old = key(1);
        let new = key(2).with_key_id("ed25519:new").unwrap();
        mount_keys(&server, key_response(HS, &old, T0 + 3_600_000), 1).await;
        let clock = clock();
        let client = client_for(&server, &clock);
        assert_eq!(client.server_keys(HS).await.unwrap().len(), 1);

        let uri = "/_matrix/identity/api/v1/replicate_profiles";
        let content = json!({"batch": 1});
        let header = sign_request(&new, HS, "POST", uri, IS, Some(&content)).unwrap();
        // Within the minute: no refetch, unknown key.
        clock.advance(30_000);
        let err = client
            .verify_xmatrix(&header, "POST", uri, IS, Some(&content))
            .await
            .unwrap_err();
        assert!(matches!(err, FederationError::UnknownKey { .. }), "{err}");
        server.verify().await;

        // The server now publishes the new key; after the minute we ask again.
        server.reset().await;
        mount_keys(&server, key_response(HS, &new, T0 + 3_600_000), 1).await;
        clock.advance(30_000);
        assert_eq!(
            client
                .verify_xmatrix(&header, "POST", uri, IS, Some(&content))
                .await
                .unwrap(),
            HS
        );
        server.verify().await;
    }

    // ----- signed JSON -----

    #[tokio::test]
    async fn verify_signed_json_checks_the_servers_signature() {
        let server = MockServer::start().await;
        let hs_key = key(1);
        mount_keys(&server, key_response(HS, &hs_key, T0 + 3_600_000), 1).await;
        let client = client_for(&server, &clock());
        let mut body = json!({"batchnum": 7, "original_server": HS,
            "profiles": {"@a:hs.test": {"display_name": "A", "avatar_url": "mxc://hs.test/x"}}});
        sign_json(&mut body, HS, &hs_key).unwrap();
        client.verify_signed_json(&body, HS).await.unwrap();

        let mut tampered = body.clone();
        tampered["batchnum"] = json!(8);
        let err = client.verify_signed_json(&tampered, HS).await.unwrap_err();
        assert!(matches!(err, FederationError::BadSignature { .. }), "{err}");

        // Signed by hs.test, presented as another server's.
        let err = client
            .verify_signed_json(&body, "other.test")
            .await
            .unwrap_err();
        assert!(matches!(err, FederationError::BadSignature { .. }), "{err}");

        let unsigned = json!({"batchnum": 7});
        assert!(client.verify_signed_json(&unsigned, HS).await.is_err());

        // A signature by an unknown key id is not enough on its own.
        let mut stranger = json!({"batchnum": 9});
        sign_json(
            &mut stranger,
            HS,
            &key(5).with_key_id("ed25519:zz").unwrap(),
        )
        .unwrap();
        let err = client.verify_signed_json(&stranger, HS).await.unwrap_err();
        assert!(matches!(err, FederationError::UnknownKey { .. }), "{err}");
    }

    // ----- onbind and whoami -----

    #[tokio::test]
    async fn onbind_is_posted() {
        let server = MockServer::start().await;
        let body = json!({"address": "alice@example.org", "medium": "email",
            "mxid": "@alice:hs.test", "invites": []});
        Mock::given(method("POST"))
            .and(path("/_matrix/federation/v1/3pid/onbind"))
            .and(body_json(body.clone()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
            .expect(1)
            .mount(&server)
            .await;
        let client = client_for(&server, &clock());
        client.post_onbind(HS, &body).await.unwrap();

        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(502))
            .mount(&server)
            .await;
        let err = client.post_onbind(HS, &body).await.unwrap_err();
        assert!(
            matches!(err, FederationError::Status { status: 502, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn whoami_uses_the_bearer_token_on_the_client_url() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/prefix/_matrix/client/v3/account/whoami"))
            .and(bearer_token("syt_good"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"user_id": "@alice:hs.test", "device_id": "D"})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/prefix/_matrix/client/v3/account/whoami"))
            .and(bearer_token("syt_bad"))
            .respond_with(
                ResponseTemplate::new(401).set_body_json(json!({"errcode": "M_UNKNOWN_TOKEN"})),
            )
            .mount(&server)
            .await;
        // The client URL is configuration, trusted like an override (127.0.0.1 here).
        let client = FederationClient::new(settings()).unwrap();
        let client_url = Url::parse(&format!("{}/prefix", server.uri())).unwrap();
        assert_eq!(
            client.whoami(&client_url, "syt_good").await.unwrap(),
            "@alice:hs.test"
        );
        let err = client.whoami(&client_url, "syt_bad").await.unwrap_err();
        assert!(matches!(err, FederationError::InvalidToken { .. }), "{err}");
        let ftp = Url::parse("ftp://hs.test/").unwrap();
        assert!(matches!(
            client.whoami(&ftp, "syt_good").await,
            Err(FederationError::InvalidUrl(_))
        ));
    }

    // ----- TLS -----

    /// A one-request-per-connection HTTPS server with a throwaway CA (rcgen); answers every
    /// request with `body`. Returns its port and the CA certificate (PEM).
    fn start_tls_server(body: String) -> (u16, String) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        use std::io::{BufRead as _, BufReader, Write as _};

        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "annuaire test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut reader = BufReader::new(&mut tls);
                let mut complete = false;
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" => {
                            complete = true;
                            break;
                        }
                        Ok(_) => {}
                    }
                }
                drop(reader);
                if !complete {
                    continue; // e.g. the client refused our certificate
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        (port, ca_cert.pem())
    }

    #[tokio::test]
    async fn https_with_a_private_ca_and_an_allowed_network() {
        let (port, ca_pem) = start_tls_server(json!({"sub": "@alice:127.0.0.1"}).to_string());
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let name = format!("127.0.0.1:{port}");

        // Trusted CA and allowed network: a real HTTPS round trip through resolution.
        let client = FederationClient::new(FederationSettings {
            ca_file: Some(ca_file.clone()),
            allowed_networks: vec!["127.0.0.1/32".parse().unwrap()],
            ..settings()
        })
        .unwrap();
        assert_eq!(
            client.openid_userinfo(&name, "tok").await.unwrap(),
            "@alice:127.0.0.1"
        );

        // Without the CA the certificate is refused.
        let client = FederationClient::new(FederationSettings {
            allowed_networks: vec!["127.0.0.1/32".parse().unwrap()],
            ..settings()
        })
        .unwrap();
        let err = client.openid_userinfo(&name, "tok").await.unwrap_err();
        assert!(
            matches!(&err, FederationError::Unreachable { reason, .. } if reason.contains("certificate")),
            "{err}"
        );

        // Without the allowed network the guard refuses before connecting.
        let client = FederationClient::new(FederationSettings {
            ca_file: Some(ca_file),
            ..settings()
        })
        .unwrap();
        let err = client.openid_userinfo(&name, "tok").await.unwrap_err();
        assert!(matches!(err, FederationError::Forbidden { .. }), "{err}");
    }
}
