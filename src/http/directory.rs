//! The directory's endpoints: the stock Matrix client search (reached through a reverse proxy
//! that keeps the `Host` header), and the Tchap-compatible homeserver search and profile
//! replication (signed by an allowed homeserver).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ErrorBody};
use super::extract::{RawBody, XMatrix, parse_json_object, parse_query};
use super::{AppData, Empty, resource};
use crate::directory::access::SignedRequest;
use crate::directory::replication::ReplicationBatch;
use crate::directory::{self, Viewer};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/_matrix/client/v3/user_directory/search").route(web::post().to(client_search)),
    )
    .service(
        resource("/_matrix/client/r0/user_directory/search")
            .route(web::post().to(client_search_r0)),
    )
    .service(
        resource("/_matrix/identity/api/v1/user_directory/search")
            .route(web::post().to(homeserver_search)),
    )
    .service(
        resource("/_matrix/identity/api/v1/replicate_profiles")
            .route(web::post().to(replicate_profiles)),
    )
    // MSC4258: the unstable prefix implementations use, the stable path the MSC proposes, and
    // the prefix its text still names.
    .service(
        resource("/_matrix/federation/unstable/org.matrix.msc4258/user_directory/search")
            .route(web::post().to(federated_search)),
    )
    .service(
        resource("/_matrix/federation/v3/user_directory/search")
            .route(web::post().to(federated_search_v3)),
    )
    .service(
        resource("/_matrix/federation/unstable/fr.tchap/user_directory/search")
            .route(web::post().to(federated_search_fr_tchap)),
    );
}

/// The access token: `Authorization: Bearer …`, else `?access_token=…` (both are Matrix).
fn access_token(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let text = value.to_str().unwrap_or_default().trim();
        return Ok(text
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned()));
    }
    #[derive(Deserialize)]
    struct Query {
        access_token: Option<String>,
    }
    Ok(parse_query::<Query>(req.query_string())?.access_token)
}

/// The `Host` the client used (HTTP/2 carries it in the URI).
fn request_host(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
}

/// A search request: the Matrix client API's body, plus an optional organisation filter (an
/// annuaire extension that stock clients do not send).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct SearchBody {
    /// The terms: each a prefix of a word of the name, organisation or user id.
    search_term: String,
    /// Results wanted (1 to 50, default 10).
    #[serde(default)]
    limit: Option<i64>,
    /// Only this organisation (compared without case or accents).
    #[serde(default)]
    organisation: Option<String>,
}

impl SearchBody {
    fn limit(&self) -> Option<u32> {
        self.limit.map(|l| {
            u32::try_from(l.clamp(1, i64::from(directory::service::MAX_LIMIT))).unwrap_or(1)
        })
    }
}

async fn run_search(
    app: &AppData,
    body: SearchBody,
    viewer: Viewer,
) -> Result<HttpResponse, ApiError> {
    let results = app
        .directory
        .search(
            &body.search_term,
            body.organisation.as_deref(),
            body.limit(),
            viewer,
        )
        .await?;
    Ok(HttpResponse::Ok().json(results))
}

/// # POST /_matrix/client/v3/user_directory/search
///
/// Reached through a reverse proxy that keeps the `Host` header: the caller's access token is
/// checked with whoami on the homeserver that `directory.client_hosts` maps that host to.
#[utoipa::path(post, path = "/_matrix/client/v3/user_directory/search", tag = "directory",
    summary = "Search the directory of every shard (stock Matrix clients)",
    security(("client_token" = [])),
    request_body = SearchBody,
    responses(
        (status = 200, description = "The best results first", body = directory::SearchResults),
        (status = 400, description = "M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN, M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: unknown host, external user, token of another homeserver", body = ErrorBody),
        (status = 502, description = "M_UNKNOWN: the homeserver did not answer whoami", body = ErrorBody),
    ))]
pub(super) async fn client_search(
    app: AppData,
    req: HttpRequest,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let token = access_token(&req)?;
    let viewer = app
        .directory
        .authenticate_client(request_host(&req).as_deref(), token.as_deref())
        .await?;
    let body: SearchBody = parse_json_object(&body.0)?;
    run_search(&app, body, viewer).await
}

/// # POST /_matrix/client/r0/user_directory/search
///
/// The same as the v3 path, for older clients.
#[utoipa::path(post, path = "/_matrix/client/r0/user_directory/search", tag = "directory",
    summary = "Search the directory of every shard (stock Matrix clients, r0)",
    security(("client_token" = [])),
    request_body = SearchBody,
    responses(
        (status = 200, description = "The best results first", body = directory::SearchResults),
        (status = 400, description = "M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN, M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN", body = ErrorBody),
        (status = 502, description = "M_UNKNOWN", body = ErrorBody),
    ))]
pub(super) async fn client_search_r0(
    app: AppData,
    req: HttpRequest,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    client_search(app, req, body).await
}

fn signed_request<'a>(signed: &'a XMatrix, body: &'a Value) -> SignedRequest<'a> {
    SignedRequest {
        authorization: signed.authorization.as_deref(),
        method: &signed.method,
        uri: &signed.uri,
        body,
    }
}

/// # POST /_matrix/identity/api/v1/user_directory/search
#[utoipa::path(post, path = "/_matrix/identity/api/v1/user_directory/search", tag = "directory",
    summary = "Search the directory (Tchap-compatible, for homeservers)",
    description = "Signed by a homeserver of `directory.allowed_homeservers` (X-Matrix, or signed JSON).",
    security(("x_matrix" = [])),
    request_body = SearchBody,
    responses(
        (status = 200, description = "The best results first", body = directory::SearchResults),
        (status = 400, description = "M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED: not signed", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: bad signature, homeserver not allowed, externals' homeserver", body = ErrorBody),
    ))]
pub(super) async fn homeserver_search(
    app: AppData,
    signed: XMatrix,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let value: Value = parse_json_object(&body.0)?;
    let origin = app
        .directory
        .authenticate_homeserver(signed_request(&signed, &value), None)
        .await?;
    let body: SearchBody = parse_json_object(&body.0)?;
    run_search(
        &app,
        body,
        Viewer::Homeserver {
            server_name: origin,
        },
    )
    .await
}

/// # POST /_matrix/identity/api/v1/replicate_profiles
#[utoipa::path(post, path = "/_matrix/identity/api/v1/replicate_profiles", tag = "directory",
    summary = "Profile replication from a homeserver (Tchap-compatible)",
    description = "Signed by an allowed homeserver; applies avatars and deactivations to that homeserver's own users only.",
    security(("x_matrix" = [])),
    request_body(content = Object, description = "`{batch, origin_server, replication_data: {<user_id>: {avatar_url?, deactivated?, …}}}`"),
    responses(
        (status = 200, description = "`{}`", body = Empty),
        (status = 400, description = "M_INVALID_PARAM (a stale or malformed batch), M_MISSING_PARAMS", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED: not signed", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: bad signature, homeserver not allowed, a user of another homeserver", body = ErrorBody),
    ))]
pub(super) async fn replicate_profiles(
    app: AppData,
    signed: XMatrix,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let value: Value = parse_json_object(&body.0)?;
    let origin_server = value
        .get("origin_server")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::missing_params("Missing parameter: origin_server"))?;
    let origin = app
        .directory
        .authenticate_homeserver(signed_request(&signed, &value), Some(origin_server))
        .await?;
    let batch: ReplicationBatch = parse_json_object(&body.0)?;
    app.directory.replicate_profiles(&origin, batch).await?;
    Ok(HttpResponse::Ok().json(Empty {}))
}

/// The MSC4258 request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: `directory::federated` reads the body.
pub(super) struct FederatedSearchBody {
    /// The user of the calling server who searches (must be on the signing server).
    requester: String,
    /// The search term (fewer than 3 characters: no results).
    search_term: String,
    /// Results wanted (0 to 50, default 10).
    #[serde(default)]
    limit: Option<i64>,
}

/// # POST /_matrix/federation/unstable/org.matrix.msc4258/user_directory/search
///
/// MSC4258 at its 2025-12-10 revision (`requester` in the body); see `directory::federated`.
#[utoipa::path(post, path = "/_matrix/federation/unstable/org.matrix.msc4258/user_directory/search", tag = "directory",
    summary = "Federated user directory search (MSC4258, unstable prefix)",
    description = "MSC4258 (matrix-spec-proposals#4258 at 9b60af68, 2025-12-10). Signed with `Authorization: X-Matrix` by a server of `directory.federated_search_servers`, whose signed `destination` is a server this directory answers for. Results are what the requester may see under the directory's visibility rules; terms shorter than 3 characters find nothing; never forwarded to other servers.",
    security(("x_matrix" = [])),
    request_body = FederatedSearchBody,
    responses(
        (status = 200, description = "`{limited, results: [{user_id, display_name, avatar_url}]}`", body = directory::SearchResults),
        (status = 400, description = "M_BAD_JSON: missing or invalid requester (not a user of the signing server), search_term or limit; M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED: not signed, or signed for another destination", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: bad signature, server not allowed, external requester", body = ErrorBody),
        (status = 429, description = "M_LIMIT_EXCEEDED (per calling server)", body = ErrorBody),
        (status = 502, description = "M_UNKNOWN: the calling server's keys could not be fetched", body = ErrorBody),
    ))]
pub(super) async fn federated_search(
    app: AppData,
    signed: XMatrix,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let value: Value = parse_json_object(&body.0)?;
    let results = app
        .directory
        .federated_search(signed_request(&signed, &value))
        .await?;
    Ok(HttpResponse::Ok().json(results))
}

/// # POST /_matrix/federation/v3/user_directory/search
///
/// The stable path MSC4258 proposes; the same as the unstable one.
#[utoipa::path(post, path = "/_matrix/federation/v3/user_directory/search", tag = "directory",
    summary = "Federated user directory search (MSC4258, proposed stable path)",
    security(("x_matrix" = [])),
    request_body = FederatedSearchBody,
    responses(
        (status = 200, description = "As the unstable path", body = directory::SearchResults),
        (status = 400, description = "M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN", body = ErrorBody),
        (status = 429, description = "M_LIMIT_EXCEEDED", body = ErrorBody),
    ))]
pub(super) async fn federated_search_v3(
    app: AppData,
    signed: XMatrix,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    federated_search(app, signed, body).await
}

/// # POST /_matrix/federation/unstable/fr.tchap/user_directory/search
///
/// The unstable prefix MSC4258's text names; the same as `org.matrix.msc4258`.
#[utoipa::path(post, path = "/_matrix/federation/unstable/fr.tchap/user_directory/search", tag = "directory",
    summary = "Federated user directory search (MSC4258, the prefix of the MSC's text)",
    security(("x_matrix" = [])),
    request_body = FederatedSearchBody,
    responses(
        (status = 200, description = "As the org.matrix.msc4258 path", body = directory::SearchResults),
        (status = 400, description = "M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN", body = ErrorBody),
        (status = 429, description = "M_LIMIT_EXCEEDED", body = ErrorBody),
    ))]
pub(super) async fn federated_search_fr_tchap(
    app: AppData,
    signed: XMatrix,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    federated_search(app, signed, body).await
}
