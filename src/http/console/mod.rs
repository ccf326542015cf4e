//! The administrators' console, `/_annuaire/console/` (on `http.admin_bind` when it is set, like
//! the rest of `/_annuaire/*`): server-rendered pages over the same services as the admin API.
//!
//! A login (the API's rules: lockout, rate limits, LDAP) opens a session kept in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` over HTTPS) that ends after `admin.console_idle_timeout`
//! of inactivity. Every form carries the session's CSRF token and is refused without it; a
//! viewer sees no editing control and the server refuses their changes anyway. Changes follow
//! Post/Redirect/Get: a POST answers 303 to a page that says what was done (`?done=`).

mod accounts;
mod auth;
mod dashboard;
mod directory;
mod explain;
mod homeservers;
mod requests;
mod rules;
mod rules_files;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::AppData;
use super::extract::RawBody;
use super::pages::{self, page};
use crate::admin::{AdminError, ConsoleSession};
use crate::config::Language;
use crate::web::{Chrome, ChromeUser};

/// Where the console lives.
pub const PREFIX: &str = "/_annuaire/console";
/// The session cookie.
pub const SESSION_COOKIE: &str = "annuaire_console";
/// Where the console's static files are served (under `/_annuaire/`, for `http.admin_bind`).
const ASSETS: &str = "/_annuaire/console/assets";

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(page("/_annuaire/console").route(web::get().to(to_dashboard)))
        .service(page("/_annuaire/console/").route(web::get().to(dashboard::dashboard)))
        .service(
            page("/_annuaire/console/login")
                .route(web::get().to(auth::login_form))
                .route(web::post().to(auth::login)),
        )
        .service(page("/_annuaire/console/logout").route(web::post().to(auth::logout)))
        .service(page("/_annuaire/console/assets/{file}").route(web::get().to(asset)))
        .service(page("/_annuaire/console/rules").route(web::get().to(rules::list)))
        .service(
            page("/_annuaire/console/rules/new")
                .route(web::get().to(rules::new_form))
                .route(web::post().to(rules::create)),
        )
        .service(
            page("/_annuaire/console/rules/import")
                .route(web::get().to(rules_files::import_form))
                .route(web::post().to(rules_files::import)),
        )
        .service(
            page("/_annuaire/console/rules/export").route(web::get().to(rules_files::export_form)),
        )
        .service(
            page("/_annuaire/console/rules/export.toml").route(web::get().to(rules_files::export)),
        )
        .service(page("/_annuaire/console/rules/{id}").route(web::get().to(rules::show)))
        .service(
            page("/_annuaire/console/rules/{id}/edit")
                .route(web::get().to(rules::edit_form))
                .route(web::post().to(rules::update)),
        )
        .service(page("/_annuaire/console/rules/{id}/delete").route(web::post().to(rules::delete)))
        .service(
            page("/_annuaire/console/rules/{id}/convert").route(web::post().to(rules::convert)),
        )
        .service(page("/_annuaire/console/explain").route(web::get().to(explain::explain)))
        .service(page("/_annuaire/console/audit").route(web::get().to(dashboard::audit)))
        .service(page("/_annuaire/console/directory").route(web::get().to(directory::list)))
        .service(
            page("/_annuaire/console/directory/entry")
                .route(web::get().to(directory::entry))
                .route(web::post().to(directory::change)),
        )
        .service(
            page("/_annuaire/console/erase")
                .route(web::get().to(directory::erase_form))
                .route(web::post().to(directory::erase)),
        )
        .service(
            page("/_annuaire/console/accounts")
                .route(web::get().to(accounts::list))
                .route(web::post().to(accounts::change)),
        )
        .service(
            page("/_annuaire/console/homeservers")
                .route(web::get().to(homeservers::list))
                .route(web::post().to(homeservers::change)),
        )
        .service(page("/_annuaire/console/requests").route(web::get().to(requests::queue)))
        .service(
            page("/_annuaire/console/requests/domain")
                .route(web::get().to(requests::domain))
                .route(web::post().to(requests::decline)),
        );
}

async fn to_dashboard() -> HttpResponse {
    pages::see_other("/_annuaire/console/")
}

async fn asset(app: AppData, file: web::Path<String>) -> HttpResponse {
    pages::serve_asset(&app, &file)
}

/// A console page that could not be shown: a redirect to the login page, or an error page
/// rendered while the request was at hand.
#[derive(Debug)]
pub struct Rejection {
    status: StatusCode,
    location: Option<String>,
    body: String,
    clear_session: bool,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "console page refused ({})", self.status)
    }
}

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status);
        pages::page_headers(&mut builder, "same-origin");
        if self.clear_session {
            let mut gone = Cookie::build(SESSION_COOKIE, "").path(PREFIX).finish();
            gone.make_removal();
            builder.cookie(gone);
        }
        if let Some(location) = &self.location {
            builder.insert_header((header::LOCATION, location.clone()));
        }
        builder
            .content_type("text/html; charset=utf-8")
            .body(self.body.clone())
    }
}

/// A logged-in administrator, with what every console page needs.
pub struct Console {
    /// The service.
    pub app: AppData,
    /// The request.
    pub req: HttpRequest,
    /// The page's language.
    pub lang: Language,
    /// The session.
    pub session: ConsoleSession,
}

impl Console {
    fn user(&self) -> ChromeUser {
        ChromeUser {
            username: self.session.username.clone(),
            role: self.session.role.as_str().to_owned(),
            editor: self.session.require_editor().is_ok(),
        }
    }

    fn chrome(&self, section: &str) -> Chrome {
        pages::chrome(
            &self.req,
            &self.app,
            self.lang,
            &self.session.csrf_token,
            Some(self.user()),
            section,
            ASSETS,
        )
    }

    /// A page of the console.
    pub fn page(&self, section: &str, page: &str, data: &impl Serialize) -> HttpResponse {
        self.page_with_status(StatusCode::OK, section, page, data)
    }

    /// A page of the console with another status.
    pub fn page_with_status(
        &self,
        status: StatusCode,
        section: &str,
        page: &str,
        data: &impl Serialize,
    ) -> HttpResponse {
        pages::render(
            &self.req,
            &self.app,
            status,
            page,
            &self.chrome(section),
            data,
            "same-origin",
        )
    }

    /// The error page for an administration error (403, 404, …, or a message for people).
    pub fn error(&self, e: &AdminError) -> HttpResponse {
        let (status, code, message) = match e {
            AdminError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            AdminError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", Some(m.clone())),
            AdminError::Store(_) | AdminError::Internal(_) | AdminError::LdapUnavailable(_) => {
                tracing::error!(error = %e, "console request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "error", None)
            }
            other => (StatusCode::BAD_REQUEST, "error", Some(other.to_string())),
        };
        self.error_page(status, code, message)
    }

    fn error_html(&self, code: &str, message: Option<String>) -> String {
        #[derive(Serialize)]
        struct ErrorPage<'a> {
            code: &'a str,
            message: Option<String>,
        }
        self.app
            .web
            .render(
                "console_error.html",
                &self.chrome(""),
                &ErrorPage { code, message },
            )
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot render the console's error page");
                "Error".to_owned()
            })
    }

    /// An error page.
    pub fn error_page(
        &self,
        status: StatusCode,
        code: &str,
        message: Option<String>,
    ) -> HttpResponse {
        #[derive(Serialize)]
        struct ErrorPage<'a> {
            code: &'a str,
            message: Option<String>,
        }
        self.page_with_status(
            status,
            "",
            "console_error.html",
            &ErrorPage { code, message },
        )
    }
}

fn login_redirect(req: &HttpRequest, expired: bool) -> Rejection {
    let next = if req.method() == actix_web::http::Method::GET {
        let q = req.query_string();
        if q.is_empty() {
            req.path().to_owned()
        } else {
            format!("{}?{q}", req.path())
        }
    } else {
        format!("{PREFIX}/")
    };
    let next = crate::web::encode_query_value(&next);
    let location = if expired {
        format!("{PREFIX}/login?expired=1&next={next}")
    } else {
        format!("{PREFIX}/login?next={next}")
    };
    Rejection {
        status: StatusCode::SEE_OTHER,
        location: Some(location),
        body: String::new(),
        clear_session: expired,
    }
}

async fn console_of(req: HttpRequest) -> Result<Console, Rejection> {
    let Some(app) = req.app_data::<AppData>().cloned() else {
        return Err(Rejection {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            location: None,
            body: "Internal server error".into(),
            clear_session: false,
        });
    };
    let Some(token) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
        return Err(login_redirect(&req, false));
    };
    match app.admin.console_session(&token).await {
        Ok(session) => {
            let lang = pages::language(&req, &app);
            Ok(Console {
                app,
                req,
                lang,
                session,
            })
        }
        Err(AdminError::InvalidToken(_)) => Err(login_redirect(&req, true)),
        Err(e) => {
            tracing::error!(error = %e, "console session check failed");
            Err(Rejection {
                status: StatusCode::SERVICE_UNAVAILABLE,
                location: None,
                body: "Service unavailable".into(),
                clear_session: false,
            })
        }
    }
}

impl FromRequest for Console {
    type Error = Rejection;
    type Future = LocalBoxFuture<'static, Result<Self, Rejection>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(console_of(req.clone()))
    }
}

/// A form posted from a console page by an administrator of any role: its CSRF token checked.
pub struct SessionForm<T> {
    /// The administrator.
    pub console: Console,
    /// The form's fields.
    pub form: T,
}

/// A form posted by an editor: CSRF token checked, viewers refused (403).
pub struct EditorForm<T> {
    /// The administrator.
    pub console: Console,
    /// The form's fields.
    pub form: T,
}

#[derive(serde::Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

async fn read_form<T: DeserializeOwned>(
    req: HttpRequest,
    mut payload: Payload,
    editor: bool,
) -> Result<(Console, T), Rejection> {
    let body = RawBody::from_request(&req, &mut payload).await;
    let console = console_of(req).await?;
    let reject = |status, code: &str, message: Option<String>| {
        Rejection {
            status,
            location: None,
            body: String::new(),
            clear_session: false,
        }
        .with_page(&console, code, message)
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => return Err(reject(e.status, "error", Some(e.message))),
    };
    let csrf: CsrfField = pages::parse_form(&body.0).unwrap_or(CsrfField {
        csrf: String::new(),
    });
    if !console.session.csrf_matches(&csrf.csrf) {
        tracing::info!(account = %console.session.username, "console form refused: bad CSRF token");
        return Err(reject(StatusCode::FORBIDDEN, "csrf", None));
    }
    if editor && let Err(e) = console.session.require_editor() {
        tracing::info!(account = %console.session.username, "console change refused: viewer");
        return Err(reject(
            StatusCode::FORBIDDEN,
            "forbidden",
            Some(e.to_string()),
        ));
    }
    match serde_urlencoded::from_bytes::<T>(&body.0) {
        Ok(form) => Ok((console, form)),
        Err(e) => Err(reject(
            StatusCode::BAD_REQUEST,
            "error",
            Some(format!("malformed form: {e}")),
        )),
    }
}

impl Rejection {
    fn with_page(mut self, console: &Console, code: &str, message: Option<String>) -> Rejection {
        self.body = console.error_html(code, message);
        self
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for SessionForm<T> {
    type Error = Rejection;
    type Future = LocalBoxFuture<'static, Result<Self, Rejection>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (req, payload) = (req.clone(), payload.take());
        Box::pin(async move {
            let (console, form) = read_form(req, payload, false).await?;
            Ok(SessionForm { console, form })
        })
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for EditorForm<T> {
    type Error = Rejection;
    type Future = LocalBoxFuture<'static, Result<Self, Rejection>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (req, payload) = (req.clone(), payload.take());
        Box::pin(async move {
            let (console, form) = read_form(req, payload, true).await?;
            Ok(EditorForm { console, form })
        })
    }
}

/// A query string parsed leniently (a malformed one gives the defaults).
pub fn query<T: DeserializeOwned + Default>(req: &HttpRequest) -> T {
    serde_urlencoded::from_str(req.query_string()).unwrap_or_default()
}

/// Empty strings as absent.
pub fn present(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty() && !v.contains('\0'))
        .map(str::to_owned)
}

/// A path with `?done=…` and extra parameters.
pub fn done(path: &str, code: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let mut pairs = vec![("done", code)];
    pairs.extend_from_slice(extra);
    let q = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    let sep = if path.contains('?') { '&' } else { '?' };
    pages::see_other(&format!("{path}{sep}{q}"))
}

/// Session cookie for a new session.
pub fn session_cookie(app: &crate::Annuaire, token: &str) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, token.to_owned())
        .path(PREFIX)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(pages::secure_cookies(app))
        .finish()
}
