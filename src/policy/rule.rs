//! One allowlist rule, with its effective values (after `[organisation]` defaults) and its source.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::address::normalize_email;

/// What a rule is: an allow by exact address, by domain, by pattern, or a deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// `[[address]]`: one exact address allowed.
    Address,
    /// `[[domain]]`: a domain (optionally with its subdomains) allowed.
    Domain,
    /// `[[deny]]`: a domain or one address refused.
    Deny,
    /// `[[pattern]]`: a regular expression over `local@ascii_domain` allowed.
    Pattern,
}

impl RuleKind {
    /// The name used in files, JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Address => "address",
            RuleKind::Domain => "domain",
            RuleKind::Deny => "deny",
            RuleKind::Pattern => "pattern",
        }
    }

    /// Whether matching this rule lets the address in (everything but deny).
    pub fn is_allow(self) -> bool {
        self != RuleKind::Deny
    }
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleTarget {
    /// One normalised address (`normalize_email(..).as_str()`).
    Email(String),
    /// An IDNA ASCII domain; with `subdomains`, the domain itself and every subdomain.
    Domain {
        /// ASCII (punycode) domain name.
        name: String,
        /// Whether subdomains match too (label boundaries only).
        subdomains: bool,
    },
    /// A regular expression as written (wrapped as `^(?:…)$` when compiled).
    Regex(String),
}

impl RuleTarget {
    /// The value that identifies the target, for duplicates and ids: an address in matching form
    /// (so that Unicode and punycode spellings of one address collide), a domain, a regex.
    pub(crate) fn identity(&self) -> String {
        match self {
            RuleTarget::Email(email) => match normalize_email(email) {
                Ok(a) => format!("email:{}", a.matching_str()),
                Err(_) => format!("email:{email}"),
            },
            RuleTarget::Domain { name, .. } => format!("domain:{name}"),
            RuleTarget::Regex(regex) => format!("regex:{regex}"),
        }
    }

    /// The value for people: the address, domain or regex.
    pub fn value(&self) -> &str {
        match self {
            RuleTarget::Email(v) | RuleTarget::Regex(v) => v,
            RuleTarget::Domain { name, .. } => name,
        }
    }
}

/// Where a rule comes from: a line of a file under the allowlists folder, or the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleSource {
    /// A file, by path relative to the allowlists folder, and the line of the rule's header.
    File {
        /// Path relative to the allowlists folder ("finances.toml").
        path: String,
        /// 1-based line of the `[[domain]]`-style header.
        line: u32,
    },
    /// Created through the administration API.
    Admin,
}

impl RuleSource {
    /// How people refer to a rule: "finances.toml:12" or "admin:<id>".
    pub fn reference(&self, rule_id: &str) -> String {
        match self {
            RuleSource::File { path, line } => format!("{path}:{line}"),
            RuleSource::Admin => format!("admin:{rule_id}"),
        }
    }

    /// Whether the rule came from a file (imports only touch those).
    pub fn is_file(&self) -> bool {
        matches!(self, RuleSource::File { .. })
    }
}

/// One rule with its effective values; what the index compiles and the storage layer keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Stable id derived from (kind, target): the same across re-imports and line moves.
    pub id: String,
    /// Allow by address, domain, pattern, or deny.
    pub kind: RuleKind,
    /// What it matches.
    pub target: RuleTarget,
    /// Effective organisation label (after `[organisation]` defaults).
    pub label: Option<String>,
    /// Effective homeserver (always `None` for a deny).
    pub homeserver: Option<String>,
    /// Effective shadow homeserver (not inherited when the rule sets its own homeserver).
    pub shadow_homeserver: Option<String>,
    /// Whether an allowed address still needs an invitation.
    pub requires_invite: bool,
    /// Instant (ms since the epoch) from which the rule no longer applies.
    pub expires_at: Option<i64>,
    /// Accept a public mail provider as an agency domain anyway.
    pub force: bool,
    /// Where the rule was defined.
    pub source: RuleSource,
}

impl Rule {
    /// A rule with no label, homeserver, expiry or flags; the id derived from kind and target.
    pub fn new(kind: RuleKind, target: RuleTarget, source: RuleSource) -> Rule {
        Rule {
            id: Rule::compute_id(kind, &target),
            kind,
            target,
            label: None,
            homeserver: None,
            shadow_homeserver: None,
            requires_invite: false,
            expires_at: None,
            force: false,
            source,
        }
    }

    /// The stable id of (kind, target): "r" + 16 hex digits of a SHA-256, never from file or line.
    pub fn compute_id(kind: RuleKind, target: &RuleTarget) -> String {
        let mut hasher = Sha256::new();
        hasher.update(kind.as_str().as_bytes());
        hasher.update([0u8]);
        hasher.update(target.identity().as_bytes());
        let digest = hasher.finalize();
        let mut id = String::with_capacity(17);
        id.push('r');
        for byte in &digest[..8] {
            id.push_str(&format!("{byte:02x}"));
        }
        id
    }

    /// "finances.toml:12" or "admin:<id>".
    pub fn reference(&self) -> String {
        self.source.reference(&self.id)
    }

    /// Whether the rule no longer applies at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at.is_some_and(|at| now_ms >= at)
    }

    /// A short description for people: "domain rule finances.gouv.fr and its subdomains".
    pub fn describe(&self) -> String {
        match (&self.kind, &self.target) {
            (RuleKind::Deny, RuleTarget::Email(_)) => "address deny rule".to_owned(),
            (_, RuleTarget::Email(_)) => "address rule".to_owned(),
            (kind, RuleTarget::Domain { name, subdomains }) => {
                let kind = if *kind == RuleKind::Deny {
                    "domain deny"
                } else {
                    "domain"
                };
                if *subdomains {
                    format!("{kind} rule {name} and its subdomains")
                } else {
                    format!("{kind} rule {name}")
                }
            }
            (_, RuleTarget::Regex(regex)) => format!("pattern rule {regex}"),
        }
    }
}
