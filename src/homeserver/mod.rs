//! The homeserver API's domain side (`/_annuaire/homeserver/v1/…`, issue 11): homeservers that
//! validate addresses themselves (stock Synapse with the `annuaire-synapse` module of
//! `contrib/synapse`) tell annuaire which of their users holds which address, what profile they
//! set, and who was deactivated, so that associations, verified names and the directory fill
//! themselves.
//!
//! - [`tokens`]: one bearer token per homeserver, stored hashed, made, listed and revoked on the
//!   command line (`annuaire homeserver add|list|revoke`), every change audited.
//! - [`accounts`]: the calls (bind, unbind, display name, profile, deactivation), each checked
//!   against the token's scope first: a token acts only for Matrix IDs of its own server, and
//!   only on addresses the policy sends to that server or its shadow.
//!
//! Binds and unbinds go through the Identity Service's own paths
//! ([`IdentityService::bind_address`], [`IdentityService::unbind_address`]), so an association
//! made here is exactly one `/v2/3pid/bind` makes: signed, hashed for lookups, pending
//! invitations delivered, directory entry published.

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

pub mod accounts;
pub mod tokens;

use std::sync::Arc;

use crate::allowlist::Allowlist;
use crate::clock::SharedClock;
use crate::directory::{DirectoryError, DirectoryService};
use crate::identity::{IdentityError, IdentityService};
use crate::store::{Db, StoreError};

pub use accounts::{
    BoundAssociation, Deactivation, DeactivationOutcome, ProfileReport, ThreepidRequest, Unbound,
};
pub use tokens::{HomeserverToken, NewToken};

/// Why a homeserver API call or a token command failed.
#[derive(Debug, thiserror::Error)]
pub enum HomeserverError {
    /// No token, or an unknown or revoked one (401 `M_UNAUTHORIZED`).
    #[error("{0}")]
    Unauthorized(String),
    /// Outside the token's scope; the message names the rule that refused (403 `M_FORBIDDEN`).
    #[error("{0}")]
    OutOfScope(String),
    /// A malformed parameter (400 `M_INVALID_PARAM`).
    #[error("{0}")]
    InvalidParam(String),
    /// Not an email address (400 `M_INVALID_EMAIL`).
    #[error("Invalid email address: {0}")]
    InvalidEmail(String),
    /// A server name that is not one (command line).
    #[error("{0}")]
    InvalidServerName(String),
    /// The homeserver already has a token (command line).
    #[error("{0}")]
    TokenExists(String),
    /// The homeserver has no token to revoke (command line).
    #[error("{0}")]
    NoToken(String),
    /// The Identity Service failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The directory failed.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the homeserver service is built from.
pub struct HomeserverParts {
    /// The database (tokens, associations to read).
    pub db: Db,
    /// The clock every decision reads.
    pub clock: SharedClock,
    /// The live allowlist (which homeserver an address belongs to).
    pub allowlist: Arc<Allowlist>,
    /// The Identity Service (binds, unbinds, erasure).
    pub identity: Arc<IdentityService>,
    /// The directory (verified names, profiles).
    pub directory: Arc<DirectoryService>,
}

/// The homeserver API: token checks and the calls homeservers make. It keeps no state of its
/// own; tokens and everything else live in the database.
pub struct HomeserverService {
    db: Db,
    clock: SharedClock,
    allowlist: Arc<Allowlist>,
    identity: Arc<IdentityService>,
    directory: Arc<DirectoryService>,
}

impl std::fmt::Debug for HomeserverService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HomeserverService").finish_non_exhaustive()
    }
}

impl HomeserverService {
    /// A service over the given parts.
    pub fn new(parts: HomeserverParts) -> HomeserverService {
        HomeserverService {
            db: parts.db,
            clock: parts.clock,
            allowlist: parts.allowlist,
            identity: parts.identity,
            directory: parts.directory,
        }
    }
}

/// An authenticated homeserver: the server its token was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Homeserver {
    /// Its server name (lower-case).
    pub server_name: String,
}
