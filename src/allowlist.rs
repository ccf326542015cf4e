//! The live allowlist: the rules in the database compiled into a [`PolicyIndex`], swapped
//! atomically when any instance changes them (each instance polls the change counter), the
//! import of the allowlist files, and the counters of refused attempts.
//!
//! `policy` is the pure engine; this module adds the I/O around it (files, database).

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::policy::{
    Address, Decision, DefaultPolicy, Outcome, PolicyIndex, Rule, RuleDiff, RuleError,
    parse_allowlists,
};
use crate::store::policy::{self as rules_store, AttemptCount};
use crate::store::{DbConn, StoreError};

/// Why rules could not be loaded or imported.
#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Rules are invalid (each error names its file and line).
    #[error("{}", join_errors(.0))]
    Rules(Vec<RuleError>),
    /// A file or folder could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

fn join_errors(errors: &[RuleError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Attempt counters not yet written: (day, ASCII domain, outcome) → (count, last seen).
type AttemptCounters = HashMap<(i64, String, Outcome), (i64, i64)>;

/// The live, compiled rules of this instance.
pub struct Allowlist {
    index: ArcSwap<PolicyIndex>,
    generation: AtomicI64,
    default: DefaultPolicy,
    /// Flushed to the database periodically.
    attempts: Mutex<AttemptCounters>,
}

impl std::fmt::Debug for Allowlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allowlist")
            .field("rules", &self.index.load().rules().len())
            .field("generation", &self.generation.load(Ordering::SeqCst))
            .finish()
    }
}

impl Allowlist {
    /// Loads and compiles the stored rules (blocking).
    pub fn load(conn: &mut DbConn, default: DefaultPolicy) -> Result<Allowlist, AllowlistError> {
        let generation = rules_store::generation(conn)?;
        let index = build_index(conn, &default)?;
        Ok(Allowlist {
            index: ArcSwap::from_pointee(index),
            generation: AtomicI64::new(generation),
            default,
            attempts: Mutex::new(HashMap::new()),
        })
    }

    /// The current compiled rules.
    pub fn index(&self) -> Arc<PolicyIndex> {
        self.index.load_full()
    }

    /// The decision for `address` now.
    pub fn decide(&self, address: &Address, now_ms: i64) -> Decision {
        self.index.load().decide(address, now_ms)
    }

    /// The change counter this instance's rules correspond to.
    pub fn generation(&self) -> i64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Reloads the rules when another writer changed them (blocking); whether it reloaded.
    /// Metrics: when the rules were last checked, and how long after the change a reload came
    /// (`annuaire_policy_reload_lag_seconds`).
    pub fn reload_if_changed(
        &self,
        conn: &mut DbConn,
        now_ms: i64,
    ) -> Result<bool, AllowlistError> {
        let (stored, changed_at) = rules_store::generation_changed_at(conn)?;
        metrics::gauge!("annuaire_policy_last_check_timestamp_seconds").set(seconds(now_ms));
        if stored == self.generation() {
            return Ok(false);
        }
        self.reload(conn, stored)?;
        let lag = (now_ms.saturating_sub(changed_at)).max(0);
        metrics::gauge!("annuaire_policy_reload_lag_seconds").set(seconds(lag));
        metrics::counter!("annuaire_policy_reloads_total").increment(1);
        Ok(true)
    }

    fn reload(&self, conn: &mut DbConn, generation: i64) -> Result<(), AllowlistError> {
        let index = build_index(conn, &self.default)?;
        let count = index.rules().len();
        self.index.store(Arc::new(index));
        self.generation.store(generation, Ordering::SeqCst);
        tracing::info!(rules = count, generation, "allowlist reloaded");
        Ok(())
    }

    /// Counts a denied or invite-required decision for the "who is knocking" statistics (the
    /// domain only, never the address).
    pub fn record_attempt(&self, address: &Address, decision: &Decision, now_ms: i64) {
        if decision.outcome == Outcome::Allowed {
            return;
        }
        let day = now_ms.div_euclid(86_400_000);
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        let entry = attempts
            .entry((day, address.ascii_domain().to_string(), decision.outcome))
            .or_insert((0, now_ms));
        entry.0 += 1;
        entry.1 = entry.1.max(now_ms);
    }

    /// Takes the counts gathered since the last call (to be added to the database).
    pub fn take_attempts(&self) -> Vec<AttemptCount> {
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        attempts
            .drain()
            .map(
                |((day, domain, outcome), (count, last_seen))| AttemptCount {
                    day,
                    domain,
                    outcome: outcome.as_str().to_string(),
                    count,
                    last_seen,
                },
            )
            .collect()
    }

    /// Writes the gathered counts to the database (blocking); on failure they are kept for the
    /// next flush.
    pub fn flush_attempts(&self, conn: &mut DbConn) -> Result<usize, StoreError> {
        let counts = self.take_attempts();
        if counts.is_empty() {
            return Ok(0);
        }
        match rules_store::add_attempts(conn, &counts) {
            Ok(()) => Ok(counts.len()),
            Err(e) => {
                let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
                for c in counts {
                    let outcome = if c.outcome == "denied" {
                        Outcome::Denied
                    } else {
                        Outcome::InviteRequired
                    };
                    let entry = attempts.entry((c.day, c.domain, outcome)).or_insert((0, 0));
                    entry.0 += c.count;
                    entry.1 = entry.1.max(c.last_seen);
                }
                Err(e)
            }
        }
    }
}

/// Milliseconds as (fractional) seconds, for a gauge.
fn seconds(ms: i64) -> f64 {
    // Precision beyond 2^53 ms (285,000 years) does not matter here.
    #[allow(clippy::cast_precision_loss)]
    let s = ms as f64 / 1000.0;
    s
}

/// Builds the index from every stored rule.
fn build_index(conn: &mut DbConn, default: &DefaultPolicy) -> Result<PolicyIndex, AllowlistError> {
    let rules: Vec<Rule> = rules_store::load_rules(conn)?
        .into_iter()
        .map(|s| s.rule)
        .collect();
    PolicyIndex::build(rules, default.clone()).map_err(AllowlistError::Rules)
}

/// Reads every `*.toml` file under `dir` (recursively), as (path relative to `dir` with `/`
/// separators, content), sorted by path.
pub fn read_allowlist_files(dir: &Path) -> Result<Vec<(String, String)>, AllowlistError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|error| AllowlistError::Io {
            path: folder.clone(),
            error,
        })?;
        for entry in entries {
            let entry = entry.map_err(|error| AllowlistError::Io {
                path: folder.clone(),
                error,
            })?;
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                let content =
                    std::fs::read_to_string(&path).map_err(|error| AllowlistError::Io {
                        path: path.clone(),
                        error,
                    })?;
                let relative = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                files.push((relative, content));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Parses the allowlist folder into rules (file errors name file and line).
pub fn parse_allowlist_dir(dir: &Path) -> Result<Vec<Rule>, AllowlistError> {
    let files = read_allowlist_files(dir)?;
    parse_allowlists(&files).map_err(AllowlistError::Rules)
}

/// What an import changes: file-sourced rules become equal to `file_rules`; admin rules stay.
/// Fails when a file rule duplicates an admin rule, or when the result would not compile.
pub fn plan_import(
    stored: &[Rule],
    file_rules: &[Rule],
    default: &DefaultPolicy,
) -> Result<RuleDiff, AllowlistError> {
    let (old_files, admin): (Vec<Rule>, Vec<Rule>) =
        stored.iter().cloned().partition(|r| r.source.is_file());
    let mut combined: Vec<Rule> = file_rules.to_vec();
    combined.extend(admin);
    // Duplicates between files and admin rules, invalid combinations: the index says.
    PolicyIndex::build(combined, default.clone()).map_err(AllowlistError::Rules)?;
    Ok(crate::policy::diff(&old_files, file_rules))
}

/// Imports `dir` into the database (blocking): plans, and unless `dry_run`, applies the diff in
/// one transaction and bumps the change counter.
pub fn import_dir(
    conn: &mut DbConn,
    dir: &Path,
    default: &DefaultPolicy,
    dry_run: bool,
    now_ms: i64,
) -> Result<RuleDiff, AllowlistError> {
    let file_rules = parse_allowlist_dir(dir)?;
    let stored: Vec<Rule> = rules_store::load_rules(conn)?
        .into_iter()
        .map(|s| s.rule)
        .collect();
    let diff = plan_import(&stored, &file_rules, default)?;
    if !dry_run && !diff.is_empty() {
        rules_store::apply_diff(conn, &diff, now_ms)?;
    }
    Ok(diff)
}

/// One line per change: `+ finances.toml:9 domain rule finances.gouv.example and its subdomains`.
pub fn describe_diff(diff: &RuleDiff) -> Vec<String> {
    let mut lines = Vec::new();
    for r in &diff.added {
        lines.push(format!("+ {} {}", r.reference(), r.describe()));
    }
    for (old, new) in &diff.changed {
        let moved = if old.reference() == new.reference() {
            String::new()
        } else {
            format!(" (was {})", old.reference())
        };
        lines.push(format!("~ {} {}{moved}", new.reference(), new.describe()));
    }
    for r in &diff.removed {
        lines.push(format!("- {} {}", r.reference(), r.describe()));
    }
    lines
}

/// The shard answer of the policy endpoints for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardAnswer {
    /// The decision.
    pub decision: Decision,
    /// The homeserver to tell this caller (`hs`): the shadow for outside callers when one
    /// exists; `None` when denied.
    pub hs: Option<String>,
    /// `shadow_hs`, for internal callers only.
    pub shadow_hs: Option<String>,
}

/// What `/info` and `/internal-info` tell a caller about an address's decision.
pub fn shard_answer(decision: Decision, internal_caller: bool) -> ShardAnswer {
    let (hs, shadow_hs) = match decision.outcome {
        Outcome::Denied => (None, None),
        _ if internal_caller => (
            decision.homeserver.clone(),
            decision.shadow_homeserver.clone(),
        ),
        _ => (
            decision
                .shadow_homeserver
                .clone()
                .or_else(|| decision.homeserver.clone()),
            None,
        ),
    };
    ShardAnswer {
        decision,
        hs,
        shadow_hs,
    }
}
