//! Searching the directory: who may search, how the index is queried, how results are ranked.
//!
//! # How a search runs
//!
//! The database applies the prefix query and the visibility filters (hidden, inactive and,
//! unless `directory.show_externals`, external entries are never candidates) and returns at
//! most `directory.search_candidates` entries per *tier*, in index order, without sorting: the
//! cost is bounded even when a short prefix matches most of the directory. The exact ranking
//! ([`super::search::rank`], then the folded name, then the user id) orders the candidates in
//! Rust. The tiers follow the ranking's first criterion, the number of terms that are whole
//! words:
//!
//! 1. every term a whole word (`"jean" AND "dupont"`);
//! 2. every term but the last a whole word, the last a prefix (`"jean" AND "dup"*`: someone
//!    typing);
//! 3. every term a prefix (`"jea"* AND "dup"*`).
//!
//! Tier 3 holds every match, so it is asked first: when it has fewer candidates than the
//! bound, it is the whole answer. Otherwise tier 1, and when tier 1 alone yields more
//! candidates than the limit nothing else could rank before them and tier 2 is skipped (see
//! `store::directory::search`: PostgreSQL runs them in one statement; SQLite reads each tier in
//! rowid order, and tiers 1 and 2 read on from where tier 3 stopped, since their earlier
//! matches are among its candidates).
//!
//! # Exactness
//!
//! When a tier has no more matches than the candidate bound, its ranking is exact. When it has
//! more (a one- or two-letter prefix over a large directory), the results are the best-ranked
//! among the first candidates in index order (insertion order), not among all matches, and
//! `limited` is true: people type another letter. Whole-word matches are still found before
//! mere prefixes because they have their own tier.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use super::error::DirectoryError;
use super::names::format_display_name;
use super::search::{SearchKey, SearchQuery, fold, parse_query, rank};
use crate::cache::TtlCache;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::federation::FederationClient;
use crate::ratelimit::KeyedLimit;
use crate::store::Db;
use crate::store::directory::{
    self as store, Candidate, IndexQuery, SearchFilter, SearchTiers, TermMatch,
};

/// Results returned when the caller does not say.
pub const DEFAULT_LIMIT: u32 = 10;
/// The most results a search returns.
pub const MAX_LIMIT: u32 = 50;

/// Who is searching; decides whether they may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// A Matrix user, authenticated by their homeserver (client API).
    User {
        /// Their user id.
        user_id: String,
    },
    /// A homeserver searching for its users (Tchap-compatible identity API).
    Homeserver {
        /// Its server name.
        server_name: String,
    },
    /// The operator, from the command line.
    Operator,
}

/// One result, in the Matrix client API's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SearchResult {
    /// The user id.
    pub user_id: String,
    /// The published name: verified name and organisation label.
    pub display_name: String,
    /// The avatar, when the homeserver replicated one.
    pub avatar_url: Option<String>,
}

/// A page of results, in the Matrix client API's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SearchResults {
    /// True when more entries match than were returned.
    pub limited: bool,
    /// Best first.
    pub results: Vec<SearchResult>,
}

/// What the directory service is built from.
pub struct DirectoryParts {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub db: Db,
    /// The clock every expiry decision reads.
    pub clock: SharedClock,
    /// Calls to homeservers (whoami, signed requests' keys).
    pub federation: FederationClient,
}

/// The cross-shard directory: entries, verified names, search and who may search. Its only
/// in-memory state is the whoami cache, which no other instance needs (each one asks the
/// homeserver itself).
pub struct DirectoryService {
    pub(crate) config: Arc<Config>,
    pub(crate) db: Db,
    pub(crate) clock: SharedClock,
    pub(crate) federation: FederationClient,
    /// Hash of a client's access token → its user id, for `directory.whoami_cache_ttl`.
    pub(crate) whoami: TtlCache<[u8; 32], String>,
    /// MSC4258 searches per calling server (`rate_limits.federated_search_per_server`).
    pub(crate) federated_search_limit: KeyedLimit<String>,
}

impl std::fmt::Debug for DirectoryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryService")
            .field("whoami", &self.whoami)
            .finish_non_exhaustive()
    }
}

/// The most whoami answers kept: a bound on memory that strangers' tokens cannot push.
const MAX_CACHED_TOKENS: usize = 100_000;

impl DirectoryService {
    /// A directory over the given parts.
    pub fn new(parts: DirectoryParts) -> DirectoryService {
        DirectoryService {
            whoami: TtlCache::new(MAX_CACHED_TOKENS, parts.clock.clone()),
            federated_search_limit: KeyedLimit::new(
                &parts.config.rate_limits.federated_search_per_server,
            ),
            config: parts.config,
            db: parts.db,
            clock: parts.clock,
            federation: parts.federation,
        }
    }
}

impl DirectoryService {
    /// Forgets idle rate-limit buckets (called periodically).
    pub fn housekeep(&self) {
        self.federated_search_limit.housekeep();
    }

    /// The externals' homeserver: its users are external.
    pub(crate) fn external_homeserver(&self) -> Option<&str> {
        self.config.policy.external_homeserver.as_deref()
    }

    /// Refuses external viewers unless `directory.externals_may_search`.
    async fn check_viewer(&self, viewer: &Viewer) -> Result<(), DirectoryError> {
        if self.config.directory.externals_may_search {
            return Ok(());
        }
        let external_hs = self.external_homeserver();
        match viewer {
            Viewer::Operator => Ok(()),
            Viewer::Homeserver { server_name } => {
                if external_hs == Some(server_name.as_str()) {
                    Err(DirectoryError::ExternalsMayNotSearch)
                } else {
                    Ok(())
                }
            }
            Viewer::User { user_id } => {
                let (_, server) = super::entries::split_user_id(user_id)?;
                if external_hs == Some(server) {
                    return Err(DirectoryError::ExternalsMayNotSearch);
                }
                let owned = user_id.clone();
                let own = self.db.run(move |conn| store::get(conn, &owned)).await?;
                if own.is_some_and(|entry| entry.external) {
                    return Err(DirectoryError::ExternalsMayNotSearch);
                }
                Ok(())
            }
        }
    }

    /// Searches the directory for `query` (every term a word prefix), optionally within one
    /// organisation (compared folded), as `viewer`. `limit` defaults to [`DEFAULT_LIMIT`] and is
    /// capped at [`MAX_LIMIT`].
    pub async fn search(
        &self,
        query: &str,
        organisation: Option<&str>,
        limit: Option<u32>,
        viewer: Viewer,
    ) -> Result<SearchResults, DirectoryError> {
        self.check_viewer(&viewer).await?;
        let parsed = parse_query(query)?;
        let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as usize;
        let filter = SearchFilter {
            show_externals: self.config.directory.show_externals,
            organisation_key: organisation.map(fold).filter(|o| !o.is_empty()),
        };
        let candidates_per_tier = i64::from(self.config.directory.search_candidates);
        let tiers = tiers(&parsed);
        let candidates = self
            .db
            .run(move |conn| {
                let mut seen = HashSet::new();
                let mut candidates: Vec<Candidate> = Vec::new();
                for candidate in store::search(conn, &tiers, &filter, candidates_per_tier, limit)? {
                    if seen.insert(candidate.mxid.clone()) {
                        candidates.push(candidate);
                    }
                }
                Ok(candidates)
            })
            .await?;

        let mut ranked: Vec<_> = candidates
            .into_iter()
            .filter_map(|c| {
                let key = SearchKey {
                    name: c.search_name.clone(),
                    organisation: c.search_organisation.clone(),
                    localpart: c.search_localpart.clone(),
                    all: String::new(),
                };
                rank(&parsed, &key).map(|r| (r, c))
            })
            .collect();
        ranked.sort_by(|(ra, a), (rb, b)| {
            ra.cmp(rb)
                .then_with(|| a.search_name.cmp(&b.search_name))
                .then_with(|| a.mxid.cmp(&b.mxid))
        });
        let limited = ranked.len() > limit;
        let format = &self.config.directory.display_name_format;
        let results = ranked
            .into_iter()
            .take(limit)
            .map(|(_, c)| SearchResult {
                display_name: format_display_name(format, &c.name, c.organisation.as_deref()),
                user_id: c.mxid,
                avatar_url: c.avatar_url,
            })
            .collect();
        Ok(SearchResults { limited, results })
    }
}

/// The index queries of each tier (see the module documentation).
pub fn tiers(query: &SearchQuery) -> SearchTiers {
    let n = query.terms.len();
    SearchTiers {
        broad: index_query(query, 0),
        whole: index_query(query, n),
        typing: (n >= 2).then(|| index_query(query, n - 1)),
    }
}

/// Terms before `first_prefix` must be whole words, the others prefixes (in FTS5 and tsquery
/// syntaxes cut to [`store::MAX_INDEXED_PREFIX`] letters: the prefix indexes hold no longer ones; the
/// word ranges of PostgreSQL hold whole words and take them whole).
fn index_query(query: &SearchQuery, first_prefix: usize) -> IndexQuery {
    let mut fts5 = Vec::new();
    let mut tsquery = Vec::new();
    let mut terms = Vec::new();
    for (i, term) in query.terms.iter().enumerate() {
        // Folded terms are [a-z0-9]+; filtering again keeps both syntaxes safe whatever
        // reaches here.
        let clean: String = term.chars().filter(char::is_ascii_alphanumeric).collect();
        if clean.is_empty() {
            continue;
        }
        // PostgreSQL's word ranges hold whole words: no cut.
        let term = TermMatch {
            whole: i < first_prefix,
            text: clean,
        };
        let indexed = term.indexed();
        if term.whole {
            fts5.push(format!("\"{indexed}\""));
            tsquery.push(format!("'{indexed}'"));
        } else {
            fts5.push(format!("\"{indexed}\"*"));
            tsquery.push(format!("'{indexed}*'"));
        }
        terms.push(term);
    }
    IndexQuery {
        fts5: fts5.join(" AND "),
        tsquery: tsquery.join(" & "),
        terms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_go_from_whole_words_to_prefixes() {
        let q = parse_query("Jéan dup").unwrap();
        let t = tiers(&q);
        let typing = t.typing.clone().unwrap();
        assert_eq!(
            [&t.whole.fts5, &typing.fts5, &t.broad.fts5],
            [
                r#""jean" AND "dup""#,
                r#""jean" AND "dup"*"#,
                r#""jean"* AND "dup"*"#
            ]
        );
        assert_eq!(
            [&t.whole.tsquery, &typing.tsquery, &t.broad.tsquery],
            ["'jean' & 'dup'", "'jean' & 'dup*'", "'jean*' & 'dup*'"]
        );
        let term = |text: &str, whole| TermMatch {
            text: text.into(),
            whole,
        };
        assert_eq!(
            [&t.whole.terms, &typing.terms, &t.broad.terms],
            [
                &vec![term("jean", true), term("dup", true)],
                &vec![term("jean", true), term("dup", false)],
                &vec![term("jean", false), term("dup", false)]
            ]
        );
        // One- and two-letter prefixes are prefixes like any other.
        let q = parse_query("marie m").unwrap();
        let typing = tiers(&q).typing.unwrap();
        assert_eq!(typing.tsquery, "'marie' & 'm*'");
        assert_eq!(typing.terms, vec![term("marie", true), term("m", false)]);
        let q = parse_query("helene").unwrap();
        let t = tiers(&q);
        assert_eq!(t.typing, None, "one term: whole word, then prefix");
        assert_eq!(
            (t.whole.fts5.as_str(), t.broad.fts5.as_str()),
            (r#""helene""#, r#""helene"*"#)
        );
        // Long prefixes are cut (rank() checks the whole term); whole words are not.
        let q = parse_query("bundesministerium").unwrap();
        let t = tiers(&q);
        assert_eq!(t.whole.fts5, r#""bundesministerium""#);
        assert_eq!(t.whole.tsquery, "'bundesministerium'");
        assert_eq!(t.whole.terms, vec![term("bundesministerium", true)]);
        assert_eq!(t.broad.fts5, r#""bundesmi"*"#);
        assert_eq!(t.broad.tsquery, "'bundesmi*'");
        assert_eq!(t.broad.terms, vec![term("bundesministerium", false)]);
    }

    #[test]
    fn hand_built_terms_cannot_escape() {
        let q = SearchQuery {
            terms: vec!["a\"b".into(), "x' | !y:* & (z".into(), "&|!".into()],
        };
        let t = index_query(&q, 1);
        assert_eq!(t.fts5, r#""ab" AND "xyz"*"#);
        assert_eq!(t.tsquery, "'ab' & 'xyz*'");
        let texts: Vec<_> = t.terms.iter().map(|t| (t.text.as_str(), t.whole)).collect();
        assert_eq!(texts, [("ab", true), ("xyz", false)]);
    }
}
