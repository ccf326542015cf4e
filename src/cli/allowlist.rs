//! `annuaire allowlist check|import|export|list`.

use super::*;

/// `annuaire allowlist …`
#[derive(Debug, Subcommand)]
pub enum AllowlistCommand {
    /// Explain the decision for each address: outcome, homeserver, shadow homeserver,
    /// organisation, the rule that matched (file:line or admin:<id>) and why.
    Check {
        /// Read the rules from this folder of allowlist files only (no database needed);
        /// without it, the live rules in the database are used.
        #[arg(long, value_name = "DIR")]
        allowlists: Option<PathBuf>,
        /// One JSON object per line: {"address","outcome","homeserver","shadow_homeserver",
        /// "organisation","rule","reason"}.
        #[arg(long)]
        json: bool,
        /// Addresses to check. An invalid address gives outcome `invalid` (exit code 0).
        #[arg(required = true, value_name = "ADDRESS")]
        addresses: Vec<String>,
    },
    /// Make the database's file-sourced rules equal to the files in DIR (paths relative to DIR),
    /// printing what is added, changed and removed. Rules created through the admin API are left
    /// alone.
    Import {
        /// The allowlists folder.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Print the changes without applying them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write the live rules as allowlist files into DIR: one file per source file, and
    /// `admin.toml` for the rules created through the admin API.
    Export {
        /// The folder to write (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Overwrite files that already exist.
        #[arg(long)]
        force: bool,
    },
    /// List the live rules.
    List {
        /// Only rules that apply to this domain (the domain itself, its parents' subdomain
        /// rules, and addresses at it).
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
        /// One JSON rule per line (the admin API's format).
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn allowlist_command(config: &Config, cmd: AllowlistCommand) -> Result<(), CliError> {
    use crate::allowlist::{self, AllowlistError};
    use crate::policy::{PolicyIndex, normalize_email};
    match cmd {
        AllowlistCommand::Check {
            allowlists,
            json,
            addresses,
        } => {
            let rules = match &allowlists {
                Some(dir) => allowlist::parse_allowlist_dir(dir).map_err(CliError::config)?,
                None => live_rules(config)?,
            };
            let index = PolicyIndex::build(rules, config.policy.default_policy())
                .map_err(|e| CliError::config(AllowlistError::Rules(e)))?;
            let now = now_ms();
            for input in &addresses {
                let line = match normalize_email(input) {
                    Ok(address) => {
                        let d = index.decide(&address, now);
                        serde_json::json!({
                            "address": address.as_str(),
                            "outcome": d.outcome.as_str(),
                            "homeserver": d.homeserver,
                            "shadow_homeserver": d.shadow_homeserver,
                            "organisation": d.organisation,
                            "rule": d.rule,
                            "reason": d.reason,
                        })
                    }
                    Err(e) => serde_json::json!({
                        "address": input,
                        "outcome": "invalid",
                        "homeserver": null,
                        "shadow_homeserver": null,
                        "organisation": null,
                        "rule": null,
                        "reason": e.to_string(),
                    }),
                };
                if json {
                    println!("{line}");
                } else {
                    print_check(&line);
                }
            }
            Ok(())
        }
        AllowlistCommand::Import { dir, dry_run } => {
            if !dir.is_dir() {
                return Err(CliError::config(format!(
                    "{} is not a folder",
                    dir.display()
                )));
            }
            let db = open_db(config)?;
            let default = config.policy.default_policy();
            let now = now_ms();
            let diff = db
                .with_startup_lock(|conn| {
                    let actor = crate::admin::Actor::cli(&unix_user());
                    crate::admin::rules::import_dir_audited(
                        conn, &dir, &default, dry_run, &actor, now,
                    )
                })
                .map_err(|e| match e {
                    AllowlistError::Store(_) => CliError::runtime(e),
                    other => CliError::config(other),
                })?;
            for line in allowlist::describe_diff(&diff) {
                println!("{line}");
            }
            println!(
                "{} added, {} changed, {} removed{}",
                diff.added.len(),
                diff.changed.len(),
                diff.removed.len(),
                if dry_run {
                    " (dry run: nothing was changed)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        AllowlistCommand::Export { dir, force } => {
            let rules = live_rules(config)?;
            let mut files: std::collections::BTreeMap<String, Vec<crate::policy::Rule>> =
                std::collections::BTreeMap::new();
            for rule in rules {
                let path = match &rule.source {
                    crate::policy::RuleSource::File { path, .. } => path.clone(),
                    crate::policy::RuleSource::Admin => "admin.toml".to_string(),
                };
                files.entry(path).or_default().push(rule);
            }
            for (path, rules) in &files {
                let target = dir.join(path);
                if target.exists() && !force {
                    return Err(CliError::config(format!(
                        "{} exists; use --force to overwrite",
                        target.display()
                    )));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        CliError::runtime(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                std::fs::write(&target, crate::policy::render_allowlist_file(rules)).map_err(
                    |e| CliError::runtime(format!("cannot write {}: {e}", target.display())),
                )?;
                println!("wrote {} ({} rules)", target.display(), rules.len());
            }
            if files.is_empty() {
                println!("no rules to export");
            }
            Ok(())
        }
        AllowlistCommand::List { domain, json } => {
            let filter = match &domain {
                Some(d) => Some(
                    crate::policy::normalize_domain(d)
                        .map_err(|e| CliError::config(format!("--domain {d}: {e}")))?,
                ),
                None => None,
            };
            let rules = live_rules(config)?;
            let mut shown = 0;
            for rule in rules
                .iter()
                .filter(|r| filter.as_deref().is_none_or(|d| applies_to_domain(r, d)))
            {
                shown += 1;
                if json {
                    println!("{}", rule.to_json());
                } else {
                    println!(
                        "{:<18} {:<8} {:<40} {:<32} {:<16} {}",
                        rule.id,
                        rule.kind.as_str(),
                        rule.target.value(),
                        rule.homeserver.as_deref().unwrap_or("-"),
                        rule.label.as_deref().unwrap_or("-"),
                        rule.reference()
                    );
                }
            }
            if !json {
                println!("{shown} rules");
            }
            Ok(())
        }
    }
}

/// Whether a rule is relevant to `domain` (ASCII): a domain rule on it or on a parent with
/// subdomains, or an address rule at it.
fn applies_to_domain(rule: &crate::policy::Rule, domain: &str) -> bool {
    use crate::policy::RuleTarget;
    match &rule.target {
        RuleTarget::Domain { name, subdomains } => {
            name == domain || (*subdomains && domain.ends_with(&format!(".{name}")))
        }
        RuleTarget::Email(email) => email
            .rsplit_once('@')
            .and_then(|(_, d)| crate::policy::normalize_domain(d).ok())
            .is_some_and(|d| d == domain),
        RuleTarget::Regex(_) => false,
    }
}

fn print_check(line: &serde_json::Value) {
    let field = |k: &str| line[k].as_str().unwrap_or("-").to_string();
    println!("{}: {}", field("address"), field("outcome"));
    for (label, key) in [
        ("homeserver", "homeserver"),
        ("shadow", "shadow_homeserver"),
        ("organisation", "organisation"),
        ("rule", "rule"),
        ("reason", "reason"),
    ] {
        println!("  {label:<13} {}", field(key));
    }
}
