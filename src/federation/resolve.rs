//! Server-name resolution: overrides, IP literals and explicit ports, `.well-known`
//! delegation (cached), and the URLs built from them.

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::transport::status_error;
use super::{
    FederationClient, FederationError, Target, WELL_KNOWN_FAILURE_TTL_MS, WELL_KNOWN_TTL_MS,
};
use crate::matrix::server_name::{DEFAULT_FEDERATION_PORT, ServerName};

impl FederationClient {
    pub(super) async fn resolve_target(
        &self,
        server_name: &str,
    ) -> Result<Target, FederationError> {
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
    pub(super) async fn delegated_base(&self, hostname: &str) -> Result<Url, FederationError> {
        if let Some(base) = self.inner.delegations.get(&hostname.to_owned()) {
            return Ok(base);
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
        self.inner
            .delegations
            .insert_for(hostname.to_owned(), base.clone(), ttl);
        Ok(base)
    }

    pub(super) async fn fetch_well_known(
        &self,
        hostname: &str,
    ) -> Result<ServerName, FederationError> {
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
}

/// Parses a server name met in a request or a response.
pub(super) fn parse_server_name(text: &str) -> Result<ServerName, FederationError> {
    ServerName::parse(text).map_err(|_| FederationError::InvalidServerName(text.to_owned()))
}

/// The base URL when no `.well-known` lookup is needed (IP literal or explicit port).
pub(super) fn direct_base(name: &ServerName) -> Result<Option<Url>, FederationError> {
    match (name.is_ip_literal(), name.port()) {
        (false, None) => Ok(None),
        (_, port) => {
            https_base(&name.host_text(), port.unwrap_or(DEFAULT_FEDERATION_PORT)).map(Some)
        }
    }
}

/// The base URL of a delegated server name (SRV not consulted: port or 8448).
pub(super) fn base_url(name: &ServerName) -> Result<Url, FederationError> {
    https_base(
        &name.host_text(),
        name.port().unwrap_or(DEFAULT_FEDERATION_PORT),
    )
}

/// The `m.server` of a `.well-known/matrix/server` body, if valid.
pub(super) fn parse_well_known(body: &[u8]) -> Option<ServerName> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let delegated = value.get("m.server")?.as_str()?;
    ServerName::parse(delegated).ok()
}

/// `base` + `path`, keeping any path prefix of `base` (`https://proxy/hs1/` + `/_matrix/…`).
pub(super) fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url.set_query(None);
    url.set_fragment(None);
    url
}

pub(super) fn https_base(host: &str, port: u16) -> Result<Url, FederationError> {
    Url::parse(&format!("https://{host}:{port}/"))
        .map_err(|e| FederationError::InvalidServerName(format!("{host}: {e}")))
}
