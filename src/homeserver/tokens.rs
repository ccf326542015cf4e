//! Homeserver API tokens: one per homeserver, printed once by `annuaire homeserver add` and
//! stored as a SHA-256 hash (as identity access tokens are: tokens are random, so a fast hash
//! is enough, and a database leak gives no usable token). `revoke` stops a token at once; `add`
//! after a revocation makes a new one. Every change is audited (`homeserver.add`,
//! `homeserver.revoke`); the token itself is never written anywhere but to the operator.

use rand::RngCore;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Homeserver, HomeserverError, HomeserverService};
use crate::audit::{self, Actor, action};
use crate::identity::accounts::token_hash;
use crate::matrix::server_name::validate_server_name;
use crate::store::homeserver::{self as store, HomeserverTokenRow};
use crate::store::{DbConn, StoreError};

/// Length of a token: 48 letters and digits carry about 285 bits.
pub const TOKEN_LEN: usize = 48;
/// Longer bearer tokens are not ours: refused before hashing.
const MAX_TOKEN_LEN: usize = 512;
/// `last_used_at` is written at most this often per homeserver (ms).
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// A homeserver's token as listed (never the token or its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HomeserverToken {
    /// The homeserver's server name.
    pub server_name: String,
    /// `active` or `revoked`.
    pub status: &'static str,
    /// When the token was made (ms).
    pub created_at: i64,
    /// Who made it.
    pub created_by: String,
    /// When it was revoked (ms).
    pub revoked_at: Option<i64>,
    /// When it was last used, to the minute (ms).
    pub last_used_at: Option<i64>,
}

impl HomeserverToken {
    fn of(row: &HomeserverTokenRow) -> HomeserverToken {
        HomeserverToken {
            server_name: row.server_name.clone(),
            status: if row.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            },
            created_at: row.created_at,
            created_by: row.created_by.clone(),
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
        }
    }

    fn audit_json(&self) -> Value {
        json!({
            "server_name": self.server_name,
            "status": self.status,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "revoked_at": self.revoked_at,
        })
    }
}

/// A token just made: shown once, then only its hash is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The homeserver it acts for.
    pub server_name: String,
    /// The bearer token.
    pub token: String,
}

// The token is a credential.
impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A server name as tokens are kept under: trimmed, lower-case, valid.
pub fn normalise_server_name(text: &str) -> Result<String, HomeserverError> {
    let name = text.trim().to_ascii_lowercase();
    validate_server_name(&name).map_err(|e| {
        HomeserverError::InvalidServerName(format!("{text:?} is not a server name: {e}"))
    })?;
    Ok(name)
}

/// Makes the token of `server_name` (`annuaire homeserver add`): refused while the server has
/// an unrevoked one; after a revocation the new token replaces the old row. Audited.
pub fn add_homeserver(
    conn: &mut DbConn,
    server_name: &str,
    actor: &Actor,
    now_ms: i64,
    rng: &mut impl RngCore,
) -> Result<NewToken, HomeserverError> {
    let server_name = normalise_server_name(server_name)?;
    let token = crate::secret::random_token(rng, TOKEN_LEN);
    let row = HomeserverTokenRow {
        server_name: server_name.clone(),
        token_hash: token_hash(&token),
        created_at: now_ms,
        created_by: actor.as_str().to_owned(),
        revoked_at: None,
        last_used_at: None,
    };
    crate::store::transaction(conn, |conn| {
        let before = store::token_of(conn, &server_name)?;
        if let Some(existing) = &before
            && existing.revoked_at.is_none()
        {
            return Err(HomeserverError::TokenExists(format!(
                "{server_name} already has a token (made by {}); revoke it first with \
                 `annuaire homeserver revoke {server_name}`",
                existing.created_by
            )));
        }
        store::put_token(conn, &row)?;
        audit::record(
            conn,
            actor,
            action::HOMESERVER_ADD,
            &audit::homeserver_target(&server_name),
            before
                .as_ref()
                .map(|b| HomeserverToken::of(b).audit_json())
                .as_ref(),
            Some(&HomeserverToken::of(&row).audit_json()),
            now_ms,
        )?;
        Ok::<_, HomeserverError>(())
    })?;
    tracing::info!(homeserver = %server_name, actor = %actor, "homeserver API token made");
    Ok(NewToken { server_name, token })
}

/// Every homeserver that has or had a token (`annuaire homeserver list`), by name.
pub fn list_homeservers(conn: &mut DbConn) -> Result<Vec<HomeserverToken>, StoreError> {
    Ok(store::tokens(conn)?
        .iter()
        .map(HomeserverToken::of)
        .collect())
}

/// Revokes the token of `server_name` (`annuaire homeserver revoke`): its next call is refused
/// (401). Audited.
pub fn revoke_homeserver(
    conn: &mut DbConn,
    server_name: &str,
    actor: &Actor,
    now_ms: i64,
) -> Result<HomeserverToken, HomeserverError> {
    let server_name = normalise_server_name(server_name)?;
    let revoked = crate::store::transaction(conn, |conn| {
        let before = store::token_of(conn, &server_name)?
            .filter(|row| row.revoked_at.is_none())
            .ok_or_else(|| {
                HomeserverError::NoToken(format!("{server_name} has no token to revoke"))
            })?;
        store::revoke_token(conn, &server_name, now_ms)?;
        let after = HomeserverTokenRow {
            revoked_at: Some(now_ms),
            ..before.clone()
        };
        audit::record(
            conn,
            actor,
            action::HOMESERVER_REVOKE,
            &audit::homeserver_target(&server_name),
            Some(&HomeserverToken::of(&before).audit_json()),
            Some(&HomeserverToken::of(&after).audit_json()),
            now_ms,
        )?;
        Ok::<_, HomeserverError>(HomeserverToken::of(&after))
    })?;
    tracing::info!(homeserver = %server_name, actor = %actor, "homeserver API token revoked");
    Ok(revoked)
}

impl HomeserverService {
    /// The homeserver whose unrevoked token this is; 401 otherwise.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Homeserver, HomeserverError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(HomeserverError::Unauthorized(
                "A homeserver token is required (Authorization: Bearer …, from \
                 `annuaire homeserver add SERVER_NAME`)"
                    .into(),
            ));
        };
        let unknown =
            || HomeserverError::Unauthorized("Unknown or revoked homeserver token".to_owned());
        if token.len() > MAX_TOKEN_LEN {
            return Err(unknown());
        }
        let hash = token_hash(token);
        let now = self.clock.now_ms();
        let row = self
            .db
            .run(move |conn| {
                let row = store::active_token(conn, &hash)?;
                if let Some(row) = &row
                    && row
                        .last_used_at
                        .is_none_or(|at| now - at >= LAST_USED_RESOLUTION_MS)
                {
                    store::touch_token(conn, &row.server_name, now)?;
                }
                Ok(row)
            })
            .await?;
        match row {
            Some(row) => Ok(Homeserver {
                server_name: row.server_name,
            }),
            None => {
                tracing::info!("homeserver API call with an unknown or revoked token");
                Err(unknown())
            }
        }
    }
}

impl HomeserverService {
    /// Every homeserver that has or had a token, by name (the console's list).
    pub async fn list_tokens(&self) -> Result<Vec<HomeserverToken>, HomeserverError> {
        Ok(self.db.run(list_homeservers).await?)
    }

    /// Makes the token of `server_name` (the console's "add"); it is shown once.
    pub async fn add_token(
        &self,
        server_name: &str,
        actor: &Actor,
    ) -> Result<NewToken, HomeserverError> {
        let now_ms = self.clock.now_ms();
        let (server_name, actor) = (server_name.to_owned(), actor.clone());
        self.db
            .run(move |conn| {
                Ok(add_homeserver(
                    conn,
                    &server_name,
                    &actor,
                    now_ms,
                    &mut rand::rngs::OsRng,
                ))
            })
            .await?
    }

    /// Revokes the token of `server_name` (the console's "revoke").
    pub async fn revoke_token(
        &self,
        server_name: &str,
        actor: &Actor,
    ) -> Result<HomeserverToken, HomeserverError> {
        let now_ms = self.clock.now_ms();
        let (server_name, actor) = (server_name.to_owned(), actor.clone());
        self.db
            .run(move |conn| Ok(revoke_homeserver(conn, &server_name, &actor, now_ms)))
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_kept_lower_case_and_checked() {
        assert_eq!(
            normalise_server_name(" Agent.Finances.example:8448 ").unwrap(),
            "agent.finances.example:8448"
        );
        assert!(normalise_server_name("not a server").is_err());
        assert!(normalise_server_name("").is_err());
    }

    #[test]
    fn new_tokens_hide_the_token_in_debug_output() {
        let t = NewToken {
            server_name: "hs.example".into(),
            token: "very-secret".into(),
        };
        assert!(!format!("{t:?}").contains("very-secret"));
    }
}
