//! The dashboard and the audit log.

use actix_web::HttpResponse;
use serde::{Deserialize, Serialize};

use super::{Console, present, query};
use crate::admin::{AuditEntry, AuditFilter, DirectoryStats, DomainAttempts, OutboxStats, Period};
use crate::web::chart::{BarChart, bars};

/// Domains in the chart.
const CHART_DOMAINS: usize = 10;
/// Organisations and homeservers listed.
const DIRECTORY_GROUPS: usize = crate::admin::service::DASHBOARD_GROUPS;

#[derive(Serialize)]
struct KindCount {
    kind: &'static str,
    count: usize,
}

#[derive(Serialize)]
struct RuleCounts {
    total: usize,
    admin: usize,
    expiring: usize,
    per_kind: Vec<KindCount>,
}

#[derive(Serialize)]
struct DashboardPage {
    pending_domains: usize,
    attempts_since: i64,
    chart: BarChart,
    attempts: Vec<DomainAttempts>,
    rules: RuleCounts,
    outbox: OutboxStats,
    directory: DirectoryStats,
    directory_as_of: Option<i64>,
}

/// # GET /_annuaire/console/
///
/// Refused and invite-required attempts per domain over 7 days (an SVG bar chart), the
/// outbox's health, the directory's size per organisation and homeserver, the rule counts.
pub(super) async fn dashboard(c: Console) -> HttpResponse {
    let app = &c.app;
    let (attempts, outbox, directory, pending) = futures_util::join!(
        app.admin.attempt_stats(Period::Week, CHART_DOMAINS),
        app.admin.outbox_stats(),
        app.admin.directory_stats_snapshot(DIRECTORY_GROUPS),
        app.requests.pending_domains(),
    );
    let (attempts, outbox, directory) = match (attempts, outbox, directory) {
        (Ok(a), Ok(o), Ok(d)) => (a, o, d),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return c.error(&e),
    };
    let pending_domains = pending.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "pending domain requests could not be counted");
        0
    });
    let facets = app.admin.rule_facets();
    let chart = bars(
        &attempts
            .domains
            .iter()
            .map(|d| (d.domain.clone(), d.denied, d.invite_required))
            .collect::<Vec<_>>(),
    );
    let data = DashboardPage {
        pending_domains,
        attempts_since: attempts.since,
        chart,
        attempts: attempts.domains,
        rules: RuleCounts {
            total: facets.total,
            admin: facets.admin,
            expiring: facets.expiring,
            per_kind: facets
                .per_kind
                .iter()
                .map(|(kind, count)| KindCount {
                    kind: kind.as_str(),
                    count: *count,
                })
                .collect(),
        },
        outbox,
        directory: directory.0,
        directory_as_of: Some(directory.1),
    };
    c.page("dashboard", "console_dashboard.html", &data)
}

/// The audit log's filters, as the form sends them.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    until: Option<String>,
    from: Option<String>,
}

#[derive(Serialize)]
struct AuditPage<'a> {
    error: Option<String>,
    filters: &'a AuditQuery,
    actions: Vec<&'static str>,
    entries: Vec<AuditEntry>,
    next: Option<String>,
    from: Option<String>,
}

/// Milliseconds of a `YYYY-MM-DD` date (UTC midnight).
fn day_ms(date: &str) -> Option<i64> {
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400_000)
}

/// The actions the audit log knows (the filter's choices).
const ACTIONS: &[&str] = &[
    "rule.*",
    crate::audit::action::RULE_CREATE,
    crate::audit::action::RULE_UPDATE,
    crate::audit::action::RULE_DELETE,
    crate::audit::action::RULE_CONVERT,
    crate::audit::action::RULE_IMPORT,
    crate::audit::action::RULE_FILE_IMPORT,
    "account.*",
    crate::audit::action::ACCOUNT_CREATE,
    crate::audit::action::ACCOUNT_REMOVE,
    crate::audit::action::ACCOUNT_UPDATE,
    crate::audit::action::ACCOUNT_LOCK,
    crate::audit::action::TOKEN_ISSUE,
    "directory.*",
    crate::audit::action::DIRECTORY_HIDE,
    crate::audit::action::DIRECTORY_UNHIDE,
    crate::audit::action::DIRECTORY_RENAME,
    crate::audit::action::DIRECTORY_REMOVE,
    crate::audit::action::THREEPID_ERASE,
    "domain_request.*",
    crate::audit::action::DOMAIN_REQUEST_ACCEPT,
    crate::audit::action::DOMAIN_REQUEST_DECLINE,
];

/// Entries per page.
const AUDIT_PAGE: usize = 50;

/// # GET /_annuaire/console/audit
pub(super) async fn audit(c: Console) -> HttpResponse {
    let q: AuditQuery = query(&c.req);
    let mut error = None;
    let mut bound = |value: &Option<String>, plus_day: bool| -> Option<i64> {
        let text = present(value)?;
        match day_ms(&text) {
            Some(ms) => Some(if plus_day { ms + 86_400_000 } else { ms }),
            None => {
                error = Some(format!("{text:?} is not a date (YYYY-MM-DD)"));
                None
            }
        }
    };
    let filter = AuditFilter {
        actor: present(&q.actor),
        action: present(&q.action),
        target: present(&q.target),
        since: bound(&q.since, false),
        until: bound(&q.until, true),
    };
    let from = present(&q.from);
    let page = match c.app.admin.audit(filter, from.clone(), AUDIT_PAGE).await {
        Ok(page) => page,
        Err(e) => return c.error(&e),
    };
    let data = AuditPage {
        error,
        filters: &q,
        actions: ACTIONS.to_vec(),
        entries: page.entries,
        next: page.next_batch,
        from,
    };
    c.page("audit", "console_audit.html", &data)
}

#[cfg(test)]
mod tests {
    use super::day_ms;

    #[test]
    fn dates_are_utc_midnights() {
        assert_eq!(day_ms("1970-01-01"), Some(0));
        assert_eq!(
            day_ms("2027-01-15"),
            Some(1_800_000_000_000 - 8 * 3_600_000)
        );
        assert_eq!(day_ms("2000-03-01"), Some(951_868_800_000));
        assert_eq!(day_ms("2026-13-01"), None);
        assert_eq!(day_ms("yesterday"), None);
    }
}
