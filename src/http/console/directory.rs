//! Directory moderation (search, hide, unhide, rename, remove) and the erasure of an address.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Console, EditorForm, done, present, query};
use crate::admin::{AdminError, EntryFilter, Erasure, ModeratedEntry};
use crate::directory::Visibility;

/// Entries per page.
const ENTRIES_PAGE: usize = 50;

/// The directory filters, as the form sends them.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct DirectoryQuery {
    q: Option<String>,
    organisation: Option<String>,
    homeserver: Option<String>,
    visibility: Option<String>,
    #[serde(skip_serializing)]
    from: Option<String>,
}

#[derive(Serialize)]
struct ListPage<'a> {
    error: Option<String>,
    filters: &'a DirectoryQuery,
    entries: Vec<ModeratedEntry>,
    next: Option<String>,
    from: Option<String>,
    limited: bool,
}

/// # GET /_annuaire/console/directory
pub(super) async fn list(c: Console) -> HttpResponse {
    let q: DirectoryQuery = query(&c.req);
    let visibility = match present(&q.visibility).as_deref() {
        Some("visible") => Some(Visibility::Visible),
        Some("hidden") => Some(Visibility::Hidden),
        _ => None,
    };
    let filter = EntryFilter {
        organisation: present(&q.organisation),
        homeserver: present(&q.homeserver),
        visibility,
        external: None,
    };
    let from = present(&q.from);
    let (entries, next, limited, error) = match c
        .app
        .admin
        .list_directory(present(&q.q), filter, from.clone(), ENTRIES_PAGE)
        .await
    {
        Ok(page) => (page.entries, page.next_batch, page.limited, None),
        Err(e @ AdminError::InvalidInput(_)) => (Vec::new(), None, false, Some(e.to_string())),
        Err(e) => return c.error(&e),
    };
    let data = ListPage {
        error,
        filters: &q,
        entries,
        next,
        from,
        limited,
    };
    c.page("directory", "console_directory.html", &data)
}

#[derive(Default, Deserialize)]
struct EntryQuery {
    user_id: Option<String>,
    done: Option<String>,
}

#[derive(Serialize)]
struct EntryPage {
    done: Option<&'static str>,
    error: Option<String>,
    entry: ModeratedEntry,
}

/// # GET /_annuaire/console/directory/entry?user_id=…
pub(super) async fn entry(c: Console) -> HttpResponse {
    let q: EntryQuery = query(&c.req);
    let Some(user_id) = present(&q.user_id) else {
        return c.error(&AdminError::NotFound("no user id given".into()));
    };
    match c.app.admin.directory_entry(&user_id).await {
        Ok(entry) => {
            let done = match q.done.as_deref() {
                Some("hidden") => Some("hidden"),
                Some("unhidden") => Some("unhidden"),
                Some("renamed") => Some("renamed"),
                _ => None,
            };
            let data = EntryPage {
                done,
                error: None,
                entry,
            };
            c.page("directory", "console_entry.html", &data)
        }
        Err(e) => c.error(&e),
    }
}

#[derive(Deserialize)]
pub(super) struct EntryFields {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    name: String,
}

/// # POST /_annuaire/console/directory/entry
///
/// `action` is `hide`, `unhide`, `rename` (`name`; empty removes the override) or `remove`.
pub(super) async fn change(
    EditorForm { console: c, form }: EditorForm<EntryFields>,
) -> HttpResponse {
    let admin = &c.app.admin;
    let actor = c.session.actor();
    let user_id = form.user_id.trim();
    let back = |code: &str| {
        done(
            &format!(
                "/_annuaire/console/directory/entry?user_id={}",
                crate::web::encode_query_value(user_id)
            ),
            code,
            &[],
        )
    };
    let result = match form.action.as_str() {
        "hide" => admin
            .set_directory_visibility(user_id, Visibility::Hidden, &actor)
            .await
            .map(|_| "hidden"),
        "unhide" => admin
            .set_directory_visibility(user_id, Visibility::Visible, &actor)
            .await
            .map(|_| "unhidden"),
        "rename" => {
            let name = Some(form.name.trim().to_owned()).filter(|n| !n.is_empty());
            admin
                .rename_directory_entry(user_id, name, &actor)
                .await
                .map(|_| "renamed")
        }
        "remove" => admin
            .remove_directory_entry(user_id, &actor)
            .await
            .map(|_| "removed"),
        other => Err(AdminError::InvalidInput(format!(
            "unknown action {other:?}"
        ))),
    };
    match result {
        Ok("removed") => done("/_annuaire/console/directory", "removed", &[]),
        Ok(code) => back(code),
        Err(e) => c.error(&e),
    }
}

#[derive(Serialize)]
struct ErasePage {
    address: String,
    error: Option<String>,
    result: Option<Erasure>,
}

/// # GET /_annuaire/console/erase
pub(super) async fn erase_form(c: Console) -> HttpResponse {
    let data = ErasePage {
        address: String::new(),
        error: None,
        result: None,
    };
    c.page("erase", "console_erase.html", &data)
}

#[derive(Deserialize)]
pub(super) struct EraseFields {
    #[serde(default)]
    address: String,
    #[serde(default)]
    confirm: String,
}

/// # POST /_annuaire/console/erase
///
/// Erases an address once it has been typed twice, the same.
pub(super) async fn erase(
    EditorForm { console: c, form }: EditorForm<EraseFields>,
) -> HttpResponse {
    let address = form.address.trim().to_owned();
    let page = |status, error: Option<String>, result| {
        let data = ErasePage {
            address: address.clone(),
            error,
            result,
        };
        c.page_with_status(status, "erase", "console_erase.html", &data)
    };
    if address.is_empty() || form.confirm.trim() != address {
        return page(StatusCode::BAD_REQUEST, Some("mismatch".into()), None);
    }
    match c
        .app
        .admin
        .erase("email", &address, &c.session.actor())
        .await
    {
        Ok(erasure) => page(StatusCode::OK, None, Some(erasure)),
        Err(AdminError::InvalidAddress(_)) => page(
            StatusCode::BAD_REQUEST,
            Some("invalid_address".into()),
            None,
        ),
        Err(e @ AdminError::InvalidInput(_)) => {
            page(StatusCode::BAD_REQUEST, Some(e.to_string()), None)
        }
        Err(e) => c.error(&e),
    }
}
