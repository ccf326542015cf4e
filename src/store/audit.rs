//! The audit log's rows: written in the transaction of the change they record, read newest
//! first with filters.

use diesel::prelude::*;

use super::schema::admin_audit;
use super::{DbConn, StoreError, escape_like};
use crate::db_dispatch;

// ---- audit log ----

/// One audit row to write.
#[derive(Debug, Clone)]
pub struct NewAuditRow {
    /// When (ms).
    pub at: i64,
    /// Who: an admin username, "cli:<unix user>", "startup".
    pub actor: String,
    /// What: "rule.create", "account.remove", …
    pub action: String,
    /// On what: "rule:<id>", "account:<username>", …
    pub target: String,
    /// The object before the change (JSON), if it existed.
    pub before_json: Option<String>,
    /// The object after the change (JSON), if it still exists.
    pub after_json: Option<String>,
}

/// One audit row as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct AuditRow {
    /// Position in the log (increasing).
    pub seq: i64,
    /// When (ms).
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Before (JSON).
    pub before_json: Option<String>,
    /// After (JSON).
    pub after_json: Option<String>,
}

/// Appends a row to the audit log.
pub fn insert_audit(conn: &mut DbConn, row: &NewAuditRow) -> Result<(), StoreError> {
    use admin_audit::dsl as a;
    db_dispatch!(conn, c => diesel::insert_into(a::admin_audit)
        .values((
            a::at.eq(row.at),
            a::actor.eq(&row.actor),
            a::action.eq(&row.action),
            a::target.eq(&row.target),
            a::before_json.eq(&row.before_json),
            a::after_json.eq(&row.after_json),
        ))
        .execute(c)?);
    Ok(())
}

/// Which audit rows to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Exactly this actor.
    pub actor: Option<String>,
    /// Exactly this action.
    pub action: Option<String>,
    /// Actions starting with this prefix ("rule.").
    pub action_prefix: Option<String>,
    /// Exactly this target.
    pub target: Option<String>,
    /// At or after (ms).
    pub since: Option<i64>,
    /// Before (ms, exclusive).
    pub until: Option<i64>,
    /// Rows older than this position only (pagination).
    pub before_seq: Option<i64>,
    /// At most this many rows.
    pub limit: i64,
}

/// Audit rows, newest first.
pub fn query_audit(conn: &mut DbConn, q: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
    use admin_audit::dsl as a;
    let prefix = q
        .action_prefix
        .as_deref()
        .map(|p| format!("{}%", escape_like(p)));
    let rows = db_dispatch!(conn, c => {
        let mut query = a::admin_audit.into_boxed();
        if let Some(actor) = &q.actor {
            query = query.filter(a::actor.eq(actor));
        }
        if let Some(action) = &q.action {
            query = query.filter(a::action.eq(action));
        }
        if let Some(prefix) = &prefix {
            query = query.filter(a::action.like(prefix).escape('\\'));
        }
        if let Some(target) = &q.target {
            query = query.filter(a::target.eq(target));
        }
        if let Some(since) = q.since {
            query = query.filter(a::at.ge(since));
        }
        if let Some(until) = q.until {
            query = query.filter(a::at.lt(until));
        }
        if let Some(before) = q.before_seq {
            query = query.filter(a::seq.lt(before));
        }
        query
            .order(a::seq.desc())
            .limit(q.limit)
            .load::<AuditRow>(c)?
    });
    Ok(rows)
}

/// Audit rows whose target ends with `target_suffix` or whose JSON contains `json_text` (a
/// LIKE scan of the whole log: erasures are rare).
pub fn rows_mentioning(
    conn: &mut DbConn,
    target_suffix: &str,
    json_text: &str,
) -> Result<Vec<AuditRow>, StoreError> {
    use admin_audit::dsl as a;
    let plain = format!("%{}", escape_like(target_suffix));
    let json = format!("%{}%", escape_like(json_text));
    Ok(db_dispatch!(conn, c => a::admin_audit
        .filter(
            a::target
                .like(&plain)
                .escape('\\')
                .or(a::before_json.like(&json).escape('\\'))
                .or(a::after_json.like(&json).escape('\\')),
        )
        .order(a::seq.asc())
        .load::<AuditRow>(c)?))
}

/// Rewrites the target and JSON of row `seq` (the erasure's pseudonymisation).
pub fn rewrite_row(
    conn: &mut DbConn,
    seq: i64,
    target: &str,
    before_json: Option<&str>,
    after_json: Option<&str>,
) -> Result<(), StoreError> {
    use admin_audit::dsl as a;
    db_dispatch!(conn, c => diesel::update(a::admin_audit.filter(a::seq.eq(seq)))
        .set((
            a::target.eq(target),
            a::before_json.eq(before_json),
            a::after_json.eq(after_json),
        ))
        .execute(c)?);
    Ok(())
}

/// Deletes the rows written before `at` (ms); how many.
pub fn purge_before(conn: &mut DbConn, at: i64) -> Result<usize, StoreError> {
    use admin_audit::dsl as a;
    Ok(
        db_dispatch!(conn, c => diesel::delete(a::admin_audit.filter(a::at.lt(at)))
        .execute(c)?),
    )
}
