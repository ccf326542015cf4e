//! What homeservers report through annuaire's homeserver API: the verified name an address gets
//! before its account exists (a new account's display name), and profile changes.
//!
//! A profile change updates the avatar of the user's entry. The display name the user typed is
//! never published (the verified name is); it is kept as `user_displayname`, which
//! administrators see next to the verified name.

use serde::Serialize;
use utoipa::ToSchema;

use super::entries::{NameSource, email_lookup_key, label, resolve_name, split_user_id};
use super::error::DirectoryError;
use super::names::{format_display_name, name_from_local_part};
use super::replication::avatar;
use super::service::DirectoryService;
use crate::policy::{Address, Decision};
use crate::store::directory as store;

/// The longest display name a homeserver may report: Synapse refuses longer ones.
pub const MAX_USER_DISPLAYNAME: usize = 256;

/// The verified name the directory gives an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct VerifiedName {
    /// The published form: the name and the organisation through
    /// `directory.display_name_format` ("Jean Dupont [Finances]").
    pub displayname: String,
    /// The organisation label, if any.
    pub organisation: Option<String>,
    /// The name alone.
    #[serde(skip)]
    pub name: String,
    /// Where it comes from.
    #[serde(skip)]
    pub source: NameSource,
}

/// A change of a field that may be absent (unchanged), `null` (cleared) or a value.
pub type FieldChange = Option<Option<String>>;

/// What a profile report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileOutcome {
    /// The entry was updated.
    Updated,
    /// The user has no entry (nothing bound): nothing to update.
    NoEntry,
}

impl DirectoryService {
    /// The verified name of `address` (whose policy decision is `decision`), as the directory
    /// would publish it once the address is bound: an administrator's override of an entry
    /// published from this address, else the agency LDAP record of the address, else the name
    /// its local part gives; the organisation label of the deciding rule, else LDAP's.
    pub async fn verified_name(
        &self,
        address: &Address,
        decision: &Decision,
    ) -> Result<VerifiedName, DirectoryError> {
        let key = email_lookup_key(address.as_str());
        let (admin_name, ldap) = self
            .db
            .run(move |conn| {
                let admin_name = store::by_email_keys(conn, std::slice::from_ref(&key))?
                    .into_iter()
                    .filter_map(|row| row.admin_name)
                    .min();
                let ldap = store::ldap_name(conn, &key)?;
                Ok((admin_name, ldap))
            })
            .await?;
        let policy_organisation = label(decision.organisation.as_deref());
        let (name, source, organisation) = resolve_name(
            admin_name.as_deref(),
            ldap.as_ref(),
            &name_from_local_part(address.local()),
            policy_organisation.as_deref(),
        );
        Ok(VerifiedName {
            displayname: format_display_name(
                &self.config.directory.display_name_format,
                &name,
                organisation.as_deref(),
            ),
            organisation,
            name,
            source,
        })
    }

    /// Applies a profile change that `mxid`'s homeserver reported: `avatar_url` reaches the
    /// entry (only `mxc://` URLs; anything else clears it), `displayname` is kept as what the
    /// user typed, never as the verified name. `None` leaves a field as it is, `Some(None)`
    /// clears it. A user without an entry (nothing bound) is not an error: there is nothing to
    /// update, and the next bind starts from the homeserver's next report.
    pub async fn report_profile(
        &self,
        mxid: &str,
        displayname: FieldChange,
        avatar_url: FieldChange,
    ) -> Result<ProfileOutcome, DirectoryError> {
        split_user_id(mxid)?;
        let displayname = match displayname {
            Some(Some(text)) if text.chars().count() > MAX_USER_DISPLAYNAME => {
                return Err(DirectoryError::InvalidProfile(format!(
                    "displayname is longer than {MAX_USER_DISPLAYNAME} characters"
                )));
            }
            Some(text) => Some(text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())),
            None => None,
        };
        let avatar_url = avatar_url.map(|url| avatar(url.as_deref()));
        let owned = mxid.to_owned();
        let now = self.clock.now_ms();
        let updated = self
            .db
            .run(move |conn| {
                crate::store::transaction(conn, |conn| {
                    let Some(mut row) = store::get(conn, &owned)? else {
                        return Ok(false);
                    };
                    let before = row.clone();
                    if let Some(name) = displayname {
                        row.user_displayname = name;
                    }
                    if let Some(url) = avatar_url {
                        row.avatar_url = url;
                    }
                    if row != before {
                        row.updated_at = now;
                        store::update(conn, &row)?;
                    }
                    Ok(true)
                })
            })
            .await?;
        if updated {
            tracing::debug!(user_id = %mxid, "profile reported by the homeserver applied");
            Ok(ProfileOutcome::Updated)
        } else {
            tracing::debug!(user_id = %mxid, "profile reported for a user without an entry");
            Ok(ProfileOutcome::NoEntry)
        }
    }
}
