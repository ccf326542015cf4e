//! What a homeserver tells annuaire about its accounts: an address it validated is bound
//! (`bind`) or removed (`unbind`), the name a new account should get (`display_name`), a
//! profile change (`profile`), a deactivation (`deactivated`).
//!
//! Scope, checked before anything else, with a 403 that names the rule that refused:
//! - **the Matrix ID rule**: every Matrix ID must be `@…:SERVER_NAME` of the token's server;
//! - **the address rule**: `bind` and `display_name` only for addresses whose policy decision
//!   names the token's server (or its shadow) as their homeserver. `unbind` does not apply it:
//!   an address the policy has since moved elsewhere must still be removable by the server
//!   whose user holds it, and an unbind only ever deletes an association held by the token's
//!   own user.
//!
//! Every call is idempotent: a second identical call leaves things as the first left them.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::{Homeserver, HomeserverError, HomeserverService};
use crate::audit::Actor;
use crate::directory::entries::split_user_id;
use crate::directory::{FieldChange, VerifiedName};
use crate::identity::bindings::homeserver_matches;
use crate::policy::{Address, Decision, Outcome, normalize_email};
use crate::secret::log_tag;
use crate::store::homeserver as store;
use crate::store::identity as identity_store;

/// The only medium homeservers report.
const MEDIUM_EMAIL: &str = "email";

/// How long an address unbound through this API is remembered for a deactivation with erasure
/// (ms): Synapse reports the deactivation right after the unbinds, but annuaire may have been
/// down in between.
const UNBIND_MEMORY_MS: i64 = 7 * 24 * 3600 * 1000;

/// The body of `POST bind` and `POST unbind`.
#[derive(Clone, Deserialize, ToSchema)]
pub struct ThreepidRequest {
    /// `email`.
    pub medium: String,
    /// The address, as the homeserver has it (normalised here).
    pub address: String,
    /// The Matrix ID it is (or was) attached to, a user of the token's homeserver.
    pub mxid: String,
}

// The address is personal data.
impl std::fmt::Debug for ThreepidRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreepidRequest")
            .field("medium", &self.medium)
            .field("mxid", &self.mxid)
            .finish_non_exhaustive()
    }
}

/// What `POST bind` answers: the association as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BoundAssociation {
    /// `email`.
    pub medium: String,
    /// The address, normalised.
    pub address: String,
    /// The Matrix ID it is bound to.
    pub mxid: String,
    /// When it was bound (ms since the epoch).
    pub ts: i64,
}

/// What `POST unbind` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Unbound {
    /// False when the address was not bound to this Matrix ID (nothing to do).
    pub removed: bool,
}

/// The body of `POST profile`. A field left out is unchanged; `null` clears it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ProfileReport {
    /// The user whose global profile changed.
    pub user_id: String,
    /// The display name the user set (kept for administrators; never published).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub displayname: FieldChange,
    /// The avatar (`mxc://…`; anything else is not published).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub avatar_url: FieldChange,
}

/// A field that is present: `null` → `Some(None)`, a value → `Some(Some(value))` (absent is
/// `None` through `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<FieldChange, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The body of `POST deactivated`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct Deactivation {
    /// The deactivated user.
    pub user_id: String,
    /// Whether the homeserver erased them too (GDPR erasure): annuaire then erases what it
    /// keeps about their addresses, as an administrator's erasure does.
    pub erased: bool,
}

/// What `POST deactivated` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct DeactivationOutcome {
    /// Associations of the user removed by this call (0 when the homeserver's unbinds came
    /// first, as Synapse's do).
    pub removed_associations: usize,
}

impl Homeserver {
    /// The Matrix ID rule: `mxid` must be a user of this homeserver.
    fn check_user(&self, mxid: &str) -> Result<(), HomeserverError> {
        let (_, server) = split_user_id(mxid).map_err(|_| {
            HomeserverError::InvalidParam(format!(
                "{mxid:?} is not a Matrix user ID (@localpart:server)"
            ))
        })?;
        if !server.eq_ignore_ascii_case(&self.server_name) {
            return Err(HomeserverError::OutOfScope(format!(
                "Refused by the Matrix ID rule: {mxid} is not a user of {}, the homeserver this \
                 token acts for",
                self.server_name
            )));
        }
        Ok(())
    }

    /// The address rule: the policy must send the address to this homeserver (or its shadow).
    fn check_address(&self, decision: &Decision) -> Result<(), HomeserverError> {
        if decision.outcome == Outcome::Denied {
            return Err(HomeserverError::OutOfScope(format!(
                "Refused by the address rule: the policy denies this address ({}), so it \
                 belongs to no homeserver",
                decision.reason
            )));
        }
        if !homeserver_matches(&self.server_name, decision) {
            return Err(HomeserverError::OutOfScope(format!(
                "Refused by the address rule: the policy sends this address to {}, not to {}, \
                 the homeserver this token acts for",
                decision.homeserver.as_deref().unwrap_or("no homeserver"),
                self.server_name
            )));
        }
        Ok(())
    }
}

/// The address of a request: medium `email` and a valid address.
fn email(medium: &str, address: &str) -> Result<Address, HomeserverError> {
    if medium != MEDIUM_EMAIL {
        // Not M_UNRECOGNIZED: the module reads that errcode as "wrong URL" and retries.
        return Err(HomeserverError::InvalidParam(format!(
            "Only the `email` medium is supported, not {medium:?}"
        )));
    }
    normalize_email(address).map_err(|e| HomeserverError::InvalidEmail(e.to_string()))
}

impl HomeserverService {
    /// `POST bind`: `homeserver` validated the address itself and attached it to `mxid`. Stores
    /// the association exactly as `/v2/3pid/bind` does (signed, hashed for lookups, replacing
    /// the address's previous one), delivers the invitations waiting for the address, and
    /// creates or refreshes the user's directory entry with the verified name.
    pub async fn bind(
        &self,
        homeserver: &Homeserver,
        request: &ThreepidRequest,
    ) -> Result<BoundAssociation, HomeserverError> {
        homeserver.check_user(&request.mxid)?;
        let address = email(&request.medium, &request.address)?;
        let now = self.clock.now_ms();
        let decision = self.allowlist.decide(&address, now);
        homeserver.check_address(&decision)?;
        let (association, _) = self
            .identity
            .bind_address(&address, &decision, &request.mxid, now)
            .await?;
        Ok(BoundAssociation {
            medium: association.medium,
            address: association.address,
            mxid: association.mxid,
            ts: association.ts,
        })
    }

    /// `POST unbind`: the address was removed from `mxid`'s account. Deletes the association if
    /// the address is bound to `mxid` (an address bound to someone else is left alone), and the
    /// directory follows. The address is remembered for a while, so that a deactivation with
    /// erasure that follows can erase it.
    pub async fn unbind(
        &self,
        homeserver: &Homeserver,
        request: &ThreepidRequest,
    ) -> Result<Unbound, HomeserverError> {
        homeserver.check_user(&request.mxid)?;
        let address = email(&request.medium, &request.address)?;
        let removed = self
            .identity
            .unbind_address(&address, &request.mxid)
            .await?;
        let now = self.clock.now_ms();
        // Only what this user held, or what the policy sends to this homeserver: a homeserver
        // cannot have another's addresses erased through its users' deactivations.
        let ours = removed
            || homeserver
                .check_address(&self.allowlist.decide(&address, now))
                .is_ok();
        let (mxid, normalised) = (request.mxid.clone(), address.as_str().to_owned());
        self.db
            .run(move |conn| {
                if ours {
                    store::remember_unbind(conn, &mxid, MEDIUM_EMAIL, &normalised, now)?;
                }
                store::purge_unbinds(conn, now - UNBIND_MEMORY_MS)?;
                Ok(())
            })
            .await?;
        Ok(Unbound { removed })
    }

    /// `GET display_name`: the verified name the directory would show for the address (an
    /// administrator's override, then the agency LDAP, then the address's local part), through
    /// `directory.display_name_format`, for a new account of this homeserver. Every address the
    /// policy sends here has one; other addresses are out of scope (403).
    pub async fn display_name(
        &self,
        homeserver: &Homeserver,
        medium: &str,
        address: &str,
    ) -> Result<VerifiedName, HomeserverError> {
        let address = email(medium, address)?;
        let decision = self.allowlist.decide(&address, self.clock.now_ms());
        homeserver.check_address(&decision)?;
        Ok(self.directory.verified_name(&address, &decision).await?)
    }

    /// `POST profile`: the user's global profile changed. The avatar reaches their directory
    /// entry; the display name they typed is kept for administrators, never published.
    pub async fn profile(
        &self,
        homeserver: &Homeserver,
        report: ProfileReport,
    ) -> Result<(), HomeserverError> {
        homeserver.check_user(&report.user_id)?;
        self.directory
            .report_profile(&report.user_id, report.displayname, report.avatar_url)
            .await?;
        Ok(())
    }

    /// `POST deactivated`: the user's directory entry goes, and so do their associations; with
    /// `erased`, every address they hold or that this API recently unbound from them is erased
    /// as an administrator's erasure does (association, lookup hashes, invitations, validation
    /// sessions, queued mails; audited as `homeserver:SERVER_NAME`). An address bound to
    /// someone else by now is not touched.
    pub async fn deactivated(
        &self,
        homeserver: &Homeserver,
        deactivation: &Deactivation,
    ) -> Result<DeactivationOutcome, HomeserverError> {
        let mxid = deactivation.user_id.as_str();
        homeserver.check_user(mxid)?;
        let now = self.clock.now_ms();
        let owned = mxid.to_owned();
        let (held, unbound) = self
            .db
            .run(move |conn| {
                let held: Vec<String> = identity_store::associations_of(conn, &owned)?
                    .into_iter()
                    .filter(|a| a.medium == MEDIUM_EMAIL)
                    .map(|a| a.address)
                    .collect();
                let unbound: Vec<String> = store::unbinds_of(conn, &owned, now - UNBIND_MEMORY_MS)?
                    .into_iter()
                    .filter(|(medium, _)| medium == MEDIUM_EMAIL)
                    .map(|(_, address)| address)
                    .collect();
                Ok((held, unbound))
            })
            .await?;
        let mut removed_associations = 0;
        if deactivation.erased {
            let actor = Actor::homeserver(&homeserver.server_name);
            let mut addresses = held.clone();
            addresses.extend(unbound.into_iter().filter(|a| !held.contains(a)));
            for address in addresses {
                if self.held_by_someone_else(&address, mxid).await? {
                    tracing::info!(
                        address = %log_tag(&address),
                        "deactivation: an address of the user is bound to someone else now; not erased"
                    );
                    continue;
                }
                let erasure = self.identity.erase(MEDIUM_EMAIL, &address, &actor).await?;
                if erasure.unbound_from.as_deref() == Some(mxid) {
                    removed_associations += 1;
                }
            }
        } else {
            for address in held {
                let Ok(address) = normalize_email(&address) else {
                    continue;
                };
                if self.identity.unbind_address(&address, mxid).await? {
                    removed_associations += 1;
                }
            }
        }
        let owned = mxid.to_owned();
        self.db
            .run(move |conn| {
                store::forget_unbinds_of(conn, &owned)?;
                store::purge_unbinds(conn, now - UNBIND_MEMORY_MS)?;
                Ok(())
            })
            .await?;
        // Whatever the associations were, a deactivated user has no entry.
        self.directory.on_unbind(mxid).await?;
        tracing::info!(
            user_id = %mxid,
            erased = deactivation.erased,
            removed_associations,
            "account deactivated by its homeserver"
        );
        Ok(DeactivationOutcome {
            removed_associations,
        })
    }

    /// Whether `address` is bound to another Matrix ID than `mxid`.
    async fn held_by_someone_else(
        &self,
        address: &str,
        mxid: &str,
    ) -> Result<bool, HomeserverError> {
        let (address, mxid) = (address.to_owned(), mxid.to_owned());
        Ok(self
            .db
            .run(move |conn| {
                Ok(identity_store::association(conn, MEDIUM_EMAIL, &address)?
                    .is_some_and(|a| a.mxid != mxid))
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(outcome: Outcome, hs: Option<&str>, shadow: Option<&str>) -> Decision {
        Decision {
            outcome,
            homeserver: hs.map(String::from),
            shadow_homeserver: shadow.map(String::from),
            organisation: None,
            rule: None,
            rule_id: None,
            reason: "no rule matches".into(),
            reason_code: crate::policy::ReasonCode::UnknownDomain,
        }
    }

    #[test]
    fn the_scope_rules_name_themselves() {
        let hs = Homeserver {
            server_name: "agent.a.example".into(),
        };
        hs.check_user("@jean:agent.a.example").unwrap();
        hs.check_user("@jean:Agent.A.example").unwrap();
        let e = hs.check_user("@jean:agent.b.example").unwrap_err();
        assert!(
            matches!(&e, HomeserverError::OutOfScope(m) if m.contains("Matrix ID rule")),
            "{e}"
        );
        assert!(matches!(
            hs.check_user("jean"),
            Err(HomeserverError::InvalidParam(_))
        ));

        let allowed = decision(Outcome::Allowed, Some("agent.a.example"), None);
        hs.check_address(&allowed).unwrap();
        let shadowed = decision(
            Outcome::Allowed,
            Some("agent.b.example"),
            Some("agent.a.example"),
        );
        hs.check_address(&shadowed).unwrap();
        let elsewhere = decision(Outcome::Allowed, Some("agent.b.example"), None);
        let e = hs.check_address(&elsewhere).unwrap_err();
        assert!(
            matches!(&e, HomeserverError::OutOfScope(m) if m.contains("address rule") && m.contains("agent.b.example")),
            "{e}"
        );
        let denied = decision(Outcome::Denied, None, None);
        let e = hs.check_address(&denied).unwrap_err();
        assert!(
            matches!(&e, HomeserverError::OutOfScope(m) if m.contains("address rule") && m.contains("denies")),
            "{e}"
        );
    }

    #[test]
    fn profile_fields_tell_absent_from_null() {
        let r: ProfileReport = serde_json::from_value(serde_json::json!({
            "user_id": "@a:hs", "displayname": null
        }))
        .unwrap();
        assert_eq!(r.displayname, Some(None));
        assert_eq!(r.avatar_url, None);
        let r: ProfileReport = serde_json::from_value(serde_json::json!({
            "user_id": "@a:hs", "displayname": "A", "avatar_url": "mxc://hs/x"
        }))
        .unwrap();
        assert_eq!(r.displayname, Some(Some("A".into())));
        assert_eq!(r.avatar_url, Some(Some("mxc://hs/x".into())));
        assert!(
            serde_json::from_value::<ProfileReport>(serde_json::json!({
                "user_id": "@a:hs", "displayname": 3
            }))
            .is_err()
        );
    }

    #[test]
    fn requests_hide_the_address_in_debug_output() {
        let r: ThreepidRequest = serde_json::from_value(serde_json::json!({
            "medium": "email", "address": "alice@example.org", "mxid": "@a:hs"
        }))
        .unwrap();
        assert!(!format!("{r:?}").contains("alice@"));
    }

    #[test]
    fn only_email_addresses() {
        assert!(matches!(
            email("msisdn", "33612345678"),
            Err(HomeserverError::InvalidParam(_))
        ));
        assert!(matches!(
            email("email", "not an address"),
            Err(HomeserverError::InvalidEmail(_))
        ));
        assert_eq!(
            email("email", "Jean@Finances.example").unwrap().as_str(),
            "jean@finances.example"
        );
    }
}
