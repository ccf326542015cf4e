//! Homeserver signing keys: fetched from `/_matrix/key/v2/server`, self-signature checked,
//! cached until `valid_until_ts` (at most an hour), refetched when an unknown key id shows up.

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::resolve::endpoint;
use super::transport::status_error;
use super::{FederationClient, FederationError, KEY_CACHE_MAX_MS, KEY_REFETCH_INTERVAL_MS};
use crate::matrix::signing::{is_valid_public_key, verify_json};

/// A server's verified keys, and when they were fetched.
#[derive(Clone)]
pub(super) struct CachedKeys {
    pub(super) keys: HashMap<String, String>,
    pub(super) fetched_at_ms: i64,
}

impl FederationClient {
    pub(super) async fn fetch_keys(
        &self,
        server_name: &str,
    ) -> Result<CachedKeys, FederationError> {
        async {
            let now = self.inner.clock.now_ms();
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
                fetched_at_ms: now,
            };
            tracing::debug!(
                server = server_name,
                keys = cached.keys.len(),
                "fetched homeserver keys"
            );
            self.inner.keys.insert_until(
                server_name.to_owned(),
                cached.clone(),
                key_set.expires_at_ms,
            );
            Ok(cached)
        }
        .await
        .inspect_err(|e| e.count("server_keys"))
    }

    /// The public key `key_id` of `server_name`, refetching (at most once a minute) when a
    /// cached key set lacks it, since servers rotate keys.
    pub(super) async fn key_for(
        &self,
        server_name: &str,
        key_id: &str,
    ) -> Result<String, FederationError> {
        let now = self.inner.clock.now_ms();
        let unknown = || FederationError::UnknownKey {
            server: server_name.to_owned(),
            key_id: key_id.to_owned(),
        };
        if let Some(cached) = self.inner.keys.get(&server_name.to_owned()) {
            if let Some(key) = cached.keys.get(key_id) {
                return Ok(key.clone());
            }
            if now - cached.fetched_at_ms < KEY_REFETCH_INTERVAL_MS {
                return Err(unknown());
            }
        }
        self.fetch_keys(server_name)
            .await?
            .keys
            .get(key_id)
            .cloned()
            .ok_or_else(unknown)
    }
}

/// Keys from a `/_matrix/key/v2/server` response, and until when they may be cached.
#[derive(Debug)]
pub(super) struct KeySet {
    pub(super) keys: HashMap<String, String>,
    pub(super) expires_at_ms: i64,
}

/// Checks a key response: it is `server_name`'s, signed by its own `verify_keys` (every
/// such signature must verify; at least one must exist). Keeps `verify_keys` and the
/// `old_verify_keys` not yet expired.
pub(super) fn parse_key_response(
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
