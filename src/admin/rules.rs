//! Allowlist rules through the admin API: list, read, create, replace, delete, convert a file rule,
//! import one allowlist file as admin rules, export, and explain an address.
//!
//! Validation is the file importer's: `Rule::from_json` and `parse_allowlist_file` check each rule
//! exactly as files are checked (same messages), and the whole rule set must still compile
//! (`PolicyIndex::build`: duplicates named with both sources, patterns). Every change bumps the
//! change counter in its transaction, so every instance reloads within `policy.reload_interval`,
//! and writes an audit row in the same transaction. Rules that come from files are read-only
//! here: edit the file, or convert the rule to an admin rule first.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use super::AdminError;
use crate::allowlist::{self, Allowlist, AllowlistError};
use crate::audit::{self, Actor, action};
use crate::policy::{
    Address, DefaultPolicy, Explanation, PolicyIndex, Rule, RuleDiff, RuleError, RuleKind,
    RuleSource, RuleTarget, check_duplicates, normalize_domain, normalize_email,
    parse_allowlist_file, render_allowlist_file,
};
use crate::store::DbConn;
use crate::store::admin::{self as admin_store, RuleQuery};
use crate::store::policy::{self as rules_store, StoredRule};

/// The file name that errors of `POST /rules/import` carry ("import.toml:12: …").
pub const IMPORT_NAME: &str = "import.toml";

/// Which rules to list or export (every filter given must hold).
#[derive(Debug, Clone, Default)]
pub struct RuleFilter {
    /// Rules that apply to this domain: a domain or deny rule on it, a parent's rule with
    /// `subdomains`, an address at it (IDNA ASCII form, see [`RuleFilter::with_domain`]).
    pub domain: Option<String>,
    /// Exactly this organisation label.
    pub organisation: Option<String>,
    /// Exactly this homeserver.
    pub homeserver: Option<String>,
    /// "admin", or a file path relative to the allowlists folder ("finances.toml").
    pub source: Option<String>,
    /// Only this kind.
    pub kind: Option<RuleKind>,
}

impl RuleFilter {
    /// Sets the domain filter from user input (normalised to IDNA ASCII).
    pub fn with_domain(mut self, domain: &str) -> Result<RuleFilter, AdminError> {
        let ascii = normalize_domain(domain)
            .map_err(|e| AdminError::InvalidInput(format!("`domain`: {e}")))?;
        self.domain = Some(ascii);
        Ok(self)
    }

    /// Whether `rule` passes every filter.
    pub fn matches(&self, rule: &Rule) -> bool {
        let source = match &rule.source {
            RuleSource::File { path, .. } => path.as_str(),
            RuleSource::Admin => "admin",
        };
        self.source.as_deref().is_none_or(|s| s == source)
            && self
                .organisation
                .as_deref()
                .is_none_or(|o| rule.label.as_deref() == Some(o))
            && self
                .homeserver
                .as_deref()
                .is_none_or(|h| rule.homeserver.as_deref() == Some(h))
            && self.kind.is_none_or(|k| rule.kind == k)
            && self
                .domain
                .as_deref()
                .is_none_or(|d| applies_to_domain(rule, d))
    }

    fn query(&self) -> RuleQuery {
        let mut q = RuleQuery {
            source: self.source.clone(),
            label: self.organisation.clone(),
            homeserver: self.homeserver.clone(),
            kind: self.kind.map(|k| k.as_str().to_owned()),
            ..RuleQuery::default()
        };
        if let Some(domain) = &self.domain {
            // Candidates: the domain and its parents (domain and deny rules), and addresses at
            // the domain, in both spellings; `matches` then applies the `subdomains` rule.
            let labels: Vec<&str> = domain.split('.').collect();
            q.values = Some(
                (0..labels.len())
                    .filter_map(|i| labels.get(i..).map(|rest| rest.join(".")))
                    .collect(),
            );
            let unicode = idna::domain_to_unicode(domain).0;
            let mut suffixes = vec![format!("@{domain}")];
            if unicode != *domain {
                suffixes.push(format!("@{unicode}"));
            }
            q.value_suffixes = suffixes;
        }
        q
    }
}

/// Whether `rule` is about `domain` (ASCII): a domain rule on it or on a parent with
/// `subdomains`, or an address at it.
fn applies_to_domain(rule: &Rule, domain: &str) -> bool {
    match &rule.target {
        RuleTarget::Domain { name, subdomains } => {
            name == domain
                || (*subdomains
                    && domain
                        .strip_suffix(name.as_str())
                        .is_some_and(|rest| rest.ends_with('.')))
        }
        RuleTarget::Email(email) => email
            .rsplit_once('@')
            .and_then(|(_, d)| normalize_domain(d).ok())
            .is_some_and(|d| d == domain),
        RuleTarget::Regex(_) => false,
    }
}

/// What the rules' filters can choose from, and how many rules there are of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleFacets {
    /// Every rule.
    pub total: usize,
    /// Rules created through the API or the console.
    pub admin: usize,
    /// Rules per kind, in [`RuleKind`] order.
    pub per_kind: Vec<(RuleKind, usize)>,
    /// Rules that expire at some point.
    pub expiring: usize,
    /// Organisation labels in use, sorted.
    pub organisations: Vec<String>,
    /// Homeservers in use, sorted.
    pub homeservers: Vec<String>,
    /// Sources: `admin` first, then the allowlist files, sorted.
    pub sources: Vec<String>,
}

impl RuleFacets {
    /// Counts `rules` (the live ones: no database query).
    pub fn of(rules: &[Rule]) -> RuleFacets {
        use std::collections::{BTreeMap, BTreeSet};
        let mut per_kind: BTreeMap<RuleKind, usize> = BTreeMap::new();
        let (mut organisations, mut homeservers, mut files) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let mut admin = 0;
        let mut expiring = 0;
        for rule in rules {
            *per_kind.entry(rule.kind).or_default() += 1;
            if let Some(label) = &rule.label {
                organisations.insert(label.clone());
            }
            if let Some(hs) = &rule.homeserver {
                homeservers.insert(hs.clone());
            }
            match &rule.source {
                RuleSource::Admin => admin += 1,
                RuleSource::File { path, .. } => {
                    files.insert(path.clone());
                }
            }
            if rule.expires_at.is_some() {
                expiring += 1;
            }
        }
        let mut sources = vec!["admin".to_owned()];
        sources.extend(files);
        RuleFacets {
            total: rules.len(),
            admin,
            per_kind: per_kind.into_iter().collect(),
            expiring,
            organisations: organisations.into_iter().collect(),
            homeservers: homeservers.into_iter().collect(),
            sources,
        }
    }
}

/// A page of rules, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePage {
    /// The rules.
    pub rules: Vec<Rule>,
    /// Pass as `next_batch` for the next page; `None` on the last page.
    pub next_batch: Option<String>,
}

/// Rules matching `filter`, ordered by id (stable while rules change), after the page token
/// `from`.
pub fn list(
    conn: &mut DbConn,
    filter: &RuleFilter,
    from: Option<&str>,
    limit: usize,
) -> Result<RulePage, AdminError> {
    let mut query = filter.query();
    query.after_id = from.map(str::to_owned);
    if filter.domain.is_none() {
        // Every SQL condition is exact: no filtering after the query, so LIMIT is exact too.
        query.limit = Some(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX));
    }
    // With a domain, the candidates are few (the domain, its parents, its addresses).
    let mut rules: Vec<Rule> = admin_store::query_rules(conn, &query)?
        .into_iter()
        .map(|s| s.rule)
        .filter(|r| filter.matches(r))
        .take(limit.saturating_add(1))
        .collect();
    let more = rules.len() > limit;
    rules.truncate(limit);
    let next_batch = if more {
        rules.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok(RulePage { rules, next_batch })
}

/// One rule with its bookkeeping.
pub fn get(conn: &mut DbConn, id: &str) -> Result<StoredRule, AdminError> {
    admin_store::get_rule(conn, id)?.ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> AdminError {
    AdminError::NotFound(format!("no rule with id {id}"))
}

/// The error for a file rule touched through the API.
fn file_rule(rule: &Rule) -> AdminError {
    AdminError::FileRule(format!(
        "rule {} comes from the allowlist file {}: it is read-only through the API. Edit the \
         file, or convert it to an admin rule first (POST /_annuaire/admin/v1/rules/{}/convert)",
        rule.id,
        rule.reference(),
        rule.id
    ))
}

/// The file importer's duplicate message, naming both sources.
fn duplicate(existing: &Rule, new: &Rule) -> Vec<RuleError> {
    match check_duplicates(&[existing.clone(), new.clone()]) {
        Err(errors) => errors,
        Ok(()) => vec![RuleError::at(
            &new.source,
            &new.id,
            format!(
                "the same {} already exists: {}",
                new.describe(),
                existing.reference()
            ),
        )],
    }
}

/// Refuses a rule set that would not compile (duplicates, patterns that cannot be combined).
fn check_compiles(rules: Vec<Rule>, default: &DefaultPolicy) -> Result<(), AdminError> {
    PolicyIndex::build(rules, default.clone())
        .map(|_| ())
        .map_err(AdminError::InvalidRules)
}

fn stored_rules(conn: &mut DbConn) -> Result<Vec<Rule>, AdminError> {
    Ok(rules_store::load_rules(conn)?
        .into_iter()
        .map(|s| s.rule)
        .collect())
}

/// Reloads this instance's rules after a change, so that it applies here at once (the other
/// instances follow within `policy.reload_interval`).
fn refresh(conn: &mut DbConn, live: &Allowlist, now_ms: i64) {
    if let Err(e) = live.reload_if_changed(conn, now_ms) {
        tracing::warn!(error = %e, "could not reload the rules after an admin change");
    }
}

/// A rule from API JSON, validated as file rules are.
fn parse_rule(input: Value) -> Result<Rule, AdminError> {
    Rule::from_json(input, RuleSource::Admin).map_err(|e| AdminError::InvalidRules(vec![e]))
}

/// Creates an admin rule from its JSON (`kind`, `name`/`email`/`regex`, `label`, …).
pub fn create(
    conn: &mut DbConn,
    live: &Allowlist,
    input: Value,
    actor: &Actor,
    now_ms: i64,
) -> Result<Rule, AdminError> {
    let rule = parse_rule(input)?;
    let default = live.index().default_policy().clone();
    let result = crate::store::transaction(conn, |conn| {
        let mut rules = stored_rules(conn)?;
        if let Some(existing) = rules.iter().find(|r| r.id == rule.id) {
            return Err(AdminError::RuleExists(duplicate(existing, &rule)));
        }
        rules.push(rule.clone());
        check_compiles(rules, &default)?;
        rules_store::insert_rule(conn, &rule, now_ms)?;
        rules_store::bump_generation(conn, now_ms)?;
        audit::record(
            conn,
            actor,
            action::RULE_CREATE,
            &audit::rule_target(&rule.id),
            None,
            Some(&rule.to_json()),
            now_ms,
        )?;
        Ok(())
    });
    match result {
        Ok(()) => {}
        // Another instance created the same rule at the same moment.
        Err(AdminError::Store(e)) if e.is_unique_violation() => {
            return Err(AdminError::RuleExists(vec![RuleError::at(
                &rule.source,
                &rule.id,
                format!("the same {} was created at the same time", rule.describe()),
            )]));
        }
        Err(e) => return Err(e),
    }
    refresh(conn, live, now_ms);
    Ok(rule)
}

/// Replaces an admin rule (all fields; its kind and value, which make its id, cannot change).
pub fn update(
    conn: &mut DbConn,
    live: &Allowlist,
    id: &str,
    input: Value,
    actor: &Actor,
    now_ms: i64,
) -> Result<Rule, AdminError> {
    let rule = parse_rule(input)?;
    let default = live.index().default_policy().clone();
    let changed = crate::store::transaction(conn, |conn| {
        let existing = get(conn, id)?.rule;
        if existing.source.is_file() {
            return Err(file_rule(&existing));
        }
        if rule.id != existing.id {
            return Err(AdminError::InvalidInput(format!(
                "a rule's kind and value make its id and cannot change (this one is the {}): \
                 create the new rule, then delete this one",
                existing.describe()
            )));
        }
        if rule == existing {
            return Ok(false);
        }
        let mut rules = stored_rules(conn)?;
        for r in rules.iter_mut().filter(|r| r.id == rule.id) {
            *r = rule.clone();
        }
        check_compiles(rules, &default)?;
        rules_store::update_rule(conn, &rule, now_ms)?;
        rules_store::bump_generation(conn, now_ms)?;
        audit::record(
            conn,
            actor,
            action::RULE_UPDATE,
            &audit::rule_target(&rule.id),
            Some(&existing.to_json()),
            Some(&rule.to_json()),
            now_ms,
        )?;
        Ok(true)
    })?;
    if changed {
        refresh(conn, live, now_ms);
    }
    Ok(rule)
}

/// Deletes an admin rule; returns it.
pub fn delete(
    conn: &mut DbConn,
    live: &Allowlist,
    id: &str,
    actor: &Actor,
    now_ms: i64,
) -> Result<Rule, AdminError> {
    let removed = crate::store::transaction(conn, |conn| {
        let existing = get(conn, id)?.rule;
        if existing.source.is_file() {
            return Err(file_rule(&existing));
        }
        if !rules_store::delete_rule(conn, id)? {
            return Err(not_found(id));
        }
        rules_store::bump_generation(conn, now_ms)?;
        audit::record(
            conn,
            actor,
            action::RULE_DELETE,
            &audit::rule_target(id),
            Some(&existing.to_json()),
            None,
            now_ms,
        )?;
        Ok(existing)
    })?;
    refresh(conn, live, now_ms);
    Ok(removed)
}

/// A file rule turned into an admin rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// The rule, now with source `admin`.
    pub rule: Rule,
    /// Where it came from ("finances.toml:12"): that line must be removed from the file, or
    /// the next import of the allowlist files fails on the duplicate.
    pub was: String,
}

/// Turns a file rule into an admin rule (same id and values), editable through the API from
/// then on. Until its line is removed from the file, the next file import (CLI or `serve`
/// start) refuses the duplicate, naming both.
pub fn convert(
    conn: &mut DbConn,
    live: &Allowlist,
    id: &str,
    actor: &Actor,
    now_ms: i64,
) -> Result<Converted, AdminError> {
    let converted = crate::store::transaction(conn, |conn| {
        let existing = get(conn, id)?.rule;
        if !existing.source.is_file() {
            return Err(AdminError::InvalidInput(format!(
                "rule {id} is already an admin rule"
            )));
        }
        let mut rule = existing.clone();
        rule.source = RuleSource::Admin;
        rules_store::update_rule(conn, &rule, now_ms)?;
        rules_store::bump_generation(conn, now_ms)?;
        audit::record(
            conn,
            actor,
            action::RULE_CONVERT,
            &audit::rule_target(id),
            Some(&existing.to_json()),
            Some(&rule.to_json()),
            now_ms,
        )?;
        Ok(Converted {
            was: existing.reference(),
            rule,
        })
    })?;
    refresh(conn, live, now_ms);
    Ok(converted)
}

/// Imports one allowlist file (TOML) as admin rules: rules new to the database are added, admin
/// rules with the same id are replaced, nothing else changes; a rule that a file already defines
/// is refused (naming both). Returns the diff; with `dry_run`, changes nothing.
pub fn import(
    conn: &mut DbConn,
    live: &Allowlist,
    toml_text: &str,
    dry_run: bool,
    actor: &Actor,
    now_ms: i64,
) -> Result<RuleDiff, AdminError> {
    let parsed = parse_allowlist_file(IMPORT_NAME, toml_text).map_err(AdminError::InvalidRules)?;
    let default = live.index().default_policy().clone();
    let diff = crate::store::transaction(conn, |conn| {
        let stored = stored_rules(conn)?;
        let by_id: HashMap<&str, &Rule> = stored.iter().map(|r| (r.id.as_str(), r)).collect();
        let conflicts: Vec<RuleError> = parsed
            .iter()
            .filter_map(|p| by_id.get(p.id.as_str()).map(|s| (*s, p)))
            .filter(|(s, _)| s.source.is_file())
            .flat_map(|(s, p)| duplicate(s, p))
            .collect();
        if !conflicts.is_empty() {
            return Err(AdminError::RuleExists(conflicts));
        }
        let incoming: Vec<Rule> = parsed
            .iter()
            .cloned()
            .map(|mut r| {
                r.source = RuleSource::Admin;
                r
            })
            .collect();
        let ids: HashSet<&str> = incoming.iter().map(|r| r.id.as_str()).collect();
        let replaced: Vec<Rule> = stored
            .iter()
            .filter(|r| ids.contains(r.id.as_str()))
            .cloned()
            .collect();
        let diff = crate::policy::diff(&replaced, &incoming);
        let mut combined: Vec<Rule> = stored
            .iter()
            .filter(|r| !ids.contains(r.id.as_str()))
            .cloned()
            .collect();
        combined.extend(incoming.iter().cloned());
        check_compiles(combined, &default)?;
        if dry_run || diff.is_empty() {
            return Ok(diff);
        }
        // Admin patterns apply in creation order: a millisecond apart keeps the file's order.
        let mut pattern_offset = 0;
        for rule in &diff.added {
            let created = if rule.kind == RuleKind::Pattern {
                pattern_offset += 1;
                now_ms + pattern_offset
            } else {
                now_ms
            };
            rules_store::insert_rule(conn, rule, created)?;
        }
        for (_, new) in &diff.changed {
            rules_store::update_rule(conn, new, now_ms)?;
        }
        rules_store::bump_generation(conn, now_ms)?;
        audit::record_rule_diff(conn, actor, action::RULE_IMPORT, &diff, now_ms)?;
        Ok(diff)
    })?;
    if !dry_run && !diff.is_empty() {
        refresh(conn, live, now_ms);
    }
    Ok(diff)
}

/// The rules matching `filter` as one allowlist file (decision order), which imports back to the
/// same rules.
pub fn export(conn: &mut DbConn, filter: &RuleFilter) -> Result<String, AdminError> {
    let rules: Vec<Rule> = stored_rules(conn)?
        .into_iter()
        .filter(|r| filter.matches(r))
        .collect();
    Ok(render_allowlist_file(&rules))
}

/// The decision for an address with every rule considered (the live rules, reloaded first if
/// another instance changed them).
pub fn explain(
    conn: &mut DbConn,
    live: &Allowlist,
    address: &str,
    now_ms: i64,
) -> Result<(Address, Explanation), AdminError> {
    let address = normalize_email(address)
        .map_err(|e| AdminError::InvalidAddress(format!("Invalid email address: {e}")))?;
    refresh(conn, live, now_ms);
    let explanation = live.index().explain(&address, now_ms);
    Ok((address, explanation))
}

/// `allowlist::import_dir` with one audit row per rule changed (`rule.file_import`), in the
/// same transaction: what the CLI's `allowlist import` and `serve`'s start-up import run.
pub fn import_dir_audited(
    conn: &mut DbConn,
    dir: &Path,
    default: &DefaultPolicy,
    dry_run: bool,
    actor: &Actor,
    now_ms: i64,
) -> Result<RuleDiff, AllowlistError> {
    crate::store::transaction(conn, |conn| {
        let diff = allowlist::import_dir(conn, dir, default, dry_run, now_ms)?;
        if !dry_run {
            audit::record_rule_diff(conn, actor, action::RULE_FILE_IMPORT, &diff, now_ms)?;
        }
        Ok::<_, AllowlistError>(diff)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain_rule(name: &str, subdomains: bool) -> Rule {
        Rule::new(
            RuleKind::Domain,
            RuleTarget::Domain {
                name: name.into(),
                subdomains,
            },
            RuleSource::Admin,
        )
    }

    #[test]
    fn domain_filter_follows_label_boundaries_and_subdomains() {
        let exact = domain_rule("gouv.example", false);
        let wide = domain_rule("gouv.example", true);
        assert!(applies_to_domain(&exact, "gouv.example"));
        assert!(!applies_to_domain(&exact, "finances.gouv.example"));
        assert!(applies_to_domain(&wide, "finances.gouv.example"));
        assert!(!applies_to_domain(&wide, "notgouv.example"));
        let address = Rule::new(
            RuleKind::Address,
            RuleTarget::Email("jean@gouv.example".into()),
            RuleSource::Admin,
        );
        assert!(applies_to_domain(&address, "gouv.example"));
        assert!(!applies_to_domain(&address, "finances.gouv.example"));
    }

    #[test]
    fn domain_filter_queries_the_domain_its_parents_and_its_addresses() {
        let f = RuleFilter::default()
            .with_domain("Finances.Gouv.Example")
            .unwrap();
        let q = f.query();
        assert_eq!(
            q.values.unwrap(),
            vec!["finances.gouv.example", "gouv.example", "example"]
        );
        assert_eq!(q.value_suffixes, vec!["@finances.gouv.example"]);
        let f = RuleFilter::default().with_domain("écoles.example").unwrap();
        assert_eq!(
            f.query().value_suffixes,
            vec!["@xn--coles-9ra.example", "@écoles.example"]
        );
        assert!(RuleFilter::default().with_domain("not a domain").is_err());
    }

    #[test]
    fn filters_combine() {
        let mut r = domain_rule("gouv.example", true);
        r.label = Some("Finances".into());
        r.homeserver = Some("hs.example".into());
        let f = RuleFilter {
            organisation: Some("Finances".into()),
            homeserver: Some("hs.example".into()),
            source: Some("admin".into()),
            kind: Some(RuleKind::Domain),
            domain: Some("a.gouv.example".into()),
        };
        assert!(f.matches(&r));
        assert!(
            !RuleFilter {
                source: Some("finances.toml".into()),
                ..f.clone()
            }
            .matches(&r)
        );
        assert!(
            !RuleFilter {
                kind: Some(RuleKind::Deny),
                ..f.clone()
            }
            .matches(&r)
        );
        assert!(
            !RuleFilter {
                organisation: Some("Justice".into()),
                ..f
            }
            .matches(&r)
        );
    }
}
