//! The Tchap-compatible policy endpoints: which homeserver (shard) an address belongs to.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::error::{ApiError, ErrorBody};
use super::extract::MatrixQuery;
use super::{AppData, caller_ip, is_internal, is_internal_ip, resource};
use crate::identity::shard::{ShardInfo, email_param};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/_matrix/identity/api/v1/info").route(web::get().to(info)))
        .service(
            resource("/_matrix/identity/api/v1/internal-info").route(web::get().to(internal_info)),
        );
}

/// The query of both endpoints.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThreepidQuery {
    /// `email`.
    medium: String,
    /// The email address.
    address: String,
}

/// # GET /_matrix/identity/api/v1/info
///
/// For clients choosing a homeserver. Rate limited per client IP; outside callers see the
/// public (shadow) homeserver.
#[utoipa::path(get, path = "/_matrix/identity/api/v1/info", tag = "policy",
    summary = "Which homeserver an address belongs to (clients)",
    params(ThreepidQuery),
    responses(
        (status = 200, description = "The decision; outside callers see the public (shadow) homeserver as `hs`", body = ShardInfo),
        (status = 400, description = "M_INVALID_PARAM, M_INVALID_EMAIL, M_MISSING_PARAMS", body = ErrorBody),
        (status = 429, description = "M_LIMIT_EXCEEDED", body = ErrorBody),
    ))]
async fn info(
    req: HttpRequest,
    app: AppData,
    MatrixQuery(q): MatrixQuery<ThreepidQuery>,
) -> Result<HttpResponse, ApiError> {
    let ip = caller_ip(&req, &app);
    if let Some(ip) = &ip {
        app.limits
            .info_per_ip
            .check(ip)
            .map_err(ApiError::limit_exceeded)?;
    }
    let address = email_param(&q.medium, &q.address)?;
    let internal = ip.is_some_and(|ip| is_internal_ip(ip, &app));
    let info = app.identity.shard_info(&address, internal).await?;
    Ok(HttpResponse::Ok().json(info))
}

/// # GET /_matrix/identity/api/v1/internal-info
///
/// For homeservers (the `threepid-checker` module): only from `http.internal_networks`.
#[utoipa::path(get, path = "/_matrix/identity/api/v1/internal-info", tag = "policy",
    summary = "Which homeserver an address belongs to (homeservers, internal networks only)",
    params(ThreepidQuery),
    responses(
        (status = 200, description = "The decision, and whether the address is invited", body = ShardInfo),
        (status = 400, description = "M_INVALID_PARAM, M_INVALID_EMAIL, M_MISSING_PARAMS", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: caller outside http.internal_networks", body = ErrorBody),
    ))]
async fn internal_info(
    req: HttpRequest,
    app: AppData,
    MatrixQuery(q): MatrixQuery<ThreepidQuery>,
) -> Result<HttpResponse, ApiError> {
    if !is_internal(&req, &app) {
        return Err(ApiError::forbidden(
            "This endpoint is only for homeservers on the internal networks",
        ));
    }
    let address = email_param(&q.medium, &q.address)?;
    let info = app.identity.internal_shard_info(&address).await?;
    Ok(HttpResponse::Ok().json(info))
}
