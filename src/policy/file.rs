//! The allowlist file format (`allowlists/*.toml`): parsing with file-and-line errors, validation
//! shared with the admin API, duplicate detection, and export back to TOML.

use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::address::{normalize_domain, normalize_email};
use super::instant::{parse_rfc3339, toml_datetime_to_ms};
use super::rule::{Rule, RuleKind, RuleSource, RuleTarget};
use super::validate::{check_duplicates, validate_rule};

/// Largest compiled size of one pattern: enough for any sensible address pattern, small enough
/// that a hostile or careless one cannot eat memory.
pub(crate) const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Longest organisation label accepted (it is shown in every display name).
pub(crate) const MAX_LABEL_CHARS: usize = 256;

/// What is wrong with a rule or file, and where: Display "finances.toml:12: message".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleError {
    /// File path relative to the allowlists folder, or "admin:<id>" for an admin rule.
    pub path: String,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// What is wrong, for people.
    pub message: String,
}

impl RuleError {
    /// An error located at a rule's source (`rule_id` empty while the rule has no id yet).
    pub fn at(source: &RuleSource, rule_id: &str, message: impl Into<String>) -> RuleError {
        let (path, line) = match source {
            RuleSource::File { path, line } => (path.clone(), Some(*line)),
            RuleSource::Admin if rule_id.is_empty() => ("admin".to_owned(), None),
            RuleSource::Admin => (format!("admin:{rule_id}"), None),
        };
        RuleError {
            path,
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path, line, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for RuleError {}

// --- The TOML shape. One struct per table kind so that serde names the keys each one accepts.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "allowlist file")]
struct FileDoc {
    organisation: Option<Spanned<OrganisationDoc>>,
    #[serde(default)]
    domain: Vec<Spanned<DomainDoc>>,
    #[serde(default)]
    deny: Vec<Spanned<DenyDoc>>,
    #[serde(default)]
    address: Vec<Spanned<AddressDoc>>,
    #[serde(default)]
    pattern: Vec<Spanned<PatternDoc>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "[organisation] table")]
struct OrganisationDoc {
    label: Option<String>,
    homeserver: Option<String>,
    shadow_homeserver: Option<String>,
    requires_invite: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "[[domain]] table")]
struct DomainDoc {
    name: String,
    subdomains: Option<bool>,
    label: Option<String>,
    homeserver: Option<String>,
    shadow_homeserver: Option<String>,
    requires_invite: Option<bool>,
    expires_at: Option<Spanned<toml::Value>>,
    force: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "[[deny]] table")]
struct DenyDoc {
    name: Option<String>,
    subdomains: Option<bool>,
    email: Option<String>,
    label: Option<String>,
    // Accepted because DESIGN lets these be set on any rule; a deny ignores them.
    homeserver: Option<String>,
    shadow_homeserver: Option<String>,
    requires_invite: Option<bool>,
    expires_at: Option<Spanned<toml::Value>>,
    force: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "[[address]] table")]
struct AddressDoc {
    email: String,
    label: Option<String>,
    homeserver: Option<String>,
    shadow_homeserver: Option<String>,
    requires_invite: Option<bool>,
    expires_at: Option<Spanned<toml::Value>>,
    force: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "[[pattern]] table")]
struct PatternDoc {
    regex: String,
    label: Option<String>,
    homeserver: Option<String>,
    shadow_homeserver: Option<String>,
    requires_invite: Option<bool>,
    expires_at: Option<Spanned<toml::Value>>,
    force: Option<bool>,
}

/// The per-rule settings every table kind shares.
struct Settings {
    label: Option<String>,
    homeserver: Option<String>,
    shadow_homeserver: Option<String>,
    requires_invite: Option<bool>,
    expires_at: Option<Spanned<toml::Value>>,
    force: Option<bool>,
}

/// The per-rule settings of any table kind (they all have the same fields).
macro_rules! settings_of {
    ($doc:expr) => {
        Settings {
            label: $doc.label,
            homeserver: $doc.homeserver,
            shadow_homeserver: $doc.shadow_homeserver,
            requires_invite: $doc.requires_invite,
            expires_at: $doc.expires_at,
            force: $doc.force,
        }
    };
}

/// Byte offset → 1-based line, by binary search over the newline offsets (files may hold
/// tens of thousands of rules, so no rescan per rule).
struct Lines(Vec<usize>);

impl Lines {
    fn new(content: &str) -> Lines {
        Lines(
            content
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }

    fn line_of(&self, offset: usize) -> u32 {
        let newlines_before = self.0.partition_point(|nl| *nl < offset);
        u32::try_from(newlines_before + 1).unwrap_or(u32::MAX)
    }
}

/// An empty string clears an inherited value (`label = ""` means "no label").
fn non_empty(value: Option<String>) -> Option<Option<String>> {
    value.map(|v| if v.is_empty() { None } else { Some(v) })
}

/// Parses one allowlist file (rules in file order); errors carry the file and line.
pub fn parse_allowlist_file(path: &str, content: &str) -> Result<Vec<Rule>, Vec<RuleError>> {
    let (rules, mut errors) = parse_file_rules(path, content);
    if let Err(mut dups) = check_duplicates(&rules) {
        errors.append(&mut dups);
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

/// Parses several files (path relative to the allowlists folder, content), in file-name order,
/// and detects duplicates across all of them.
pub fn parse_allowlists(files: &[(String, String)]) -> Result<Vec<Rule>, Vec<RuleError>> {
    let mut sorted: Vec<&(String, String)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (path, content) in sorted {
        let (mut file_rules, mut file_errors) = parse_file_rules(path, content);
        rules.append(&mut file_rules);
        errors.append(&mut file_errors);
    }
    if let Err(mut dups) = check_duplicates(&rules) {
        errors.append(&mut dups);
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

/// Parses and validates one file, without the duplicate check (done over all files at once).
fn parse_file_rules(path: &str, content: &str) -> (Vec<Rule>, Vec<RuleError>) {
    let lines = Lines::new(content);
    let doc: FileDoc = match toml::from_str(content) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map(|s| lines.line_of(s.start));
            return (
                Vec::new(),
                vec![RuleError {
                    path: path.to_owned(),
                    line,
                    message: e.message().trim_end().to_owned(),
                }],
            );
        }
    };
    let mut errors = Vec::new();
    let org = doc
        .organisation
        .map(Spanned::into_inner)
        .unwrap_or_default();
    let org = Organisation {
        label: non_empty(org.label).flatten(),
        homeserver: non_empty(org.homeserver).flatten(),
        shadow_homeserver: non_empty(org.shadow_homeserver).flatten(),
        requires_invite: org.requires_invite.unwrap_or(false),
    };

    let mut drafts: Vec<(usize, RuleKind, Result<RuleTarget, String>, Settings)> = Vec::new();
    for d in doc.domain {
        let start = d.span().start;
        let d = d.into_inner();
        let target = normalize_domain(&d.name)
            .map(|name| RuleTarget::Domain {
                name,
                subdomains: d.subdomains.unwrap_or(false),
            })
            .map_err(|e| format!("invalid domain in `name`: {e}"));
        let settings = settings_of!(d);
        drafts.push((start, RuleKind::Domain, target, settings));
    }
    for d in doc.deny {
        let start = d.span().start;
        let d = d.into_inner();
        let target = match (d.name, d.email, d.subdomains) {
            (Some(name), None, subdomains) => normalize_domain(&name)
                .map(|name| RuleTarget::Domain {
                    name,
                    subdomains: subdomains.unwrap_or(false),
                })
                .map_err(|e| format!("invalid domain in `name`: {e}")),
            (None, Some(_), Some(_)) => {
                Err("`subdomains` applies to a denied domain (`name`), not to `email`".to_owned())
            }
            (None, Some(email), None) => normalize_email(&email)
                .map(|a| RuleTarget::Email(a.as_str().to_owned()))
                .map_err(|e| format!("invalid address in `email`: {e}")),
            _ => Err(
                "a [[deny]] takes exactly one of `name` (a domain) or `email` (one address)"
                    .to_owned(),
            ),
        };
        let settings = settings_of!(d);
        drafts.push((start, RuleKind::Deny, target, settings));
    }
    for d in doc.address {
        let start = d.span().start;
        let d = d.into_inner();
        let target = normalize_email(&d.email)
            .map(|a| RuleTarget::Email(a.as_str().to_owned()))
            .map_err(|e| format!("invalid address in `email`: {e}"));
        let settings = settings_of!(d);
        drafts.push((start, RuleKind::Address, target, settings));
    }
    for d in doc.pattern {
        let start = d.span().start;
        let d = d.into_inner();
        let settings = settings_of!(d);
        drafts.push((
            start,
            RuleKind::Pattern,
            Ok(RuleTarget::Regex(d.regex)),
            settings,
        ));
    }
    // File order; a stable sort keeps inline-array elements that share an offset in order.
    drafts.sort_by_key(|d| d.0);

    let mut rules = Vec::with_capacity(drafts.len());
    for (start, kind, target, settings) in drafts {
        let line = lines.line_of(start);
        let fail = |message: String| RuleError {
            path: path.to_owned(),
            line: Some(line),
            message,
        };
        let target = match target {
            Ok(t) => t,
            Err(message) => {
                errors.push(fail(message));
                continue;
            }
        };
        let expires_at = match settings.expires_at {
            None => None,
            Some(spanned) => {
                let at_line = lines.line_of(spanned.span().start);
                match expiry_ms(spanned.get_ref()) {
                    Ok(ms) => Some(ms),
                    Err(message) => {
                        errors.push(RuleError {
                            path: path.to_owned(),
                            line: Some(at_line),
                            message: format!("invalid `expires_at`: {message}"),
                        });
                        continue;
                    }
                }
            }
        };
        if kind.is_allow() && settings.homeserver.as_deref() == Some("") {
            errors.push(fail("`homeserver` is empty".to_owned()));
            continue;
        }
        let source = RuleSource::File {
            path: path.to_owned(),
            line,
        };
        let mut rule = Rule::new(kind, target, source);
        rule.label = match non_empty(settings.label) {
            Some(explicit) => explicit,
            None => org.label.clone(),
        };
        if kind.is_allow() {
            if settings.homeserver.is_some() {
                // A rule naming its own homeserver does not inherit the organisation's shadow.
                rule.homeserver = settings.homeserver;
                rule.shadow_homeserver = non_empty(settings.shadow_homeserver).flatten();
            } else {
                rule.homeserver = org.homeserver.clone();
                rule.shadow_homeserver = match non_empty(settings.shadow_homeserver) {
                    Some(explicit) => explicit,
                    None => org.shadow_homeserver.clone(),
                };
            }
            rule.requires_invite = settings.requires_invite.unwrap_or(org.requires_invite);
        }
        rule.expires_at = expires_at;
        rule.force = settings.force.unwrap_or(false);
        if rule.kind.is_allow() && rule.homeserver.is_none() {
            errors.push(fail(format!(
                "the {} allows addresses but has no homeserver: set `homeserver` on the rule or in [organisation]",
                rule.describe()
            )));
            continue;
        }
        match validate_rule(&rule) {
            Ok(()) => rules.push(rule),
            Err(e) => errors.push(e),
        }
    }
    (rules, errors)
}

/// The organisation defaults of one file.
struct Organisation {
    label: Option<String>,
    homeserver: Option<String>,
    shadow_homeserver: Option<String>,
    requires_invite: bool,
}

/// `expires_at` as a TOML offset date-time, or (leniently) an RFC 3339 string.
fn expiry_ms(value: &toml::Value) -> Result<i64, String> {
    match value {
        toml::Value::Datetime(dt) => toml_datetime_to_ms(dt),
        toml::Value::String(s) => parse_rfc3339(s),
        other => Err(format!(
            "expected an offset date-time such as 2026-12-31T23:59:59Z, found a {}",
            other.type_str()
        )),
    }
}
