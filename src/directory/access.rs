//! Who is calling the directory's endpoints.
//!
//! - Client API: the `Host` header names the homeserver the request came through
//!   (`directory.client_hosts`); the caller's own access token is checked with that
//!   homeserver's whoami, and nowhere else. Answers are cached for `directory.whoami_cache_ttl`
//!   under a SHA-256 of the server and token (never the token itself); failures are not cached.
//! - Tchap-compatible identity API: a homeserver of `directory.allowed_homeservers` signs the
//!   request, either with an `Authorization: X-Matrix` header or by signing the JSON body.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::entries::split_user_id;
use super::error::DirectoryError;
use super::service::{DirectoryService, Viewer};
use crate::federation::FederationError;
use crate::matrix::xmatrix::XMatrixAuth;

fn cache_key(server_name: &str, token: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(server_name.as_bytes());
    hasher.update([0]);
    hasher.update(token.as_bytes());
    hasher.finalize().into()
}

impl DirectoryService {
    /// The user calling the client API: `host` is the request's `Host` header (a port is ignored
    /// when only the bare host is configured), `token` its access token.
    pub async fn authenticate_client(
        &self,
        host: Option<&str>,
        token: Option<&str>,
    ) -> Result<Viewer, DirectoryError> {
        let host = host.unwrap_or_default().trim();
        let directory = &self.config.directory;
        let target = directory
            .client_host(host)
            .or_else(|| {
                host.rsplit_once(':')
                    .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
                    .and_then(|(bare, _)| directory.client_host(bare))
            })
            .ok_or_else(|| DirectoryError::UnknownHost(host.to_owned()))?;
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(DirectoryError::MissingToken)?;

        let key = cache_key(&target.server_name, token);
        let cached = self.whoami.get(&key);
        let user_id = match cached {
            Some(user_id) => user_id,
            None => {
                let url = reqwest::Url::parse(&target.client_url)
                    .map_err(|e| DirectoryError::HomeserverUnavailable(e.to_string()))?;
                let user_id = self
                    .federation
                    .whoami(&url, token)
                    .await
                    .map_err(|e| match e {
                        FederationError::InvalidToken { .. } => DirectoryError::UnknownToken,
                        other => {
                            tracing::warn!(server = %target.server_name, error = %other, "whoami failed");
                            DirectoryError::HomeserverUnavailable(format!(
                                "{} could not check the access token",
                                target.server_name
                            ))
                        }
                    })?;
                let ttl = self.config.directory.whoami_cache_ttl.as_millis_i64();
                self.whoami.insert_for(key, user_id.clone(), ttl);
                user_id
            }
        };
        let on_server =
            split_user_id(&user_id).is_ok_and(|(_, server)| server == target.server_name);
        if !on_server {
            return Err(DirectoryError::WrongServer {
                server_name: target.server_name.clone(),
            });
        }
        Ok(Viewer::User { user_id })
    }

    /// The allowed homeserver that signed `request`. With `expected_origin`, the signer must be
    /// that server. The origin is checked against `directory.allowed_homeservers` before any key
    /// is fetched, so strangers cannot make us contact arbitrary servers.
    pub async fn authenticate_homeserver(
        &self,
        request: SignedRequest<'_>,
        expected_origin: Option<&str>,
    ) -> Result<String, DirectoryError> {
        let allowed = &self.config.directory.allowed_homeservers;
        let check_origin = |origin: &str| -> Result<(), DirectoryError> {
            if let Some(expected) = expected_origin
                && expected != origin
            {
                return Err(DirectoryError::BadSignature(format!(
                    "signed by {origin}, not by {expected}"
                )));
            }
            if !allowed.iter().any(|a| a == origin) {
                return Err(DirectoryError::HomeserverNotAllowed(origin.to_owned()));
            }
            Ok(())
        };

        if let Some(header) = request
            .authorization
            .filter(|h| h.trim_start().to_ascii_lowercase().starts_with("x-matrix"))
        {
            let auth = XMatrixAuth::parse(header)
                .map_err(|e| DirectoryError::BadSignature(e.to_string()))?;
            check_origin(&auth.origin)?;
            let origin = self
                .federation
                .verify_xmatrix(
                    header,
                    request.method,
                    request.uri,
                    &self.config.server.name,
                    Some(request.body),
                )
                .await
                .map_err(federation_failure)?;
            return Ok(origin);
        }

        let signers: Vec<&str> = request
            .body
            .get("signatures")
            .and_then(Value::as_object)
            .map(|s| s.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if signers.is_empty() {
            return Err(DirectoryError::Unauthenticated);
        }
        let origin = match expected_origin {
            Some(expected) => signers
                .iter()
                .find(|s| **s == expected)
                .copied()
                .ok_or_else(|| {
                    DirectoryError::BadSignature(format!("the body is not signed by {expected}"))
                })?,
            None => signers
                .iter()
                .find(|s| allowed.iter().any(|a| a == *s))
                .copied()
                .ok_or_else(|| DirectoryError::HomeserverNotAllowed(signers.join(", ")))?,
        };
        check_origin(origin)?;
        self.federation
            .verify_signed_json(request.body, origin)
            .await
            .map_err(federation_failure)?;
        Ok(origin.to_owned())
    }
}

/// What a homeserver-signed request carries for authentication.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// The HTTP method.
    pub method: &'a str,
    /// The request target as received (path and query).
    pub uri: &'a str,
    /// The JSON body.
    pub body: &'a Value,
}

pub(super) fn federation_failure(e: FederationError) -> DirectoryError {
    if e.is_authentication_failure() {
        DirectoryError::BadSignature(e.to_string())
    } else {
        tracing::warn!(error = %e, "could not verify a homeserver's signature");
        DirectoryError::HomeserverUnavailable(e.to_string())
    }
}
