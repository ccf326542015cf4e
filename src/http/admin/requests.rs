//! Agents' domain requests through the admin API (`/_annuaire/admin/v1/domain-requests`): the
//! queue grouped by domain, one domain's requests, accept (once a rule lets the domain in) and
//! decline; the requesters are told by mail.
//!
//! Error codes of our own: 409 `ANNUAIRE_DOMAIN_NOT_ALLOWED` (accepting a domain no rule lets
//! in yet: create the rule first).

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AdminAuth, Editor};
use crate::domain_requests::{Decided, DomainRequestView, QueuedDomain};
use crate::http::AppData;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{MatrixJson, MatrixQuery};

/// The queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct DomainQueue {
    /// Domains with pending (confirmed) requests, most requested first.
    pub domains: Vec<QueuedDomain>,
}

/// # GET /_annuaire/admin/v1/domain-requests
///
/// Requests are listed once their requester has followed the mail's confirmation link.
#[utoipa::path(get, path = "/_annuaire/admin/v1/domain-requests", tag = "admin",
    summary = "Pending domain requests, grouped by domain",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The queue", body = DomainQueue),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(crate) async fn list_domain_requests(
    app: AppData,
    _auth: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let domains = app.requests.queue().await?;
    Ok(HttpResponse::Ok().json(DomainQueue { domains }))
}

/// `GET /domain-requests/{domain}` options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DomainRequestsQuery {
    /// `pending`, `accepted` or `declined`; absent: all of them.
    pub status: Option<String>,
}

/// A domain's requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct DomainRequestList {
    /// Oldest first.
    pub requests: Vec<DomainRequestView>,
}

/// # GET /_annuaire/admin/v1/domain-requests/{domain}
#[utoipa::path(get, path = "/_annuaire/admin/v1/domain-requests/{domain}", tag = "admin",
    summary = "One domain's requests (with the requesters' names, addresses and messages)",
    security(("admin_token" = [])),
    params(("domain" = String, Path, description = "The domain"), DomainRequestsQuery),
    responses(
        (status = 200, description = "The requests", body = DomainRequestList),
        (status = 400, description = "M_INVALID_PARAM, M_INVALID_EMAIL: not a domain", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(crate) async fn domain_requests(
    app: AppData,
    _auth: AdminAuth,
    domain: web::Path<String>,
    MatrixQuery(q): MatrixQuery<DomainRequestsQuery>,
) -> Result<HttpResponse, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s @ ("pending" | "accepted" | "declined")) => Some(s),
        Some(other) => {
            return Err(ApiError::invalid_param(format!(
                "`status` is pending, accepted or declined, not {other:?}"
            )));
        }
    };
    let requests = app.requests.requests(&domain, status).await?;
    Ok(HttpResponse::Ok().json(DomainRequestList { requests }))
}

/// # POST /_annuaire/admin/v1/domain-requests/{domain}/accept
///
/// Once a rule lets the domain's addresses in (create it first: `POST /rules`), marks the
/// pending requests accepted and mails each requester.
#[utoipa::path(post, path = "/_annuaire/admin/v1/domain-requests/{domain}/accept", tag = "admin",
    summary = "Accept a domain's requests (the requesters are told by mail)",
    security(("admin_token" = [])),
    params(("domain" = String, Path, description = "The domain")),
    responses(
        (status = 200, description = "Accepted", body = Decided),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND: no pending request", body = ErrorBody),
        (status = 409, description = "ANNUAIRE_DOMAIN_NOT_ALLOWED: no rule lets the domain in yet", body = ErrorBody),
    ))]
pub(crate) async fn accept_domain_requests(
    app: AppData,
    Editor(session): Editor,
    domain: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let decided = app.requests.accept(&domain, &session.actor()).await?;
    Ok(HttpResponse::Ok().json(decided))
}

/// `POST …/decline` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeclineRequest {
    /// Sent to each requester (optional, at most 2000 characters).
    #[serde(default)]
    pub message: Option<String>,
}

/// # POST /_annuaire/admin/v1/domain-requests/{domain}/decline
#[utoipa::path(post, path = "/_annuaire/admin/v1/domain-requests/{domain}/decline", tag = "admin",
    summary = "Decline a domain's requests with a message (the requesters are told by mail)",
    security(("admin_token" = [])),
    params(("domain" = String, Path, description = "The domain")),
    request_body = DeclineRequest,
    responses(
        (status = 200, description = "Declined", body = Decided),
        (status = 400, description = "M_INVALID_PARAM, M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND: no pending request", body = ErrorBody),
    ))]
pub(crate) async fn decline_domain_requests(
    app: AppData,
    Editor(session): Editor,
    domain: web::Path<String>,
    MatrixJson(body): MatrixJson<DeclineRequest>,
) -> Result<HttpResponse, ApiError> {
    let decided = app
        .requests
        .decline(&domain, body.message.as_deref(), &session.actor())
        .await?;
    Ok(HttpResponse::Ok().json(decided))
}
