//! The compiled policy: rules indexed so that a decision costs the same with ten rules or a
//! hundred thousand (hash map for addresses, label-suffix walk for domains, one `RegexSet`).

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use regex::{RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

use super::address::{Address, normalize_email};
use super::file::{PATTERN_SIZE_LIMIT, RuleError};
use super::instant::format_rfc3339;
use super::public_mail::public_provider;
use super::rule::{Rule, RuleKind, RuleSource, RuleTarget};
use super::validate::{check_duplicates, validate_structure, wrap_pattern};

/// What happens to addresses no rule matches (configuration `policy.default`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultPolicy {
    /// Refused (the zero-configuration default).
    Deny,
    /// Invitation required, on the externals' homeserver (Tchap's behaviour).
    InviteOnly {
        /// The externals' homeserver.
        external_homeserver: String,
    },
}

/// The three answers the policy gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// May register on the decision's homeserver.
    Allowed,
    /// May register on the decision's homeserver once invited.
    InviteRequired,
    /// May not register.
    Denied,
}

impl Outcome {
    /// "allowed" | "invite_required" | "denied", as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::InviteRequired => "invite_required",
            Outcome::Denied => "denied",
        }
    }
}

/// Why the policy decided as it did, as a stable code that clients can translate into their own
/// words ("your administration is not on the service yet") without parsing the English `reason`.
///
/// The codes are part of the API: a code is never renamed or reused for another cause; new
/// causes get new codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// An allow rule (address, domain or pattern) admits the address.
    Allowed,
    /// The rule that matches admits the address by invitation only (`requires_invite = true`).
    InviteRequired,
    /// No rule names the address or its domain: its administration is not on the service (yet).
    /// The configured default applies (refused, or invitation-only on the externals' shard).
    UnknownDomain,
    /// Like `unknown_domain`, for a well-known public mail provider (gmail.com, …): not an
    /// agency domain at all.
    PublicMailProvider,
    /// A deny rule blocks the address's domain (or a parent domain).
    DeniedDomain,
    /// A deny rule blocks this exact address.
    DeniedAddress,
    /// An allow rule for this address or domain has expired (`expires_at`): the configured
    /// default applies again.
    RuleExpired,
}

impl ReasonCode {
    /// Every code, in documentation order.
    pub const ALL: [ReasonCode; 7] = [
        ReasonCode::Allowed,
        ReasonCode::InviteRequired,
        ReasonCode::UnknownDomain,
        ReasonCode::PublicMailProvider,
        ReasonCode::DeniedDomain,
        ReasonCode::DeniedAddress,
        ReasonCode::RuleExpired,
    ];

    /// The code as JSON writes it (`unknown_domain`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::Allowed => "allowed",
            ReasonCode::InviteRequired => "invite_required",
            ReasonCode::UnknownDomain => "unknown_domain",
            ReasonCode::PublicMailProvider => "public_mail_provider",
            ReasonCode::DeniedDomain => "denied_domain",
            ReasonCode::DeniedAddress => "denied_address",
            ReasonCode::RuleExpired => "rule_expired",
        }
    }
}

/// The policy's answer for one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Allowed, invite required, or denied.
    pub outcome: Outcome,
    /// The homeserver the address belongs to (none when denied).
    pub homeserver: Option<String>,
    /// The address of that homeserver as seen from outside, if any.
    pub shadow_homeserver: Option<String>,
    /// The effective organisation label of the rule that decided.
    pub organisation: Option<String>,
    /// The deciding rule: "finances.toml:12" or "admin:<id>"; `None` for the default.
    pub rule: Option<String>,
    /// The deciding rule's id; `None` for the default.
    pub rule_id: Option<String>,
    /// Why, for people.
    pub reason: String,
    /// Why, as a stable code for programs.
    pub reason_code: ReasonCode,
}

/// A decision with every rule that matched the address, and why each one lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// What `decide` answers.
    pub decision: Decision,
    /// Rules that name this address, its domain or a parent domain, or whose pattern matches it.
    pub considered: Vec<Considered>,
}

/// One rule looked at while deciding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Considered {
    /// The rule.
    pub rule: Rule,
    /// Whether it matches the address (expired rules and exact-only parent domains do not).
    pub matched: bool,
    /// Why it applied, or why it did not.
    pub why: String,
}

/// An allow and a deny rule for one key (duplicates of a kind are refused at build time).
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    allow: Option<usize>,
    deny: Option<usize>,
}

impl Slot {
    /// Deny first: at equal specificity deny wins.
    fn in_order(self) -> impl Iterator<Item = usize> {
        self.deny.into_iter().chain(self.allow)
    }
}

/// Where a candidate rule sits in the decision order (smaller is considered first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Address,
    /// Domain rule found at this suffix depth (0 = the address's own domain).
    Domain(usize),
    Pattern,
}

/// The compiled rules. `Send + Sync`: built once, shared behind an `ArcSwap` by the caller.
#[derive(Debug)]
pub struct PolicyIndex {
    rules: Vec<Rule>,
    addresses: HashMap<String, Slot>,
    domains: HashMap<String, Slot>,
    patterns: Option<RegexSet>,
    /// Set index → rule index, in decision order.
    pattern_rules: Vec<usize>,
    default: DefaultPolicy,
    /// Each rule's decision, made the first time the rule decides (a rule's decision depends
    /// on the rule alone): `decide` clones it rather than formatting the reason again.
    decisions: Vec<OnceLock<Box<Decision>>>,
}

impl PolicyIndex {
    /// Validates and compiles rules; fails with every error found (bad rules, duplicates).
    pub fn build(rules: Vec<Rule>, default: DefaultPolicy) -> Result<PolicyIndex, Vec<RuleError>> {
        let mut errors: Vec<RuleError> = rules
            .iter()
            .filter_map(|r| validate_structure(r).err())
            .collect();
        if let Err(mut dups) = check_duplicates(&rules) {
            errors.append(&mut dups);
        }
        if let DefaultPolicy::InviteOnly {
            external_homeserver,
        } = &default
            && external_homeserver.trim().is_empty()
        {
            errors.push(RuleError {
                path: "policy.external_homeserver".to_owned(),
                line: None,
                message: "the invite_only default needs an external homeserver".to_owned(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut addresses: HashMap<String, Slot> = HashMap::new();
        let mut domains: HashMap<String, Slot> = HashMap::new();
        let mut pattern_rules = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let deny = rule.kind == RuleKind::Deny;
            let slot = match &rule.target {
                RuleTarget::Email(email) => {
                    // validate_structure proved it normalises; key by the matching form.
                    let key = normalize_email(email)
                        .map(|a| a.matching_form())
                        .unwrap_or_else(|_| email.clone());
                    addresses.entry(key).or_default()
                }
                RuleTarget::Domain { name, .. } => domains.entry(name.clone()).or_default(),
                RuleTarget::Regex(_) => {
                    pattern_rules.push(i);
                    continue;
                }
            };
            if deny {
                slot.deny = Some(i);
            } else {
                slot.allow = Some(i);
            }
        }

        // Files in file-name order, rules in file order, admin rules after all files (in the
        // order given). A stable sort keeps the given order among equal keys.
        pattern_rules.sort_by(|a, b| pattern_order(&rules[*a]).cmp(&pattern_order(&rules[*b])));
        let patterns = if pattern_rules.is_empty() {
            None
        } else {
            let wrapped = pattern_rules
                .iter()
                .filter_map(|i| match &rules[*i].target {
                    RuleTarget::Regex(r) => Some(wrap_pattern(r)),
                    _ => None,
                });
            let set = RegexSetBuilder::new(wrapped)
                .size_limit(PATTERN_SIZE_LIMIT.saturating_mul(pattern_rules.len()))
                .build()
                .map_err(|e| {
                    vec![RuleError {
                        path: "patterns".to_owned(),
                        line: None,
                        message: format!("the patterns cannot be compiled together: {e}"),
                    }]
                })?;
            Some(set)
        };

        let decisions = rules.iter().map(|_| OnceLock::new()).collect();
        Ok(PolicyIndex {
            decisions,
            rules,
            addresses,
            domains,
            patterns,
            pattern_rules,
            default,
        })
    }

    /// The decision for one address at `now_ms` (expired rules are ignored as if absent).
    pub fn decide(&self, address: &Address, now_ms: i64) -> Decision {
        let mut expired_allow = false;
        match self.winner(address, now_ms, &mut expired_allow) {
            // `decisions` has one cell per rule, as `rules` has.
            Some(i) => Decision::clone(
                self.decisions[i].get_or_init(|| Box::new(self.decision_by(&self.rules[i]))),
            ),
            None => self.default_decision(address, expired_allow),
        }
    }

    /// The decision plus every rule that matched the address and why it won or lost.
    pub fn explain(&self, address: &Address, now_ms: i64) -> Explanation {
        let candidates = self.candidates(address);
        let winner = candidates
            .iter()
            .find(|(i, level)| self.applies(&self.rules[*i], *level, now_ms))
            .copied();
        let decision = match winner {
            Some((i, _)) => self.decision_by(&self.rules[i]),
            None => {
                let expired_allow = candidates.iter().any(|&(i, level)| {
                    let rule = &self.rules[i];
                    rule.kind.is_allow()
                        && rule.is_expired(now_ms)
                        && domain_level_matches(rule, level)
                });
                self.default_decision(address, expired_allow)
            }
        };
        let considered = candidates
            .iter()
            .map(|&(i, level)| {
                let rule = &self.rules[i];
                let (matched, why) = if rule.is_expired(now_ms) {
                    let at = rule.expires_at.map(format_rfc3339).unwrap_or_default();
                    (false, format!("expired at {at}: ignored"))
                } else if !domain_level_matches(rule, level) {
                    (
                        false,
                        format!(
                            "matches only {} itself (subdomains = false)",
                            rule.target.value()
                        ),
                    )
                } else {
                    match winner {
                        Some((w, _)) if w == i => (true, format!("applies: {}", decision.reason)),
                        Some((w, w_level)) => (true, beaten_why(&self.rules[w], w_level, level)),
                        // Unreachable: an applicable candidate would have won.
                        None => (true, "matched".to_owned()),
                    }
                };
                Considered {
                    rule: rule.clone(),
                    matched,
                    why,
                }
            })
            .collect();
        Explanation {
            decision,
            considered,
        }
    }

    /// Every rule, in the order given to `build`.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The configured default for addresses no rule matches.
    pub fn default_policy(&self) -> &DefaultPolicy {
        &self.default
    }

    /// Every homeserver or shadow homeserver a rule names, plus the externals' homeserver.
    pub fn homeservers(&self) -> BTreeSet<String> {
        let mut set: BTreeSet<String> = self
            .rules
            .iter()
            .flat_map(|r| r.homeserver.iter().chain(r.shadow_homeserver.iter()))
            .cloned()
            .collect();
        if let DefaultPolicy::InviteOnly {
            external_homeserver,
        } = &self.default
        {
            set.insert(external_homeserver.clone());
        }
        set
    }

    /// The index of the deciding rule: the hot path, no allocation before the pattern level.
    /// `expired_allow` is set when an allow rule would have matched but has expired.
    fn winner(&self, address: &Address, now_ms: i64, expired_allow: &mut bool) -> Option<usize> {
        let mut usable = |i: usize, level: Level| {
            let rule = &self.rules[i];
            if !domain_level_matches(rule, level) {
                return false;
            }
            if rule.is_expired(now_ms) {
                *expired_allow |= rule.kind.is_allow();
                return false;
            }
            true
        };
        if let Some(slot) = self.addresses.get(address.matching_str())
            && let Some(i) = slot.in_order().find(|i| usable(*i, Level::Address))
        {
            return Some(i);
        }
        let mut suffix = address.ascii_domain();
        let mut depth = 0;
        loop {
            if let Some(slot) = self.domains.get(suffix) {
                let level = Level::Domain(depth);
                if let Some(i) = slot.in_order().find(|i| usable(*i, level)) {
                    return Some(i);
                }
            }
            match suffix.split_once('.') {
                Some((_, parent)) => {
                    suffix = parent;
                    depth += 1;
                }
                None => break,
            }
        }
        let set = self.patterns.as_ref()?;
        set.matches(address.matching_str())
            .iter()
            .map(|k| self.pattern_rules[k])
            .find(|i| usable(*i, Level::Pattern))
    }

    /// Every rule that names the address, its domain or a parent, or whose pattern matches, in
    /// decision order.
    fn candidates(&self, address: &Address) -> Vec<(usize, Level)> {
        let mut out = Vec::new();
        if let Some(slot) = self.addresses.get(address.matching_str()) {
            out.extend(slot.in_order().map(|i| (i, Level::Address)));
        }
        let mut suffix = address.ascii_domain();
        let mut depth = 0;
        loop {
            if let Some(slot) = self.domains.get(suffix) {
                out.extend(slot.in_order().map(|i| (i, Level::Domain(depth))));
            }
            match suffix.split_once('.') {
                Some((_, parent)) => {
                    suffix = parent;
                    depth += 1;
                }
                None => break,
            }
        }
        if let Some(set) = &self.patterns {
            out.extend(
                set.matches(address.matching_str())
                    .iter()
                    .map(|k| (self.pattern_rules[k], Level::Pattern)),
            );
        }
        out
    }

    fn applies(&self, rule: &Rule, level: Level, now_ms: i64) -> bool {
        !rule.is_expired(now_ms) && domain_level_matches(rule, level)
    }

    fn decision_by(&self, rule: &Rule) -> Decision {
        let reference = rule.reference();
        let (outcome, reason_code, reason) = match (&rule.kind, &rule.target) {
            (RuleKind::Deny, RuleTarget::Domain { name, subdomains }) => {
                let what = if *subdomains {
                    format!("domain {name} and its subdomains are blocked")
                } else {
                    format!("domain {name} is blocked")
                };
                (
                    Outcome::Denied,
                    ReasonCode::DeniedDomain,
                    format!("denied: {what} ({reference})"),
                )
            }
            (RuleKind::Deny, _) => (
                Outcome::Denied,
                ReasonCode::DeniedAddress,
                format!("denied: this address is blocked ({reference})"),
            ),
            _ if rule.requires_invite => (
                Outcome::InviteRequired,
                ReasonCode::InviteRequired,
                format!(
                    "invite required: the {} admits this address by invitation only ({reference})",
                    rule.describe()
                ),
            ),
            _ => (
                Outcome::Allowed,
                ReasonCode::Allowed,
                format!("allowed by {} ({reference})", rule.describe()),
            ),
        };
        Decision {
            outcome,
            homeserver: rule.homeserver.clone(),
            shadow_homeserver: rule.shadow_homeserver.clone(),
            organisation: rule.label.clone(),
            rule: Some(reference),
            rule_id: Some(rule.id.clone()),
            reason,
            reason_code,
        }
    }

    /// The configured default's decision; `expired_allow` when an allow rule for the address
    /// would have applied but has expired.
    fn default_decision(&self, address: &Address, expired_allow: bool) -> Decision {
        let public = public_provider(address.ascii_domain());
        let reason_code = if expired_allow {
            ReasonCode::RuleExpired
        } else if public.is_some() {
            ReasonCode::PublicMailProvider
        } else {
            ReasonCode::UnknownDomain
        };
        let domain = address.domain();
        let why = match (expired_allow, &public) {
            (true, _) => format!(
                "the rule that allowed this address has expired; no other rule allows addresses at {domain}"
            ),
            (false, Some(provider)) => format!(
                "not an agency domain: {provider} is a public mail provider; no rule allows addresses at {domain}"
            ),
            (false, None) => format!("not an agency domain: no rule allows addresses at {domain}"),
        };
        match &self.default {
            DefaultPolicy::Deny => Decision {
                outcome: Outcome::Denied,
                homeserver: None,
                shadow_homeserver: None,
                organisation: None,
                rule: None,
                rule_id: None,
                reason: why,
                reason_code,
            },
            DefaultPolicy::InviteOnly {
                external_homeserver,
            } => Decision {
                outcome: Outcome::InviteRequired,
                homeserver: Some(external_homeserver.clone()),
                shadow_homeserver: None,
                organisation: None,
                rule: None,
                rule_id: None,
                // The wording of the plain case is older than the codes: kept as it was.
                reason: match reason_code {
                    ReasonCode::UnknownDomain => format!(
                        "not an agency domain: addresses at {domain} may join the external homeserver by invitation only"
                    ),
                    _ => format!(
                        "{why}; such addresses may join the external homeserver by invitation only"
                    ),
                },
                reason_code,
            },
        }
    }
}

/// Whether a rule found at `level` matches: below the address's own domain, only rules with
/// `subdomains = true` do.
fn domain_level_matches(rule: &Rule, level: Level) -> bool {
    match (level, &rule.target) {
        (Level::Domain(depth), RuleTarget::Domain { subdomains, .. }) => depth == 0 || *subdomains,
        _ => true,
    }
}

/// Sort key of patterns: files by path then line, admin rules after every file.
fn pattern_order(rule: &Rule) -> (u8, &str, u32) {
    match &rule.source {
        RuleSource::File { path, line } => (0, path.as_str(), *line),
        RuleSource::Admin => (1, "", 0),
    }
}

/// Why a matching rule lost to the winner.
fn beaten_why(winner: &Rule, winner_level: Level, level: Level) -> String {
    let reference = winner.reference();
    match (winner_level, level) {
        (Level::Address, Level::Address) | (Level::Domain(_), Level::Domain(_))
            if winner_level == level =>
        {
            format!("beaten by the deny rule at the same level, deny wins a tie ({reference})")
        }
        (Level::Address, _) => {
            format!("beaten by an exact address rule, which comes first ({reference})")
        }
        (Level::Domain(_), Level::Domain(_)) => {
            format!("beaten by a more specific domain rule ({reference})")
        }
        (Level::Domain(_), _) => {
            format!("beaten by a domain rule, which comes before patterns ({reference})")
        }
        _ => format!("beaten by an earlier pattern ({reference})"),
    }
}
