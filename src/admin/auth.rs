//! Admin accounts and tokens.
//!
//! - Local accounts with an argon2id password hash (`annuaire admin add|remove|list`).
//! - `login` gives an HS256 JWT (issuer = `server.name`, audience [`AUDIENCE`], `jti`), checked on
//!   every request with at most [`LEEWAY_SECS`] of clock skew against the injected clock.
//! - The signing secret is created once in the database (`instance_state`), so every instance
//!   accepts every instance's tokens, or read from `admin.jwt_secret_file`.
//! - Logout stores the `jti` until the token expires; a removed (or removed and re-created)
//!   account's tokens stop working at once.
//! - Failed logins lock the account after `admin.lockout_threshold` in a row (in the database, so
//!   every instance agrees); attempts are rate limited per IP and per username (per instance).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::audit::{self, action};
use super::ldap_login::{LdapLogin, LdapVerdict};
use super::{Actor, AdminError, Role};
use crate::app::Annuaire;
use crate::config::Config;
use crate::ratelimit::KeyedLimit;
use crate::store::admin::{self as admin_store, AccountRow};
use crate::store::{DbConn, StoreError, state};

/// The `aud` of every admin token.
pub const AUDIENCE: &str = "annuaire-admin";
/// Clock skew tolerated between instances (and with `admin token` on another machine).
pub const LEEWAY_SECS: i64 = 30;
/// Where the generated signing secret is kept (`instance_state`).
pub const JWT_SECRET_KEY: &str = "admin_jwt_secret";
/// Shortest accepted password.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest accepted password (bounds the hashing work an attacker can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest lifetime of a token made with `annuaire admin token`.
pub const MAX_CLI_TOKEN_MS: i64 = 366 * 24 * 3600 * 1000;
/// Shortest secret accepted from `admin.jwt_secret_file`.
const MIN_SECRET_BYTES: usize = 32;
/// `source` of an account with a password hash.
pub const SOURCE_LOCAL: &str = "local";
/// `source` of an account created by an LDAP login (no password here: LDAP decides).
pub const SOURCE_LDAP: &str = "ldap";

/// Where a login goes after the local check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStep {
    /// Done: the local password was right.
    Token(IssuedToken),
    /// LDAP decides, for this (normalised) username.
    Ldap(String),
}

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

/// An account as listed (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountSummary {
    /// Login name.
    pub username: String,
    /// Role.
    pub role: String,
    /// "local" or "ldap".
    pub source: String,
    /// Created (ms).
    pub created_at: i64,
    /// Last successful login (ms).
    pub last_login_at: Option<i64>,
    /// Locked until (ms), when locked now.
    pub locked_until: Option<i64>,
}

impl AccountSummary {
    fn of(row: &AccountRow, now_ms: i64) -> AccountSummary {
        AccountSummary {
            username: row.username.clone(),
            role: row.role.clone(),
            source: row.source.clone(),
            created_at: row.created_at,
            last_login_at: row.last_login_at,
            locked_until: row.locked_until.filter(|until| *until > now_ms),
        }
    }
}

/// What the audit log keeps of an account (never the hash).
fn account_json(row: &AccountRow) -> serde_json::Value {
    json!({"username": row.username, "role": row.role, "source": row.source})
}

/// The admin authentication service of one instance.
pub struct Admin {
    issuer: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    token_lifetime_ms: i64,
    lockout_threshold: i32,
    lockout_ms: i64,
    login_per_ip: KeyedLimit<IpAddr>,
    login_per_username: KeyedLimit<String>,
    /// The LDAP login (`admin.ldap_user_filter`), if on.
    ldap: Option<LdapLogin>,
    /// A hash verified when the username is unknown, so that timing does not reveal accounts.
    dummy_hash: OnceLock<Option<String>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("issuer", &self.issuer)
            .field("token_lifetime_ms", &self.token_lifetime_ms)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Reads the signing secret (from `admin.jwt_secret_file`, or the one in the database,
    /// created with `rng` if there is none yet) and the settings.
    pub fn open(
        conn: &mut DbConn,
        config: &Config,
        now_ms: i64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Admin, AdminError> {
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
        let mut admin = Admin::with_secret(config, &secret);
        admin.ldap = LdapLogin::from_config(config)?;
        Ok(admin)
    }

    /// The service with a given signing secret (tests, and `open`).
    pub fn with_secret(config: &Config, secret: &[u8]) -> Admin {
        let admin = &config.admin;
        Admin {
            issuer: config.server.name.clone(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            token_lifetime_ms: admin.token_lifetime.as_millis_i64(),
            lockout_threshold: i32::try_from(admin.lockout_threshold).unwrap_or(i32::MAX),
            lockout_ms: admin.lockout_duration.as_millis_i64(),
            login_per_ip: KeyedLimit::new(&admin.login_per_ip),
            login_per_username: KeyedLimit::new(&admin.login_per_username),
            ldap: None,
            dummy_hash: OnceLock::new(),
        }
    }

    /// The issuer (`iss`) of this deployment's tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Takes a login attempt from the per-IP and per-username buckets.
    pub fn check_login_rate(&self, ip: Option<IpAddr>, username: &str) -> Result<(), AdminError> {
        if let Some(ip) = ip {
            self.login_per_ip
                .check(&ip)
                .map_err(|retry_after_ms| AdminError::RateLimited { retry_after_ms })?;
        }
        self.login_per_username
            .check(&normalize_username(username))
            .map_err(|retry_after_ms| AdminError::RateLimited { retry_after_ms })
    }

    /// Forgets full rate-limit buckets (call periodically).
    pub fn housekeep(&self) {
        self.login_per_ip.housekeep();
        self.login_per_username.housekeep();
    }

    /// Checks a username and password against the local account; says when LDAP must decide
    /// instead (LDAP login on, and no local account of that name, or an account that LDAP
    /// created). A locked account is refused here, before LDAP is asked.
    pub fn login(
        &self,
        conn: &mut DbConn,
        username: &str,
        password: &str,
        now_ms: i64,
        rng: &mut impl RngCore,
    ) -> Result<LoginStep, AdminError> {
        let username = normalize_username(username);
        // Names no account can have are looked up nowhere (not even in the database, whose
        // text may not hold what they contain) nor sent to LDAP.
        let valid = check_username(&username).is_ok();
        let account = match valid {
            true => admin_store::get_account(conn, &username)?,
            false => None,
        };
        let Some(account) = account else {
            if self.ldap.is_some() && valid {
                return Ok(LoginStep::Ldap(username));
            }
            // Same work as for a real account, so that response times do not reveal names.
            if let Some(hash) = self.dummy_hash() {
                verify_password(hash, password);
            }
            return Err(AdminError::BadCredentials);
        };
        if let Some(until) = account.locked_until
            && until > now_ms
        {
            return Err(locked(until, now_ms));
        }
        if account.source == SOURCE_LDAP && self.ldap.is_some() {
            return Ok(LoginStep::Ldap(username));
        }
        let verified = account
            .password_hash
            .as_deref()
            .is_some_and(|hash| verify_password(hash, password));
        if !verified {
            return Err(self.failed_login(conn, &username, now_ms)?);
        }
        self.succeed(conn, &account, now_ms, rng)
            .map(LoginStep::Token)
    }

    /// Finishes a login that LDAP decided: a person of an admin group gets their account
    /// (created with source `ldap`, or its role updated to the group's, both audited) and, with
    /// the right password, a token; a wrong password counts toward the lock as for local
    /// accounts. A local account created meanwhile wins (refused here).
    pub fn finish_ldap_login(
        &self,
        conn: &mut DbConn,
        username: &str,
        verdict: LdapVerdict,
        now_ms: i64,
        rng: &mut impl RngCore,
    ) -> Result<IssuedToken, AdminError> {
        let (role, granted) = match verdict {
            LdapVerdict::Refused => return Err(AdminError::BadCredentials),
            LdapVerdict::Granted(role) => (role, true),
            LdapVerdict::WrongPassword(role) => (role, false),
        };
        let Some(account) = ldap_account(conn, username, role, now_ms)? else {
            return Err(AdminError::BadCredentials);
        };
        if let Some(until) = account.locked_until
            && until > now_ms
        {
            return Err(locked(until, now_ms));
        }
        if !granted {
            return Err(self.failed_login(conn, username, now_ms)?);
        }
        self.succeed(conn, &account, now_ms, rng)
    }

    /// The LDAP login, when configured.
    pub fn ldap_login(&self) -> Option<&LdapLogin> {
        self.ldap.as_ref()
    }

    /// Counts a failed login (locking the account at the threshold, audited); the error to
    /// answer: bad credentials, or the new lock.
    fn failed_login(
        &self,
        conn: &mut DbConn,
        username: &str,
        now_ms: i64,
    ) -> Result<AdminError, AdminError> {
        let lock_until = now_ms.saturating_add(self.lockout_ms);
        let locked_now = crate::store::transaction(conn, |conn| {
            let locked = admin_store::record_login_failure(
                conn,
                username,
                self.lockout_threshold,
                lock_until,
                now_ms,
            )?;
            if locked.is_some() {
                audit::record(
                    conn,
                    &Actor::system(),
                    action::ACCOUNT_LOCK,
                    &audit::account_target(username),
                    Some(&json!({"locked_until": null})),
                    Some(&json!({"locked_until": lock_until})),
                    now_ms,
                )?;
            }
            Ok::<_, StoreError>(locked)
        })?;
        if let Some(until) = locked_now {
            tracing::warn!(
                account = %username,
                "admin account locked after too many failed logins"
            );
            return Ok(locked(until, now_ms));
        }
        Ok(AdminError::BadCredentials)
    }

    /// A successful login: failures forgotten, a token.
    fn succeed(
        &self,
        conn: &mut DbConn,
        account: &AccountRow,
        now_ms: i64,
        rng: &mut impl RngCore,
    ) -> Result<IssuedToken, AdminError> {
        admin_store::record_login_success(conn, &account.username, now_ms)?;
        admin_store::purge_revoked(conn, now_ms - LEEWAY_SECS * 1000)?;
        self.mint(account, self.token_lifetime_ms, now_ms, rng)
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

    fn mint(
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

    fn dummy_hash(&self) -> Option<&str> {
        self.dummy_hash
            .get_or_init(|| {
                hash_password("not a password of any account", &mut rand::rngs::OsRng).ok()
            })
            .as_deref()
    }
}

/// Checks a username and password, against the local account or with LDAP (see
/// [`Admin::login`] and [`Admin::finish_ldap_login`]); on success, a token of
/// `admin.token_lifetime`. The caller has checked the login rate limits.
pub async fn log_in(
    app: Arc<Annuaire>,
    username: &str,
    password: &str,
    now_ms: i64,
) -> Result<IssuedToken, AdminError> {
    let (user, pass) = (username.to_owned(), password.to_owned());
    let local = app.clone();
    let step = app
        .db
        .run(move |conn| {
            Ok(local
                .admin
                .login(conn, &user, &pass, now_ms, &mut rand::rngs::OsRng))
        })
        .await??;
    let username = match step {
        LoginStep::Token(token) => return Ok(token),
        LoginStep::Ldap(username) => username,
    };
    let ldap = app.admin.ldap_login().ok_or(AdminError::BadCredentials)?;
    let verdict = ldap.check(&username, password).await?;
    let finish = app.clone();
    app.db
        .run(move |conn| {
            Ok(finish.admin.finish_ldap_login(
                conn,
                &username,
                verdict,
                now_ms,
                &mut rand::rngs::OsRng,
            ))
        })
        .await?
}

/// The account of a person LDAP vouched for with `role`: created (source `ldap`) or its role
/// brought in line with the groups, audited with actor `system`. `None` when a local account of
/// that name exists (it wins).
fn ldap_account(
    conn: &mut DbConn,
    username: &str,
    role: Role,
    now_ms: i64,
) -> Result<Option<AccountRow>, AdminError> {
    let result = crate::store::transaction(conn, |conn| {
        let existing = admin_store::get_account(conn, username)?;
        match existing {
            Some(row) if row.source != SOURCE_LDAP => return Ok(None),
            Some(row) if row.role == role.as_str() => return Ok(Some(row)),
            Some(row) => {
                admin_store::set_account_role(conn, username, role.as_str(), now_ms)?;
                let mut after = row.clone();
                after.role = role.as_str().to_owned();
                audit::record(
                    conn,
                    &Actor::system(),
                    action::ACCOUNT_UPDATE,
                    &audit::account_target(username),
                    Some(&account_json(&row)),
                    Some(&account_json(&after)),
                    now_ms,
                )?;
            }
            None => {
                admin_store::insert_account(
                    conn,
                    username,
                    role.as_str(),
                    SOURCE_LDAP,
                    None,
                    now_ms,
                )?;
                let row = AccountRow {
                    username: username.to_owned(),
                    role: role.as_str().to_owned(),
                    source: SOURCE_LDAP.to_owned(),
                    password_hash: None,
                    failed_logins: 0,
                    locked_until: None,
                    last_login_at: None,
                    created_at: now_ms,
                    updated_at: now_ms,
                };
                audit::record(
                    conn,
                    &Actor::system(),
                    action::ACCOUNT_CREATE,
                    &audit::account_target(username),
                    None,
                    Some(&account_json(&row)),
                    now_ms,
                )?;
                tracing::info!(account = %username, role = role.as_str(), "admin account created by an LDAP login");
            }
        }
        admin_store::get_account(conn, username)
    });
    match result {
        // Another instance created it at the same moment.
        Err(e) if e.is_unique_violation() => {
            Ok(admin_store::get_account(conn, username)?.filter(|row| row.source == SOURCE_LDAP))
        }
        other => Ok(other?),
    }
}

fn locked(until_ms: i64, now_ms: i64) -> AdminError {
    AdminError::Locked {
        until_ms,
        retry_after_ms: u64::try_from(until_ms.saturating_sub(now_ms)).unwrap_or(0),
    }
}

fn parse_role(account: &AccountRow) -> Result<Role, AdminError> {
    Role::parse(&account.role).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "admin account {} has an unknown role {:?}",
            account.username, account.role
        ))
        .into()
    })
}

/// Usernames are compared in lower case.
fn normalize_username(username: &str) -> String {
    username.trim().to_ascii_lowercase()
}

/// A local account name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit (no `:`,
/// so that it cannot be mistaken for `cli:…` in the audit log, and no `@`).
pub fn check_username(username: &str) -> Result<(), AdminError> {
    let ok = !username.is_empty()
        && username.len() <= 64
        && username.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && username
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(AdminError::InvalidInput(format!(
            "{username:?} is not a valid admin username: 1 to 64 characters among a-z, 0-9, \
             `.`, `_` and `-`, starting with a letter or digit"
        )))
    }
}

/// Checks a new password's length.
pub fn check_password(password: &str) -> Result<(), AdminError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AdminError::InvalidInput(format!(
            "the password must be at least {MIN_PASSWORD_CHARS} characters long"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AdminError::InvalidInput(format!(
            "the password must be at most {MAX_PASSWORD_BYTES} bytes long"
        )));
    }
    Ok(())
}

/// An argon2id hash (PHC string) of `password` with a random salt.
pub fn hash_password(
    password: &str,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<String, AdminError> {
    let salt = SaltString::generate(rng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AdminError::Internal(format!("cannot hash a password: {e}")))
}

/// Whether `password` matches the PHC `hash` (false for a malformed hash or an oversized
/// password).
pub fn verify_password(hash: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Creates a local account (audited as `account.create`).
pub fn add_account(
    conn: &mut DbConn,
    username: &str,
    role: Role,
    password: &str,
    actor: &Actor,
    now_ms: i64,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<AccountSummary, AdminError> {
    check_username(username)?;
    check_password(password)?;
    let hash = hash_password(password, rng)?;
    let result = crate::store::transaction(conn, |conn| {
        admin_store::insert_account(
            conn,
            username,
            role.as_str(),
            SOURCE_LOCAL,
            Some(&hash),
            now_ms,
        )?;
        let row = admin_store::get_account(conn, username)?
            .ok_or_else(|| StoreError::Corrupt(format!("account {username} vanished")))?;
        audit::record(
            conn,
            actor,
            action::ACCOUNT_CREATE,
            &audit::account_target(username),
            None,
            Some(&account_json(&row)),
            now_ms,
        )?;
        Ok::<_, StoreError>(row)
    });
    match result {
        Ok(row) => Ok(AccountSummary::of(&row, now_ms)),
        Err(e) if e.is_unique_violation() => {
            let from_ldap = admin_store::get_account(conn, username)?
                .is_some_and(|row| row.source == SOURCE_LDAP);
            Err(AdminError::AccountExists(if from_ldap {
                format!(
                    "an admin account named {username} already exists, created by an LDAP \
                     login; remove it first (`annuaire admin remove {username}`) to make it a \
                     local account"
                )
            } else {
                format!("an admin account named {username} already exists")
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes an account (audited as `account.remove`); its tokens stop working at once.
pub fn remove_account(
    conn: &mut DbConn,
    username: &str,
    actor: &Actor,
    now_ms: i64,
) -> Result<AccountSummary, AdminError> {
    let username = normalize_username(username);
    let removed = crate::store::transaction(conn, |conn| {
        let Some(row) = admin_store::get_account(conn, &username)? else {
            return Ok(None);
        };
        admin_store::delete_account(conn, &username)?;
        audit::record(
            conn,
            actor,
            action::ACCOUNT_REMOVE,
            &audit::account_target(&username),
            Some(&account_json(&row)),
            None,
            now_ms,
        )?;
        Ok::<_, StoreError>(Some(row))
    })?;
    removed
        .map(|row| AccountSummary::of(&row, now_ms))
        .ok_or_else(|| AdminError::NotFound(format!("no admin account {username}")))
}

/// Every account, by name.
pub fn list_accounts(conn: &mut DbConn, now_ms: i64) -> Result<Vec<AccountSummary>, AdminError> {
    Ok(admin_store::list_accounts(conn)?
        .iter()
        .map(|row| AccountSummary::of(row, now_ms))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery", &mut rand::rngs::OsRng).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse battery"));
        assert!(!verify_password(&hash, "correct horse battery!"));
        assert!(!verify_password("not a hash", "x"));
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        assert!(!verify_password(&hash, &long));
    }

    #[test]
    fn usernames_and_passwords_are_checked() {
        for ok in ["alice", "a", "jean.dupont", "ops-1", "x_y"] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "cli:root",
            "a@b",
            "-x",
            ".x",
            "a b",
            &"a".repeat(65),
        ] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
        assert!(check_password("short").is_err());
        assert!(check_password("twelve chars").is_ok());
        assert!(check_password(&"y".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
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

    fn service() -> Admin {
        let mut config = Config::default();
        config.server.name = "is.example".into();
        Admin::with_secret(&config, &[7u8; 32])
    }

    fn claims(admin: &Admin, token: &str) -> serde_json::Value {
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

    #[test]
    fn roles_parse_and_print() {
        assert_eq!(Role::parse("viewer"), Some(Role::Viewer));
        assert_eq!(Role::parse("editor"), Some(Role::Editor));
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::Editor.to_string(), "editor");
    }
}
