//! Rules as JSON (storage layer and admin API), with the TOML field names plus `id`, `kind`,
//! `source` and `line`. Serde's `Serialize`/`Deserialize` for `Rule` use this same shape.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value, json};

use super::address::{normalize_domain, normalize_email};
use super::file::RuleError;
use super::instant::{format_rfc3339, parse_rfc3339};
use super::rule::{Rule, RuleKind, RuleSource, RuleTarget};
use super::validate::{validate_rule, validate_structure};

/// The JSON shape; `id`, `source` and `line` are read back by the storage layer but never
/// trusted for identity (the id is recomputed from kind and target).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleJson {
    #[serde(default)]
    #[allow(dead_code)] // Accepted so that a listed rule can be sent back; recomputed.
    id: Option<String>,
    kind: RuleKind,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    subdomains: Option<bool>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    homeserver: Option<String>,
    #[serde(default)]
    shadow_homeserver: Option<String>,
    #[serde(default)]
    requires_invite: Option<bool>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    force: Option<bool>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    line: Option<u32>,
}

impl RuleJson {
    /// Builds the rule (values normalised) without policy validation.
    fn into_rule(self, source: RuleSource) -> Result<Rule, String> {
        let not_for = |field: &str, present: bool| -> Result<(), String> {
            if present {
                Err(format!("`{field}` does not apply to a {} rule", self.kind))
            } else {
                Ok(())
            }
        };
        let domain = |name: &str, subdomains: Option<bool>| -> Result<RuleTarget, String> {
            normalize_domain(name)
                .map(|name| RuleTarget::Domain {
                    name,
                    subdomains: subdomains.unwrap_or(false),
                })
                .map_err(|e| format!("invalid domain in `name`: {e}"))
        };
        let email = |email: &str| -> Result<RuleTarget, String> {
            normalize_email(email)
                .map(|a| RuleTarget::Email(a.as_str().to_owned()))
                .map_err(|e| format!("invalid address in `email`: {e}"))
        };
        let target = match self.kind {
            RuleKind::Domain => {
                not_for("email", self.email.is_some())?;
                not_for("regex", self.regex.is_some())?;
                let name = self.name.as_deref().ok_or("a domain rule needs `name`")?;
                domain(name, self.subdomains)?
            }
            RuleKind::Address => {
                not_for("name", self.name.is_some())?;
                not_for("subdomains", self.subdomains.is_some())?;
                not_for("regex", self.regex.is_some())?;
                email(
                    self.email
                        .as_deref()
                        .ok_or("an address rule needs `email`")?,
                )?
            }
            RuleKind::Pattern => {
                not_for("name", self.name.is_some())?;
                not_for("subdomains", self.subdomains.is_some())?;
                not_for("email", self.email.is_some())?;
                RuleTarget::Regex(self.regex.clone().ok_or("a pattern rule needs `regex`")?)
            }
            RuleKind::Deny => {
                not_for("regex", self.regex.is_some())?;
                match (&self.name, &self.email) {
                    (Some(name), None) => domain(name, self.subdomains)?,
                    (None, Some(_)) if self.subdomains.is_some() => {
                        return Err(
                            "`subdomains` applies to a denied domain (`name`), not to `email`"
                                .to_owned(),
                        );
                    }
                    (None, Some(address)) => email(address)?,
                    _ => {
                        return Err("a deny rule takes exactly one of `name` (a domain) or `email` (one address)"
                            .to_owned());
                    }
                }
            }
        };
        let mut rule = Rule::new(self.kind, target, source);
        rule.label = self.label.filter(|l| !l.is_empty());
        if self.kind.is_allow() {
            rule.homeserver = self.homeserver;
            rule.shadow_homeserver = self.shadow_homeserver.filter(|s| !s.is_empty());
            rule.requires_invite = self.requires_invite.unwrap_or(false);
        }
        rule.expires_at = match self.expires_at.as_deref() {
            None | Some("") => None,
            Some(s) => Some(parse_rfc3339(s).map_err(|e| format!("invalid `expires_at`: {e}"))?),
        };
        rule.force = self.force.unwrap_or(false);
        Ok(rule)
    }
}

impl Rule {
    /// The rule as a flat JSON object with the TOML field names plus `id`, `kind`, `source`, `line`.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("id".into(), json!(self.id));
        map.insert("kind".into(), json!(self.kind.as_str()));
        match &self.target {
            RuleTarget::Email(email) => {
                map.insert("email".into(), json!(email));
            }
            RuleTarget::Domain { name, subdomains } => {
                map.insert("name".into(), json!(name));
                map.insert("subdomains".into(), json!(subdomains));
            }
            RuleTarget::Regex(regex) => {
                map.insert("regex".into(), json!(regex));
            }
        }
        map.insert("label".into(), json!(self.label));
        map.insert("homeserver".into(), json!(self.homeserver));
        map.insert("shadow_homeserver".into(), json!(self.shadow_homeserver));
        map.insert("requires_invite".into(), json!(self.requires_invite));
        map.insert(
            "expires_at".into(),
            json!(self.expires_at.map(format_rfc3339)),
        );
        map.insert("force".into(), json!(self.force));
        let (source, line) = match &self.source {
            RuleSource::File { path, line } => (path.as_str(), Some(*line)),
            RuleSource::Admin => ("admin", None),
        };
        map.insert("source".into(), json!(source));
        map.insert("line".into(), json!(line));
        Value::Object(map)
    }

    /// A rule from admin API JSON, placed at `source`; validated exactly as file rules are
    /// (`id`, `source` and `line` in the JSON are ignored).
    pub fn from_json(value: Value, source: RuleSource) -> Result<Rule, RuleError> {
        let located = |message: String| RuleError::at(&source, "", message);
        let parsed: RuleJson = serde_json::from_value(value).map_err(|e| located(e.to_string()))?;
        let rule = parsed.into_rule(source.clone()).map_err(located)?;
        validate_rule(&rule)?;
        Ok(rule)
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Rule {
    /// Reads a stored rule back, its source from `source` and `line`. Structural validation
    /// only: the public-provider list is an import-time check (see `validate_structure`).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let parsed = RuleJson::deserialize(deserializer)?;
        let source = match (parsed.source.as_deref(), parsed.line) {
            (None | Some("admin"), None) => RuleSource::Admin,
            (Some(path), Some(line)) if path != "admin" => RuleSource::File {
                path: path.to_owned(),
                line,
            },
            _ => {
                return Err(D::Error::custom(
                    "`source` is \"admin\" (without `line`) or a file path with its `line`",
                ));
            }
        };
        let rule = parsed.into_rule(source).map_err(D::Error::custom)?;
        validate_structure(&rule).map_err(D::Error::custom)?;
        Ok(rule)
    }
}
