//! Admin tokens: HS256 JWTs (issuer = `server.name`, audience [`AUDIENCE`], a `jti`), checked
//! on every request with at most [`LEEWAY_SECS`] of clock skew against the injected clock.
//!
//! - The signing secret is created once in the database (`instance_state`), so every instance
//!   accepts every instance's tokens, or read from `admin.jwt_secret_file`.
//! - Logout stores the `jti` until the token expires; a removed (or removed and re-created)
//!   account's tokens stop working at once.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::accounts::{normalize_username, parse_role};
use super::{AdminError, Role};
use crate::audit::{self, Actor, action};
use crate::config::Config;
use crate::store::admin::{self as admin_store, AccountRow};
use crate::store::{DbConn, StoreError, state};

/// The `aud` of every admin token.
pub const AUDIENCE: &str = "annuaire-admin";
/// Clock skew tolerated between instances (and with `admin token` on another machine).
pub const LEEWAY_SECS: i64 = 30;
/// Where the generated signing secret is kept (`instance_state`).
pub const JWT_SECRET_KEY: &str = "admin_jwt_secret";
/// Longest lifetime of a token made with `annuaire admin token`.
pub const MAX_CLI_TOKEN_MS: i64 = 366 * 24 * 3600 * 1000;
/// Shortest secret accepted from `admin.jwt_secret_file`.
const MIN_SECRET_BYTES: usize = 32;

/// The claims of an admin token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    role: Role,
    iat: i64,
    exp: i64,
    jti: String,
    /// The account's creation instant (ms): a removed and re-created account of the same name
    /// does not accept the old account's tokens.
    acct: i64,
}

/// A token handed to an administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedToken {
    /// The JWT.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// The role it carries.
    pub role: Role,
}

/// An authenticated administrator (one request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Account name.
    pub username: String,
    /// The account's current role.
    pub role: Role,
    /// The token's id (what logout revokes).
    pub jti: String,
    /// When the token expires (ms).
    pub expires_at_ms: i64,
}

impl Session {
    /// Fails unless the caller may change things.
    pub fn require_editor(&self) -> Result<(), AdminError> {
        match self.role {
            Role::Editor => Ok(()),
            Role::Viewer => Err(AdminError::Forbidden(format!(
                "{} has the viewer role: it may read, not change",
                self.username
            ))),
        }
    }

    /// The audit actor for this administrator.
    pub fn actor(&self) -> Actor {
        Actor::admin(&self.username)
    }
}

/// Issues and checks this deployment's admin tokens.
pub struct Tokens {
    issuer: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    lifetime_ms: i64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("issuer", &self.issuer)
            .field("lifetime_ms", &self.lifetime_ms)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Reads the signing secret (from `admin.jwt_secret_file`, or the one in the database,
    /// created with `rng` if there is none yet) and the settings.
    pub fn open(
        conn: &mut DbConn,
        config: &Config,
        now_ms: i64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Tokens, AdminError> {
        let secret = match &config.admin.jwt_secret_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    AdminError::Internal(format!("admin.jwt_secret_file ({}): {e}", path.display()))
                })?;
                let trimmed = bytes.trim_ascii().to_vec();
                if trimmed.len() < MIN_SECRET_BYTES {
                    return Err(AdminError::Internal(format!(
                        "admin.jwt_secret_file ({}): the secret must be at least {MIN_SECRET_BYTES} bytes",
                        path.display()
                    )));
                }
                trimmed
            }
            None => {
                let mut candidate = [0u8; 48];
                rng.fill_bytes(&mut candidate);
                let stored = state::get_or_insert(
                    conn,
                    JWT_SECRET_KEY,
                    &STANDARD.encode(candidate),
                    now_ms,
                )?;
                STANDARD.decode(stored.as_bytes()).map_err(|e| {
                    StoreError::Corrupt(format!("state `{JWT_SECRET_KEY}` is not base64: {e}"))
                })?
            }
        };
        Ok(Tokens::with_secret(config, &secret))
    }

    /// The service with a given signing secret (tests, and `open`).
    pub fn with_secret(config: &Config, secret: &[u8]) -> Tokens {
        Tokens {
            issuer: config.server.name.clone(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            lifetime_ms: config.admin.token_lifetime.as_millis_i64(),
        }
    }

    /// The issuer (`iss`) of this deployment's tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The lifetime of a login's token.
    pub fn lifetime_ms(&self) -> i64 {
        self.lifetime_ms
    }

    /// A token for automation (`annuaire admin token USER --ttl 1h`), audited.
    pub fn issue_token(
        &self,
        conn: &mut DbConn,
        username: &str,
        ttl_ms: i64,
        actor: &Actor,
        now_ms: i64,
        rng: &mut impl RngCore,
    ) -> Result<IssuedToken, AdminError> {
        if !(1000..=MAX_CLI_TOKEN_MS).contains(&ttl_ms) {
            return Err(AdminError::InvalidInput(
                "the token lifetime must be between 1s and 366 days".to_owned(),
            ));
        }
        let username = normalize_username(username);
        let account = admin_store::get_account(conn, &username)?
            .ok_or_else(|| AdminError::NotFound(format!("no admin account {username}")))?;
        let token = self.mint(&account, ttl_ms, now_ms, rng)?;
        audit::record(
            conn,
            actor,
            action::TOKEN_ISSUE,
            &audit::account_target(&username),
            None,
            Some(&json!({"role": token.role, "expires_in": token.expires_in})),
            now_ms,
        )?;
        Ok(token)
    }

    pub(super) fn mint(
        &self,
        account: &AccountRow,
        ttl_ms: i64,
        now_ms: i64,
        rng: &mut impl RngCore,
    ) -> Result<IssuedToken, AdminError> {
        let role = parse_role(account)?;
        let iat = now_ms.div_euclid(1000);
        let expires_in = ttl_ms / 1000;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: AUDIENCE.to_owned(),
            sub: account.username.clone(),
            role,
            iat,
            exp: iat + expires_in,
            jti: crate::secret::random_token(rng, 24),
            acct: account.created_at,
        };
        let access_token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
                .map_err(|e| AdminError::Internal(format!("cannot encode an admin token: {e}")))?;
        Ok(IssuedToken {
            access_token,
            expires_in,
            role,
        })
    }

    /// Checks a bearer token: signature, issuer, audience, lifetime (±30 s), revocation, and
    /// that its account still exists (and is the account it was issued for).
    pub fn authenticate(
        &self,
        conn: &mut DbConn,
        token: &str,
        now_ms: i64,
    ) -> Result<Session, AdminError> {
        let claims = self.decode(token, now_ms)?;
        if admin_store::is_revoked(conn, &claims.jti)? {
            return Err(AdminError::InvalidToken(
                "The token was revoked (logged out)".to_owned(),
            ));
        }
        let account = admin_store::get_account(conn, &claims.sub)?;
        let Some(account) = account.filter(|a| a.created_at == claims.acct) else {
            return Err(AdminError::InvalidToken(
                "The token's admin account no longer exists".to_owned(),
            ));
        };
        Ok(Session {
            role: parse_role(&account)?,
            username: account.username,
            jti: claims.jti,
            expires_at_ms: claims.exp.saturating_mul(1000),
        })
    }

    /// The verified claims, without the database checks.
    fn decode(&self, token: &str, now_ms: i64) -> Result<Claims, AdminError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked below against the injected clock, not the system clock.
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token.as_bytes(), &self.decoding, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::InvalidAudience => "The token is not an admin token of this service",
                    ErrorKind::InvalidIssuer => "The token was issued by another server",
                    ErrorKind::InvalidSignature => "The token's signature is not valid",
                    _ => "The token is malformed",
                };
                AdminError::InvalidToken(why.to_owned())
            })?
            .claims;
        let now = now_ms.div_euclid(1000);
        if now > claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(AdminError::InvalidToken("The token has expired".to_owned()));
        }
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(AdminError::InvalidToken(
                "The token is not valid yet (issued in the future)".to_owned(),
            ));
        }
        Ok(claims)
    }

    /// Revokes the session's token until it expires.
    pub fn logout(
        &self,
        conn: &mut DbConn,
        session: &Session,
        now_ms: i64,
    ) -> Result<(), AdminError> {
        admin_store::revoke_token(
            conn,
            &session.jti,
            &session.username,
            session.expires_at_ms,
            now_ms,
        )?;
        admin_store::purge_revoked(conn, now_ms - LEEWAY_SECS * 1000)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn account(username: &str, role: &str) -> AccountRow {
        AccountRow {
            username: username.into(),
            role: role.into(),
            source: "local".into(),
            password_hash: None,
            failed_logins: 0,
            locked_until: None,
            last_login_at: None,
            created_at: NOW - 5,
            updated_at: NOW - 5,
        }
    }

    fn service() -> Tokens {
        let mut config = Config::default();
        config.server.name = "is.example".into();
        Tokens::with_secret(&config, &[7u8; 32])
    }

    fn claims(admin: &Tokens, token: &str) -> serde_json::Value {
        let _ = admin;
        let payload = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn tokens_carry_issuer_audience_lifetime_and_a_unique_id() {
        let admin = service();
        let mut rng = rand::rngs::OsRng;
        let a = admin
            .mint(&account("alice", "editor"), 900_000, NOW, &mut rng)
            .unwrap();
        let b = admin
            .mint(&account("alice", "editor"), 900_000, NOW, &mut rng)
            .unwrap();
        assert_eq!(a.expires_in, 900);
        let c = claims(&admin, &a.access_token);
        assert_eq!(c["iss"], "is.example");
        assert_eq!(c["aud"], AUDIENCE);
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["role"], "editor");
        assert_eq!(c["acct"], NOW - 5);
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 900);
        assert_ne!(c["jti"], claims(&admin, &b.access_token)["jti"]);
        assert_eq!(admin.decode(&a.access_token, NOW).unwrap().sub, "alice");
    }

    #[test]
    fn expiry_is_checked_against_the_given_clock_with_bounded_leeway() {
        let admin = service();
        let t = admin
            .mint(
                &account("alice", "viewer"),
                60_000,
                NOW,
                &mut rand::rngs::OsRng,
            )
            .unwrap();
        assert!(admin.decode(&t.access_token, NOW + 60_000).is_ok());
        assert!(admin.decode(&t.access_token, NOW + 60_000 + 30_000).is_ok());
        let e = admin
            .decode(&t.access_token, NOW + 60_000 + 31_000)
            .unwrap_err();
        assert!(
            matches!(e, AdminError::InvalidToken(ref m) if m.contains("expired")),
            "{e}"
        );
        // Issued "in the future" beyond the leeway: another instance's clock is far off.
        let e = admin.decode(&t.access_token, NOW - 31_000).unwrap_err();
        assert!(
            matches!(e, AdminError::InvalidToken(ref m) if m.contains("future")),
            "{e}"
        );
        assert!(admin.decode(&t.access_token, NOW - 29_000).is_ok());
    }

    #[test]
    fn foreign_tokens_are_refused() {
        let admin = service();
        let sign = |claims: serde_json::Value, key: &[u8]| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(key),
            )
            .unwrap()
        };
        let good = json!({"iss": "is.example", "aud": AUDIENCE, "sub": "alice", "role": "editor",
            "iat": NOW / 1000, "exp": NOW / 1000 + 60, "jti": "j", "acct": 1});
        assert!(admin.decode(&sign(good.clone(), &[7u8; 32]), NOW).is_ok());
        let mut other_aud = good.clone();
        other_aud["aud"] = json!("synapse");
        let e = admin.decode(&sign(other_aud, &[7u8; 32]), NOW).unwrap_err();
        assert!(e.to_string().contains("not an admin token"), "{e}");
        let mut other_iss = good.clone();
        other_iss["iss"] = json!("elsewhere.example");
        let e = admin.decode(&sign(other_iss, &[7u8; 32]), NOW).unwrap_err();
        assert!(e.to_string().contains("another server"), "{e}");
        let e = admin
            .decode(&sign(good.clone(), &[8u8; 32]), NOW)
            .unwrap_err();
        assert!(e.to_string().contains("signature"), "{e}");
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(admin.decode(&sign(no_exp, &[7u8; 32]), NOW).is_err());
        assert!(admin.decode("not.a.token", NOW).is_err());
        // "none" and other algorithms are refused whatever the claims.
        let unsigned = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(br#"{"alg":"none","typ":"JWT"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(good.to_string())
        );
        assert!(admin.decode(&unsigned, NOW).is_err());
    }
}
