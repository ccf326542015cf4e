//! The federated user directory of MSC4258 ("Federated User Directory", written by the Tchap
//! team): a homeserver asks a remote directory for users, on behalf of one of its users, over
//! federation.
//!
//! Revision followed: the MSC text at commit `9b60af68ea131d1e115dda38f211f40b930362cd`
//! (2025-12-10, "add requester to the fed request") of matrix-org/matrix-spec-proposals#4258,
//! and the unstable prefix that the implementations use (element-hq/synapse#19995 and Tchap's
//! Synapse): `POST /_matrix/federation/unstable/org.matrix.msc4258/user_directory/search`.
//! The stable path the MSC proposes (`/_matrix/federation/v3/user_directory/search`) and the
//! prefix its text still names (`/unstable/fr.tchap/…`) are served too.
//!
//! - Authentication: `Authorization: X-Matrix` (the server-server request signature), origin
//!   key from `/_matrix/key/v2/server`. The origin must be in
//!   `directory.federated_search_servers` (checked before any key is fetched); the signed
//!   `destination` must be a server this directory answers for: `server.name`, a server name
//!   of `directory.client_hosts`, or one of `directory.allowed_homeservers` (the request
//!   reaches annuaire through a homeserver's reverse proxy). Otherwise 401.
//! - Body `{requester, search_term, limit}`: `requester` is required and must be a user of the
//!   origin ("we MUST check that the server name of the requester matches the requester
//!   server"); `search_term` a non-empty string; `limit` an integer, default 10, clamped to
//!   0–50 (as Synapse's implementation). Anything else is 400 `M_BAD_JSON`.
//! - Terms shorter than 3 characters get no results (the MSC's recommendation against
//!   scraping; annuaire does not make the "exact match" exception).
//! - Results are what the directory's visibility rules let that requester see, exactly as for
//!   a search by a local user: hidden, inactive and (unless `directory.show_externals`)
//!   external entries never appear, and a requester who is an external user (or the externals'
//!   homeserver) may not search unless `directory.externals_may_search` (403).
//! - Never forwarded to other servers; rate-limited per origin
//!   (`rate_limits.federated_search_per_server`, 429); every request is logged and counted
//!   per origin.

use serde_json::Value;

use super::access::SignedRequest;
use super::error::DirectoryError;
use super::service::{DirectoryService, SearchResults, Viewer};
use crate::matrix::xmatrix::XMatrixAuth;

/// Results when the request does not say (the client API's default).
pub const DEFAULT_FEDERATED_LIMIT: i64 = 10;
/// The most results one federated search returns.
pub const MAX_FEDERATED_LIMIT: i64 = 50;
/// Shorter search terms (in characters, spaces trimmed) get no results.
pub const MIN_TERM_CHARS: usize = 3;
/// In `directory.federated_search_servers`: any server whose signature verifies.
pub const ANY_SERVER: &str = "*";

/// A validated MSC4258 request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedQuery {
    /// The user on the calling server who searches.
    pub requester: String,
    /// The search term.
    pub search_term: String,
    /// Results wanted, 0 to [`MAX_FEDERATED_LIMIT`].
    pub limit: u32,
}

/// Reads and checks an MSC4258 body sent by `origin` (pure).
pub fn parse_federated_query(body: &Value, origin: &str) -> Result<FederatedQuery, DirectoryError> {
    let requester = body
        .get("requester")
        .and_then(Value::as_str)
        .filter(|r| {
            r.starts_with('@')
                && r.len() <= 255
                && super::entries::split_user_id(r).is_ok_and(|(_, server)| server == origin)
        })
        .ok_or_else(|| {
            DirectoryError::BadJson(format!(
                "Missing or invalid requester: a user ID of the requesting server ({origin}) is required"
            ))
        })?;
    let search_term = body
        .get("search_term")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| DirectoryError::BadJson("Missing or invalid search_term".into()))?;
    let limit = match body.get("limit") {
        None | Some(Value::Null) => DEFAULT_FEDERATED_LIMIT,
        Some(value) => value
            .as_i64()
            .ok_or_else(|| DirectoryError::BadJson("limit must be an integer".into()))?,
    };
    let limit = u32::try_from(limit.clamp(0, MAX_FEDERATED_LIMIT)).unwrap_or(0);
    Ok(FederatedQuery {
        requester: requester.to_owned(),
        search_term: search_term.to_owned(),
        limit,
    })
}

impl DirectoryService {
    /// `POST /_matrix/federation/…/user_directory/search` (MSC4258): authenticates the calling
    /// server, then searches as its requesting user would (see the module documentation).
    pub async fn federated_search(
        &self,
        request: SignedRequest<'_>,
    ) -> Result<SearchResults, DirectoryError> {
        let origin = self.authenticate_federation(&request).await?;
        if let Err(retry_after_ms) = self.federated_search_limit.check(&origin) {
            tracing::info!(origin, "federated directory search: rate limited");
            count(
                &origin,
                "rate_limited",
                self.config.directory.federated_search_servers.as_slice(),
            );
            return Err(DirectoryError::RateLimited { retry_after_ms });
        }
        let query = parse_federated_query(request.body, &origin)?;
        let empty = SearchResults {
            limited: false,
            results: Vec::new(),
        };
        let allowed = self.config.directory.federated_search_servers.as_slice();
        if query.limit == 0 || query.search_term.trim().chars().count() < MIN_TERM_CHARS {
            tracing::info!(
                origin,
                results = 0,
                "federated directory search: term too short"
            );
            count(&origin, "too_short", allowed);
            return Ok(empty);
        }
        let viewer = Viewer::User {
            user_id: query.requester,
        };
        let results = match self
            .search(&query.search_term, None, Some(query.limit), viewer)
            .await
        {
            // A term with nothing searchable in it finds nobody.
            Err(DirectoryError::Query(_)) => empty,
            other => other?,
        };
        tracing::info!(
            origin,
            results = results.results.len(),
            "federated directory search"
        );
        count(&origin, "answered", allowed);
        Ok(results)
    }

    /// The server that signed an MSC4258 request (X-Matrix only).
    async fn authenticate_federation(
        &self,
        request: &SignedRequest<'_>,
    ) -> Result<String, DirectoryError> {
        let header = request
            .authorization
            .filter(|h| h.trim_start().to_ascii_lowercase().starts_with("x-matrix"))
            .ok_or(DirectoryError::Unauthenticated)?;
        let auth =
            XMatrixAuth::parse(header).map_err(|e| DirectoryError::BadSignature(e.to_string()))?;
        let allowed = &self.config.directory.federated_search_servers;
        if !allowed.iter().any(|a| a == ANY_SERVER || *a == auth.origin) {
            return Err(DirectoryError::HomeserverNotAllowed(auth.origin));
        }
        let destination = match &auth.destination {
            Some(destination) if self.answers_for(destination) => destination.clone(),
            Some(destination) => {
                return Err(DirectoryError::WrongDestination(destination.clone()));
            }
            // Older servers do not send it; they signed for the name they called.
            None => self.config.server.name.clone(),
        };
        self.federation
            .verify_xmatrix(
                header,
                request.method,
                request.uri,
                &destination,
                Some(request.body),
            )
            .await
            .map_err(super::access::federation_failure)
    }

    /// Whether requests addressed to `server_name` are for this directory.
    fn answers_for(&self, server_name: &str) -> bool {
        let config = &self.config;
        config.server.name == server_name
            || config
                .directory
                .client_hosts
                .values()
                .any(|h| h.server_name == server_name)
            || config
                .directory
                .allowed_homeservers
                .iter()
                .any(|s| s == server_name)
    }
}

/// Counts a federated search by origin (servers listed by name; `other` for those `*` admits,
/// so that strangers cannot grow the metric's labels).
fn count(origin: &str, outcome: &'static str, allowed: &[String]) {
    let label = if allowed.iter().any(|a| a == origin) {
        origin.to_owned()
    } else {
        "other".to_owned()
    };
    metrics::counter!(
        "annuaire_federated_search_requests_total",
        "origin" => label,
        "outcome" => outcome
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_are_checked_as_the_msc_says() {
        let q = parse_federated_query(
            &json!({"requester": "@ann:remote.example", "search_term": "dupont", "limit": 5}),
            "remote.example",
        )
        .unwrap();
        assert_eq!(q.requester, "@ann:remote.example");
        assert_eq!(q.search_term, "dupont");
        assert_eq!(q.limit, 5);
        let q = parse_federated_query(
            &json!({"requester": "@ann:remote.example", "search_term": "x"}),
            "remote.example",
        )
        .unwrap();
        assert_eq!(q.limit, 10);
        let clamped = |limit: Value| {
            parse_federated_query(
                &json!({"requester": "@a:r.example", "search_term": "x", "limit": limit}),
                "r.example",
            )
            .unwrap()
            .limit
        };
        assert_eq!(clamped(json!(500)), 50);
        assert_eq!(clamped(json!(-3)), 0);
        assert_eq!(clamped(json!(null)), 10);

        for (body, what) in [
            (json!({"search_term": "dupont"}), "requester"),
            (
                json!({"requester": "@ann:other.example", "search_term": "dupont"}),
                "requester",
            ),
            (
                json!({"requester": "ann", "search_term": "dupont"}),
                "requester",
            ),
            (
                json!({"requester": 3, "search_term": "dupont"}),
                "requester",
            ),
            (json!({"requester": "@ann:remote.example"}), "search_term"),
            (
                json!({"requester": "@ann:remote.example", "search_term": ""}),
                "search_term",
            ),
            (
                json!({"requester": "@ann:remote.example", "search_term": ["a"]}),
                "search_term",
            ),
            (
                json!({"requester": "@ann:remote.example", "search_term": "a", "limit": "5"}),
                "limit",
            ),
            (
                json!({"requester": "@ann:remote.example", "search_term": "a", "limit": 2.5}),
                "limit",
            ),
        ] {
            let e = parse_federated_query(&body, "remote.example").unwrap_err();
            assert!(matches!(e, DirectoryError::BadJson(_)), "{body}: {e:?}");
            assert!(e.to_string().contains(what), "{body}: {e}");
        }
    }
}
