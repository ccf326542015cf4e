//! Allowlist rules, their change counter, and the denied-attempt counters.

use diesel::prelude::*;

use super::schema::{policy_attempts, policy_generation, policy_rules};
use super::{DbConn, StoreError};
use crate::db_dispatch;
use crate::policy::{Rule, RuleDiff, RuleSource};

/// A rule as stored, with its bookkeeping.
#[derive(Debug, Clone)]
pub struct StoredRule {
    /// The rule.
    pub rule: Rule,
    /// When it was first stored (ms).
    pub created_at: i64,
    /// When it last changed (ms).
    pub updated_at: i64,
}

#[derive(Queryable)]
struct RuleRow {
    rule_json: String,
    created_at: i64,
    updated_at: i64,
}

/// The current change counter.
pub fn generation(conn: &mut DbConn) -> Result<i64, StoreError> {
    use policy_generation::dsl as g;
    let value = db_dispatch!(conn, c => g::policy_generation
        .filter(g::id.eq(1))
        .select(g::generation)
        .first::<i64>(c)?);
    Ok(value)
}

/// The change counter and when it last changed (ms).
pub fn generation_changed_at(conn: &mut DbConn) -> Result<(i64, i64), StoreError> {
    use policy_generation::dsl as g;
    let value = db_dispatch!(conn, c => g::policy_generation
        .filter(g::id.eq(1))
        .select((g::generation, g::updated_at))
        .first::<(i64, i64)>(c)?);
    Ok(value)
}

/// Deletes the attempt counters of days before `day` (days since the epoch); how many.
pub fn purge_attempts_before(conn: &mut DbConn, day: i64) -> Result<usize, StoreError> {
    use policy_attempts::dsl as a;
    Ok(
        db_dispatch!(conn, c => diesel::delete(a::policy_attempts.filter(a::day.lt(day)))
        .execute(c)?),
    )
}

/// Bumps the change counter (call inside the transaction that changed rules).
pub fn bump_generation(conn: &mut DbConn, now_ms: i64) -> Result<i64, StoreError> {
    use policy_generation::dsl as g;
    db_dispatch!(conn, c => diesel::update(g::policy_generation.filter(g::id.eq(1)))
        .set((g::generation.eq(g::generation + 1), g::updated_at.eq(now_ms)))
        .execute(c)?);
    generation(conn)
}

/// Every rule, in decision order for patterns: file rules by (file, line), then admin rules in
/// creation order.
pub fn load_rules(conn: &mut DbConn) -> Result<Vec<StoredRule>, StoreError> {
    use policy_rules::dsl as r;
    let rows: Vec<(String, Option<i32>, String, RuleRow)> = db_dispatch!(conn, c => r::policy_rules
        .select((r::source, r::line, r::id, (r::rule_json, r::created_at, r::updated_at)))
        .load::<(String, Option<i32>, String, RuleRow)>(c)?);
    let mut keyed = Vec::with_capacity(rows.len());
    for (source, line, id, row) in rows {
        let rule: Rule = serde_json::from_str(&row.rule_json)
            .map_err(|e| StoreError::Corrupt(format!("rule {id}: {e}")))?;
        let admin = source == "admin";
        let order = if admin {
            (1, String::new(), row.created_at, id.clone())
        } else {
            (0, source, i64::from(line.unwrap_or(0)), id.clone())
        };
        keyed.push((
            order,
            StoredRule {
                rule,
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
        ));
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(keyed.into_iter().map(|(_, r)| r).collect())
}

fn source_columns(rule: &Rule) -> (String, Option<i32>) {
    match &rule.source {
        RuleSource::File { path, line } => {
            (path.clone(), Some(i32::try_from(*line).unwrap_or(i32::MAX)))
        }
        RuleSource::Admin => ("admin".to_string(), None),
    }
}

/// Inserts a new rule (its id must be new).
pub fn insert_rule(conn: &mut DbConn, rule: &Rule, now_ms: i64) -> Result<(), StoreError> {
    use policy_rules::dsl as r;
    let (source, line) = source_columns(rule);
    let json = rule.to_json().to_string();
    db_dispatch!(conn, c => diesel::insert_into(r::policy_rules)
        .values((
            r::id.eq(&rule.id),
            r::kind.eq(rule.kind.as_str()),
            r::value.eq(rule.target.value()),
            r::source.eq(&source),
            r::line.eq(line),
            r::label.eq(&rule.label),
            r::homeserver.eq(&rule.homeserver),
            r::rule_json.eq(&json),
            r::created_at.eq(now_ms),
            r::updated_at.eq(now_ms),
        ))
        .execute(c)?);
    Ok(())
}

/// Replaces a stored rule with the same id.
pub fn update_rule(conn: &mut DbConn, rule: &Rule, now_ms: i64) -> Result<bool, StoreError> {
    use policy_rules::dsl as r;
    let (source, line) = source_columns(rule);
    let json = rule.to_json().to_string();
    let n = db_dispatch!(conn, c => diesel::update(r::policy_rules.filter(r::id.eq(&rule.id)))
        .set((
            r::kind.eq(rule.kind.as_str()),
            r::value.eq(rule.target.value()),
            r::source.eq(&source),
            r::line.eq(line),
            r::label.eq(&rule.label),
            r::homeserver.eq(&rule.homeserver),
            r::rule_json.eq(&json),
            r::updated_at.eq(now_ms),
        ))
        .execute(c)?);
    Ok(n > 0)
}

/// Deletes a rule; whether it existed.
pub fn delete_rule(conn: &mut DbConn, id: &str) -> Result<bool, StoreError> {
    use policy_rules::dsl as r;
    let n =
        db_dispatch!(conn, c => diesel::delete(r::policy_rules.filter(r::id.eq(id))).execute(c)?);
    Ok(n > 0)
}

/// Applies an import's diff in one transaction and bumps the change counter.
pub fn apply_diff(conn: &mut DbConn, diff: &RuleDiff, now_ms: i64) -> Result<i64, StoreError> {
    conn.transaction(|conn| {
        for rule in &diff.removed {
            delete_rule(conn, &rule.id)?;
        }
        for (_, new) in &diff.changed {
            update_rule(conn, new, now_ms)?;
        }
        for rule in &diff.added {
            insert_rule(conn, rule, now_ms)?;
        }
        bump_generation(conn, now_ms)
    })
}

/// One counter increment: (UTC day number, ASCII domain, outcome) → count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptCount {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    /// The address's domain (ASCII).
    pub domain: String,
    /// "denied" or "invite_required".
    pub outcome: String,
    /// How many.
    pub count: i64,
    /// Last one seen (ms).
    pub last_seen: i64,
}

/// Adds counts to the per-day counters (one transaction).
pub fn add_attempts(conn: &mut DbConn, counts: &[AttemptCount]) -> Result<(), StoreError> {
    use policy_attempts::dsl as a;
    if counts.is_empty() {
        return Ok(());
    }
    conn.transaction(|conn| {
        for n in counts {
            db_dispatch!(conn, c => diesel::insert_into(a::policy_attempts)
                .values((
                    a::day.eq(n.day),
                    a::domain.eq(&n.domain),
                    a::outcome.eq(&n.outcome),
                    a::count.eq(n.count),
                    a::last_seen.eq(n.last_seen),
                ))
                .on_conflict((a::day, a::domain, a::outcome))
                .do_update()
                .set((
                    a::count.eq(a::count + n.count),
                    a::last_seen.eq(n.last_seen),
                ))
                .execute(c)?);
        }
        Ok(())
    })
}

/// Totals per (domain, outcome) since `since_day` (inclusive), largest first.
pub fn attempts_since(
    conn: &mut DbConn,
    since_day: i64,
    limit: i64,
) -> Result<Vec<AttemptCount>, StoreError> {
    use policy_attempts::dsl as a;
    // Rows are per day and domain (a month is at most 31 × the knocking domains): summing in
    // Rust keeps the query identical on both backends (SUM(BIGINT) is NUMERIC on PostgreSQL).
    let rows: Vec<(String, String, i64, i64)> = db_dispatch!(conn, c => a::policy_attempts
        .filter(a::day.ge(since_day))
        .select((a::domain, a::outcome, a::count, a::last_seen))
        .load::<(String, String, i64, i64)>(c)?);
    let mut totals: std::collections::BTreeMap<(String, String), (i64, i64)> =
        std::collections::BTreeMap::new();
    for (domain, outcome, count, last) in rows {
        let e = totals.entry((domain, outcome)).or_insert((0, 0));
        e.0 += count;
        e.1 = e.1.max(last);
    }
    let rows = totals
        .into_iter()
        .map(|((domain, outcome), (count, last))| (domain, outcome, Some(count), Some(last)));
    let mut out: Vec<AttemptCount> = rows
        .into_iter()
        .map(|(domain, outcome, count, last)| AttemptCount {
            day: since_day,
            domain,
            outcome,
            count: count.unwrap_or(0),
            last_seen: last.unwrap_or(0),
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.domain.cmp(&b.domain)));
    out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(out)
}
