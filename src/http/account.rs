//! The users' own account API, `/_annuaire/account/v1/…`: what annuaire holds about the caller,
//! and their choice to be left out of the directory. Authenticated by the caller's identity
//! server access token (`/_matrix/identity/v2/account/register`); the terms need not be
//! accepted. Served on the public listener even with `http.admin_bind` (users' clients call it).

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::auth::AccountAuth;
use super::error::{ApiError, ErrorBody};
use super::extract::MatrixJson;
use super::{AppData, resource};
use crate::directory::opt_out::Listing;
use crate::identity::account_data::AccountData;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/_annuaire/account/v1/data").route(web::get().to(account_data)))
        .service(resource("/_annuaire/account/v1/directory").route(web::post().to(set_directory)));
}

/// # GET /_annuaire/account/v1/data
#[utoipa::path(get, path = "/_annuaire/account/v1/data", tag = "account",
    summary = "Everything annuaire holds about the caller",
    description = "The identity account and its tokens (when issued and expiring, never the tokens), \
        the accepted terms, the addresses bound to the caller, their directory entry and listing, \
        the verified names the agency directory gave for their addresses, the invitations to \
        those addresses and their email validations.",
    security(("identity_token" = [])),
    responses(
        (status = 200, description = "The caller's data", body = AccountData),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
    ))]
pub(super) async fn account_data(
    app: AppData,
    AccountAuth(account): AccountAuth,
) -> Result<HttpResponse, ApiError> {
    let data = app.identity.account_data(&account).await?;
    Ok(HttpResponse::Ok().json(data))
}

/// `POST /directory` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct DirectoryChoice {
    /// False: leave the directory (searches no longer return the caller); true: come back.
    visible: bool,
}

/// # POST /_annuaire/account/v1/directory
#[utoipa::path(post, path = "/_annuaire/account/v1/directory", tag = "account",
    summary = "Leave the directory, or come back",
    description = "With `visible: false`, no directory search returns the caller any more, \
        whatever their entry says; the choice is kept by user id and survives a new bind. \
        Administrators see it (`opted_out`).",
    security(("identity_token" = [])),
    request_body = DirectoryChoice,
    responses(
        (status = 200, description = "The choice as it now stands", body = Listing),
        (status = 400, description = "M_BAD_JSON, M_NOT_JSON, M_MISSING_PARAMS", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
    ))]
pub(super) async fn set_directory(
    app: AppData,
    AccountAuth(account): AccountAuth,
    MatrixJson(choice): MatrixJson<DirectoryChoice>,
) -> Result<HttpResponse, ApiError> {
    let listing = app
        .directory
        .set_listed(&account.user_id, choice.visible)
        .await?;
    Ok(HttpResponse::Ok().json(listing))
}
