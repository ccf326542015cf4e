//! `annuaire ldap sync`: reads the agency directory and keeps verified names in step with it.
//!
//! 1. Every person `ldap.filter` selects is read with a paged search. Each valid address of a
//!    person with a name becomes a name record keyed by the address's lookup key (the address
//!    itself is not stored). People are skipped, and counted with the reason, when they have no
//!    mail attribute, no usable name, only invalid addresses, or only addresses another person
//!    already had (the first one read keeps it; the others are logged by DN).
//! 2. Records are written in batches of 500, each in one transaction with the entries whose
//!    address they match: those entries get the LDAP name (unless an admin override is set)
//!    and, when their allowlist rule gives no label, the LDAP organisation.
//! 3. Only after the whole search succeeded: records the run did not see are deleted (those
//!    people left the directory) and the entries that relied on them fall back to the name
//!    their address gives. A failed or interrupted search deletes nothing.
//!
//! `--dry-run` reads and compares but writes nothing.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::entries::{email_lookup_key, refresh};
use super::error::DirectoryError;
use super::names::name_from_ldap;
use super::service::DirectoryService;
use crate::ldap::{self, LdapPerson, LdapSettings};
use crate::policy::normalize_email;
use crate::store::directory::{self as store, LdapNameRow};
use crate::store::{DbConn, StoreError};

/// Records written per transaction.
const BATCH: usize = 500;

/// What a sync read and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SyncSummary {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// LDAP entries read.
    pub read: usize,
    /// Name records stored (one per valid address).
    pub records: usize,
    /// Directory entries whose address has a record.
    pub matched: usize,
    /// Of those, entries whose name or organisation changed.
    pub updated: usize,
    /// Records deleted because their person left the directory.
    pub removed: usize,
    /// Entries that fell back to the name their address gives.
    pub reverted: usize,
    /// People skipped: no mail attribute.
    pub skipped_no_mail: usize,
    /// People skipped: no display name, given name or surname.
    pub skipped_no_name: usize,
    /// People skipped: no valid address.
    pub skipped_invalid_mail: usize,
    /// People skipped: every address already belonged to someone read before.
    pub skipped_duplicate_mail: usize,
}

impl SyncSummary {
    /// People skipped, all reasons together.
    pub fn skipped(&self) -> usize {
        self.skipped_no_mail
            + self.skipped_no_name
            + self.skipped_invalid_mail
            + self.skipped_duplicate_mail
    }
}

impl DirectoryService {
    /// Reads the agency directory and updates name records and entries (see the module
    /// documentation); `progress` is called after each batch. A sync that writes holds the job
    /// lock: on PostgreSQL, a second one (another instance, or the command line while `serve`
    /// syncs) fails with [`DirectoryError::SyncInProgress`] instead of interleaving with it.
    pub async fn sync_ldap(
        &self,
        settings: &LdapSettings,
        dry_run: bool,
        progress: impl FnMut(&SyncSummary),
    ) -> Result<SyncSummary, DirectoryError> {
        if dry_run {
            return self.sync_ldap_unlocked(settings, true, progress).await;
        }
        let db = self.db.clone();
        let lock = tokio::task::spawn_blocking(move || store::try_job_lock(&db, SYNC_LOCK_KEY))
            .await
            .map_err(|e| StoreError::Unavailable(format!("lock task failed: {e}")))??
            .ok_or(DirectoryError::SyncInProgress)?;
        let result = self.sync_ldap_unlocked(settings, false, progress).await;
        // Unlocking is a database call: not on the async thread.
        let _ = tokio::task::spawn_blocking(move || drop(lock)).await;
        match &result {
            Ok(summary) => {
                let now = self.clock.now_ms();
                let record = LastSync {
                    at: now,
                    records: summary.records,
                };
                record.set_gauges();
                metrics::counter!("annuaire_ldap_sync_runs_total").increment(1);
                // Kept in the database so that every instance reports it, whoever synced
                // (an instance, or `annuaire ldap sync` from a timer).
                let text = serde_json::to_string(&record).unwrap_or_default();
                if let Err(e) = self
                    .db
                    .run(move |conn| crate::store::state::set(conn, LAST_SYNC_STATE, &text, now))
                    .await
                {
                    tracing::warn!(error = %e, "could not record the LDAP sync's time");
                }
            }
            Err(_) => metrics::counter!("annuaire_ldap_sync_failures_total").increment(1),
        }
        result
    }

    async fn sync_ldap_unlocked(
        &self,
        settings: &LdapSettings,
        dry_run: bool,
        mut progress: impl FnMut(&SyncSummary),
    ) -> Result<SyncSummary, DirectoryError> {
        let run = crate::secret::random_id();
        let now = self.clock.now_ms();
        let mut summary = SyncSummary {
            dry_run,
            ..SyncSummary::default()
        };
        let mut connection = ldap::connect(settings).await?;
        let mut people = ldap::people(&mut connection, settings).await?;
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        let mut pending: Vec<LdapNameRow> = Vec::with_capacity(BATCH);
        while let Some(person) = people.next().await? {
            summary.read += 1;
            records_of(&person, &run, now, &mut seen, &mut pending, &mut summary);
            if pending.len() >= BATCH {
                self.flush_ldap_batch(std::mem::take(&mut pending), dry_run, now, &mut summary)
                    .await?;
                progress(&summary);
            }
        }
        people.finish().await?;
        if let Err(e) = connection.unbind().await {
            tracing::debug!(error = %e, "LDAP unbind failed");
        }
        self.flush_ldap_batch(pending, dry_run, now, &mut summary)
            .await?;
        self.finish_ldap_sync(run, seen, dry_run, now, &mut summary)
            .await?;
        progress(&summary);
        tracing::info!(
            dry_run,
            read = summary.read,
            records = summary.records,
            matched = summary.matched,
            updated = summary.updated,
            removed = summary.removed,
            reverted = summary.reverted,
            skipped = summary.skipped(),
            "LDAP sync finished"
        );
        Ok(summary)
    }

    /// Stores a batch of records and refreshes the entries they match, in one transaction.
    async fn flush_ldap_batch(
        &self,
        records: Vec<LdapNameRow>,
        dry_run: bool,
        now: i64,
        summary: &mut SyncSummary,
    ) -> Result<(), DirectoryError> {
        if records.is_empty() {
            return Ok(());
        }
        let (matched, updated) = self
            .db
            .run(move |conn| {
                crate::store::transaction(conn, |conn| apply(conn, &records, dry_run, now))
            })
            .await?;
        summary.matched += matched;
        summary.updated += updated;
        Ok(())
    }

    /// After a complete search: drops the records of people who left and reverts the entries that
    /// used them (or, in a dry run, counts what that would do).
    async fn finish_ldap_sync(
        &self,
        run: String,
        seen: HashSet<[u8; 32]>,
        dry_run: bool,
        now: i64,
        summary: &mut SyncSummary,
    ) -> Result<(), DirectoryError> {
        let (removed, reverted) = self
            .db
            .run(move |conn| {
                let unseen = |key: &String| decode_key(key).is_none_or(|k| !seen.contains(&k));
                if dry_run {
                    let removed = store::ldap_name_keys(conn)?
                        .iter()
                        .filter(|k| unseen(k))
                        .count();
                    let reverted = store::ldap_sourced_email_keys(conn)?
                        .iter()
                        .filter(|k| unseen(k))
                        .count();
                    return Ok((removed, reverted));
                }
                let removed = store::delete_ldap_names_not_in_run(conn, &run)?;
                let mut reverted = 0;
                loop {
                    let changed = crate::store::transaction(conn, |conn| {
                        let orphans = store::orphaned_ldap_entries(conn, BATCH as i64)?;
                        let mut changed = 0;
                        for mut entry in orphans {
                            if refresh(&mut entry, None) {
                                entry.updated_at = now;
                                store::update(conn, &entry)?;
                                changed += 1;
                            }
                        }
                        Ok::<_, crate::store::StoreError>(changed)
                    })?;
                    reverted += changed;
                    if changed < BATCH {
                        break;
                    }
                }
                Ok((removed, reverted))
            })
            .await?;
        summary.removed = removed;
        summary.reverted = reverted;
        Ok(())
    }
}

/// Turns one person into name records (appended to `pending`), or counts why not.
fn records_of(
    person: &LdapPerson,
    run: &str,
    now: i64,
    seen: &mut HashSet<[u8; 32]>,
    pending: &mut Vec<LdapNameRow>,
    summary: &mut SyncSummary,
) {
    if person.mails.is_empty() {
        summary.skipped_no_mail += 1;
        return;
    }
    let Some(name) = name_from_ldap(
        person.display_name.as_deref(),
        person.given_name.as_deref(),
        person.surname.as_deref(),
    ) else {
        summary.skipped_no_name += 1;
        return;
    };
    let organisation = person
        .organisation
        .as_deref()
        .and_then(|o| name_from_ldap(Some(o), None, None));
    let (mut stored, mut duplicates) = (0, 0);
    for mail in &person.mails {
        let Ok(address) = normalize_email(mail) else {
            continue;
        };
        let digest: [u8; 32] = Sha256::digest(address.as_str().as_bytes()).into();
        if !seen.insert(digest) {
            duplicates += 1;
            tracing::warn!(dn = %person.dn, "LDAP address already read from another entry; the first one keeps it");
            continue;
        }
        pending.push(LdapNameRow {
            email_key: email_lookup_key(address.as_str()),
            name: name.clone(),
            organisation: organisation.clone(),
            dn: person.dn.clone(),
            sync_run: run.to_owned(),
            synced_at: now,
        });
        stored += 1;
    }
    summary.records += stored;
    if stored == 0 {
        if duplicates > 0 {
            summary.skipped_duplicate_mail += 1;
        } else {
            summary.skipped_invalid_mail += 1;
            tracing::warn!(dn = %person.dn, "LDAP entry without a valid mail address skipped");
        }
    }
}

fn apply(
    conn: &mut DbConn,
    records: &[LdapNameRow],
    dry_run: bool,
    now: i64,
) -> Result<(usize, usize), StoreError> {
    if !dry_run {
        store::upsert_ldap_names(conn, records)?;
    }
    let keys: Vec<String> = records.iter().map(|r| r.email_key.clone()).collect();
    let entries = store::by_email_keys(conn, &keys)?;
    let (mut matched, mut updated) = (0, 0);
    for mut entry in entries {
        let Some(record) = records.iter().find(|r| r.email_key == entry.email_key) else {
            continue;
        };
        matched += 1;
        if refresh(&mut entry, Some(record)) {
            updated += 1;
            if !dry_run {
                entry.updated_at = now;
                store::update(conn, &entry)?;
            }
        }
    }
    Ok((matched, updated))
}

fn decode_key(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Where the last successful sync is recorded (`instance_state`, JSON [`LastSync`]).
pub const LAST_SYNC_STATE: &str = "ldap_last_sync";

/// The last successful (writing) LDAP sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastSync {
    /// When it finished (ms).
    pub at: i64,
    /// The name records it read.
    pub records: usize,
}

impl LastSync {
    /// Reads the record (none before the first sync).
    pub fn read(conn: &mut DbConn) -> Result<Option<LastSync>, StoreError> {
        Ok(crate::store::state::get(conn, LAST_SYNC_STATE)?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// `annuaire_ldap_sync_last_success_timestamp_seconds` and `annuaire_ldap_sync_entries`.
    pub fn set_gauges(&self) {
        #[allow(clippy::cast_precision_loss)]
        let (at, records) = (self.at as f64 / 1000.0, self.records as f64);
        metrics::gauge!("annuaire_ldap_sync_last_success_timestamp_seconds").set(at);
        metrics::gauge!("annuaire_ldap_sync_entries").set(records);
    }
}

/// Key of the PostgreSQL advisory lock a writing sync holds.
pub const SYNC_LOCK_KEY: i64 = 0x616e_6e75_6c64_6170; // "annuldap"

/// Runs `ldap sync` every `ldap.sync_interval` (first at start) on the current runtime, when
/// LDAP and the interval are configured. On PostgreSQL only one instance syncs at a time (an
/// advisory lock; the others skip that round). The task ends with the runtime.
pub fn start_periodic_sync(directory: &Arc<DirectoryService>) {
    let directory = directory.clone();
    let Some(interval) = directory.config.ldap.sync_interval.map(|i| i.0) else {
        return;
    };
    let settings = match LdapSettings::from_config(&directory.config.ldap) {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            tracing::warn!("ldap.sync_interval is set but ldap.url is not: no periodic sync");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "periodic LDAP sync disabled");
            return;
        }
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match directory.sync_ldap(&settings, false, |_| {}).await {
                Ok(_) => {}
                Err(DirectoryError::SyncInProgress) => {
                    tracing::debug!("another instance is syncing LDAP; skipped");
                }
                Err(e) => tracing::error!(error = %e, "periodic LDAP sync failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(mails: &[&str], display: Option<&str>) -> LdapPerson {
        LdapPerson {
            dn: "uid=x,dc=example".into(),
            mails: mails.iter().map(|m| m.to_string()).collect(),
            display_name: display.map(Into::into),
            given_name: None,
            surname: None,
            organisation: Some("  Ministère  ".into()),
        }
    }

    #[test]
    fn people_become_records_or_counted_skips() {
        let mut seen = HashSet::new();
        let mut pending = Vec::new();
        let mut s = SyncSummary::default();
        let mut read = |p: LdapPerson, pending: &mut Vec<LdapNameRow>, s: &mut SyncSummary| {
            records_of(&p, "run", 0, &mut seen, pending, s)
        };
        read(
            person(
                &["Jean.Dupont@Finances.Gouv.FR", "j.dupont@finances.gouv.fr"],
                Some("Jean Dupont"),
            ),
            &mut pending,
            &mut s,
        );
        assert_eq!(pending.len(), 2);
        assert_eq!(
            pending[0].email_key,
            email_lookup_key("jean.dupont@finances.gouv.fr")
        );
        assert_eq!(pending[0].organisation.as_deref(), Some("Ministère"));
        read(person(&[], Some("No Mail")), &mut pending, &mut s);
        read(person(&["x@y.fr"], None), &mut pending, &mut s);
        read(
            person(&["not an address", "@@"], Some("Bad")),
            &mut pending,
            &mut s,
        );
        read(
            person(&["JEAN.DUPONT@finances.gouv.fr"], Some("Homonyme")),
            &mut pending,
            &mut s,
        );
        // A duplicate next to a fresh address only loses the duplicate.
        read(
            person(
                &["j.dupont@finances.gouv.fr", "new@finances.gouv.fr"],
                Some("Other"),
            ),
            &mut pending,
            &mut s,
        );
        assert_eq!(pending.len(), 3);
        assert_eq!(
            (
                s.records,
                s.skipped_no_mail,
                s.skipped_no_name,
                s.skipped_invalid_mail,
                s.skipped_duplicate_mail
            ),
            (3, 1, 1, 1, 1)
        );
        assert_eq!(s.skipped(), 4);
    }

    #[test]
    fn keys_decode() {
        let hex = email_lookup_key("a@b.fr");
        let raw: [u8; 32] = Sha256::digest(b"a@b.fr").into();
        assert_eq!(decode_key(&hex), Some(raw));
        assert_eq!(decode_key("zz"), None);
    }
}
