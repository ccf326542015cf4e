//! The administration API, `/_annuaire/admin/v1/…`: login and logout (JWT bearer tokens), the
//! allowlist rules, the explainer, directory moderation, the erasure of an address, the audit
//! log and the statistics. Thin handlers over
//! [`crate::admin`]; every admin error is mapped to a response once, in [`api_error`].
//!
//! Error codes of our own (documented in the OpenAPI description):
//! - 403 `ANNUAIRE_ACCOUNT_LOCKED`: too many failed logins; `retry_after_ms`, `locked_until`.
//! - 409 `ANNUAIRE_RULE_EXISTS`: a rule with the same kind and value exists (both named).
//! - 409 `ANNUAIRE_FILE_RULE`: the rule comes from an allowlist file (edit it, or convert it).

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::extract::{MatrixJson, MatrixQuery, RawBody, parse_json_object};
use super::openapi::ErrorBody;
use super::{AppData, caller_ip, resource};
use crate::admin::{
    self, AdminError, AttemptStats, AuditFilter, AuditPage, Period, RuleFilter, Session,
};
use crate::app::Annuaire;
use crate::error::ApiError;
use crate::policy::{Decision, Rule, RuleDiff, RuleKind};
use crate::store::DbConn;

/// Where the admin API lives.
pub const PREFIX: &str = "/_annuaire/admin/v1";

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/_annuaire/admin/v1/login").route(web::post().to(login)))
        .service(resource("/_annuaire/admin/v1/logout").route(web::post().to(logout)))
        .service(
            resource("/_annuaire/admin/v1/rules")
                .route(web::get().to(list_rules))
                .route(web::post().to(create_rule)),
        )
        .service(resource("/_annuaire/admin/v1/rules/export").route(web::get().to(export_rules)))
        .service(resource("/_annuaire/admin/v1/rules/import").route(web::post().to(import_rules)))
        .service(
            resource("/_annuaire/admin/v1/rules/{id}")
                .route(web::get().to(get_rule))
                .route(web::put().to(update_rule))
                .route(web::delete().to(delete_rule)),
        )
        .service(
            resource("/_annuaire/admin/v1/rules/{id}/convert").route(web::post().to(convert_rule)),
        )
        .service(resource("/_annuaire/admin/v1/explain").route(web::get().to(explain)))
        .service(resource("/_annuaire/admin/v1/audit").route(web::get().to(audit)))
        .service(resource("/_annuaire/admin/v1/stats/attempts").route(web::get().to(attempt_stats)))
        .service(
            resource("/_annuaire/admin/v1/stats/directory").route(web::get().to(directory_stats)),
        )
        .service(resource("/_annuaire/admin/v1/stats/outbox").route(web::get().to(outbox_stats)))
        .service(resource("/_annuaire/admin/v1/directory").route(web::get().to(list_directory)))
        .service(
            resource("/_annuaire/admin/v1/directory/{user_id}")
                .route(web::get().to(get_directory_entry))
                .route(web::delete().to(remove_directory_entry)),
        )
        .service(
            resource("/_annuaire/admin/v1/directory/{user_id}/hide")
                .route(web::post().to(hide_directory_entry)),
        )
        .service(
            resource("/_annuaire/admin/v1/directory/{user_id}/unhide")
                .route(web::post().to(unhide_directory_entry)),
        )
        .service(
            resource("/_annuaire/admin/v1/directory/{user_id}/name")
                .route(web::put().to(rename_directory_entry)),
        )
        .service(
            resource("/_annuaire/admin/v1/threepids/erase").route(web::post().to(erase_threepid)),
        );
}

/// Maps an administration error to its response.
pub fn api_error(e: AdminError) -> ApiError {
    match e {
        AdminError::Store(e) => ApiError::from(e),
        AdminError::MissingToken => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "Missing admin access token (Authorization: Bearer …)",
        ),
        AdminError::InvalidToken(message) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", message)
        }
        AdminError::Forbidden(message) => ApiError::forbidden(message),
        AdminError::BadCredentials => ApiError::forbidden("Invalid username or password"),
        AdminError::Locked {
            until_ms,
            retry_after_ms,
        } => ApiError::new(
            StatusCode::FORBIDDEN,
            "ANNUAIRE_ACCOUNT_LOCKED",
            "This account is locked after too many failed logins; retry later",
        )
        .with("retry_after_ms", retry_after_ms)
        .with("locked_until", until_ms),
        AdminError::RateLimited { retry_after_ms } => ApiError::limit_exceeded(retry_after_ms),
        AdminError::NotFound(message) => {
            ApiError::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
        }
        AdminError::InvalidRules(errors) => {
            ApiError::invalid_param(admin::join_rule_errors(&errors)).with("errors", json!(errors))
        }
        AdminError::RuleExists(errors) => ApiError::new(
            StatusCode::CONFLICT,
            "ANNUAIRE_RULE_EXISTS",
            admin::join_rule_errors(&errors),
        )
        .with("errors", json!(errors)),
        AdminError::FileRule(message) => {
            ApiError::new(StatusCode::CONFLICT, "ANNUAIRE_FILE_RULE", message)
        }
        AdminError::AccountExists(message) => {
            ApiError::new(StatusCode::CONFLICT, "ANNUAIRE_ACCOUNT_EXISTS", message)
        }
        AdminError::InvalidInput(message) => ApiError::invalid_param(message),
        AdminError::InvalidAddress(message) => {
            ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_EMAIL", message)
        }
        AdminError::LdapUnavailable(message) => {
            tracing::warn!(error = %message, "LDAP admin login: the directory cannot be used");
            ApiError::unavailable("The LDAP directory cannot be reached; try again later")
        }
        AdminError::Internal(message) => ApiError::internal(message),
    }
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

/// Runs a blocking administration call on the database pool.
async fn run<T, F>(app: &AppData, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut DbConn, &Annuaire) -> Result<T, AdminError> + Send + 'static,
{
    let inner = app.clone().into_inner();
    app.db
        .run(move |conn| Ok(f(conn, &inner)))
        .await?
        .map_err(api_error)
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
            let token = token.ok_or_else(|| api_error(AdminError::MissingToken))?;
            let now = app.clock.now_ms();
            let session = run(&app, move |conn, app| {
                app.admin.authenticate(conn, &token, now)
            })
            .await?;
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
            session.require_editor().map_err(api_error)?;
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

/// An empty JSON object.
#[derive(Debug, Serialize, ToSchema)]
pub struct Empty {}

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
    app.admin
        .check_login_rate(ip, &body.username)
        .map_err(api_error)?;
    let now = app.clock.now_ms();
    let result = admin::log_in(
        app.clone().into_inner(),
        &body.username,
        &body.password,
        now,
    )
    .await
    .map_err(api_error);
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
    let now = app.clock.now_ms();
    let username = session.username.clone();
    run(&app, move |conn, app| app.admin.logout(conn, &session, now)).await?;
    tracing::info!(account = %username, "admin logout");
    Ok(HttpResponse::Ok().json(json!({})))
}

// ---- rules ----

/// One rule as JSON: the allowlist file's field names plus `id`, `kind`, `source` and `line`
/// (what `Rule::to_json` writes; a unit test keeps this schema equal to it).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleView {
    /// Stable id derived from the kind and value ("r" + 16 hex digits).
    pub id: String,
    /// `domain`, `deny`, `address` or `pattern`.
    pub kind: String,
    /// The domain (domain rules, and deny rules on a domain), IDNA ASCII.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether subdomains match too (with `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomains: Option<bool>,
    /// The address (address rules, and deny rules on one address), normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The regular expression (pattern rules), matched whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Organisation label ("Jean Dupont [Finances]").
    pub label: Option<String>,
    /// The homeserver (shard) of allowed addresses.
    pub homeserver: Option<String>,
    /// That homeserver's name as seen from outside.
    pub shadow_homeserver: Option<String>,
    /// Whether an allowed address still needs an invitation.
    pub requires_invite: bool,
    /// RFC 3339 instant from which the rule no longer applies.
    pub expires_at: Option<String>,
    /// Accept a public mail provider anyway.
    pub force: bool,
    /// `admin`, or the allowlist file (path relative to the allowlists folder).
    pub source: String,
    /// The rule's line in its file (file rules).
    pub line: Option<u32>,
}

/// A rule to create or replace: [`RuleView`]'s fields; `id`, `source` and `line` are ignored
/// (the id follows from the kind and value), so a listed rule can be sent back as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    /// Ignored.
    pub id: Option<String>,
    /// `domain`, `deny`, `address` or `pattern`.
    pub kind: String,
    /// A domain (`domain`, or `deny` of a domain).
    pub name: Option<String>,
    /// Subdomains too (default false).
    pub subdomains: Option<bool>,
    /// One address (`address`, or `deny` of an address).
    pub email: Option<String>,
    /// A regular expression over `local@ascii.domain` (`pattern`), anchored.
    pub regex: Option<String>,
    /// Organisation label.
    pub label: Option<String>,
    /// The homeserver (required on allow rules).
    pub homeserver: Option<String>,
    /// Its public name, if different.
    pub shadow_homeserver: Option<String>,
    /// Allowed only once invited (default false).
    pub requires_invite: Option<bool>,
    /// RFC 3339 expiry instant.
    pub expires_at: Option<String>,
    /// Accept a public mail provider (default false).
    pub force: Option<bool>,
    /// Ignored.
    pub source: Option<String>,
    /// Ignored.
    pub line: Option<u32>,
}

/// Filters shared by the rule list and the export.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RulesQuery {
    /// Rules about this domain: a rule on it, a parent's rule with `subdomains`, addresses at it.
    pub domain: Option<String>,
    /// Exactly this organisation label.
    pub organisation: Option<String>,
    /// Exactly this homeserver.
    pub homeserver: Option<String>,
    /// `admin`, or a file path ("finances.toml").
    pub source: Option<String>,
    /// `domain`, `deny`, `address` or `pattern`.
    #[param(value_type = Option<String>)]
    pub kind: Option<RuleKind>,
    /// Page size (default 100, at most 1000; list only).
    pub limit: Option<usize>,
    /// The `next_batch` of the previous page (list only).
    pub next_batch: Option<String>,
}

impl RulesQuery {
    fn filter(&self) -> Result<RuleFilter, AdminError> {
        no_nul(&[
            ("domain", &self.domain),
            ("organisation", &self.organisation),
            ("homeserver", &self.homeserver),
            ("source", &self.source),
            ("next_batch", &self.next_batch),
        ])?;
        let filter = RuleFilter {
            domain: None,
            organisation: self.organisation.clone(),
            homeserver: self.homeserver.clone(),
            source: self.source.clone(),
            kind: self.kind,
        };
        match &self.domain {
            Some(d) => filter.with_domain(d),
            None => Ok(filter),
        }
    }
}

/// A page of rules.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleList {
    /// The rules, by id.
    #[schema(value_type = Vec<RuleView>)]
    pub rules: Vec<Value>,
    /// Pass as `next_batch` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
}

/// # GET /_annuaire/admin/v1/rules
#[utoipa::path(get, path = "/_annuaire/admin/v1/rules", tag = "admin",
    summary = "List rules (filters, pages by id)",
    security(("admin_token" = [])),
    params(RulesQuery),
    responses(
        (status = 200, description = "A page of rules", body = RuleList),
        (status = 400, description = "M_INVALID_PARAM", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(super) async fn list_rules(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<RulesQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = q.filter().map_err(api_error)?;
    let limit = admin::page_limit(q.limit).map_err(api_error)?;
    let from = q.next_batch.clone();
    let page = run(&app, move |conn, _| {
        admin::rules::list(conn, &filter, from.as_deref(), limit)
    })
    .await?;
    Ok(HttpResponse::Ok().json(RuleList {
        rules: page.rules.iter().map(Rule::to_json).collect(),
        next_batch: page.next_batch,
    }))
}

/// A JSON object body, as a value (the rule parser gives the file importer's messages).
fn json_body(body: &RawBody) -> Result<Value, ApiError> {
    parse_json_object::<Value>(&body.0)
}

/// # POST /_annuaire/admin/v1/rules
///
/// Validated as the allowlist files are (same messages). A public mail provider as an allowed
/// domain is refused unless `force` is true. Applies on every instance within
/// `policy.reload_interval`.
#[utoipa::path(post, path = "/_annuaire/admin/v1/rules", tag = "admin",
    summary = "Create an admin rule",
    security(("admin_token" = [])),
    request_body = RuleInput,
    responses(
        (status = 201, description = "Created", body = RuleView),
        (status = 400, description = "M_INVALID_PARAM (with `errors`: [{path, line, message}]), M_NOT_JSON, M_BAD_JSON", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: the viewer role cannot change rules", body = ErrorBody),
        (status = 409, description = "ANNUAIRE_RULE_EXISTS", body = ErrorBody),
    ))]
pub(super) async fn create_rule(
    app: AppData,
    Editor(session): Editor,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let input = json_body(&body)?;
    let now = app.clock.now_ms();
    let rule = run(&app, move |conn, app| {
        admin::rules::create(conn, &app.allowlist, input, &session.actor(), now)
    })
    .await?;
    Ok(HttpResponse::Created().json(rule.to_json()))
}

/// # GET /_annuaire/admin/v1/rules/{id}
#[utoipa::path(get, path = "/_annuaire/admin/v1/rules/{id}", tag = "admin",
    summary = "Read one rule",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The rule's id")),
    responses(
        (status = 200, description = "The rule", body = RuleView),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
    ))]
pub(super) async fn get_rule(
    app: AppData,
    _auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let stored = run(&app, move |conn, _| admin::rules::get(conn, &id)).await?;
    Ok(HttpResponse::Ok().json(stored.rule.to_json()))
}

/// # PUT /_annuaire/admin/v1/rules/{id}
///
/// Replaces every field of an admin rule (absent fields take their defaults). The kind and value
/// make the id and cannot change. Rules from allowlist files are read-only: 409
/// `ANNUAIRE_FILE_RULE` (edit the file, or convert the rule first).
#[utoipa::path(put, path = "/_annuaire/admin/v1/rules/{id}", tag = "admin",
    summary = "Replace an admin rule",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The rule's id")),
    request_body = RuleInput,
    responses(
        (status = 200, description = "The rule as stored", body = RuleView),
        (status = 400, description = "M_INVALID_PARAM (with `errors`)", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "ANNUAIRE_FILE_RULE", body = ErrorBody),
    ))]
pub(super) async fn update_rule(
    app: AppData,
    Editor(session): Editor,
    id: web::Path<String>,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let input = json_body(&body)?;
    let id = id.into_inner();
    let now = app.clock.now_ms();
    let rule = run(&app, move |conn, app| {
        admin::rules::update(conn, &app.allowlist, &id, input, &session.actor(), now)
    })
    .await?;
    Ok(HttpResponse::Ok().json(rule.to_json()))
}

/// # DELETE /_annuaire/admin/v1/rules/{id}
///
/// Rules from allowlist files are read-only: 409 `ANNUAIRE_FILE_RULE`.
#[utoipa::path(delete, path = "/_annuaire/admin/v1/rules/{id}", tag = "admin",
    summary = "Delete an admin rule",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The rule's id")),
    responses(
        (status = 200, description = "The deleted rule", body = RuleView),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "ANNUAIRE_FILE_RULE", body = ErrorBody),
    ))]
pub(super) async fn delete_rule(
    app: AppData,
    Editor(session): Editor,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let now = app.clock.now_ms();
    let rule = run(&app, move |conn, app| {
        admin::rules::delete(conn, &app.allowlist, &id, &session.actor(), now)
    })
    .await?;
    Ok(HttpResponse::Ok().json(rule.to_json()))
}

/// What a conversion did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConvertResponse {
    /// The rule, now with source `admin`.
    #[schema(value_type = RuleView)]
    pub rule: Value,
    /// Where it came from ("finances.toml:12").
    pub was: String,
    /// What to do with the file.
    pub note: String,
}

/// # POST /_annuaire/admin/v1/rules/{id}/convert
///
/// Makes a rule imported from an allowlist file an admin rule (same id and values), editable
/// through the API from then on. Remove its line from the file: until then, the next import of
/// the allowlist files (`annuaire allowlist import`, or `serve` at start) fails, reporting the
/// file rule as a duplicate of the admin rule.
#[utoipa::path(post, path = "/_annuaire/admin/v1/rules/{id}/convert", tag = "admin",
    summary = "Convert a file rule to an admin rule",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The rule's id")),
    responses(
        (status = 200, description = "Converted", body = ConvertResponse),
        (status = 400, description = "M_INVALID_PARAM: already an admin rule", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
    ))]
pub(super) async fn convert_rule(
    app: AppData,
    Editor(session): Editor,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let now = app.clock.now_ms();
    let converted = run(&app, move |conn, app| {
        admin::rules::convert(conn, &app.allowlist, &id, &session.actor(), now)
    })
    .await?;
    let note = format!(
        "Remove {} from the allowlist files: until then, the next allowlist import (and serve's \
         start-up import) fails, reporting it as a duplicate of this admin rule",
        converted.was
    );
    Ok(HttpResponse::Ok().json(ConvertResponse {
        rule: converted.rule.to_json(),
        was: converted.was,
        note,
    }))
}

/// `POST /rules/import` options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Report the changes without making them.
    #[serde(default)]
    pub dry_run: bool,
}

/// A rule replaced by an import.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleChange {
    /// Before.
    #[schema(value_type = RuleView)]
    pub before: Value,
    /// After.
    #[schema(value_type = RuleView)]
    pub after: Value,
}

/// What an import changes (or would change, with `dry_run`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResponse {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// New rules.
    #[schema(value_type = Vec<RuleView>)]
    pub added: Vec<Value>,
    /// Admin rules replaced.
    pub changed: Vec<RuleChange>,
    /// Rules removed (an API import removes none).
    #[schema(value_type = Vec<RuleView>)]
    pub removed: Vec<Value>,
    /// One line per change, as `annuaire allowlist import` prints them.
    pub summary: Vec<String>,
}

fn import_response(diff: &RuleDiff, dry_run: bool) -> ImportResponse {
    ImportResponse {
        dry_run,
        added: diff.added.iter().map(Rule::to_json).collect(),
        changed: diff
            .changed
            .iter()
            .map(|(before, after)| RuleChange {
                before: before.to_json(),
                after: after.to_json(),
            })
            .collect(),
        removed: diff.removed.iter().map(Rule::to_json).collect(),
        summary: crate::allowlist::describe_diff(diff),
    }
}

/// Whether the request says its body is TOML.
fn is_toml(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| {
            let essence = essence.trim();
            essence.eq_ignore_ascii_case("application/toml")
                || essence.eq_ignore_ascii_case("text/toml")
        })
}

/// # POST /_annuaire/admin/v1/rules/import
///
/// The body is one allowlist file (the TOML format of `allowlists/`, `Content-Type:
/// application/toml`). Its rules become admin rules (source `admin`): new ones are added, admin
/// rules with the same kind and value are replaced, nothing else changes. A rule that an
/// allowlist file already defines is refused (409, naming both). Errors name `import.toml` and
/// the line, with the file importer's messages.
#[utoipa::path(post, path = "/_annuaire/admin/v1/rules/import", tag = "admin",
    summary = "Import an allowlist file as admin rules (returns the diff)",
    security(("admin_token" = [])),
    params(ImportQuery),
    request_body(content = String, content_type = "application/toml", description = "One allowlist file"),
    responses(
        (status = 200, description = "The changes", body = ImportResponse),
        (status = 400, description = "M_INVALID_PARAM (with `errors`: [{path, line, message}])", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 409, description = "ANNUAIRE_RULE_EXISTS", body = ErrorBody),
        (status = 415, description = "M_INVALID_PARAM: not application/toml", body = ErrorBody),
    ))]
pub(super) async fn import_rules(
    req: HttpRequest,
    app: AppData,
    Editor(session): Editor,
    MatrixQuery(q): MatrixQuery<ImportQuery>,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    if !is_toml(&req) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "M_INVALID_PARAM",
            "The body must be an allowlist file sent with Content-Type: application/toml",
        ));
    }
    let text = String::from_utf8(body.0.to_vec())
        .map_err(|_| ApiError::invalid_param("The allowlist file is not UTF-8"))?;
    let now = app.clock.now_ms();
    let dry_run = q.dry_run;
    let diff = run(&app, move |conn, app| {
        admin::rules::import(conn, &app.allowlist, &text, dry_run, &session.actor(), now)
    })
    .await?;
    Ok(HttpResponse::Ok().json(import_response(&diff, dry_run)))
}

/// # GET /_annuaire/admin/v1/rules/export
///
/// The rules (with the list's filters, e.g. `?source=admin`) as one allowlist file, in decision
/// order; it imports back to the same rules.
#[utoipa::path(get, path = "/_annuaire/admin/v1/rules/export", tag = "admin",
    summary = "Export rules as an allowlist file (TOML)",
    security(("admin_token" = [])),
    params(RulesQuery),
    responses(
        (status = 200, description = "An allowlist file", body = String, content_type = "application/toml"),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(super) async fn export_rules(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<RulesQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = q.filter().map_err(api_error)?;
    let text = run(&app, move |conn, _| admin::rules::export(conn, &filter)).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/toml; charset=utf-8")
        .body(text))
}

// ---- explain ----

/// `GET /explain` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExplainQuery {
    /// An email address.
    pub address: String,
}

/// The policy's decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionView {
    /// `allowed`, `invite_required` or `denied`.
    pub outcome: String,
    /// The homeserver (shard) the address belongs to.
    pub homeserver: Option<String>,
    /// Its public name.
    pub shadow_homeserver: Option<String>,
    /// The organisation label.
    pub organisation: Option<String>,
    /// The deciding rule: "finances.toml:12", "admin:<id>", or null for the default.
    pub rule: Option<String>,
    /// The deciding rule's id.
    pub rule_id: Option<String>,
    /// Why.
    pub reason: String,
}

impl From<&Decision> for DecisionView {
    fn from(d: &Decision) -> Self {
        DecisionView {
            outcome: d.outcome.as_str().to_owned(),
            homeserver: d.homeserver.clone(),
            shadow_homeserver: d.shadow_homeserver.clone(),
            organisation: d.organisation.clone(),
            rule: d.rule.clone(),
            rule_id: d.rule_id.clone(),
            reason: d.reason.clone(),
        }
    }
}

/// A rule looked at while deciding.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsideredView {
    /// The rule.
    #[schema(value_type = RuleView)]
    pub rule: Value,
    /// Whether it matches the address (expired rules do not).
    pub matched: bool,
    /// Why it won, lost, or did not apply.
    pub why: String,
}

/// The full decision for an address.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainResponse {
    /// The address, normalised.
    pub address: String,
    /// The decision.
    pub decision: DecisionView,
    /// The rule that decided (null: the configured default).
    #[schema(value_type = Option<RuleView>)]
    pub matched_rule: Option<Value>,
    /// Every rule that names the address, its domain or a parent domain, or whose pattern
    /// matches, in decision order, with why each one won or lost.
    pub considered: Vec<ConsideredView>,
}

/// # GET /_annuaire/admin/v1/explain
#[utoipa::path(get, path = "/_annuaire/admin/v1/explain", tag = "admin",
    summary = "Explain the decision for an address",
    security(("admin_token" = [])),
    params(ExplainQuery),
    responses(
        (status = 200, description = "The decision and the rules considered", body = ExplainResponse),
        (status = 400, description = "M_INVALID_EMAIL, M_MISSING_PARAMS", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(super) async fn explain(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<ExplainQuery>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let (address, explanation) = run(&app, move |conn, app| {
        admin::rules::explain(conn, &app.allowlist, &q.address, now)
    })
    .await?;
    let decision = &explanation.decision;
    let matched_rule = decision.rule_id.as_ref().and_then(|id| {
        explanation
            .considered
            .iter()
            .find(|c| &c.rule.id == id)
            .map(|c| c.rule.to_json())
    });
    Ok(HttpResponse::Ok().json(ExplainResponse {
        address: address.as_str().to_owned(),
        decision: DecisionView::from(decision),
        matched_rule,
        considered: explanation
            .considered
            .iter()
            .map(|c| ConsideredView {
                rule: c.rule.to_json(),
                matched: c.matched,
                why: c.why.clone(),
            })
            .collect(),
    }))
}

// ---- audit ----

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
pub(super) async fn audit(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<AuditQueryParams>,
) -> Result<HttpResponse, ApiError> {
    no_nul(&[
        ("actor", &q.actor),
        ("action", &q.action),
        ("target", &q.target),
    ])
    .map_err(api_error)?;
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
    let limit = admin::page_limit(q.limit).map_err(api_error)?;
    let from = q.next_batch;
    let page = run(&app, move |conn, _| {
        admin::audit::list(conn, &filter, from.as_deref(), limit)
    })
    .await?;
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
pub(super) async fn attempt_stats(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<AttemptsQuery>,
) -> Result<HttpResponse, ApiError> {
    let period = Period::parse(q.period.as_deref().unwrap_or("24h")).map_err(api_error)?;
    let limit = admin::page_limit(q.limit).map_err(api_error)?;
    let now = app.clock.now_ms();
    let stats = run(&app, move |conn, app| {
        admin::stats::attempts(conn, &app.allowlist, period, now, limit)
    })
    .await?;
    Ok(HttpResponse::Ok().json(stats))
}

// ---- directory moderation ----

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
pub(super) async fn list_directory(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<DirectoryQuery>,
) -> Result<HttpResponse, ApiError> {
    no_nul(&[
        ("organisation", &q.organisation),
        ("homeserver", &q.homeserver),
        ("next_batch", &q.next_batch),
    ])
    .map_err(api_error)?;
    let filter = admin::EntryFilter {
        organisation: q.organisation,
        homeserver: q.homeserver,
        visibility: q
            .visibility
            .as_deref()
            .map(admin::moderation::parse_visibility)
            .transpose()
            .map_err(api_error)?,
        external: q.external,
    };
    let limit = admin::page_limit(q.limit).map_err(api_error)?;
    let (text, from) = (q.q, q.next_batch);
    let page = run(&app, move |conn, app| {
        let config = &app.config;
        match text.as_deref() {
            Some(text) => {
                let candidates = i64::from(config.directory.search_candidates)
                    .max(i64::try_from(limit).unwrap_or(i64::MAX));
                admin::moderation::search(conn, config, text, &filter, limit, candidates)
            }
            None => admin::moderation::list(conn, config, &filter, from.as_deref(), limit),
        }
    })
    .await?;
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
pub(super) async fn get_directory_entry(
    app: AppData,
    _auth: AdminAuth,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_user_id(path);
    let entry = run(&app, move |conn, app| {
        admin::moderation::get(conn, &app.config, &user_id)
    })
    .await?;
    Ok(HttpResponse::Ok().json(entry))
}

async fn set_visibility(
    app: AppData,
    session: Session,
    path: web::Path<String>,
    visibility: crate::directory::Visibility,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_user_id(path);
    let now = app.clock.now_ms();
    let entry = run(&app, move |conn, app| {
        admin::moderation::set_visibility(
            conn,
            &app.config,
            &user_id,
            visibility,
            &session.actor(),
            now,
        )
    })
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
pub(super) async fn hide_directory_entry(
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
pub(super) async fn unhide_directory_entry(
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
pub(super) async fn rename_directory_entry(
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
    let now = app.clock.now_ms();
    let entry = run(&app, move |conn, app| {
        admin::moderation::rename(
            conn,
            &app.config,
            &user_id,
            name.as_deref(),
            &session.actor(),
            now,
        )
    })
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
pub(super) async fn remove_directory_entry(
    app: AppData,
    Editor(session): Editor,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path_user_id(path);
    let now = app.clock.now_ms();
    let entry = run(&app, move |conn, app| {
        admin::moderation::remove(conn, &app.config, &user_id, &session.actor(), now)
    })
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
pub(super) async fn erase_threepid(
    app: AppData,
    Editor(session): Editor,
    MatrixJson(body): MatrixJson<EraseRequest>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let erasure = admin::threepids::erase(
        app.clone().into_inner(),
        &body.medium,
        &body.address,
        &session.actor(),
        now,
    )
    .await
    .map_err(api_error)?;
    Ok(HttpResponse::Ok().json(erasure))
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
pub(super) async fn directory_stats(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<DirectoryStatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = admin::page_limit(q.limit).map_err(api_error)?;
    let stats = run(&app, move |conn, _| admin::stats::directory(conn, limit)).await?;
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
pub(super) async fn outbox_stats(app: AppData, _auth: AdminAuth) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let stats = run(&app, move |conn, _| admin::stats::outbox(conn, now)).await?;
    Ok(HttpResponse::Ok().json(stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{RuleSource, parse_allowlist_file};

    const FILE: &str = r#"
[organisation]
label = "Finances"
homeserver = "agent.finances.example"
shadow_homeserver = "public.finances.example"

[[domain]]
name = "finances.gouv.example"
subdomains = true
expires_at = 2030-01-01T00:00:00Z

[[deny]]
name = "webmail.finances.gouv.example"

[[deny]]
email = "someone@finances.gouv.example"

[[address]]
email = "Consultant@Partner.example"
requires_invite = true

[[pattern]]
regex = '^[a-z]+\.[a-z]+@region-[0-9]+\.example$'
"#;

    /// The documented schemas describe exactly what `Rule::to_json` writes and reads.
    #[test]
    fn rule_schema_mirrors_the_rule_json() {
        let mut rules = parse_allowlist_file("finances.toml", FILE).unwrap();
        let mut admin_rule = rules[0].clone();
        admin_rule.source = RuleSource::Admin;
        rules.push(admin_rule);
        assert_eq!(rules.len(), 6);
        for rule in rules {
            let json = rule.to_json();
            let view: RuleView = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(serde_json::to_value(&view).unwrap(), json);
            let _: RuleInput = serde_json::from_value(json).unwrap();
        }
    }

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
