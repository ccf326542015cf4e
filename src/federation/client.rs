//! The calls annuaire makes to homeservers, and the verification of what they sign.

use std::collections::HashMap;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::resolve::endpoint;
use super::transport::{json_string_field, status_error};
use super::{FederationClient, FederationError, Target};
use crate::matrix::signing::verify_json;
use crate::matrix::xmatrix::{XMatrixAuth, XMatrixError, verify_request};

impl FederationClient {
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
        async {
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
        .await
        .inspect_err(|e| e.count("openid_userinfo"))
    }

    /// The server's current signing keys (key id → unpadded base64), from
    /// `GET /_matrix/key/v2/server`, self-signature verified. Includes `old_verify_keys`
    /// not yet expired. Cached until `valid_until_ts`, at most an hour.
    pub async fn server_keys(
        &self,
        server_name: &str,
    ) -> Result<HashMap<String, String>, FederationError> {
        if let Some(cached) = self.inner.keys.get(&server_name.to_owned()) {
            return Ok(cached.keys);
        }
        Ok(self.fetch_keys(server_name).await?.keys)
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
        async {
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
        .await
        .inspect_err(|e| e.count("onbind"))
    }

    /// `GET {client_url}/_matrix/client/v3/account/whoami` with the caller's own token:
    /// the token owner's user id. `client_url` comes from configuration and is trusted.
    pub async fn whoami(
        &self,
        client_url: &Url,
        access_token: &str,
    ) -> Result<String, FederationError> {
        async {
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
        .await
        .inspect_err(|e| e.count("whoami"))
    }
}
