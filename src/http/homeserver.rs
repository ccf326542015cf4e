//! The homeserver API (`/_annuaire/homeserver/v1/…`): homeservers that validate addresses
//! themselves report their accounts (the `annuaire-synapse` module of `contrib/synapse`). Thin
//! handlers over [`crate::homeserver::HomeserverService`]; callers from `http.internal_networks`
//! only, with the homeserver's token ([`HomeserverAuth`]).

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::auth::HomeserverAuth;
use super::error::{ApiError, ErrorBody};
use super::extract::{MatrixJson, MatrixQuery};
use super::{AppData, Empty, resource};
use crate::directory::VerifiedName;
use crate::homeserver::{
    BoundAssociation, Deactivation, DeactivationOutcome, ProfileReport, ThreepidRequest, Unbound,
};

/// Where the homeserver API lives.
pub const PREFIX: &str = "/_annuaire/homeserver/v1";

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(&format!("{PREFIX}/bind")).route(web::post().to(bind)))
        .service(resource(&format!("{PREFIX}/unbind")).route(web::post().to(unbind)))
        .service(resource(&format!("{PREFIX}/display_name")).route(web::get().to(display_name)))
        .service(resource(&format!("{PREFIX}/profile")).route(web::post().to(profile)))
        .service(resource(&format!("{PREFIX}/deactivated")).route(web::post().to(deactivated)));
}

/// The query of `GET display_name`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DisplayNameQuery {
    /// `email`.
    medium: String,
    /// The email address.
    address: String,
}

/// # POST /_annuaire/homeserver/v1/bind
#[utoipa::path(post, path = "/_annuaire/homeserver/v1/bind", tag = "homeserver",
    summary = "Bind an address the homeserver validated to one of its users",
    description = "Stores the association as `/_matrix/identity/v2/3pid/bind` does (signed, hashed for lookups, replacing the address's previous one), delivers the invitations waiting for the address and creates or refreshes the user's directory entry with the verified name. Idempotent.",
    security(("homeserver_token" = [])),
    request_body = ThreepidRequest,
    responses(
        (status = 200, description = "The association, the address normalised", body = BoundAssociation),
        (status = 400, description = "M_NOT_JSON, M_BAD_JSON, M_MISSING_PARAMS, M_INVALID_PARAM (medium, mxid), M_INVALID_EMAIL", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED: missing, unknown or revoked token", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: caller outside http.internal_networks, or out of the token's scope (the message names the rule: the Matrix ID's server, or the address's homeserver per the policy)", body = ErrorBody),
        (status = 413, description = "M_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "M_UNKNOWN: the database is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn bind(
    app: AppData,
    HomeserverAuth(homeserver): HomeserverAuth,
    MatrixJson(request): MatrixJson<ThreepidRequest>,
) -> Result<HttpResponse, ApiError> {
    let bound = app.homeserver.bind(&homeserver, &request).await?;
    Ok(HttpResponse::Ok().json(bound))
}

/// # POST /_annuaire/homeserver/v1/unbind
#[utoipa::path(post, path = "/_annuaire/homeserver/v1/unbind", tag = "homeserver",
    summary = "Unbind an address removed from one of the homeserver's users",
    description = "Deletes the association if the address is bound to this Matrix ID (an address bound to someone else is left alone); the directory follows. Idempotent.",
    security(("homeserver_token" = [])),
    request_body = ThreepidRequest,
    responses(
        (status = 200, description = "Whether an association was removed", body = Unbound),
        (status = 400, description = "M_NOT_JSON, M_BAD_JSON, M_MISSING_PARAMS, M_INVALID_PARAM, M_INVALID_EMAIL", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: caller outside http.internal_networks, or the Matrix ID is not a user of the token's homeserver", body = ErrorBody),
        (status = 413, description = "M_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "M_UNKNOWN: the database is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn unbind(
    app: AppData,
    HomeserverAuth(homeserver): HomeserverAuth,
    MatrixJson(request): MatrixJson<ThreepidRequest>,
) -> Result<HttpResponse, ApiError> {
    let unbound = app.homeserver.unbind(&homeserver, &request).await?;
    Ok(HttpResponse::Ok().json(unbound))
}

/// # GET /_annuaire/homeserver/v1/display_name
#[utoipa::path(get, path = "/_annuaire/homeserver/v1/display_name", tag = "homeserver",
    summary = "The verified name of an address, for a new account",
    description = "An administrator's override, else the agency LDAP directory, else the address's local part, with the organisation label, through `directory.display_name_format`. Works before the account exists; every address the policy sends to the token's homeserver has one.",
    security(("homeserver_token" = [])),
    params(DisplayNameQuery),
    responses(
        (status = 200, description = "The verified name", body = VerifiedName),
        (status = 400, description = "M_MISSING_PARAMS, M_INVALID_PARAM (medium), M_INVALID_EMAIL", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: caller outside http.internal_networks, or the policy does not send this address to the token's homeserver", body = ErrorBody),
        (status = 503, description = "M_UNKNOWN: the database is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn display_name(
    app: AppData,
    HomeserverAuth(homeserver): HomeserverAuth,
    MatrixQuery(q): MatrixQuery<DisplayNameQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = app
        .homeserver
        .display_name(&homeserver, &q.medium, &q.address)
        .await?;
    Ok(HttpResponse::Ok().json(name))
}

/// # POST /_annuaire/homeserver/v1/profile
#[utoipa::path(post, path = "/_annuaire/homeserver/v1/profile", tag = "homeserver",
    summary = "A user's global profile changed",
    description = "The avatar reaches the user's directory entry (`mxc://` URLs only); the display name the user typed never replaces the verified name: it is kept for administrators as `user_displayname`. A field left out is unchanged, `null` clears it. A user without a directory entry is not an error. Idempotent.",
    security(("homeserver_token" = [])),
    request_body = ProfileReport,
    responses(
        (status = 200, description = "`{}`", body = Empty),
        (status = 400, description = "M_NOT_JSON, M_BAD_JSON, M_MISSING_PARAMS, M_INVALID_PARAM (user_id, a display name over 256 characters)", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: caller outside http.internal_networks, or the user is not one of the token's homeserver", body = ErrorBody),
        (status = 413, description = "M_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "M_UNKNOWN: the database is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn profile(
    app: AppData,
    HomeserverAuth(homeserver): HomeserverAuth,
    MatrixJson(report): MatrixJson<ProfileReport>,
) -> Result<HttpResponse, ApiError> {
    app.homeserver.profile(&homeserver, report).await?;
    Ok(HttpResponse::Ok().json(Empty {}))
}

/// # POST /_annuaire/homeserver/v1/deactivated
#[utoipa::path(post, path = "/_annuaire/homeserver/v1/deactivated", tag = "homeserver",
    summary = "A user was deactivated",
    description = "The user's directory entry and associations are removed. With `erased: true`, what annuaire keeps about each address they held or recently unbound is erased as an administrator's erasure does (association, lookup hashes, invitations, validation sessions, queued mails), audited as `homeserver:SERVER_NAME`. Idempotent.",
    security(("homeserver_token" = [])),
    request_body = Deactivation,
    responses(
        (status = 200, description = "How many associations this call removed", body = DeactivationOutcome),
        (status = 400, description = "M_NOT_JSON, M_BAD_JSON, M_MISSING_PARAMS, M_INVALID_PARAM (user_id)", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: caller outside http.internal_networks, or the user is not one of the token's homeserver", body = ErrorBody),
        (status = 413, description = "M_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "M_UNKNOWN: the database is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn deactivated(
    app: AppData,
    HomeserverAuth(homeserver): HomeserverAuth,
    MatrixJson(deactivation): MatrixJson<Deactivation>,
) -> Result<HttpResponse, ApiError> {
    let outcome = app
        .homeserver
        .deactivated(&homeserver, &deactivation)
        .await?;
    Ok(HttpResponse::Ok().json(outcome))
}
