//! Delivery of 3PID invitations once their address is bound: each invitation is posted to the
//! new owner's homeserver (`POST /_matrix/federation/v1/3pid/onbind`, which Synapse serves as
//! POST only) with a `signed` block `{mxid, token}` signed by our long-term key, so that the
//! homeserver can turn the room's third-party invitation into a real one.
//!
//! The state lives in the `invites` table (`delivery_mxid`, `next_delivery_at`, attempts, last
//! error, delivered / given up): a bind schedules the deliveries in its own transaction, and a
//! worker on every instance claims due rows with a compare-and-set on `next_delivery_at` (the
//! new value is a lease, so a row whose worker died is taken over when it ends). Failures are
//! retried with exponential backoff (`invites.delivery_initial_backoff`, doubled up to
//! `invites.delivery_max_backoff`) and given up after `invites.delivery_max_attempts`.
//! One request per invitation: Synapse fails a whole `onbind` when one invitation in it fails,
//! and per-row state keeps one bad invitation from holding the others back.

use super::IdentityService;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::InvitesConfig;
use crate::matrix::server_name::user_id_server;
use crate::matrix::signing::{SignError, SigningKey, sign_json};
use crate::secret::log_tag;
use crate::store::StoreError;
use crate::store::invites as invite_store;
use crate::store::invites::{InviteDeliveryOutcome, InviteRow};

/// Longest sleep of an idle worker: deliveries scheduled by another instance are noticed
/// within this time.
const POLL_INTERVAL: Duration = Duration::from_secs(30);

/// The `onbind` body for one invitation: `{medium, address, mxid, invites: [{medium, address,
/// mxid, room_id, sender, signed: {mxid, token, signatures}}]}`, `signed` by `server_name`.
pub fn onbind_body(
    invite: &InviteRow,
    mxid: &str,
    server_name: &str,
    key: &SigningKey,
) -> Result<Value, SignError> {
    let mut signed = json!({ "mxid": mxid, "token": invite.token });
    sign_json(&mut signed, server_name, key)?;
    Ok(json!({
        "medium": invite.medium,
        "address": invite.address,
        "mxid": mxid,
        "invites": [{
            "medium": invite.medium,
            "address": invite.address,
            "mxid": mxid,
            "room_id": invite.room_id,
            "sender": invite.sender,
            "signed": signed,
        }],
    }))
}

/// Wait before retry number `attempts` (1 = after the first failure): the initial backoff,
/// doubled each time, capped.
pub fn backoff(config: &InvitesConfig, attempts: u32) -> Duration {
    crate::clock::backoff(
        config.delivery_initial_backoff.0,
        config.delivery_max_backoff.0,
        attempts,
    )
}

/// What one pass did with one invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The homeserver took it.
    Delivered,
    /// It failed; it will be retried.
    Retry,
    /// It failed for the last time.
    Failed,
    /// Another worker claimed it first.
    Lost,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl IdentityService {
    /// How long a claim lasts: longer than one delivery can take (resolution, key-less POST).
    fn lease(&self) -> Duration {
        self.config.federation.timeout.0 * 3 + Duration::from_secs(30)
    }

    /// Delivers every due invitation this worker can claim; how many were handled.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        let mut handled = 0;
        while self.deliver_one().await?.is_some() {
            handled += 1;
        }
        Ok(handled)
    }

    /// Claims and delivers the invitation due first, if there is one.
    pub async fn deliver_one(&self) -> Result<Option<Delivery>, StoreError> {
        let now = self.clock.now_ms();
        let Some(invite) = self
            .db
            .run(move |conn| invite_store::next_due_invite(conn, now))
            .await?
        else {
            return Ok(None);
        };
        let seen = invite.next_delivery_at.unwrap_or(now);
        let lease_until = now.saturating_add(millis(self.lease()));
        let token = invite.token.clone();
        let claimed = self
            .db
            .run(move |conn| invite_store::claim_invite_delivery(conn, &token, seen, lease_until))
            .await?;
        if !claimed {
            return Ok(Some(Delivery::Lost));
        }
        let attempts = invite.delivery_attempts.saturating_add(1);
        let result = self.attempt(&invite).await;
        let config = &self.config.invites;
        let delivery = match &result {
            Ok(()) => Delivery::Delivered,
            Err((true, _)) => Delivery::Failed,
            Err(_)
                if u32::try_from(attempts).unwrap_or(u32::MAX) >= config.delivery_max_attempts =>
            {
                Delivery::Failed
            }
            Err(_) => Delivery::Retry,
        };
        let finished = self.clock.now_ms();
        let next_at = finished.saturating_add(millis(backoff(
            config,
            u32::try_from(attempts).unwrap_or(u32::MAX),
        )));
        let outcome = match &result {
            Ok(()) => InviteDeliveryOutcome::Delivered,
            Err((_, error)) if delivery == Delivery::Retry => InviteDeliveryOutcome::Retry {
                error: error.clone(),
                next_at,
            },
            Err((_, error)) => InviteDeliveryOutcome::Failed {
                error: error.clone(),
            },
        };
        let token = invite.token.clone();
        let recorded = self
            .db
            .run(move |conn| {
                invite_store::finish_invite_delivery(
                    conn,
                    &token,
                    lease_until,
                    attempts,
                    &outcome,
                    finished,
                )
            })
            .await;
        report(&invite, attempts, delivery, &result);
        match recorded {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                invite = %log_tag(&invite.token),
                "invitation delivery changed hands while it was attempted (its lease had ended)"
            ),
            // The row stays claimed; it is tried again when the lease ends.
            Err(e) => return Err(e),
        }
        Ok(Some(delivery))
    }

    /// One `onbind` POST: `Err((permanent, error))` on failure, the error without personal data.
    async fn attempt(&self, invite: &InviteRow) -> Result<(), (bool, String)> {
        let mxid = invite
            .delivery_mxid
            .as_deref()
            .ok_or_else(|| (true, "no Matrix ID to deliver to".to_string()))?;
        let server = user_id_server(mxid)
            .ok_or_else(|| (true, "the Matrix ID to deliver to is invalid".to_string()))?;
        let body = onbind_body(invite, mxid, &self.config.server.name, &self.signing_key())
            .map_err(|e| (true, format!("cannot sign the invitation: {e}")))?;
        self.federation
            .post_onbind(server, &body)
            .await
            .map_err(|e| (false, e.to_string()))
    }

    /// How long the worker may sleep: until the next delivery is due, at most [`POLL_INTERVAL`].
    async fn idle_time(&self) -> Duration {
        let now = self.clock.now_ms();
        match self.db.run(invite_store::next_invite_delivery_at).await {
            Ok(Some(due)) => {
                let wait = u64::try_from(due.saturating_sub(now)).unwrap_or(0);
                // Never spin: a row due now that could not be claimed is someone else's.
                Duration::from_millis(wait).clamp(Duration::from_millis(50), POLL_INTERVAL)
            }
            Ok(None) => POLL_INTERVAL,
            Err(e) => {
                tracing::warn!(error = %e, "invitation delivery: cannot read the queue");
                Duration::from_secs(5)
            }
        }
    }
}

/// Logs and counts one delivery (the invitation's tag and the homeserver, never the address).
fn report(
    invite: &InviteRow,
    attempts: i32,
    delivery: Delivery,
    result: &Result<(), (bool, String)>,
) {
    let server = invite
        .delivery_mxid
        .as_deref()
        .and_then(user_id_server)
        .unwrap_or("");
    let error = result.as_ref().err().map_or("", |(_, e)| e.as_str());
    let tag = log_tag(&invite.token);
    match delivery {
        Delivery::Delivered => {
            metrics::counter!("annuaire_onbind_delivered_total").increment(1);
            tracing::info!(invite = %tag, homeserver = server, attempts, "invitation delivered");
        }
        Delivery::Retry => {
            metrics::counter!("annuaire_onbind_retries_total").increment(1);
            tracing::warn!(
                invite = %tag,
                homeserver = server,
                attempts,
                error,
                "invitation delivery failed; will retry"
            );
        }
        Delivery::Failed => {
            metrics::counter!("annuaire_onbind_failed_total").increment(1);
            tracing::error!(
                invite = %tag,
                homeserver = server,
                attempts,
                error,
                "invitation delivery given up"
            );
        }
        Delivery::Lost => {}
    }
}

/// Starts this instance's invitation delivery worker on the current runtime; it ends with the
/// runtime. Deliveries scheduled before a restart are picked up by the first pass.
pub fn start_worker(identity: &Arc<IdentityService>) {
    let identity = identity.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = identity.deliver_due().await {
                tracing::warn!(error = %e, "invitation delivery pass failed");
            }
            let wait = identity.idle_time().await;
            tokio::select! {
                () = identity.delivery_woken() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use crate::matrix::signing::verify_json;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn invite() -> InviteRow {
        InviteRow {
            token: "tok".into(),
            medium: "email".into(),
            address: "marie@finances.example".into(),
            room_id: "!r:hs.example".into(),
            sender: "@jean:hs.example".into(),
            details_json: "{}".into(),
            ephemeral_public_key: "k".into(),
            created_at: 0,
            expires_at: 1,
            delivery_mxid: Some("@marie:hs.example".into()),
            delivery_attempts: 0,
            next_delivery_at: Some(0),
            last_error: None,
            delivered_at: None,
            delivery_failed_at: None,
        }
    }

    #[test]
    fn onbind_body_has_the_spec_shape_and_a_verifiable_signed_block() {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(3));
        let body = onbind_body(&invite(), "@marie:hs.example", "is.example", &key).unwrap();
        assert_eq!(body["medium"], "email");
        assert_eq!(body["address"], "marie@finances.example");
        assert_eq!(body["mxid"], "@marie:hs.example");
        let invites = body["invites"].as_array().unwrap();
        assert_eq!(invites.len(), 1);
        let i = &invites[0];
        assert_eq!(i["room_id"], "!r:hs.example");
        assert_eq!(i["sender"], "@jean:hs.example");
        assert_eq!(i["mxid"], "@marie:hs.example");
        assert_eq!(i["signed"]["mxid"], "@marie:hs.example");
        assert_eq!(i["signed"]["token"], "tok");
        verify_json(
            &i["signed"],
            "is.example",
            "ed25519:0",
            &key.public_key_base64(),
        )
        .unwrap();
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = InvitesConfig {
            delivery_initial_backoff: HumanDuration(Duration::from_secs(30)),
            delivery_max_backoff: HumanDuration(Duration::from_secs(200)),
            ..InvitesConfig::default()
        };
        assert_eq!(backoff(&c, 1), Duration::from_secs(30));
        assert_eq!(backoff(&c, 2), Duration::from_secs(60));
        assert_eq!(backoff(&c, 3), Duration::from_secs(120));
        assert_eq!(backoff(&c, 4), Duration::from_secs(200));
        assert_eq!(backoff(&c, 100), Duration::from_secs(200));
        assert_eq!(backoff(&c, 0), Duration::from_secs(30));
    }
}
