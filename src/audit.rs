//! The audit log: every administrative change (rules, accounts, directory moderation, erasures,
//! homeserver tokens, key rotations) with who, when, what, before and after. Written in the same
//! transaction as the change; read with filters, newest first. The application changes it in
//! two ways only: an erasure replaces the erased address by a keyed pseudonym in every row
//! ([`pseudonymise`]), and the retention purge deletes rows older than `retention.audit`.

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

use std::fmt;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::policy::{Rule, RuleDiff};
use crate::store::audit::{self as audit_store, AuditQuery, NewAuditRow};
use crate::store::{DbConn, StoreError};

/// Who made a change, as written in the audit log: an admin's username, `cli:<unix user>` for
/// the command line, `startup` (`reload`) for the import `serve` runs at start (on SIGHUP),
/// `system` for automatic changes (an account locked after failed logins), `user:<mxid>` for a
/// user's own choice, `homeserver:<server name>` for what a homeserver asks through the
/// homeserver API (an erasure at deactivation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    /// An administrator acting through the API.
    pub fn admin(username: &str) -> Actor {
        Actor(username.to_owned())
    }

    /// An operator on the command line.
    pub fn cli(unix_user: &str) -> Actor {
        Actor(format!("cli:{unix_user}"))
    }

    /// The instance itself.
    pub fn system() -> Actor {
        Actor("system".to_owned())
    }

    /// The allowlist import that `serve` runs at start.
    pub fn startup() -> Actor {
        Actor("startup".to_owned())
    }

    /// A homeserver acting through the homeserver API (an erasure it asked for).
    pub fn homeserver(server_name: &str) -> Actor {
        Actor(format!("homeserver:{server_name}"))
    }

    /// The allowlist import that `serve` runs on SIGHUP.
    pub fn reload() -> Actor {
        Actor("reload".to_owned())
    }

    /// A user acting on their own data (`/_annuaire/account/v1/…`).
    pub fn user(user_id: &str) -> Actor {
        Actor(format!("user:{user_id}"))
    }

    /// As written in the audit log.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Audit action names (the `action` column).
pub mod action {
    /// A rule created through the API.
    pub const RULE_CREATE: &str = "rule.create";
    /// An admin rule replaced through the API.
    pub const RULE_UPDATE: &str = "rule.update";
    /// An admin rule deleted through the API.
    pub const RULE_DELETE: &str = "rule.delete";
    /// A file rule turned into an admin rule.
    pub const RULE_CONVERT: &str = "rule.convert";
    /// A rule added or replaced by `POST /rules/import`.
    pub const RULE_IMPORT: &str = "rule.import";
    /// A rule added, changed or removed by an import of the allowlist files (CLI or start-up).
    pub const RULE_FILE_IMPORT: &str = "rule.file_import";
    /// An admin account created.
    pub const ACCOUNT_CREATE: &str = "account.create";
    /// An admin account removed.
    pub const ACCOUNT_REMOVE: &str = "account.remove";
    /// An admin account changed (an LDAP account's role following its groups).
    pub const ACCOUNT_UPDATE: &str = "account.update";
    /// An admin account locked after failed logins.
    pub const ACCOUNT_LOCK: &str = "account.lock";
    /// A token issued on the command line (`annuaire admin token`).
    pub const TOKEN_ISSUE: &str = "token.issue";
    /// A directory entry hidden from every search.
    pub const DIRECTORY_HIDE: &str = "directory.hide";
    /// A hidden directory entry shown again.
    pub const DIRECTORY_UNHIDE: &str = "directory.unhide";
    /// A directory entry's verified name overridden, or the override removed.
    pub const DIRECTORY_RENAME: &str = "directory.rename";
    /// A directory entry removed.
    pub const DIRECTORY_REMOVE: &str = "directory.remove";
    /// An address erased: association, lookup hashes, invitations, sessions, queued mails.
    pub const THREEPID_ERASE: &str = "threepid.erase";
    /// A homeserver API token made (`annuaire homeserver add`); the token itself is not kept.
    pub const HOMESERVER_ADD: &str = "homeserver.add";
    /// A homeserver API token revoked (`annuaire homeserver revoke`).
    pub const HOMESERVER_REVOKE: &str = "homeserver.revoke";
    /// The identity server's signing key rotated (`annuaire keys rotate-signing`).
    pub const SIGNING_KEY_ROTATE: &str = "signing_key.rotate";
    /// The admin token secret rotated (`annuaire admin rotate-secret`).
    pub const ADMIN_SECRET_ROTATE: &str = "admin_secret.rotate";
    /// A user left the directory (`POST /_annuaire/account/v1/directory {visible: false}`).
    pub const DIRECTORY_OPT_OUT: &str = "directory.opt_out";
    /// A user came back to the directory.
    pub const DIRECTORY_OPT_IN: &str = "directory.opt_in";
    /// Agents' requests for a domain accepted (a rule now lets it in; they were told by mail).
    pub const DOMAIN_REQUEST_ACCEPT: &str = "domain_request.accept";
    /// Agents' requests for a domain declined (they were told by mail, with the message).
    pub const DOMAIN_REQUEST_DECLINE: &str = "domain_request.decline";
}

/// The audit target naming a rule.
pub fn rule_target(id: &str) -> String {
    format!("rule:{id}")
}

/// The audit target naming an admin account.
pub fn account_target(username: &str) -> String {
    format!("account:{username}")
}

/// The audit target naming a directory entry.
pub fn directory_target(user_id: &str) -> String {
    format!("directory:{user_id}")
}

/// The audit target naming a homeserver (its API token).
pub fn homeserver_target(server_name: &str) -> String {
    format!("homeserver:{server_name}")
}

/// The audit target naming a 3PID.
pub fn threepid_target(medium: &str, address: &str) -> String {
    format!("threepid:{medium}:{address}")
}

/// Appends one change to the log (call inside the change's transaction).
pub fn record(
    conn: &mut DbConn,
    actor: &Actor,
    action: &str,
    target: &str,
    before: Option<&Value>,
    after: Option<&Value>,
    now_ms: i64,
) -> Result<(), StoreError> {
    audit_store::insert_audit(
        conn,
        &NewAuditRow {
            at: now_ms,
            actor: actor.as_str().to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            before_json: before.map(Value::to_string),
            after_json: after.map(Value::to_string),
        },
    )
}

/// One row per rule a diff adds, changes or removes.
pub fn record_rule_diff(
    conn: &mut DbConn,
    actor: &Actor,
    action: &str,
    diff: &RuleDiff,
    now_ms: i64,
) -> Result<(), StoreError> {
    let rule_json = |r: &Rule| r.to_json();
    for rule in &diff.added {
        record(
            conn,
            actor,
            action,
            &rule_target(&rule.id),
            None,
            Some(&rule_json(rule)),
            now_ms,
        )?;
    }
    for (old, new) in &diff.changed {
        record(
            conn,
            actor,
            action,
            &rule_target(&new.id),
            Some(&rule_json(old)),
            Some(&rule_json(new)),
            now_ms,
        )?;
    }
    for rule in &diff.removed {
        record(
            conn,
            actor,
            action,
            &rule_target(&rule.id),
            Some(&rule_json(rule)),
            None,
            now_ms,
        )?;
    }
    Ok(())
}

/// Where the key of the erased addresses' pseudonyms is kept (`instance_state`).
pub const PSEUDONYM_KEY_STATE: &str = "audit_pseudonym_key";

/// The pseudonym that stands for an erased address in the audit log: `erased:<keyed hash>`.
/// The key is created once in the database; the same address always gives the same pseudonym,
/// so the log still shows that two rows concerned one person.
pub fn pseudonym(conn: &mut DbConn, address: &str, now_ms: i64) -> Result<String, StoreError> {
    use base64::Engine as _;
    let mut candidate = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut candidate);
    let stored = crate::store::state::get_or_insert(
        conn,
        PSEUDONYM_KEY_STATE,
        &base64::engine::general_purpose::STANDARD.encode(candidate),
        now_ms,
    )?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(stored.as_bytes())
        .map_err(|e| StoreError::Corrupt(format!("state `{PSEUDONYM_KEY_STATE}`: {e}")))?;
    Ok(format!(
        "erased:{}",
        crate::secret::keyed_hash(&key, address)
    ))
}

/// Replaces every mention of `address` in the audit log (targets, before and after) by its
/// [`pseudonym`]; how many rows changed. Call in the erasure's transaction.
pub fn pseudonymise(conn: &mut DbConn, address: &str, now_ms: i64) -> Result<usize, StoreError> {
    if address.is_empty() {
        return Ok(0);
    }
    let pseudonym = pseudonym(conn, address, now_ms)?;
    // The address as it appears inside a JSON string (quotes and backslashes escaped).
    let json_form = serde_json::to_string(address)
        .map_err(|e| StoreError::Corrupt(format!("address as JSON: {e}")))?;
    let json_form = json_form
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(&json_form)
        .to_owned();
    // Whole values only: `jo@x.fr` must not touch `bjo@x.fr`. In JSON the address is a whole
    // string; in a target it follows the last `:` (`threepid:email:<address>`).
    let quoted = format!("\"{json_form}\"");
    let suffix = format!(":{address}");
    let rows = audit_store::rows_mentioning(conn, &suffix, &quoted)?;
    let mut changed = 0;
    for row in rows {
        let target = match row.target.strip_suffix(&suffix) {
            Some(prefix) => format!("{prefix}:{pseudonym}"),
            None => row.target.clone(),
        };
        let replace = |t: &String| t.replace(&quoted, &format!("\"{pseudonym}\""));
        let before = row.before_json.as_ref().map(replace);
        let after = row.after_json.as_ref().map(replace);
        if target == row.target && before == row.before_json && after == row.after_json {
            continue;
        }
        audit_store::rewrite_row(conn, row.seq, &target, before.as_deref(), after.as_deref())?;
        changed += 1;
    }
    Ok(changed)
}

/// Deletes the rows older than `before_ms` (the retention purge); how many.
pub fn purge_before(conn: &mut DbConn, before_ms: i64) -> Result<usize, StoreError> {
    audit_store::purge_before(conn, before_ms)
}

/// Which entries to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Exactly this actor.
    pub actor: Option<String>,
    /// This action, or every action starting with the prefix when it ends with `*` ("rule.*").
    pub action: Option<String>,
    /// Exactly this target ("rule:r0123…", "account:alice").
    pub target: Option<String>,
    /// At or after (ms).
    pub since: Option<i64>,
    /// Before (ms, exclusive).
    pub until: Option<i64>,
}

/// One entry, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Position in the log (increasing with time).
    pub id: i64,
    /// When (ms since the epoch).
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// The object before the change (null for a creation).
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    /// The object after the change (null for a deletion).
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

/// A page of entries, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// Pass as `next_batch` for older entries; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
}

/// Entries matching `filter`, newest first, older than the entry `before_seq` when given.
pub fn list(
    conn: &mut DbConn,
    filter: &AuditFilter,
    before_seq: Option<i64>,
    limit: usize,
) -> Result<AuditPage, StoreError> {
    let (action, action_prefix) = match filter.action.as_deref() {
        Some(a) => match a.strip_suffix('*') {
            Some(prefix) => (None, Some(prefix.to_owned())),
            None => (Some(a.to_owned()), None),
        },
        None => (None, None),
    };
    let query = AuditQuery {
        actor: filter.actor.clone(),
        action,
        action_prefix,
        target: filter.target.clone(),
        since: filter.since,
        until: filter.until,
        before_seq,
        limit: i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX),
    };
    let mut rows = audit_store::query_audit(conn, &query)?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let parse = |seq: i64, text: Option<String>| -> Result<Option<Value>, StoreError> {
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| StoreError::Corrupt(format!("audit row {seq}: {e}")))
        })
        .transpose()
    };
    let next_batch = if more {
        rows.last().map(|r| r.seq.to_string())
    } else {
        None
    };
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        entries.push(AuditEntry {
            id: row.seq,
            at: row.at,
            before: parse(row.seq, row.before_json)?,
            after: parse(row.seq, row.after_json)?,
            actor: row.actor,
            action: row.action,
            target: row.target,
        });
    }
    Ok(AuditPage {
        entries,
        next_batch,
    })
}
