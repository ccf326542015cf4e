//! Logging in: a local account's password, or an LDAP bind of a member of the admin groups;
//! failed logins lock the account after `admin.lockout_threshold` in a row (in the database, so
//! every instance agrees); attempts are rate limited per IP and per username (per instance).

use std::net::IpAddr;
use std::sync::OnceLock;

use rand::RngCore;
use serde_json::json;

use super::accounts::{
    SOURCE_LDAP, account_json, check_username, hash_password, normalize_username, verify_password,
};
use super::ldap_login::{LdapLogin, LdapVerdict};
use super::tokens::{IssuedToken, LEEWAY_SECS, Tokens};
use super::{AdminError, Role};
use crate::audit::{self, Actor, action};
use crate::config::Config;
use crate::ratelimit::KeyedLimit;
use crate::store::admin::{self as admin_store, AccountRow};
use crate::store::{DbConn, StoreError};

/// Where a login goes after the local check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStep {
    /// Done: the local password was right.
    Token(IssuedToken),
    /// LDAP decides, for this (normalised) username.
    Ldap(String),
}

/// Logins of one instance: lockout settings, rate limits and the LDAP login.
pub struct Logins {
    lockout_threshold: i32,
    lockout_ms: i64,
    login_per_ip: KeyedLimit<IpAddr>,
    login_per_username: KeyedLimit<String>,
    /// The LDAP login (`admin.ldap_user_filter`), if on.
    ldap: Option<LdapLogin>,
    /// A hash verified when the username is unknown, so that timing does not reveal accounts.
    dummy_hash: OnceLock<Option<String>>,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins")
            .field("lockout_threshold", &self.lockout_threshold)
            .field("ldap", &self.ldap.is_some())
            .finish_non_exhaustive()
    }
}

impl Logins {
    /// The settings of `[admin]`, and the LDAP login when configured.
    pub fn from_config(config: &Config) -> Result<Logins, AdminError> {
        let admin = &config.admin;
        Ok(Logins {
            lockout_threshold: i32::try_from(admin.lockout_threshold).unwrap_or(i32::MAX),
            lockout_ms: admin.lockout_duration.as_millis_i64(),
            login_per_ip: KeyedLimit::new(&admin.login_per_ip),
            login_per_username: KeyedLimit::new(&admin.login_per_username),
            ldap: LdapLogin::from_config(config)?,
            dummy_hash: OnceLock::new(),
        })
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
        tokens: &Tokens,
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
        Self::succeed(conn, &account, tokens, now_ms, rng).map(LoginStep::Token)
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
        tokens: &Tokens,
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
        Self::succeed(conn, &account, tokens, now_ms, rng)
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
        conn: &mut DbConn,
        account: &AccountRow,
        tokens: &Tokens,
        now_ms: i64,
        rng: &mut impl RngCore,
    ) -> Result<IssuedToken, AdminError> {
        admin_store::record_login_success(conn, &account.username, now_ms)?;
        admin_store::purge_revoked(conn, now_ms - LEEWAY_SECS * 1000)?;
        tokens.mint(account, tokens.lifetime_ms(), now_ms, rng)
    }

    fn dummy_hash(&self) -> Option<&str> {
        self.dummy_hash
            .get_or_init(|| {
                hash_password("not a password of any account", &mut rand::rngs::OsRng).ok()
            })
            .as_deref()
    }
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
