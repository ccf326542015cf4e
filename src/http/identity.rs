//! The Matrix Identity Service API v2: accounts, terms, public keys, hashed lookups, binds and
//! unbinds, and 3PID invitations. Thin handlers over `crate::identity`; [`identity_error`] maps
//! its errors.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{AccountAuth, IdentityAuth, access_token};
use super::extract::{MatrixJson, MatrixQuery, RawBody, parse_json_object};
use super::{AppData, resource};
use crate::error::ApiError;
use crate::identity::accounts::{self, OpenIdToken};
use crate::identity::bindings::{self, BindRequest, UnbindAuth, UnbindRequest};
use crate::identity::invites::{self, InviteRequest};
use crate::identity::{IdentityError, lookup, terms};
use crate::mail::negotiate_language;
use crate::matrix::keys;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    const V2: &str = "/_matrix/identity/v2";
    cfg.service(resource(&format!("{V2}/account/register")).route(web::post().to(register)))
        .service(resource(&format!("{V2}/account")).route(web::get().to(account)))
        .service(resource(&format!("{V2}/account/logout")).route(web::post().to(logout)))
        .service(
            resource(&format!("{V2}/terms"))
                .route(web::get().to(get_terms))
                .route(web::post().to(accept_terms)),
        )
        // Before `/pubkey/{keyId}`, which would otherwise take `isvalid` as a key id.
        .service(resource(&format!("{V2}/pubkey/isvalid")).route(web::get().to(pubkey_isvalid)))
        .service(
            resource(&format!("{V2}/pubkey/ephemeral/isvalid"))
                .route(web::get().to(ephemeral_isvalid)),
        )
        .service(resource(&format!("{V2}/pubkey/{{key_id}}")).route(web::get().to(pubkey)))
        .service(resource(&format!("{V2}/hash_details")).route(web::get().to(hash_details)))
        .service(resource(&format!("{V2}/lookup")).route(web::post().to(lookup)))
        .service(resource(&format!("{V2}/3pid/bind")).route(web::post().to(bind)))
        .service(resource(&format!("{V2}/3pid/unbind")).route(web::post().to(unbind)))
        .service(resource(&format!("{V2}/store-invite")).route(web::post().to(store_invite)))
        .service(resource(&format!("{V2}/sign-ed25519")).route(web::post().to(sign_ed25519)));
}

/// Maps an identity error to its Matrix error.
pub fn identity_error(e: IdentityError) -> ApiError {
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
            ApiError::new(StatusCode::BAD_REQUEST, "M_THREEPID_IN_USE", message).with("mxid", mxid)
        }
        IdentityError::ThreepidDenied(m) => {
            ApiError::new(StatusCode::FORBIDDEN, "M_THREEPID_DENIED", m)
        }
        IdentityError::BindingNotPermitted(m) => {
            ApiError::new(StatusCode::FORBIDDEN, "M_BINDING_NOT_PERMITTED", m)
        }
        IdentityError::Session(e) => super::validation::session_error(e),
        IdentityError::RateLimited { retry_after_ms } => ApiError::limit_exceeded(retry_after_ms),
        IdentityError::InvalidPepper { current } => {
            ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PEPPER", message)
                .with("lookup_pepper", current)
        }
        IdentityError::TooLarge(m) => ApiError::too_large(m),
        IdentityError::KeyNotFound => ApiError::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", message),
        IdentityError::UnknownInvite => {
            ApiError::new(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", message)
        }
        IdentityError::Homeserver(m) => ApiError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", m),
        IdentityError::Store(e) => e.into(),
        IdentityError::Internal(m) => ApiError::internal(m),
    }
}

/// # POST /_matrix/identity/v2/account/register
#[utoipa::path(post, path = "/_matrix/identity/v2/account/register", tag = "identity",
    summary = "Register an account with an OpenID token from the user's homeserver",
    request_body(content = Object, description = "The OpenID token a homeserver gave: `{access_token, token_type: \"Bearer\", matrix_server_name, expires_in}`"),
    responses(
        (status = 200, description = "`{token}`: the access token for this identity server", content_type = "application/json"),
        (status = 400, description = "M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = super::openapi::ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED: the homeserver rejected the OpenID token", body = super::openapi::ErrorBody),
        (status = 502, description = "M_UNKNOWN: the homeserver could not be asked", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn register(
    app: AppData,
    MatrixJson(openid): MatrixJson<OpenIdToken>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let token = accounts::register(&app, &openid, &mut rand::rngs::OsRng, now)
        .await
        .map_err(identity_error)?;
    Ok(HttpResponse::Ok().json(json!({ "token": token })))
}

/// # GET /_matrix/identity/v2/account
#[utoipa::path(get, path = "/_matrix/identity/v2/account", tag = "identity",
    summary = "The user id of the access token's account",
    security(("identity_token" = [])),
    responses(
        (status = 200, description = "`{user_id}`", content_type = "application/json"),
        (status = 401, description = "M_UNAUTHORIZED", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn account(AccountAuth(account): AccountAuth) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "user_id": account.user_id }))
}

/// # POST /_matrix/identity/v2/account/logout
///
/// The body is optional (the spec's historical exception) and ignored.
#[utoipa::path(post, path = "/_matrix/identity/v2/account/logout", tag = "identity",
    summary = "Revoke the access token",
    security(("identity_token" = [])),
    responses(
        (status = 200, description = "`{}`", content_type = "application/json"),
        (status = 401, description = "M_UNAUTHORIZED", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn logout(
    app: AppData,
    AccountAuth(account): AccountAuth,
) -> Result<HttpResponse, ApiError> {
    accounts::logout(&app, &account)
        .await
        .map_err(identity_error)?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// # GET /_matrix/identity/v2/terms
#[utoipa::path(get, path = "/_matrix/identity/v2/terms", tag = "identity",
    summary = "The terms of service to accept",
    responses((status = 200, description = "`{policies: {name: {version, <lang>: {name, url}}}}`", content_type = "application/json")))]
pub(super) async fn get_terms(app: AppData) -> HttpResponse {
    HttpResponse::Ok().json(app.identity.terms().to_json())
}

/// `POST /terms` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct AcceptTerms {
    /// The URLs of the accepted documents.
    user_accepts: Vec<String>,
}

/// # POST /_matrix/identity/v2/terms
#[utoipa::path(post, path = "/_matrix/identity/v2/terms", tag = "identity",
    summary = "Accept terms of service",
    security(("identity_token" = [])),
    request_body = AcceptTerms,
    responses(
        (status = 200, description = "`{}`", content_type = "application/json"),
        (status = 400, description = "M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = super::openapi::ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn accept_terms(
    app: AppData,
    AccountAuth(account): AccountAuth,
    MatrixJson(body): MatrixJson<AcceptTerms>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    terms::accept(&app, &account, &body.user_accepts, now)
        .await
        .map_err(identity_error)?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// # GET /_matrix/identity/v2/pubkey/{keyId}
#[utoipa::path(get, path = "/_matrix/identity/v2/pubkey/{key_id}", tag = "identity",
    summary = "A long-term public key",
    params(("key_id" = String, Path, description = "`ed25519:0`")),
    responses(
        (status = 200, description = "`{public_key}` (unpadded base64)", content_type = "application/json"),
        (status = 404, description = "M_NOT_FOUND", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn pubkey(
    app: AppData,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = keys::public_key_for(app.identity.signing_key(), &path)
        .ok_or_else(|| identity_error(IdentityError::KeyNotFound))?;
    Ok(HttpResponse::Ok().json(json!({ "public_key": key })))
}

/// The key to check.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PublicKeyQuery {
    /// Unpadded base64.
    public_key: String,
}

/// # GET /_matrix/identity/v2/pubkey/isvalid
#[utoipa::path(get, path = "/_matrix/identity/v2/pubkey/isvalid", tag = "identity",
    summary = "Whether a public key is this server's long-term key",
    params(PublicKeyQuery),
    responses(
        (status = 200, description = "`{valid}`", content_type = "application/json"),
        (status = 400, description = "M_MISSING_PARAMS", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn pubkey_isvalid(
    app: AppData,
    MatrixQuery(q): MatrixQuery<PublicKeyQuery>,
) -> HttpResponse {
    let valid = keys::is_long_term_key(app.identity.signing_key(), &q.public_key);
    HttpResponse::Ok().json(json!({ "valid": valid }))
}

/// # GET /_matrix/identity/v2/pubkey/ephemeral/isvalid
#[utoipa::path(get, path = "/_matrix/identity/v2/pubkey/ephemeral/isvalid", tag = "identity",
    summary = "Whether a public key is the ephemeral key of an invitation",
    params(PublicKeyQuery),
    responses(
        (status = 200, description = "`{valid}`", content_type = "application/json"),
        (status = 400, description = "M_MISSING_PARAMS", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn ephemeral_isvalid(
    app: AppData,
    MatrixQuery(q): MatrixQuery<PublicKeyQuery>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let valid = invites::ephemeral_key_is_valid(&app, &q.public_key, now).await?;
    Ok(HttpResponse::Ok().json(json!({ "valid": valid })))
}

/// # GET /_matrix/identity/v2/hash_details
#[utoipa::path(get, path = "/_matrix/identity/v2/hash_details", tag = "identity",
    summary = "The lookup hashing algorithms and pepper",
    description = "The access token may also be given as `?access_token=` (Synapse does).",
    security(("identity_token" = [])),
    responses(
        (status = 200, description = "`{algorithms: [\"none\", \"sha256\"], lookup_pepper}`", content_type = "application/json"),
        (status = 401, description = "M_UNAUTHORIZED", body = super::openapi::ErrorBody),
        (status = 403, description = "M_TERMS_NOT_SIGNED", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn hash_details(
    app: AppData,
    _auth: IdentityAuth,
) -> Result<HttpResponse, ApiError> {
    let pepper = lookup::hash_details(&app).await.map_err(identity_error)?;
    Ok(HttpResponse::Ok().json(json!({
        "algorithms": lookup::ALGORITHMS,
        "lookup_pepper": pepper.value,
    })))
}

/// `POST /lookup` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct LookupBody {
    /// `sha256` or `none`.
    algorithm: String,
    /// The pepper of `/hash_details`.
    pepper: String,
    /// Hashes (`sha256`) or `"<address> <medium>"` (`none`).
    addresses: Vec<String>,
}

/// # POST /_matrix/identity/v2/lookup
#[utoipa::path(post, path = "/_matrix/identity/v2/lookup", tag = "identity",
    summary = "Look up Matrix ids by hashed (or plain) addresses",
    security(("identity_token" = [])),
    request_body = LookupBody,
    responses(
        (status = 200, description = "`{mappings: {<hash or \"address medium\">: <mxid>}}`", content_type = "application/json"),
        (status = 400, description = "M_INVALID_PEPPER (with `lookup_pepper`), M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON", body = super::openapi::ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = super::openapi::ErrorBody),
        (status = 403, description = "M_TERMS_NOT_SIGNED", body = super::openapi::ErrorBody),
        (status = 413, description = "M_TOO_LARGE", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn lookup(
    app: AppData,
    _auth: IdentityAuth,
    MatrixJson(body): MatrixJson<LookupBody>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let mappings = lookup::lookup(&app, &body.algorithm, &body.pepper, body.addresses, now)
        .await
        .map_err(identity_error)?;
    Ok(HttpResponse::Ok().json(json!({ "mappings": mappings })))
}

/// # POST /_matrix/identity/v2/3pid/bind
#[utoipa::path(post, path = "/_matrix/identity/v2/3pid/bind", tag = "identity",
    summary = "Bind a validated address to the caller's Matrix id",
    security(("identity_token" = [])),
    request_body(content = Object, description = "`{sid, client_secret, mxid}`"),
    responses(
        (status = 200, description = "The signed association `{address, medium, mxid, not_before, not_after, ts, signatures}`", content_type = "application/json"),
        (status = 400, description = "M_SESSION_NOT_VALIDATED, M_SESSION_EXPIRED, M_INVALID_PARAM, M_MISSING_PARAMS", body = super::openapi::ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = super::openapi::ErrorBody),
        (status = 403, description = "M_TERMS_NOT_SIGNED, M_THREEPID_DENIED, M_BINDING_NOT_PERMITTED, M_UNAUTHORIZED (another user's mxid)", body = super::openapi::ErrorBody),
        (status = 404, description = "M_NO_VALID_SESSION", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn bind(
    app: AppData,
    IdentityAuth(account): IdentityAuth,
    MatrixJson(request): MatrixJson<BindRequest>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let signed = bindings::bind(&app, &account, &request, now)
        .await
        .map_err(identity_error)?;
    Ok(HttpResponse::Ok().json(signed))
}

/// # POST /_matrix/identity/v2/3pid/unbind
///
/// Authenticated by the body (`sid` + `client_secret`), an `X-Matrix` signature of the user's
/// homeserver, or the user's own access token; see `identity::bindings::unbind`.
#[utoipa::path(post, path = "/_matrix/identity/v2/3pid/unbind", tag = "identity",
    summary = "Unbind an address from a Matrix id",
    description = "Authenticated by `sid` + `client_secret` in the body, an `Authorization: X-Matrix` signature of the user's homeserver, or the user's own access token.",
    security((), ("x_matrix" = []), ("identity_token" = [])),
    request_body(content = Object, description = "`{mxid, threepid: {medium, address}, sid?, client_secret?}`"),
    responses(
        (status = 200, description = "`{}` (also when nothing was bound)", content_type = "application/json"),
        (status = 400, description = "M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = super::openapi::ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED: no credentials", body = super::openapi::ErrorBody),
        (status = 403, description = "M_FORBIDDEN: bad signature, session for another address, another user's token", body = super::openapi::ErrorBody),
        (status = 502, description = "M_UNKNOWN: the homeserver's keys could not be fetched", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn unbind(
    req: HttpRequest,
    app: AppData,
    RawBody(body): RawBody,
) -> Result<HttpResponse, ApiError> {
    let request: UnbindRequest = parse_json_object(&body)?;
    let content: Value = parse_json_object(&body)?;
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| {
            v.get(..9)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("X-Matrix "))
        });
    let uri = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_string(), |p| p.as_str().to_string());
    let token = access_token(&req);
    let auth = match (authorization, &token) {
        (Some(authorization), _) => UnbindAuth::Signature {
            authorization,
            uri: &uri,
            content: &content,
        },
        (None, Some(token)) => UnbindAuth::Token(token),
        (None, None) => UnbindAuth::None,
    };
    let now = app.clock.now_ms();
    bindings::unbind(&app, &request, auth, now)
        .await
        .map_err(identity_error)?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// # POST /_matrix/identity/v2/store-invite
///
/// The mail's language comes from the request's `Accept-Language`, else
/// `mail.default_language`.
#[utoipa::path(post, path = "/_matrix/identity/v2/store-invite", tag = "identity",
    summary = "Store an invitation to an address that is not bound yet (and mail it)",
    security(("identity_token" = [])),
    request_body(content = Object, description = "`{medium, address, room_id, sender, room_alias?, room_avatar_url?, room_join_rules?, room_name?, room_type?, sender_display_name?, sender_avatar_url?}` (empty strings count as absent)"),
    responses(
        (status = 200, description = "`{token, public_keys: [{public_key, key_validity_url}], display_name}`", content_type = "application/json"),
        (status = 400, description = "M_THREEPID_IN_USE (with `mxid`), M_INVALID_EMAIL, M_INVALID_PARAM, M_UNRECOGNIZED (medium)", body = super::openapi::ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = super::openapi::ErrorBody),
        (status = 403, description = "M_TERMS_NOT_SIGNED, M_THREEPID_DENIED, M_UNAUTHORIZED (sender is not the caller)", body = super::openapi::ErrorBody),
        (status = 429, description = "M_LIMIT_EXCEEDED", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn store_invite(
    req: HttpRequest,
    app: AppData,
    IdentityAuth(account): IdentityAuth,
    MatrixJson(request): MatrixJson<InviteRequest>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let language = negotiate_language(
        req.headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
        app.mailer.default_language(),
    );
    let receipt = invites::store_invite(
        &app,
        &account,
        &request,
        language,
        &mut rand::rngs::OsRng,
        now,
    )
    .await
    .map_err(identity_error)?;
    Ok(HttpResponse::Ok().json(receipt.to_json()))
}

/// `POST /sign-ed25519` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct SignBody {
    /// The invited user.
    mxid: String,
    /// The invitation token.
    token: String,
    /// The ephemeral private key (unpadded base64).
    private_key: String,
}

/// # POST /_matrix/identity/v2/sign-ed25519
#[utoipa::path(post, path = "/_matrix/identity/v2/sign-ed25519", tag = "identity",
    summary = "Sign invitation details with an invitation's ephemeral key",
    security(("identity_token" = [])),
    request_body = SignBody,
    responses(
        (status = 200, description = "`{mxid, sender, token, signatures}`", content_type = "application/json"),
        (status = 400, description = "M_INVALID_PARAM, M_MISSING_PARAMS", body = super::openapi::ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = super::openapi::ErrorBody),
        (status = 404, description = "M_UNRECOGNIZED: unknown invitation token", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn sign_ed25519(
    app: AppData,
    IdentityAuth(account): IdentityAuth,
    MatrixJson(body): MatrixJson<SignBody>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let signed = invites::sign_ed25519(
        &app,
        &account,
        &body.mxid,
        &body.token,
        &body.private_key,
        now,
    )
    .await
    .map_err(identity_error)?;
    Ok(HttpResponse::Ok().json(signed))
}
