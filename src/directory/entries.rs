//! Directory entries: created or refreshed when an address is bound, removed when it is
//! unbound, moderated by administrators.
//!
//! An entry's verified name comes from, in order: an admin override, the agency LDAP record of
//! the bound address (matched by the address's lookup key, `sha256(normalised email)`), or the
//! address's local part. Its organisation label is the one of the allowlist rule that decided
//! the address, else the LDAP record's. Every change recomputes the folded search key in the
//! same transaction, so the index never disagrees with the entry.

use sha2::{Digest, Sha256};

use super::error::DirectoryError;
use super::names::{format_display_name, name_from_ldap, name_from_local_part};
use super::search::{fold, search_key};
use super::service::DirectoryService;
use crate::policy::{Address, Decision, Outcome};
use crate::store::directory::{self as store, EntryRow, LdapNameRow};
use crate::store::{DbConn, StoreError};

/// Where an entry's verified name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameSource {
    /// The agency LDAP directory.
    Ldap,
    /// The bound address's local part.
    Email,
    /// An administrator's override.
    Admin,
}

impl NameSource {
    /// `"ldap"`, `"email"` or `"admin"`, as stored and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::Ldap => "ldap",
            NameSource::Email => "email",
            NameSource::Admin => "admin",
        }
    }

    fn parse(s: &str) -> NameSource {
        match s {
            "ldap" => NameSource::Ldap,
            "admin" => NameSource::Admin,
            _ => NameSource::Email,
        }
    }
}

/// Whether searches may return an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Returned to searches (unless external or inactive).
    Visible,
    /// Never returned (moderation).
    Hidden,
}

impl Visibility {
    /// `"visible"` or `"hidden"`, as stored and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Visible => "visible",
            Visibility::Hidden => "hidden",
        }
    }

    fn parse(s: &str) -> Visibility {
        if s == "visible" {
            Visibility::Visible
        } else {
            Visibility::Hidden
        }
    }
}

/// One bound Matrix user as the directory publishes them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirectoryEntry {
    /// The Matrix user id.
    pub user_id: String,
    /// The user's homeserver (shard).
    pub homeserver: String,
    /// The verified name (without the organisation).
    pub name: String,
    /// Where the verified name comes from.
    pub name_source: NameSource,
    /// The organisation label.
    pub organisation: Option<String>,
    /// The avatar, as the homeserver replicated it.
    pub avatar_url: Option<String>,
    /// Moderation state.
    pub visibility: Visibility,
    /// Whether the bound address was invite-required (an external user).
    pub external: bool,
    /// False once the homeserver replicated the account as deactivated.
    pub active: bool,
    /// Last change, in milliseconds since the epoch.
    pub updated_at: i64,
}

impl DirectoryEntry {
    /// The published display name (`directory.display_name_format`).
    pub fn display_name(&self, format: &str) -> String {
        format_display_name(format, &self.name, self.organisation.as_deref())
    }

    pub(crate) fn from_row(row: &EntryRow) -> DirectoryEntry {
        DirectoryEntry {
            user_id: row.mxid.clone(),
            homeserver: row.homeserver.clone(),
            name: row.name.clone(),
            name_source: NameSource::parse(&row.name_source),
            organisation: row.organisation.clone(),
            avatar_url: row.avatar_url.clone(),
            visibility: Visibility::parse(&row.visibility),
            external: row.external,
            active: row.active,
            updated_at: row.updated_at,
        }
    }
}

/// The lookup key of a normalised address: `sha256(address)` in lower-case hex. Entries and
/// LDAP records are matched by it, so the directory keeps no address in clear.
pub fn email_lookup_key(normalised_address: &str) -> String {
    let digest = Sha256::digest(normalised_address.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Splits `@localpart:server` into its localpart and server name.
pub fn split_user_id(user_id: &str) -> Result<(&str, &str), DirectoryError> {
    let invalid = || DirectoryError::InvalidUserId(user_id.to_owned());
    if user_id.len() > 255 {
        return Err(invalid());
    }
    let (local, server) = user_id
        .strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(invalid)?;
    if local.is_empty() || local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    crate::matrix::server_name::validate_server_name(server).map_err(|_| invalid())?;
    Ok((local, server))
}

/// The verified name, where it comes from and the organisation label, from an entry's sources:
/// an admin override, else the LDAP record, else the name the address gives (`fallback`); the
/// allowlist rule's label, else the LDAP record's organisation.
pub(crate) fn resolve_name(
    admin_name: Option<&str>,
    ldap: Option<&LdapNameRow>,
    fallback: &str,
    policy_organisation: Option<&str>,
) -> (String, NameSource, Option<String>) {
    let (name, source) = match (admin_name, ldap) {
        (Some(admin), _) => (admin.to_owned(), NameSource::Admin),
        (None, Some(record)) => (record.name.clone(), NameSource::Ldap),
        (None, None) => (fallback.to_owned(), NameSource::Email),
    };
    let organisation = policy_organisation
        .map(str::to_owned)
        .or_else(|| ldap.and_then(|record| record.organisation.clone()));
    (name, source, organisation)
}

/// Recomputes the name, its source, the organisation and the search key from the entry's
/// sources; returns whether any of them changed.
pub(crate) fn refresh(row: &mut EntryRow, ldap: Option<&LdapNameRow>) -> bool {
    let (name, source, organisation) = resolve_name(
        row.admin_name.as_deref(),
        ldap,
        &row.fallback_name,
        row.policy_organisation.as_deref(),
    );
    let localpart = split_user_id(&row.mxid).map_or(row.mxid.as_str(), |(local, _)| local);
    let key = search_key(&name, organisation.as_deref(), localpart);
    let organisation_key = organisation.as_deref().map(fold).unwrap_or_default();
    let changed = row.name != name
        || row.name_source != source.as_str()
        || row.organisation != organisation
        || row.search_all != key.all
        || row.search_name != key.name
        || row.search_organisation != key.organisation
        || row.search_localpart != key.localpart
        || row.organisation_key != organisation_key;
    row.name = name;
    row.name_source = source.as_str().to_owned();
    row.organisation = organisation;
    row.search_name = key.name;
    row.search_organisation = key.organisation;
    row.search_localpart = key.localpart;
    row.search_all = key.all;
    row.organisation_key = organisation_key;
    changed
}

/// A trimmed, non-empty organisation label.
pub(crate) fn label(organisation: Option<&str>) -> Option<String> {
    organisation
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
}

impl DirectoryService {
    /// Creates or refreshes the entry of `mxid`, which just bound `address` (whose policy decision
    /// is `decision`). An admin override and the moderation state of an existing entry are kept;
    /// an address that is not plainly allowed (invite required) makes the entry external.
    pub async fn on_bind(
        &self,
        mxid: &str,
        address: &Address,
        decision: &Decision,
    ) -> Result<DirectoryEntry, DirectoryError> {
        let (_, server) = split_user_id(mxid)?;
        let mut fresh = EntryRow {
            mxid: mxid.to_owned(),
            homeserver: server.to_owned(),
            name: String::new(),
            name_source: NameSource::Email.as_str().to_owned(),
            fallback_name: name_from_local_part(address.local()),
            admin_name: None,
            organisation: None,
            policy_organisation: label(decision.organisation.as_deref()),
            avatar_url: None,
            visibility: Visibility::Visible.as_str().to_owned(),
            external: decision.outcome != Outcome::Allowed,
            active: true,
            email_key: email_lookup_key(address.as_str()),
            search_name: String::new(),
            search_organisation: String::new(),
            search_localpart: String::new(),
            search_all: String::new(),
            organisation_key: String::new(),
            created_at: self.clock.now_ms(),
            updated_at: self.clock.now_ms(),
            user_displayname: None,
        };
        let row = self
            .db
            .run(move |conn| {
                crate::store::transaction(conn, |conn| {
                    if let Some(existing) = store::get(conn, &fresh.mxid)? {
                        fresh.admin_name = existing.admin_name;
                        fresh.visibility = existing.visibility;
                        fresh.avatar_url = existing.avatar_url;
                        fresh.user_displayname = existing.user_displayname;
                        fresh.created_at = existing.created_at;
                    }
                    let ldap = store::ldap_name(conn, &fresh.email_key)?;
                    refresh(&mut fresh, ldap.as_ref());
                    store::upsert(conn, &fresh)?;
                    Ok(fresh)
                })
            })
            .await?;
        tracing::debug!(user_id = %row.mxid, source = %row.name_source, external = row.external, "directory entry bound");
        Ok(DirectoryEntry::from_row(&row))
    }

    /// Removes the entry of `mxid` (its address was unbound). Removing nothing is not an error. A
    /// user with another address still bound gets their entry back from that address's next bind.
    pub async fn on_unbind(&self, mxid: &str) -> Result<(), DirectoryError> {
        let owned = mxid.to_owned();
        let removed = self.db.run(move |conn| store::delete(conn, &owned)).await?;
        if removed {
            tracing::debug!(user_id = %mxid, "directory entry removed on unbind");
        }
        Ok(())
    }

    /// The entry of `mxid`, whatever its visibility.
    pub async fn entry(&self, mxid: &str) -> Result<Option<DirectoryEntry>, DirectoryError> {
        let owned = mxid.to_owned();
        let row = self.db.run(move |conn| store::get(conn, &owned)).await?;
        Ok(row.as_ref().map(DirectoryEntry::from_row))
    }

    /// Loads the entry of `mxid`, lets `change` alter it, and stores it, in one transaction.
    async fn modify(
        &self,
        mxid: &str,
        change: impl FnOnce(&mut DbConn, &mut EntryRow) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<DirectoryEntry, DirectoryError> {
        let owned = mxid.to_owned();
        let now = self.clock.now_ms();
        let row = self
            .db
            .run(move |conn| {
                crate::store::transaction(conn, |conn| {
                    let Some(mut row) = store::get(conn, &owned)? else {
                        return Ok(None);
                    };
                    change(conn, &mut row)?;
                    row.updated_at = now;
                    store::update(conn, &row)?;
                    Ok(Some(row))
                })
            })
            .await?;
        row.map(|r| DirectoryEntry::from_row(&r))
            .ok_or_else(|| DirectoryError::NotFound(mxid.to_owned()))
    }

    /// Hides an entry from every search, or shows it again (moderation).
    pub async fn set_visibility(
        &self,
        mxid: &str,
        visibility: Visibility,
    ) -> Result<DirectoryEntry, DirectoryError> {
        let entry = self
            .modify(mxid, move |_, row| {
                row.visibility = visibility.as_str().to_owned();
                Ok(())
            })
            .await?;
        tracing::info!(user_id = %mxid, visibility = visibility.as_str(), "directory entry visibility changed");
        Ok(entry)
    }

    /// Sets an administrator's override of the verified name (source `admin`), or with `None`
    /// removes it, the name falling back to LDAP or the local part.
    pub async fn set_admin_name(
        &self,
        mxid: &str,
        name: Option<&str>,
    ) -> Result<DirectoryEntry, DirectoryError> {
        let admin_name = match name {
            Some(text) => {
                Some(name_from_ldap(Some(text), None, None).ok_or(DirectoryError::InvalidName)?)
            }
            None => None,
        };
        let entry = self
            .modify(mxid, move |conn, row| {
                row.admin_name = admin_name;
                let ldap = store::ldap_name(conn, &row.email_key)?;
                refresh(row, ldap.as_ref());
                Ok(())
            })
            .await?;
        tracing::info!(user_id = %mxid, source = entry.name_source.as_str(), "directory entry renamed");
        Ok(entry)
    }

    /// Removes an entry (moderation); false when there was none. A later bind creates it again.
    pub async fn remove(&self, mxid: &str) -> Result<bool, DirectoryError> {
        let owned = mxid.to_owned();
        let removed = self.db.run(move |conn| store::delete(conn, &owned)).await?;
        if removed {
            tracing::info!(user_id = %mxid, "directory entry removed");
        }
        Ok(removed)
    }

    /// Imports `n` synthetic people (`directory::synthetic`) as visible, active, internal entries,
    /// in transactions of 10,000 with multi-row inserts; `progress(done, n)` is called after each.
    /// Their generated name is recorded as what their address gives (source `email`): it is demo
    /// data, not an authority.
    pub async fn import_synthetic(
        &self,
        n: usize,
        seed: u64,
        mut progress: impl FnMut(usize, usize) + Send + 'static,
    ) -> Result<ImportSummary, DirectoryError> {
        let now = self.clock.now_ms();
        let summary = self
            .db
            .run(move |conn| {
                let mut summary = ImportSummary::default();
                let mut people = super::synthetic::synthetic_people(n, seed);
                let mut done = 0;
                loop {
                    let rows: Vec<EntryRow> = people
                        .by_ref()
                        .take(IMPORT_TRANSACTION)
                        .map(|p| synthetic_row(&p, now))
                        .collect();
                    if rows.is_empty() {
                        break;
                    }
                    let inserted =
                        crate::store::transaction(conn, |conn| store::insert_new(conn, &rows))?;
                    summary.inserted += inserted;
                    summary.existing += rows.len() - inserted;
                    done += rows.len();
                    progress(done, n);
                }
                Ok(summary)
            })
            .await?;
        Ok(summary)
    }
}

/// What `import_synthetic` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportSummary {
    /// Entries created.
    pub inserted: usize,
    /// People whose user id already had an entry (the same seed imported twice).
    pub existing: usize,
}

/// People per transaction of a synthetic import.
const IMPORT_TRANSACTION: usize = 10_000;

fn synthetic_row(person: &super::synthetic::SyntheticPerson, now: i64) -> EntryRow {
    let email = crate::policy::normalize_email(&person.email)
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|_| person.email.clone());
    let mut row = EntryRow {
        mxid: person.mxid.clone(),
        homeserver: person.homeserver.clone(),
        name: String::new(),
        name_source: NameSource::Email.as_str().to_owned(),
        fallback_name: person.name.clone(),
        admin_name: None,
        organisation: None,
        policy_organisation: label(Some(&person.organisation)),
        avatar_url: None,
        visibility: Visibility::Visible.as_str().to_owned(),
        external: false,
        active: true,
        email_key: email_lookup_key(&email),
        search_name: String::new(),
        search_organisation: String::new(),
        search_localpart: String::new(),
        search_all: String::new(),
        organisation_key: String::new(),
        created_at: now,
        updated_at: now,
        user_displayname: None,
    };
    refresh(&mut row, None);
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mxid: &str, fallback: &str, policy_org: Option<&str>) -> EntryRow {
        EntryRow {
            mxid: mxid.into(),
            homeserver: "hs.example".into(),
            name: String::new(),
            name_source: String::new(),
            fallback_name: fallback.into(),
            admin_name: None,
            organisation: None,
            policy_organisation: policy_org.map(Into::into),
            avatar_url: None,
            visibility: "visible".into(),
            external: false,
            active: true,
            email_key: "k".into(),
            search_name: String::new(),
            search_organisation: String::new(),
            search_localpart: String::new(),
            search_all: String::new(),
            organisation_key: String::new(),
            created_at: 0,
            updated_at: 0,
            user_displayname: None,
        }
    }

    fn record(name: &str, org: Option<&str>) -> LdapNameRow {
        LdapNameRow {
            email_key: "k".into(),
            name: name.into(),
            organisation: org.map(Into::into),
            dn: "uid=x".into(),
            sync_run: "r".into(),
            synced_at: 0,
        }
    }

    #[test]
    fn lookup_keys_are_sha256_hex() {
        // echo -n "alice@example.com" | sha256sum
        assert_eq!(
            email_lookup_key("alice@example.com"),
            "ff8d9819fc0e12bf0d24892e45987e249a28dce836a85cad60e28eaaa8c6d976"
        );
    }

    #[test]
    fn user_ids() {
        assert_eq!(
            split_user_id("@jean.dupont:agent.finances.example").unwrap(),
            ("jean.dupont", "agent.finances.example")
        );
        assert_eq!(split_user_id("@a:[::1]:8448").unwrap(), ("a", "[::1]:8448"));
        for bad in [
            "jean:hs.example",
            "@:hs.example",
            "@jean",
            "@je an:hs",
            "@j:bad host",
            "",
        ] {
            assert!(split_user_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn name_priority_admin_then_ldap_then_local_part() {
        let mut r = row("@jdupont:hs.example", "Jdupont", Some("Finances"));
        assert!(refresh(&mut r, None));
        assert_eq!(
            (r.name.as_str(), r.name_source.as_str()),
            ("Jdupont", "email")
        );
        assert!(!refresh(&mut r, None), "nothing changed");

        let ldap = record("Jean Dupont", Some("Ministère des Finances"));
        assert!(refresh(&mut r, Some(&ldap)));
        assert_eq!(
            (r.name.as_str(), r.name_source.as_str()),
            ("Jean Dupont", "ldap")
        );
        // The rule's label wins over LDAP's organisation.
        assert_eq!(r.organisation.as_deref(), Some("Finances"));
        assert_eq!(r.search_all, "jean dupont finances jdupont");
        assert_eq!(r.organisation_key, "finances");

        r.admin_name = Some("Jean-Marc Dupont".into());
        assert!(refresh(&mut r, Some(&ldap)));
        assert_eq!(
            (r.name.as_str(), r.name_source.as_str()),
            ("Jean-Marc Dupont", "admin")
        );

        r.admin_name = None;
        assert!(refresh(&mut r, None));
        assert_eq!(
            (r.name.as_str(), r.name_source.as_str()),
            ("Jdupont", "email")
        );
    }

    #[test]
    fn ldap_organisation_when_the_rule_has_no_label() {
        let mut r = row("@hl:hs.example", "Hl", None);
        refresh(&mut r, Some(&record("Hélène Lefèvre", Some("Douanes"))));
        assert_eq!(r.organisation.as_deref(), Some("Douanes"));
        assert_eq!(r.search_name, "helene lefevre");
        refresh(&mut r, None);
        assert_eq!(r.organisation, None);
        assert_eq!(r.organisation_key, "");
    }

    #[test]
    fn display_names_use_the_format() {
        let mut r = row("@jd:hs.example", "Jean Dupont", Some("Finances"));
        refresh(&mut r, None);
        let entry = DirectoryEntry::from_row(&r);
        assert_eq!(
            entry.display_name("{name} [{organisation}]"),
            "Jean Dupont [Finances]"
        );
        assert_eq!(
            entry.display_name("{organisation} - {name}"),
            "Finances - Jean Dupont"
        );
        let mut r = row("@jd:hs.example", "Jean Dupont", None);
        refresh(&mut r, None);
        assert_eq!(
            DirectoryEntry::from_row(&r).display_name("{name} [{organisation}]"),
            "Jean Dupont"
        );
    }
}
