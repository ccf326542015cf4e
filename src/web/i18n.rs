//! The pages' strings, one `strings.<lang>.toml` per language: the languages pages exist in,
//! and the choice of one for a request.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::Value;

use crate::config::Language;
use crate::mail::negotiate_language;

/// The language every other one is checked against (it has every key).
pub const REFERENCE: Language = Language::FR;

/// The strings of every available language.
#[derive(Debug, Default)]
pub struct Strings {
    languages: Vec<Language>,
    values: BTreeMap<Language, Value>,
    names: BTreeMap<Language, String>,
}

/// Every leaf key of a table, dotted (`console.rules.title`).
fn leaf_keys(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => leaf_keys(&path, inner, out),
            _ => {
                out.insert(path);
            }
        }
    }
}

impl Strings {
    /// Parses `strings.<lang>.toml` files (name, text). Every language must have every key of
    /// the French strings; the error names the file and what is wrong.
    pub fn load<'a>(
        files: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<Strings, (String, String)> {
        let mut tables: BTreeMap<Language, (String, toml::Table)> = BTreeMap::new();
        for (name, text) in files {
            let code = name
                .strip_prefix("strings.")
                .and_then(|rest| rest.strip_suffix(".toml"))
                .unwrap_or_default();
            let language = Language::new(code).map_err(|e| (name.to_owned(), e))?;
            let table: toml::Table =
                toml::from_str(text).map_err(|e| (name.to_owned(), e.to_string()))?;
            tables.insert(language, (name.to_owned(), table));
        }
        let Some((_, reference)) = tables.get(&REFERENCE) else {
            return Err((
                "strings.fr.toml".to_owned(),
                "the French strings are missing".to_owned(),
            ));
        };
        let mut wanted = BTreeSet::new();
        leaf_keys("", reference, &mut wanted);
        let mut strings = Strings::default();
        for (language, (file, table)) in &tables {
            let mut have = BTreeSet::new();
            leaf_keys("", table, &mut have);
            let missing: Vec<&String> = wanted.difference(&have).collect();
            if !missing.is_empty() {
                let shown: Vec<&str> = missing.iter().take(10).map(|s| s.as_str()).collect();
                return Err((
                    file.clone(),
                    format!(
                        "{} key(s) of strings.fr.toml missing: {}{}",
                        missing.len(),
                        shown.join(", "),
                        if missing.len() > 10 { ", …" } else { "" }
                    ),
                ));
            }
            let name = table
                .get("meta")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or(language.code())
                .to_owned();
            strings.languages.push(*language);
            strings
                .values
                .insert(*language, Value::from(minijinja::value::Serde(table)));
            strings.names.insert(*language, name);
        }
        Ok(strings)
    }

    /// The available languages, by code.
    pub fn languages(&self) -> &[Language] {
        &self.languages
    }

    /// The strings of `language`, if available.
    pub fn get(&self, language: Language) -> Option<Value> {
        self.values.get(&language).cloned()
    }

    /// The language's own name (`meta.name`: "Français", "Deutsch").
    pub fn name(&self, language: Language) -> String {
        self.names
            .get(&language)
            .cloned()
            .unwrap_or_else(|| language.to_string())
    }

    /// The page's language: `?lang=` when available, else the switch's cookie, else
    /// `Accept-Language` over the available languages, else `default` (or French when
    /// `default` has no strings).
    pub fn choose(
        &self,
        query: Option<&str>,
        cookie: Option<&str>,
        accept_language: Option<&str>,
        default: Language,
    ) -> Language {
        let available = |code: Option<&str>| {
            code.and_then(|c| Language::new(c).ok())
                .filter(|l| self.languages.contains(l))
        };
        if let Some(l) = available(query).or_else(|| available(cookie)) {
            return l;
        }
        let default = if self.languages.contains(&default) {
            default
        } else {
            REFERENCE
        };
        negotiate_language(accept_language, &self.languages, default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings() -> Strings {
        Strings::load(
            [
                (
                    "strings.fr.toml",
                    "[meta]\nname = \"Français\"\n[a]\nb = \"x\"\nc = \"y\"\n",
                ),
                (
                    "strings.en.toml",
                    "[meta]\nname = \"English\"\n[a]\nb = \"x\"\nc = \"y\"\n",
                ),
                (
                    "strings.de.toml",
                    "[meta]\nname = \"Deutsch\"\n[a]\nb = \"x\"\nc = \"y\"\nd = 1\n",
                ),
            ]
            .into_iter(),
        )
        .unwrap()
    }

    #[test]
    fn languages_come_from_the_files_and_are_checked_against_french() {
        let s = strings();
        assert_eq!(s.languages(), &[Language::DE, Language::EN, Language::FR]);
        assert_eq!(s.name(Language::DE), "Deutsch");
        let e = Strings::load(
            [
                ("strings.fr.toml", "[a]\nb = \"x\"\nc = \"y\"\n"),
                ("strings.it.toml", "[a]\nb = \"x\"\n"),
            ]
            .into_iter(),
        )
        .unwrap_err();
        assert_eq!(e.0, "strings.it.toml");
        assert!(e.1.contains("a.c"), "{}", e.1);
        assert!(Strings::load([("strings.x1.toml", "")].into_iter()).is_err());
        assert!(
            Strings::load([("strings.en.toml", "")].into_iter()).is_err(),
            "no French"
        );
    }

    #[test]
    fn the_query_then_the_cookie_then_accept_language_choose() {
        let s = strings();
        let fr = Language::FR;
        assert_eq!(
            s.choose(Some("de"), Some("en"), Some("fr"), fr),
            Language::DE
        );
        assert_eq!(
            s.choose(Some("it"), Some("en"), Some("de"), fr),
            Language::EN
        );
        assert_eq!(
            s.choose(None, Some("xx"), Some("de-DE,en;q=0.5"), fr),
            Language::DE
        );
        assert_eq!(s.choose(None, None, Some("it"), Language::EN), Language::EN);
        assert_eq!(s.choose(None, None, None, Language::new("it").unwrap()), fr);
    }
}
