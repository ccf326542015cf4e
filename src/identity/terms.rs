//! Terms of service (`GET`/`POST /v2/terms`): policies read from `terms.file`, acceptances
//! that accumulate per account, and the fingerprint that says whether an account accepted the
//! current terms.
//!
//! The file (TOML) mirrors the spec's JSON:
//!
//! ```toml
//! version = "2026-01"            # master version
//! [policies.terms_of_service]
//! version = "2.0"
//! en = { name = "Terms of Service", url = "https://id.example/terms-2.0-en.html" }
//! fr = { name = "Conditions d'utilisation", url = "https://id.example/terms-2.0-fr.html" }
//! ```
//!
//! Changing the master version or any policy's version makes every account accept again (the
//! fingerprint covers them all). Accepting one language's URL counts for the whole policy.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use super::accounts::Account;
use super::{IdentityError, IdentityService};
use crate::store::identity as store;

/// Most URLs one `POST /v2/terms` may carry (more are ignored).
const MAX_ACCEPTED_PER_REQUEST: usize = 100;

/// Why a terms file is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TermsError(pub String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TermsFile {
    version: String,
    #[serde(default)]
    policies: BTreeMap<String, PolicyFile>,
}

#[derive(Debug, Deserialize)]
struct PolicyFile {
    version: String,
    #[serde(flatten)]
    languages: BTreeMap<String, Translation>,
}

/// One language's version of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Translation {
    /// The policy's name in that language.
    pub name: String,
    /// Where to read it (includes the policy id, version and language).
    pub url: String,
}

/// One policy: a version and its translations by language code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The policy's version.
    pub version: String,
    /// Translations by language code (`en`, `fr`).
    pub translations: BTreeMap<String, Translation>,
}

/// The policies users must accept (possibly none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    master_version: String,
    policies: BTreeMap<String, Policy>,
    fingerprint: String,
}

impl Terms {
    /// No terms: nothing to accept.
    pub fn none() -> Terms {
        Terms::build(String::new(), BTreeMap::new())
    }

    /// Reads a terms file.
    pub fn load(path: &Path) -> Result<Terms, TermsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TermsError(format!("cannot read {}: {e}", path.display())))?;
        Terms::parse(&text).map_err(|e| TermsError(format!("{}: {e}", path.display())))
    }

    /// Parses the TOML form.
    pub fn parse(text: &str) -> Result<Terms, TermsError> {
        let file: TermsFile = toml::from_str(text).map_err(|e| TermsError(e.to_string()))?;
        if file.version.trim().is_empty() {
            return Err(TermsError("version: must not be empty".into()));
        }
        let mut policies = BTreeMap::new();
        let mut urls = HashSet::new();
        for (id, policy) in file.policies {
            if id.trim().is_empty() {
                return Err(TermsError("policies: a policy id is empty".into()));
            }
            if policy.version.trim().is_empty() {
                return Err(TermsError(format!(
                    "policies.{id}.version: must not be empty"
                )));
            }
            if policy.languages.is_empty() {
                return Err(TermsError(format!(
                    "policies.{id}: give at least one language, e.g. en = {{ name = \"…\", url = \"https://…\" }}"
                )));
            }
            for (lang, t) in &policy.languages {
                if !is_language_code(lang) {
                    return Err(TermsError(format!(
                        "policies.{id}.{lang}: not a language code (en, fr, pt-BR…)"
                    )));
                }
                if !(t.url.starts_with("https://") || t.url.starts_with("http://")) {
                    return Err(TermsError(format!(
                        "policies.{id}.{lang}.url: expected an http(s) URL"
                    )));
                }
                if t.name.trim().is_empty() {
                    return Err(TermsError(format!(
                        "policies.{id}.{lang}.name: must not be empty"
                    )));
                }
                if !urls.insert(t.url.clone()) {
                    return Err(TermsError(format!(
                        "policies.{id}.{lang}.url: the same URL is used twice; each policy, \
                         version and language needs its own"
                    )));
                }
            }
            policies.insert(
                id,
                Policy {
                    version: policy.version,
                    translations: policy.languages,
                },
            );
        }
        Ok(Terms::build(file.version, policies))
    }

    fn build(master_version: String, policies: BTreeMap<String, Policy>) -> Terms {
        let mut text = format!("terms\n{master_version}\n");
        for (id, policy) in &policies {
            text.push_str(&format!("{id}\n{}\n", policy.version));
        }
        let fingerprint = URL_SAFE_NO_PAD.encode(Sha256::digest(text.as_bytes()));
        Terms {
            master_version,
            policies,
            fingerprint,
        }
    }

    /// Whether there is nothing to accept.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The master version from the file.
    pub fn master_version(&self) -> &str {
        &self.master_version
    }

    /// Identifies the current set of policy versions; stored on accounts that accepted them.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The policies by id.
    pub fn policies(&self) -> &BTreeMap<String, Policy> {
        &self.policies
    }

    /// `GET /v2/terms`'s body: `{"policies": {id: {"version", lang: {name, url}}}}`.
    pub fn to_json(&self) -> Value {
        let mut policies = Map::new();
        for (id, policy) in &self.policies {
            let mut p = Map::new();
            p.insert("version".into(), json!(policy.version));
            for (lang, t) in &policy.translations {
                p.insert(lang.clone(), json!({"name": t.name, "url": t.url}));
            }
            policies.insert(id.clone(), Value::Object(p));
        }
        json!({ "policies": policies })
    }

    /// The URLs among `urls` that belong to a current policy.
    pub fn known_urls<'a>(&self, urls: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let all: HashSet<&str> = self
            .policies
            .values()
            .flat_map(|p| p.translations.values().map(|t| t.url.as_str()))
            .collect();
        let mut known: Vec<String> = urls
            .into_iter()
            .filter(|u| all.contains(u.as_str()))
            .cloned()
            .collect();
        known.sort();
        known.dedup();
        known
    }

    /// Whether `accepted` holds, for every policy, the URL of at least one of its languages.
    pub fn satisfied_by(&self, accepted: &HashSet<String>) -> bool {
        self.policies
            .values()
            .all(|p| p.translations.values().any(|t| accepted.contains(&t.url)))
    }
}

fn is_language_code(code: &str) -> bool {
    let mut parts = code.split('-');
    let primary = parts.next().unwrap_or("");
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_lowercase())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

impl IdentityService {
    /// `POST /v2/terms`: adds the accepted URLs of current policies to what the account accepted
    /// (unknown URLs are ignored), then records full consent if every policy is now covered.
    pub async fn accept_terms(
        &self,
        account: &Account,
        user_accepts: &[String],
        now_ms: i64,
    ) -> Result<(), IdentityError> {
        let terms = self.terms();
        if terms.is_empty() {
            return Ok(());
        }
        let known = terms.known_urls(user_accepts.iter().take(MAX_ACCEPTED_PER_REQUEST));
        if !known.is_empty() {
            let user_id = account.user_id.clone();
            self.db
                .run(move |conn| store::add_accepted_terms(conn, &user_id, &known, now_ms))
                .await?;
        }
        // Records consent when complete; partial acceptance is not an error here (the spec asks
        // servers not to answer M_TERMS_NOT_SIGNED to this endpoint).
        match self.check_terms(account).await {
            Ok(()) | Err(IdentityError::TermsNotSigned) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
version = "2026-01"

[policies.terms_of_service]
version = "2.0"
en = { name = "Terms of Service", url = "https://id.example/tos-2.0-en.html" }
fr = { name = "Conditions d'utilisation", url = "https://id.example/tos-2.0-fr.html" }

[policies.privacy_policy]
version = "1.2"
en = { name = "Privacy Policy", url = "https://id.example/privacy-1.2-en.html" }
"#;

    #[test]
    fn parses_into_the_spec_shape() {
        let t = Terms::parse(EXAMPLE).unwrap();
        assert!(!t.is_empty());
        assert_eq!(t.master_version(), "2026-01");
        assert_eq!(
            t.to_json(),
            json!({"policies": {
                "terms_of_service": {
                    "version": "2.0",
                    "en": {"name": "Terms of Service", "url": "https://id.example/tos-2.0-en.html"},
                    "fr": {"name": "Conditions d'utilisation", "url": "https://id.example/tos-2.0-fr.html"}
                },
                "privacy_policy": {
                    "version": "1.2",
                    "en": {"name": "Privacy Policy", "url": "https://id.example/privacy-1.2-en.html"}
                }
            }})
        );
    }

    #[test]
    fn one_language_counts_for_the_policy_and_every_policy_is_needed() {
        let t = Terms::parse(EXAMPLE).unwrap();
        let mut accepted: HashSet<String> = ["https://id.example/tos-2.0-fr.html".to_string()]
            .into_iter()
            .collect();
        assert!(!t.satisfied_by(&accepted));
        accepted.insert("https://id.example/privacy-1.2-en.html".into());
        assert!(t.satisfied_by(&accepted));
        assert!(Terms::none().satisfied_by(&HashSet::new()));
    }

    #[test]
    fn only_known_urls_are_kept() {
        let t = Terms::parse(EXAMPLE).unwrap();
        let urls = vec![
            "https://id.example/tos-2.0-en.html".to_string(),
            "https://elsewhere.example/x".to_string(),
            "https://id.example/tos-2.0-en.html".to_string(),
        ];
        assert_eq!(
            t.known_urls(&urls),
            vec!["https://id.example/tos-2.0-en.html"]
        );
    }

    #[test]
    fn any_version_change_changes_the_fingerprint() {
        let base = Terms::parse(EXAMPLE).unwrap();
        let master = Terms::parse(&EXAMPLE.replace("2026-01", "2026-02")).unwrap();
        let policy = Terms::parse(&EXAMPLE.replace("\"1.2\"", "\"1.3\"")).unwrap();
        let renamed = Terms::parse(&EXAMPLE.replace("Privacy Policy", "Privacy")).unwrap();
        assert_ne!(base.fingerprint(), master.fingerprint());
        assert_ne!(base.fingerprint(), policy.fingerprint());
        assert_eq!(
            base.fingerprint(),
            renamed.fingerprint(),
            "names are not versions"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("version = \"\"\n", "version"),
            (
                "[policies.tos]\nversion = \"1\"\n",
                "missing field `version`",
            ),
            (
                "version = \"1\"\n[policies.tos]\nversion = \"1\"\n",
                "policies.tos",
            ),
            (
                "version = \"1\"\n[policies.tos]\nversion = \"1\"\nEnglish = { name = \"n\", url = \"https://x\" }\n",
                "policies.tos.English",
            ),
            (
                "version = \"1\"\n[policies.tos]\nversion = \"1\"\nen = { name = \"n\", url = \"ftp://x\" }\n",
                "policies.tos.en.url",
            ),
            (
                "version = \"1\"\n[policies.a]\nversion = \"1\"\nen = { name = \"n\", url = \"https://x\" }\n[policies.b]\nversion = \"1\"\nen = { name = \"n\", url = \"https://x\" }\n",
                "twice",
            ),
            ("version = \"1\"\nextra = 1\n", "extra"),
        ];
        for (text, needle) in cases {
            let e = Terms::parse(text).unwrap_err();
            assert!(e.0.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_example_file_parses() {
        let t = Terms::parse(include_str!("../../terms.example.toml")).unwrap();
        assert!(!t.is_empty());
        assert!(t.policies().values().all(|p| p.translations.len() == 2));
    }
}
