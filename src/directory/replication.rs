//! Profile replication from homeservers (Tchap's `replicate_profiles`): numbered batches of
//! `{user_id: {display_name, avatar_url} | null}`, where `null` means the account was
//! deactivated.
//!
//! A batch updates the avatar and the active state of entries that already exist (entries come
//! from binds), and only of the sending homeserver's users: a batch naming anyone else is
//! refused whole. The display name is ignored: verified names come from authoritative sources,
//! not from what users type. Batches not newer than the last one accepted are ignored, so a
//! retried or replayed batch changes nothing.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::entries::split_user_id;
use super::error::DirectoryError;
use super::service::DirectoryService;
use crate::store::directory as store;

/// The most profiles one batch may carry.
pub const MAX_BATCH: usize = 500;

/// The longest avatar URL kept.
const MAX_AVATAR_URL: usize = 512;

/// One replication request's body (its `signatures` are checked by the caller).
#[derive(Debug, Clone, Deserialize)]
pub struct ReplicationBatch {
    /// Increases with each batch the homeserver sends.
    pub batchnum: i64,
    /// User id → profile, or `null` for a deactivated account.
    pub batch: BTreeMap<String, Option<ReplicatedProfile>>,
    /// The sending homeserver.
    pub origin_server: String,
}

/// A replicated profile.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReplicatedProfile {
    /// What the user typed as their name (not used: not verified).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Their avatar (`mxc://…`).
    #[serde(default)]
    pub avatar_url: Option<String>,
}

/// What a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicationOutcome {
    /// False when the batch was not newer than the last one accepted (nothing changed).
    pub accepted: bool,
    /// Entries updated.
    pub updated: usize,
    /// Users without an entry (not bound), ignored.
    pub unknown: usize,
}

/// A usable avatar URL: `mxc://` only (clients fetch it from their homeserver), length capped.
pub(crate) fn avatar(url: Option<&str>) -> Option<String> {
    url.map(str::trim)
        .filter(|u| u.starts_with("mxc://") && u.len() <= MAX_AVATAR_URL)
        .map(str::to_owned)
}

impl DirectoryService {
    /// Applies a batch sent (and signed) by `origin`.
    pub async fn replicate_profiles(
        &self,
        origin: &str,
        batch: ReplicationBatch,
    ) -> Result<ReplicationOutcome, DirectoryError> {
        if batch.origin_server != origin {
            return Err(DirectoryError::BadSignature(format!(
                "origin_server {} is not the signing server {origin}",
                batch.origin_server
            )));
        }
        if batch.batch.len() > MAX_BATCH {
            return Err(DirectoryError::InvalidBatch(format!(
                "{} profiles; at most {MAX_BATCH} per batch",
                batch.batch.len()
            )));
        }
        if batch.batchnum < 0 {
            return Err(DirectoryError::InvalidBatch(
                "batchnum must not be negative".into(),
            ));
        }
        let mut updates = Vec::with_capacity(batch.batch.len());
        for (user_id, profile) in batch.batch {
            let (_, server) = split_user_id(&user_id)?;
            if server != origin {
                return Err(DirectoryError::ForeignUser {
                    user_id,
                    origin: origin.to_owned(),
                });
            }
            let (active, avatar_url) = match profile {
                Some(p) => (true, avatar(p.avatar_url.as_deref())),
                None => (false, None),
            };
            updates.push((user_id, active, avatar_url));
        }

        let now = self.clock.now_ms();
        let origin_owned = origin.to_owned();
        let batchnum = batch.batchnum;
        let outcome = self
            .db
            .run(move |conn| {
                crate::store::transaction(conn, |conn| {
                    let mut outcome = ReplicationOutcome::default();
                    if !store::accept_replication_batch(conn, &origin_owned, batchnum, now)? {
                        return Ok(outcome);
                    }
                    outcome.accepted = true;
                    for (user_id, active, avatar_url) in &updates {
                        if store::apply_replicated_profile(
                            conn,
                            user_id,
                            &origin_owned,
                            avatar_url.as_deref(),
                            *active,
                            now,
                        )? {
                            outcome.updated += 1;
                        } else {
                            outcome.unknown += 1;
                        }
                    }
                    Ok(outcome)
                })
            })
            .await?;
        if outcome.accepted {
            tracing::info!(
                origin,
                batch = batchnum,
                updated = outcome.updated,
                unknown = outcome.unknown,
                "profile batch replicated"
            );
        } else {
            tracing::info!(origin, batch = batchnum, "stale profile batch ignored");
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mxc_avatars_are_kept() {
        assert_eq!(
            avatar(Some("mxc://hs.example/abc")).as_deref(),
            Some("mxc://hs.example/abc")
        );
        assert_eq!(avatar(Some("https://tracker.example/pixel.gif")), None);
        assert_eq!(avatar(Some(&format!("mxc://{}", "a".repeat(600)))), None);
        assert_eq!(avatar(None), None);
    }

    #[test]
    fn batches_parse_with_null_profiles() {
        let b: ReplicationBatch = serde_json::from_value(serde_json::json!({
            "batchnum": 3,
            "batch": {
                "@a:hs.example": {"display_name": "A", "avatar_url": null},
                "@b:hs.example": null,
            },
            "origin_server": "hs.example",
            "signatures": {"hs.example": {"ed25519:0": "x"}},
        }))
        .unwrap();
        assert_eq!(b.batchnum, 3);
        assert!(b.batch["@a:hs.example"].is_some());
        assert!(b.batch["@b:hs.example"].is_none());
    }
}
