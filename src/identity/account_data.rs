//! What annuaire holds about a user, for the user (`GET /_annuaire/account/v1/data`): their
//! identity account and its tokens (never the tokens themselves), the accepted terms, the
//! addresses bound to them, their directory entry and whether they left the directory, the
//! verified names the agency directory gave for their addresses, the invitations to those
//! addresses and their pending validations.

use serde::Serialize;
use utoipa::ToSchema;

use super::accounts::Account;
use super::{IdentityError, IdentityService};
use crate::directory::{Visibility, email_lookup_key};
use crate::store::account as account_store;
use crate::store::directory as directory_store;
use crate::store::identity as identity_store;
use crate::store::invites as invite_store;

/// Everything annuaire holds about the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AccountData {
    /// The caller's Matrix user id.
    pub user_id: String,
    /// Their identity server account (created when their client first registered).
    pub account: Option<IdentityAccountData>,
    /// Their access tokens to this identity server: when each was issued and expires.
    pub access_tokens: Vec<TokenData>,
    /// The addresses bound to them (what lookups answer).
    pub threepids: Vec<ThreepidData>,
    /// Their place in the cross-shard directory.
    pub directory: DirectoryData,
    /// What the agency LDAP directory says about their addresses (the verified name's source).
    pub verified_names: Vec<VerifiedNameData>,
    /// Room invitations sent to their addresses.
    pub invitations: Vec<InvitationData>,
    /// Email validations of their addresses not yet purged.
    pub validations: Vec<ValidationData>,
}

/// The identity server account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct IdentityAccountData {
    /// When it was created (ms since the epoch).
    pub created_at: i64,
    /// The terms documents accepted.
    pub accepted_terms: Vec<AcceptedTermsData>,
}

/// One accepted terms document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AcceptedTermsData {
    /// Its URL.
    pub url: String,
    /// When (ms).
    pub accepted_at: i64,
}

/// One access token, described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TokenData {
    /// Issued (ms).
    pub created_at: i64,
    /// Expires (ms).
    pub expires_at: i64,
}

/// One bound address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ThreepidData {
    /// `email`.
    pub medium: String,
    /// The address.
    pub address: String,
    /// When it was bound (ms).
    pub bound_at: i64,
}

/// The directory as it concerns the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DirectoryData {
    /// False when they asked to be left out (`POST /_annuaire/account/v1/directory`).
    pub listed: bool,
    /// Since when they are left out (ms).
    pub opted_out_at: Option<i64>,
    /// Whether searches return them now.
    pub searchable: bool,
    /// Their entry, when they have one (an address bound).
    pub entry: Option<EntryData>,
}

/// The caller's directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EntryData {
    /// Their homeserver.
    pub homeserver: String,
    /// The verified name.
    pub name: String,
    /// Where it comes from: `admin`, `ldap` or `email`.
    pub name_source: String,
    /// The organisation label.
    pub organisation: Option<String>,
    /// The avatar their homeserver replicated.
    pub avatar_url: Option<String>,
    /// An administrator hid the entry.
    pub hidden_by_administrator: bool,
    /// An external (invite-required) user.
    pub external: bool,
    /// False once their homeserver said the account was deactivated.
    pub active: bool,
    /// Created (ms).
    pub created_at: i64,
    /// Last changed (ms).
    pub updated_at: i64,
}

/// What the agency directory holds for one of the caller's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct VerifiedNameData {
    /// The address.
    pub address: String,
    /// The name.
    pub name: String,
    /// The organisation.
    pub organisation: Option<String>,
    /// The LDAP entry it came from.
    pub dn: String,
    /// When it was read (ms).
    pub synced_at: i64,
}

/// A room invitation sent to one of the caller's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct InvitationData {
    /// The address.
    pub address: String,
    /// The room.
    pub room_id: String,
    /// Who invited.
    pub sender: String,
    /// When (ms).
    pub created_at: i64,
    /// When it stops waiting (ms).
    pub expires_at: i64,
    /// When it was handed to the homeserver (ms).
    pub delivered_at: Option<i64>,
}

/// An email validation of one of the caller's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ValidationData {
    /// The address.
    pub address: String,
    /// Started (ms).
    pub created_at: i64,
    /// Validated (ms).
    pub validated_at: Option<i64>,
    /// Expires (ms).
    pub expires_at: i64,
}

impl IdentityService {
    /// Everything annuaire holds about `account`'s user (see the module documentation).
    pub async fn account_data(&self, account: &Account) -> Result<AccountData, IdentityError> {
        let user_id = account.user_id.clone();
        let show_externals = self.config.directory.show_externals;
        Ok(self
            .db
            .run(move |conn| {
                let identity_account = match account_store::account(conn, &user_id)? {
                    Some((created_at, _)) => Some(IdentityAccountData {
                        created_at,
                        accepted_terms: account_store::accepted_terms(conn, &user_id)?
                            .into_iter()
                            .map(|(url, accepted_at)| AcceptedTermsData { url, accepted_at })
                            .collect(),
                    }),
                    None => None,
                };
                let access_tokens = account_store::tokens(conn, &user_id)?
                    .into_iter()
                    .map(|(created_at, expires_at)| TokenData {
                        created_at,
                        expires_at,
                    })
                    .collect();
                let associations = identity_store::associations_of(conn, &user_id)?;
                let mut verified_names = Vec::new();
                let mut invitations = Vec::new();
                let mut validations = Vec::new();
                for a in &associations {
                    if let Some(l) =
                        directory_store::ldap_name(conn, &email_lookup_key(&a.address))?
                    {
                        verified_names.push(VerifiedNameData {
                            address: a.address.clone(),
                            name: l.name,
                            organisation: l.organisation,
                            dn: l.dn,
                            synced_at: l.synced_at,
                        });
                    }
                    for i in invite_store::invites_to_address(conn, &a.medium, &a.address)? {
                        invitations.push(InvitationData {
                            address: i.address,
                            room_id: i.room_id,
                            sender: i.sender,
                            created_at: i.created_at,
                            expires_at: i.expires_at,
                            delivered_at: i.delivered_at,
                        });
                    }
                    for (created_at, validated_at, expires_at) in
                        account_store::sessions_for(conn, &a.medium, &a.address)?
                    {
                        validations.push(ValidationData {
                            address: a.address.clone(),
                            created_at,
                            validated_at,
                            expires_at,
                        });
                    }
                }
                let opted_out_at = account_store::opted_out_at(conn, &user_id)?;
                let entry = directory_store::get(conn, &user_id)?;
                let searchable = opted_out_at.is_none()
                    && entry.as_ref().is_some_and(|e| {
                        e.visibility == Visibility::Visible.as_str()
                            && e.active
                            && (!e.external || show_externals)
                    });
                let entry = entry.map(|e| EntryData {
                    hidden_by_administrator: e.visibility != Visibility::Visible.as_str(),
                    homeserver: e.homeserver,
                    name: e.name,
                    name_source: e.name_source,
                    organisation: e.organisation,
                    avatar_url: e.avatar_url,
                    external: e.external,
                    active: e.active,
                    created_at: e.created_at,
                    updated_at: e.updated_at,
                });
                Ok(AccountData {
                    user_id,
                    account: identity_account,
                    access_tokens,
                    threepids: associations
                        .into_iter()
                        .map(|a| ThreepidData {
                            medium: a.medium,
                            address: a.address,
                            bound_at: a.created_at,
                        })
                        .collect(),
                    directory: DirectoryData {
                        listed: opted_out_at.is_none(),
                        opted_out_at,
                        searchable,
                        entry,
                    },
                    verified_names,
                    invitations,
                    validations,
                })
            })
            .await?)
    }
}
