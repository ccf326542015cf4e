//! The allowlist rules through the admin API: list, read, create, replace, delete, convert,
//! import and export, and the explainer.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{AdminAuth, Editor, json_body, no_nul};
use crate::admin::{self, AdminError, RuleFilter};
use crate::http::AppData;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{MatrixQuery, RawBody};
use crate::policy::{Decision, ReasonCode, Rule, RuleDiff, RuleKind};

/// One rule as JSON: the allowlist file's field names plus `id`, `kind`, `source` and `line`
/// (what `Rule::to_json` writes; a unit test keeps this schema equal to it).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleView {
    /// Stable id derived from the kind and value ("r" + 16 hex digits).
    pub id: String,
    /// `domain`, `deny`, `address` or `pattern`.
    pub kind: String,
    /// The domain (domain rules, and deny rules on a domain), IDNA ASCII.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether subdomains match too (with `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomains: Option<bool>,
    /// The address (address rules, and deny rules on one address), normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The regular expression (pattern rules), matched whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Organisation label ("Jean Dupont [Finances]").
    pub label: Option<String>,
    /// The homeserver (shard) of allowed addresses.
    pub homeserver: Option<String>,
    /// That homeserver's name as seen from outside.
    pub shadow_homeserver: Option<String>,
    /// Whether an allowed address still needs an invitation.
    pub requires_invite: bool,
    /// RFC 3339 instant from which the rule no longer applies.
    pub expires_at: Option<String>,
    /// Accept a public mail provider anyway.
    pub force: bool,
    /// `admin`, or the allowlist file (path relative to the allowlists folder).
    pub source: String,
    /// The rule's line in its file (file rules).
    pub line: Option<u32>,
}

/// A rule to create or replace: [`RuleView`]'s fields; `id`, `source` and `line` are ignored
/// (the id follows from the kind and value), so a listed rule can be sent back as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    /// Ignored.
    pub id: Option<String>,
    /// `domain`, `deny`, `address` or `pattern`.
    pub kind: String,
    /// A domain (`domain`, or `deny` of a domain).
    pub name: Option<String>,
    /// Subdomains too (default false).
    pub subdomains: Option<bool>,
    /// One address (`address`, or `deny` of an address).
    pub email: Option<String>,
    /// A regular expression over `local@ascii.domain` (`pattern`), anchored.
    pub regex: Option<String>,
    /// Organisation label.
    pub label: Option<String>,
    /// The homeserver (required on allow rules).
    pub homeserver: Option<String>,
    /// Its public name, if different.
    pub shadow_homeserver: Option<String>,
    /// Allowed only once invited (default false).
    pub requires_invite: Option<bool>,
    /// RFC 3339 expiry instant.
    pub expires_at: Option<String>,
    /// Accept a public mail provider (default false).
    pub force: Option<bool>,
    /// Ignored.
    pub source: Option<String>,
    /// Ignored.
    pub line: Option<u32>,
}

/// Filters shared by the rule list and the export.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RulesQuery {
    /// Rules about this domain: a rule on it, a parent's rule with `subdomains`, addresses at it.
    pub domain: Option<String>,
    /// Exactly this organisation label.
    pub organisation: Option<String>,
    /// Exactly this homeserver.
    pub homeserver: Option<String>,
    /// `admin`, or a file path ("finances.toml").
    pub source: Option<String>,
    /// `domain`, `deny`, `address` or `pattern`.
    #[param(value_type = Option<String>)]
    pub kind: Option<RuleKind>,
    /// Page size (default 100, at most 1000; list only).
    pub limit: Option<usize>,
    /// The `next_batch` of the previous page (list only).
    pub next_batch: Option<String>,
}

impl RulesQuery {
    fn filter(&self) -> Result<RuleFilter, AdminError> {
        no_nul(&[
            ("domain", &self.domain),
            ("organisation", &self.organisation),
            ("homeserver", &self.homeserver),
            ("source", &self.source),
            ("next_batch", &self.next_batch),
        ])?;
        let filter = RuleFilter {
            domain: None,
            organisation: self.organisation.clone(),
            homeserver: self.homeserver.clone(),
            source: self.source.clone(),
            kind: self.kind,
        };
        match &self.domain {
            Some(d) => filter.with_domain(d),
            None => Ok(filter),
        }
    }
}

/// A page of rules.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleList {
    /// The rules, by id.
    #[schema(value_type = Vec<RuleView>)]
    pub rules: Vec<Value>,
    /// Pass as `next_batch` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
}

/// # GET /_annuaire/admin/v1/rules
#[utoipa::path(get, path = "/_annuaire/admin/v1/rules", tag = "admin",
    summary = "List rules (filters, pages by id)",
    security(("admin_token" = [])),
    params(RulesQuery),
    responses(
        (status = 200, description = "A page of rules", body = RuleList),
        (status = 400, description = "M_INVALID_PARAM", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(crate) async fn list_rules(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<RulesQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = q.filter()?;
    let limit = admin::page_limit(q.limit)?;
    let from = q.next_batch.clone();
    let page = app.admin.list_rules(filter, from, limit).await?;
    Ok(HttpResponse::Ok().json(RuleList {
        rules: page.rules.iter().map(Rule::to_json).collect(),
        next_batch: page.next_batch,
    }))
}

/// # POST /_annuaire/admin/v1/rules
///
/// Validated as the allowlist files are (same messages). A public mail provider as an allowed
/// domain is refused unless `force` is true. Applies on every instance within
/// `policy.reload_interval`.
#[utoipa::path(post, path = "/_annuaire/admin/v1/rules", tag = "admin",
    summary = "Create an admin rule",
    security(("admin_token" = [])),
    request_body = RuleInput,
    responses(
        (status = 201, description = "Created", body = RuleView),
        (status = 400, description = "M_INVALID_PARAM (with `errors`: [{path, line, message}]), M_NOT_JSON, M_BAD_JSON", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN: the viewer role cannot change rules", body = ErrorBody),
        (status = 409, description = "ANNUAIRE_RULE_EXISTS", body = ErrorBody),
    ))]
pub(crate) async fn create_rule(
    app: AppData,
    Editor(session): Editor,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let input = json_body(&body)?;
    let rule = app.admin.create_rule(input, &session.actor()).await?;
    Ok(HttpResponse::Created().json(rule.to_json()))
}

/// # GET /_annuaire/admin/v1/rules/{id}
#[utoipa::path(get, path = "/_annuaire/admin/v1/rules/{id}", tag = "admin",
    summary = "Read one rule",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The rule's id")),
    responses(
        (status = 200, description = "The rule", body = RuleView),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
    ))]
pub(crate) async fn get_rule(
    app: AppData,
    _auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let stored = app.admin.rule(&id).await?;
    Ok(HttpResponse::Ok().json(stored.rule.to_json()))
}

/// # PUT /_annuaire/admin/v1/rules/{id}
///
/// Replaces every field of an admin rule (absent fields take their defaults). The kind and value
/// make the id and cannot change. Rules from allowlist files are read-only: 409
/// `ANNUAIRE_FILE_RULE` (edit the file, or convert the rule first).
#[utoipa::path(put, path = "/_annuaire/admin/v1/rules/{id}", tag = "admin",
    summary = "Replace an admin rule",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The rule's id")),
    request_body = RuleInput,
    responses(
        (status = 200, description = "The rule as stored", body = RuleView),
        (status = 400, description = "M_INVALID_PARAM (with `errors`)", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "ANNUAIRE_FILE_RULE", body = ErrorBody),
    ))]
pub(crate) async fn update_rule(
    app: AppData,
    Editor(session): Editor,
    id: web::Path<String>,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let input = json_body(&body)?;
    let id = id.into_inner();
    let rule = app.admin.update_rule(&id, input, &session.actor()).await?;
    Ok(HttpResponse::Ok().json(rule.to_json()))
}

/// # DELETE /_annuaire/admin/v1/rules/{id}
///
/// Rules from allowlist files are read-only: 409 `ANNUAIRE_FILE_RULE`.
#[utoipa::path(delete, path = "/_annuaire/admin/v1/rules/{id}", tag = "admin",
    summary = "Delete an admin rule",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The rule's id")),
    responses(
        (status = 200, description = "The deleted rule", body = RuleView),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "ANNUAIRE_FILE_RULE", body = ErrorBody),
    ))]
pub(crate) async fn delete_rule(
    app: AppData,
    Editor(session): Editor,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let rule = app.admin.delete_rule(&id, &session.actor()).await?;
    Ok(HttpResponse::Ok().json(rule.to_json()))
}

/// What a conversion did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConvertResponse {
    /// The rule, now with source `admin`.
    #[schema(value_type = RuleView)]
    pub rule: Value,
    /// Where it came from ("finances.toml:12").
    pub was: String,
    /// What to do with the file.
    pub note: String,
}

/// # POST /_annuaire/admin/v1/rules/{id}/convert
///
/// Makes a rule imported from an allowlist file an admin rule (same id and values), editable
/// through the API from then on. Remove its line from the file: until then, the next import of
/// the allowlist files (`annuaire allowlist import`, or `serve` at start) fails, reporting the
/// file rule as a duplicate of the admin rule.
#[utoipa::path(post, path = "/_annuaire/admin/v1/rules/{id}/convert", tag = "admin",
    summary = "Convert a file rule to an admin rule",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The rule's id")),
    responses(
        (status = 200, description = "Converted", body = ConvertResponse),
        (status = 400, description = "M_INVALID_PARAM: already an admin rule", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 404, description = "M_NOT_FOUND", body = ErrorBody),
    ))]
pub(crate) async fn convert_rule(
    app: AppData,
    Editor(session): Editor,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let converted = app.admin.convert_rule(&id, &session.actor()).await?;
    let note = format!(
        "Remove {} from the allowlist files: until then, the next allowlist import (and serve's \
         start-up import) fails, reporting it as a duplicate of this admin rule",
        converted.was
    );
    Ok(HttpResponse::Ok().json(ConvertResponse {
        rule: converted.rule.to_json(),
        was: converted.was,
        note,
    }))
}

/// `POST /rules/import` options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Report the changes without making them.
    #[serde(default)]
    pub dry_run: bool,
}

/// A rule replaced by an import.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleChange {
    /// Before.
    #[schema(value_type = RuleView)]
    pub before: Value,
    /// After.
    #[schema(value_type = RuleView)]
    pub after: Value,
}

/// What an import changes (or would change, with `dry_run`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResponse {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// New rules.
    #[schema(value_type = Vec<RuleView>)]
    pub added: Vec<Value>,
    /// Admin rules replaced.
    pub changed: Vec<RuleChange>,
    /// Rules removed (an API import removes none).
    #[schema(value_type = Vec<RuleView>)]
    pub removed: Vec<Value>,
    /// One line per change, as `annuaire allowlist import` prints them.
    pub summary: Vec<String>,
}

fn import_response(diff: &RuleDiff, dry_run: bool) -> ImportResponse {
    ImportResponse {
        dry_run,
        added: diff.added.iter().map(Rule::to_json).collect(),
        changed: diff
            .changed
            .iter()
            .map(|(before, after)| RuleChange {
                before: before.to_json(),
                after: after.to_json(),
            })
            .collect(),
        removed: diff.removed.iter().map(Rule::to_json).collect(),
        summary: crate::allowlist::describe_diff(diff),
    }
}

/// Whether the request says its body is TOML.
fn is_toml(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| {
            let essence = essence.trim();
            essence.eq_ignore_ascii_case("application/toml")
                || essence.eq_ignore_ascii_case("text/toml")
        })
}

/// # POST /_annuaire/admin/v1/rules/import
///
/// The body is one allowlist file (the TOML format of `allowlists/`, `Content-Type:
/// application/toml`). Its rules become admin rules (source `admin`): new ones are added, admin
/// rules with the same kind and value are replaced, nothing else changes. A rule that an
/// allowlist file already defines is refused (409, naming both). Errors name `import.toml` and
/// the line, with the file importer's messages.
#[utoipa::path(post, path = "/_annuaire/admin/v1/rules/import", tag = "admin",
    summary = "Import an allowlist file as admin rules (returns the diff)",
    security(("admin_token" = [])),
    params(ImportQuery),
    request_body(content = String, content_type = "application/toml", description = "One allowlist file"),
    responses(
        (status = 200, description = "The changes", body = ImportResponse),
        (status = 400, description = "M_INVALID_PARAM (with `errors`: [{path, line, message}])", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
        (status = 403, description = "M_FORBIDDEN (viewer)", body = ErrorBody),
        (status = 409, description = "ANNUAIRE_RULE_EXISTS", body = ErrorBody),
        (status = 415, description = "M_INVALID_PARAM: not application/toml", body = ErrorBody),
    ))]
pub(crate) async fn import_rules(
    req: HttpRequest,
    app: AppData,
    Editor(session): Editor,
    MatrixQuery(q): MatrixQuery<ImportQuery>,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    if !is_toml(&req) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "M_INVALID_PARAM",
            "The body must be an allowlist file sent with Content-Type: application/toml",
        ));
    }
    let text = String::from_utf8(body.0.to_vec())
        .map_err(|_| ApiError::invalid_param("The allowlist file is not UTF-8"))?;
    let dry_run = q.dry_run;
    let diff = app
        .admin
        .import_rules(text, dry_run, &session.actor())
        .await?;
    Ok(HttpResponse::Ok().json(import_response(&diff, dry_run)))
}

/// # GET /_annuaire/admin/v1/rules/export
///
/// The rules (with the list's filters, e.g. `?source=admin`) as one allowlist file, in decision
/// order; it imports back to the same rules.
#[utoipa::path(get, path = "/_annuaire/admin/v1/rules/export", tag = "admin",
    summary = "Export rules as an allowlist file (TOML)",
    security(("admin_token" = [])),
    params(RulesQuery),
    responses(
        (status = 200, description = "An allowlist file", body = String, content_type = "application/toml"),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(crate) async fn export_rules(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<RulesQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = q.filter()?;
    let text = app.admin.export_rules(filter).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/toml; charset=utf-8")
        .body(text))
}

// ---- explain ----

/// `GET /explain` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExplainQuery {
    /// An email address.
    pub address: String,
}

/// The policy's decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionView {
    /// `allowed`, `invite_required` or `denied`.
    pub outcome: String,
    /// The homeserver (shard) the address belongs to.
    pub homeserver: Option<String>,
    /// Its public name.
    pub shadow_homeserver: Option<String>,
    /// The organisation label.
    pub organisation: Option<String>,
    /// The deciding rule: "finances.toml:12", "admin:<id>", or null for the default.
    pub rule: Option<String>,
    /// The deciding rule's id.
    pub rule_id: Option<String>,
    /// Why.
    pub reason: String,
    /// Why, as a stable code (see `ReasonCode`).
    pub reason_code: ReasonCode,
}

impl From<&Decision> for DecisionView {
    fn from(d: &Decision) -> Self {
        DecisionView {
            outcome: d.outcome.as_str().to_owned(),
            homeserver: d.homeserver.clone(),
            shadow_homeserver: d.shadow_homeserver.clone(),
            organisation: d.organisation.clone(),
            rule: d.rule.clone(),
            rule_id: d.rule_id.clone(),
            reason: d.reason.clone(),
            reason_code: d.reason_code,
        }
    }
}

/// A rule looked at while deciding.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsideredView {
    /// The rule.
    #[schema(value_type = RuleView)]
    pub rule: Value,
    /// Whether it matches the address (expired rules do not).
    pub matched: bool,
    /// Why it won, lost, or did not apply.
    pub why: String,
}

/// The full decision for an address.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainResponse {
    /// The address, normalised.
    pub address: String,
    /// The decision.
    pub decision: DecisionView,
    /// The rule that decided (null: the configured default).
    #[schema(value_type = Option<RuleView>)]
    pub matched_rule: Option<Value>,
    /// Every rule that names the address, its domain or a parent domain, or whose pattern
    /// matches, in decision order, with why each one won or lost.
    pub considered: Vec<ConsideredView>,
}

/// # GET /_annuaire/admin/v1/explain
#[utoipa::path(get, path = "/_annuaire/admin/v1/explain", tag = "admin",
    summary = "Explain the decision for an address",
    security(("admin_token" = [])),
    params(ExplainQuery),
    responses(
        (status = 200, description = "The decision and the rules considered", body = ExplainResponse),
        (status = 400, description = "M_INVALID_EMAIL, M_MISSING_PARAMS", body = ErrorBody),
        (status = 401, description = "M_MISSING_TOKEN or M_UNKNOWN_TOKEN", body = ErrorBody),
    ))]
pub(crate) async fn explain(
    app: AppData,
    _auth: AdminAuth,
    MatrixQuery(q): MatrixQuery<ExplainQuery>,
) -> Result<HttpResponse, ApiError> {
    let (address, explanation) = app.admin.explain(&q.address).await?;
    let decision = &explanation.decision;
    let matched_rule = decision.rule_id.as_ref().and_then(|id| {
        explanation
            .considered
            .iter()
            .find(|c| &c.rule.id == id)
            .map(|c| c.rule.to_json())
    });
    Ok(HttpResponse::Ok().json(ExplainResponse {
        address: address.as_str().to_owned(),
        decision: DecisionView::from(decision),
        matched_rule,
        considered: explanation
            .considered
            .iter()
            .map(|c| ConsideredView {
                rule: c.rule.to_json(),
                matched: c.matched,
                why: c.why.clone(),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{RuleSource, parse_allowlist_file};

    const FILE: &str = r#"
[organisation]
label = "Finances"
homeserver = "agent.finances.example"
shadow_homeserver = "public.finances.example"

[[domain]]
name = "finances.gouv.example"
subdomains = true
expires_at = 2030-01-01T00:00:00Z

[[deny]]
name = "webmail.finances.gouv.example"

[[deny]]
email = "someone@finances.gouv.example"

[[address]]
email = "Consultant@Partner.example"
requires_invite = true

[[pattern]]
regex = '^[a-z]+\.[a-z]+@region-[0-9]+\.example$'
"#;

    /// The documented schemas describe exactly what `Rule::to_json` writes and reads.
    #[test]
    fn rule_schema_mirrors_the_rule_json() {
        let mut rules = parse_allowlist_file("finances.toml", FILE).unwrap();
        let mut admin_rule = rules[0].clone();
        admin_rule.source = RuleSource::Admin;
        rules.push(admin_rule);
        assert_eq!(rules.len(), 6);
        for rule in rules {
            let json = rule.to_json();
            let view: RuleView = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(serde_json::to_value(&view).unwrap(), json);
            let _: RuleInput = serde_json::from_value(json).unwrap();
        }
    }
}
