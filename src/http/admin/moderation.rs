//! Directory moderation (search, read, hide, unhide, rename, remove) and the erasure of an
//! address, through the admin API.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{AdminAuth, Editor, json_body, no_nul};
use crate::admin::{self, Session};
use crate::http::AppData;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{MatrixJson, MatrixQuery, RawBody};

/// `GET /directory` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DirectoryQuery {
    /// Search terms (every term a prefix of a word of the name, organisation or user id),
    /// ranked as user searches are. Without it, entries are listed by user id.
    pub q: Option<String>,
    /// Exactly this organisation label.
    pub organisation: Option<String>,
    /// Exactly this homeserver.
    pub homeserver: Option<String>,
    /// `visible` or `hidden`.
    pub visibility: Option<String>,
    /// `true`: external (invite-required) users only; `false`: internal ones only.
    pub external: Option<bool>,
    /// Page size, or most search results (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next_batch` of the previous page (listing only).
    pub next_batch: Option<String>,
}

/// `PUT /directory/{user_id}/name` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RenameRequest {
    /// The verified name to publish instead of LDAP's or the address's (source `admin`), or
    /// null to remove the override.
    pub name: Option<String>,
}

/// `POST /threepids/erase` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EraseRequest {
    /// `email`.
    pub medium: String,
    /// The address.
    pub address: String,
}

/// The `{user_id}` of a directory path.
fn path_user_id(path: web::Path<String>) -> String {
    path.into_inner()
}

/// # GET /_annuaire/admin/v1/directory
///
/// Every entry, hidden, external and deactivated ones included (`visibility`, `external`,
/// `active`, and `searchable`: whether user searches return it now).
#[utoipa::path(get, path = "/_annuaire/admin/v1/directory", tag = "admin",
    summary = "Search or list directory entries as an operator",
    security(("admin_token" = [])),
    params(DirectoryQuery),
    responses(
        (status = 200, description = "Entries (`next_batch` when listing, `limited` when searching)", body = admin::EntryPage),
        (status = 400, description = "M_INVALID_PARAM", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(crate) async fn list_directory(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<DirectoryQuery>,
) -> Result<HttpResponse, ApiError> {
    no_nul(&[
        ("organisation", &q.organisation),
        ("homeserver", &q.homeserver),
        ("next_batch", &q.next_batch),
    ])?;
    let filter = admin::EntryFilter {
        organisation: q.organisation,
        homeserver: q.homeserver,
        visibility: q
            .visibility
            .as_deref()
            .map(admin::moderation::parse_visibility)
            .transpose()?,
        external: q.external,
    };
    let limit = admin::page_limit(q.limit)?;
    let (text, from) = (q.q, q.next_batch);
    let page = app.admin.list_directory(text, filter, from, limit).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// # GET /_annuaire/admin/v1/directory/{user_id}
#[utoipa::path(get, path = "/_annuaire/admin/v1/directory/{user_id}", tag = "admin",
    summary = "Read one directory entry",
    security(("admin_token" = [])),
    params(("user_id" = String, Path, description = "The Matrix user id (`@jean:agent.finances.example`, or percent-encoded)")),
    responses(
        (status = 200, description = "The entry", body = admin::ModeratedEntry),
        (status = 400, description = "M_INVALID_PARAM: not a user id", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
    ))]
pub(crate) async fn get_directory_entry(
    app: AppData,
    _auth: AdminAuth,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_user_id(path);
    let entry = app.admin.directory_entry(&user_id).await?;
    Ok(HttpResponse::Ok().json(entry))
}

async fn set_visibility(
    app: AppData,
    session: Session,
    path: web::Path<String>,
    visibility: crate::directory::Visibility,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_user_id(path);
    let entry = app
        .admin
        .set_directory_visibility(&user_id, visibility, &session.actor())
        .await?;
    Ok(HttpResponse::Ok().json(entry))
}

/// # POST /_annuaire/admin/v1/directory/{user_id}/hide
///
/// The entry disappears from every search at once (it stays in the operators' listing).
#[utoipa::path(post, path = "/_annuaire/admin/v1/directory/{user_id}/hide", tag = "admin",
    summary = "Hide a directory entry from searches",
    security(("admin_token" = [])),
    params(("user_id" = String, Path, description = "The Matrix user id")),
    responses(
        (status = 200, description = "The entry, hidden", body = admin::ModeratedEntry),
        (status = 400, description = "M_INVALID_PARAM: not a user id", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
    ))]
pub(crate) async fn hide_directory_entry(
    app: AppData,
    Editor(session): Editor,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_visibility(app, session, path, crate::directory::Visibility::Hidden).await
}

/// # POST /_annuaire/admin/v1/directory/{user_id}/unhide
#[utoipa::path(post, path = "/_annuaire/admin/v1/directory/{user_id}/unhide", tag = "admin",
    summary = "Show a hidden directory entry again",
    security(("admin_token" = [])),
    params(("user_id" = String, Path, description = "The Matrix user id")),
    responses(
        (status = 200, description = "The entry, visible", body = admin::ModeratedEntry),
        (status = 400, description = "M_INVALID_PARAM: not a user id", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
    ))]
pub(crate) async fn unhide_directory_entry(
    app: AppData,
    Editor(session): Editor,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_visibility(app, session, path, crate::directory::Visibility::Visible).await
}

/// # PUT /_annuaire/admin/v1/directory/{user_id}/name
///
/// `{"name": "Jean-Marc Dupont"}` publishes that verified name (source `admin`) whatever LDAP
/// or the address say; `{"name": null}` removes the override.
#[utoipa::path(put, path = "/_annuaire/admin/v1/directory/{user_id}/name", tag = "admin",
    summary = "Override (or stop overriding) the verified name of an entry",
    security(("admin_token" = [])),
    params(("user_id" = String, Path, description = "The Matrix user id")),
    request_body = RenameRequest,
    responses(
        (status = 200, description = "The entry, renamed", body = admin::ModeratedEntry),
        (status = 400, description = "M_INVALID_PARAM (a name without visible characters, not a user id), M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
    ))]
pub(crate) async fn rename_directory_entry(
    app: AppData,
    Editor(session): Editor,
    path: web::Path<String>,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let value = json_body(&body)?;
    // `name` must be there, as a string or null: an empty body must not remove an override.
    let name = match value.get("name") {
        None => return Err(ApiError::missing_params("Missing parameter: name")),
        Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => return Err(ApiError::bad_json("`name` must be a string or null")),
    };
    let user_id = path_user_id(path);
    let entry = app
        .admin
        .rename_directory_entry(&user_id, name, &session.actor())
        .await?;
    Ok(HttpResponse::Ok().json(entry))
}

/// # DELETE /_annuaire/admin/v1/directory/{user_id}
///
/// Removes the entry (the association stays: a later bind publishes the user again; to forget
/// an address, erase it).
#[utoipa::path(delete, path = "/_annuaire/admin/v1/directory/{user_id}", tag = "admin",
    summary = "Remove a directory entry",
    security(("admin_token" = [])),
    params(("user_id" = String, Path, description = "The Matrix user id")),
    responses(
        (status = 200, description = "The removed entry", body = admin::ModeratedEntry),
        (status = 400, description = "M_INVALID_PARAM: not a user id", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
    ))]
pub(crate) async fn remove_directory_entry(
    app: AppData,
    Editor(session): Editor,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_user_id(path);
    let entry = app
        .admin
        .remove_directory_entry(&user_id, &session.actor())
        .await?;
    Ok(HttpResponse::Ok().json(entry))
}

/// # POST /_annuaire/admin/v1/threepids/erase
///
/// Forgets an address: its association and lookup hashes (lookups no longer find it), every
/// invitation to it (`/internal-info` then says `invited: false`), its validation sessions and
/// the mails still queued to it; then the directory follows as after an unbind (the user's entry
/// goes unless another of their addresses is bound). Audited with the address.
#[utoipa::path(post, path = "/_annuaire/admin/v1/threepids/erase", tag = "admin",
    summary = "Erase an address (admin unbind)",
    security(("admin_token" = [])),
    request_body = EraseRequest,
    responses(
        (status = 200, description = "What was removed", body = admin::Erasure),
        (status = 400, description = "M_INVALID_EMAIL, M_INVALID_PARAM (medium), M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
    ))]
pub(crate) async fn erase_threepid(
    app: AppData,
    Editor(session): Editor,
    MatrixJson(body): MatrixJson<EraseRequest>,
) -> Result<HttpResponse, ApiError> {
    let erasure = app
        .admin
        .erase(&body.medium, &body.address, &session.actor())
        .await?;
    Ok(HttpResponse::Ok().json(erasure))
}
