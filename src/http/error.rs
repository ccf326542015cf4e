//! The one API error type: a Matrix `errcode`, an HTTP status and a message for people,
//! answered as `{"errcode": "M_…", "error": "…"}` ([`ErrorBody`]).
//!
//! Domain modules return their own error enums; they are mapped here, once each, by `From`
//! impls, so that handlers use `?`. Internal errors are logged with their context and answered
//! as `M_UNKNOWN` without detail.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Map, Value, json};

use crate::admin::{self, AdminError};
use crate::directory::DirectoryError;
use crate::directory::search::QueryError;
use crate::domain_requests::DomainRequestError;
use crate::homeserver::HomeserverError;
use crate::identity::IdentityError;
use crate::identity::sessions::{self, SessionError};

/// A Matrix-style error body, as every endpoint answers errors (`error::ApiError`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `M_…`, or `ANNUAIRE_…` for codes of this API.
    pub errcode: String,
    /// For people.
    pub error: String,
}

/// An error answered to an API caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{errcode}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Matrix error code, `M_…` (or `ANNUAIRE_…` for codes of our own API).
    pub errcode: &'static str,
    /// A message for people.
    pub message: String,
    /// Extra fields merged into the JSON body (`retry_after_ms`, `lookup_pepper`, `decision`…).
    pub extra: Map<String, Value>,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// Adds a field to the JSON body.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// 404 `M_UNRECOGNIZED`: no such endpoint.
    pub fn unrecognized() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "Unrecognized request",
        )
    }

    /// 405 `M_UNRECOGNIZED`: the endpoint exists, not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_UNRECOGNIZED",
            "Method not allowed on this endpoint",
        )
    }

    /// 400 `M_NOT_JSON`.
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", message)
    }

    /// 400 `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }

    /// 400 `M_MISSING_PARAMS`.
    pub fn missing_params(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_MISSING_PARAMS", message)
    }

    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
    }

    /// 413 `M_TOO_LARGE`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", message)
    }

    /// 403 `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", message)
    }

    /// 401 `M_UNAUTHORIZED`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", message)
    }

    /// 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`.
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests; retry later",
        )
        .with("retry_after_ms", retry_after_ms)
    }

    /// 503 `M_UNKNOWN`: a dependency (the database) is unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", message)
    }

    /// 500 `M_UNKNOWN`: logs `context` (never user data in clear) and answers without detail.
    pub fn internal(context: impl std::fmt::Display) -> Self {
        tracing::error!(error = %context, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "Internal server error",
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("errcode".into(), Value::from(self.errcode));
        body.insert("error".into(), Value::from(self.message.clone()));
        for (k, v) in &self.extra {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(ms) = self.extra.get("retry_after_ms").and_then(Value::as_u64) {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.insert_header((header::RETRY_AFTER, v));
            }
        }
        response.json(self.body())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            tracing::error!(error = %e, "database unavailable");
            return ApiError::unavailable("The database is unavailable; retry later");
        }
        ApiError::internal(e)
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        let message = e.to_string();
        match e {
            IdentityError::Unauthorized(m) => ApiError::unauthorized(m),
            IdentityError::TermsNotSigned => {
                ApiError::new(StatusCode::FORBIDDEN, "M_TERMS_NOT_SIGNED", message)
            }
            IdentityError::NotYours(m) => ApiError::new(StatusCode::FORBIDDEN, "M_UNAUTHORIZED", m),
            IdentityError::Forbidden(m) => ApiError::forbidden(m),
            IdentityError::InvalidParam(m) => ApiError::invalid_param(m),
            IdentityError::UnsupportedMedium(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "M_UNRECOGNIZED", m)
            }
            IdentityError::InvalidEmail(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_EMAIL", message)
            }
            IdentityError::ThreepidInUse { mxid } => {
                ApiError::new(StatusCode::BAD_REQUEST, "M_THREEPID_IN_USE", message)
                    .with("mxid", mxid)
            }
            IdentityError::ThreepidDenied {
                message,
                reason_code,
            } => ApiError::new(StatusCode::FORBIDDEN, "M_THREEPID_DENIED", message)
                .with("decision", "denied")
                .with("reason_code", reason_code.as_str()),
            IdentityError::BindingNotPermitted(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "M_BINDING_NOT_PERMITTED", m)
            }
            IdentityError::Session(e) => ApiError::from(e),
            IdentityError::RateLimited { retry_after_ms } => {
                ApiError::limit_exceeded(retry_after_ms)
            }
            IdentityError::InvalidPepper { current } => {
                ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PEPPER", message)
                    .with("lookup_pepper", current)
            }
            IdentityError::TooLarge(m) => ApiError::too_large(m),
            IdentityError::KeyNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
            }
            IdentityError::UnknownInvite => {
                ApiError::new(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", message)
            }
            IdentityError::Homeserver(m) => ApiError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", m),
            IdentityError::Store(e) => e.into(),
            IdentityError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NoValidSession => ApiError::new(
                StatusCode::NOT_FOUND,
                "M_NO_VALID_SESSION",
                "No valid session was found matching that sid and client secret",
            ),
            SessionError::NotValidated => ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_SESSION_NOT_VALIDATED",
                "This validation session has not yet been completed",
            ),
            SessionError::Expired => ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_SESSION_EXPIRED",
                "This validation session has expired: start again with a new requestToken",
            ),
            SessionError::TokenIncorrect { locked: false } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_TOKEN_INCORRECT",
                "The token is incorrect",
            ),
            SessionError::TokenIncorrect { locked: true } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_TOKEN_INCORRECT",
                format!(
                    "This session is locked after {} incorrect tokens; start again with a new \
                     client_secret",
                    sessions::MAX_WRONG_TOKENS
                ),
            )
            .with("locked", true),
            SessionError::InvalidParam(message) => ApiError::invalid_param(message),
            SessionError::InvalidEmail(reason) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_INVALID_EMAIL",
                format!("Invalid email address: {reason}"),
            ),
            SessionError::Denied {
                reason,
                reason_code,
            } => ApiError::new(StatusCode::FORBIDDEN, "M_THREEPID_DENIED", reason)
                .with("decision", "denied")
                .with("reason_code", reason_code.as_str()),
            SessionError::LimitExceeded { retry_after_ms } => {
                ApiError::limit_exceeded(retry_after_ms)
            }
            SessionError::Store(e) => ApiError::from(e),
            SessionError::Mail(e) => ApiError::internal(format!("confirmation mail: {e}")),
        }
    }
}

impl From<DirectoryError> for ApiError {
    fn from(e: DirectoryError) -> Self {
        let message = e.to_string();
        match e {
            DirectoryError::Query(QueryError::Empty) => {
                ApiError::invalid_param("The search term must contain at least one letter or digit")
            }
            DirectoryError::InvalidUserId(_)
            | DirectoryError::InvalidName
            | DirectoryError::InvalidBatch(_)
            | DirectoryError::InvalidProfile(_) => ApiError::invalid_param(message),
            DirectoryError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
            }
            DirectoryError::UnknownHost(host) => ApiError::forbidden(format!(
                "This server does not serve the user directory for the host {host:?}"
            )),
            DirectoryError::MissingToken => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "M_MISSING_TOKEN",
                "Missing access token",
            ),
            DirectoryError::UnknownToken => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "M_UNKNOWN_TOKEN",
                "Unrecognised access token",
            ),
            DirectoryError::Unauthenticated => ApiError::unauthorized(message),
            DirectoryError::WrongServer { .. }
            | DirectoryError::ExternalsMayNotSearch
            | DirectoryError::HomeserverNotAllowed(_)
            | DirectoryError::BadSignature(_)
            | DirectoryError::ForeignUser { .. } => ApiError::forbidden(message),
            DirectoryError::HomeserverUnavailable(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", message)
            }
            DirectoryError::BadJson(m) => ApiError::bad_json(m),
            DirectoryError::WrongDestination(_) => ApiError::unauthorized(message),
            DirectoryError::RateLimited { retry_after_ms } => {
                ApiError::limit_exceeded(retry_after_ms)
            }
            DirectoryError::Store(e) => e.into(),
            DirectoryError::SyncInProgress => ApiError::unavailable(message),
            DirectoryError::Ldap(e) => ApiError::internal(e),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
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
                ApiError::invalid_param(admin::join_rule_errors(&errors))
                    .with("errors", json!(errors))
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
}

impl From<HomeserverError> for ApiError {
    fn from(e: HomeserverError) -> Self {
        let message = e.to_string();
        match e {
            HomeserverError::Unauthorized(m) => ApiError::unauthorized(m),
            HomeserverError::OutOfScope(m) => ApiError::forbidden(m),
            HomeserverError::InvalidParam(m) | HomeserverError::InvalidServerName(m) => {
                ApiError::invalid_param(m)
            }
            HomeserverError::InvalidEmail(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_EMAIL", message)
            }
            HomeserverError::TokenExists(m) => {
                ApiError::new(StatusCode::CONFLICT, "ANNUAIRE_TOKEN_EXISTS", m)
            }
            HomeserverError::NoToken(m) => ApiError::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", m),
            HomeserverError::Identity(e) => e.into(),
            HomeserverError::Directory(e) => e.into(),
            HomeserverError::Store(e) => e.into(),
        }
    }
}

impl From<DomainRequestError> for ApiError {
    fn from(e: DomainRequestError) -> Self {
        match e {
            DomainRequestError::Store(e) => ApiError::from(e),
            DomainRequestError::Mail(e) => ApiError::internal(e),
            DomainRequestError::InvalidAddress(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_EMAIL", message)
            }
            e @ DomainRequestError::InvalidField { .. } => ApiError::invalid_param(e.to_string()),
            e @ DomainRequestError::Disabled => {
                ApiError::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", e.to_string())
            }
            e @ DomainRequestError::NotNeeded => {
                ApiError::new(StatusCode::CONFLICT, "ANNUAIRE_DOMAIN_KNOWN", e.to_string())
            }
            DomainRequestError::RateLimited { retry_after_ms } => {
                ApiError::limit_exceeded(retry_after_ms)
            }
            e @ (DomainRequestError::InvalidLink | DomainRequestError::NotFound(_)) => {
                ApiError::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", e.to_string())
            }
            e @ DomainRequestError::DomainNotAllowed(_) => ApiError::new(
                StatusCode::CONFLICT,
                "ANNUAIRE_DOMAIN_NOT_ALLOWED",
                e.to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_carries_code_message_and_extra() {
        let e = ApiError::limit_exceeded(1500);
        assert_eq!(
            e.body(),
            serde_json::json!({"errcode": "M_LIMIT_EXCEEDED", "error": "Too many requests; retry later", "retry_after_ms": 1500})
        );
        let r = e.error_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "2");
    }
}
