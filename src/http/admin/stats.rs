//! The audit log and the statistics through the admin API.

use actix_web::HttpResponse;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{AdminAuth, no_nul};
use crate::admin::{self, AttemptStats, AuditFilter, AuditPage, Period};
use crate::http::AppData;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::MatrixQuery;

/// `GET /audit` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQueryParams {
    /// Exactly this actor (an admin username, `cli:<unix user>`, `startup`, `system`).
    pub actor: Option<String>,
    /// This action ("rule.create"), or a prefix ending with `*` ("rule.*").
    pub action: Option<String>,
    /// Exactly this target ("rule:<id>", "account:<username>").
    pub target: Option<String>,
    /// At or after: milliseconds since the epoch, or RFC 3339 in UTC ("2026-11-23T00:00:00Z").
    pub since: Option<String>,
    /// Before (exclusive), same forms.
    pub until: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next_batch` of the previous page.
    pub next_batch: Option<String>,
}

/// An instant given as milliseconds or RFC 3339 (UTC).
fn parse_instant(name: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(|| {
            ApiError::invalid_param(format!(
                "`{name}`: expected milliseconds since the epoch or an RFC 3339 instant in UTC \
                 such as 2026-11-23T00:00:00Z"
            ))
        })
}

/// # GET /_annuaire/admin/v1/audit
///
/// Newest first. Every change to rules (API, imports of the allowlist files), admin accounts
/// (including on the command line) is here, with the object before and after. No API deletes it.
#[utoipa::path(get, path = "/_annuaire/admin/v1/audit", tag = "admin",
    summary = "Read the audit log",
    security(("admin_token" = [])),
    params(AuditQueryParams),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        (status = 400, description = "M_INVALID_PARAM", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(crate) async fn audit(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<AuditQueryParams>,
) -> Result<HttpResponse, ApiError> {
    no_nul(&[
        ("actor", &q.actor),
        ("action", &q.action),
        ("target", &q.target),
    ])?;
    let filter = AuditFilter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        since: q
            .since
            .as_deref()
            .map(|t| parse_instant("since", t))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| parse_instant("until", t))
            .transpose()?,
    };
    let limit = admin::page_limit(q.limit)?;
    let from = q.next_batch;
    let page = app.admin.audit(filter, from, limit).await?;
    Ok(HttpResponse::Ok().json(page))
}

// ---- statistics ----

/// `GET /stats/attempts` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptsQuery {
    /// `24h` (default), `7d` or `30d`. Counted per UTC day: a period covers the current day and
    /// that many full days before it.
    pub period: Option<String>,
    /// Most domains listed (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// # GET /_annuaire/admin/v1/stats/attempts
///
/// Denied and invite-required decisions of `/internal-info` per domain, most first: which
/// administrations are knocking at the door. This instance's recent counts are written first.
#[utoipa::path(get, path = "/_annuaire/admin/v1/stats/attempts", tag = "admin",
    summary = "Refused and invite-required attempts per domain",
    security(("admin_token" = [])),
    params(AttemptsQuery),
    responses(
        (status = 200, description = "Domains, most attempts first", body = AttemptStats),
        (status = 400, description = "M_INVALID_PARAM", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(crate) async fn attempt_stats(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<AttemptsQuery>,
) -> Result<HttpResponse, ApiError> {
    let period = Period::parse(q.period.as_deref().unwrap_or("24h"))?;
    let limit = admin::page_limit(q.limit)?;
    let stats = app.admin.attempt_stats(period, limit).await?;
    Ok(HttpResponse::Ok().json(stats))
}

/// `GET /stats/directory` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DirectoryStatsQuery {
    /// Most organisations and homeservers listed (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// # GET /_annuaire/admin/v1/stats/directory
#[utoipa::path(get, path = "/_annuaire/admin/v1/stats/directory", tag = "admin",
    summary = "Directory size per organisation and per homeserver",
    security(("admin_token" = [])),
    params(DirectoryStatsQuery),
    responses(
        (status = 200, description = "Counts, largest groups first", body = admin::DirectoryStats),
        (status = 400, description = "M_INVALID_PARAM", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(crate) async fn directory_stats(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<DirectoryStatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = admin::page_limit(q.limit)?;
    let stats = app.admin.directory_stats(limit).await?;
    Ok(HttpResponse::Ok().json(stats))
}

/// # GET /_annuaire/admin/v1/stats/outbox
#[utoipa::path(get, path = "/_annuaire/admin/v1/stats/outbox", tag = "admin",
    summary = "Mail outbox health",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Queued, sending, retrying; sent, failed, superseded in the last 24 h; the oldest unsent mail", body = admin::OutboxStats),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(crate) async fn outbox_stats(app: AppData, _auth: AdminAuth) -> Result<HttpResponse, ApiError> {
    let stats = app.admin.outbox_stats().await?;
    Ok(HttpResponse::Ok().json(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_milliseconds_or_rfc3339() {
        assert_eq!(
            parse_instant("since", "1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_instant("since", "2026-11-23T00:00:00Z").unwrap(),
            1_795_392_000_000
        );
        assert_eq!(
            parse_instant("until", "yesterday").unwrap_err().errcode,
            "M_INVALID_PARAM"
        );
    }
}
