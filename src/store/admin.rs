//! Administration storage: admin accounts, revoked admin tokens, the audit log, the paged
//! rule queries of the admin API, the operators' directory queries, the statistics' counts, and
//! the erasure of an address's invitations, sessions and queued mails.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};

use super::directory::EntryRow;
use super::policy::StoredRule;
use super::schema::{
    admin_accounts, admin_revoked_tokens, directory_entries, mail_outbox, policy_rules,
};
use super::{DbConn, StoreError, escape_like};
use crate::db_dispatch;
use crate::policy::Rule;

// ---- accounts ----

/// An admin account as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct AccountRow {
    /// Login name.
    pub username: String,
    /// "viewer" or "editor".
    pub role: String,
    /// "local" (password) or "ldap".
    pub source: String,
    /// PHC string of the argon2id hash (local accounts).
    pub password_hash: Option<String>,
    /// Failed logins since the last success or lock.
    pub failed_logins: i32,
    /// Locked until this instant (ms), if locked.
    pub locked_until: Option<i64>,
    /// Last successful login (ms).
    pub last_login_at: Option<i64>,
    /// Created (ms); tokens issued before it belong to an earlier account of the same name.
    pub created_at: i64,
    /// Last changed (ms).
    pub updated_at: i64,
}

type AccountColumns = (
    admin_accounts::username,
    admin_accounts::role,
    admin_accounts::source,
    admin_accounts::password_hash,
    admin_accounts::failed_logins,
    admin_accounts::locked_until,
    admin_accounts::last_login_at,
    admin_accounts::created_at,
    admin_accounts::updated_at,
);

const ACCOUNT_COLUMNS: AccountColumns = (
    admin_accounts::username,
    admin_accounts::role,
    admin_accounts::source,
    admin_accounts::password_hash,
    admin_accounts::failed_logins,
    admin_accounts::locked_until,
    admin_accounts::last_login_at,
    admin_accounts::created_at,
    admin_accounts::updated_at,
);

/// Inserts an account (a unique violation when the name is taken).
pub fn insert_account(
    conn: &mut DbConn,
    username: &str,
    role: &str,
    source: &str,
    password_hash: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    use admin_accounts::dsl as a;
    db_dispatch!(conn, c => diesel::insert_into(a::admin_accounts)
        .values((
            a::username.eq(username),
            a::role.eq(role),
            a::source.eq(source),
            a::password_hash.eq(password_hash),
            a::failed_logins.eq(0),
            a::created_at.eq(now_ms),
            a::updated_at.eq(now_ms),
        ))
        .execute(c)?);
    Ok(())
}

/// One account.
pub fn get_account(conn: &mut DbConn, username: &str) -> Result<Option<AccountRow>, StoreError> {
    use admin_accounts::dsl as a;
    let row = db_dispatch!(conn, c => a::admin_accounts
        .filter(a::username.eq(username))
        .select(ACCOUNT_COLUMNS)
        .first::<AccountRow>(c)
        .optional()?);
    Ok(row)
}

/// Every account, by name.
pub fn list_accounts(conn: &mut DbConn) -> Result<Vec<AccountRow>, StoreError> {
    use admin_accounts::dsl as a;
    let rows = db_dispatch!(conn, c => a::admin_accounts
        .select(ACCOUNT_COLUMNS)
        .order(a::username.asc())
        .load::<AccountRow>(c)?);
    Ok(rows)
}

/// Deletes an account; whether it existed.
pub fn delete_account(conn: &mut DbConn, username: &str) -> Result<bool, StoreError> {
    use admin_accounts::dsl as a;
    let n = db_dispatch!(conn, c => diesel::delete(a::admin_accounts.filter(a::username.eq(username)))
        .execute(c)?);
    Ok(n > 0)
}

/// Counts a failed login; when the count reaches `threshold`, locks the account until
/// `lock_until_ms` and starts counting again. Returns the lock when this failure set it.
pub fn record_login_failure(
    conn: &mut DbConn,
    username: &str,
    threshold: i32,
    lock_until_ms: i64,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    use admin_accounts::dsl as a;
    // Increment in SQL and lock with a conditional update, so that failures counted at once by
    // several instances lock the account exactly once.
    db_dispatch!(conn, c => diesel::update(a::admin_accounts.filter(a::username.eq(username)))
        .set((a::failed_logins.eq(a::failed_logins + 1), a::updated_at.eq(now_ms)))
        .execute(c)?);
    let locked = db_dispatch!(conn, c => diesel::update(
            a::admin_accounts
                .filter(a::username.eq(username))
                .filter(a::failed_logins.ge(threshold)),
        )
        .set((
            a::failed_logins.eq(0),
            a::locked_until.eq(Some(lock_until_ms)),
            a::updated_at.eq(now_ms),
        ))
        .execute(c)?);
    Ok((locked > 0).then_some(lock_until_ms))
}

/// Changes an account's role; whether it exists.
pub fn set_account_role(
    conn: &mut DbConn,
    username: &str,
    role: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    use admin_accounts::dsl as a;
    let n = db_dispatch!(conn, c => diesel::update(a::admin_accounts.filter(a::username.eq(username)))
        .set((a::role.eq(role), a::updated_at.eq(now_ms)))
        .execute(c)?);
    Ok(n > 0)
}

/// Records a successful login: the failure count and any expired lock are cleared.
pub fn record_login_success(
    conn: &mut DbConn,
    username: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    use admin_accounts::dsl as a;
    db_dispatch!(conn, c => diesel::update(a::admin_accounts.filter(a::username.eq(username)))
        .set((
            a::failed_logins.eq(0),
            a::locked_until.eq(None::<i64>),
            a::last_login_at.eq(Some(now_ms)),
        ))
        .execute(c)?);
    Ok(())
}

// ---- revoked tokens ----

/// Revokes a token id until it expires anyway (idempotent).
pub fn revoke_token(
    conn: &mut DbConn,
    jti: &str,
    username: &str,
    expires_at_ms: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    use admin_revoked_tokens::dsl as t;
    db_dispatch!(conn, c => diesel::insert_into(t::admin_revoked_tokens)
        .values((
            t::jti.eq(jti),
            t::username.eq(username),
            t::expires_at.eq(expires_at_ms),
            t::revoked_at.eq(now_ms),
        ))
        .on_conflict(t::jti)
        .do_nothing()
        .execute(c)?);
    Ok(())
}

/// Whether a token id was revoked.
pub fn is_revoked(conn: &mut DbConn, jti: &str) -> Result<bool, StoreError> {
    use admin_revoked_tokens::dsl as t;
    let found = db_dispatch!(conn, c => t::admin_revoked_tokens
        .filter(t::jti.eq(jti))
        .select(t::jti)
        .first::<String>(c)
        .optional()?);
    Ok(found.is_some())
}

/// Forgets revocations of tokens that expired before `before_ms` (they fail on expiry alone).
pub fn purge_revoked(conn: &mut DbConn, before_ms: i64) -> Result<usize, StoreError> {
    use admin_revoked_tokens::dsl as t;
    let n = db_dispatch!(conn, c => diesel::delete(t::admin_revoked_tokens.filter(t::expires_at.lt(before_ms)))
        .execute(c)?);
    Ok(n)
}

// ---- rules, paged ----

/// Which stored rules to read (every condition given must hold).
#[derive(Debug, Clone, Default)]
pub struct RuleQuery {
    /// Exactly this source ("admin" or a file path).
    pub source: Option<String>,
    /// Exactly this organisation label.
    pub label: Option<String>,
    /// Exactly this homeserver.
    pub homeserver: Option<String>,
    /// Exactly this kind ("domain", "deny", "address", "pattern").
    pub kind: Option<String>,
    /// The value is one of these, or ends with one of `value_suffixes`.
    pub values: Option<Vec<String>>,
    /// Suffixes for `values` (`@example.org`): ORed with it.
    pub value_suffixes: Vec<String>,
    /// Ids greater than this only (pagination).
    pub after_id: Option<String>,
    /// At most this many rows.
    pub limit: Option<i64>,
}

/// Rules matching `q`, by id.
pub fn query_rules(conn: &mut DbConn, q: &RuleQuery) -> Result<Vec<StoredRule>, StoreError> {
    use policy_rules::dsl as r;
    let values = q.values.clone();
    let suffixes: Vec<String> = q
        .value_suffixes
        .iter()
        .map(|s| format!("%{}", escape_like(s)))
        .collect();
    let rows: Vec<(String, String, i64, i64)> = db_dispatch!(conn, c => {
        let mut query = r::policy_rules
            .select((r::id, r::rule_json, r::created_at, r::updated_at))
            .into_boxed();
        if let Some(source) = &q.source {
            query = query.filter(r::source.eq(source));
        }
        if let Some(label) = &q.label {
            query = query.filter(r::label.eq(label));
        }
        if let Some(hs) = &q.homeserver {
            query = query.filter(r::homeserver.eq(hs));
        }
        if let Some(kind) = &q.kind {
            query = query.filter(r::kind.eq(kind));
        }
        if let Some(values) = &values {
            // At most two suffixes (a domain's ASCII and Unicode spellings).
            let first = suffixes.first().cloned().unwrap_or_default();
            let second = suffixes.get(1).cloned().unwrap_or_else(|| first.clone());
            if suffixes.is_empty() {
                query = query.filter(r::value.eq_any(values.clone()));
            } else {
                query = query.filter(
                    r::value
                        .eq_any(values.clone())
                        .or(r::value.like(first).escape('\\'))
                        .or(r::value.like(second).escape('\\')),
                );
            }
        }
        if let Some(after) = &q.after_id {
            query = query.filter(r::id.gt(after));
        }
        query = query.order(r::id.asc());
        if let Some(limit) = q.limit {
            query = query.limit(limit);
        }
        query.load::<(String, String, i64, i64)>(c)?
    });
    rows.into_iter()
        .map(|(id, json, created_at, updated_at)| {
            let rule: Rule = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("rule {id}: {e}")))?;
            Ok(StoredRule {
                rule,
                created_at,
                updated_at,
            })
        })
        .collect()
}

/// One stored rule.
pub fn get_rule(conn: &mut DbConn, id: &str) -> Result<Option<StoredRule>, StoreError> {
    use policy_rules::dsl as r;
    let row: Option<(String, i64, i64)> = db_dispatch!(conn, c => r::policy_rules
        .filter(r::id.eq(id))
        .select((r::rule_json, r::created_at, r::updated_at))
        .first::<(String, i64, i64)>(c)
        .optional()?);
    row.map(|(json, created_at, updated_at)| {
        let rule: Rule = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("rule {id}: {e}")))?;
        Ok(StoredRule {
            rule,
            created_at,
            updated_at,
        })
    })
    .transpose()
}

// ---- directory moderation ----

/// Which directory entries an operator lists (every condition given must hold).
#[derive(Debug, Clone, Default)]
pub struct EntryQuery {
    /// Exactly this organisation label.
    pub organisation: Option<String>,
    /// Exactly this homeserver.
    pub homeserver: Option<String>,
    /// `visible` or `hidden`.
    pub visibility: Option<String>,
    /// External (invite-required) entries only, or internal ones only.
    pub external: Option<bool>,
}

/// Up to `limit` entries matching `q` whose user id is greater than `after`, by user id.
pub fn list_entries(
    conn: &mut DbConn,
    q: &EntryQuery,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<EntryRow>, StoreError> {
    use directory_entries::dsl as e;
    let rows = db_dispatch!(conn, c => {
        let mut query = e::directory_entries.select(EntryRow::as_select()).into_boxed();
        if let Some(org) = &q.organisation {
            query = query.filter(e::organisation.eq(org));
        }
        if let Some(hs) = &q.homeserver {
            query = query.filter(e::homeserver.eq(hs));
        }
        if let Some(v) = &q.visibility {
            query = query.filter(e::visibility.eq(v));
        }
        if let Some(x) = q.external {
            query = query.filter(e::external.eq(x));
        }
        if let Some(after) = after {
            query = query.filter(e::mxid.gt(after));
        }
        query.order(e::mxid.asc()).limit(limit).load::<EntryRow>(c)?
    });
    Ok(rows)
}

#[derive(QueryableByName)]
struct MxidRow {
    #[diesel(sql_type = Text)]
    mxid: String,
}

const SQLITE_ENTRY_SEARCH: &str = "\
SELECT e.mxid AS mxid \
FROM directory_fts CROSS JOIN directory_entries AS e ON e.id = directory_fts.rowid \
WHERE directory_fts MATCH ?1 \
  AND (?2 IS NULL OR e.organisation = ?2) \
  AND (?3 IS NULL OR e.homeserver = ?3) \
  AND (?4 IS NULL OR e.visibility = ?4) \
  AND (?5 IS NULL OR e.external = ?5) \
LIMIT ?6";

const POSTGRES_ENTRY_SEARCH: &str = "\
SELECT e.mxid AS mxid \
FROM directory_search AS s JOIN directory_entries AS e ON e.mxid = s.mxid \
WHERE annuaire_search_lexemes(s.search_all) @@ $1::tsquery \
  AND ($2::text IS NULL OR e.organisation = $2) \
  AND ($3::text IS NULL OR e.homeserver = $3) \
  AND ($4::text IS NULL OR e.visibility = $4) \
  AND ($5::boolean IS NULL OR e.external = $5) \
LIMIT $6";

/// The user ids of at most `limit` entries, hidden, external and inactive ones included, that
/// the full-text query matches (`fts5` on SQLite, `tsquery` on PostgreSQL), in index order.
pub fn search_entry_ids(
    conn: &mut DbConn,
    fts5: &str,
    tsquery: &str,
    q: &EntryQuery,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let rows: Vec<MxidRow> = match conn {
        DbConn::Sqlite(c) => diesel::sql_query(SQLITE_ENTRY_SEARCH)
            .bind::<Text, _>(fts5)
            .bind::<Nullable<Text>, _>(q.organisation.as_deref())
            .bind::<Nullable<Text>, _>(q.homeserver.as_deref())
            .bind::<Nullable<Text>, _>(q.visibility.as_deref())
            .bind::<Nullable<Bool>, _>(q.external)
            .bind::<BigInt, _>(limit)
            .load(c)?,
        DbConn::Pg(c) => diesel::sql_query(POSTGRES_ENTRY_SEARCH)
            .bind::<Text, _>(tsquery)
            .bind::<Nullable<Text>, _>(q.organisation.as_deref())
            .bind::<Nullable<Text>, _>(q.homeserver.as_deref())
            .bind::<Nullable<Text>, _>(q.visibility.as_deref())
            .bind::<Nullable<Bool>, _>(q.external)
            .bind::<BigInt, _>(limit)
            .load(c)?,
    };
    Ok(rows.into_iter().map(|r| r.mxid).collect())
}

/// The entries of these user ids (in no particular order).
pub fn entries_by_ids(conn: &mut DbConn, ids: &[String]) -> Result<Vec<EntryRow>, StoreError> {
    use directory_entries::dsl as e;
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(super::directory::BULK_ROWS) {
        rows.extend(db_dispatch!(conn, c => e::directory_entries
            .filter(e::mxid.eq_any(chunk))
            .select(EntryRow::as_select())
            .load::<EntryRow>(c)?));
    }
    Ok(rows)
}

// ---- statistics ----

/// Entry counts of one organisation, one homeserver, or the whole directory.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct EntryCounts {
    /// The organisation label or homeserver (`None`: entries without an organisation, or the
    /// whole directory).
    #[diesel(sql_type = Nullable<Text>)]
    pub key: Option<String>,
    /// Entries.
    #[diesel(sql_type = BigInt)]
    pub entries: i64,
    /// Hidden by moderation.
    #[diesel(sql_type = BigInt)]
    pub hidden: i64,
    /// External (invite-required) users.
    #[diesel(sql_type = BigInt)]
    pub external: i64,
    /// Deactivated accounts.
    #[diesel(sql_type = BigInt)]
    pub inactive: i64,
}

/// What directory entries are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryGrouping {
    /// Per organisation label.
    Organisation,
    /// Per homeserver.
    Homeserver,
}

const COUNTS: &str = "COUNT(*) AS entries, \
    COALESCE(SUM(CASE WHEN visibility = 'hidden' THEN 1 ELSE 0 END), 0) AS hidden, \
    COALESCE(SUM(CASE WHEN external THEN 1 ELSE 0 END), 0) AS external, \
    COALESCE(SUM(CASE WHEN active THEN 0 ELSE 1 END), 0) AS inactive";

/// Entry counts per organisation or homeserver, largest first, at most `limit` groups: one
/// GROUP BY in the database (an index-only scan of the grouping index).
pub fn entry_counts(
    conn: &mut DbConn,
    grouping: EntryGrouping,
    limit: i64,
) -> Result<Vec<EntryCounts>, StoreError> {
    let column = match grouping {
        EntryGrouping::Organisation => "organisation",
        EntryGrouping::Homeserver => "homeserver",
    };
    // The column is one of two names above and the limit an integer: nothing from a caller is
    // spliced into the SQL.
    let sql = format!(
        "SELECT {column} AS key, {COUNTS} FROM directory_entries \
         GROUP BY {column} ORDER BY entries DESC, {column} IS NULL, {column} LIMIT {limit}"
    );
    Ok(db_dispatch!(conn, c => diesel::sql_query(sql).load::<EntryCounts>(c)?))
}

/// Entry counts of the whole directory.
pub fn entry_totals(conn: &mut DbConn) -> Result<EntryCounts, StoreError> {
    let sql = format!("SELECT CAST(NULL AS TEXT) AS key, {COUNTS} FROM directory_entries");
    Ok(db_dispatch!(conn, c => diesel::sql_query(sql).get_result::<EntryCounts>(c)?))
}

/// The mail outbox's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxCounts {
    /// Messages waiting to be sent (being sent included).
    pub queued: i64,
    /// Queued messages a worker is sending now (live lease).
    pub sending: i64,
    /// Queued messages that failed at least once and wait for a retry.
    pub retrying: i64,
    /// Creation time of the oldest queued message (ms).
    pub oldest_queued_at: Option<i64>,
    /// Messages sent since `since`.
    pub sent: i64,
    /// Messages given up since `since`.
    pub failed: i64,
    /// Messages superseded (replaced before they were sent) since `since`.
    pub superseded: i64,
}

/// Counts the outbox: queued rows (through the status index) and rows finished since
/// `since_ms` per status (through the finished-at index); no row is loaded.
pub fn outbox_counts(
    conn: &mut DbConn,
    now_ms: i64,
    since_ms: i64,
) -> Result<OutboxCounts, StoreError> {
    use diesel::dsl::{count_star, min};
    use mail_outbox::dsl as o;
    let queued = db_dispatch!(conn, c => o::mail_outbox
        .filter(o::status.eq(super::outbox::QUEUED))
        .count()
        .get_result::<i64>(c)?);
    let sending = db_dispatch!(conn, c => o::mail_outbox
        .filter(o::status.eq(super::outbox::QUEUED))
        .filter(o::claimed_until.gt(now_ms))
        .count()
        .get_result::<i64>(c)?);
    let retrying = db_dispatch!(conn, c => o::mail_outbox
        .filter(o::status.eq(super::outbox::QUEUED))
        .filter(o::attempts.gt(0))
        .count()
        .get_result::<i64>(c)?);
    let oldest_queued_at = db_dispatch!(conn, c => o::mail_outbox
        .filter(o::status.eq(super::outbox::QUEUED))
        .select(min(o::created_at))
        .first::<Option<i64>>(c)?);
    let finished: Vec<(String, i64)> = db_dispatch!(conn, c => o::mail_outbox
        .filter(o::finished_at.ge(since_ms))
        .group_by(o::status)
        .select((o::status, count_star()))
        .load::<(String, i64)>(c)?);
    let mut counts = OutboxCounts {
        queued,
        sending,
        retrying,
        oldest_queued_at,
        ..OutboxCounts::default()
    };
    for (status, n) in finished {
        match status.as_str() {
            super::outbox::SENT => counts.sent = n,
            super::outbox::FAILED => counts.failed = n,
            super::outbox::SUPERSEDED => counts.superseded = n,
            _ => {}
        }
    }
    Ok(counts)
}
