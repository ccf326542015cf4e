//! Identity-service authentication extractors: the access token comes from
//! `Authorization: Bearer …` or, where clients cannot set headers (Synapse on `/hash_details`),
//! from `?access_token=…`. Missing, unknown or expired → 401 `M_UNAUTHORIZED`.
//!
//! [`IdentityAuth`] also requires the current terms to be accepted (403 `M_TERMS_NOT_SIGNED`);
//! [`AccountAuth`] does not, for `/v2/terms` and `/v2/account*`, where users must be able to
//! act before accepting. [`ValidationAuth`] is [`IdentityAuth`] when `identity.require_auth`
//! is set (the default), and nothing otherwise: the validation endpoints.
//!
//! [`HomeserverAuth`] is the homeserver API's caller: from `http.internal_networks` (else 403
//! `M_FORBIDDEN`), with a homeserver token in `Authorization: Bearer …` (else 401).

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;

use super::AppData;
use super::error::ApiError;
use crate::homeserver::Homeserver;
use crate::identity::accounts::Account;

/// A caller with a valid token who accepted the current terms.
#[derive(Debug, Clone)]
pub struct IdentityAuth(pub Account);

/// A caller with a valid token (terms not checked).
#[derive(Debug, Clone)]
pub struct AccountAuth(pub Account);

/// The validation endpoints' caller: authenticated as [`IdentityAuth`] when
/// `identity.require_auth` is true, anonymous (`None`) when it is false.
#[derive(Debug, Clone)]
pub struct ValidationAuth(pub Option<Account>);

/// A homeserver of the internal networks, authenticated by its homeserver API token.
#[derive(Debug, Clone)]
pub struct HomeserverAuth(pub Homeserver);

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// The access token of a request: the `Bearer` header first, else the query string.
pub fn access_token(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION)
        && let Ok(text) = value.to_str()
        && let Some((scheme, token)) = text.trim().split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        let token = token.trim();
        if !token.is_empty() {
            return Some(token.to_string());
        }
    }
    actix_web::web::Query::<TokenQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().access_token)
        .filter(|t| !t.is_empty())
}

async fn authenticate(
    app: Option<AppData>,
    token: Option<String>,
    terms: bool,
) -> Result<Account, ApiError> {
    let Some(app) = app else {
        return Err(ApiError::internal(
            "identity authentication without app data",
        ));
    };
    let Some(token) = token else {
        return Err(ApiError::unauthorized(
            "An identity server access token is required (Authorization: Bearer …)",
        ));
    };
    let now = app.clock.now_ms();
    let account = app.identity.authenticate(&token, now).await?;
    if terms {
        app.identity.check_terms(&account).await?;
    }
    Ok(account)
}

impl FromRequest for IdentityAuth {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let app = req.app_data::<AppData>().cloned();
        let token = access_token(req);
        Box::pin(async move { authenticate(app, token, true).await.map(IdentityAuth) })
    }
}

impl FromRequest for ValidationAuth {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let app = req.app_data::<AppData>().cloned();
        let required = app
            .as_ref()
            .is_none_or(|app| app.config.identity.require_auth);
        let token = access_token(req);
        Box::pin(async move {
            if !required {
                return Ok(ValidationAuth(None));
            }
            authenticate(app, token, true)
                .await
                .map(|a| ValidationAuth(Some(a)))
        })
    }
}

impl FromRequest for AccountAuth {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let app = req.app_data::<AppData>().cloned();
        let token = access_token(req);
        Box::pin(async move { authenticate(app, token, false).await.map(AccountAuth) })
    }
}

/// The `Bearer` token of the `Authorization` header only (never the query string: homeserver
/// tokens must not reach access logs).
fn bearer_token(req: &HttpRequest) -> Option<String> {
    let text = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = text.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

impl FromRequest for HomeserverAuth {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let app = req.app_data::<AppData>().cloned();
        let internal = app.as_ref().is_some_and(|app| super::is_internal(req, app));
        let token = bearer_token(req);
        Box::pin(async move {
            let Some(app) = app else {
                return Err(ApiError::internal(
                    "homeserver authentication without app data",
                ));
            };
            if !internal {
                return Err(ApiError::forbidden(
                    "The homeserver API is only for homeservers on the internal networks",
                ));
            }
            let homeserver = app.homeserver.authenticate(token.as_deref()).await?;
            Ok(HomeserverAuth(homeserver))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn token_from_header_or_query() {
        let r = TestRequest::default()
            .insert_header(("Authorization", "Bearer abc"))
            .to_http_request();
        assert_eq!(access_token(&r).as_deref(), Some("abc"));
        let r = TestRequest::default()
            .insert_header(("Authorization", "bearer  abc "))
            .to_http_request();
        assert_eq!(access_token(&r).as_deref(), Some("abc"));
        let r = TestRequest::with_uri("/x?access_token=q%2Bt&other=1").to_http_request();
        assert_eq!(access_token(&r).as_deref(), Some("q+t"));
        let r = TestRequest::with_uri("/x?access_token=q")
            .insert_header(("Authorization", "Bearer h"))
            .to_http_request();
        assert_eq!(access_token(&r).as_deref(), Some("h"), "the header wins");
        let r = TestRequest::with_uri("/x")
            .insert_header(("Authorization", "X-Matrix origin=a,key=\"k\",sig=\"s\""))
            .to_http_request();
        assert_eq!(access_token(&r), None);
        let r = TestRequest::with_uri("/x?access_token=").to_http_request();
        assert_eq!(access_token(&r), None);
    }
}
