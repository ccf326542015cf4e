//! Directory search in SQL, the one place where the two backends differ: SQLite drives each tier
//! through FTS5; PostgreSQL scans the word range of a tier's rarest term in
//! `directory_search_words`, or intersects GIN posting lists of `directory_search` when every
//! term is common (see `PgSearch`). Both apply the visibility filters and return a bounded
//! number of candidates, which `directory::service` ranks.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};

use super::Candidate;
use crate::store::{DbConn, StoreError};

/// A full-text query for one search tier, in both backends' forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexQuery {
    /// SQLite FTS5 `MATCH` text.
    pub fts5: String,
    /// Its terms, for PostgreSQL's `directory_search_words` (every one must match).
    pub terms: Vec<TermMatch>,
    /// PostgreSQL `tsquery` text over `annuaire_search_lexemes` (whole words `'jean'`, word
    /// prefixes `'dup*'`), for tiers of common terms.
    pub tsquery: String,
}

/// The longest prefix the indexes hold (SQLite FTS5 prefix indexes `prefix = '1 2 3 4 5 6 7 8'`,
/// PostgreSQL prefix lexemes; see the migrations): a longer prefix is asked cut, and the
/// ranking checks the whole term.
pub const MAX_INDEXED_PREFIX: usize = 8;

/// One term of a tier: folded `[a-z0-9]+`, a whole word or a word prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermMatch {
    /// The folded term.
    pub text: String,
    /// It must equal a word, rather than start one.
    pub whole: bool,
}

impl TermMatch {
    /// What the full-text indexes are asked for: the whole word, or the prefix cut to
    /// [`MAX_INDEXED_PREFIX`] letters.
    pub fn indexed(&self) -> &str {
        match self.text.char_indices().nth(MAX_INDEXED_PREFIX) {
            Some((cut, _)) if !self.whole => self.text.get(..cut).unwrap_or(&self.text),
            _ => &self.text,
        }
    }

    /// Whether SQLite's FTS5 matches this term in `text` (`tokenize = 'ascii'`: words are
    /// split at ASCII characters other than letters and digits, and ASCII case is folded).
    fn fts5_matches(&self, text: &str) -> bool {
        let term = self.indexed().as_bytes();
        text.split(|c: char| c.is_ascii() && !c.is_ascii_alphanumeric())
            .any(|word| {
                let word = word.as_bytes();
                if self.whole {
                    word.eq_ignore_ascii_case(term)
                } else {
                    word.get(..term.len())
                        .is_some_and(|start| start.eq_ignore_ascii_case(term))
                }
            })
    }
    /// What `strpos` looks for in the spaced key (` jean dupont `): ` jean ` for a whole word,
    /// ` dup` for a prefix.
    fn pattern(&self) -> String {
        if self.whole {
            format!(" {} ", self.text)
        } else {
            format!(" {}", self.text)
        }
    }

    /// The range of `word` (collation "C") that matches: `[jean, "jean ")` holds only `jean`;
    /// `[dup, duq)` every word starting with `dup` (terms are `[a-z0-9]`, so the last byte
    /// plus one is still ASCII: `z` → `{`, `9` → `:`).
    fn range(&self) -> (String, String) {
        let lo = self.text.clone();
        let hi = if self.whole {
            format!("{lo} ")
        } else {
            let mut hi = lo.clone();
            match hi.pop() {
                Some(last) if last.is_ascii() && last < '\u{7f}' => {
                    hi.push(char::from(last as u8 + 1));
                    hi
                }
                // Not a folded term: an empty range (nothing lies in [x, x)).
                _ => lo.clone(),
            }
        };
        (lo, hi)
    }
}

/// The index queries of one search (see `directory::service`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchTiers {
    /// Every term a prefix: every match.
    pub broad: IndexQuery,
    /// Every term a whole word.
    pub whole: IndexQuery,
    /// Every term but the last a whole word, the last a prefix (two terms or more).
    pub typing: Option<IndexQuery>,
}

/// Which entries a search may return, besides matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchFilter {
    /// Return external entries too.
    pub show_externals: bool,
    /// Only entries whose folded organisation equals this.
    pub organisation_key: Option<String>,
}

/// The candidates of a search: at most `candidates` entries per tier, visible, active, of users who
/// did not leave the directory, and matching; `limit` is the number of results the caller will keep. The broad tier comes
/// first: when it has fewer than `candidates` matches it holds every match and is the answer.
/// Otherwise the whole-word tier, and unless that one alone has more than `limit` matches
/// (nothing else could rank before them), the typing tier. Candidates may repeat.
pub fn search(
    conn: &mut DbConn,
    tiers: &SearchTiers,
    filter: &SearchFilter,
    candidates: i64,
    limit: usize,
) -> Result<Vec<Candidate>, StoreError> {
    match conn {
        DbConn::Sqlite(c) => sqlite_search(c, tiers, filter, candidates, limit),
        DbConn::Pg(c) => {
            let search = PgSearch {
                broad: PgTier::new(&tiers.broad),
                whole: PgTier::new(&tiers.whole),
                typing: tiers.typing.as_ref().map(PgTier::new),
                filter,
                candidates,
                limit: i64::try_from(limit).unwrap_or(i64::MAX),
            };
            // One plan for every search of a shape: the custom plans PostgreSQL would otherwise
            // make for the first executions (and keep making when it cannot tell the generic one
            // is as good) cost more to plan over the 32 partitions than to run. The generic
            // plan's cost estimates (unknown ranges) are high enough to trigger JIT compilation,
            // which takes a quarter of a second for a statement that runs in a millisecond.
            Ok(c.transaction(|c| {
                c.batch_execute(
                    "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL jit = off",
                )?;
                search.load::<Candidate>(c)
            })?)
        }
    }
}

/// [`search`] on SQLite, one FTS5 query per tier, each in rowid order.
///
/// Every match of the whole-word and typing tiers is a match of the broad one (a word is a
/// prefix of itself), under the same filters. So when the broad tier reaches its limit at
/// rowid `last`, the narrower tiers' matches up to `last` are among its candidates already:
/// they are picked out there, and the narrower query only reads on from `last`. The
/// candidates are those of three queries from the start, for the cost of one scan: with common
/// terms (`jean dupont fin`: 260,000 and 52,000 entries at 5.5M), each query from the start
/// reads most of the terms' lists again to fill its limit.
fn sqlite_search(
    c: &mut diesel::SqliteConnection,
    tiers: &SearchTiers,
    filter: &SearchFilter,
    candidates: i64,
    limit: usize,
) -> Result<Vec<Candidate>, StoreError> {
    let broad = SqliteTier::new(&tiers.broad, filter, 0, candidates).load::<SqliteCandidate>(c)?;
    let full = usize::try_from(candidates).unwrap_or(usize::MAX);
    let Some(last) = broad.last().map(|r| r.id).filter(|_| broad.len() >= full) else {
        return Ok(broad.into_iter().map(|r| r.candidate).collect());
    };
    let mut narrower = |q: &IndexQuery| -> Result<Vec<Candidate>, StoreError> {
        let mut found: Vec<Candidate> = broad
            .iter()
            .filter(|r| q.terms.iter().all(|t| t.fts5_matches(&r.search_all)))
            .map(|r| r.candidate.clone())
            .collect();
        let more = full.saturating_sub(found.len());
        if more > 0 {
            let more = i64::try_from(more).unwrap_or(candidates);
            let rest = SqliteTier::new(q, filter, last, more).load::<SqliteCandidate>(c)?;
            found.extend(rest.into_iter().map(|r| r.candidate));
        }
        Ok(found)
    };
    let mut found = narrower(&tiers.whole)?;
    if found.len() <= limit
        && let Some(typing) = &tiers.typing
    {
        found.extend(narrower(typing)?);
    }
    found.extend(broad.into_iter().map(|r| r.candidate));
    Ok(found)
}

/// A candidate on SQLite, with its rowid and the text FTS5 indexes.
#[derive(QueryableByName)]
struct SqliteCandidate {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    search_all: String,
    #[diesel(embed)]
    candidate: Candidate,
}

/// One tier on SQLite: its first `limit` matches after rowid `after`, in rowid order. The FTS5
/// index drives the join (CROSS JOIN) and yields rowids in order (no sort), so the cost is
/// bounded by the limit. A statement diesel prepares once per connection (its text never
/// changes).
struct SqliteTier<'a> {
    fts5: &'a str,
    show_externals: bool,
    organisation_key: Option<&'a str>,
    after: i64,
    limit: i64,
}

impl<'a> SqliteTier<'a> {
    fn new(q: &'a IndexQuery, filter: &'a SearchFilter, after: i64, limit: i64) -> Self {
        SqliteTier {
            fts5: &q.fts5,
            show_externals: filter.show_externals,
            organisation_key: filter.organisation_key.as_deref(),
            after,
            limit,
        }
    }
}

impl diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite> for SqliteTier<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::sqlite::Sqlite>,
    ) -> QueryResult<()> {
        out.push_sql(
            "SELECT e.id, e.search_all, e.mxid, e.name, e.organisation, e.avatar_url, \
                    e.search_name, e.search_organisation, e.search_localpart \
             FROM directory_fts CROSS JOIN directory_entries AS e ON e.id = directory_fts.rowid \
             WHERE directory_fts MATCH ",
        );
        out.push_bind_param::<Text, _>(self.fts5)?;
        out.push_sql(" AND directory_fts.rowid > ");
        out.push_bind_param::<BigInt, _>(&self.after)?;
        out.push_sql(
            " AND e.visibility = 'visible' AND e.active \
             AND NOT EXISTS (SELECT 1 FROM directory_opt_outs AS o WHERE o.mxid = e.mxid) AND (",
        );
        out.push_bind_param::<Bool, _>(&self.show_externals)?;
        out.push_sql(" OR NOT e.external) AND (");
        out.push_bind_param::<Nullable<Text>, _>(&self.organisation_key)?;
        out.push_sql(" IS NULL OR e.organisation_key = ");
        out.push_bind_param::<Nullable<Text>, _>(&self.organisation_key)?;
        out.push_sql(") ORDER BY directory_fts.rowid LIMIT ");
        out.push_bind_param::<BigInt, _>(&self.limit)?;
        Ok(())
    }
}

impl diesel::query_builder::QueryId for SqliteTier<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::Query for SqliteTier<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

impl RunQueryDsl<diesel::SqliteConnection> for SqliteTier<'_> {}

/// A search on PostgreSQL, every tier in one statement (one round trip; diesel prepares it once
/// per connection and shape, the shape being the number of terms of each tier).
///
/// A tier of one term, or whose rarest term the planner expects in fewer than
/// [`WORD_RANGE_MAX_ROWS`] words (`annuaire_word_rows`, from the column statistics), is one
/// range scan of `directory_search_words` (one row per word of each entry, a btree on the word
/// covering the spaced key and the flags): it reads the words of that driving term in order,
/// keeps an entry at its first word in the range (so that it comes once), checks every term and
/// the flags on the index tuple, and stops at the limit. A tier of common terms only (`thomas
/// mul`) would read most of its driving range to find the few entries that have the others:
/// GIN intersects the terms' posting lists instead, in the hash partitions of
/// `directory_search`, one after the other until the limit. The later tiers run only when the
/// one before says so (one-time filters on the row counts), and the driving term is chosen
/// only for a tier that runs.
struct PgSearch<'a> {
    broad: PgTier<'a>,
    whole: PgTier<'a>,
    typing: Option<PgTier<'a>>,
    filter: &'a SearchFilter,
    candidates: i64,
    limit: i64,
}

/// Above this many words in its driving range, a tier of several terms intersects posting
/// lists instead (a range scan reads about 3 words per microsecond, and checking 10,000 costs
/// about what a GIN intersection over the partitions does).
const WORD_RANGE_MAX_ROWS: i64 = 10_000;

/// The binds of one tier's terms.
struct PgTier<'a> {
    /// Per term: what `strpos` looks for, and the range of words it matches.
    terms: Vec<(String, String, String)>,
    /// The same terms as a `tsquery` over `annuaire_search_lexemes`.
    tsquery: &'a str,
}

impl PgTier<'_> {
    fn new(q: &IndexQuery) -> PgTier<'_> {
        PgTier {
            terms: q
                .terms
                .iter()
                .map(|t| {
                    let (lo, hi) = t.range();
                    (t.pattern(), lo, hi)
                })
                .collect(),
            tsquery: &q.tsquery,
        }
    }
}

/// Which earlier tiers a tier waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Runs always.
    None,
    /// Runs when the broad tier reached its limit.
    BroadFull,
    /// Runs when the broad tier reached its limit and the whole-word one did not exceed the
    /// number of results.
    BroadFullWholeFew,
}

impl PgSearch<'_> {
    /// The gate of a tier, then ` AND `: conditions on no row, which PostgreSQL checks once
    /// before starting the scan.
    fn gate<'b>(
        &'b self,
        out: &mut diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
        gate: Gate,
    ) -> QueryResult<()> {
        if gate != Gate::None {
            out.push_sql("(SELECT count(*) FROM broad) >= ");
            out.push_bind_param::<BigInt, _>(&self.candidates)?;
            out.push_sql(" AND ");
        }
        if gate == Gate::BroadFullWholeFew {
            out.push_sql("(SELECT count(*) FROM whole) <= ");
            out.push_bind_param::<BigInt, _>(&self.limit)?;
            out.push_sql(" AND ");
        }
        Ok(())
    }

    /// The driving term of tier `name` (a CTE `{name}_driver (lo, hi, pattern, est)`): with
    /// several terms, the one with the fewest expected words.
    fn driver<'b>(
        &'b self,
        out: &mut diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
        name: &str,
        tier: &'b PgTier<'b>,
    ) -> QueryResult<()> {
        out.push_sql(name);
        out.push_sql("_driver AS MATERIALIZED (SELECT lo, hi, pattern, ");
        out.push_sql(if tier.terms.len() > 1 {
            "annuaire_word_rows(lo, hi) AS est"
        } else {
            "0::float8 AS est"
        });
        out.push_sql(" FROM (VALUES ");
        if tier.terms.is_empty() {
            // No term (nothing searchable): an empty range.
            out.push_sql("(''::text, ''::text, ' '::text)");
        }
        for (i, (pattern, lo, hi)) in tier.terms.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_sql("(");
            out.push_bind_param::<Text, _>(lo)?;
            out.push_sql("::text, ");
            out.push_bind_param::<Text, _>(hi)?;
            out.push_sql("::text, ");
            out.push_bind_param::<Text, _>(pattern)?;
            out.push_sql("::text)");
        }
        out.push_sql(") AS t (lo, hi, pattern) ORDER BY est LIMIT 1), ");
        Ok(())
    }

    /// The filters both PostgreSQL scans share, on the row `alias`: externals only when the
    /// caller may see them, and no user who left the directory.
    fn externals_and_opt_outs<'b>(
        &'b self,
        out: &mut diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
        alias: &'static str,
    ) -> QueryResult<()> {
        out.push_sql("(");
        out.push_bind_param::<Bool, _>(&self.filter.show_externals)?;
        out.push_sql(" OR NOT ");
        out.push_sql(alias);
        out.push_sql(
            ".external) AND NOT EXISTS (SELECT 1 FROM directory_opt_outs AS o WHERE o.mxid = ",
        );
        out.push_sql(alias);
        out.push_sql(".mxid)");
        Ok(())
    }

    /// `SELECT mxid` of one tier by its driving term's word range.
    fn word_range<'b>(
        &'b self,
        out: &mut diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
        name: &str,
        tier: &'b PgTier<'b>,
        gate: Gate,
    ) -> QueryResult<()> {
        out.push_sql("(SELECT w.mxid FROM directory_search_words AS w WHERE ");
        self.gate(out, gate)?;
        if tier.terms.len() > 1 {
            out.push_sql("(SELECT est FROM ");
            out.push_sql(name);
            out.push_sql("_driver) < ");
            out.push_sql(&WORD_RANGE_MAX_ROWS.to_string());
            out.push_sql(" AND ");
        }
        out.push_sql("w.word >= (SELECT lo FROM ");
        out.push_sql(name);
        out.push_sql("_driver) AND w.word < (SELECT hi FROM ");
        out.push_sql(name);
        // An entry once: at the first of its words in the driving range.
        out.push_sql(
            "_driver) AND strpos(w.words, ' ' || w.word || ' ') = \
             strpos(w.words, (SELECT pattern FROM ",
        );
        out.push_sql(name);
        out.push_sql("_driver))");
        for (pattern, _, _) in &tier.terms {
            out.push_sql(" AND strpos(w.words, ");
            out.push_bind_param::<Text, _>(pattern)?;
            out.push_sql(") > 0");
        }
        out.push_sql(" AND w.listed AND ");
        self.externals_and_opt_outs(out, "w")?;
        out.push_sql(" AND (");
        out.push_bind_param::<Nullable<Text>, _>(&self.filter.organisation_key)?;
        out.push_sql(
            "::text IS NULL OR EXISTS (SELECT 1 FROM directory_entries AS e \
             WHERE e.mxid = w.mxid AND e.organisation_key = ",
        );
        out.push_bind_param::<Nullable<Text>, _>(&self.filter.organisation_key)?;
        out.push_sql(")) ORDER BY w.word LIMIT ");
        out.push_bind_param::<BigInt, _>(&self.candidates)?;
        out.push_sql(")");
        Ok(())
    }

    /// `SELECT mxid` of one tier by GIN, when its driving term is common.
    fn posting_lists<'b>(
        &'b self,
        out: &mut diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
        name: &str,
        tier: &'b PgTier<'b>,
        gate: Gate,
    ) -> QueryResult<()> {
        out.push_sql("(SELECT s.mxid FROM directory_search AS s WHERE ");
        self.gate(out, gate)?;
        out.push_sql("(SELECT est FROM ");
        out.push_sql(name);
        out.push_sql("_driver) >= ");
        out.push_sql(&WORD_RANGE_MAX_ROWS.to_string());
        out.push_sql(" AND annuaire_search_lexemes(s.search_all) @@ ");
        out.push_bind_param::<Text, _>(&tier.tsquery)?;
        out.push_sql("::tsquery AND s.visibility = 'visible' AND s.active AND ");
        self.externals_and_opt_outs(out, "s")?;
        out.push_sql(" AND (");
        out.push_bind_param::<Nullable<Text>, _>(&self.filter.organisation_key)?;
        out.push_sql("::text IS NULL OR s.organisation_key = ");
        out.push_bind_param::<Nullable<Text>, _>(&self.filter.organisation_key)?;
        out.push_sql(") LIMIT ");
        out.push_bind_param::<BigInt, _>(&self.candidates)?;
        out.push_sql(")");
        Ok(())
    }

    /// The CTEs of one tier: its driving term, then its candidates.
    fn tier<'b>(
        &'b self,
        out: &mut diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
        name: &str,
        tier: &'b PgTier<'b>,
        gate: Gate,
    ) -> QueryResult<()> {
        self.driver(out, name, tier)?;
        out.push_sql(name);
        out.push_sql(" AS MATERIALIZED (");
        self.word_range(out, name, tier, gate)?;
        if tier.terms.len() > 1 {
            out.push_sql(" UNION ALL ");
            self.posting_lists(out, name, tier, gate)?;
        }
        out.push_sql("), ");
        Ok(())
    }
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for PgSearch<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        out.push_sql("WITH ");
        self.tier(&mut out, "broad", &self.broad, Gate::None)?;
        self.tier(&mut out, "whole", &self.whole, Gate::BroadFull)?;
        let found = if let Some(typing) = &self.typing {
            self.tier(&mut out, "typing", typing, Gate::BroadFullWholeFew)?;
            "found AS (SELECT mxid FROM whole UNION SELECT mxid FROM typing \
                       UNION SELECT mxid FROM broad) "
        } else {
            "found AS (SELECT mxid FROM whole UNION SELECT mxid FROM broad) "
        };
        out.push_sql(found);
        out.push_sql(
            "SELECT e.mxid, e.name, e.organisation, e.avatar_url, \
                    e.search_name, e.search_organisation, e.search_localpart \
             FROM found JOIN directory_entries AS e ON e.mxid = found.mxid",
        );
        Ok(())
    }
}

impl diesel::query_builder::QueryId for PgSearch<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::Query for PgSearch<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

impl RunQueryDsl<diesel::PgConnection> for PgSearch<'_> {}

#[cfg(test)]
mod tests {
    use super::TermMatch;

    fn term(text: &str, whole: bool) -> TermMatch {
        TermMatch {
            text: text.into(),
            whole,
        }
    }

    #[test]
    fn prefixes_are_asked_cut_to_the_longest_prefix_index() {
        assert_eq!(term("bundesministerium", false).indexed(), "bundesmi");
        assert_eq!(
            term("bundesministerium", true).indexed(),
            "bundesministerium"
        );
        assert_eq!(term("dup", false).indexed(), "dup");
    }

    #[test]
    fn matches_as_the_ascii_tokenizer_splits_and_folds() {
        let text = "jean-pierre dupont finances jpdupont";
        assert!(term("jean", true).fts5_matches(text));
        assert!(term("pierre", true).fts5_matches(text));
        assert!(term("fin", false).fts5_matches(text));
        assert!(!term("fin", true).fts5_matches(text));
        assert!(!term("upont", false).fts5_matches(text));
        assert!(term("dupont", true).fts5_matches("DUPONT"));
        // Beyond 8 letters, the index is asked the cut prefix: the ranking checks the rest.
        assert!(term("financesx", false).fts5_matches(text));
        // Non-ASCII characters are part of words.
        assert!(!term("h", true).fts5_matches("hé"));
        assert!(term("h", false).fts5_matches("hé"));
        assert!(!term("x", false).fts5_matches(""));
    }
}
