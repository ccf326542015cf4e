//! Directory moderation by administrators: find entries as an operator (hidden, external and
//! deactivated ones included, and marked), hide and unhide them, override a verified name
//! (source `admin`), remove them.
//!
//! Every change is made and audited in one transaction (the entry before and after), through
//! the directory's own rules: the name goes through the same cleaning as LDAP names, and
//! `directory::entries::refresh` recomputes the name, its source and the search key, so the
//! search index never disagrees with the entry. User searches see a change at once (they read
//! the same table; nothing is cached).

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::AdminError;
use crate::audit::{self, Actor, action};
use crate::config::Config;
use crate::directory::Visibility;
use crate::directory::entries::{refresh, split_user_id};
use crate::directory::names::{format_display_name, name_from_ldap};
use crate::directory::search::{SearchKey, SearchQuery, parse_query, rank};
use crate::store::account as account_store;
use crate::store::admin::{self as admin_store, EntryQuery};
use crate::store::directory::{self as directory_store, EntryRow};
use crate::store::{DbConn, StoreError};

/// The longest prefix SQLite has a prefix index for (the directory migration's `prefix`).
const FTS5_MAX_PREFIX: usize = 8;

/// A directory entry as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ModeratedEntry {
    /// The Matrix user id.
    pub user_id: String,
    /// Their homeserver (shard).
    pub homeserver: String,
    /// The verified name (without the organisation).
    pub name: String,
    /// Where it comes from: `admin` (an override), `ldap` or `email` (the local part).
    pub name_source: String,
    /// The administrator's override of the name, if any.
    pub admin_name: Option<String>,
    /// The display name the user set on their homeserver, as the homeserver API reported it
    /// (never published: the verified name is).
    pub user_displayname: Option<String>,
    /// The name as searches publish it (`directory.display_name_format`).
    pub display_name: String,
    /// The organisation label.
    pub organisation: Option<String>,
    /// The avatar the homeserver replicated.
    pub avatar_url: Option<String>,
    /// `visible` or `hidden` (moderation).
    pub visibility: String,
    /// The user asked to be left out of the directory (`POST /_annuaire/account/v1/directory`):
    /// searches skip them whatever `visibility` says.
    pub opted_out: bool,
    /// An external (invite-required) user.
    pub external: bool,
    /// False once the homeserver replicated the account as deactivated.
    pub active: bool,
    /// Whether user searches return it now (visible, not opted out, active, and not external
    /// unless `directory.show_externals`).
    pub searchable: bool,
    /// Last change (ms).
    pub updated_at: i64,
}

impl ModeratedEntry {
    fn of(row: &EntryRow, config: &Config, opted_out: bool) -> ModeratedEntry {
        let visible = row.visibility == Visibility::Visible.as_str() && !opted_out;
        ModeratedEntry {
            user_id: row.mxid.clone(),
            homeserver: row.homeserver.clone(),
            name: row.name.clone(),
            name_source: row.name_source.clone(),
            admin_name: row.admin_name.clone(),
            user_displayname: row.user_displayname.clone(),
            display_name: format_display_name(
                &config.directory.display_name_format,
                &row.name,
                row.organisation.as_deref(),
            ),
            organisation: row.organisation.clone(),
            avatar_url: row.avatar_url.clone(),
            visibility: row.visibility.clone(),
            opted_out,
            external: row.external,
            active: row.active,
            searchable: visible && row.active && (!row.external || config.directory.show_externals),
            updated_at: row.updated_at,
        }
    }
}

/// What the audit log keeps of an entry.
fn audit_json(row: &EntryRow) -> Value {
    json!({
        "user_id": row.mxid,
        "homeserver": row.homeserver,
        "name": row.name,
        "name_source": row.name_source,
        "admin_name": row.admin_name,
        "organisation": row.organisation,
        "visibility": row.visibility,
        "external": row.external,
        "active": row.active,
    })
}

/// Which entries to list or search (every filter given must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// Exactly this organisation label.
    pub organisation: Option<String>,
    /// Exactly this homeserver.
    pub homeserver: Option<String>,
    /// Only visible, or only hidden entries.
    pub visibility: Option<Visibility>,
    /// Only external, or only internal entries.
    pub external: Option<bool>,
}

impl EntryFilter {
    fn query(&self) -> EntryQuery {
        EntryQuery {
            organisation: self.organisation.clone(),
            homeserver: self.homeserver.clone(),
            visibility: self.visibility.map(|v| v.as_str().to_owned()),
            external: self.external,
        }
    }
}

/// Parses `visible` or `hidden`.
pub fn parse_visibility(text: &str) -> Result<Visibility, AdminError> {
    match text {
        "visible" => Ok(Visibility::Visible),
        "hidden" => Ok(Visibility::Hidden),
        other => Err(AdminError::InvalidInput(format!(
            "`visibility` must be visible or hidden, not {other:?}"
        ))),
    }
}

/// A page of entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EntryPage {
    /// The entries: by user id when listing, best match first when searching.
    pub entries: Vec<ModeratedEntry>,
    /// Listing: pass as `next_batch` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
    /// Searching: more entries match than were returned (type more of the name).
    pub limited: bool,
}

/// Entries matching `filter`, by user id, after the page token `from` (a user id).
pub fn list(
    conn: &mut DbConn,
    config: &Config,
    filter: &EntryFilter,
    from: Option<&str>,
    limit: usize,
) -> Result<EntryPage, AdminError> {
    let n = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let mut rows = admin_store::list_entries(conn, &filter.query(), from, n)?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_batch = if more {
        rows.last().map(|r| r.mxid.clone())
    } else {
        None
    };
    Ok(EntryPage {
        entries: with_opt_outs(conn, config, rows.iter())?,
        next_batch,
        limited: false,
    })
}

/// The two index queries of an operator's search: every term a whole word, then every term a
/// prefix; (SQLite FTS5, PostgreSQL tsquery). Terms are folded to `[a-z0-9]`, filtered again
/// here so that neither syntax can be escaped.
fn index_queries(query: &SearchQuery) -> [(String, String); 2] {
    let clean: Vec<String> = query
        .terms
        .iter()
        .map(|t| t.chars().filter(char::is_ascii_alphanumeric).collect())
        .filter(|t: &String| !t.is_empty())
        .collect();
    let words = (
        clean
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(" AND "),
        clean
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(" & "),
    );
    // Both indexes hold prefixes of up to 8 letters (longer ones are checked when ranking).
    let prefixes = (
        clean
            .iter()
            .map(|t| format!("\"{}\"*", &t[..t.len().min(FTS5_MAX_PREFIX)]))
            .collect::<Vec<_>>()
            .join(" AND "),
        clean
            .iter()
            .map(|t| format!("'{}*'", &t[..t.len().min(FTS5_MAX_PREFIX)]))
            .collect::<Vec<_>>()
            .join(" & "),
    );
    [words, prefixes]
}

/// Searches every entry (hidden, external and deactivated ones included) as user searches
/// match: every term a prefix of a word of the name, organisation or user id localpart, ranked
/// the same way. At most `candidates` entries per tier are read from the index.
pub fn search(
    conn: &mut DbConn,
    config: &Config,
    text: &str,
    filter: &EntryFilter,
    limit: usize,
    candidates: i64,
) -> Result<EntryPage, AdminError> {
    let parsed = parse_query(text).map_err(|e| AdminError::InvalidInput(format!("`q`: {e}")))?;
    let query = filter.query();
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    // Whether a tier had more matches than it read: the best may be among those not read.
    let mut capped = false;
    for (i, (fts5, tsquery)) in index_queries(&parsed).iter().enumerate() {
        let found = admin_store::search_entry_ids(conn, fts5, tsquery, &query, candidates)?;
        capped |= i64::try_from(found.len()).is_ok_and(|n| n >= candidates);
        for id in found {
            if seen.insert(id.clone()) {
                ids.push(id);
            }
        }
        // Enough whole-word matches: prefixes could only rank after them.
        if i == 0 && ids.len() > limit {
            break;
        }
    }
    let rows = admin_store::entries_by_ids(conn, &ids)?;
    let mut ranked: Vec<_> = rows
        .into_iter()
        .filter_map(|row| {
            let key = SearchKey {
                name: row.search_name.clone(),
                organisation: row.search_organisation.clone(),
                localpart: row.search_localpart.clone(),
                all: String::new(),
            };
            rank(&parsed, &key).map(|r| (r, row))
        })
        .collect();
    ranked.sort_by(|(ra, a), (rb, b)| {
        ra.cmp(rb)
            .then_with(|| a.search_name.cmp(&b.search_name))
            .then_with(|| a.mxid.cmp(&b.mxid))
    });
    let limited = ranked.len() > limit || capped;
    Ok(EntryPage {
        entries: with_opt_outs(conn, config, ranked.iter().take(limit).map(|(_, row)| row))?,
        next_batch: None,
        limited,
    })
}

/// A user id from a request, checked.
fn user_id(text: &str) -> Result<&str, AdminError> {
    split_user_id(text).map_err(|e| AdminError::InvalidInput(e.to_string()))?;
    Ok(text)
}

fn no_entry(user_id: &str) -> AdminError {
    AdminError::NotFound(format!("{user_id} has no directory entry"))
}

/// The entry of `user_id`, whatever its visibility.
pub fn get(
    conn: &mut DbConn,
    config: &Config,
    user_id_text: &str,
) -> Result<ModeratedEntry, AdminError> {
    let mxid = user_id(user_id_text)?;
    let row = directory_store::get(conn, mxid)?.ok_or_else(|| no_entry(mxid))?;
    one(conn, config, &row)
}

/// The entries as operators see them, with the users' own choice to leave the directory.
fn with_opt_outs<'a>(
    conn: &mut DbConn,
    config: &Config,
    rows: impl Iterator<Item = &'a EntryRow> + Clone,
) -> Result<Vec<ModeratedEntry>, AdminError> {
    let ids: Vec<String> = rows.clone().map(|r| r.mxid.clone()).collect();
    let out: HashSet<String> = account_store::opted_out_among(conn, &ids)?
        .into_iter()
        .collect();
    Ok(rows
        .map(|r| ModeratedEntry::of(r, config, out.contains(&r.mxid)))
        .collect())
}

fn one(conn: &mut DbConn, config: &Config, row: &EntryRow) -> Result<ModeratedEntry, AdminError> {
    let opted_out = account_store::opted_out_at(conn, &row.mxid)?.is_some();
    Ok(ModeratedEntry::of(row, config, opted_out))
}

/// Loads the entry, lets `change` alter it, and stores and audits it, in one transaction. An
/// entry that `change` leaves as it was is neither written nor audited.
fn modify(
    conn: &mut DbConn,
    config: &Config,
    user_id_text: &str,
    action_name: &str,
    actor: &Actor,
    now_ms: i64,
    change: impl FnOnce(&mut DbConn, &mut EntryRow) -> Result<(), StoreError>,
) -> Result<ModeratedEntry, AdminError> {
    let mxid = user_id(user_id_text)?;
    let row = crate::store::transaction(conn, |conn| {
        let Some(before) = directory_store::get(conn, mxid)? else {
            return Ok(None);
        };
        let mut row = before.clone();
        change(conn, &mut row)?;
        if row == before {
            return Ok(Some(row));
        }
        row.updated_at = now_ms;
        directory_store::update(conn, &row)?;
        audit::record(
            conn,
            actor,
            action_name,
            &audit::directory_target(mxid),
            Some(&audit_json(&before)),
            Some(&audit_json(&row)),
            now_ms,
        )?;
        Ok::<_, StoreError>(Some(row))
    })?;
    let row = row.ok_or_else(|| no_entry(mxid))?;
    tracing::info!(user_id = %mxid, action = action_name, actor = %actor, "directory entry moderated");
    one(conn, config, &row)
}

/// Hides an entry from every search, or shows it again.
pub fn set_visibility(
    conn: &mut DbConn,
    config: &Config,
    user_id: &str,
    visibility: Visibility,
    actor: &Actor,
    now_ms: i64,
) -> Result<ModeratedEntry, AdminError> {
    let action_name = match visibility {
        Visibility::Hidden => action::DIRECTORY_HIDE,
        Visibility::Visible => action::DIRECTORY_UNHIDE,
    };
    modify(
        conn,
        config,
        user_id,
        action_name,
        actor,
        now_ms,
        |_, row| {
            row.visibility = visibility.as_str().to_owned();
            Ok(())
        },
    )
}

/// Overrides the verified name (source `admin`), or with `None` removes the override (the name
/// falls back to LDAP or the address's local part). The name is cleaned as LDAP names are
/// (whitespace collapsed, invisible characters removed, length bounded).
pub fn rename(
    conn: &mut DbConn,
    config: &Config,
    user_id: &str,
    name: Option<&str>,
    actor: &Actor,
    now_ms: i64,
) -> Result<ModeratedEntry, AdminError> {
    let admin_name = match name {
        Some(text) => Some(name_from_ldap(Some(text), None, None).ok_or_else(|| {
            AdminError::InvalidInput("`name` must contain visible characters".to_owned())
        })?),
        None => None,
    };
    modify(
        conn,
        config,
        user_id,
        action::DIRECTORY_RENAME,
        actor,
        now_ms,
        move |conn, row| {
            row.admin_name = admin_name;
            let ldap = directory_store::ldap_name(conn, &row.email_key)?;
            refresh(row, ldap.as_ref());
            Ok(())
        },
    )
}

/// Removes an entry; the entry as it was. The user's association stays: their next bind (or a
/// refresh after another of their addresses is unbound) publishes them again.
pub fn remove(
    conn: &mut DbConn,
    config: &Config,
    user_id_text: &str,
    actor: &Actor,
    now_ms: i64,
) -> Result<ModeratedEntry, AdminError> {
    let mxid = user_id(user_id_text)?;
    let removed = crate::store::transaction(conn, |conn| {
        let Some(row) = directory_store::get(conn, mxid)? else {
            return Ok(None);
        };
        directory_store::delete(conn, mxid)?;
        audit::record(
            conn,
            actor,
            action::DIRECTORY_REMOVE,
            &audit::directory_target(mxid),
            Some(&audit_json(&row)),
            None,
            now_ms,
        )?;
        Ok::<_, StoreError>(Some(row))
    })?;
    let row = removed.ok_or_else(|| no_entry(mxid))?;
    tracing::info!(user_id = %mxid, actor = %actor, "directory entry removed by an administrator");
    one(conn, config, &row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_searches_go_from_whole_words_to_prefixes() {
        let q = parse_query("Jéan dupontel-moretti").unwrap();
        let [words, prefixes] = index_queries(&q);
        assert_eq!(words.0, r#""jean" AND "dupontel" AND "moretti""#);
        assert_eq!(words.1, "'jean' & 'dupontel' & 'moretti'");
        assert_eq!(prefixes.0, r#""jean"* AND "dupontel"* AND "moretti"*"#);
        assert_eq!(prefixes.1, "'jean*' & 'dupontel*' & 'moretti*'");
        let q = parse_query("bundesministerium").unwrap();
        assert_eq!(index_queries(&q)[1].0, r#""bundesmi"*"#);
        assert_eq!(index_queries(&q)[1].1, "'bundesmi*'");
        // Hand-built terms cannot escape either syntax.
        let q = SearchQuery {
            terms: vec!["a\"b".into(), "x' | !y:* & (z".into(), "&|!".into()],
        };
        let [words, prefixes] = index_queries(&q);
        assert_eq!(words.0, r#""ab" AND "xyz""#);
        assert_eq!(prefixes.1, "'ab*' & 'xyz*'");
    }

    #[test]
    fn visibility_parses() {
        assert_eq!(parse_visibility("hidden").unwrap(), Visibility::Hidden);
        assert_eq!(parse_visibility("visible").unwrap(), Visibility::Visible);
        assert!(parse_visibility("secret").is_err());
    }
}
