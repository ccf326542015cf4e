//! Sessions of the administrators' console (`/_annuaire/console/`): a login through the same
//! checks as the API's (lockout, rate limits, LDAP) opens a session whose random token goes into
//! an `HttpOnly` cookie; the database keeps only its SHA-256. A session ends after
//! `admin.console_idle_timeout` without a request, after [`MAX_SESSION_MS`] whatever happens, at
//! logout, and as soon as its account is removed. Its role is read from the account at every
//! request, so a role change applies at once. Every form of a session carries its CSRF token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::accounts::{normalize_username, parse_role};
use super::{AdminError, Role};
use crate::audit::Actor;
use crate::store::DbConn;
use crate::store::admin as admin_store;
use crate::store::console::{self as console_store, ConsoleSessionRow};

/// The longest a console session lasts, active or not (12 hours).
pub const MAX_SESSION_MS: i64 = 12 * 3600 * 1000;
/// A session's last request is written at most this often (its idle timeout is as precise).
pub const TOUCH_EVERY_MS: i64 = 5_000;

/// A logged-in administrator of the console (one request).
#[derive(Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The account.
    pub username: String,
    /// Its current role.
    pub role: Role,
    /// The token every form of this session must carry.
    pub csrf_token: String,
    id_hash: String,
}

impl std::fmt::Debug for ConsoleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSession")
            .field("username", &self.username)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ConsoleSession {
    /// Fails unless the administrator may change things.
    pub fn require_editor(&self) -> Result<(), AdminError> {
        match self.role {
            Role::Editor => Ok(()),
            Role::Viewer => Err(AdminError::Forbidden(format!(
                "{} has the viewer role: it may read, not change",
                self.username
            ))),
        }
    }

    /// Whether `given` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, given: &str) -> bool {
        !given.is_empty() && bool::from(given.as_bytes().ct_eq(self.csrf_token.as_bytes()))
    }

    /// The audit actor.
    pub fn actor(&self) -> Actor {
        Actor::admin(&self.username)
    }
}

/// A session just opened: the cookie's token (shown once) and the session.
#[derive(Clone)]
pub struct OpenedSession {
    /// The cookie's value.
    pub token: String,
    /// The session.
    pub session: ConsoleSession,
}

impl std::fmt::Debug for OpenedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedSession")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

fn hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Opens a session for an account whose login has just succeeded.
pub fn open(
    conn: &mut DbConn,
    username: &str,
    now_ms: i64,
    rng: &mut impl RngCore,
) -> Result<OpenedSession, AdminError> {
    let username = normalize_username(username);
    let account = admin_store::get_account(conn, &username)?
        .ok_or_else(|| AdminError::InvalidToken("The account no longer exists".to_owned()))?;
    let role = parse_role(&account)?;
    let token = crate::secret::random_token(rng, 32);
    let csrf_token = crate::secret::random_token(rng, 32);
    let row = ConsoleSessionRow {
        id_hash: hash(&token),
        username: account.username.clone(),
        account_created_at: account.created_at,
        csrf_token: csrf_token.clone(),
        created_at: now_ms,
        last_seen_at: now_ms,
    };
    console_store::insert(conn, &row)?;
    Ok(OpenedSession {
        token,
        session: ConsoleSession {
            username: account.username,
            role,
            csrf_token,
            id_hash: row.id_hash,
        },
    })
}

/// The session of a cookie's token: refused when unknown, idle for longer than `idle_ms`, older
/// than [`MAX_SESSION_MS`], or when its account is gone. Records the request.
pub fn authenticate(
    conn: &mut DbConn,
    token: &str,
    idle_ms: i64,
    now_ms: i64,
) -> Result<ConsoleSession, AdminError> {
    let expired = || AdminError::InvalidToken("The console session has expired".to_owned());
    let id_hash = hash(token);
    let Some(row) = console_store::get(conn, &id_hash)? else {
        return Err(expired());
    };
    if now_ms.saturating_sub(row.last_seen_at) > idle_ms
        || now_ms.saturating_sub(row.created_at) > MAX_SESSION_MS
    {
        console_store::delete(conn, &id_hash)?;
        return Err(expired());
    }
    let account = admin_store::get_account(conn, &row.username)?;
    let Some(account) = account.filter(|a| a.created_at == row.account_created_at) else {
        console_store::delete(conn, &id_hash)?;
        return Err(AdminError::InvalidToken(
            "The session's admin account no longer exists".to_owned(),
        ));
    };
    if now_ms.saturating_sub(row.last_seen_at) >= TOUCH_EVERY_MS {
        console_store::touch(conn, &id_hash, now_ms)?;
    }
    Ok(ConsoleSession {
        role: parse_role(&account)?,
        username: account.username,
        csrf_token: row.csrf_token,
        id_hash,
    })
}

/// Ends a session.
pub fn close(conn: &mut DbConn, session: &ConsoleSession) -> Result<(), AdminError> {
    console_store::delete(conn, &session.id_hash)?;
    Ok(())
}

/// Deletes the sessions that can no longer be used.
pub fn purge(conn: &mut DbConn, idle_ms: i64, now_ms: i64) -> Result<usize, AdminError> {
    Ok(console_store::purge(
        conn,
        now_ms.saturating_sub(idle_ms),
        now_ms.saturating_sub(MAX_SESSION_MS),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_compare_whole() {
        let s = ConsoleSession {
            username: "ed".into(),
            role: Role::Viewer,
            csrf_token: "abcdef".into(),
            id_hash: "h".into(),
        };
        assert!(s.csrf_matches("abcdef"));
        assert!(!s.csrf_matches("abcde"));
        assert!(!s.csrf_matches("abcdefg"));
        assert!(!s.csrf_matches(""));
        assert!(s.require_editor().is_err());
        assert!(
            !format!("{s:?}").contains("abcdef"),
            "no token in debug output"
        );
    }
}
