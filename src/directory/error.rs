//! What can go wrong in the directory; `http::directory` turns it into Matrix errors.

use super::search::QueryError;
use crate::store::StoreError;

/// A directory operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The search term has nothing searchable in it.
    #[error("{0}")]
    Query(#[from] QueryError),
    /// Not a Matrix user id (`@localpart:server`).
    #[error("{0:?} is not a Matrix user id (@localpart:server)")]
    InvalidUserId(String),
    /// No entry for this user.
    #[error("{0} has no directory entry")]
    NotFound(String),
    /// An admin name with nothing visible in it.
    #[error("the name must contain visible characters")]
    InvalidName,
    /// The request's `Host` is not one of `directory.client_hosts`.
    #[error("this directory does not serve the host {0:?}")]
    UnknownHost(String),
    /// No access token in the request.
    #[error("missing access token")]
    MissingToken,
    /// The homeserver does not know the access token.
    #[error("unknown access token")]
    UnknownToken,
    /// The token belongs to a user of another homeserver than the one the request came through.
    #[error("the access token is not one of {server_name}'s users")]
    WrongServer {
        /// The homeserver the `Host` header names.
        server_name: String,
    },
    /// External users may not search (`directory.externals_may_search`).
    #[error("external users may not search the directory")]
    ExternalsMayNotSearch,
    /// A homeserver signed request without any signature or X-Matrix header.
    #[error("a request signed by an allowed homeserver is required")]
    Unauthenticated,
    /// The signing homeserver is not in `directory.allowed_homeservers`.
    #[error("{0} is not allowed to use this endpoint")]
    HomeserverNotAllowed(String),
    /// The signature or X-Matrix header does not verify.
    #[error("homeserver authentication failed: {0}")]
    BadSignature(String),
    /// A homeserver we had to ask (whoami, keys) did not answer usefully.
    #[error("homeserver unavailable: {0}")]
    HomeserverUnavailable(String),
    /// A replication batch that cannot be applied.
    #[error("invalid replication batch: {0}")]
    InvalidBatch(String),
    /// A profile report that cannot be applied.
    #[error("{0}")]
    InvalidProfile(String),
    /// A replication batch touching a user of another homeserver.
    #[error("{user_id} is not a user of {origin}")]
    ForeignUser {
        /// The user the batch names.
        user_id: String,
        /// The homeserver that sent the batch.
        origin: String,
    },
    /// A malformed federation request body (400 `M_BAD_JSON`, as Synapse answers them).
    #[error("{0}")]
    BadJson(String),
    /// A federation request addressed to a server this directory does not answer for.
    #[error("this server does not answer for the destination {0}")]
    WrongDestination(String),
    /// Too many requests from one server (429 `M_LIMIT_EXCEEDED`).
    #[error("too many requests; retry later")]
    RateLimited {
        /// When to retry.
        retry_after_ms: u64,
    },
    /// Another LDAP sync holds the job lock.
    #[error("another LDAP sync is running; try again when it has finished")]
    SyncInProgress,
    /// The agency LDAP directory failed.
    #[error(transparent)]
    Ldap(#[from] crate::ldap::LdapError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
