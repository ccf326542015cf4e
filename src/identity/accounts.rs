//! Identity-service accounts: an OpenID token from the user's homeserver is exchanged for an
//! access token of ours (stored as a SHA-256 hash, with an expiry), and every authenticated
//! request checks the token, then the terms.
//!
//! Only homeservers of the deployment may register accounts (`identity.allowed_homeservers`,
//! by default every homeserver the live allowlists name): a stranger on the federation cannot
//! get a token to enumerate agents through lookups or make us mail people through invites.

use std::collections::{BTreeSet, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{IdentityError, IdentityService};
use crate::matrix::server_name::user_id_server;
use crate::matrix::server_name::validate_server_name;
use crate::store::identity as store;

/// Length of an access token: 48 alphanumeric characters carry about 285 bits.
pub const TOKEN_LEN: usize = 48;
/// Tokens longer than this are not ours: refused before hashing.
const MAX_TOKEN_LEN: usize = 512;

/// The body of `POST /v2/account/register`: what the homeserver's `/openid/request_token`
/// returned to the client.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenIdToken {
    /// The OpenID access token (checked with the homeserver, never stored or logged).
    pub access_token: String,
    /// `Bearer`.
    #[serde(default)]
    pub token_type: Option<String>,
    /// The homeserver that issued it.
    pub matrix_server_name: String,
    /// Seconds the OpenID token stays valid (not used: our token has its own lifetime).
    #[serde(default)]
    pub expires_in: Option<serde_json::Value>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The Matrix user ID the token was issued to.
    pub user_id: String,
    /// The terms fingerprint this account accepted in full, if any.
    pub consent_version: Option<String>,
    /// The hash of the token used (for logout).
    token_hash: String,
}

/// A fresh access token (alphanumeric, so it is safe in a query string).
pub fn mint_token(rng: &mut impl RngCore) -> String {
    crate::secret::random_token(rng, TOKEN_LEN)
}

/// How a token is stored: SHA-256, URL-safe unpadded base64. (Tokens are random, so a fast
/// hash is enough; what matters is that a database leak gives no usable token.)
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

impl IdentityService {
    /// The homeservers whose users may register now: the configured list, or every homeserver
    /// and shadow homeserver of the live rules plus `policy.external_homeserver`.
    pub fn allowed_homeservers(&self) -> BTreeSet<String> {
        if let Some(list) = &self.config.identity.allowed_homeservers {
            return list.iter().cloned().collect();
        }
        let mut set = self.allowlist.index().homeservers();
        if let Some(external) = &self.config.policy.external_homeserver {
            set.insert(external.clone());
        }
        set
    }

    /// `POST /v2/account/register`: checks the OpenID token with the homeserver that issued it
    /// and returns a new access token for its user.
    pub async fn register(
        &self,
        openid: &OpenIdToken,
        rng: &mut impl RngCore,
        now_ms: i64,
    ) -> Result<String, IdentityError> {
        let server = openid.matrix_server_name.as_str();
        validate_server_name(server).map_err(|e| {
            IdentityError::InvalidParam(format!("matrix_server_name is not a server name: {e}"))
        })?;
        if openid.access_token.is_empty() {
            return Err(IdentityError::InvalidParam(
                "access_token must not be empty".into(),
            ));
        }
        if !self.allowed_homeservers().contains(server) {
            tracing::info!(
                homeserver = server,
                "account registration refused: homeserver not allowed"
            );
            return Err(IdentityError::Forbidden(format!(
                "Users of {server} may not use this identity server"
            )));
        }
        let token = mint_token(rng);
        let user_id = self
            .federation
            .openid_userinfo(server, &openid.access_token)
            .await
            .map_err(|e| IdentityError::from_federation(server, e))?;
        // `sub` must belong to the server that vouched for it (port included), or any allowed
        // homeserver could mint tokens for users of another.
        if user_id_server(&user_id) != Some(server) {
            tracing::warn!(
                homeserver = server,
                "OpenID userinfo named a user of another server"
            );
            return Err(IdentityError::Unauthorized(format!(
                "The homeserver {server} vouched for a user that is not its own"
            )));
        }
        let hash = token_hash(&token);
        let expires_at = now_ms.saturating_add(self.config.identity.token_lifetime.as_millis_i64());
        let owner = user_id.clone();
        self.db
            .run(move |conn| store::insert_token(conn, &owner, &hash, now_ms, expires_at))
            .await?;
        tracing::info!(homeserver = server, "identity account token issued");
        Ok(token)
    }

    /// The account owning `token`, if it is known and unexpired (401 `M_UNAUTHORIZED` otherwise).
    /// Answered from memory when this instance knows the token (see `identity::live`).
    pub async fn authenticate(&self, token: &str, now_ms: i64) -> Result<Account, IdentityError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(IdentityError::Unauthorized(
                "Unrecognised access token".into(),
            ));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let hash = URL_SAFE_NO_PAD.encode(digest);
        if let Some((user_id, consent)) = self.live.account(&digest, now_ms) {
            return Ok(Account {
                user_id: user_id.to_string(),
                consent_version: consent.map(|c| c.to_string()),
                token_hash: hash,
            });
        }
        let generation = self.live.generation();
        let lookup = hash.clone();
        let row = self
            .db
            .run(move |conn| store::account_by_token(conn, &lookup, now_ms))
            .await?;
        match row {
            Some((row, expires_at)) => {
                self.live.remember_account(
                    digest,
                    &row.user_id,
                    row.consent_version.as_deref(),
                    expires_at,
                    generation,
                );
                Ok(Account {
                    user_id: row.user_id,
                    consent_version: row.consent_version,
                    token_hash: hash,
                })
            }
            None => Err(IdentityError::Unauthorized(
                "Unrecognised or expired access token".into(),
            )),
        }
    }

    /// Checks that the account accepted every current policy (403 `M_TERMS_NOT_SIGNED`).
    ///
    /// The account's consent marker is the fast path; when it is stale (the terms changed), the
    /// accepted URLs decide, so a user whose client already accepted the new URLs is not stuck.
    pub async fn check_terms(&self, account: &Account) -> Result<(), IdentityError> {
        let terms = self.terms();
        if terms.is_empty() || account.consent_version.as_deref() == Some(terms.fingerprint()) {
            return Ok(());
        }
        let user_id = account.user_id.clone();
        let accepted = self
            .db
            .run(move |conn| store::accepted_terms(conn, &user_id))
            .await?;
        let accepted: HashSet<String> = accepted.into_iter().collect();
        if !terms.satisfied_by(&accepted) {
            return Err(IdentityError::TermsNotSigned);
        }
        let user_id = account.user_id.clone();
        let version = terms.fingerprint().to_string();
        let now_ms = self.clock.now_ms();
        self.db
            .run(move |conn| store::set_consent(conn, &user_id, &version, now_ms))
            .await?;
        self.live.forget_consent(&account.user_id);
        Ok(())
    }

    /// `POST /v2/account/logout`: the token used stops working.
    pub async fn logout(&self, account: &Account) -> Result<(), IdentityError> {
        let hash = account.token_hash.clone();
        let now_ms = self.clock.now_ms();
        let existed = self
            .db
            .run(move |conn| store::delete_token(conn, &hash, now_ms))
            .await?;
        let mut digest = [0u8; 32];
        if let Ok(32) = URL_SAFE_NO_PAD.decode_slice(account.token_hash.as_bytes(), &mut digest) {
            self.live.forget_token(&digest);
        }
        if !existed {
            // Logged out concurrently by another request with the same token.
            return Err(IdentityError::Unauthorized(
                "Unrecognised access token".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = mint_token(&mut rng);
        let b = mint_token(&mut rng);
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_eq!(token_hash(&a).len(), 43);
        assert!(!token_hash(&a).contains(&a));
    }

    #[test]
    fn openid_body_accepts_synapse_shape() {
        let t: OpenIdToken = serde_json::from_str(
            r#"{"access_token":"x","token_type":"Bearer","matrix_server_name":"hs.example","expires_in":3600}"#,
        )
        .unwrap();
        assert_eq!(t.matrix_server_name, "hs.example");
        assert!(serde_json::from_str::<OpenIdToken>(r#"{"access_token":"x"}"#).is_err());
    }
}
