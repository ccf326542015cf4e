//! Erasure of a 3PID: an unbind that also forgets everything the service keeps about the
//! address (an administrator's `POST /_annuaire/admin/v1/threepids/erase`).
//!
//! In one transaction, audited: the association and its lookup hashes, every invitation to the
//! address, its validation sessions, its requests for its administration to be added, what the
//! homeserver API remembered of its unbinding, and the mails still queued to it (a mail a worker
//! is sending at that moment goes out, then is erased like every sent mail). Then the directory
//! follows through the same path as an unbind ([`IdentityService::after_unbind`]): the user's
//! entry goes, unless another of their addresses is still bound, in which case it is published
//! from that one. Entries that still carry the address's lookup key are refreshed the same way.
//!
//! The audit log keeps that the address was erased, and by whom, but not the address: in the
//! same transaction, every mention of it in the log (this erasure's row included) is replaced
//! by a keyed pseudonym (`erased:<HMAC>`, [`crate::audit::pseudonymise`]). Every caller of
//! [`IdentityService::erase`] (the admin API, the homeserver API) gets this. The address is
//! never in the logs.

use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::{IdentityError, IdentityService};
use crate::audit::{self, Actor, action};
use crate::directory::email_lookup_key;
use crate::policy::normalize_email;
use crate::secret::log_tag;
use crate::store::StoreError;
use crate::store::directory as directory_store;
use crate::store::erasure as erasure_store;
use crate::store::identity as identity_store;

/// What an erasure removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Erasure {
    /// `email`.
    pub medium: String,
    /// The address, normalised.
    pub address: String,
    /// The Matrix user id the address was bound to (its association and lookup hashes are
    /// gone), or null when it was not bound.
    pub unbound_from: Option<String>,
    /// Invitations to the address deleted.
    pub invites: usize,
    /// Validation sessions of the address deleted.
    pub sessions: usize,
    /// Mails to the address that were still queued, cancelled.
    pub queued_mails: usize,
    /// Directory entries the erasure touched, each `removed` or `kept` (the user still has
    /// another address bound: their entry now comes from that one).
    pub directory: Vec<DirectoryOutcome>,
    /// Audit log rows in which the address was replaced by its keyed pseudonym
    /// (`erased:<hash>`), this erasure's own row included.
    pub audit_rows_pseudonymised: usize,
}

/// What became of one directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DirectoryOutcome {
    /// The entry's user id.
    pub user_id: String,
    /// `removed` or `kept`.
    pub entry: String,
}

impl IdentityService {
    /// Erases `address` (medium `email`): see the module documentation.
    pub async fn erase(
        &self,
        medium: &str,
        address: &str,
        actor: &Actor,
    ) -> Result<Erasure, IdentityError> {
        if medium != "email" {
            return Err(IdentityError::InvalidParam(
                "Only the `email` medium is supported".to_owned(),
            ));
        }
        let now_ms = self.clock.now_ms();
        let address =
            normalize_email(address).map_err(|e| IdentityError::InvalidEmail(format!("{e}")))?;
        let normalised = address.as_str().to_owned();
        let key = email_lookup_key(&normalised);
        let actor_row = actor.clone();
        let (mut erasure, affected) = self
            .db
            .run(move |conn| {
                crate::store::transaction(conn, |conn| {
                    let association = identity_store::association(conn, "email", &normalised)?;
                    if association.is_some() {
                        identity_store::delete_association(conn, "email", &normalised, now_ms)?;
                    }
                    let invites = erasure_store::delete_invites_to(conn, "email", &normalised)?;
                    let sessions = erasure_store::delete_sessions_for(conn, "email", &normalised)?;
                    let queued_mails =
                        erasure_store::cancel_queued_mail_to(conn, &normalised, now_ms)?;
                    // Its requests for its administration to be added, if it made any.
                    let domain_requests =
                        crate::store::domain_requests::delete_for_address(conn, &normalised)?;
                    // What the homeserver API remembered of it for a later erasure.
                    crate::store::homeserver::forget_unbinds_of_address(
                        conn,
                        "email",
                        &normalised,
                    )?;
                    // Entries published from this address (normally only the bound user's).
                    let mut affected: Vec<String> =
                        association.iter().map(|a| a.mxid.clone()).collect();
                    for row in directory_store::by_email_keys(conn, std::slice::from_ref(&key))? {
                        if !affected.contains(&row.mxid) {
                            affected.push(row.mxid);
                        }
                    }
                    let unbound_from = association.map(|a| a.mxid);
                    audit::record(
                        conn,
                        &actor_row,
                        action::THREEPID_ERASE,
                        &audit::threepid_target("email", &normalised),
                        Some(&json!({
                            "medium": "email",
                            "address": normalised,
                            "bound_to": unbound_from,
                            "invites": invites,
                            "sessions": sessions,
                            "queued_mails": queued_mails,
                            "domain_requests": domain_requests,
                            "directory_entries": affected,
                        })),
                        None,
                        now_ms,
                    )?;
                    // After the row above, so that it is covered too: the audit log keeps that
                    // an address was erased, not which.
                    let audit_rows = audit::pseudonymise(conn, &normalised, now_ms)?;
                    Ok::<_, StoreError>((
                        Erasure {
                            medium: "email".to_owned(),
                            address: normalised,
                            unbound_from,
                            invites,
                            sessions,
                            queued_mails,
                            directory: Vec::new(),
                            audit_rows_pseudonymised: audit_rows,
                        },
                        affected,
                    ))
                })
            })
            .await?;
        tracing::info!(
            domain = %address.domain(),
            address = %log_tag(address.as_str()),
            actor = %actor,
            bound = erasure.unbound_from.is_some(),
            invites = erasure.invites,
            sessions = erasure.sessions,
            queued_mails = erasure.queued_mails,
            "address erased"
        );
        for mxid in affected {
            // The unbind path: the entry follows the user's remaining associations.
            self.after_unbind(&mxid, &address).await;
            let owned = mxid.clone();
            let kept = self
                .db
                .run(move |conn| directory_store::get(conn, &owned))
                .await?
                .is_some();
            erasure.directory.push(DirectoryOutcome {
                user_id: mxid,
                entry: if kept { "kept" } else { "removed" }.to_owned(),
            });
        }
        Ok(erasure)
    }
}
