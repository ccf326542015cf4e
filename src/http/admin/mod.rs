//! The administration API, `/_annuaire/admin/v1/…`: login and logout (JWT bearer tokens), the
//! allowlist rules, the explainer, directory moderation, the erasure of an address, the audit
//! log and the statistics. Thin handlers over
//! [`crate::admin::Admin`]; every admin error is mapped to a response once (`From<AdminError>`
//! in `super::error`).
//!
//! Error codes of our own (documented in the OpenAPI description):
//! - 403 `ANNUAIRE_ACCOUNT_LOCKED`: too many failed logins; `retry_after_ms`, `locked_until`.
//! - 409 `ANNUAIRE_RULE_EXISTS`: a rule with the same kind and value exists (both named).
//! - 409 `ANNUAIRE_FILE_RULE`: the rule comes from an allowlist file (edit it, or convert it).

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{MatrixJson, RawBody, parse_json_object};
use super::{AppData, Empty, caller_ip, resource};
use crate::admin::{AdminError, Session};

pub(super) mod moderation;
pub(super) mod requests;
pub(super) mod rules;
pub(super) mod stats;

pub use moderation::{DirectoryQuery, EraseRequest, RenameRequest};
pub use rules::{
    ConsideredView, ConvertResponse, DecisionView, ExplainQuery, ExplainResponse, ImportQuery,
    ImportResponse, RuleChange, RuleInput, RuleList, RuleView, RulesQuery,
};
pub use stats::{AttemptsQuery, AuditQueryParams, DirectoryStatsQuery};

/// Where the admin API lives.
pub const PREFIX: &str = "/_annuaire/admin/v1";

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/_annuaire/admin/v1/login").route(web::post().to(login)))
        .service(resource("/_annuaire/admin/v1/logout").route(web::post().to(logout)))
        .service(
            resource("/_annuaire/admin/v1/rules")
                .route(web::get().to(rules::list_rules))
                .route(web::post().to(rules::create_rule)),
        )
        .service(
            resource("/_annuaire/admin/v1/rules/export").route(web::get().to(rules::export_rules)),
        )
        .service(
            resource("/_annuaire/admin/v1/rules/import").route(web::post().to(rules::import_rules)),
        )
        .service(
            resource("/_annuaire/admin/v1/rules/{id}")
                .route(web::get().to(rules::get_rule))
                .route(web::put().to(rules::update_rule))
                .route(web::delete().to(rules::delete_rule)),
        )
        .service(
            resource("/_annuaire/admin/v1/rules/{id}/convert")
                .route(web::post().to(rules::convert_rule)),
        )
        .service(resource("/_annuaire/admin/v1/explain").route(web::get().to(rules::explain)))
        .service(resource("/_annuaire/admin/v1/audit").route(web::get().to(stats::audit)))
        .service(
            resource("/_annuaire/admin/v1/stats/attempts")
                .route(web::get().to(stats::attempt_stats)),
        )
        .service(
            resource("/_annuaire/admin/v1/stats/directory")
                .route(web::get().to(stats::directory_stats)),
        )
        .service(
            resource("/_annuaire/admin/v1/stats/outbox").route(web::get().to(stats::outbox_stats)),
        )
        .service(
            resource("/_annuaire/admin/v1/directory")
                .route(web::get().to(moderation::list_directory)),
        )
        .service(
            resource("/_annuaire/admin/v1/directory/{user_id}")
                .route(web::get().to(moderation::get_directory_entry))
                .route(web::delete().to(moderation::remove_directory_entry)),
        )
        .service(
            resource("/_annuaire/admin/v1/directory/{user_id}/hide")
                .route(web::post().to(moderation::hide_directory_entry)),
        )
        .service(
            resource("/_annuaire/admin/v1/directory/{user_id}/unhide")
                .route(web::post().to(moderation::unhide_directory_entry)),
        )
        .service(
            resource("/_annuaire/admin/v1/directory/{user_id}/name")
                .route(web::put().to(moderation::rename_directory_entry)),
        )
        .service(
            resource("/_annuaire/admin/v1/threepids/erase")
                .route(web::post().to(moderation::erase_threepid)),
        )
        .service(
            resource("/_annuaire/admin/v1/domain-requests")
                .route(web::get().to(requests::list_domain_requests)),
        )
        .service(
            resource("/_annuaire/admin/v1/domain-requests/{domain}")
                .route(web::get().to(requests::domain_requests)),
        )
        .service(
            resource("/_annuaire/admin/v1/domain-requests/{domain}/accept")
                .route(web::post().to(requests::accept_domain_requests)),
        )
        .service(
            resource("/_annuaire/admin/v1/domain-requests/{domain}/decline")
                .route(web::post().to(requests::decline_domain_requests)),
        );
}

/// A JSON object body, as a value (the rule parser gives the file importer's messages).
fn json_body(body: &RawBody) -> Result<Value, ApiError> {
    parse_json_object::<Value>(&body.0)
}

/// Refuses query parameters holding a NUL character: no stored text has one (PostgreSQL text
/// cannot), and PostgreSQL rejects them in a query instead of matching nothing.
fn no_nul(params: &[(&str, &Option<String>)]) -> Result<(), AdminError> {
    match params
        .iter()
        .find(|(_, value)| value.as_deref().is_some_and(|v| v.contains('\0')))
    {
        Some((name, _)) => Err(AdminError::InvalidInput(format!(
            "`{name}` must not contain NUL characters"
        ))),
        None => Ok(()),
    }
}

// ---- authentication ----

/// The `Authorization: Bearer` token, if any.
fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// An authenticated administrator of any role (a valid, unrevoked bearer token).
#[derive(Debug)]
pub struct AdminAuth(pub Session);

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let app = req.app_data::<AppData>().cloned();
        let token = bearer_token(req);
        Box::pin(async move {
            let app = app.ok_or_else(|| ApiError::internal("application data missing"))?;
            let token = token.ok_or_else(|| ApiError::from(AdminError::MissingToken))?;
            let session = app.admin.authenticate(&token).await?;
            Ok(AdminAuth(session))
        })
    }
}

/// An authenticated administrator with the editor role (a viewer gets 403 `M_FORBIDDEN`).
#[derive(Debug)]
pub struct Editor(pub Session);

impl FromRequest for Editor {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let auth = AdminAuth::from_request(req, payload);
        Box::pin(async move {
            let AdminAuth(session) = auth.await?;
            session.require_editor()?;
            Ok(Editor(session))
        })
    }
}

/// `POST /login` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// The admin account's name.
    pub username: String,
    /// Its password.
    pub password: String,
}

/// A token for the `Authorization: Bearer` header.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// `viewer` (read only) or `editor`.
    pub role: String,
}

/// # POST /_annuaire/admin/v1/login
///
/// A local account's password, or (with `admin.ldap_user_filter`) an LDAP bind of a member of
/// `admin.ldap_group` (editor) or `admin.ldap_viewer_group` (viewer); a local account of the
/// same name wins. Rate limited per client IP and per username (429 `M_LIMIT_EXCEEDED`). After
/// `admin.lockout_threshold` failed logins in a row the account is locked for
/// `admin.lockout_duration`: 403 `ANNUAIRE_ACCOUNT_LOCKED` with `retry_after_ms` and
/// `locked_until` (ms), even with the right password. 503 when LDAP cannot be reached.
#[utoipa::path(post, path = "/_annuaire/admin/v1/login", tag = "admin",
    summary = "Log in with an admin account: a bearer token (JWT)",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "The token", body = LoginResponse),
        (status = 403, description = "M_FORBIDDEN: invalid username or password; ANNUAIRE_ACCOUNT_LOCKED", body = ErrorBody),
        (status = 429, description = "M_LIMIT_EXCEEDED", body = ErrorBody),
        (status = 503, description = "M_UNKNOWN: the LDAP directory cannot be reached", body = ErrorBody),
    ))]
pub(super) async fn login(
    req: HttpRequest,
    app: AppData,
    MatrixJson(body): MatrixJson<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let ip = caller_ip(&req, &app);
    app.admin.check_login_rate(ip, &body.username)?;
    let result = app
        .admin
        .log_in(&body.username, &body.password)
        .await
        .map_err(ApiError::from);
    match &result {
        // Not the username of a failure: people type passwords into it.
        Err(e) => tracing::info!(ip = ?ip, errcode = e.errcode, "admin login refused"),
        Ok(_) => tracing::info!(ip = ?ip, "admin login"),
    }
    let token = result?;
    Ok(HttpResponse::Ok().json(LoginResponse {
        access_token: token.access_token,
        token_type: "Bearer",
        expires_in: token.expires_in,
        role: token.role.as_str().to_owned(),
    }))
}

/// # POST /_annuaire/admin/v1/logout
///
/// The token stops working on every instance at once.
#[utoipa::path(post, path = "/_annuaire/admin/v1/logout", tag = "admin",
    summary = "Revoke the token of this request",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Revoked", body = Empty),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(super) async fn logout(
    app: AppData,
    AdminAuth(session): AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let username = session.username.clone();
    app.admin.logout(session).await?;
    tracing::info!(account = %username, "admin logout");
    Ok(HttpResponse::Ok().json(Empty {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        use actix_web::test::TestRequest;
        let r = TestRequest::default()
            .insert_header(("Authorization", "Bearer abc.def.ghi"))
            .to_http_request();
        assert_eq!(bearer_token(&r).as_deref(), Some("abc.def.ghi"));
        let r = TestRequest::default()
            .insert_header(("Authorization", "bearer  xyz"))
            .to_http_request();
        assert_eq!(bearer_token(&r).as_deref(), Some("xyz"));
        for value in ["Basic abc", "Bearer", "Bearer ", "abc"] {
            let r = TestRequest::default()
                .insert_header(("Authorization", value))
                .to_http_request();
            assert_eq!(bearer_token(&r), None, "{value}");
        }
        assert_eq!(
            bearer_token(&TestRequest::default().to_http_request()),
            None
        );
    }
}
