//! Retention: what annuaire deletes once it is old enough (`[retention]`).
//!
//! The purge job runs every `retention.interval` on one instance at a time (a PostgreSQL
//! advisory lock, the job lock; instances that do not get it skip that round) and deletes:
//! audit log rows older than `retention.audit`, per-domain attempt counters older than
//! `retention.attempts`, revoked admin tokens past their expiry and retired admin token secrets
//! whose tokens are no longer accepted. Expired validation sessions and sent mails have their
//! own purges (`validation.purge_interval`, `mail.outbox.retention`).

use std::sync::Arc;

use serde::Serialize;

use super::service::Admin;
use crate::config::RetentionConfig;
use crate::store::{self, DbConn, StoreError};

/// Key of the PostgreSQL advisory lock the purge holds.
pub const RETENTION_LOCK_KEY: i64 = 0x616e_6e75_7075_7267; // "annupurg"

/// What one purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    /// Audit log rows.
    pub audit_rows: usize,
    /// Per-domain attempt counters (one per day, domain and outcome).
    pub attempt_counters: usize,
    /// Revoked admin tokens past their expiry.
    pub revoked_tokens: usize,
    /// Retired admin token secrets no longer accepted.
    pub token_secrets: usize,
}

impl Purged {
    /// Whether nothing was deleted.
    pub fn is_empty(&self) -> bool {
        *self == Purged::default()
    }
}

/// Deletes what is older than the retention settings allow (blocking); see the module
/// documentation.
pub fn purge(
    conn: &mut DbConn,
    retention: &RetentionConfig,
    now_ms: i64,
) -> Result<Purged, StoreError> {
    let audit_cutoff = now_ms.saturating_sub(retention.audit.as_millis_i64());
    let attempts_cutoff_day = now_ms
        .saturating_sub(retention.attempts.as_millis_i64())
        .div_euclid(86_400_000);
    Ok(Purged {
        audit_rows: crate::audit::purge_before(conn, audit_cutoff)?,
        attempt_counters: store::policy::purge_attempts_before(conn, attempts_cutoff_day)?,
        revoked_tokens: store::admin::purge_revoked(
            conn,
            now_ms - super::tokens::LEEWAY_SECS * 1000,
        )?,
        token_secrets: store::keys::purge_jwt_secrets(conn, now_ms)?,
    })
}

impl Admin {
    /// Runs [`purge`] under the job lock; `None` when another instance holds it.
    pub async fn purge_expired_data(&self) -> Result<Option<Purged>, StoreError> {
        let db = self.db.clone();
        let retention = self.config.retention.clone();
        let now_ms = self.clock.now_ms();
        tokio::task::spawn_blocking(move || {
            let Some(lock) = store::directory::try_job_lock(&db, RETENTION_LOCK_KEY)? else {
                return Ok(None);
            };
            let result = db
                .get()
                .and_then(|mut conn| purge(&mut conn, &retention, now_ms));
            drop(lock);
            result.map(Some)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("purge task failed: {e}")))?
    }
}

/// Starts the purge job on the current runtime (first run one interval after start); it ends
/// with the runtime.
pub fn start_job(admin: &Arc<Admin>) {
    let admin = admin.clone();
    tokio::spawn(async move {
        let interval = admin.config.retention.interval.0;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match admin.purge_expired_data().await {
                Ok(Some(purged)) if !purged.is_empty() => tracing::info!(
                    audit_rows = purged.audit_rows,
                    attempt_counters = purged.attempt_counters,
                    revoked_tokens = purged.revoked_tokens,
                    token_secrets = purged.token_secrets,
                    "retention purge"
                ),
                Ok(Some(_)) => {}
                Ok(None) => tracing::debug!("another instance runs the retention purge; skipped"),
                Err(e) => tracing::warn!(error = %e, "retention purge failed; retrying later"),
            }
        }
    });
}
