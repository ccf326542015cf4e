//! Admin accounts: local ones with an argon2id password hash (`annuaire admin add|remove|list`),
//! and the ones an LDAP login creates (no password here: LDAP decides).

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use rand::{CryptoRng, RngCore};
use serde::Serialize;
use serde_json::json;

use super::{AdminError, Role};
use crate::audit::{self, Actor, action};
use crate::store::admin::{self as admin_store, AccountRow};
use crate::store::{DbConn, StoreError};

/// Shortest accepted password.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest accepted password (bounds the hashing work an attacker can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// `source` of an account with a password hash.
pub const SOURCE_LOCAL: &str = "local";
/// `source` of an account created by an LDAP login (no password here: LDAP decides).
pub const SOURCE_LDAP: &str = "ldap";

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
pub(super) fn account_json(row: &AccountRow) -> serde_json::Value {
    json!({"username": row.username, "role": row.role, "source": row.source})
}

pub(super) fn parse_role(account: &AccountRow) -> Result<Role, AdminError> {
    Role::parse(&account.role).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "admin account {} has an unknown role {:?}",
            account.username, account.role
        ))
        .into()
    })
}

/// Usernames are compared in lower case.
pub(super) fn normalize_username(username: &str) -> String {
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

/// Changes an account's role (audited as `account.update`); the account's console sessions and
/// tokens carry the new role from their next request.
pub fn set_role(
    conn: &mut DbConn,
    username: &str,
    role: Role,
    actor: &Actor,
    now_ms: i64,
) -> Result<AccountSummary, AdminError> {
    let username = normalize_username(username);
    let changed = crate::store::transaction(conn, |conn| {
        let Some(before) = admin_store::get_account(conn, &username)? else {
            return Ok(None);
        };
        if before.role == role.as_str() {
            return Ok(Some(before));
        }
        admin_store::set_account_role(conn, &username, role.as_str(), now_ms)?;
        let after = admin_store::get_account(conn, &username)?
            .ok_or_else(|| StoreError::Corrupt(format!("account {username} vanished")))?;
        audit::record(
            conn,
            actor,
            action::ACCOUNT_UPDATE,
            &audit::account_target(&username),
            Some(&account_json(&before)),
            Some(&account_json(&after)),
            now_ms,
        )?;
        Ok::<_, StoreError>(Some(after))
    })?;
    changed
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

    #[test]
    fn roles_parse_and_print() {
        assert_eq!(Role::parse("viewer"), Some(Role::Viewer));
        assert_eq!(Role::parse("editor"), Some(Role::Editor));
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::Editor.to_string(), "editor");
    }
}
