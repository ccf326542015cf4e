//! Administration: admin accounts ([`accounts`]) and their tokens ([`tokens`]: JWT; a login
//! with a local password or an LDAP bind, [`login`], [`ldap_login`]), allowlist rules managed
//! through the admin API and the decision explainer ([`rules`]), directory moderation
//! ([`moderation`]), the erasure of an address (done by the identity service), the audit log
//! and the statistics ([`stats`]).
//!
//! The blocking parts take a `&mut DbConn` (the command line calls them directly); the
//! [`Admin`] service ([`service`]) runs them on the database pool and is what the HTTP layer
//! calls. No actix. `http::admin` maps [`AdminError`] to responses once.

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

pub mod accounts;
pub mod console;
pub mod ldap_login;
pub mod login;
pub mod moderation;
pub mod retention;
pub mod rules;
pub mod service;
pub mod stats;
pub mod tokens;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::policy::RuleError;
use crate::store::StoreError;

pub use crate::audit::{Actor, AuditEntry, AuditFilter, AuditPage};
pub use crate::identity::erasure::Erasure;
pub use accounts::AccountSummary;
pub use console::{ConsoleSession, OpenedSession};
pub use ldap_login::{LdapLogin, LdapVerdict};
pub use login::{LoginStep, Logins};
pub use moderation::{EntryFilter, EntryPage, ModeratedEntry};
pub use rules::{RuleFilter, RulePage};
pub use service::{Admin, AdminParts};
pub use stats::{AttemptStats, DirectoryStats, DomainAttempts, OutboxStats, Period};
pub use tokens::{IssuedToken, Session, Tokens};

/// What an administrator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything (GET).
    Viewer,
    /// Read and change everything.
    Editor,
}

impl Role {
    /// "viewer" or "editor", as stored and in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
        }
    }

    /// Parses "viewer" or "editor".
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an administrative request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// No bearer token in the request.
    #[error("no admin access token in the request")]
    MissingToken,
    /// The token is malformed, signed with another key, for another audience or issuer,
    /// expired, revoked, or its account is gone. The text says which, for the operator.
    #[error("{0}")]
    InvalidToken(String),
    /// The caller may not do this (a viewer changing something).
    #[error("{0}")]
    Forbidden(String),
    /// Wrong username or password (never says which).
    #[error("invalid username or password")]
    BadCredentials,
    /// The account is locked after too many failed logins.
    #[error("this account is locked after too many failed logins")]
    Locked {
        /// Until when (ms).
        until_ms: i64,
        /// How long from now (ms).
        retry_after_ms: u64,
    },
    /// Too many login attempts from this address or for this username.
    #[error("too many login attempts")]
    RateLimited {
        /// When to retry (ms from now).
        retry_after_ms: u64,
    },
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// Rules are invalid: the same messages as the file importer.
    #[error("{}", join_rule_errors(.0))]
    InvalidRules(Vec<RuleError>),
    /// The rule already exists (same kind and value), named with both sources.
    #[error("{}", join_rule_errors(.0))]
    RuleExists(Vec<RuleError>),
    /// A file-sourced rule cannot be changed through the API.
    #[error("{0}")]
    FileRule(String),
    /// An account with this name already exists.
    #[error("{0}")]
    AccountExists(String),
    /// A malformed parameter.
    #[error("{0}")]
    InvalidInput(String),
    /// A malformed email address.
    #[error("{0}")]
    InvalidAddress(String),
    /// The LDAP directory cannot be used for a login (down, the service account refused, a
    /// search failed); the detail is for the logs.
    #[error("LDAP: {0}")]
    LdapUnavailable(String),
    /// Something that should not fail did (hashing, token encoding, a secret file).
    #[error("{0}")]
    Internal(String),
}

/// One error per line, each "path:line: message".
pub fn join_rule_errors(errors: &[RuleError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Page sizes of the list endpoints: the default and the largest accepted.
pub const DEFAULT_PAGE: usize = 100;
/// The largest page a caller may ask for.
pub const MAX_PAGE: usize = 1000;

/// A caller's `limit`, checked.
pub fn page_limit(limit: Option<usize>) -> Result<usize, AdminError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(0) => Err(AdminError::InvalidInput(
            "`limit` must be at least 1".to_owned(),
        )),
        Some(n) if n > MAX_PAGE => Err(AdminError::InvalidInput(format!(
            "`limit` must be at most {MAX_PAGE}"
        ))),
        Some(n) => Ok(n),
    }
}
