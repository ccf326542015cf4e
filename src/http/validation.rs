//! Email validation (Matrix Identity Service API v2): requestToken, submitToken (JSON for
//! clients, an HTML page for the link in the mail), getValidated3pid.
//!
//! With `identity.require_auth` (the default) these need an identity access token and the
//! accepted terms ([`ValidationAuth`]), except the mail link's `GET …/submitToken`, which the
//! mailed token itself authenticates.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::ValidationAuth;
use super::error::{ApiError, ErrorBody};
use super::extract::{MatrixQuery, RawBody, parse_json_object, parse_query};
use super::{AppData, caller_ip, resource};
use crate::Annuaire;
use crate::identity::sessions::{SessionError, TokenRequest};
use crate::mail::Language;
use crate::web::SubmitTokenPage;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/_matrix/identity/v2/validate/email/requestToken")
            .route(web::post().to(request_token)),
    )
    .service(
        resource("/_matrix/identity/v2/validate/email/submitToken")
            .route(web::post().to(submit_token))
            .route(web::get().to(submit_token_page)),
    )
    .service(
        resource("/_matrix/identity/v2/3pid/getValidated3pid")
            .route(web::get().to(get_validated_3pid)),
    );
}

fn language(req: &HttpRequest, app: &Annuaire) -> Language {
    let header = req
        .headers()
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    app.mailer.negotiate_language(header)
}

/// The body of requestToken. `send_attempt` is read as any JSON value so that a string or a
/// fraction is `M_INVALID_PARAM` rather than a generic JSON error.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct RequestTokenBody {
    /// The client's secret for this session (`[0-9a-zA-Z.=_-]`, at most 255).
    client_secret: String,
    /// The address.
    email: String,
    /// A mail is sent only when this grows.
    #[schema(value_type = i64)]
    send_attempt: Value,
    /// Where the mail's link sends the browser after validating (an allowed host).
    #[serde(default)]
    next_link: Option<String>,
}

/// `send_attempt`: a JSON integer ≥ 0.
fn send_attempt_param(value: &Value) -> Result<i64, ApiError> {
    value
        .as_i64()
        .filter(|n| *n >= 0)
        .ok_or_else(|| ApiError::invalid_param("send_attempt must be a non-negative integer"))
}

/// # POST /_matrix/identity/v2/validate/email/requestToken
#[utoipa::path(post, path = "/_matrix/identity/v2/validate/email/requestToken", tag = "validation",
    summary = "Mail a validation token to an address",
    description = "With `identity.require_auth` (the default) an access token and the accepted terms are needed. The mail's language follows `Accept-Language`. A new mail is sent only when `send_attempt` grows.",
    security(("identity_token" = [])),
    request_body = RequestTokenBody,
    responses(
        (status = 200, description = "The session", body = SidResponse),
        (status = 400, description = "M_INVALID_EMAIL, M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_THREEPID_DENIED (with `decision`), M_TERMS_NOT_SIGNED", body = ErrorBody),
        (status = 429, description = "M_LIMIT_EXCEEDED", body = ErrorBody),
    ))]
pub(super) async fn request_token(
    req: HttpRequest,
    app: AppData,
    _auth: ValidationAuth,
    RawBody(body): RawBody,
) -> Result<HttpResponse, ApiError> {
    let body: RequestTokenBody = parse_json_object(&body)?;
    let send_attempt = send_attempt_param(&body.send_attempt)?;
    let request = TokenRequest {
        client_secret: body.client_secret,
        email: body.email,
        send_attempt,
        next_link: body.next_link,
        language: language(&req, &app),
        client_ip: caller_ip(&req, &app),
    };
    let requested = app.identity.request_token(request).await?;
    Ok(HttpResponse::Ok().json(SidResponse { sid: requested.sid }))
}

/// `{sid}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SidResponse {
    /// The validation session's id.
    pub sid: String,
}

/// `{success}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuccessResponse {
    /// Always true.
    pub success: bool,
}

/// `{address, medium, validated_at}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidatedThreepidResponse {
    /// The address, normalised.
    pub address: String,
    /// `email`.
    pub medium: String,
    /// When it was validated (ms since the epoch).
    pub validated_at: i64,
}

/// The parameters of submitToken.
#[derive(Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SubmitTokenBody {
    /// The session id.
    sid: String,
    /// The client's secret.
    client_secret: String,
    /// The token from the mail.
    token: String,
}

/// # POST /_matrix/identity/v2/validate/email/submitToken
#[utoipa::path(post, path = "/_matrix/identity/v2/validate/email/submitToken", tag = "validation",
    summary = "Submit the mailed token",
    security(("identity_token" = [])),
    request_body = SubmitTokenBody,
    responses(
        (status = 200, description = "`{success: true}`", body = SuccessResponse),
        (status = 400, description = "M_TOKEN_INCORRECT (with `locked` after too many), M_SESSION_EXPIRED, M_INVALID_PARAM, M_MISSING_PARAMS", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 404, description = "M_NO_VALID_SESSION", body = ErrorBody),
    ))]
pub(super) async fn submit_token(
    app: AppData,
    _auth: ValidationAuth,
    RawBody(body): RawBody,
) -> Result<HttpResponse, ApiError> {
    let body: SubmitTokenBody = parse_json_object(&body)?;
    app.identity
        .submit_token(&body.sid, &body.client_secret, &body.token)
        .await?;
    Ok(HttpResponse::Ok().json(SuccessResponse { success: true }))
}

/// # GET /_matrix/identity/v2/validate/email/submitToken
///
/// The link in the mail, opened by a browser (so without an access token): an HTML page in the
/// browser's language, or a 302 to the session's `next_link` on success.
#[utoipa::path(get, path = "/_matrix/identity/v2/validate/email/submitToken", tag = "validation",
    summary = "The link in the mail: validates and answers an HTML page",
    params(SubmitTokenBody),
    responses(
        (status = 200, description = "Validated (an HTML page)", content_type = "text/html"),
        (status = 302, description = "Validated: to the session's `next_link`"),
        (status = 400, description = "Wrong, expired or locked token, bad parameters (an HTML page)", content_type = "text/html"),
        (status = 404, description = "No such session (an HTML page)", content_type = "text/html"),
    ))]
pub(super) async fn submit_token_page(req: HttpRequest, app: AppData) -> HttpResponse {
    let lang = super::pages::language(&req, &app);
    let outcome = match parse_query::<SubmitTokenBody>(req.query_string()) {
        Err(_) => Err(SubmitTokenPage::Invalid),
        Ok(q) => app
            .identity
            .submit_token(&q.sid, &q.client_secret, &q.token)
            .await
            .map_err(|e| match e {
                SessionError::NoValidSession => SubmitTokenPage::NoSession,
                SessionError::Expired => SubmitTokenPage::Expired,
                SessionError::TokenIncorrect { locked: true } => SubmitTokenPage::Locked,
                SessionError::TokenIncorrect { locked: false } => SubmitTokenPage::TokenIncorrect,
                SessionError::InvalidParam(_) => SubmitTokenPage::Invalid,
                other => {
                    // The store's and the mail's errors carry no user data.
                    tracing::error!(error = %other, "submitToken page failed");
                    SubmitTokenPage::Error
                }
            }),
    };
    let (page, status) = match outcome {
        Ok(validated) => {
            if let Some(link) = validated.next_link {
                return with_page_headers(HttpResponse::Found())
                    .insert_header((header::LOCATION, link))
                    .finish();
            }
            (SubmitTokenPage::Success, StatusCode::OK)
        }
        Err(page) => {
            let status = match page {
                SubmitTokenPage::NoSession => StatusCode::NOT_FOUND,
                SubmitTokenPage::Error => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            (page, status)
        }
    };
    let chrome = super::pages::chrome_for_secret_url(&req, &app, lang);
    match app
        .web
        .render_submit_token(&chrome, page, &app.config.server.name)
    {
        Ok(html) => with_page_headers(HttpResponse::build(status))
            .content_type("text/html; charset=utf-8")
            .body(html),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the submitToken page");
            with_page_headers(HttpResponse::build(StatusCode::INTERNAL_SERVER_ERROR))
                .content_type("text/plain; charset=utf-8")
                .body("Internal server error")
        }
    }
}

/// The page's URL carries the token: no caching, no Referer to the next site, no framing.
fn with_page_headers(
    mut builder: actix_web::HttpResponseBuilder,
) -> actix_web::HttpResponseBuilder {
    builder
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, super::pages::CSP));
    builder
}

/// The parameters of getValidated3pid.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SessionQuery {
    /// The session id.
    sid: String,
    /// The client's secret.
    client_secret: String,
}

/// # GET /_matrix/identity/v2/3pid/getValidated3pid
#[utoipa::path(get, path = "/_matrix/identity/v2/3pid/getValidated3pid", tag = "validation",
    summary = "The address a validated session proved",
    security(("identity_token" = [])),
    params(SessionQuery),
    responses(
        (status = 200, description = "The validated address", body = ValidatedThreepidResponse),
        (status = 400, description = "M_SESSION_NOT_VALIDATED, M_SESSION_EXPIRED, M_MISSING_PARAMS", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 404, description = "M_NO_VALID_SESSION", body = ErrorBody),
    ))]
pub(super) async fn get_validated_3pid(
    app: AppData,
    _auth: ValidationAuth,
    MatrixQuery(q): MatrixQuery<SessionQuery>,
) -> Result<HttpResponse, ApiError> {
    let threepid = app
        .identity
        .validated_threepid(&q.sid, &q.client_secret)
        .await?;
    Ok(HttpResponse::Ok().json(ValidatedThreepidResponse {
        address: threepid.address,
        medium: threepid.medium,
        validated_at: threepid.validated_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn send_attempt_must_be_a_non_negative_integer() {
        assert_eq!(send_attempt_param(&json!(0)).unwrap(), 0);
        assert_eq!(send_attempt_param(&json!(7)).unwrap(), 7);
        for bad in [
            json!(-1),
            json!(1.5),
            json!(1.0),
            json!("1"),
            json!(null),
            json!(u64::MAX),
        ] {
            assert_eq!(
                send_attempt_param(&bad).unwrap_err().errcode,
                "M_INVALID_PARAM",
                "{bad}"
            );
        }
    }

    #[test]
    fn session_errors_have_the_spec_codes() {
        let cases = [
            (SessionError::NoValidSession, 404, "M_NO_VALID_SESSION"),
            (SessionError::NotValidated, 400, "M_SESSION_NOT_VALIDATED"),
            (SessionError::Expired, 400, "M_SESSION_EXPIRED"),
            (
                SessionError::TokenIncorrect { locked: false },
                400,
                "M_TOKEN_INCORRECT",
            ),
            (
                SessionError::TokenIncorrect { locked: true },
                400,
                "M_TOKEN_INCORRECT",
            ),
            (
                SessionError::InvalidParam("x".into()),
                400,
                "M_INVALID_PARAM",
            ),
            (
                SessionError::InvalidEmail("x".into()),
                400,
                "M_INVALID_EMAIL",
            ),
            (
                SessionError::Denied {
                    reason: "no".into(),
                    reason_code: crate::policy::ReasonCode::UnknownDomain,
                },
                403,
                "M_THREEPID_DENIED",
            ),
            (
                SessionError::LimitExceeded { retry_after_ms: 5 },
                429,
                "M_LIMIT_EXCEEDED",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e);
            assert_eq!(api.status.as_u16(), status);
            assert_eq!(api.errcode, code);
        }
        let denied = ApiError::from(SessionError::Denied {
            reason: "no".into(),
            reason_code: crate::policy::ReasonCode::UnknownDomain,
        });
        assert_eq!(
            denied.body(),
            serde_json::json!({"errcode": "M_THREEPID_DENIED", "error": "no", "decision": "denied", "reason_code": "unknown_domain"})
        );
        let locked = ApiError::from(SessionError::TokenIncorrect { locked: true });
        assert!(locked.message.contains("locked"));
    }
}
