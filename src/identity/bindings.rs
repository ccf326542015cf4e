//! Binds and unbinds: `POST /v2/3pid/bind` publishes the association of a validated address
//! with the caller's Matrix ID (and hands the invitations waiting for that address over to
//! [`super::delivery`]); `POST /v2/3pid/unbind` removes it, authenticated by the Matrix ID's
//! homeserver (X-Matrix), by the validation session of the address, or by the Matrix ID's own
//! access token.
//!
//! [`after_bind`] and [`after_unbind`] are the one place where other parts of the service
//! learn about (un)binds (the directory hook).

use serde::Deserialize;
use serde_json::Value;

use super::accounts::Account;
use super::associations::{self, Association};
use super::sessions::{MEDIUM_EMAIL, SessionError};
use super::{IdentityError, IdentityService};
use crate::federation::FederationError;
use crate::matrix::server_name::user_id_server;
use crate::matrix::xmatrix::XMatrixAuth;
use crate::policy::{Address, Decision, Outcome, normalize_email};
use crate::secret::log_tag;
use crate::store::identity as store;
use crate::store::invites as invite_store;

/// The body of `POST /v2/3pid/bind`.
#[derive(Clone, Deserialize)]
pub struct BindRequest {
    /// The validation session.
    pub sid: String,
    /// The client secret of that session.
    pub client_secret: String,
    /// The Matrix ID to bind the session's address to (the caller's own).
    pub mxid: String,
}

// The client secret is a credential.
impl std::fmt::Debug for BindRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindRequest")
            .field("mxid", &self.mxid)
            .finish_non_exhaustive()
    }
}

/// Whether `server` is the homeserver the decision assigns, or its shadow.
pub fn homeserver_matches(server: &str, decision: &Decision) -> bool {
    [&decision.homeserver, &decision.shadow_homeserver]
        .into_iter()
        .flatten()
        .any(|hs| hs.eq_ignore_ascii_case(server))
}

impl IdentityService {
    /// `POST /v2/3pid/bind`: binds the address validated by (sid, client secret) to the caller's
    /// Matrix ID, replacing the address's previous association, and answers the signed
    /// association. Invitations waiting for the address are then delivered to the new owner's
    /// homeserver by the delivery job.
    pub async fn bind(
        &self,
        account: &Account,
        request: &BindRequest,
        now_ms: i64,
    ) -> Result<Value, IdentityError> {
        if request.mxid != account.user_id {
            return Err(IdentityError::NotYours(
                "An address can only be bound to the Matrix ID whose access token is used".into(),
            ));
        }
        let server = user_id_server(&request.mxid)
            .ok_or_else(|| IdentityError::InvalidParam("mxid is not a Matrix user ID".into()))?;
        let threepid = self
            .validated_threepid(&request.sid, &request.client_secret)
            .await
            .map_err(|e| match e {
                SessionError::Store(e) => IdentityError::Store(e),
                other => IdentityError::Session(other),
            })?;
        if threepid.medium != MEDIUM_EMAIL {
            return Err(IdentityError::UnsupportedMedium(
                "Only the `email` medium is supported".into(),
            ));
        }
        // Stored normalised; parsed again for the policy's view of it (ASCII domain).
        let address = normalize_email(&threepid.address).map_err(|e| {
            IdentityError::Internal(format!("a validated address does not parse any more: {e}"))
        })?;
        let decision = self.allowlist.decide(&address, now_ms);
        if decision.outcome == Outcome::Denied {
            tracing::info!(domain = %address.domain(), "bind refused: address denied by the policy");
            return Err(IdentityError::ThreepidDenied {
                message: "This address is not allowed on the service; it cannot be bound".into(),
                reason_code: decision.reason_code,
            });
        }
        if self.config.policy.bind_requires_matching_homeserver
            && !homeserver_matches(server, &decision)
        {
            tracing::info!(
                domain = %address.domain(),
                homeserver = server,
                "bind refused: the Matrix ID is not on the address's homeserver"
            );
            return Err(IdentityError::BindingNotPermitted(format!(
                "This address belongs to the homeserver {}; it cannot be bound to a user of {server}",
                decision.homeserver.as_deref().unwrap_or("(none)")
            )));
        }

        let (_, signed) = self
            .bind_address(&address, &decision, &request.mxid, now_ms)
            .await?;
        Ok(signed)
    }

    /// Binds `address`, whose ownership has been proven (a validation session, or the
    /// homeserver that validated it itself), to `mxid`, replacing the address's previous
    /// association: stores the association with its lookup hashes, schedules the invitations
    /// waiting for the address for delivery to `mxid`'s homeserver (`onbind`), and brings the
    /// directory in step ([`IdentityService::after_bind`]). `decision` is the policy's decision
    /// for the address, which the caller has checked. Returns the association and its signed
    /// form (what `/v2/3pid/bind` answers).
    pub async fn bind_address(
        &self,
        address: &Address,
        decision: &Decision,
        mxid: &str,
        now_ms: i64,
    ) -> Result<(Association, Value), IdentityError> {
        let association = Association::new(MEDIUM_EMAIL, address.as_str(), mxid, now_ms);
        let signed = association
            .to_signed_json(&self.config.server.name, &self.signing_key())
            .map_err(|e| IdentityError::Internal(format!("signing an association: {e}")))?;
        let row = association.clone();
        let (previous, scheduled) = self
            .db
            .run(move |conn| {
                // Read outside the transaction: it only tells the directory whom the address left.
                let previous = store::association(conn, &row.medium, &row.address)?;
                let scheduled = crate::store::transaction(conn, |conn| {
                    associations::record(conn, &row)?;
                    invite_store::schedule_invite_delivery(
                        conn,
                        &row.medium,
                        &row.address,
                        &row.mxid,
                        now_ms,
                    )
                })?;
                Ok((previous, scheduled))
            })
            .await?;
        if scheduled > 0 {
            self.wake_delivery();
        }
        let replaced = previous
            .map(|p| p.mxid)
            .filter(|previous| *previous != association.mxid);
        self.after_bind(
            &association,
            address,
            decision,
            replaced.as_deref(),
            scheduled,
        )
        .await;
        Ok((association, signed))
    }

    /// `POST /v2/3pid/unbind`: checks the credentials, then deletes the association if the address
    /// is bound to `mxid`; whether one was deleted (unbinding nothing succeeds too, as `{}`).
    ///
    /// Credentials, in this order: `sid` + `client_secret` of a validated session for the address;
    /// an X-Matrix signature by the Matrix ID's homeserver, addressed to `server.name` (or to the
    /// host of `http.public_base_url`) through `destination_is` as Synapse does, or `destination`;
    /// the access token of the Matrix ID's own account. Bad credentials are 403 `M_FORBIDDEN`,
    /// missing or unknown tokens 401 `M_UNAUTHORIZED`.
    pub async fn unbind(
        &self,
        request: &UnbindRequest,
        auth: UnbindAuth<'_>,
        now_ms: i64,
    ) -> Result<bool, IdentityError> {
        let server = user_id_server(&request.mxid)
            .ok_or_else(|| IdentityError::InvalidParam("mxid is not a Matrix user ID".into()))?;
        let address = match request.threepid.medium.as_str() {
            MEDIUM_EMAIL => normalize_email(&request.threepid.address).ok(),
            _ => None,
        };
        match (&request.sid, &request.client_secret) {
            (Some(sid), Some(client_secret)) => {
                self.check_session(sid, client_secret, address.as_ref())
                    .await?;
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(IdentityError::InvalidParam(
                    "sid and client_secret must be given together".into(),
                ));
            }
            (None, None) => match auth {
                UnbindAuth::Signature {
                    authorization,
                    uri,
                    content,
                } => {
                    self.check_signature(server, authorization, uri, content)
                        .await?
                }
                UnbindAuth::Token(token) => {
                    let account = self.authenticate(token, now_ms).await?;
                    if account.user_id != request.mxid {
                        return Err(IdentityError::Forbidden(
                            "This access token belongs to another user".into(),
                        ));
                    }
                }
                UnbindAuth::None => {
                    return Err(IdentityError::Unauthorized(
                        "Unbinding needs a homeserver signature (X-Matrix), a validation session \
                         (sid and client_secret) or the user's access token"
                            .into(),
                    ));
                }
            },
        }
        // Only an email address that parses can be bound: anything else unbinds nothing.
        let Some(address) = address else {
            return Ok(false);
        };
        self.unbind_address(&address, &request.mxid).await
    }

    /// Deletes the association of `address` if it is bound to `mxid` (the caller has checked
    /// the credentials), and brings the directory in step ([`IdentityService::after_unbind`]);
    /// whether one was deleted. An address bound to someone else is left alone.
    pub async fn unbind_address(
        &self,
        address: &Address,
        mxid: &str,
    ) -> Result<bool, IdentityError> {
        let (medium, bound, owner) = (
            MEDIUM_EMAIL.to_string(),
            address.as_str().to_string(),
            mxid.to_owned(),
        );
        let now_ms = self.clock.now_ms();
        let removed = self
            .db
            .run(move |conn| store::delete_association_of(conn, &medium, &bound, &owner, now_ms))
            .await?;
        if removed {
            self.after_unbind(mxid, address).await;
        } else {
            tracing::info!(
                domain = %address.domain(),
                "unbind: the address was not bound to this Matrix ID; nothing to do"
            );
        }
        Ok(removed)
    }

    /// The session must be validated and be for the address being unbound.
    async fn check_session(
        &self,
        sid: &str,
        client_secret: &str,
        address: Option<&Address>,
    ) -> Result<(), IdentityError> {
        let threepid = match self.validated_threepid(sid, client_secret).await {
            Ok(t) => t,
            Err(SessionError::Store(e)) => return Err(IdentityError::Store(e)),
            Err(e) => {
                return Err(IdentityError::Forbidden(format!(
                    "The validation session does not authorise this unbind: {e}"
                )));
            }
        };
        let same = threepid.medium == MEDIUM_EMAIL
            && address.is_some_and(|a| a.as_str() == threepid.address);
        if !same {
            return Err(IdentityError::Forbidden(
                "The validation session is for another address".into(),
            ));
        }
        Ok(())
    }

    /// The names a homeserver may address us by in `destination_is`: `server.name`, and the host
    /// (with its port, if any) of `http.public_base_url`, which is what Synapse's users type.
    fn own_names(&self) -> Vec<String> {
        let mut names = vec![self.config.server.name.clone()];
        if let Some(url) = &self.config.http.public_base_url
            && let Ok(url) = reqwest::Url::parse(url)
            && let Some(host) = url.host_str()
        {
            let name = match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// The request must be signed by the Matrix ID's homeserver.
    async fn check_signature(
        &self,
        server: &str,
        authorization: &str,
        uri: &str,
        content: &Value,
    ) -> Result<(), IdentityError> {
        let parsed = XMatrixAuth::parse(authorization).map_err(|e| {
            IdentityError::Forbidden(format!("Invalid X-Matrix authorization: {e}"))
        })?;
        // Checked before any key is fetched: a stranger's signature costs us nothing.
        if !parsed.origin.eq_ignore_ascii_case(server) {
            return Err(IdentityError::Forbidden(
                "The request is not signed by the homeserver of this Matrix ID".into(),
            ));
        }
        let mut refusal = None;
        for name in self.own_names() {
            match self
                .federation
                .verify_xmatrix(authorization, "POST", uri, &name, Some(content))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_authentication_failure() => refusal = Some(e),
                Err(FederationError::Forbidden { .. }) => {
                    return Err(IdentityError::Forbidden(format!(
                        "The homeserver {server} resolves to an address this server may not contact"
                    )));
                }
                Err(other) => {
                    tracing::warn!(server, error = %other, "unbind: cannot check the signature");
                    return Err(IdentityError::Homeserver(format!(
                        "Could not fetch the signing keys of {server}"
                    )));
                }
            }
        }
        let reason =
            refusal.map_or_else(|| "no destination matched".to_string(), |e| e.to_string());
        tracing::info!(server, reason = %reason, "unbind: bad homeserver signature");
        Err(IdentityError::Forbidden(format!(
            "Invalid homeserver signature: {reason}"
        )))
    }

    /// Runs once a bind has committed: logs and counts it, and tells the other parts of the
    /// service. `replaced` is the Matrix ID the address was bound to before, if another one.
    pub async fn after_bind(
        &self,
        association: &Association,
        address: &Address,
        decision: &Decision,
        replaced: Option<&str>,
        invites_scheduled: usize,
    ) {
        // This instance's lookups and `/info` see the new association at once.
        self.sync_after_write().await;
        metrics::counter!("annuaire_identity_binds_total").increment(1);
        tracing::info!(
            domain = %address.domain(),
            address = %log_tag(address.as_str()),
            homeserver = user_id_server(&association.mxid).unwrap_or(""),
            outcome = decision.outcome.as_str(),
            replaced = replaced.is_some(),
            invites_scheduled,
            "address bound"
        );
        // The directory publishes the new owner and forgets the previous one. A failure here does
        // not undo the bind (the association is what clients rely on); it is logged and counted,
        // and the next bind or an LDAP sync repairs the entry.
        if let Some(previous) = replaced {
            self.refresh_directory(previous).await;
        }
        if let Err(e) = self
            .directory
            .on_bind(&association.mxid, address, decision)
            .await
        {
            metrics::counter!("annuaire_directory_update_failures_total").increment(1);
            tracing::error!(error = %e, "directory entry not updated after a bind");
        }
    }

    /// Makes the directory entry of `mxid` follow its remaining associations: removed when it has
    /// none left, else published from the most recent one.
    async fn refresh_directory(&self, mxid: &str) {
        let owned = mxid.to_owned();
        let remaining = self
            .db
            .run(move |conn| crate::store::identity::associations_of(conn, &owned))
            .await;
        let result = match remaining {
            Ok(rows) => match rows
                .iter()
                .find_map(|r| crate::policy::normalize_email(&r.address).ok())
            {
                Some(address) => {
                    let decision = self.allowlist.decide(&address, self.clock.now_ms());
                    self.directory
                        .on_bind(mxid, &address, &decision)
                        .await
                        .map(|_| ())
                }
                None => self.directory.on_unbind(mxid).await,
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot read the remaining associations of a user");
                return;
            }
        };
        if let Err(e) = result {
            metrics::counter!("annuaire_directory_update_failures_total").increment(1);
            tracing::error!(error = %e, "directory entry not updated after an unbind");
        }
    }

    /// Runs once an unbind has committed: logs and counts it, and tells the other parts of the
    /// service.
    pub async fn after_unbind(&self, mxid: &str, address: &Address) {
        // This instance's lookups and `/info` see the association gone at once.
        self.sync_after_write().await;
        metrics::counter!("annuaire_identity_unbinds_total").increment(1);
        tracing::info!(
            domain = %address.domain(),
            address = %log_tag(address.as_str()),
            homeserver = user_id_server(mxid).unwrap_or(""),
            "address unbound"
        );
        // The directory forgets the user, unless another of their addresses is still bound.
        self.refresh_directory(mxid).await;
    }
}

/// The 3PID of an unbind request.
#[derive(Debug, Clone, Deserialize)]
pub struct Threepid {
    /// `email`.
    pub medium: String,
    /// The address, as the caller spells it (normalised before use).
    pub address: String,
}

/// The body of `POST /v2/3pid/unbind`.
#[derive(Clone, Deserialize)]
pub struct UnbindRequest {
    /// The Matrix ID the address should be unbound from.
    pub mxid: String,
    /// The address.
    pub threepid: Threepid,
    /// A validation session of the address (the spec's second way), with its secret.
    #[serde(default)]
    pub sid: Option<String>,
    /// The client secret of that session.
    #[serde(default)]
    pub client_secret: Option<String>,
}

// The client secret is a credential and the address personal data.
impl std::fmt::Debug for UnbindRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnbindRequest")
            .field("mxid", &self.mxid)
            .field("medium", &self.threepid.medium)
            .finish_non_exhaustive()
    }
}

/// How an unbind request authenticates, besides a validation session in its body.
#[derive(Debug, Clone, Copy)]
pub enum UnbindAuth<'a> {
    /// `Authorization: X-Matrix …` from the Matrix ID's homeserver, with the request target
    /// (path and query, as received) and the JSON body it signed.
    Signature {
        /// The header's value.
        authorization: &'a str,
        /// The request target.
        uri: &'a str,
        /// The JSON body.
        content: &'a Value,
    },
    /// An identity-service access token (the Matrix ID's own account).
    Token(&'a str),
    /// No credentials besides the body.
    None,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ReasonCode;

    fn decision(hs: Option<&str>, shadow: Option<&str>) -> Decision {
        Decision {
            outcome: Outcome::Allowed,
            homeserver: hs.map(String::from),
            shadow_homeserver: shadow.map(String::from),
            organisation: None,
            rule: None,
            rule_id: None,
            reason: String::new(),
            reason_code: ReasonCode::Allowed,
        }
    }

    #[test]
    fn the_homeserver_or_its_shadow_matches() {
        let d = decision(
            Some("agent.finances.example"),
            Some("public.finances.example"),
        );
        assert!(homeserver_matches("agent.finances.example", &d));
        assert!(homeserver_matches("Agent.Finances.example", &d));
        assert!(homeserver_matches("public.finances.example", &d));
        assert!(!homeserver_matches("agent.justice.example", &d));
        assert!(!homeserver_matches("agent.finances.example:8448", &d));
        assert!(!homeserver_matches("x", &decision(None, None)));
    }

    #[test]
    fn requests_hide_their_secrets_in_debug_output() {
        let b: BindRequest = serde_json::from_value(serde_json::json!({
            "sid": "s1", "client_secret": "very-secret", "mxid": "@a:hs.example"
        }))
        .unwrap();
        assert!(!format!("{b:?}").contains("very-secret"));
        let u: UnbindRequest = serde_json::from_value(serde_json::json!({
            "mxid": "@a:hs.example", "client_secret": "very-secret", "sid": "s1",
            "threepid": {"medium": "email", "address": "alice@example.org"}
        }))
        .unwrap();
        let debug = format!("{u:?}");
        assert!(
            !debug.contains("very-secret") && !debug.contains("alice"),
            "{debug}"
        );
        assert!(
            serde_json::from_value::<UnbindRequest>(serde_json::json!({"mxid": "@a:hs"})).is_err()
        );
    }
}
