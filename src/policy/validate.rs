//! The checks every rule passes, from a file or the admin API: normalised values, valid
//! patterns, well-formed homeservers, no public mail provider allowed by accident, no duplicate.

use std::collections::HashMap;

use regex::{Regex, RegexBuilder};

use super::address::{normalize_domain, normalize_email};
use super::file::{MAX_LABEL_CHARS, PATTERN_SIZE_LIMIT, RuleError};
use super::public_mail::{PROBE_LOCALS, probe_domains, public_provider};
use super::rule::{Rule, RuleKind, RuleTarget};

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
