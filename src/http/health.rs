//! Service discovery and operations endpoints: `/_matrix/identity/versions`,
//! `/_matrix/identity/v2`, `/health/live`, `/health/ready`, `/metrics`.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::{AppData, Empty, resource};

/// Spec versions of the Identity Service API this server implements.
pub const SPEC_VERSIONS: &[&str] = &[
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
    "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18",
];

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/_matrix/identity/versions").route(web::get().to(versions)))
        .service(resource("/_matrix/identity/v2").route(web::get().to(v2_status)))
        .service(resource("/health/live").route(web::get().to(live)))
        .service(resource("/health/ready").route(web::get().to(ready)))
        .service(resource("/metrics").route(web::get().to(metrics)));
}

/// # GET /_matrix/identity/versions
#[utoipa::path(get, path = "/_matrix/identity/versions", tag = "operations",
    summary = "Identity Service API versions supported",
    responses((status = 200, description = "The versions", body = VersionsResponse)))]
async fn versions() -> HttpResponse {
    HttpResponse::Ok().json(VersionsResponse {
        versions: SPEC_VERSIONS,
    })
}

/// `{versions}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionsResponse {
    /// `v1.1` and later.
    pub versions: &'static [&'static str],
}

/// `{status}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    /// `live` or `ready`.
    pub status: &'static str,
}

/// # GET /_matrix/identity/v2
#[utoipa::path(get, path = "/_matrix/identity/v2", tag = "operations",
    summary = "Identity Service status (an empty object)",
    responses((status = 200, description = "`{}`", body = Empty)))]
async fn v2_status() -> HttpResponse {
    HttpResponse::Ok().json(Empty {})
}

/// # GET /health/live: the process answers.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    summary = "Liveness: the process answers",
    responses((status = 200, description = "`{status: \"live\"}`", body = StatusResponse)))]
async fn live() -> HttpResponse {
    HttpResponse::Ok().json(StatusResponse { status: "live" })
}

/// # GET /health/ready: the database answers.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    summary = "Readiness: the database answers",
    responses(
        (status = 200, description = "`{status: \"ready\"}`", body = StatusResponse),
        (status = 503, description = "M_UNKNOWN: the database does not answer", body = ErrorBody),
    ))]
async fn ready(app: AppData) -> Result<HttpResponse, ApiError> {
    match app.db.ping().await {
        Ok(()) => Ok(HttpResponse::Ok().json(StatusResponse { status: "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::unavailable("The database does not answer"))
        }
    }
}

/// # GET /metrics: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(app: AppData) -> HttpResponse {
    app.db.record_pool_gauges();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::render_metrics())
}
