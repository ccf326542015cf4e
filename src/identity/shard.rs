//! Which homeserver (shard) an address belongs to, as the Tchap-compatible `/info` (clients)
//! and `/internal-info` (homeservers) endpoints answer: the live policy's decision, the
//! address's existing binding (`/info`) and its pending invitations (`/internal-info`).

use serde::Serialize;
use utoipa::ToSchema;

use super::{IdentityError, IdentityService};
use crate::allowlist::{ShardAnswer, shard_answer};
use crate::matrix::server_name::user_id_server;
use crate::policy::{Address, Outcome, ReasonCode, normalize_email};

/// The answer of `/info` and `/internal-info`. Fields are in alphabetical order: the order the
/// body has always been written in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ShardInfo {
    /// `allowed`, `invite_required` or `denied`.
    pub decision: &'static str,
    /// The homeserver to register on (outside callers see the public, shadow one); for a bound
    /// address, the server it is bound on. Absent when denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs: Option<String>,
    /// Whether the address has a pending invitation (`/internal-info` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invited: Option<bool>,
    /// For a bound address whose policy now names another homeserver: that homeserver
    /// (`/info` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_hs: Option<String>,
    /// The organisation label of the winning rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organisation: Option<String>,
    /// Why, in words: the rule's own reason for internal callers, a plain sentence for others.
    pub reason: String,
    /// Why, as a stable code for programs (the same for every caller): `allowed`,
    /// `invite_required`, `unknown_domain`, `public_mail_provider`, `denied_domain`,
    /// `denied_address`, `rule_expired`.
    pub reason_code: ReasonCode,
    /// True when an invitation is needed (`decision` is `invite_required`).
    pub requires_invite: bool,
    /// The public address of the homeserver (internal callers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_hs: Option<String>,
}

/// Checks the medium and normalises the address (400 `M_INVALID_PARAM` / `M_INVALID_EMAIL`).
pub fn email_param(medium: &str, address: &str) -> Result<Address, IdentityError> {
    if medium != "email" {
        return Err(IdentityError::InvalidParam(
            "Only the `email` medium is supported".to_owned(),
        ));
    }
    normalize_email(address).map_err(|e| IdentityError::InvalidEmail(e.to_string()))
}

/// The reason shown to callers outside the internal networks: what happened, without the
/// rule's file and line.
fn public_reason(answer: &ShardAnswer) -> String {
    let d = &answer.decision;
    match (d.outcome, d.rule.is_some()) {
        (Outcome::Allowed, _) => "This address may register".into(),
        (Outcome::InviteRequired, _) => "This address may register once invited by a member".into(),
        (Outcome::Denied, true) => "This address is not allowed on the service".into(),
        (Outcome::Denied, false) => {
            "This address's administration is not on the service yet".into()
        }
    }
}

fn shard_info(answer: &ShardAnswer, internal: bool) -> ShardInfo {
    let d = &answer.decision;
    ShardInfo {
        decision: d.outcome.as_str(),
        hs: answer.hs.clone(),
        invited: None,
        new_hs: None,
        organisation: d.organisation.clone(),
        reason: if internal {
            d.reason.clone()
        } else {
            public_reason(answer)
        },
        reason_code: d.reason_code,
        requires_invite: d.outcome == Outcome::InviteRequired,
        shadow_hs: answer.shadow_hs.clone(),
    }
}

fn count(endpoint: &'static str, outcome: Outcome) {
    metrics::counter!(
        "annuaire_policy_decisions_total",
        "endpoint" => endpoint,
        "outcome" => outcome.as_str()
    )
    .increment(1);
}

impl IdentityService {
    /// `/info`: where `address` should register, for a client; `internal` when the caller is on
    /// the internal networks. An address already bound lives where it was bound: `hs` is that
    /// server, and `new_hs` the one the policy assigns now, when they differ.
    pub async fn shard_info(
        &self,
        address: &Address,
        internal: bool,
    ) -> Result<ShardInfo, IdentityError> {
        let now = self.clock.now_ms();
        let decision = self.allowlist.decide(address, now);
        count("info", decision.outcome);
        let answer = shard_answer(decision, internal);
        let mut info = shard_info(&answer, internal);
        let bound = self.bound_mxid("email", address.as_str(), now).await?;
        if let Some(bound_hs) = bound.as_deref().and_then(user_id_server) {
            let d = &answer.decision;
            let same = [&d.homeserver, &d.shadow_homeserver]
                .into_iter()
                .any(|hs| hs.as_deref() == Some(bound_hs));
            if !same {
                info.new_hs = answer.hs.clone();
                info.hs = Some(bound_hs.to_owned());
            }
        }
        Ok(info)
    }

    /// `/internal-info`: where `address` may register, for a homeserver (`threepid-checker`),
    /// with whether it is invited. Refused and invite-required attempts are counted per domain.
    pub async fn internal_shard_info(&self, address: &Address) -> Result<ShardInfo, IdentityError> {
        let now = self.clock.now_ms();
        let decision = self.allowlist.decide(address, now);
        count("internal_info", decision.outcome);
        self.allowlist.record_attempt(address, &decision, now);
        let answer = shard_answer(decision, true);
        let mut info = shard_info(&answer, true);
        info.invited = Some(self.is_invited(address.as_str(), now).await?);
        Ok(info)
    }
}
