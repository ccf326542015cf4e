//! Rules back into an allowlist file (the admin API's and the CLI's export).

use super::instant::format_rfc3339;
use super::rule::{Rule, RuleKind, RuleTarget};

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
