//! Pages for browsers: what every HTML answer shares (the security headers, the language and
//! its switch, the form token of the agents' forms, static files), and the agents' pages on the
//! public listener: `/` ("which homeserver is mine?"), the domain request form and its
//! confirmation link. The console is in [`super::console`].
//!
//! Pages are not part of the API: they are routed with [`page`] (not listed in the OpenAPI
//! document) and answer HTML, errors included.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use serde::{Deserialize, Serialize};

use super::AppData;
use super::extract::RawBody;
use crate::Annuaire;
use crate::config::Language;
use crate::domain_requests::{AddressCheck, DomainRequestError, NewDomainRequest, Submitted};
use crate::web::{Chrome, ChromeUser, LanguageLink};

/// The pages' Content-Security-Policy: our own files only, no inline script or style.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
/// The cookie the language switch sets.
pub const LANG_COOKIE: &str = "annuaire_lang";
/// The cookie holding the agents' and the login form's token (double submit).
pub const FORM_COOKIE: &str = "annuaire_form";

/// A page's route: unsupported methods answer 405. Pages are not recorded for the OpenAPI
/// document (they are not API endpoints).
pub fn page(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|| async {
        HttpResponse::MethodNotAllowed()
            .content_type("text/plain; charset=utf-8")
            .body("Method not allowed")
    }))
}

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        page("/")
            .route(web::get().to(home))
            .route(web::post().to(check)),
    )
    .service(
        page("/request")
            .route(web::get().to(request_form))
            .route(web::post().to(submit_request)),
    )
    .service(page("/request/confirm").route(web::get().to(confirm_request)))
    .service(page("/assets/{file}").route(web::get().to(asset)));
}

/// Whether cookies must be `Secure`: the service is reached over HTTPS.
pub fn secure_cookies(app: &Annuaire) -> bool {
    app.config.tls_enabled() || app.config.public_base_url().starts_with("https://")
}

/// The language of a page: `?lang=`, the switch's cookie, `Accept-Language`, the default.
pub fn language(req: &HttpRequest, app: &Annuaire) -> Language {
    let query = query_param(req, "lang");
    let cookie = req.cookie(LANG_COOKIE).map(|c| c.value().to_owned());
    let accept = req
        .headers()
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    app.web.strings().choose(
        query.as_deref(),
        cookie.as_deref(),
        accept,
        app.mailer.default_language(),
    )
}

/// One query parameter.
pub fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The language switch: this page (path and query) in each available language.
fn language_links(req: &HttpRequest, app: &Annuaire, current: Language) -> Vec<LanguageLink> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    app.web
        .languages()
        .iter()
        .map(|lang| {
            let mut query: Vec<(String, String)> =
                pairs.iter().filter(|(k, _)| k != "lang").cloned().collect();
            query.push(("lang".into(), lang.code().to_owned()));
            let encoded = serde_urlencoded::to_string(&query).unwrap_or_default();
            LanguageLink {
                code: lang.code().to_owned(),
                name: app.web.strings().name(*lang),
                href: format!("{}?{encoded}", req.path()),
                current: *lang == current,
            }
        })
        .collect()
}

/// The chrome of a page whose URL carries a secret (a mailed link's token): its language
/// switch leads to the home page in each language instead of repeating the URL (the page must
/// not show the token, and following the link again would use it again).
pub fn chrome_for_secret_url(req: &HttpRequest, app: &Annuaire, lang: Language) -> Chrome {
    let mut chrome = chrome(req, app, lang, "", None, "", "/assets");
    for link in &mut chrome.languages {
        link.href = format!("/?lang={}", link.code);
    }
    chrome
}

/// The chrome of a page.
pub fn chrome(
    req: &HttpRequest,
    app: &Annuaire,
    lang: Language,
    csrf: &str,
    user: Option<ChromeUser>,
    section: &str,
    assets: &str,
) -> Chrome {
    Chrome {
        lang: lang.code().to_owned(),
        service_name: app.config.web.service_name.clone(),
        assets: assets.to_owned(),
        languages: language_links(req, app, lang),
        csrf: csrf.to_owned(),
        user,
        section: section.to_owned(),
    }
}

/// Security headers every page carries; `no-store` because pages carry form tokens.
pub fn page_headers(builder: &mut HttpResponseBuilder, referrer: &'static str) {
    builder
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, referrer))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-store"));
}

/// An HTML answer of `page` rendered with `chrome` and `data`, with the security headers, and
/// the language cookie when the language came from `?lang=`.
pub fn render(
    req: &HttpRequest,
    app: &Annuaire,
    status: StatusCode,
    page: &str,
    chrome: &Chrome,
    data: &impl Serialize,
    referrer: &'static str,
) -> HttpResponse {
    let mut builder = HttpResponse::build(status);
    page_headers(&mut builder, referrer);
    if let Some(lang) = query_param(req, "lang")
        && lang == chrome.lang
    {
        builder.cookie(
            Cookie::build(LANG_COOKIE, lang)
                .path("/")
                .max_age(actix_web::cookie::time::Duration::days(365))
                .same_site(SameSite::Lax)
                .secure(secure_cookies(app))
                .finish(),
        );
    }
    match app.web.render(page, chrome, data) {
        Ok(html) => builder.content_type("text/html; charset=utf-8").body(html),
        Err(e) => {
            tracing::error!(error = %e, page, "cannot render a page");
            let mut builder = HttpResponse::InternalServerError();
            page_headers(&mut builder, referrer);
            builder
                .content_type("text/plain; charset=utf-8")
                .body("Internal server error")
        }
    }
}

/// A 303 to `location`, with the security headers.
pub fn see_other(location: &str) -> HttpResponse {
    let mut builder = HttpResponse::SeeOther();
    page_headers(&mut builder, "same-origin");
    builder
        .insert_header((header::LOCATION, location.to_owned()))
        .finish()
}

/// The form token of the agents' forms and the login form: the cookie's value when the browser
/// has one, else a new one (set by [`with_form_cookie`]).
pub fn form_token(req: &HttpRequest) -> (String, bool) {
    match req.cookie(FORM_COOKIE) {
        Some(c) if c.value().len() >= 16 => (c.value().to_owned(), false),
        _ => (
            crate::secret::random_token(&mut rand::rngs::OsRng, 32),
            true,
        ),
    }
}

/// Sets the form token's cookie on a response when it is new.
pub fn with_form_cookie(
    mut response: HttpResponse,
    app: &Annuaire,
    token: &str,
    new: bool,
) -> HttpResponse {
    if new {
        let cookie = Cookie::build(FORM_COOKIE, token.to_owned())
            .path("/")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(secure_cookies(app))
            .finish();
        if let Err(e) = response.add_cookie(&cookie) {
            tracing::warn!(error = %e, "cannot set the form cookie");
        }
    }
    response
}

/// Whether a form's token is the cookie's (double submit; constant time).
pub fn form_token_matches(req: &HttpRequest, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    match req.cookie(FORM_COOKIE) {
        Some(c) => {
            !given.is_empty()
                && c.value().len() >= 16
                && bool::from(c.value().as_bytes().ct_eq(given.as_bytes()))
        }
        None => false,
    }
}

/// A urlencoded form body (`None` when it does not parse).
pub fn parse_form<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_urlencoded::from_bytes(body).ok()
}

/// The chrome of the agents' pages (with a form token).
fn public_chrome(req: &HttpRequest, app: &Annuaire, lang: Language, token: &str) -> Chrome {
    chrome(req, app, lang, token, None, "", "/assets")
}

#[derive(Serialize)]
struct HomePage<'a> {
    operator: Option<&'a str>,
    address: &'a str,
    error: Option<&'static str>,
    check: Option<AddressCheck>,
}

fn home_page(
    req: &HttpRequest,
    app: &Annuaire,
    status: StatusCode,
    address: &str,
    error: Option<&'static str>,
    check: Option<AddressCheck>,
) -> HttpResponse {
    let lang = language(req, app);
    let (token, new) = form_token(req);
    let data = HomePage {
        operator: app.config.web.operator.as_deref(),
        address,
        error,
        check,
    };
    let chrome = public_chrome(req, app, lang, &token);
    let response = render(req, app, status, "home.html", &chrome, &data, "same-origin");
    with_form_cookie(response, app, &token, new)
}

/// # GET /
///
/// The agents' home page: what the service is, and "which homeserver is mine?".
pub(super) async fn home(req: HttpRequest, app: AppData) -> HttpResponse {
    home_page(&req, &app, StatusCode::OK, "", None, None)
}

#[derive(Deserialize)]
struct CheckForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    address: String,
}

/// # POST /
///
/// The answer to "which homeserver is mine?" (rate limited per IP as `/info`). The address is
/// posted, not put in the URL, so that it stays out of logs and browser history.
pub(super) async fn check(req: HttpRequest, app: AppData, body: RawBody) -> HttpResponse {
    let Some(form) = parse_form::<CheckForm>(&body.0) else {
        return home_page(
            &req,
            &app,
            StatusCode::BAD_REQUEST,
            "",
            Some("invalid_address"),
            None,
        );
    };
    if !form_token_matches(&req, &form.csrf) {
        return home_page(
            &req,
            &app,
            StatusCode::FORBIDDEN,
            &form.address,
            Some("form_expired"),
            None,
        );
    }
    if let Some(ip) = super::caller_ip(&req, &app)
        && app.limits.info_per_ip.check(&ip).is_err()
    {
        return home_page(
            &req,
            &app,
            StatusCode::TOO_MANY_REQUESTS,
            &form.address,
            Some("rate_limited"),
            None,
        );
    }
    match app.requests.check(&form.address) {
        Ok(check) => home_page(
            &req,
            &app,
            StatusCode::OK,
            &check.address.clone(),
            None,
            Some(check),
        ),
        Err(DomainRequestError::InvalidAddress(_)) => home_page(
            &req,
            &app,
            StatusCode::BAD_REQUEST,
            &form.address,
            Some("invalid_address"),
            None,
        ),
        Err(e) => {
            tracing::error!(error = %e, "address check failed");
            home_page(
                &req,
                &app,
                StatusCode::INTERNAL_SERVER_ERROR,
                &form.address,
                Some("error"),
                None,
            )
        }
    }
}

#[derive(Deserialize, Default)]
struct RequestForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    organisation: String,
    #[serde(default)]
    message: String,
}

#[derive(Serialize, Default)]
struct RequestErrors {
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    organisation: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
}

#[derive(Serialize)]
struct RequestPage<'a> {
    address: &'a str,
    name: &'a str,
    organisation: &'a str,
    message: &'a str,
    errors: RequestErrors,
}

fn request_page(
    req: &HttpRequest,
    app: &Annuaire,
    status: StatusCode,
    form: &RequestForm,
    errors: RequestErrors,
) -> HttpResponse {
    let lang = language(req, app);
    let (token, new) = form_token(req);
    let data = RequestPage {
        address: &form.address,
        name: &form.name,
        organisation: &form.organisation,
        message: &form.message,
        errors,
    };
    let chrome = public_chrome(req, app, lang, &token);
    let response = render(
        req,
        app,
        status,
        "request.html",
        &chrome,
        &data,
        "same-origin",
    );
    with_form_cookie(response, app, &token, new)
}

#[derive(Serialize)]
struct DonePage<'a> {
    outcome: &'a str,
    domain: Option<&'a str>,
}

fn done_page(
    req: &HttpRequest,
    app: &Annuaire,
    status: StatusCode,
    outcome: &str,
    domain: Option<&str>,
    referrer: &'static str,
) -> HttpResponse {
    let lang = language(req, app);
    let (token, new) = form_token(req);
    let chrome = if referrer == "no-referrer" {
        chrome_for_secret_url(req, app, lang)
    } else {
        public_chrome(req, app, lang, &token)
    };
    let response = render(
        req,
        app,
        status,
        "request_done.html",
        &chrome,
        &DonePage { outcome, domain },
        referrer,
    );
    with_form_cookie(response, app, &token, new)
}

/// # GET /request
///
/// "My administration is not listed": the request form.
pub(super) async fn request_form(req: HttpRequest, app: AppData) -> HttpResponse {
    if !app.requests.enabled() {
        return done_page(
            &req,
            &app,
            StatusCode::NOT_FOUND,
            "disabled",
            None,
            "same-origin",
        );
    }
    request_page(
        &req,
        &app,
        StatusCode::OK,
        &RequestForm::default(),
        RequestErrors::default(),
    )
}

/// # POST /request
///
/// Takes a domain request: a mail with the confirmation link goes to the address.
pub(super) async fn submit_request(req: HttpRequest, app: AppData, body: RawBody) -> HttpResponse {
    let Some(form) = parse_form::<RequestForm>(&body.0) else {
        return done_page(
            &req,
            &app,
            StatusCode::BAD_REQUEST,
            "error",
            None,
            "same-origin",
        );
    };
    if !form_token_matches(&req, &form.csrf) {
        return done_page(
            &req,
            &app,
            StatusCode::FORBIDDEN,
            "form_expired",
            None,
            "same-origin",
        );
    }
    let lang = language(&req, &app);
    let request = NewDomainRequest {
        address: form.address.clone(),
        name: form.name.clone(),
        organisation: form.organisation.clone(),
        message: Some(form.message.clone()),
        language: lang,
    };
    let ip = super::caller_ip(&req, &app);
    let domain = form
        .address
        .rsplit_once('@')
        .map(|(_, d)| d.trim().to_owned());
    match app.requests.submit(request, ip).await {
        Ok(Submitted::MailSent) => done_page(
            &req,
            &app,
            StatusCode::OK,
            "mail_sent",
            domain.as_deref(),
            "same-origin",
        ),
        Ok(Submitted::AlreadyPending) => done_page(
            &req,
            &app,
            StatusCode::OK,
            "already_pending",
            domain.as_deref(),
            "same-origin",
        ),
        Err(DomainRequestError::InvalidAddress(_)) => {
            let errors = RequestErrors {
                address: Some("invalid_address"),
                ..RequestErrors::default()
            };
            request_page(&req, &app, StatusCode::BAD_REQUEST, &form, errors)
        }
        Err(DomainRequestError::InvalidField { field, problem }) => {
            let mut errors = RequestErrors::default();
            let code = Some(problem.code());
            match field {
                "name" => errors.name = code,
                "organisation" => errors.organisation = code,
                _ => errors.message = code,
            }
            request_page(&req, &app, StatusCode::BAD_REQUEST, &form, errors)
        }
        Err(DomainRequestError::RateLimited { .. }) => done_page(
            &req,
            &app,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            None,
            "same-origin",
        ),
        Err(DomainRequestError::NotNeeded) => done_page(
            &req,
            &app,
            StatusCode::CONFLICT,
            "not_needed",
            domain.as_deref(),
            "same-origin",
        ),
        Err(DomainRequestError::Disabled) => done_page(
            &req,
            &app,
            StatusCode::NOT_FOUND,
            "disabled",
            None,
            "same-origin",
        ),
        Err(e) => {
            tracing::error!(error = %e, "domain request failed");
            done_page(
                &req,
                &app,
                StatusCode::INTERNAL_SERVER_ERROR,
                "error",
                None,
                "same-origin",
            )
        }
    }
}

#[derive(Deserialize)]
struct ConfirmQuery {
    id: String,
    token: String,
}

/// # GET /request/confirm
///
/// The link of the request's mail: the request joins the administrators' queue. The URL carries
/// a token: no Referer leaves the page.
pub(super) async fn confirm_request(req: HttpRequest, app: AppData) -> HttpResponse {
    let Ok(q) = serde_urlencoded::from_str::<ConfirmQuery>(req.query_string()) else {
        return done_page(
            &req,
            &app,
            StatusCode::BAD_REQUEST,
            "invalid_link",
            None,
            "no-referrer",
        );
    };
    match app.requests.confirm(&q.id, &q.token).await {
        Ok(domain) => {
            let shown = idna::domain_to_unicode(&domain).0;
            done_page(
                &req,
                &app,
                StatusCode::OK,
                "confirmed",
                Some(&shown),
                "no-referrer",
            )
        }
        Err(DomainRequestError::InvalidLink) => done_page(
            &req,
            &app,
            StatusCode::NOT_FOUND,
            "invalid_link",
            None,
            "no-referrer",
        ),
        Err(e) => {
            tracing::error!(error = %e, "domain request confirmation failed");
            done_page(
                &req,
                &app,
                StatusCode::INTERNAL_SERVER_ERROR,
                "error",
                None,
                "no-referrer",
            )
        }
    }
}

/// # GET /assets/{file}
///
/// The pages' stylesheet and script (also under `/_annuaire/console/assets/`).
pub(super) async fn asset(app: AppData, file: web::Path<String>) -> HttpResponse {
    serve_asset(&app, &file)
}

/// A static file, cacheable (links carry `?v=` with its hash).
pub fn serve_asset(app: &Annuaire, name: &str) -> HttpResponse {
    match app.web.asset(name) {
        Some(asset) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, asset.content_type))
            .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .body(asset.body.clone()),
        None => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("Not found"),
    }
}
