//! Directory storage: entries, their full-text index (SQLite FTS5 kept in step by triggers;
//! PostgreSQL `directory_search_words`, one row per word under a covering btree, and the
//! partitioned `directory_search` with a GIN index of word and prefix lexemes, both kept in step
//! by triggers), LDAP name records and the replication batch counters.
//!
//! Search is the one place where the SQL differs per backend: both apply the prefix query and
//! the visibility filters in the database and return a bounded number of candidates in index
//! order, which `directory::service` ranks exactly. PostgreSQL scans the word range of a tier's
//! rarest term, or intersects GIN posting lists when every term is common (see `PgSearch`).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};

use super::schema::directory_entries::dsl as e;
use super::schema::directory_replication::dsl as r;
use super::schema::ldap_names::dsl as l;
use super::schema::{directory_entries, directory_replication, ldap_names};
use super::{DbConn, StoreError};
use crate::db_dispatch;

/// Rows written per statement by bulk inserts (21 columns: well under both backends' limits on
/// bound parameters).
pub const BULK_ROWS: usize = 500;

/// One stored directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = directory_entries)]
#[diesel(treat_none_as_null = true)]
pub struct EntryRow {
    pub mxid: String,
    pub homeserver: String,
    pub name: String,
    pub name_source: String,
    pub fallback_name: String,
    pub admin_name: Option<String>,
    pub organisation: Option<String>,
    pub policy_organisation: Option<String>,
    pub avatar_url: Option<String>,
    pub visibility: String,
    pub external: bool,
    pub active: bool,
    pub email_key: String,
    pub search_name: String,
    pub search_organisation: String,
    pub search_localpart: String,
    pub search_all: String,
    pub organisation_key: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// What the user typed as display name on their homeserver (never published).
    pub user_displayname: Option<String>,
}

/// What a search needs of a matching entry.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
#[diesel(table_name = directory_entries)]
pub struct Candidate {
    pub mxid: String,
    pub name: String,
    pub organisation: Option<String>,
    pub avatar_url: Option<String>,
    pub search_name: String,
    pub search_organisation: String,
    pub search_localpart: String,
}

/// The entry of `mxid`.
pub fn get(conn: &mut DbConn, mxid: &str) -> Result<Option<EntryRow>, StoreError> {
    Ok(db_dispatch!(conn, c => e::directory_entries
        .filter(e::mxid.eq(mxid))
        .select(EntryRow::as_select())
        .first(c)
        .optional()?))
}

/// Creates or replaces the entry of `row.mxid` (its `created_at` is kept when it exists).
pub fn upsert(conn: &mut DbConn, row: &EntryRow) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::insert_into(e::directory_entries)
        .values(row)
        .on_conflict(e::mxid)
        .do_update()
        .set((
            e::homeserver.eq(&row.homeserver),
            e::name.eq(&row.name),
            e::name_source.eq(&row.name_source),
            e::fallback_name.eq(&row.fallback_name),
            e::admin_name.eq(&row.admin_name),
            e::organisation.eq(&row.organisation),
            e::policy_organisation.eq(&row.policy_organisation),
            e::avatar_url.eq(&row.avatar_url),
            e::visibility.eq(&row.visibility),
            e::external.eq(row.external),
            e::active.eq(row.active),
            e::email_key.eq(&row.email_key),
            e::search_name.eq(&row.search_name),
            e::search_organisation.eq(&row.search_organisation),
            e::search_localpart.eq(&row.search_localpart),
            e::search_all.eq(&row.search_all),
            e::organisation_key.eq(&row.organisation_key),
            e::updated_at.eq(row.updated_at),
            e::user_displayname.eq(&row.user_displayname),
        ))
        .execute(c)?);
    Ok(())
}

/// Overwrites an existing entry; false when there is none.
pub fn update(conn: &mut DbConn, row: &EntryRow) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::update(e::directory_entries.filter(e::mxid.eq(&row.mxid)))
        .set(row)
        .execute(c)?);
    Ok(n > 0)
}

/// Deletes the entry of `mxid`; false when there was none.
pub fn delete(conn: &mut DbConn, mxid: &str) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(e::directory_entries.filter(e::mxid.eq(mxid)))
        .execute(c)?);
    Ok(n > 0)
}

/// Inserts entries whose mxid is not taken yet (at most [`BULK_ROWS`] per statement; the caller
/// holds the transaction); returns how many were inserted.
pub fn insert_new(conn: &mut DbConn, rows: &[EntryRow]) -> Result<usize, StoreError> {
    let mut inserted = 0;
    for chunk in rows.chunks(BULK_ROWS) {
        inserted += match conn {
            DbConn::Pg(c) => diesel::insert_into(e::directory_entries)
                .values(chunk)
                .on_conflict_do_nothing()
                .execute(c)?,
            DbConn::Sqlite(c) => diesel::insert_or_ignore_into(e::directory_entries)
                .values(chunk)
                .execute(c)?,
        };
    }
    Ok(inserted)
}

/// Entries whose email lookup key is one of `keys`.
pub fn by_email_keys(conn: &mut DbConn, keys: &[String]) -> Result<Vec<EntryRow>, StoreError> {
    let mut rows = Vec::new();
    for chunk in keys.chunks(BULK_ROWS) {
        rows.extend(db_dispatch!(conn, c => e::directory_entries
            .filter(e::email_key.eq_any(chunk))
            .select(EntryRow::as_select())
            .load(c)?));
    }
    Ok(rows)
}

/// Up to `limit` entries that took their name or organisation from an LDAP record that no
/// longer exists.
pub fn orphaned_ldap_entries(conn: &mut DbConn, limit: i64) -> Result<Vec<EntryRow>, StoreError> {
    let record = l::ldap_names
        .filter(l::email_key.eq(e::email_key))
        .select(l::email_key);
    let from_ldap = e::name_source.eq("ldap").or(e::policy_organisation
        .is_null()
        .and(e::organisation.is_not_null()));
    Ok(db_dispatch!(conn, c => e::directory_entries
        .filter(from_ldap)
        .filter(diesel::dsl::not(diesel::dsl::exists(record)))
        .order(e::mxid)
        .limit(limit)
        .select(EntryRow::as_select())
        .load(c)?))
}

/// How many entries there are.
pub fn count(conn: &mut DbConn) -> Result<i64, StoreError> {
    Ok(db_dispatch!(conn, c => e::directory_entries.count().get_result(c)?))
}

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

/// One term of a tier: folded `[a-z0-9]+`, a whole word or a word prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermMatch {
    /// The folded term.
    pub text: String,
    /// It must equal a word, rather than start one.
    pub whole: bool,
}

impl TermMatch {
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
        DbConn::Sqlite(c) => {
            let tier = |c: &mut diesel::SqliteConnection, q: &IndexQuery| {
                SqliteTier {
                    fts5: &q.fts5,
                    show_externals: filter.show_externals,
                    organisation_key: filter.organisation_key.as_deref(),
                    limit: candidates,
                }
                .load::<Candidate>(c)
            };
            let broad = tier(c, &tiers.broad)?;
            if i64::try_from(broad.len()).unwrap_or(i64::MAX) < candidates {
                return Ok(broad);
            }
            let mut found = tier(c, &tiers.whole)?;
            if found.len() <= limit
                && let Some(typing) = &tiers.typing
            {
                found.extend(tier(c, typing)?);
            }
            found.extend(broad);
            Ok(found)
        }
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

/// One tier on SQLite: the FTS5 index drives the join (CROSS JOIN), and neither the index nor
/// the query sorts, so the cost is bounded by the limit. A statement diesel prepares once per
/// connection (its text never changes).
struct SqliteTier<'a> {
    fts5: &'a str,
    show_externals: bool,
    organisation_key: Option<&'a str>,
    limit: i64,
}

impl diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite> for SqliteTier<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::sqlite::Sqlite>,
    ) -> QueryResult<()> {
        out.push_sql(
            "SELECT e.mxid, e.name, e.organisation, e.avatar_url, \
                    e.search_name, e.search_organisation, e.search_localpart \
             FROM directory_fts CROSS JOIN directory_entries AS e ON e.id = directory_fts.rowid \
             WHERE directory_fts MATCH ",
        );
        out.push_bind_param::<Text, _>(self.fts5)?;
        out.push_sql(
            " AND e.visibility = 'visible' AND e.active \
             AND NOT EXISTS (SELECT 1 FROM directory_opt_outs AS o WHERE o.mxid = e.mxid) AND (",
        );
        out.push_bind_param::<Bool, _>(&self.show_externals)?;
        out.push_sql(" OR NOT e.external) AND (");
        out.push_bind_param::<Nullable<Text>, _>(&self.organisation_key)?;
        out.push_sql(" IS NULL OR e.organisation_key = ");
        out.push_bind_param::<Nullable<Text>, _>(&self.organisation_key)?;
        out.push_sql(") LIMIT ");
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
        out.push_sql(" AND w.listed AND (");
        out.push_bind_param::<Bool, _>(&self.filter.show_externals)?;
        out.push_sql(" OR NOT w.external) AND (");
        out.push_bind_param::<Nullable<Text>, _>(&self.filter.organisation_key)?;
        out.push_sql(
            "::text IS NULL OR EXISTS (SELECT 1 FROM directory_entries AS e \
             WHERE e.mxid = w.mxid AND e.organisation_key = ",
        );
        out.push_bind_param::<Nullable<Text>, _>(&self.filter.organisation_key)?;
        out.push_sql(
            ")) AND NOT EXISTS (SELECT 1 FROM directory_opt_outs AS o WHERE o.mxid = w.mxid) \
             ORDER BY w.word LIMIT ",
        );
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
        out.push_sql(
            "::tsquery AND s.visibility = 'visible' AND s.active \
             AND NOT EXISTS (SELECT 1 FROM directory_opt_outs AS o WHERE o.mxid = s.mxid) AND (",
        );
        out.push_bind_param::<Bool, _>(&self.filter.show_externals)?;
        out.push_sql(" OR NOT s.external) AND (");
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

/// Records that replication batch `batch` of `homeserver` is being applied, unless it is not
/// newer than the last one accepted: returns false for a stale batch (one statement, so two
/// concurrent deliveries cannot both pass).
pub fn accept_replication_batch(
    conn: &mut DbConn,
    homeserver: &str,
    batch: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    use diesel::query_dsl::methods::FilterDsl;
    let n = db_dispatch!(conn, c => FilterDsl::filter(
        diesel::insert_into(r::directory_replication)
            .values((
                r::homeserver.eq(homeserver),
                r::last_batch.eq(batch),
                r::updated_at.eq(now_ms),
            ))
            .on_conflict(r::homeserver)
            .do_update()
            .set((r::last_batch.eq(batch), r::updated_at.eq(now_ms))),
        r::last_batch.lt(batch),
    )
    .execute(c)?);
    Ok(n > 0)
}

/// The last batch accepted from `homeserver`.
pub fn last_replication_batch(
    conn: &mut DbConn,
    homeserver: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(db_dispatch!(conn, c => directory_replication::table
        .filter(r::homeserver.eq(homeserver))
        .select(r::last_batch)
        .first(c)
        .optional()?))
}

/// Applies a replicated profile to the entry of `mxid` on `homeserver` (an entry of another
/// homeserver is never touched); false when there is no such entry.
pub fn apply_replicated_profile(
    conn: &mut DbConn,
    mxid: &str,
    homeserver: &str,
    avatar_url: Option<&str>,
    active: bool,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let target = e::directory_entries
        .filter(e::mxid.eq(mxid))
        .filter(e::homeserver.eq(homeserver));
    let n = if active {
        db_dispatch!(conn, c => diesel::update(target)
            .set((e::avatar_url.eq(avatar_url), e::active.eq(true), e::updated_at.eq(now_ms)))
            .execute(c)?)
    } else {
        // A deactivated account's profile is gone; its avatar is kept for a reactivation.
        db_dispatch!(conn, c => diesel::update(target)
            .set((e::active.eq(false), e::updated_at.eq(now_ms)))
            .execute(c)?)
    };
    Ok(n > 0)
}

/// A name record read from the agency LDAP directory.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = ldap_names)]
#[diesel(treat_none_as_null = true)]
pub struct LdapNameRow {
    pub email_key: String,
    pub name: String,
    pub organisation: Option<String>,
    pub dn: String,
    pub sync_run: String,
    pub synced_at: i64,
}

/// The LDAP record of an email lookup key.
pub fn ldap_name(conn: &mut DbConn, email_key: &str) -> Result<Option<LdapNameRow>, StoreError> {
    Ok(db_dispatch!(conn, c => l::ldap_names
        .filter(l::email_key.eq(email_key))
        .select(LdapNameRow::as_select())
        .first(c)
        .optional()?))
}

/// The LDAP records of these email lookup keys.
pub fn ldap_names_by_keys(
    conn: &mut DbConn,
    keys: &[String],
) -> Result<Vec<LdapNameRow>, StoreError> {
    let mut rows = Vec::new();
    for chunk in keys.chunks(BULK_ROWS) {
        rows.extend(db_dispatch!(conn, c => l::ldap_names
            .filter(l::email_key.eq_any(chunk))
            .select(LdapNameRow::as_select())
            .load(c)?));
    }
    Ok(rows)
}

/// Which of these user IDs have an entry.
pub fn existing_mxids(conn: &mut DbConn, mxids: &[String]) -> Result<Vec<String>, StoreError> {
    let mut found = Vec::new();
    for chunk in mxids.chunks(BULK_ROWS) {
        found.extend(db_dispatch!(conn, c => e::directory_entries
            .filter(e::mxid.eq_any(chunk))
            .select(e::mxid)
            .load::<String>(c)?));
    }
    Ok(found)
}

/// Creates or replaces LDAP records.
pub fn upsert_ldap_names(conn: &mut DbConn, rows: &[LdapNameRow]) -> Result<(), StoreError> {
    for row in rows {
        db_dispatch!(conn, c => diesel::insert_into(l::ldap_names)
            .values(row)
            .on_conflict(l::email_key)
            .do_update()
            .set(row)
            .execute(c)?);
    }
    Ok(())
}

/// Deletes the LDAP records that sync run `run` did not see; returns how many.
pub fn delete_ldap_names_not_in_run(conn: &mut DbConn, run: &str) -> Result<usize, StoreError> {
    Ok(
        db_dispatch!(conn, c => diesel::delete(l::ldap_names.filter(l::sync_run.ne(run)))
        .execute(c)?),
    )
}

/// Every stored LDAP record's key (a dry-run sync compares them with what it read).
pub fn ldap_name_keys(conn: &mut DbConn) -> Result<Vec<String>, StoreError> {
    Ok(db_dispatch!(conn, c => l::ldap_names.select(l::email_key).load(c)?))
}

/// The email keys of entries that took their name or organisation from LDAP.
pub fn ldap_sourced_email_keys(conn: &mut DbConn) -> Result<Vec<String>, StoreError> {
    let from_ldap = e::name_source.eq("ldap").or(e::policy_organisation
        .is_null()
        .and(e::organisation.is_not_null()));
    Ok(db_dispatch!(conn, c => e::directory_entries
        .filter(from_ldap)
        .select(e::email_key)
        .load(c)?))
}

/// A held job lock: a PostgreSQL session advisory lock on a connection kept out of the pool
/// until dropped (drop it on a blocking thread: it unlocks). On SQLite one instance owns the
/// database, so the lock is always granted.
pub struct JobLock {
    conn: super::PooledConn,
    key: i64,
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock").field("key", &self.key).finish()
    }
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Takes the job lock `key` unless another session holds it (blocking; call from a blocking
/// thread).
pub fn try_job_lock(db: &super::Db, key: i64) -> Result<Option<JobLock>, StoreError> {
    let mut conn = db.get()?;
    if let DbConn::Pg(pg) = &mut *conn {
        let row: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind::<BigInt, _>(key)
            .get_result(pg)?;
        if !row.locked {
            return Ok(None);
        }
    }
    Ok(Some(JobLock { conn, key }))
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if let DbConn::Pg(pg) = &mut *self.conn {
            let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
                .bind::<BigInt, _>(self.key)
                .execute(pg);
            if let Err(e) = unlocked {
                tracing::warn!(error = %e, "could not release a job lock");
            }
        }
    }
}
