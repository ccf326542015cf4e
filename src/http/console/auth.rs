//! Logging in and out of the console.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::{Console, PREFIX, SESSION_COOKIE, SessionForm, session_cookie};
use crate::admin::AdminError;
use crate::http::pages::{self, form_token, form_token_matches, parse_form, with_form_cookie};
use crate::http::{AppData, caller_ip, extract::RawBody};

#[derive(Serialize)]
struct LoginPage<'a> {
    username: &'a str,
    error: Option<&'static str>,
    expired: bool,
    logged_out: bool,
    next: &'a str,
}

/// Only paths of the console are followed after a login (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/_annuaire/console/")
                && !n.starts_with("//")
                && !n.contains("\\")
                && !n.contains("/login")
                && !n.contains("..") =>
        {
            n.to_owned()
        }
        _ => format!("{PREFIX}/"),
    }
}

fn login_page(
    req: &HttpRequest,
    app: &AppData,
    status: StatusCode,
    username: &str,
    error: Option<&'static str>,
    next: &str,
) -> HttpResponse {
    let lang = pages::language(req, app);
    let (token, new) = form_token(req);
    let chrome = pages::chrome(
        req,
        app,
        lang,
        &token,
        None,
        "",
        "/_annuaire/console/assets",
    );
    let data = LoginPage {
        username,
        error,
        expired: pages::query_param(req, "expired").is_some(),
        logged_out: pages::query_param(req, "logged_out").is_some(),
        next,
    };
    let response = pages::render(
        req,
        app,
        status,
        "console_login.html",
        &chrome,
        &data,
        "same-origin",
    );
    with_form_cookie(response, app, &token, new)
}

/// # GET /_annuaire/console/login
pub(super) async fn login_form(req: HttpRequest, app: AppData) -> HttpResponse {
    let next = safe_next(pages::query_param(&req, "next").as_deref());
    login_page(&req, &app, StatusCode::OK, "", None, &next)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// # POST /_annuaire/console/login
///
/// The API's login (rate limits per IP and username, lockout, LDAP), opening a console session.
pub(super) async fn login(req: HttpRequest, app: AppData, body: RawBody) -> HttpResponse {
    let Some(form) = parse_form::<LoginForm>(&body.0) else {
        return login_page(
            &req,
            &app,
            StatusCode::BAD_REQUEST,
            "",
            Some("error"),
            &safe_next(None),
        );
    };
    let next = safe_next(form.next.as_deref());
    if !form_token_matches(&req, &form.csrf) {
        return login_page(
            &req,
            &app,
            StatusCode::FORBIDDEN,
            &form.username,
            Some("form_expired"),
            &next,
        );
    }
    let ip = caller_ip(&req, &app);
    let result = match app.admin.check_login_rate(ip, &form.username) {
        Ok(()) => {
            app.admin
                .open_console_session(&form.username, &form.password)
                .await
        }
        Err(e) => Err(e),
    };
    let (status, error) = match result {
        Ok(opened) => {
            tracing::info!(ip = ?ip, account = %opened.session.username, "console login");
            let mut response = pages::see_other(&next);
            if let Err(e) = response.add_cookie(&session_cookie(&app, &opened.token)) {
                tracing::error!(error = %e, "cannot set the console cookie");
            }
            return response;
        }
        Err(AdminError::BadCredentials) => (StatusCode::FORBIDDEN, "bad_credentials"),
        Err(AdminError::Locked { .. }) => (StatusCode::FORBIDDEN, "locked"),
        Err(AdminError::RateLimited { .. }) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        Err(AdminError::LdapUnavailable(e)) => {
            tracing::warn!(error = %e, "console login: LDAP unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "ldap_unavailable")
        }
        Err(e) => {
            tracing::error!(error = %e, "console login failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "error")
        }
    };
    // Not the username of a failure: people type passwords into it.
    tracing::info!(ip = ?ip, error, "console login refused");
    login_page(&req, &app, status, &form.username, Some(error), &next)
}

#[derive(Deserialize)]
pub(super) struct Empty {}

/// # POST /_annuaire/console/logout
pub(super) async fn logout(SessionForm { console, .. }: SessionForm<Empty>) -> HttpResponse {
    let Console { app, session, .. } = console;
    let username = session.username.clone();
    if let Err(e) = app.admin.close_console_session(session).await {
        tracing::error!(error = %e, "console logout failed");
    }
    tracing::info!(account = %username, "console logout");
    let mut response = pages::see_other(&format!("{PREFIX}/login?logged_out=1"));
    let mut gone = actix_web::cookie::Cookie::build(SESSION_COOKIE, "")
        .path(PREFIX)
        .finish();
    gone.make_removal();
    if let Err(e) = response.add_cookie(&gone) {
        tracing::error!(error = %e, "cannot clear the console cookie");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn only_console_paths_are_followed() {
        assert_eq!(
            safe_next(Some("/_annuaire/console/rules?x=1")),
            "/_annuaire/console/rules?x=1"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/_annuaire/console/../x",
            "/other",
            "/_annuaire/console/login",
        ] {
            assert_eq!(safe_next(Some(bad)), "/_annuaire/console/", "{bad}");
        }
        assert_eq!(safe_next(None), "/_annuaire/console/");
    }
}
