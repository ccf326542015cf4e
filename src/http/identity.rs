//! The Matrix Identity Service API v2: accounts, terms, public keys, hashed lookups, binds and
//! unbinds, and 3PID invitations. Thin handlers over [`crate::identity::IdentityService`]; its
//! errors become Matrix errors through `From` (see `super::error`).
//!
//! Response structs list their fields in alphabetical order: that is the order the `json!`
//! objects they replaced were written in, and clients' snapshot tests pin the bytes.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::{AccountAuth, IdentityAuth, access_token};
use super::error::{ApiError, ErrorBody};
use super::extract::{MatrixJson, MatrixQuery, RawBody, XMatrix, parse_json_object, parse_query};
use super::{AppData, Empty, resource};
use crate::identity::accounts::OpenIdToken;
use crate::identity::bindings::{BindRequest, UnbindAuth, UnbindRequest};
use crate::identity::invites::InviteRequest;
use crate::identity::lookup;

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
        .service(resource(&format!("{V2}/hash_details")).route(web::get().to(hash_details)))
        .service(resource(&format!("{V2}/lookup")).route(web::post().to(lookup)))
        .service(resource(&format!("{V2}/3pid/bind")).route(web::post().to(bind)))
        .service(resource(&format!("{V2}/3pid/unbind")).route(web::post().to(unbind)))
        .service(resource(&format!("{V2}/store-invite")).route(web::post().to(store_invite)))
        .service(resource(&format!("{V2}/sign-ed25519")).route(web::post().to(sign_ed25519)))
        // The link mailed with an invitation points here (Element calls it without credentials).
        .service(
            resource("/_matrix/identity/api/v1/sign-ed25519")
                .route(web::post().to(sign_ed25519_v1)),
        )
        // Last: the router tries routes in order, and a pattern with a parameter is a regular
        // expression to run, which the hot routes above need not pay for.
        .service(resource(&format!("{V2}/pubkey/{{key_id}}")).route(web::get().to(pubkey)));
}

/// # POST /_matrix/identity/v2/account/register
#[utoipa::path(post, path = "/_matrix/identity/v2/account/register", tag = "identity",
    summary = "Register an account with an OpenID token from the user's homeserver",
    request_body(content = Object, description = "The OpenID token a homeserver gave: `{access_token, token_type: \"Bearer\", matrix_server_name, expires_in}`"),
    responses(
        (status = 200, description = "The access token for this identity server", body = TokenResponse),
        (status = 400, description = "M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED: the homeserver rejected the OpenID token", body = ErrorBody),
        (status = 502, description = "M_UNKNOWN: the homeserver could not be asked", body = ErrorBody),
    ))]
pub(super) async fn register(
    app: AppData,
    MatrixJson(openid): MatrixJson<OpenIdToken>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let token = app
        .identity
        .register(&openid, &mut rand::rngs::OsRng, now)
        .await?;
    Ok(HttpResponse::Ok().json(TokenResponse { token }))
}

/// `{token}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// The access token.
    pub token: String,
}

/// `{user_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountResponse {
    /// The Matrix user id of the token's account.
    pub user_id: String,
}

/// # GET /_matrix/identity/v2/account
#[utoipa::path(get, path = "/_matrix/identity/v2/account", tag = "identity",
    summary = "The user id of the access token's account",
    security(("identity_token" = [])),
    responses(
        (status = 200, description = "The account", body = AccountResponse),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
    ))]
pub(super) async fn account(AccountAuth(account): AccountAuth) -> HttpResponse {
    HttpResponse::Ok().json(AccountResponse {
        user_id: account.user_id,
    })
}

/// # POST /_matrix/identity/v2/account/logout
///
/// The body is optional (the spec's historical exception) and ignored.
#[utoipa::path(post, path = "/_matrix/identity/v2/account/logout", tag = "identity",
    summary = "Revoke the access token",
    security(("identity_token" = [])),
    responses(
        (status = 200, description = "`{}`", body = Empty),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
    ))]
pub(super) async fn logout(
    app: AppData,
    AccountAuth(account): AccountAuth,
) -> Result<HttpResponse, ApiError> {
    app.identity.logout(&account).await?;
    Ok(HttpResponse::Ok().json(Empty {}))
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
        (status = 200, description = "`{}`", body = Empty),
        (status = 400, description = "M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
    ))]
pub(super) async fn accept_terms(
    app: AppData,
    AccountAuth(account): AccountAuth,
    MatrixJson(body): MatrixJson<AcceptTerms>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    app.identity
        .accept_terms(&account, &body.user_accepts, now)
        .await?;
    Ok(HttpResponse::Ok().json(Empty {}))
}

/// # GET /_matrix/identity/v2/pubkey/{keyId}
#[utoipa::path(get, path = "/_matrix/identity/v2/pubkey/{key_id}", tag = "identity",
    summary = "A long-term public key (the current one, or one retired by a rotation)",
    params(("key_id" = String, Path, description = "`ed25519:0`")),
    responses(
        (status = 200, description = "The key (unpadded base64)", body = PublicKeyResponse),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
    ))]
pub(super) async fn pubkey(
    app: AppData,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let public_key = app.identity.public_key(&path).await?;
    Ok(HttpResponse::Ok().json(PublicKeyResponse { public_key }))
}

/// `{public_key}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicKeyResponse {
    /// Unpadded base64.
    pub public_key: String,
}

/// `{valid}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidResponse {
    /// Whether the key is valid.
    pub valid: bool,
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
    summary = "Whether a public key is a long-term key of this server (current or retired)",
    params(PublicKeyQuery),
    responses(
        (status = 200, description = "Whether it is", body = ValidResponse),
        (status = 400, description = "M_MISSING_PARAMS", body = ErrorBody),
    ))]
pub(super) async fn pubkey_isvalid(
    app: AppData,
    MatrixQuery(q): MatrixQuery<PublicKeyQuery>,
) -> Result<HttpResponse, ApiError> {
    let valid = app.identity.is_long_term_key(&q.public_key).await?;
    Ok(HttpResponse::Ok().json(ValidResponse { valid }))
}

/// # GET /_matrix/identity/v2/pubkey/ephemeral/isvalid
#[utoipa::path(get, path = "/_matrix/identity/v2/pubkey/ephemeral/isvalid", tag = "identity",
    summary = "Whether a public key is the ephemeral key of an invitation",
    params(PublicKeyQuery),
    responses(
        (status = 200, description = "Whether it is", body = ValidResponse),
        (status = 400, description = "M_MISSING_PARAMS", body = ErrorBody),
    ))]
pub(super) async fn ephemeral_isvalid(
    app: AppData,
    MatrixQuery(q): MatrixQuery<PublicKeyQuery>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let valid = app
        .identity
        .ephemeral_key_is_valid(&q.public_key, now)
        .await?;
    Ok(HttpResponse::Ok().json(ValidResponse { valid }))
}

/// # GET /_matrix/identity/v2/hash_details
#[utoipa::path(get, path = "/_matrix/identity/v2/hash_details", tag = "identity",
    summary = "The lookup hashing algorithms and pepper",
    description = "The access token may also be given as `?access_token=` (Synapse does).",
    security(("identity_token" = [])),
    responses(
        (status = 200, description = "The algorithms and the current pepper", body = HashDetailsResponse),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_TERMS_NOT_SIGNED", body = ErrorBody),
    ))]
pub(super) async fn hash_details(
    app: AppData,
    _auth: IdentityAuth,
) -> Result<HttpResponse, ApiError> {
    let pepper = app.identity.hash_details().await?;
    Ok(HttpResponse::Ok().json(HashDetailsResponse {
        algorithms: lookup::ALGORITHMS,
        lookup_pepper: pepper.value.clone(),
    }))
}

/// `{algorithms, lookup_pepper}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HashDetailsResponse {
    /// `["none", "sha256"]`.
    pub algorithms: [&'static str; 2],
    /// The pepper of `sha256` hashes.
    pub lookup_pepper: String,
}

/// `{mappings}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LookupResponse {
    /// Hash (or `"address medium"`) → Matrix user id, for the entries that are bound.
    pub mappings: BTreeMap<String, String>,
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
        (status = 200, description = "The bound entries", body = LookupResponse),
        (status = 400, description = "M_INVALID_PEPPER (with `lookup_pepper`), M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_TERMS_NOT_SIGNED", body = ErrorBody),
        (status = 413, description = "M_TOO_LARGE", body = ErrorBody),
    ))]
pub(super) async fn lookup(
    app: AppData,
    _auth: IdentityAuth,
    MatrixJson(body): MatrixJson<LookupBody>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let mappings = app
        .identity
        .lookup(&body.algorithm, &body.pepper, body.addresses, now)
        .await?;
    Ok(HttpResponse::Ok().json(LookupResponse { mappings }))
}

/// # POST /_matrix/identity/v2/3pid/bind
#[utoipa::path(post, path = "/_matrix/identity/v2/3pid/bind", tag = "identity",
    summary = "Bind a validated address to the caller's Matrix id",
    security(("identity_token" = [])),
    request_body(content = Object, description = "`{sid, client_secret, mxid}`"),
    responses(
        (status = 200, description = "The signed association `{address, medium, mxid, not_before, not_after, ts, signatures}`", content_type = "application/json"),
        (status = 400, description = "M_SESSION_NOT_VALIDATED, M_SESSION_EXPIRED, M_INVALID_PARAM, M_MISSING_PARAMS", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_TERMS_NOT_SIGNED, M_THREEPID_DENIED, M_BINDING_NOT_PERMITTED, M_UNAUTHORIZED (another user's mxid)", body = ErrorBody),
        (status = 404, description = "M_NO_VALID_SESSION", body = ErrorBody),
    ))]
pub(super) async fn bind(
    app: AppData,
    IdentityAuth(account): IdentityAuth,
    MatrixJson(request): MatrixJson<BindRequest>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let signed = app.identity.bind(&account, &request, now).await?;
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
        (status = 200, description = "`{}` (also when nothing was bound)", body = Empty),
        (status = 400, description = "M_INVALID_PARAM, M_MISSING_PARAMS, M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED: no credentials", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: bad signature, session for another address, another user's token", body = ErrorBody),
        (status = 502, description = "M_UNKNOWN: the homeserver's keys could not be fetched", body = ErrorBody),
    ))]
pub(super) async fn unbind(
    req: HttpRequest,
    app: AppData,
    signed: XMatrix,
    RawBody(body): RawBody,
) -> Result<HttpResponse, ApiError> {
    let request: UnbindRequest = parse_json_object(&body)?;
    let content: Value = parse_json_object(&body)?;
    let token = access_token(&req);
    let auth = match (signed.x_matrix_header(), &token) {
        (Some(authorization), _) => UnbindAuth::Signature {
            authorization,
            uri: &signed.uri,
            content: &content,
        },
        (None, Some(token)) => UnbindAuth::Token(token),
        (None, None) => UnbindAuth::None,
    };
    let now = app.clock.now_ms();
    app.identity.unbind(&request, auth, now).await?;
    Ok(HttpResponse::Ok().json(Empty {}))
}

/// # POST /_matrix/identity/v2/store-invite
///
/// The mail's language comes from the request's `Accept-Language`, else
/// `mail.default_language`.
#[utoipa::path(post, path = "/_matrix/identity/v2/store-invite", tag = "identity",
    summary = "Store an invitation to an address that is not bound yet (and mail it)",
    security(("identity_token" = [])),
    request_body(content = Object, description = "`{medium, address, room_id, sender, room_alias?, room_avatar_url?, room_join_rules?, room_name?, room_type?, sender_display_name?, sender_avatar_url?, org.matrix.web_client_location?}` (empty strings count as absent; the web client location is used for the mail's link only when `invites.allowed_web_clients` lists it). The mail carries every field, the token and the invitation's ephemeral private key."),
    responses(
        (status = 200, description = "`{token, public_keys: [{public_key, key_validity_url}], display_name}`", body = Object),
        (status = 400, description = "M_THREEPID_IN_USE (with `mxid`), M_INVALID_EMAIL, M_INVALID_PARAM, M_UNRECOGNIZED (medium)", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_TERMS_NOT_SIGNED, M_THREEPID_DENIED, M_UNAUTHORIZED (sender is not the caller)", body = ErrorBody),
        (status = 429, description = "M_LIMIT_EXCEEDED", body = ErrorBody),
    ))]
pub(super) async fn store_invite(
    req: HttpRequest,
    app: AppData,
    IdentityAuth(account): IdentityAuth,
    MatrixJson(request): MatrixJson<InviteRequest>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let language = app.mailer.negotiate_language(
        req.headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    );
    let receipt = app
        .identity
        .store_invite(&account, &request, language, &mut rand::rngs::OsRng, now)
        .await?;
    Ok(HttpResponse::Ok().json(receipt))
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
        (status = 400, description = "M_INVALID_PARAM, M_MISSING_PARAMS", body = ErrorBody),
        (status = 401, description = "M_UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: the private key is not the invitation's; M_UNAUTHORIZED: mxid is not the caller", body = ErrorBody),
        (status = 404, description = "M_UNRECOGNIZED: unknown invitation token", body = ErrorBody),
    ))]
pub(super) async fn sign_ed25519(
    app: AppData,
    IdentityAuth(account): IdentityAuth,
    MatrixJson(body): MatrixJson<SignBody>,
) -> Result<HttpResponse, ApiError> {
    let now = app.clock.now_ms();
    let signed = app
        .identity
        .sign_ed25519(&account, &body.mxid, &body.token, &body.private_key, now)
        .await?;
    Ok(HttpResponse::Ok().json(signed))
}

/// The arguments of the v1 `sign-ed25519`, each from the JSON body or the query string.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams, utoipa::ToSchema)]
#[into_params(parameter_in = Query)]
pub(super) struct SignArgs {
    /// The Matrix ID that accepts the invitation.
    mxid: Option<String>,
    /// The invitation token.
    token: Option<String>,
    /// The invitation's ephemeral private key (unpadded base64, standard or URL-safe).
    private_key: Option<String>,
}

impl SignArgs {
    /// Each argument from `self`, else from `fallback`; all three are required.
    fn complete(self, fallback: SignArgs) -> Result<(String, String, String), ApiError> {
        let mxid = self.mxid.or(fallback.mxid);
        let token = self.token.or(fallback.token);
        let private_key = self.private_key.or(fallback.private_key);
        match (mxid, token, private_key) {
            (Some(mxid), Some(token), Some(private_key)) => Ok((mxid, token, private_key)),
            (mxid, token, private_key) => {
                let missing: Vec<&str> = [
                    ("mxid", mxid.is_none()),
                    ("token", token.is_none()),
                    ("private_key", private_key.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, absent)| absent.then_some(name))
                .collect();
                Err(ApiError::missing_params(format!(
                    "Missing parameters: {}",
                    missing.join(", ")
                )))
            }
        }
    }
}

/// # POST /_matrix/identity/api/v1/sign-ed25519
///
/// The unauthenticated form, which the `signurl` of invitation mails points at: Element-style
/// clients `POST <signurl>&mxid=…` without a body or credentials (a CORS "simple" request;
/// every `/_matrix` answer carries `Access-Control-Allow-Origin: *`). Arguments come from a
/// JSON body when `Content-Type` is JSON, else from the query string (as Sydent reads them).
/// The private key, mailed to the invited address only, is the credential.
#[utoipa::path(post, path = "/_matrix/identity/api/v1/sign-ed25519", tag = "identity",
    summary = "Sign invitation details with the mailed private key (no access token; the mailed link)",
    description = "Arguments in the query string (what Element sends: `POST <signurl>&mxid=@user:server`, no body) or in a JSON body. The signature is by the invitation's ephemeral key, under this server's name and key id `ed25519:0`; the answer is the `third_party_signed` of `POST /_matrix/client/v3/join/{roomIdOrAlias}`.",
    params(SignArgs),
    request_body(content = SignArgs, description = "Optional: `{mxid, token, private_key}` with `Content-Type: application/json`"),
    responses(
        (status = 200, description = "`{mxid, sender, token, signatures}`", content_type = "application/json"),
        (status = 400, description = "M_MISSING_PARAMS, M_INVALID_PARAM, M_BAD_JSON, M_NOT_JSON", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: the private key is not the invitation's", body = ErrorBody),
        (status = 404, description = "M_UNRECOGNIZED: unknown or expired invitation token", body = ErrorBody),
    ))]
pub(super) async fn sign_ed25519_v1(
    req: HttpRequest,
    app: AppData,
    RawBody(body): RawBody,
) -> Result<HttpResponse, ApiError> {
    let from_query: SignArgs = parse_query(req.query_string())?;
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    let from_body: SignArgs = if json && !body.iter().all(u8::is_ascii_whitespace) {
        parse_json_object(&body)?
    } else {
        SignArgs::default()
    };
    let (mxid, token, private_key) = from_body.complete(from_query)?;
    let now = app.clock.now_ms();
    let signed = app
        .identity
        .sign_invite(&mxid, &token, &private_key, now)
        .await?;
    Ok(HttpResponse::Ok().json(signed))
}
