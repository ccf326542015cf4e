//! Homeserver API tokens (issue 11): list, add (the token is shown once), revoke — what
//! `annuaire homeserver list|add|revoke` does, from the browser.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Console, EditorForm, done, query};
use crate::admin::AdminError;
use crate::homeserver::HomeserverError;
use crate::homeserver::tokens::HomeserverToken;

#[derive(Default, Deserialize)]
struct HomeserversQuery {
    done: Option<String>,
    name: Option<String>,
}

#[derive(Serialize)]
struct HomeserversPage {
    done: Option<&'static str>,
    done_name: Option<String>,
    error: Option<String>,
    server_name: String,
    /// The token just made: this page is the only time it is shown.
    new_token: Option<NewTokenView>,
    tokens: Vec<HomeserverToken>,
}

#[derive(Serialize)]
struct NewTokenView {
    server_name: String,
    token: String,
}

async fn page(
    c: &Console,
    status: StatusCode,
    error: Option<String>,
    server_name: String,
    new_token: Option<NewTokenView>,
) -> HttpResponse {
    let q: HomeserversQuery = query(&c.req);
    let tokens = match c.app.homeserver.list_tokens().await {
        Ok(t) => t,
        Err(e) => return c.error(&as_admin_error(e)),
    };
    let done = match q.done.as_deref() {
        Some("revoked") => Some("revoked"),
        _ => None,
    };
    let data = HomeserversPage {
        done,
        done_name: q.name,
        error,
        server_name,
        new_token,
        tokens,
    };
    c.page_with_status(status, "homeservers", "console_homeservers.html", &data)
}

/// # GET /_annuaire/console/homeservers
pub(super) async fn list(c: Console) -> HttpResponse {
    page(&c, StatusCode::OK, None, String::new(), None).await
}

#[derive(Deserialize)]
pub(super) struct HomeserverFields {
    #[serde(default)]
    action: String,
    #[serde(default)]
    server_name: String,
}

/// # POST /_annuaire/console/homeservers
///
/// `action` is `add` (`server_name`: the new token is shown on the page it answers, once, and
/// never again) or `revoke` (`server_name`).
pub(super) async fn change(
    EditorForm { console: c, form }: EditorForm<HomeserverFields>,
) -> HttpResponse {
    let service = &c.app.homeserver;
    let actor = c.session.actor();
    match form.action.as_str() {
        "add" => match service.add_token(&form.server_name, &actor).await {
            // Shown in the answer to the POST itself (no redirect, no URL, not cached).
            Ok(new) => {
                let view = NewTokenView {
                    server_name: new.server_name,
                    token: new.token,
                };
                page(&c, StatusCode::OK, None, String::new(), Some(view)).await
            }
            Err(e) => refused(&c, e, form.server_name).await,
        },
        "revoke" => match service.revoke_token(&form.server_name, &actor).await {
            Ok(t) => done(
                "/_annuaire/console/homeservers",
                "revoked",
                &[("name", &t.server_name)],
            ),
            Err(e) => refused(&c, e, String::new()).await,
        },
        other => {
            let e = HomeserverError::InvalidParam(format!("unknown action {other:?}"));
            refused(&c, e, String::new()).await
        }
    }
}

/// A refusal the administrator can act on is shown on the page; anything else is an error.
async fn refused(c: &Console, e: HomeserverError, server_name: String) -> HttpResponse {
    match e {
        HomeserverError::InvalidParam(_)
        | HomeserverError::InvalidServerName(_)
        | HomeserverError::TokenExists(_)
        | HomeserverError::NoToken(_) => {
            page(
                c,
                StatusCode::BAD_REQUEST,
                Some(e.to_string()),
                server_name,
                None,
            )
            .await
        }
        other => c.error(&as_admin_error(other)),
    }
}

/// The console shows failures as the administration's errors.
fn as_admin_error(e: HomeserverError) -> AdminError {
    match e {
        HomeserverError::Store(e) => AdminError::Store(e),
        other => AdminError::Internal(other.to_string()),
    }
}
