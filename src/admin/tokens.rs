//! Admin tokens: HS256 JWTs (issuer = `server.name`, audience [`AUDIENCE`], a `jti`, the
//! signing secret's `kid` in the header), checked on every request with at most
//! [`LEEWAY_SECS`] of clock skew against the injected clock.
//!
//! - The signing secrets are kept in the database (`admin_jwt_secrets`, by `kid`), so every
//!   instance accepts every instance's tokens, or read from `admin.jwt_secret_file` (its `kid`
//!   is derived from the secret, so instances sharing the file agree).
//! - `annuaire admin rotate-secret` ([`rotate_secret`]) makes a new secret sign; tokens of the
//!   previous one stay accepted until they expire (by default for the longest lifetime a token
//!   can have), or stop at once with `--revoke-previous`. Instances pick the new secret up
//!   within [`SECRET_REFRESH_INTERVAL`]; a token of a `kid` an instance does not know yet makes
//!   it reread the secrets at once.
//! - Logout stores the `jti` until the token expires; a removed (or removed and re-created)
//!   account's tokens stop working at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::accounts::{normalize_username, parse_role};
use super::{AdminError, Role};
use crate::audit::{self, Actor, action};
use crate::config::Config;
use crate::store::admin::{self as admin_store, AccountRow};
use crate::store::keys::{self as key_store, JwtSecretRow};
use crate::store::{DbConn, StoreError, state};

/// The `aud` of every admin token.
pub const AUDIENCE: &str = "annuaire-admin";
/// Clock skew tolerated between instances (and with `admin token` on another machine).
pub const LEEWAY_SECS: i64 = 30;
/// Where the secret of annuaire versions without `kid`s was kept (`instance_state`): it becomes
/// the secret [`LEGACY_KID`].
pub const JWT_SECRET_KEY: &str = "admin_jwt_secret";
/// The `kid` of the first database secret, and of tokens that carry none (issued before `kid`s).
pub const LEGACY_KID: &str = "1";
/// Longest lifetime of a token made with `annuaire admin token`.
pub const MAX_CLI_TOKEN_MS: i64 = 366 * 24 * 3600 * 1000;
/// How often a running instance rereads the secrets (a rotation reaches it within this).
pub const SECRET_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
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

/// The secrets as one instance knows them.
struct SecretRing {
    /// The `kid` that signs.
    current_kid: String,
    encoding: EncodingKey,
    /// Every accepted `kid`: its key, and until when its tokens are accepted (retired ones).
    accepted: HashMap<String, (DecodingKey, Option<i64>)>,
}

impl SecretRing {
    fn from_rows(rows: &[JwtSecretRow]) -> Result<SecretRing, AdminError> {
        let mut current = None;
        let mut accepted = HashMap::new();
        for row in rows {
            let secret = STANDARD.decode(row.secret.as_bytes()).map_err(|e| {
                StoreError::Corrupt(format!("admin token secret {} is not base64: {e}", row.kid))
            })?;
            accepted.insert(
                row.kid.clone(),
                (DecodingKey::from_secret(&secret), row.accepted_until),
            );
            if row.retired_at.is_none() {
                current = Some((row.kid.clone(), EncodingKey::from_secret(&secret)));
            }
        }
        let (current_kid, encoding) = current.ok_or_else(|| {
            AdminError::Internal("no current admin token secret in the database".to_owned())
        })?;
        Ok(SecretRing {
            current_kid,
            encoding,
            accepted,
        })
    }

    fn single(kid: &str, secret: &[u8]) -> SecretRing {
        SecretRing {
            current_kid: kid.to_owned(),
            encoding: EncodingKey::from_secret(secret),
            accepted: HashMap::from([(kid.to_owned(), (DecodingKey::from_secret(secret), None))]),
        }
    }
}

/// Where the secrets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretSource {
    /// `admin.jwt_secret_file`: one secret, no rotation.
    File,
    /// The database (`admin_jwt_secrets`).
    Database,
}

/// Issues and checks this deployment's admin tokens.
pub struct Tokens {
    issuer: String,
    secrets: ArcSwap<SecretRing>,
    source: SecretSource,
    lifetime_ms: i64,
    /// When a token of an unknown `kid` last made this instance reread the secrets (ms): at
    /// most once a second, so that forged `kid`s cannot make every request read the database.
    last_unknown_refresh: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("issuer", &self.issuer)
            .field("kid", &self.secrets.load().current_kid)
            .field("lifetime_ms", &self.lifetime_ms)
            .finish_non_exhaustive()
    }
}

/// The `kid` of a secret read from a file: derived from it, so that every instance given the
/// same file uses the same one, and a new file a new one.
fn file_kid(secret: &[u8]) -> String {
    let digest = Sha256::digest(secret);
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("file-{hex}")
}

/// The database's secrets, creating the first one (from the secret of annuaire versions without
/// `kid`s when there is one, else random) if there are none yet.
fn database_secrets(
    conn: &mut DbConn,
    now_ms: i64,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<JwtSecretRow>, AdminError> {
    let rows = key_store::jwt_secrets(conn)?;
    if !rows.is_empty() {
        return Ok(rows);
    }
    let mut candidate = [0u8; 48];
    rng.fill_bytes(&mut candidate);
    // The secret earlier versions kept: their tokens (without kid) stay valid.
    let legacy = state::get(conn, JWT_SECRET_KEY)?;
    key_store::insert_jwt_secret(
        conn,
        &JwtSecretRow {
            kid: LEGACY_KID.to_owned(),
            secret: legacy.unwrap_or_else(|| STANDARD.encode(candidate)),
            created_at: now_ms,
            retired_at: None,
            accepted_until: None,
        },
    )?;
    Ok(key_store::jwt_secrets(conn)?)
}

impl Tokens {
    /// Reads the signing secrets (from `admin.jwt_secret_file`, or the database's, the first
    /// one created with `rng` if there is none yet) and the settings.
    pub fn open(
        conn: &mut DbConn,
        config: &Config,
        now_ms: i64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Tokens, AdminError> {
        let (ring, source) = match &config.admin.jwt_secret_file {
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
                (
                    SecretRing::single(&file_kid(&trimmed), &trimmed),
                    SecretSource::File,
                )
            }
            None => (
                SecretRing::from_rows(&database_secrets(conn, now_ms, rng)?)?,
                SecretSource::Database,
            ),
        };
        Ok(Tokens {
            issuer: config.server.name.clone(),
            secrets: ArcSwap::from_pointee(ring),
            source,
            lifetime_ms: config.admin.token_lifetime.as_millis_i64(),
            last_unknown_refresh: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    /// The service with a given signing secret, `kid` [`LEGACY_KID`] (tests).
    pub fn with_secret(config: &Config, secret: &[u8]) -> Tokens {
        Tokens {
            issuer: config.server.name.clone(),
            secrets: ArcSwap::from_pointee(SecretRing::single(LEGACY_KID, secret)),
            source: SecretSource::File,
            lifetime_ms: config.admin.token_lifetime.as_millis_i64(),
            last_unknown_refresh: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// Rereads the database's secrets (a rotation by another process); nothing with a file.
    pub fn refresh(&self, conn: &mut DbConn) -> Result<(), AdminError> {
        if self.source == SecretSource::File {
            return Ok(());
        }
        let ring = SecretRing::from_rows(&key_store::jwt_secrets(conn)?)?;
        let before = self.secrets.load().current_kid.clone();
        if ring.current_kid != before {
            tracing::info!(
                kid = %ring.current_kid,
                "admin token secret changed: signing with the new one"
            );
        }
        self.secrets.store(Arc::new(ring));
        Ok(())
    }

    /// Whether an unknown `kid` may make this instance reread the secrets now.
    fn may_refresh(&self, now_ms: i64) -> bool {
        use std::sync::atomic::Ordering;
        let last = self.last_unknown_refresh.load(Ordering::SeqCst);
        now_ms.saturating_sub(last) >= 1000
            && self
                .last_unknown_refresh
                .compare_exchange(last, now_ms, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// The `kid` new tokens carry.
    pub fn current_kid(&self) -> String {
        self.secrets.load().current_kid.clone()
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
        let secrets = self.secrets.load();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(secrets.current_kid.clone());
        let access_token = jsonwebtoken::encode(&header, &claims, &secrets.encoding)
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
        let claims = match self.decode(token, now_ms) {
            Err(Decoded::UnknownKid)
                if self.source == SecretSource::Database && self.may_refresh(now_ms) =>
            {
                // Perhaps rotated by another process since this instance last looked.
                self.refresh(conn)?;
                self.decode(token, now_ms)
            }
            other => other,
        }
        .map_err(Decoded::into_error)?;
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
    fn decode(&self, token: &str, now_ms: i64) -> Result<Claims, Decoded> {
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|_| Decoded::Invalid("The token is malformed"))?
            .kid;
        let secrets = self.secrets.load();
        let found = match &kid {
            Some(kid) => secrets.accepted.get(kid),
            // Issued before `kid`s: by the first database secret, or by the file's.
            None => secrets
                .accepted
                .get(LEGACY_KID)
                .or_else(|| secrets.accepted.get(&secrets.current_kid)),
        };
        let Some((key, accepted_until)) = found else {
            return Err(Decoded::UnknownKid);
        };
        if accepted_until.is_some_and(|until| now_ms > until) {
            return Err(Decoded::Invalid(
                "The token was signed with a secret that is no longer accepted",
            ));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked below against the injected clock, not the system clock.
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token.as_bytes(), key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                Decoded::Invalid(match e.kind() {
                    ErrorKind::InvalidAudience => "The token is not an admin token of this service",
                    ErrorKind::InvalidIssuer => "The token was issued by another server",
                    ErrorKind::InvalidSignature => "The token's signature is not valid",
                    _ => "The token is malformed",
                })
            })?
            .claims;
        let now = now_ms.div_euclid(1000);
        if now > claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(Decoded::Invalid("The token has expired"));
        }
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(Decoded::Invalid(
                "The token is not valid yet (issued in the future)",
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

/// Why a token did not decode.
#[derive(Debug)]
enum Decoded {
    /// Its `kid` is not one this instance knows.
    UnknownKid,
    /// Anything else (the message says what).
    Invalid(&'static str),
}

impl Decoded {
    fn into_error(self) -> AdminError {
        AdminError::InvalidToken(
            match self {
                Decoded::UnknownKid => "The token was signed with an unknown secret",
                Decoded::Invalid(why) => why,
            }
            .to_owned(),
        )
    }
}

/// What `annuaire admin rotate-secret` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRotation {
    /// The `kid` that signs from now on.
    pub kid: String,
    /// The one it replaced.
    pub previous_kid: String,
    /// Tokens of the previous secret are accepted until then (ms); now when revoked.
    pub previous_accepted_until: i64,
}

/// Makes a new secret sign admin tokens. Tokens of the previous one stay accepted for
/// `keep_previous_ms` (by default [`MAX_CLI_TOKEN_MS`], the longest a token can live, plus the
/// leeway), or no longer at all with 0. Audited; fails when the secret is in a file.
pub fn rotate_secret(
    conn: &mut DbConn,
    config: &Config,
    keep_previous_ms: i64,
    actor: &Actor,
    now_ms: i64,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<SecretRotation, AdminError> {
    if config.admin.jwt_secret_file.is_some() {
        return Err(AdminError::InvalidInput(
            "admin.jwt_secret_file is set: the secret is that file's. Write a new secret into \
             it on every instance and restart them (tokens of the old secret then stop working)"
                .to_owned(),
        ));
    }
    if keep_previous_ms < 0 {
        return Err(AdminError::InvalidInput(
            "the previous secret's overlap cannot be negative".to_owned(),
        ));
    }
    database_secrets(conn, now_ms, rng)?;
    let mut fresh = [0u8; 48];
    rng.fill_bytes(&mut fresh);
    crate::store::transaction(conn, |conn| {
        let rows = key_store::jwt_secrets(conn)?;
        let current = rows
            .iter()
            .find(|r| r.retired_at.is_none())
            .ok_or_else(|| AdminError::Internal("no current admin token secret".to_owned()))?;
        let next = rows
            .iter()
            .filter_map(|r| r.kid.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            .saturating_add(1)
            .to_string();
        let accepted_until = now_ms.saturating_add(keep_previous_ms);
        if !key_store::retire_jwt_secret(conn, &current.kid, now_ms, accepted_until)? {
            return Err(AdminError::Internal(
                "another rotation ran at the same time; try again".to_owned(),
            ));
        }
        key_store::insert_jwt_secret(
            conn,
            &JwtSecretRow {
                kid: next.clone(),
                secret: STANDARD.encode(fresh),
                created_at: now_ms,
                retired_at: None,
                accepted_until: None,
            },
        )?;
        let rotation = SecretRotation {
            kid: next,
            previous_kid: current.kid.clone(),
            previous_accepted_until: accepted_until,
        };
        audit::record(
            conn,
            actor,
            action::ADMIN_SECRET_ROTATE,
            "admin_secret",
            Some(&json!({"kid": rotation.previous_kid})),
            Some(&json!({"kid": rotation.kid, "previous_accepted_until": accepted_until})),
            now_ms,
        )?;
        Ok(rotation)
    })
}

/// The admin token secrets, without the secrets themselves, newest first (`keys list`).
pub fn list_secrets(conn: &mut DbConn, config: &Config) -> Result<Vec<SecretInfo>, AdminError> {
    if let Some(path) = &config.admin.jwt_secret_file {
        return Ok(vec![SecretInfo {
            kid: format!("(admin.jwt_secret_file {})", path.display()),
            created_at: None,
            retired_at: None,
            accepted_until: None,
        }]);
    }
    Ok(key_store::jwt_secrets(conn)?
        .into_iter()
        .map(|r| SecretInfo {
            kid: r.kid,
            created_at: Some(r.created_at),
            retired_at: r.retired_at,
            accepted_until: r.accepted_until,
        })
        .collect())
}

/// One admin token secret, described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretInfo {
    /// Its `kid`.
    pub kid: String,
    /// When it was created (ms).
    pub created_at: Option<i64>,
    /// When it stopped signing (ms).
    pub retired_at: Option<i64>,
    /// Until when its tokens are accepted (ms).
    pub accepted_until: Option<i64>,
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    impl Tokens {
        fn check(&self, token: &str, now_ms: i64) -> Result<Claims, AdminError> {
            self.decode(token, now_ms).map_err(Decoded::into_error)
        }
    }

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
        assert_eq!(admin.check(&a.access_token, NOW).unwrap().sub, "alice");
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
        assert!(admin.check(&t.access_token, NOW + 60_000).is_ok());
        assert!(admin.check(&t.access_token, NOW + 60_000 + 30_000).is_ok());
        let e = admin
            .check(&t.access_token, NOW + 60_000 + 31_000)
            .unwrap_err();
        assert!(
            matches!(e, AdminError::InvalidToken(ref m) if m.contains("expired")),
            "{e}"
        );
        // Issued "in the future" beyond the leeway: another instance's clock is far off.
        let e = admin.check(&t.access_token, NOW - 31_000).unwrap_err();
        assert!(
            matches!(e, AdminError::InvalidToken(ref m) if m.contains("future")),
            "{e}"
        );
        assert!(admin.check(&t.access_token, NOW - 29_000).is_ok());
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
        assert!(admin.check(&sign(good.clone(), &[7u8; 32]), NOW).is_ok());
        let mut other_aud = good.clone();
        other_aud["aud"] = json!("synapse");
        let e = admin.check(&sign(other_aud, &[7u8; 32]), NOW).unwrap_err();
        assert!(e.to_string().contains("not an admin token"), "{e}");
        let mut other_iss = good.clone();
        other_iss["iss"] = json!("elsewhere.example");
        let e = admin.check(&sign(other_iss, &[7u8; 32]), NOW).unwrap_err();
        assert!(e.to_string().contains("another server"), "{e}");
        let e = admin
            .check(&sign(good.clone(), &[8u8; 32]), NOW)
            .unwrap_err();
        assert!(e.to_string().contains("signature"), "{e}");
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(admin.check(&sign(no_exp, &[7u8; 32]), NOW).is_err());
        assert!(admin.check("not.a.token", NOW).is_err());
        // "none" and other algorithms are refused whatever the claims.
        let unsigned = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(br#"{"alg":"none","typ":"JWT"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(good.to_string())
        );
        assert!(admin.check(&unsigned, NOW).is_err());
    }

    fn ring_tokens(rows: &[JwtSecretRow]) -> Tokens {
        let mut config = Config::default();
        config.server.name = "is.example".into();
        Tokens {
            issuer: config.server.name.clone(),
            secrets: ArcSwap::from_pointee(SecretRing::from_rows(rows).unwrap()),
            source: SecretSource::Database,
            lifetime_ms: 900_000,
            last_unknown_refresh: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    fn secret_row(kid: &str, byte: u8, accepted_until: Option<i64>) -> JwtSecretRow {
        JwtSecretRow {
            kid: kid.into(),
            secret: STANDARD.encode([byte; 48]),
            created_at: NOW - 10,
            retired_at: accepted_until.map(|_| NOW - 5),
            accepted_until,
        }
    }

    #[test]
    fn tokens_name_their_secret_and_retired_secrets_overlap_until_their_deadline() {
        let mut rng = rand::rngs::OsRng;
        let before = ring_tokens(&[secret_row("1", 1, None)]);
        let old = before
            .mint(&account("alice", "editor"), 900_000, NOW, &mut rng)
            .unwrap();
        let header = jsonwebtoken::decode_header(&old.access_token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("1"));

        // Rotated: "2" signs, "1" is accepted until NOW + 60 s.
        let after = ring_tokens(&[
            secret_row("2", 2, None),
            secret_row("1", 1, Some(NOW + 60_000)),
        ]);
        assert_eq!(after.current_kid(), "2");
        let new = after
            .mint(&account("alice", "editor"), 900_000, NOW, &mut rng)
            .unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&new.access_token)
                .unwrap()
                .kid
                .as_deref(),
            Some("2")
        );
        assert_eq!(after.check(&old.access_token, NOW).unwrap().sub, "alice");
        assert_eq!(after.check(&new.access_token, NOW).unwrap().sub, "alice");
        let e = after.check(&old.access_token, NOW + 61_000).unwrap_err();
        assert!(e.to_string().contains("no longer accepted"), "{e}");
        assert!(after.check(&new.access_token, NOW + 61_000).is_ok());

        // A secret this instance does not know: reported as such (authenticate rereads).
        let other = ring_tokens(&[secret_row("3", 3, None)]);
        assert!(matches!(
            other.decode(&new.access_token, NOW),
            Err(Decoded::UnknownKid)
        ));
        // A token without kid is checked against the first secret.
        let legacy = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"iss": "is.example", "aud": AUDIENCE, "sub": "bob", "role": "viewer",
                "iat": NOW / 1000, "exp": NOW / 1000 + 60, "jti": "j", "acct": 1}),
            &EncodingKey::from_secret(&[1u8; 48]),
        )
        .unwrap();
        assert_eq!(after.check(&legacy, NOW).unwrap().sub, "bob");
    }

    #[test]
    fn file_secrets_get_a_kid_derived_from_the_secret() {
        assert_eq!(
            file_kid(b"0123456789abcdef0123456789abcdef"),
            file_kid(b"0123456789abcdef0123456789abcdef")
        );
        assert_ne!(
            file_kid(b"0123456789abcdef0123456789abcdef"),
            file_kid(b"0123456789abcdef0123456789abcdeX")
        );
        assert!(file_kid(b"x").starts_with("file-"));
    }
}
