//! Identity Service domain (Matrix Identity Service API v2).
//!
//! Pure parts: canonical JSON and ed25519 signatures ([`signing`]), hashed-lookup hashing
//! ([`hashing`]) and the X-Matrix request signature header ([`xmatrix`]). Service parts, which
//! read the database through [`crate::store::identity`] and call homeservers through
//! [`crate::federation`]: the long-term signing key ([`keys`]), accounts and access tokens
//! ([`accounts`]), terms of service ([`terms`]), associations ([`associations`]), hashed
//! lookups and the pepper ([`lookup`]), 3PID invitations ([`invites`]), binds and unbinds
//! ([`bindings`]) and the delivery of invitations to newly bound users ([`delivery`]).
//!
//! Nothing here knows HTTP: functions return [`IdentityError`], which `http::identity` maps to
//! Matrix errors. Time (`now_ms`) and randomness (`rng`) are parameters.
//! [`sessions`] holds the email validation sessions (with their storage and mail).

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

pub mod account_data;
pub mod accounts;
pub mod associations;
pub mod bindings;
pub mod delivery;
pub mod erasure;
pub mod import_sydent;
pub mod index;
pub mod invites;
pub mod keys;
pub mod live;
pub mod lookup;
pub mod sessions;
pub mod shard;
pub mod terms;

use std::net::IpAddr;
use std::sync::Arc;

use crate::allowlist::Allowlist;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::directory::DirectoryService;
use crate::federation::FederationClient;
use crate::federation::FederationError;
use crate::mail::outbox::Mailer;
use crate::matrix::signing::SigningKey;
use crate::ratelimit::KeyedLimit;
use crate::store::{Db, DbConn, StoreError};
use sessions::SessionError;
use terms::Terms;

/// Why an identity-service request failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No access token, or an unknown or expired one (401 `M_UNAUTHORIZED`).
    #[error("{0}")]
    Unauthorized(String),
    /// The account has not accepted the current terms (403 `M_TERMS_NOT_SIGNED`).
    #[error("Please accept the terms of service before continuing")]
    TermsNotSigned,
    /// The caller may not act for this user (403 `M_UNAUTHORIZED`).
    #[error("{0}")]
    NotYours(String),
    /// The caller is not allowed to do this at all (403 `M_FORBIDDEN`).
    #[error("{0}")]
    Forbidden(String),
    /// A parameter is malformed (400 `M_INVALID_PARAM`).
    #[error("{0}")]
    InvalidParam(String),
    /// The medium is not supported (400 `M_UNRECOGNIZED`).
    #[error("{0}")]
    UnsupportedMedium(String),
    /// The email address is not valid (400 `M_INVALID_EMAIL`).
    #[error("Invalid email address: {0}")]
    InvalidEmail(String),
    /// The address is already bound (400 `M_THREEPID_IN_USE`, with the `mxid`).
    #[error("This address is already bound to a Matrix account")]
    ThreepidInUse {
        /// Who it is bound to.
        mxid: String,
    },
    /// The policy refuses the address (403 `M_THREEPID_DENIED`, with `decision` and
    /// `reason_code`).
    #[error("{message}")]
    ThreepidDenied {
        /// Why, for people.
        message: String,
        /// Why, as the policy's stable code.
        reason_code: crate::policy::ReasonCode,
    },
    /// The address may not be bound to this Matrix ID: its homeserver is not the one the policy
    /// assigns to the address (403 `M_BINDING_NOT_PERMITTED`).
    #[error("{0}")]
    BindingNotPermitted(String),
    /// The validation session cannot be used (its own Matrix errors).
    #[error(transparent)]
    Session(SessionError),
    /// Too many requests (429 `M_LIMIT_EXCEEDED`).
    #[error("Too many requests; retry later")]
    RateLimited {
        /// When to retry.
        retry_after_ms: u64,
    },
    /// The lookup pepper is not the current one (400 `M_INVALID_PEPPER`, with the current one).
    #[error("Unknown or invalid pepper; it may have been rotated")]
    InvalidPepper {
        /// The current pepper.
        current: String,
    },
    /// Too many items in one request (413 `M_TOO_LARGE`).
    #[error("{0}")]
    TooLarge(String),
    /// No such key (404 `M_NOT_FOUND`).
    #[error("The public key was not found")]
    KeyNotFound,
    /// No such invitation token (404 `M_UNRECOGNIZED`).
    #[error("Unrecognized invitation token")]
    UnknownInvite,
    /// A homeserver could not be asked (502 `M_UNKNOWN`).
    #[error("{0}")]
    Homeserver(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something that should not fail did (a bug, logged; 500 `M_UNKNOWN`).
    #[error("{0}")]
    Internal(String),
}

impl IdentityError {
    /// Maps a federation failure met while checking a caller's credentials.
    fn from_federation(server: &str, e: FederationError) -> Self {
        match e {
            FederationError::InvalidServerName(_) | FederationError::InvalidUrl(_) => {
                IdentityError::InvalidParam(format!("Invalid homeserver name {server:?}"))
            }
            FederationError::Forbidden { .. } => IdentityError::Forbidden(format!(
                "The homeserver {server} resolves to an address this server may not contact"
            )),
            e if e.is_authentication_failure() => {
                IdentityError::Unauthorized(format!("The homeserver {server} rejected the token"))
            }
            other => {
                tracing::warn!(server, error = %other, "homeserver request failed");
                IdentityError::Homeserver(format!("Could not reach the homeserver {server}"))
            }
        }
    }
}

/// Why the identity service could not start.
#[derive(Debug, thiserror::Error)]
pub enum IdentityStartError {
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A configured file is unusable (the message names the key).
    #[error("{0}")]
    Config(String),
}

/// What the identity service is built from: the shared plumbing and the services it calls.
pub struct IdentityParts {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub db: Db,
    /// The clock every expiry decision reads.
    pub clock: SharedClock,
    /// The live allowlist (which homeserver an address belongs to).
    pub allowlist: Arc<Allowlist>,
    /// Outgoing mail (validation and invitation mails).
    pub mailer: Arc<Mailer>,
    /// Calls to homeservers (OpenID, keys, `onbind`).
    pub federation: FederationClient,
    /// The directory, kept in step with binds and unbinds.
    pub directory: Arc<DirectoryService>,
}

/// The Identity Service: accounts, terms, validation sessions, lookups, binds, invitations.
/// Its own state is read-only (the long-term signing key, the terms, this instance's
/// requestToken limit and the delivery job's wake-up call); everything else lives in the
/// database, so instances share it.
pub struct IdentityService {
    config: Arc<Config>,
    db: Db,
    clock: SharedClock,
    allowlist: Arc<Allowlist>,
    mailer: Arc<Mailer>,
    federation: FederationClient,
    directory: Arc<DirectoryService>,
    request_token_per_ip: KeyedLimit<IpAddr>,
    keys: arc_swap::ArcSwap<keys::KeyRing>,
    terms: arc_swap::ArcSwap<Terms>,
    delivery_wake: tokio::sync::Notify,
    /// Tokens, consents, the pepper and the lookup index, kept in memory and in step with the
    /// database by the change feed (see [`live`]).
    live: Arc<live::Live>,
}

impl std::fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityService")
            .field("signing_key", &self.keys.load().current)
            .field("terms", &self.terms.load().fingerprint())
            .finish_non_exhaustive()
    }
}

impl IdentityService {
    /// Loads the signing key (file or database, created once), makes sure a lookup pepper
    /// exists, and reads the terms file.
    pub async fn open(parts: IdentityParts) -> Result<IdentityService, IdentityStartError> {
        let config = parts.config.clone();
        let now_ms = parts.clock.now_ms();
        let db = parts.db.clone();
        let (key_ring, terms, position, pepper) = tokio::task::spawn_blocking(move || {
            let mut conn = db.get()?;
            let mut rng = rand::rngs::OsRng;
            let key = keys::load_key_ring(
                &mut conn,
                config.server.signing_key_file.as_deref(),
                &mut rng,
                now_ms,
            )?;
            // The feed position first: what changes after it is applied to what is read next.
            let position = crate::store::changes::last_id(&mut conn)?;
            let pepper = lookup::current_pepper(&mut conn, &mut rng, now_ms)?;
            let terms = match &config.terms.file {
                Some(path) => Terms::load(path)
                    .map_err(|e| IdentityStartError::Config(format!("terms.file: {e}")))?,
                None => Terms::none(),
            };
            Ok::<_, IdentityStartError>((key, terms, position, pepper))
        })
        .await
        .map_err(|e| IdentityStartError::Config(format!("start-up task failed: {e}")))??;
        Ok(IdentityService {
            live: Arc::new(live::Live::new(parts.clock.clone(), position, pepper)),
            request_token_per_ip: KeyedLimit::new(&parts.config.rate_limits.request_token_per_ip),
            config: parts.config,
            db: parts.db,
            clock: parts.clock,
            allowlist: parts.allowlist,
            mailer: parts.mailer,
            federation: parts.federation,
            directory: parts.directory,
            keys: arc_swap::ArcSwap::from_pointee(key_ring),
            terms: arc_swap::ArcSwap::from_pointee(terms),
            delivery_wake: tokio::sync::Notify::new(),
        })
    }

    /// Forgets full rate-limit buckets (call periodically).
    pub fn housekeep(&self) {
        self.request_token_per_ip.housekeep();
    }

    /// The long-term key that signs now.
    pub fn signing_key(&self) -> Arc<SigningKey> {
        self.keys.load().current.clone()
    }

    /// The terms users must accept.
    pub fn terms(&self) -> Arc<Terms> {
        self.terms.load_full()
    }

    /// Reads `terms.file` again (SIGHUP); on error the current terms stay.
    pub fn reload_terms(&self) -> Result<(), String> {
        let Some(path) = &self.config.terms.file else {
            return Ok(());
        };
        let terms = Terms::load(path).map_err(|e| format!("terms.file: {e}"))?;
        let before = self.terms.load().fingerprint().to_owned();
        if terms.fingerprint() != before {
            tracing::info!(
                version = terms.master_version(),
                "terms of service reloaded"
            );
        }
        self.terms.store(Arc::new(terms));
        Ok(())
    }

    /// Wakes this instance's invitation delivery job (after a bind scheduled deliveries).
    pub fn wake_delivery(&self) {
        self.delivery_wake.notify_one();
    }

    /// Resolves when [`IdentityService::wake_delivery`] is called.
    pub(crate) async fn delivery_woken(&self) {
        self.delivery_wake.notified().await;
    }
}

/// How often expired tokens and invitations are purged.
const HOUSEKEEPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Deletes expired access tokens, long-expired, never-bound invitations and old rows of the
/// change feed (blocking); (tokens, invitations) deleted. Idempotent, so every instance may
/// run it.
pub fn purge_expired(conn: &mut DbConn, now_ms: i64) -> Result<(usize, usize), StoreError> {
    let tokens = crate::store::identity::purge_expired_tokens(conn, now_ms)?;
    let invites = invites::purge_expired(conn, now_ms)?;
    let retention = i64::try_from(live::FEED_RETENTION.as_millis()).unwrap_or(i64::MAX);
    crate::store::changes::purge(conn, now_ms.saturating_sub(retention))?;
    Ok((tokens, invites))
}

/// Starts this instance's identity purge job on the current runtime; it ends with it.
pub fn start_housekeeping(identity: &Arc<IdentityService>) {
    let identity = identity.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = identity.clock.now_ms();
            match identity.db.run(move |conn| purge_expired(conn, now)).await {
                Ok((0, 0)) => {}
                Ok((tokens, invites)) => {
                    tracing::info!(
                        tokens,
                        invites,
                        "purged expired identity tokens and invitations"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "identity purge failed; retrying later"),
            }
        }
    });
}

/// The base URL homeservers use to reach this identity server: `http.public_base_url` when set,
/// else `https://{server.name}` (Synapse always calls identity servers over HTTPS).
pub fn public_base(config: &Config) -> String {
    match &config.http.public_base_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("https://{}", config.server.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_base_defaults_to_https_server_name() {
        let mut c = Config::default();
        c.server.name = "id.example".into();
        assert_eq!(public_base(&c), "https://id.example");
        c.http.public_base_url = Some("https://annuaire.example/".into());
        assert_eq!(public_base(&c), "https://annuaire.example");
    }
}
