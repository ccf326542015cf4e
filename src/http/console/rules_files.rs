//! The rules as files: import (a TOML file, its dry-run diff shown before it is applied) and
//! export (one file's rules, or the filtered ones, as a TOML download).

use actix_web::HttpResponse;
use actix_web::http::{StatusCode, header};
use serde::{Deserialize, Serialize};

use super::rules::{Facets, FilterQuery, RuleRow, facets};
use super::{Console, EditorForm, query};
use crate::admin::AdminError;
use crate::policy::RuleDiff;

#[derive(Serialize)]
struct ChangeView {
    before: RuleRow,
    after: RuleRow,
}

#[derive(Serialize)]
struct DiffView {
    added: Vec<RuleRow>,
    changed: Vec<ChangeView>,
}

impl DiffView {
    fn of(diff: &RuleDiff, now: i64) -> DiffView {
        DiffView {
            added: diff.added.iter().map(|r| RuleRow::of(r, now)).collect(),
            changed: diff
                .changed
                .iter()
                .map(|(before, after)| ChangeView {
                    before: RuleRow::of(before, now),
                    after: RuleRow::of(after, now),
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct ImportPage<'a> {
    toml: &'a str,
    errors: Vec<String>,
    applied: bool,
    diff: Option<DiffView>,
}

/// # GET /_annuaire/console/rules/import
pub(super) async fn import_form(c: Console) -> HttpResponse {
    let data = ImportPage {
        toml: "",
        errors: Vec::new(),
        applied: false,
        diff: None,
    };
    c.page("import", "console_import.html", &data)
}

#[derive(Deserialize)]
pub(super) struct ImportFields {
    #[serde(default)]
    step: String,
    #[serde(default)]
    toml: String,
}

/// # POST /_annuaire/console/rules/import
///
/// `step=preview`: the dry run's diff, with a form to confirm; `step=apply`: the import.
pub(super) async fn import(
    EditorForm { console: c, form }: EditorForm<ImportFields>,
) -> HttpResponse {
    let apply = form.step == "apply";
    let now = c.app.clock.now_ms();
    let result = c
        .app
        .admin
        .import_rules(form.toml.clone(), !apply, &c.session.actor())
        .await;
    let (status, data) = match result {
        Ok(diff) => (
            StatusCode::OK,
            ImportPage {
                toml: &form.toml,
                errors: Vec::new(),
                applied: apply,
                diff: Some(DiffView::of(&diff, now)),
            },
        ),
        Err(AdminError::InvalidRules(errors) | AdminError::RuleExists(errors)) => (
            StatusCode::BAD_REQUEST,
            ImportPage {
                toml: &form.toml,
                errors: errors.iter().map(ToString::to_string).collect(),
                applied: false,
                diff: None,
            },
        ),
        Err(AdminError::InvalidInput(m)) => (
            StatusCode::BAD_REQUEST,
            ImportPage {
                toml: &form.toml,
                errors: vec![m],
                applied: false,
                diff: None,
            },
        ),
        Err(e) => return c.error(&e),
    };
    c.page_with_status(status, "import", "console_import.html", &data)
}

#[derive(Serialize)]
struct ExportPage {
    facets: Facets,
}

/// # GET /_annuaire/console/rules/export
pub(super) async fn export_form(c: Console) -> HttpResponse {
    let data = ExportPage { facets: facets(&c) };
    c.page("export", "console_export.html", &data)
}

/// # GET /_annuaire/console/rules/export.toml
///
/// The chosen rules as an allowlist file (a download).
pub(super) async fn export(c: Console) -> HttpResponse {
    let q: FilterQuery = query(&c.req);
    let filter = match q.filter() {
        Ok(f) => f,
        Err(e) => return c.error(&e),
    };
    match c.app.admin.export_rules(filter).await {
        Ok(text) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/toml; charset=utf-8"))
            .insert_header((
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"allowlist.toml\"",
            ))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .body(text),
        Err(e) => c.error(&e),
    }
}
