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
