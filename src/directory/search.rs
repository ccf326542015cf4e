//! Directory search: accent and case folding, the indexed key, query parsing, the backends' query
//! expressions, and ranking.
//!
//! # Folding
//!
//! [`fold`] is the only normalisation, applied alike to what is indexed and to what is searched:
//! transliterate to ASCII (`deunicode`: `Œuvre` → `OEuvre`, `Straße` → `Strasse`), lower-case,
//! and turn every run of other characters into one space (`d'Artagnan` → `d artagnan`). Folded
//! text only contains `[a-z0-9 ]`, with single spaces and no space at either end.
//!
//! # What is indexed
//!
//! [`search_key`] folds the display name, the organisation label and the mxid localpart
//! separately (they rank differently) and also as one string, [`SearchKey::all`], which is what
//! the backends index (SQLite FTS5, PostgreSQL `to_tsvector('simple', …)`). A word written with
//! hyphens or apostrophes is also indexed written together (`Jean-Pierre` → `jean pierre
//! jeanpierre`, `O'Neil` → `o neil oneil`), since people search both ways.
//!
//! # Matching and ranking
//!
//! A query is at most [`MAX_TERMS`] distinct folded terms; an entry matches when *every* term is
//! a prefix of *some* word of the key (two terms may match the same word). The database applies
//! this as a prefix full-text query ([`fts5_match_expression`], [`tsquery_expression`]);
//! [`rank`] confirms it on each candidate and scores it. For each term:
//!
//! - it is *exact* when it equals a whole word of the name, organisation or localpart;
//! - it is *exact in the name* when it equals a whole word of the name;
//! - it is *in the name* when it is a prefix of a word of the name.
//!
//! [`Rank`] counts the three, and results are ordered by, in turn: more exact terms, more terms
//! exact in the name, more terms in the name. So `dupont` puts `Jean Dupont` (exact, in the name)
//! before `Marc Dupontel [Dupont]` (exact only in the organisation) before `Luc Dupontel`
//! (prefix only), and `jus` puts `Justine Martin [Culture]` before `Paul Martin [Justice]`.
//! `Rank` sorts best first; callers break ties by the folded name ([`SearchKey::name`]) then by
//! the mxid, i.e. they sort by `(rank, name, mxid)`.

use std::borrow::Cow;
use std::cmp::Ordering;

use deunicode::deunicode_char;

/// The most terms a query keeps; further words are ignored (they could only narrow the results).
pub const MAX_TERMS: usize = 8;

/// The longest term kept, in characters; a longer one is cut, which keeps it a valid prefix.
pub const MAX_TERM_CHARS: usize = 64;

/// ASCII transliteration, character by character: `deunicode` on a whole string drops ASCII
/// control characters (tabs, newlines) that follow a non-ASCII one, which would glue words
/// together (`Élodie\tDupré` → `ElodieDupre`). Whitespace and controls become spaces, and
/// unknown characters a space rather than deunicode's `[?]`.
fn transliterate(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else if c.is_whitespace() || c.is_control() {
            out.push(' ');
        } else {
            out.push_str(deunicode_char(c).unwrap_or(" "));
        }
    }
    Cow::Owned(out)
}

/// Folds text for search: ASCII transliteration, lower case, runs of anything but letters and
/// digits become one space, trimmed.
pub fn fold(s: &str) -> String {
    let ascii = transliterate(s);
    let mut out = String::with_capacity(ascii.len());
    let mut pending_space = false;
    for c in ascii.chars() {
        if c.is_ascii_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(c.to_ascii_lowercase());
        } else {
            pending_space = true;
        }
    }
    out
}

/// The folded words of `s`, followed by its hyphenated or apostrophised words written together.
fn words_with_compounds(s: &str) -> String {
    let ascii = transliterate(s);
    let mut words = fold(&ascii);
    let tokens = ascii.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '\''));
    for token in tokens {
        let folded = fold(token);
        if !folded.contains(' ') {
            continue;
        }
        let joined: String = folded.split(' ').collect();
        if !words.split(' ').any(|w| w == joined) {
            words.push(' ');
            words.push_str(&joined);
        }
    }
    words
}

/// What the directory indexes for one entry, folded, with its parts kept apart for ranking.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchKey {
    /// The display name's folded words, then its compound words written together.
    pub name: String,
    /// The organisation label's folded words (empty without one), then its compound words.
    pub organisation: String,
    /// The mxid localpart's folded words, then its compound words.
    pub localpart: String,
    /// Every distinct word of the three above, in that order: the indexed text.
    pub all: String,
}

/// Builds the search key of an entry from its verified name (not the formatted display name), its
/// organisation label and its mxid localpart (without `@` and server name).
pub fn search_key(name: &str, organisation: Option<&str>, mxid_localpart: &str) -> SearchKey {
    let name = words_with_compounds(name);
    let organisation = organisation.map(words_with_compounds).unwrap_or_default();
    let localpart = words_with_compounds(mxid_localpart);
    let mut all: Vec<&str> = Vec::new();
    for word in [&name, &organisation, &localpart]
        .into_iter()
        .flat_map(|field| field.split(' '))
        .filter(|w| !w.is_empty())
    {
        if !all.contains(&word) {
            all.push(word);
        }
    }
    let all = all.join(" ");
    SearchKey {
        name,
        organisation,
        localpart,
        all,
    }
}

/// A parsed search: the terms every result must match as word prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// Folded, non-empty, distinct terms, at most [`MAX_TERMS`], each at most [`MAX_TERM_CHARS`].
    pub terms: Vec<String>,
}

/// Why a search term cannot be searched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Nothing is left to search once folded: an empty search must never mean "everyone".
    #[error("the search term must contain at least one letter or digit")]
    Empty,
}

/// Parses a user's search term: folded, split on spaces, duplicates dropped, at most
/// [`MAX_TERMS`] terms of at most [`MAX_TERM_CHARS`] characters.
pub fn parse_query(input: &str) -> Result<SearchQuery, QueryError> {
    let folded = fold(input);
    let mut terms: Vec<String> = Vec::new();
    for word in folded.split(' ').filter(|w| !w.is_empty()) {
        // Folded text is ASCII, so a byte cut is a character cut.
        let term = &word[..word.len().min(MAX_TERM_CHARS)];
        if !terms.iter().any(|t| t == term) {
            terms.push(term.to_owned());
            if terms.len() == MAX_TERMS {
                break;
            }
        }
    }
    if terms.is_empty() {
        return Err(QueryError::Empty);
    }
    Ok(SearchQuery { terms })
}

/// The SQLite FTS5 `MATCH` text: every term a quoted prefix query, all required
/// (`"jea"* AND "dup"*`). Quotes are doubled, so no term can escape its string.
pub fn fts5_match_expression(q: &SearchQuery) -> String {
    q.terms
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| format!("\"{}\"*", t.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The PostgreSQL `tsquery` text over the indexed prefix lexemes (`annuaire_search_lexemes`,
/// which holds every word prefix of up to 8 letters as `prefix*`): every term a prefix, all
/// required (`'jea*' & 'dup*'`; a longer term is cut to 8 letters). Only ASCII letters and
/// digits of a term are kept, so nothing can escape its quotes even in a hand-built query.
pub fn tsquery_expression(q: &SearchQuery) -> String {
    q.terms
        .iter()
        .map(|t| {
            t.chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .take(8)
                .collect::<String>()
        })
        .filter(|t| !t.is_empty())
        .map(|t| format!("'{t}*'"))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// How well an entry matches a query; smaller sorts first (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rank {
    exact: u32,
    exact_in_name: u32,
    in_name: u32,
}

impl Rank {
    /// Terms equal to a whole word of the name, organisation or localpart.
    pub fn exact_matches(&self) -> u32 {
        self.exact
    }

    /// Terms equal to a whole word of the name.
    pub fn exact_name_matches(&self) -> u32 {
        self.exact_in_name
    }

    /// Terms that are a prefix of a word of the name.
    pub fn name_matches(&self) -> u32 {
        self.in_name
    }
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: more matches is better, and better sorts first.
        other
            .exact
            .cmp(&self.exact)
            .then_with(|| other.exact_in_name.cmp(&self.exact_in_name))
            .then_with(|| other.in_name.cmp(&self.in_name))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Scores an entry against a query: `None` when some term is not a prefix of any of its words
/// (or the query has no terms), else its [`Rank`].
pub fn rank(q: &SearchQuery, key: &SearchKey) -> Option<Rank> {
    if q.terms.is_empty() {
        return None;
    }
    fn words(field: &str) -> impl Iterator<Item = &str> + Clone {
        field.split(' ').filter(|w| !w.is_empty())
    }
    let name = words(&key.name);
    let other = words(&key.organisation).chain(words(&key.localpart));

    let mut rank = Rank::default();
    for term in &q.terms {
        let term = term.as_str();
        let exact_in_name = name.clone().any(|w| w == term);
        let in_name = exact_in_name || name.clone().any(|w| w.starts_with(term));
        let exact_other = other.clone().any(|w| w == term);
        let in_other = exact_other || other.clone().any(|w| w.starts_with(term));
        if !in_name && !in_other {
            return None;
        }
        rank.exact += u32::from(exact_in_name || exact_other);
        rank.exact_in_name += u32::from(exact_in_name);
        rank.in_name += u32::from(in_name);
    }
    Some(rank)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn terms(q: &str) -> Vec<String> {
        parse_query(q).unwrap().terms
    }

    #[test]
    fn folding() {
        let cases: &[(&str, &str)] = &[
            ("Œuvre", "oeuvre"),
            ("Straße", "strasse"),
            ("Hélène", "helene"),
            ("Jean-Pierre", "jean pierre"),
            ("d'Artagnan", "d artagnan"),
            ("d’Artagnan", "d artagnan"),
            ("Jérôme MÜLLER", "jerome muller"),
            ("Ševčík", "sevcik"),
            ("Æsa Ørsted", "aesa orsted"),
            ("  Jean   Dupont  ", "jean dupont"),
            ("Jean Dupont [Finances]", "jean dupont finances"),
            (
                "@jean.dupont12:agent.finances.example",
                "jean dupont12 agent finances example",
            ),
            ("Élodie\tDupré\n", "elodie dupre"),
            ("Hélène\u{a0}Dupré\u{2003}x\u{85}y", "helene dupre x y"),
            ("北京", "bei jing"),
            ("e\u{301}lodie", "elodie"),
            ("Иван Петров", "ivan petrov"),
            ("", ""),
            ("  ", ""),
            ("...!?", ""),
            ("\u{0}\u{1F600}", "grinning"),
        ];
        for (input, expected) in cases {
            assert_eq!(fold(input), *expected, "fold({input:?})");
        }
    }

    #[test]
    fn search_keys() {
        let key = search_key(
            "Jean-Pierre Dupont",
            Some("Finances"),
            "jean-pierre.dupont12",
        );
        assert_eq!(key.name, "jean pierre dupont jeanpierre");
        assert_eq!(key.organisation, "finances");
        assert_eq!(key.localpart, "jean pierre dupont12 jeanpierre");
        assert_eq!(key.all, "jean pierre dupont jeanpierre finances dupont12");

        let key = search_key("Sean O'Neil", None, "s.oneil");
        assert_eq!(key.name, "sean o neil oneil");
        assert_eq!(key.organisation, "");
        assert_eq!(key.localpart, "s oneil");
        assert_eq!(key.all, "sean o neil oneil s");

        let key = search_key(
            "Hélène Müller",
            Some("Bundesministerium des Innern"),
            "hmueller",
        );
        assert_eq!(key.name, "helene muller");
        assert_eq!(key.organisation, "bundesministerium des innern");
        assert_eq!(
            key.all,
            "helene muller bundesministerium des innern hmueller"
        );

        let key = search_key("Œuvre", Some("Outre-mer"), "oeuvre");
        assert_eq!(key.organisation, "outre mer outremer");
        assert_eq!(key.all, "oeuvre outre mer outremer");
    }

    #[test]
    fn query_parsing() {
        assert_eq!(terms("jea dup"), ["jea", "dup"]);
        assert_eq!(terms("  Hélène  "), ["helene"]);
        assert_eq!(terms("Jean-Pierre"), ["jean", "pierre"]);
        assert_eq!(terms("jean JEAN Jean"), ["jean"]);
        assert_eq!(terms("d'Artagnan"), ["d", "artagnan"]);
        assert_eq!(terms("\"; DROP TABLE--"), ["drop", "table"]);

        for empty in ["", " ", "\t\n ", "...", "'\"*", "-- ; --", "\u{200B}"] {
            assert_eq!(parse_query(empty), Err(QueryError::Empty), "{empty:?}");
        }

        let many = "a b c d e f g h i j k";
        assert_eq!(terms(many), ["a", "b", "c", "d", "e", "f", "g", "h"]);
        // Duplicates do not use up the term budget.
        assert_eq!(terms("a a a a a a a a a b"), ["a", "b"]);

        let long = "x".repeat(100);
        assert_eq!(terms(&long), ["x".repeat(MAX_TERM_CHARS)]);
        let long_accented = "é".repeat(100);
        assert_eq!(terms(&long_accented), ["e".repeat(MAX_TERM_CHARS)]);
    }

    #[test]
    fn backend_expressions() {
        let q = parse_query("Jéa   dup").unwrap();
        assert_eq!(fts5_match_expression(&q), r#""jea"* AND "dup"*"#);
        assert_eq!(tsquery_expression(&q), "'jea*' & 'dup*'");

        let q = parse_query("helene").unwrap();
        assert_eq!(fts5_match_expression(&q), r#""helene"*"#);
        assert_eq!(tsquery_expression(&q), "'helene*'");
        let q = parse_query("bundesministerium").unwrap();
        assert_eq!(tsquery_expression(&q), "'bundesmi*'");

        // Hand-built queries cannot break out of the syntax either.
        let hostile = SearchQuery {
            terms: vec![
                "a\"b".to_owned(),
                "x' | !y:* & (z".to_owned(),
                "".to_owned(),
                "&|!".to_owned(),
            ],
        };
        assert_eq!(
            fts5_match_expression(&hostile),
            r#""a""b"* AND "x' | !y:* & (z"* AND "&|!"*"#
        );
        assert_eq!(tsquery_expression(&hostile), "'ab*' & 'xyz*'");
    }

    fn ranked(query: &str, entries: &[(&str, Option<&str>, &str)]) -> Vec<String> {
        let q = parse_query(query).unwrap();
        let mut hits: Vec<(Rank, String, String)> = entries
            .iter()
            .filter_map(|(name, org, local)| {
                let key = search_key(name, *org, local);
                rank(&q, &key).map(|r| (r, key.name, format!("@{local}:hs.example")))
            })
            .collect();
        hits.sort();
        hits.into_iter().map(|(_, _, mxid)| mxid).collect()
    }

    #[test]
    fn matching_requires_every_term_as_a_word_prefix() {
        let key = search_key("Jean Dupont", Some("Finances"), "jean.dupont");
        let matches = |q: &str| rank(&parse_query(q).unwrap(), &key).is_some();
        assert!(matches("jea dup"));
        assert!(matches("JEAN"));
        assert!(matches("fin"));
        assert!(matches("dupont finances"));
        assert!(matches("j jean"));
        assert!(!matches("ean"), "not a word prefix");
        assert!(!matches("jean durand"), "every term must match");
        assert!(!matches("jeanx"));

        let key = search_key("Hélène Œuvrard", Some("Éducation nationale"), "h.oeuvrard");
        let matches = |q: &str| rank(&parse_query(q).unwrap(), &key).is_some();
        assert!(matches("helene"));
        assert!(matches("Hélè"));
        assert!(matches("oeuvr"));
        assert!(matches("educ"));

        let key = search_key("Jean-Pierre D'Artagnan", None, "jp.dartagnan");
        let matches = |q: &str| rank(&parse_query(q).unwrap(), &key).is_some();
        assert!(matches("jeanpierre"));
        assert!(matches("jean-pierre"));
        assert!(matches("artagnan"));
        assert!(matches("d'artagnan"));
        assert!(matches("dartag"));

        assert_eq!(rank(&SearchQuery { terms: vec![] }, &key), None);
    }

    #[test]
    fn exact_words_rank_before_prefixes() {
        let entries = [
            ("Jeanne Martin", None, "jeanne.martin"),
            ("Jean Martin", None, "jean.martin"),
            ("Jeannot Durand", None, "jeannot.durand"),
        ];
        assert_eq!(
            ranked("jean", &entries),
            [
                "@jean.martin:hs.example",
                "@jeanne.martin:hs.example",
                "@jeannot.durand:hs.example"
            ]
        );
        // More exact terms first: "jean mart" exact on one term for Jean Martin only.
        assert_eq!(
            ranked("jean mart", &entries),
            ["@jean.martin:hs.example", "@jeanne.martin:hs.example"]
        );
    }

    #[test]
    fn name_ranks_before_organisation_and_localpart() {
        let entries = [
            ("Paul Martin", Some("Justice"), "paul.martin"),
            ("Justine Martin", Some("Culture"), "justine.martin"),
            ("Marc Dupontel", Some("Dupont"), "marc.dupontel"),
            ("Jean Dupont", Some("Culture"), "jean.dupont"),
            ("Luc Dupontel", None, "luc.dupontel"),
            ("Anne Bernard", None, "dupont"),
        ];
        assert_eq!(
            ranked("jus", &entries),
            ["@justine.martin:hs.example", "@paul.martin:hs.example"]
        );
        assert_eq!(
            ranked("dupont", &entries),
            [
                // Exact in the name.
                "@jean.dupont:hs.example",
                // Exact elsewhere, and a prefix of the name.
                "@marc.dupontel:hs.example",
                // Exact only in the localpart.
                "@dupont:hs.example",
                // Prefix of the name only.
                "@luc.dupontel:hs.example",
            ]
        );
        // The organisation alone is enough to match; equal ranks are ordered by name.
        assert_eq!(
            ranked("cult", &entries),
            ["@jean.dupont:hs.example", "@justine.martin:hs.example"]
        );
    }

    #[test]
    fn ties_are_broken_by_name_then_mxid() {
        let entries = [
            ("Martin Zola", None, "mz"),
            ("Martin Abel", None, "ma2"),
            ("Martin Abel", None, "ma1"),
            ("Martine Abel", None, "mabel"),
        ];
        assert_eq!(
            ranked("martin", &entries),
            [
                "@ma1:hs.example",
                "@ma2:hs.example",
                "@mz:hs.example",
                "@mabel:hs.example"
            ]
        );
        let a = rank(
            &parse_query("mar").unwrap(),
            &search_key("Martin", None, "x"),
        )
        .unwrap();
        let b = rank(
            &parse_query("mar").unwrap(),
            &search_key("Marie", None, "y"),
        )
        .unwrap();
        assert_eq!(a.cmp(&b), Ordering::Equal);
        assert_eq!(a.exact_matches(), 0);
        assert_eq!(a.exact_name_matches(), 0);
        assert_eq!(a.name_matches(), 1);
    }

    proptest! {
        #[test]
        fn fold_is_idempotent(s in any::<String>()) {
            let once = fold(&s);
            prop_assert_eq!(fold(&once), once.clone());
            prop_assert!(once.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b' '));
            prop_assert!(!once.contains("  "));
            prop_assert_eq!(once.trim(), once.as_str());
        }

        #[test]
        fn whitespace_always_separates_words(
            a in any::<String>(),
            b in any::<String>(),
            sep in "[ \t\n\r\u{a0}\u{2003}\u{85}]",
        ) {
            let (fa, fb) = (fold(&a), fold(&b));
            let expected = [fa.as_str(), fb.as_str()]
                .into_iter()
                .filter(|f| !f.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            prop_assert_eq!(fold(&format!("{a}{sep}{b}")), expected);
        }

        #[test]
        fn parse_query_never_panics_and_respects_limits(s in any::<String>()) {
            match parse_query(&s) {
                Ok(q) => {
                    prop_assert!(!q.terms.is_empty() && q.terms.len() <= MAX_TERMS);
                    for t in &q.terms {
                        prop_assert!(!t.is_empty() && t.len() <= MAX_TERM_CHARS);
                        prop_assert!(t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
                    }
                    let mut unique = q.terms.clone();
                    unique.sort();
                    unique.dedup();
                    prop_assert_eq!(unique.len(), q.terms.len());
                    prop_assert!(!fts5_match_expression(&q).is_empty());
                    prop_assert!(!tsquery_expression(&q).is_empty());
                }
                Err(QueryError::Empty) => prop_assert_eq!(fold(&s), ""),
            }
        }

        #[test]
        fn an_entry_is_found_by_prefixes_of_its_name(
            first in "[A-Za-zÀ-ÿ]{1,12}",
            last in "[A-Za-zÀ-ÿ' -]{1,16}",
            cut in 1usize..6,
        ) {
            let name = format!("{first} {last}");
            let key = search_key(&name, Some("Finances"), "someone");
            let query: String = fold(&name)
                .split(' ')
                .map(|w| &w[..w.len().min(cut)])
                .collect::<Vec<_>>()
                .join(" ");
            let q = parse_query(&query).unwrap();
            let r = rank(&q, &key);
            prop_assert!(r.is_some(), "{name:?} not found by {query:?}");
            prop_assert_eq!(r.unwrap().name_matches() as usize, q.terms.len());
        }
    }
}
