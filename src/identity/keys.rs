//! The long-term signing keys: the current key, created once and kept in the database so that
//! every instance signs with the same key (or read from `server.signing_key_file`), and the keys
//! it replaced.
//!
//! `annuaire keys rotate-signing` makes a new `ed25519:N` key the current one; the previous one
//! is kept as a retired key (its public half only: the private half is forgotten), still
//! published at `/v2/pubkey/ed25519:K` and valid for `/v2/pubkey/isvalid`, so that associations
//! and invitations it signed stay verifiable. Instances pick the new key up within
//! [`KEY_REFRESH_INTERVAL`] (or at once on SIGHUP); until then they go on signing with the
//! previous key, which stays valid. A key id or public key an instance does not know yet is
//! looked up in the database, so every instance publishes a new key as soon as it exists.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::{CryptoRng, RngCore};
use serde::Serialize;
use serde_json::json;

use super::IdentityStartError;
use crate::audit::{self, Actor};
use crate::matrix::keys::canonical_public_key;
use crate::matrix::signing::SigningKey;
use crate::store::keys::{self as key_store, RetiredKeyRow};
use crate::store::{DbConn, StoreError, state};

/// The `instance_state` key holding the current signing key, in Sydent's format.
pub const SIGNING_KEY_STATE: &str = "signing_key";
/// How often a running instance rereads the keys (a rotation reaches it within this).
pub const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// The keys this identity server publishes.
#[derive(Debug, Clone)]
pub struct KeyRing {
    /// The key that signs.
    pub current: Arc<SigningKey>,
    /// Keys that signed before, newest first.
    pub retired: Vec<RetiredKeyRow>,
}

impl KeyRing {
    /// The public key published under `key_id`, if it is known here.
    pub fn public_key(&self, key_id: &str) -> Option<String> {
        if self.current.key_id() == key_id {
            return Some(self.current.public_key_base64());
        }
        self.retired
            .iter()
            .find(|k| k.key_id == key_id)
            .map(|k| k.public_key.clone())
    }

    /// Whether `public_key` (canonical form) is the current or a retired key.
    pub fn contains_public_key(&self, canonical: &str) -> bool {
        self.current.public_key_base64() == canonical
            || self.retired.iter().any(|k| k.public_key == canonical)
    }
}

/// Reads the signing key: from `file` when given, else from the database, creating it there
/// the first time (every instance racing at start gets the same key).
pub fn load_signing_key(
    conn: &mut DbConn,
    file: Option<&Path>,
    rng: &mut (impl RngCore + CryptoRng),
    now_ms: i64,
) -> Result<SigningKey, IdentityStartError> {
    if let Some(path) = file {
        return read_key_file(path);
    }
    // Read first: instances reread the key every few seconds, and only the first ever writes.
    if let Some(stored) = state::get(conn, SIGNING_KEY_STATE)? {
        return parse_stored(&stored).map_err(IdentityStartError::Store);
    }
    let candidate = SigningKey::generate(rng).to_sydent_string();
    let stored = state::get_or_insert(conn, SIGNING_KEY_STATE, &candidate, now_ms)?;
    parse_stored(&stored).map_err(IdentityStartError::Store)
}

fn read_key_file(path: &Path) -> Result<SigningKey, IdentityStartError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        IdentityStartError::Config(format!(
            "server.signing_key_file: cannot read {}: {e}",
            path.display()
        ))
    })?;
    SigningKey::parse_sydent(&text).map_err(|e| {
        IdentityStartError::Config(format!("server.signing_key_file ({}): {e}", path.display()))
    })
}

fn parse_stored(text: &str) -> Result<SigningKey, StoreError> {
    SigningKey::parse_sydent(text)
        .map_err(|e| StoreError::Corrupt(format!("the stored signing key is unusable: {e}")))
}

/// The current key (file or database, created the first time) and the retired ones.
pub fn load_key_ring(
    conn: &mut DbConn,
    file: Option<&Path>,
    rng: &mut (impl RngCore + CryptoRng),
    now_ms: i64,
) -> Result<KeyRing, IdentityStartError> {
    let current = load_signing_key(conn, file, rng, now_ms)?;
    let retired = key_store::retired_keys(conn)?
        .into_iter()
        .filter(|k| k.key_id != current.key_id())
        .collect();
    Ok(KeyRing {
        current: Arc::new(current),
        retired,
    })
}

/// What `annuaire keys rotate-signing` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SigningRotation {
    /// The key that signs from now on.
    pub key_id: String,
    /// Its public key.
    pub public_key: String,
    /// The key it replaced, still published.
    pub previous_key_id: String,
    /// Its public key.
    pub previous_public_key: String,
}

/// Why a rotation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The key is in `server.signing_key_file`: the operator rotates it there.
    #[error(
        "server.signing_key_file is set: the signing key is that file's. Write a new key with \
         `annuaire keys generate --version N -o FILE` on every instance instead (the old key is \
         then no longer published)"
    )]
    KeyInFile,
    /// Another rotation retired the same key at the same time.
    #[error("another rotation ran at the same time; run `annuaire keys list` and try again")]
    Concurrent,
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Makes a new `ed25519:N` key the current one (N = one more than every version used so far)
/// and keeps the previous one published; audited. One transaction; on PostgreSQL the current
/// key's row is locked, so two rotations at once run one after the other.
pub fn rotate_signing_key(
    conn: &mut DbConn,
    key_file: Option<&Path>,
    actor: &Actor,
    rng: &mut (impl RngCore + CryptoRng),
    now_ms: i64,
) -> Result<SigningRotation, RotationError> {
    if key_file.is_some() {
        return Err(RotationError::KeyInFile);
    }
    // Created first if this database never had one (a rotation on a fresh database).
    load_signing_key(conn, None, rng, now_ms).map_err(|e| match e {
        IdentityStartError::Store(e) => RotationError::Store(e),
        IdentityStartError::Config(m) => RotationError::Store(StoreError::Corrupt(m)),
    })?;
    let fresh = SigningKey::generate(rng);
    let result = crate::store::transaction(conn, |conn| {
        let stored = key_store::state_for_update(conn, SIGNING_KEY_STATE)?
            .ok_or_else(|| StoreError::Corrupt("the signing key vanished".into()))?;
        let previous = parse_stored(&stored)?;
        let retired = key_store::retired_keys(conn)?;
        let next = retired
            .iter()
            .map(|k| k.key_id.as_str())
            .chain(std::iter::once(previous.key_id()))
            .filter_map(key_version)
            .max()
            .map_or(0, |v| v.saturating_add(1));
        let key = fresh
            .clone()
            .with_key_id(&format!("ed25519:{next}"))
            .map_err(|e| StoreError::Corrupt(format!("new key id: {e}")))?;
        key_store::insert_retired_key(
            conn,
            &RetiredKeyRow {
                key_id: previous.key_id().to_owned(),
                public_key: previous.public_key_base64(),
                retired_at: now_ms,
            },
        )?;
        state::set(conn, SIGNING_KEY_STATE, &key.to_sydent_string(), now_ms)?;
        let rotation = SigningRotation {
            key_id: key.key_id().to_owned(),
            public_key: key.public_key_base64(),
            previous_key_id: previous.key_id().to_owned(),
            previous_public_key: previous.public_key_base64(),
        };
        audit::record(
            conn,
            actor,
            audit::action::SIGNING_KEY_ROTATE,
            "signing_key",
            Some(
                &json!({"key_id": rotation.previous_key_id, "public_key": rotation.previous_public_key}),
            ),
            Some(&json!({"key_id": rotation.key_id, "public_key": rotation.public_key})),
            now_ms,
        )?;
        Ok::<_, StoreError>(rotation)
    });
    match result {
        Ok(rotation) => Ok(rotation),
        Err(e) if e.is_unique_violation() => Err(RotationError::Concurrent),
        Err(e) => Err(e.into()),
    }
}

/// The number in `ed25519:N`, when it is one.
fn key_version(key_id: &str) -> Option<u64> {
    key_id.strip_prefix("ed25519:")?.parse().ok()
}

impl super::IdentityService {
    /// The key ring as this instance knows it.
    pub fn key_ring(&self) -> Arc<KeyRing> {
        self.keys.load_full()
    }

    /// Rereads the keys from the database (or the key file); logs a change of signing key.
    pub async fn refresh_keys(&self) -> Result<(), StoreError> {
        let file = self.config.server.signing_key_file.clone();
        let now_ms = self.clock.now_ms();
        let ring = self
            .db
            .run(move |conn| {
                load_key_ring(conn, file.as_deref(), &mut rand::rngs::OsRng, now_ms).map_err(|e| {
                    match e {
                        IdentityStartError::Store(e) => e,
                        IdentityStartError::Config(m) => StoreError::Corrupt(m),
                    }
                })
            })
            .await?;
        let before = self.keys.load();
        if before.current.key_id() != ring.current.key_id()
            || before.current.public_key_base64() != ring.current.public_key_base64()
        {
            tracing::info!(
                key_id = ring.current.key_id(),
                retired = ring.retired.len(),
                "signing key changed: signing with the new key"
            );
        }
        self.keys.store(Arc::new(ring));
        Ok(())
    }

    /// `GET /v2/pubkey/{keyId}`: the public key published under `key_id`, current or retired.
    pub async fn public_key(&self, key_id: &str) -> Result<String, super::IdentityError> {
        if let Some(key) = self.keys.load().public_key(key_id) {
            return Ok(key);
        }
        if !key_id.starts_with("ed25519:") {
            return Err(super::IdentityError::KeyNotFound);
        }
        // Rotated by another process since this instance last looked.
        let owned = key_id.to_owned();
        let stored = self
            .db
            .run(move |conn| {
                let retired = key_store::retired_key(conn, &owned)?.map(|k| k.public_key);
                let current = match state::get(conn, SIGNING_KEY_STATE)? {
                    Some(text) => parse_stored(&text)
                        .ok()
                        .filter(|k| k.key_id() == owned)
                        .map(|k| k.public_key_base64()),
                    None => None,
                };
                Ok(retired.or(current))
            })
            .await?;
        stored.ok_or(super::IdentityError::KeyNotFound)
    }

    /// `GET /v2/pubkey/isvalid`: whether `public_key` (any base64 form) is a long-term key of
    /// this server, current or retired.
    pub async fn is_long_term_key(&self, public_key: &str) -> Result<bool, super::IdentityError> {
        let Some(canonical) = canonical_public_key(public_key) else {
            return Ok(false);
        };
        if self.keys.load().contains_public_key(&canonical) {
            return Ok(true);
        }
        let file_key = self.config.server.signing_key_file.is_some();
        Ok(self
            .db
            .run(move |conn| {
                if key_store::is_retired_public_key(conn, &canonical)? {
                    return Ok(true);
                }
                if file_key {
                    return Ok(false);
                }
                Ok(match state::get(conn, SIGNING_KEY_STATE)? {
                    Some(text) => {
                        parse_stored(&text).is_ok_and(|k| k.public_key_base64() == canonical)
                    }
                    None => false,
                })
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_numeric_key_ids() {
        assert_eq!(key_version("ed25519:0"), Some(0));
        assert_eq!(key_version("ed25519:12"), Some(12));
        assert_eq!(key_version("ed25519:a_bc"), None);
        assert_eq!(key_version("curve:1"), None);
    }
}
