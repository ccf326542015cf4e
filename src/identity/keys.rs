//! The long-term signing key: created once and kept in the database so that every instance
//! signs with the same key, or read from `server.signing_key_file` (Sydent's format).

use std::path::Path;

use rand::{CryptoRng, RngCore};

use super::IdentityStartError;
use crate::matrix::signing::SigningKey;
use crate::store::{DbConn, state};

/// The `instance_state` key holding the signing key, in Sydent's format.
pub const SIGNING_KEY_STATE: &str = "signing_key";

/// Reads the signing key: from `file` when given, else from the database, creating it there
/// the first time (every instance racing at start gets the same key).
pub fn load_signing_key(
    conn: &mut DbConn,
    file: Option<&Path>,
    rng: &mut (impl RngCore + CryptoRng),
    now_ms: i64,
) -> Result<SigningKey, IdentityStartError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            IdentityStartError::Config(format!(
                "server.signing_key_file: cannot read {}: {e}",
                path.display()
            ))
        })?;
        return SigningKey::parse_sydent(&text).map_err(|e| {
            IdentityStartError::Config(format!("server.signing_key_file ({}): {e}", path.display()))
        });
    }
    let candidate = SigningKey::generate(rng).to_sydent_string();
    let stored = state::get_or_insert(conn, SIGNING_KEY_STATE, &candidate, now_ms)?;
    SigningKey::parse_sydent(&stored).map_err(|e| {
        IdentityStartError::Store(crate::store::StoreError::Corrupt(format!(
            "the stored signing key is unusable: {e}"
        )))
    })
}

impl super::IdentityService {
    /// `GET /v2/pubkey/{keyId}`: the long-term public key published under `key_id`.
    pub fn public_key(&self, key_id: &str) -> Result<String, super::IdentityError> {
        crate::matrix::keys::public_key_for(self.signing_key(), key_id)
            .ok_or(super::IdentityError::KeyNotFound)
    }

    /// `GET /v2/pubkey/isvalid`: whether `public_key` (any base64 form) is the long-term key.
    pub fn is_long_term_key(&self, public_key: &str) -> bool {
        crate::matrix::keys::is_long_term_key(self.signing_key(), public_key)
    }
}
