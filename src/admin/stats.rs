//! Statistics for administrators: which unknown or refused domains are knocking at the door
//! (denied and invite-required decisions per domain), the directory's size per organisation and
//! homeserver, and the mail outbox's health. Counted by the database (GROUP BY, COUNT), never by
//! loading rows.

use std::collections::HashMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::AdminError;
use crate::allowlist::Allowlist;
use crate::store::DbConn;
use crate::store::admin::{self as admin_store, EntryCounts, EntryGrouping};
use crate::store::policy as rules_store;

const DAY_MS: i64 = 86_400_000;

/// A statistics period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// `24h`.
    Day,
    /// `7d`.
    Week,
    /// `30d`.
    Month,
}

impl Period {
    /// Parses `24h`, `7d` or `30d`.
    pub fn parse(text: &str) -> Result<Period, AdminError> {
        match text {
            "24h" | "1d" => Ok(Period::Day),
            "7d" => Ok(Period::Week),
            "30d" => Ok(Period::Month),
            other => Err(AdminError::InvalidInput(format!(
                "`period` must be 24h, 7d or 30d, not {other:?}"
            ))),
        }
    }

    /// As written in requests.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "24h",
            Period::Week => "7d",
            Period::Month => "30d",
        }
    }

    fn days(self) -> i64 {
        match self {
            Period::Day => 1,
            Period::Week => 7,
            Period::Month => 30,
        }
    }

    /// The first UTC day counted: counters are kept per UTC day, so a period covers the
    /// current day and the N full days before it (always at least N days).
    pub fn since_day(self, now_ms: i64) -> i64 {
        now_ms.div_euclid(DAY_MS) - self.days()
    }
}

/// Refused or invite-required attempts for one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DomainAttempts {
    /// The domain (IDNA ASCII).
    pub domain: String,
    /// Denied decisions.
    pub denied: i64,
    /// Invite-required decisions.
    pub invite_required: i64,
    /// Both.
    pub total: i64,
    /// The last one (ms).
    pub last_seen: i64,
}

/// The "who is knocking" list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AttemptStats {
    /// `24h`, `7d` or `30d`.
    pub period: &'static str,
    /// Start of the first day counted (ms).
    pub since: i64,
    /// Domains, most attempts first.
    pub domains: Vec<DomainAttempts>,
}

/// Attempts per domain over `period`, largest first, at most `limit` domains. This instance's
/// counters not yet written are written first, so that its own recent attempts count.
pub fn attempts(
    conn: &mut DbConn,
    live: &Allowlist,
    period: Period,
    now_ms: i64,
    limit: usize,
) -> Result<AttemptStats, AdminError> {
    live.flush_attempts(conn)?;
    let since_day = period.since_day(now_ms);
    let rows = rules_store::attempts_since(conn, since_day, i64::MAX)?;
    let mut by_domain: HashMap<String, DomainAttempts> = HashMap::new();
    for row in rows {
        let entry = by_domain
            .entry(row.domain.clone())
            .or_insert_with(|| DomainAttempts {
                domain: row.domain.clone(),
                denied: 0,
                invite_required: 0,
                total: 0,
                last_seen: 0,
            });
        match row.outcome.as_str() {
            "denied" => entry.denied += row.count,
            _ => entry.invite_required += row.count,
        }
        entry.total += row.count;
        entry.last_seen = entry.last_seen.max(row.last_seen);
    }
    let mut domains: Vec<DomainAttempts> = by_domain.into_values().collect();
    domains.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
    domains.truncate(limit);
    Ok(AttemptStats {
        period: period.as_str(),
        since: since_day * DAY_MS,
        domains,
    })
}

/// Entry counts of a group of directory entries, or of the whole directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EntryCountsView {
    /// Entries.
    pub entries: i64,
    /// Visible entries (not hidden by moderation; external and deactivated ones included).
    pub visible: i64,
    /// Entries hidden by moderation.
    pub hidden: i64,
    /// External (invite-required) users.
    pub external: i64,
    /// Deactivated accounts.
    pub inactive: i64,
}

impl EntryCountsView {
    fn of(c: &EntryCounts) -> EntryCountsView {
        EntryCountsView {
            entries: c.entries,
            visible: c.entries - c.hidden,
            hidden: c.hidden,
            external: c.external,
            inactive: c.inactive,
        }
    }
}

/// The entries of one organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OrganisationCounts {
    /// The organisation label (null: entries without one).
    pub organisation: Option<String>,
    /// Its counts.
    #[serde(flatten)]
    pub counts: EntryCountsView,
}

/// The entries of one homeserver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct HomeserverCounts {
    /// The homeserver.
    pub homeserver: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: EntryCountsView,
}

/// The directory's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DirectoryStats {
    /// The whole directory.
    pub total: EntryCountsView,
    /// Per organisation label, largest first.
    pub organisations: Vec<OrganisationCounts>,
    /// Per homeserver, largest first.
    pub homeservers: Vec<HomeserverCounts>,
}

/// Entry counts for the whole directory, per organisation and per homeserver (at most `limit`
/// of each, largest first): GROUP BY queries, no entry is loaded.
pub fn directory(conn: &mut DbConn, limit: usize) -> Result<DirectoryStats, AdminError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let total = EntryCountsView::of(&admin_store::entry_totals(conn)?);
    let organisations = admin_store::entry_counts(conn, EntryGrouping::Organisation, limit)?
        .into_iter()
        .map(|c| OrganisationCounts {
            counts: EntryCountsView::of(&c),
            organisation: c.key,
        })
        .collect();
    let homeservers = admin_store::entry_counts(conn, EntryGrouping::Homeserver, limit)?
        .into_iter()
        .map(|c| HomeserverCounts {
            counts: EntryCountsView::of(&c),
            homeserver: c.key.unwrap_or_default(),
        })
        .collect();
    Ok(DirectoryStats {
        total,
        organisations,
        homeservers,
    })
}

/// The mail outbox's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OutboxStats {
    /// Mails waiting to be sent (those being sent included).
    pub queued: i64,
    /// Of those, being sent right now (a worker holds them).
    pub sending: i64,
    /// Of those, failed at least once and waiting for a retry.
    pub retrying: i64,
    /// Sent in the last 24 hours.
    pub sent_24h: i64,
    /// Given up in the last 24 hours (permanent failure or too many attempts).
    pub failed_24h: i64,
    /// Replaced by a newer mail before being sent, in the last 24 hours.
    pub superseded_24h: i64,
    /// When the oldest unsent mail was queued (ms); null when nothing waits.
    pub oldest_unsent_at: Option<i64>,
    /// How long it has waited (ms); null when nothing waits.
    pub oldest_unsent_age_ms: Option<i64>,
}

/// The outbox's counts now and over the last 24 hours.
pub fn outbox(conn: &mut DbConn, now_ms: i64) -> Result<OutboxStats, AdminError> {
    let c = admin_store::outbox_counts(conn, now_ms, now_ms - DAY_MS)?;
    Ok(OutboxStats {
        queued: c.queued,
        sending: c.sending,
        retrying: c.retrying,
        sent_24h: c.sent,
        failed_24h: c.failed,
        superseded_24h: c.superseded,
        oldest_unsent_at: c.oldest_queued_at,
        oldest_unsent_age_ms: c.oldest_queued_at.map(|t| now_ms.saturating_sub(t).max(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_cover_at_least_their_length_in_whole_days() {
        let now = 20_000 * DAY_MS + 3_600_000; // 01:00 UTC on day 20000
        assert_eq!(Period::parse("24h").unwrap().since_day(now), 19_999);
        assert_eq!(Period::parse("7d").unwrap().since_day(now), 19_993);
        assert_eq!(Period::parse("30d").unwrap().since_day(now), 19_970);
        assert!(Period::parse("1y").is_err());
        assert_eq!(Period::Week.as_str(), "7d");
    }
}
