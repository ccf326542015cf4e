//! 3PID invitations: `POST /v2/store-invite` (a homeserver stores an invitation to an email
//! address that is not bound yet), the ephemeral keys minted for them, `POST /v2/sign-ed25519`,
//! and whether an address is invited (`/internal-info`).
//!
//! Synapse sends empty strings for the optional fields it does not know, and may add fields of
//! its own: both are accepted (empty strings count as absent, unknown fields are ignored).
//!
//! The invitation mail (template `invite`) is queued in the outbox in the transaction that
//! stores the invitation, so it is sent once the invitation exists and never without it.

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};

use super::accounts::Account;
use super::{IdentityError, IdentityService, public_base};
use crate::config::WindowLimit;
use crate::mail::outbox;
use crate::mail::{InviteMail, Language};
use crate::matrix::keys::canonical_public_key;
use crate::matrix::server_name::user_id_server;
use crate::matrix::signing::{DEFAULT_KEY_ID, SigningKey, sign_json};
use crate::policy::{Outcome, normalize_email};
use crate::secret::log_tag;
use crate::store::identity as store;
use crate::store::invites as invite_store;
use crate::store::invites::InviteRow;
use crate::store::{DbConn, StoreError};

/// Length of an invitation token (`[0-9a-zA-Z]`, within the spec's `[0-9a-zA-Z.=_-]{1,255}`).
pub const INVITE_TOKEN_LEN: usize = 32;
/// Longest optional field kept (room names, display names, …), in characters.
const MAX_DETAIL_CHARS: usize = 1000;
/// How long an expired, never-bound invitation is kept before it is purged.
pub const EXPIRED_INVITE_RETENTION_MS: i64 = 24 * 3600 * 1000;
/// The outbox kind of invitation mails (their dedupe key is the invitation token).
pub const MAIL_KIND: &str = "invite";

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    })
}

/// The body of `POST /v2/store-invite`.
#[derive(Debug, Clone, Deserialize)]
pub struct InviteRequest {
    /// `email`.
    pub medium: String,
    /// The invited address.
    pub address: String,
    /// The room.
    pub room_id: String,
    /// The inviter (must be the caller).
    pub sender: String,
    /// The room's canonical alias.
    #[serde(default, deserialize_with = "lenient_string")]
    pub room_alias: Option<String>,
    /// The room's avatar.
    #[serde(default, deserialize_with = "lenient_string")]
    pub room_avatar_url: Option<String>,
    /// The room's join rule.
    #[serde(default, deserialize_with = "lenient_string")]
    pub room_join_rules: Option<String>,
    /// The room's name.
    #[serde(default, deserialize_with = "lenient_string")]
    pub room_name: Option<String>,
    /// The room's type (`m.space`).
    #[serde(default, deserialize_with = "lenient_string")]
    pub room_type: Option<String>,
    /// The inviter's display name.
    #[serde(default, deserialize_with = "lenient_string")]
    pub sender_display_name: Option<String>,
    /// The inviter's avatar.
    #[serde(default, deserialize_with = "lenient_string")]
    pub sender_avatar_url: Option<String>,
    /// The web client the homeserver suggests for the link (Synapse's
    /// `email.invite_client_location`): used only when `invites.allowed_web_clients` lists it.
    #[serde(
        default,
        rename = "org.matrix.web_client_location",
        deserialize_with = "lenient_string"
    )]
    pub web_client_location: Option<String>,
}

impl InviteRequest {
    /// The optional fields that were given, capped in length, as stored.
    fn details(&self) -> Map<String, Value> {
        let fields = [
            ("room_alias", &self.room_alias),
            ("room_avatar_url", &self.room_avatar_url),
            ("room_join_rules", &self.room_join_rules),
            ("room_name", &self.room_name),
            ("room_type", &self.room_type),
            ("sender_display_name", &self.sender_display_name),
            ("sender_avatar_url", &self.sender_avatar_url),
        ];
        fields
            .into_iter()
            .filter_map(|(k, v)| {
                v.as_ref().map(|s| {
                    (
                        k.to_string(),
                        json!(s.chars().take(MAX_DETAIL_CHARS).collect::<String>()),
                    )
                })
            })
            .collect()
    }
}

/// What `store-invite` answers (the spec's response body; fields in alphabetical order, the
/// order the body has always been written in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InviteReceipt {
    /// The redacted address (`j…@f…`).
    pub display_name: String,
    /// The long-term key, then the ephemeral one.
    pub public_keys: Vec<InvitePublicKey>,
    /// The invitation token.
    pub token: String,
}

/// A public key that signs for an invitation, and where to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InvitePublicKey {
    /// `…/pubkey/isvalid` or `…/pubkey/ephemeral/isvalid`.
    pub key_validity_url: String,
    /// Unpadded base64.
    pub public_key: String,
}

/// A fresh invitation token.
pub fn mint_invite_token(rng: &mut impl RngCore) -> String {
    crate::secret::random_token(rng, INVITE_TOKEN_LEN)
}

/// The address as shown to the inviter: first character of each part (`jean@finances.fr` →
/// `j…@f…`), so the room learns nothing it did not know.
pub fn redact_address(address: &str) -> String {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let first = |s: &str| s.chars().next().map(String::from).unwrap_or_default();
    format!("{}…@{}…", first(local), first(domain))
}

impl IdentityService {
    /// `POST /v2/store-invite`: checks the caller and the address, then stores the invitation with
    /// its mail (in `language`) and answers its token, the keys that will sign it, and the
    /// redacted address.
    pub async fn store_invite(
        &self,
        account: &Account,
        request: &InviteRequest,
        language: Language,
        rng: &mut (impl RngCore + CryptoRng),
        now_ms: i64,
    ) -> Result<InviteReceipt, IdentityError> {
        if request.sender != account.user_id {
            return Err(IdentityError::NotYours(
                "The sender of an invitation must be the user whose token is used".into(),
            ));
        }
        if request.medium != "email" {
            return Err(IdentityError::UnsupportedMedium(
                "Only the `email` medium is supported".into(),
            ));
        }
        let address = normalize_email(&request.address)
            .map_err(|e| IdentityError::InvalidEmail(e.to_string()))?;
        if !request.room_id.starts_with('!') || request.room_id.len() > 255 {
            return Err(IdentityError::InvalidParam(
                "room_id must be a room ID (`!…`)".into(),
            ));
        }
        let decision = self.allowlist.decide(&address, now_ms);
        let denial = (decision.outcome == Outcome::Denied).then(|| {
            let message = if decision.rule.is_some() {
                "Invitations to this address are not allowed on the service"
            } else {
                "This address's administration is not on the service yet; it cannot be invited"
            };
            (message, decision.reason_code)
        });

        let token = mint_invite_token(rng);
        let ephemeral = SigningKey::generate(rng);
        let row = InviteRow {
            token: token.clone(),
            medium: "email".into(),
            address: address.as_str().to_string(),
            room_id: request.room_id.clone(),
            sender: request.sender.clone(),
            details_json: Value::Object(request.details()).to_string(),
            ephemeral_public_key: ephemeral.public_key_base64(),
            created_at: now_ms,
            expires_at: now_ms.saturating_add(self.config.invites.validity.as_millis_i64()),
            delivery_mxid: None,
            delivery_attempts: 0,
            next_delivery_at: None,
            last_error: None,
            delivered_at: None,
            delivery_failed_at: None,
        };
        let mail = InviteMail {
            sender_display_name: request.sender_display_name.clone(),
            sender: request.sender.clone(),
            sender_avatar_url: request.sender_avatar_url.clone(),
            room_id: request.room_id.clone(),
            room_alias: request.room_alias.clone(),
            room_name: request.room_name.clone(),
            room_avatar_url: request.room_avatar_url.clone(),
            room_join_rules: request.room_join_rules.clone(),
            room_type: request.room_type.clone(),
            web_client_location: self.web_client_location(request.web_client_location.as_deref()),
            token: token.clone(),
            // Never stored: only the mail carries it (and the outbox row until it is sent).
            ephemeral_private_key: ephemeral.to_seed_base64_url_safe(),
            identity_server_url: public_base(&self.config),
            address: address.as_str().to_string(),
            server_name: user_id_server(&request.sender)
                .unwrap_or(&self.config.server.name)
                .to_string(),
        };
        let message = self
            .mailer
            .templates()
            .render_invite(language, &mail)
            .and_then(|rendered| {
                self.mailer
                    .compose(address.as_str(), &rendered, now_ms, rng)
            })
            .map_err(|e| IdentityError::Internal(format!("the invitation mail: {e}")))?;
        let per_sender = self.config.invites.per_sender;
        let per_address = self.config.invites.per_address;
        let outcome = self
            .db
            .run(move |conn| {
                if let Some(bound) = store::association(conn, &row.medium, &row.address)?
                    && bound.not_before <= now_ms
                    && now_ms < bound.not_after
                {
                    return Ok(Err(IdentityError::ThreepidInUse { mxid: bound.mxid }));
                }
                if let Some((message, reason_code)) = denial {
                    return Ok(Err(IdentityError::ThreepidDenied {
                        message: message.into(),
                        reason_code,
                    }));
                }
                let sent = invite_store::invites_by_sender_since(
                    conn,
                    &row.sender,
                    now_ms - per_sender.within.as_millis_i64(),
                )?;
                if let Some(retry_after_ms) = over_limit(sent, per_sender, now_ms) {
                    return Ok(Err(IdentityError::RateLimited { retry_after_ms }));
                }
                let received = invite_store::invites_to_address_since(
                    conn,
                    &row.medium,
                    &row.address,
                    now_ms - per_address.within.as_millis_i64(),
                )?;
                if let Some(retry_after_ms) = over_limit(received, per_address, now_ms) {
                    return Ok(Err(IdentityError::RateLimited { retry_after_ms }));
                }
                crate::store::transaction(conn, |conn| {
                    invite_store::insert_invite(conn, &row)?;
                    outbox::enqueue(conn, &message, MAIL_KIND, &row.token, now_ms)?;
                    Ok::<_, StoreError>(())
                })?;
                Ok(Ok(()))
            })
            .await?;
        if let Err(e) = outcome {
            tracing::info!(
                domain = address.ascii_domain(),
                address = %log_tag(address.as_str()),
                error = %e,
                "invitation refused"
            );
            return Err(e);
        }
        self.mailer.wake();
        tracing::info!(
            domain = address.ascii_domain(),
            address = %log_tag(address.as_str()),
            language = language.code(),
            "invitation stored, its mail queued"
        );
        let base = public_base(&self.config);
        Ok(InviteReceipt {
            token,
            public_keys: vec![
                InvitePublicKey {
                    key_validity_url: format!("{base}/_matrix/identity/v2/pubkey/isvalid"),
                    public_key: self.signing_key().public_key_base64(),
                },
                InvitePublicKey {
                    key_validity_url: format!(
                        "{base}/_matrix/identity/v2/pubkey/ephemeral/isvalid"
                    ),
                    public_key: ephemeral.public_key_base64(),
                },
            ],
            display_name: redact_address(address.as_str()),
        })
    }

    /// The web client an invitation mail links to: the one the request suggests when
    /// `invites.allowed_web_clients` lists it (compared without a trailing `/`), else
    /// `invites.web_client_url`.
    fn web_client_location(&self, requested: Option<&str>) -> Option<String> {
        let invites = &self.config.invites;
        if let Some(requested) = requested.map(str::trim).filter(|r| !r.is_empty()) {
            let wanted = requested.trim_end_matches('/');
            if invites
                .allowed_web_clients
                .iter()
                .any(|allowed| allowed.trim_end_matches('/') == wanted)
            {
                return Some(wanted.to_string());
            }
            tracing::debug!(
                "org.matrix.web_client_location is not in invites.allowed_web_clients: ignored"
            );
        }
        invites.web_client_url.clone()
    }

    /// `POST /v2/sign-ed25519`: the authenticated form of [`IdentityService::sign_invite`], for
    /// the caller's own Matrix ID.
    pub async fn sign_ed25519(
        &self,
        account: &Account,
        mxid: &str,
        token: &str,
        private_key: &str,
        now_ms: i64,
    ) -> Result<Value, IdentityError> {
        if mxid != account.user_id {
            return Err(IdentityError::NotYours(
                "mxid must be the user whose token is used".into(),
            ));
        }
        self.sign_invite(mxid, token, private_key, now_ms).await
    }

    /// Signs `{mxid, sender, token}` of a stored invitation with its ephemeral private key (the
    /// spec's "blind" signing, for clients without crypto): the invitee accepts the invitation
    /// as `mxid`, with whatever account they choose, by joining the room with this
    /// `third_party_signed`. The unauthenticated `/api/v1/sign-ed25519` (the mailed link) and
    /// the authenticated v2 endpoint both end here.
    ///
    /// Possession of the private key is the proof: it was mailed to the invited address only.
    /// A key that is not the invitation's is refused (a signature by it would verify nothing:
    /// homeservers check it against the public keys of the room's invite event).
    pub async fn sign_invite(
        &self,
        mxid: &str,
        token: &str,
        private_key: &str,
        now_ms: i64,
    ) -> Result<Value, IdentityError> {
        if !mxid.starts_with('@') || user_id_server(mxid).is_none() || mxid.len() > 255 {
            return Err(IdentityError::InvalidParam(
                "mxid must be a Matrix user ID (`@user:server`)".into(),
            ));
        }
        let key = SigningKey::from_seed_base64(DEFAULT_KEY_ID, private_key).map_err(|_| {
            IdentityError::InvalidParam(
                "private_key must be an unpadded base64 ed25519 seed".into(),
            )
        })?;
        let lookup = token.to_string();
        let invite = self
            .db
            .run(move |conn| invite_store::invite_by_token(conn, &lookup))
            .await?
            .filter(|i| i.expires_at > now_ms || i.delivered_at.is_some())
            .ok_or(IdentityError::UnknownInvite)?;
        if canonical_public_key(&invite.ephemeral_public_key).as_deref()
            != Some(key.public_key_base64().as_str())
        {
            tracing::info!(
                invite = %log_tag(&invite.token),
                "sign-ed25519 refused: the private key is not the invitation's"
            );
            return Err(IdentityError::Forbidden(
                "This private key does not belong to the invitation".into(),
            ));
        }
        let mut value = json!({ "mxid": mxid, "sender": invite.sender, "token": invite.token });
        sign_json(&mut value, &self.config.server.name, &key)
            .map_err(|e| IdentityError::Internal(format!("signing an invitation: {e}")))?;
        tracing::info!(
            invite = %log_tag(&invite.token),
            "invitation signed for acceptance"
        );
        Ok(value)
    }

    /// Whether an unexpired invitation to `address` (normalised) waits for a bind.
    pub async fn is_invited(&self, address: &str, now_ms: i64) -> Result<bool, StoreError> {
        let address = address.to_string();
        self.db
            .run(move |conn| invite_store::pending_invite_exists(conn, "email", &address, now_ms))
            .await
    }

    /// Whether `public_key` (any base64 form) is a valid ephemeral invitation key.
    pub async fn ephemeral_key_is_valid(
        &self,
        public_key: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let Some(key) = canonical_public_key(public_key) else {
            return Ok(false);
        };
        self.db
            .run(move |conn| invite_store::ephemeral_key_is_valid(conn, &key, now_ms))
            .await
    }
}

/// When the window holds `limit.max` events already: how long until the oldest leaves it.
fn over_limit((count, oldest): (i64, Option<i64>), limit: WindowLimit, now_ms: i64) -> Option<u64> {
    if count < i64::from(limit.max) {
        return None;
    }
    let leaves_at = oldest.unwrap_or(now_ms) + limit.within.as_millis_i64();
    Some(u64::try_from(leaves_at - now_ms).unwrap_or(0).max(1))
}

/// Deletes invitations that expired a while ago without being bound (blocking).
pub fn purge_expired(conn: &mut DbConn, now_ms: i64) -> Result<usize, StoreError> {
    invite_store::purge_expired_invites(conn, now_ms - EXPIRED_INVITE_RETENTION_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::time::Duration;

    #[test]
    fn addresses_are_redacted_to_first_letters() {
        assert_eq!(redact_address("jean.dupont@finances.gouv.fr"), "j…@f…");
        assert_eq!(redact_address("élodie@exemple.fr"), "é…@e…");
        assert_eq!(redact_address("x@y"), "x…@y…");
    }

    #[test]
    fn synapse_empty_strings_and_unknown_fields_are_accepted() {
        let r: InviteRequest = serde_json::from_value(json!({
            "medium": "email", "address": "a@b.example", "room_id": "!r:hs", "sender": "@s:hs",
            "room_alias": "", "room_avatar_url": "", "room_join_rules": "", "room_name": "Budget",
            "room_type": null, "sender_display_name": "", "sender_avatar_url": "",
            "org.matrix.web_client_location": "https://app.example", "guest_user_id": 3
        }))
        .unwrap();
        assert_eq!(r.room_alias, None);
        assert_eq!(r.room_type, None);
        assert_eq!(
            r.web_client_location.as_deref(),
            Some("https://app.example")
        );
        assert_eq!(r.room_name.as_deref(), Some("Budget"));
        assert_eq!(Value::Object(r.details()), json!({"room_name": "Budget"}));
    }

    #[test]
    fn long_details_are_capped() {
        let r = InviteRequest {
            medium: "email".into(),
            address: "a@b".into(),
            room_id: "!r".into(),
            sender: "@s:hs".into(),
            room_alias: None,
            room_avatar_url: None,
            room_join_rules: None,
            room_name: Some("é".repeat(5000)),
            room_type: None,
            sender_display_name: None,
            sender_avatar_url: None,
            web_client_location: None,
        };
        let d = r.details();
        assert_eq!(
            d["room_name"].as_str().unwrap().chars().count(),
            MAX_DETAIL_CHARS
        );
    }

    #[test]
    fn invite_tokens_fit_the_spec_alphabet() {
        let t = mint_invite_token(&mut StdRng::seed_from_u64(2));
        assert_eq!(t.len(), INVITE_TOKEN_LEN);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn window_limits_say_when_to_retry() {
        let limit = WindowLimit {
            max: 2,
            within: HumanDuration(Duration::from_secs(60)),
        };
        assert_eq!(over_limit((1, Some(0)), limit, 10_000), None);
        assert_eq!(over_limit((2, Some(5_000)), limit, 10_000), Some(55_000));
        assert_eq!(over_limit((3, Some(0)), limit, 60_000), Some(1));
    }
}
