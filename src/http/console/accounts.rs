//! Admin accounts: list, add a local account, remove, change a role.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Console, EditorForm, done, query};
use crate::admin::{AccountSummary, AdminError, Role};

#[derive(Default, Deserialize)]
struct AccountsQuery {
    done: Option<String>,
    name: Option<String>,
}

#[derive(Serialize, Default)]
struct AddForm {
    username: String,
    role: String,
}

#[derive(Serialize)]
struct AccountsPage {
    done: Option<&'static str>,
    done_name: Option<String>,
    error: Option<String>,
    form: AddForm,
    accounts: Vec<AccountSummary>,
}

async fn page(
    c: &Console,
    status: StatusCode,
    error: Option<String>,
    form: AddForm,
) -> HttpResponse {
    let q: AccountsQuery = query(&c.req);
    let accounts = match c.app.admin.list_accounts().await {
        Ok(a) => a,
        Err(e) => return c.error(&e),
    };
    let done = match q.done.as_deref() {
        Some("added") => Some("added"),
        Some("removed") => Some("removed"),
        Some("role") => Some("role"),
        _ => None,
    };
    let data = AccountsPage {
        done,
        done_name: q.name,
        error,
        form,
        accounts,
    };
    c.page_with_status(status, "accounts", "console_accounts.html", &data)
}

/// # GET /_annuaire/console/accounts
pub(super) async fn list(c: Console) -> HttpResponse {
    let form = AddForm {
        username: String::new(),
        role: "viewer".into(),
    };
    page(&c, StatusCode::OK, None, form).await
}

#[derive(Deserialize)]
pub(super) struct AccountFields {
    #[serde(default)]
    action: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    new_username: String,
    #[serde(default)]
    new_role: String,
    #[serde(default)]
    new_password: String,
}

/// # POST /_annuaire/console/accounts
///
/// `action` is `add` (`new_username`, `new_role`, `new_password`), `remove` (`username`) or
/// `role` (`username`, `role`).
pub(super) async fn change(
    EditorForm { console: c, form }: EditorForm<AccountFields>,
) -> HttpResponse {
    let admin = &c.app.admin;
    let actor = c.session.actor();
    let role = |text: &str| {
        Role::parse(text).ok_or_else(|| AdminError::InvalidInput(format!("unknown role {text:?}")))
    };
    let result = match form.action.as_str() {
        "add" => match role(&form.new_role) {
            Ok(r) => admin
                .add_account(form.new_username.trim(), r, &form.new_password, &actor)
                .await
                .map(|a| ("added", a.username)),
            Err(e) => Err(e),
        },
        "remove" => admin
            .remove_account(&form.username, &actor)
            .await
            .map(|a| ("removed", a.username)),
        "role" => match role(&form.role) {
            Ok(r) => admin
                .set_account_role(&form.username, r, &actor)
                .await
                .map(|a| ("role", a.username)),
            Err(e) => Err(e),
        },
        other => Err(AdminError::InvalidInput(format!(
            "unknown action {other:?}"
        ))),
    };
    match result {
        Ok((code, name)) => done("/_annuaire/console/accounts", code, &[("name", &name)]),
        Err(
            e @ (AdminError::InvalidInput(_)
            | AdminError::AccountExists(_)
            | AdminError::NotFound(_)),
        ) => {
            let add = AddForm {
                username: form.new_username,
                role: if form.new_role.is_empty() {
                    "viewer".into()
                } else {
                    form.new_role
                },
            };
            page(&c, StatusCode::BAD_REQUEST, Some(e.to_string()), add).await
        }
        Err(e) => c.error(&e),
    }
}
