//! The allowlist file format (`allowlists/*.toml`): parsing with file-and-line errors, validation
//! shared with the admin API, duplicate detection, and export back to TOML.

use std::collections::HashMap;
use std::fmt;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::address::{normalize_domain, normalize_email};
use super::instant::{format_rfc3339, parse_rfc3339, toml_datetime_to_ms};
use super::public_mail::{PROBE_LOCALS, probe_domains, public_provider};
use super::rule::{Rule, RuleKind, RuleSource, RuleTarget};

/// Largest compiled size of one pattern: enough for any sensible address pattern, small enough
/// that a hostile or careless one cannot eat memory.
pub(crate) const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Longest organisation label accepted (it is shown in every display name).
const MAX_LABEL_CHARS: usize = 256;

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

/// Checks one rule as the admin API and files both need: values normalised, regex valid,
/// homeservers present and well-formed, and no public mail provider allowed without `force`.
pub fn validate_rule(rule: &Rule) -> Result<(), RuleError> {
    validate_structure(rule)?;
    check_public_provider(rule)
}

/// Everything `validate_rule` checks except the public provider list, which is an import-time
/// policy: a stored rule must keep loading even if a later release lists more providers.
pub(crate) fn validate_structure(rule: &Rule) -> Result<(), RuleError> {
    let fail = |message: String| Err(RuleError::at(&rule.source, &rule.id, message));
    match (rule.kind, &rule.target) {
        (RuleKind::Address | RuleKind::Deny, RuleTarget::Email(email)) => {
            match normalize_email(email) {
                Ok(a) if a.as_str() == email => {}
                Ok(_) => return fail("the address is not in normalised form".to_owned()),
                Err(e) => return fail(format!("invalid address in `email`: {e}")),
            }
        }
        (RuleKind::Domain | RuleKind::Deny, RuleTarget::Domain { name, .. }) => {
            match normalize_domain(name) {
                Ok(ascii) if &ascii == name => {}
                Ok(ascii) => {
                    return fail(format!(
                        "the domain {name:?} is not in normalised form ({ascii:?})"
                    ));
                }
                Err(e) => return fail(format!("invalid domain in `name`: {e}")),
            }
        }
        (RuleKind::Pattern, RuleTarget::Regex(regex)) => {
            compile_pattern(regex).map_err(|m| RuleError::at(&rule.source, &rule.id, m))?;
        }
        (kind, _) => {
            let expected = match kind {
                RuleKind::Address => "`email`",
                RuleKind::Domain => "`name`",
                RuleKind::Deny => "`name` or `email`",
                RuleKind::Pattern => "`regex`",
            };
            return fail(format!("a {kind} rule takes {expected}"));
        }
    }
    let expected_id = Rule::compute_id(rule.kind, &rule.target);
    if rule.id != expected_id {
        return fail(format!(
            "rule id {} does not match its kind and target (expected {expected_id})",
            rule.id
        ));
    }
    if let Some(label) = &rule.label {
        if label.trim().is_empty() {
            return fail("`label` is blank".to_owned());
        }
        if label.chars().any(char::is_control) {
            return fail("`label` contains control characters".to_owned());
        }
        if label.chars().count() > MAX_LABEL_CHARS {
            return fail(format!(
                "`label` is longer than {MAX_LABEL_CHARS} characters"
            ));
        }
    }
    if rule.kind.is_allow() {
        match &rule.homeserver {
            None => {
                return fail(format!(
                    "the {} allows addresses but has no homeserver",
                    rule.describe()
                ));
            }
            Some(hs) => check_server_name(hs)
                .map_err(|m| RuleError::at(&rule.source, &rule.id, format!("`homeserver`: {m}")))?,
        }
        if let Some(shadow) = &rule.shadow_homeserver {
            check_server_name(shadow).map_err(|m| {
                RuleError::at(&rule.source, &rule.id, format!("`shadow_homeserver`: {m}"))
            })?;
        }
    } else if rule.homeserver.is_some() || rule.shadow_homeserver.is_some() || rule.requires_invite
    {
        return fail("a deny rule has no homeserver, shadow homeserver or invitation".to_owned());
    }
    Ok(())
}

/// Refuses an allow-by-domain or pattern rule that admits a public mail provider, unless forced.
fn check_public_provider(rule: &Rule) -> Result<(), RuleError> {
    if rule.force {
        return Ok(());
    }
    let fail = |message: String| Err(RuleError::at(&rule.source, &rule.id, message));
    match (&rule.kind, &rule.target) {
        (RuleKind::Domain, RuleTarget::Domain { name, .. }) => {
            if let Some(provider) = public_provider(name) {
                let what = if &provider == name {
                    format!("{name} is a public mail provider")
                } else {
                    format!("{name} belongs to the public mail provider {provider}")
                };
                return fail(format!(
                    "{what}, not an agency domain: anyone can get an address there \
                     (set `force = true` on the rule if this is really intended)"
                ));
            }
        }
        (RuleKind::Pattern, RuleTarget::Regex(regex)) => {
            let compiled =
                compile_pattern(regex).map_err(|m| RuleError::at(&rule.source, &rule.id, m))?;
            for domain in probe_domains() {
                for local in PROBE_LOCALS {
                    let probe = format!("{local}@{domain}");
                    if compiled.is_match(&probe) {
                        return fail(format!(
                            "this pattern admits addresses at the public mail provider {domain} \
                             (it matches {probe}): anyone can get an address there \
                             (set `force = true` on the rule if this is really intended)"
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Wraps a pattern as `^(?:…)$` and compiles it within the size limit.
pub(crate) fn compile_pattern(regex: &str) -> Result<Regex, String> {
    if regex.trim().is_empty() {
        return Err("`regex` is empty".to_owned());
    }
    RegexBuilder::new(&wrap_pattern(regex))
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => {
                format!("the pattern is too complex (compiles to more than {limit} bytes)")
            }
            other => format!("invalid regex: {other}"),
        })
}

/// The anchored form every pattern is matched with.
pub(crate) fn wrap_pattern(regex: &str) -> String {
    format!("^(?:{regex})$")
}

/// A Matrix server name: a DNS name, IPv4 or `[IPv6]` literal, with an optional port.
fn check_server_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty server name".to_owned());
    }
    if name.len() > 255 {
        return Err("server name longer than 255 characters".to_owned());
    }
    let (host, port) = if let Some(rest) = name.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!(
                "{name:?} is not a valid server name (unclosed `[`)"
            ));
        };
        if inside.is_empty()
            || !inside
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("{name:?} is not a valid server name"));
        }
        match after {
            "" => (inside, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (inside, Some(port)),
                None => return Err(format!("{name:?} is not a valid server name")),
            },
        }
    } else {
        match name.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (name, None),
        }
    };
    if !name.starts_with('[')
        && (host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    {
        return Err(format!(
            "{name:?} is not a valid server name (a host name with an optional :port)"
        ));
    }
    if let Some(port) = port
        && (port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u32>().map_or(true, |p| p == 0 || p > 65_535))
    {
        return Err(format!("{name:?} has an invalid port"));
    }
    Ok(())
}

/// Refuses the same kind and value twice, naming both sources ("finances.toml:12 and justice.toml:3").
pub fn check_duplicates(rules: &[Rule]) -> Result<(), Vec<RuleError>> {
    let mut seen: HashMap<(RuleKind, String), &Rule> = HashMap::with_capacity(rules.len());
    let mut errors = Vec::new();
    for rule in rules {
        match seen.entry((rule.kind, rule.target.identity())) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(rule);
            }
            std::collections::hash_map::Entry::Occupied(first) => {
                let first = *first.get();
                errors.push(RuleError::at(
                    &rule.source,
                    &rule.id,
                    format!(
                        "the same {} is defined twice: {} and {}",
                        duplicate_subject(rule),
                        first.reference(),
                        rule.reference()
                    ),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// "domain rule finances.gouv.fr"; addresses are not spelled out (messages may reach logs).
fn duplicate_subject(rule: &Rule) -> String {
    match (&rule.kind, &rule.target) {
        (_, RuleTarget::Domain { name, .. }) if rule.kind == RuleKind::Deny => {
            format!("deny rule for domain {name}")
        }
        (_, RuleTarget::Domain { name, .. }) => format!("domain rule {name}"),
        (RuleKind::Deny, RuleTarget::Email(_)) => "deny rule for one address".to_owned(),
        (_, RuleTarget::Email(_)) => "address rule".to_owned(),
        (_, RuleTarget::Regex(regex)) => format!("pattern {regex}"),
    }
}

// --- Export

/// A rule's (homeserver, shadow homeserver).
type ServerPair = (Option<String>, Option<String>);

/// Renders rules as one allowlist file that parses back to the same rules (ids, targets and
/// effective values; only source lines change). Shared values go to `[organisation]`.
pub fn render_allowlist_file(rules: &[Rule]) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut out = String::from("# Exported by annuaire. Format: see allowlists/README.md.\n");

    // The organisation label is factored only when every rule shares it: a rule without a label
    // under an organisation label would otherwise need `label = ""`.
    let org_label = match rules.first() {
        Some(first) if first.label.is_some() && rules.iter().all(|r| r.label == first.label) => {
            first.label.clone()
        }
        _ => None,
    };
    // The most common (homeserver, shadow) pair among allow rules, first seen on ties.
    let mut counts: Vec<(ServerPair, usize)> = Vec::new();
    for r in rules.iter().filter(|r| r.kind.is_allow()) {
        let pair = (r.homeserver.clone(), r.shadow_homeserver.clone());
        match counts.iter_mut().find(|(p, _)| *p == pair) {
            Some((_, n)) => *n += 1,
            None => counts.push((pair, 1)),
        }
    }
    let mut org_pair: ServerPair = (None, None);
    let mut best = 0;
    for (pair, n) in counts {
        if n > best {
            best = n;
            org_pair = pair;
        }
    }

    if org_label.is_some() || org_pair.0.is_some() {
        out.push_str("\n[organisation]\n");
        if let Some(label) = &org_label {
            out.push_str(&format!("label = {}\n", q(label)));
        }
        if let Some(hs) = &org_pair.0 {
            out.push_str(&format!("homeserver = {}\n", q(hs)));
            if let Some(shadow) = &org_pair.1 {
                out.push_str(&format!("shadow_homeserver = {}\n", q(shadow)));
            }
        }
    }

    for rule in rules {
        out.push('\n');
        out.push_str(&format!("# {} ({})\n", rule.id, rule.reference()));
        let header = match rule.kind {
            RuleKind::Address => "[[address]]",
            RuleKind::Domain => "[[domain]]",
            RuleKind::Deny => "[[deny]]",
            RuleKind::Pattern => "[[pattern]]",
        };
        out.push_str(header);
        out.push('\n');
        match &rule.target {
            RuleTarget::Email(email) => out.push_str(&format!("email = {}\n", q(email))),
            RuleTarget::Domain { name, subdomains } => {
                out.push_str(&format!("name = {}\n", q(name)));
                if *subdomains {
                    out.push_str("subdomains = true\n");
                }
            }
            RuleTarget::Regex(regex) => out.push_str(&format!("regex = {}\n", q(regex))),
        }
        if rule.label != org_label {
            match &rule.label {
                Some(label) => out.push_str(&format!("label = {}\n", q(label))),
                None => out.push_str("label = \"\"\n"),
            }
        }
        if rule.kind.is_allow() {
            let pair = (rule.homeserver.clone(), rule.shadow_homeserver.clone());
            if pair != org_pair {
                if let Some(hs) = &rule.homeserver {
                    out.push_str(&format!("homeserver = {}\n", q(hs)));
                }
                if let Some(shadow) = &rule.shadow_homeserver {
                    out.push_str(&format!("shadow_homeserver = {}\n", q(shadow)));
                }
            }
            if rule.requires_invite {
                out.push_str("requires_invite = true\n");
            }
        }
        if let Some(at) = rule.expires_at {
            out.push_str(&format!("expires_at = {}\n", format_rfc3339(at)));
        }
        if rule.force {
            out.push_str("force = true\n");
        }
    }
    out
}
