//! The rules' pages: list with filters, one rule, the rule form (create, edit) with the
//! importer's messages beside their field, delete, convert a file rule. Import and export are in
//! [`super::rules_files`], "explain an address" in [`super::explain`].

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Console, EditorForm, done, present, query};
use crate::admin::{AdminError, RuleFilter};
use crate::policy::{Rule, RuleError, RuleKind, RuleSource, RuleTarget};

/// Rules per page.
const RULES_PAGE: usize = 50;

/// A rule as the pages show it.
#[derive(Debug, Serialize)]
pub(super) struct RuleRow {
    id: String,
    kind: &'static str,
    value: String,
    subdomains: bool,
    label: Option<String>,
    homeserver: Option<String>,
    shadow_homeserver: Option<String>,
    requires_invite: bool,
    expires_at: Option<i64>,
    expired: bool,
    force: bool,
    source: String,
    reference: String,
}

impl RuleRow {
    pub(super) fn of(rule: &Rule, now_ms: i64) -> RuleRow {
        RuleRow {
            id: rule.id.clone(),
            kind: rule.kind.as_str(),
            value: rule.target.value().to_owned(),
            subdomains: matches!(
                rule.target,
                RuleTarget::Domain {
                    subdomains: true,
                    ..
                }
            ),
            label: rule.label.clone(),
            homeserver: rule.homeserver.clone(),
            shadow_homeserver: rule.shadow_homeserver.clone(),
            requires_invite: rule.requires_invite,
            expires_at: rule.expires_at,
            expired: rule.is_expired(now_ms),
            force: rule.force,
            source: match &rule.source {
                RuleSource::Admin => "admin".to_owned(),
                RuleSource::File { path, .. } => path.clone(),
            },
            reference: rule.reference(),
        }
    }
}

#[derive(Serialize)]
pub(super) struct Facets {
    organisations: Vec<String>,
    homeservers: Vec<String>,
    sources: Vec<String>,
}

pub(super) fn facets(c: &Console) -> Facets {
    let f = c.app.admin.rule_facets();
    Facets {
        organisations: f.organisations,
        homeservers: f.homeservers,
        sources: f.sources,
    }
}

/// The rule filters, as the forms send them.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct FilterQuery {
    domain: Option<String>,
    organisation: Option<String>,
    homeserver: Option<String>,
    source: Option<String>,
    kind: Option<String>,
    #[serde(skip_serializing)]
    from: Option<String>,
    #[serde(skip_serializing)]
    done: Option<String>,
}

impl FilterQuery {
    pub(super) fn filter(&self) -> Result<RuleFilter, AdminError> {
        let kind = match present(&self.kind).as_deref() {
            None => None,
            Some("domain") => Some(RuleKind::Domain),
            Some("deny") => Some(RuleKind::Deny),
            Some("address") => Some(RuleKind::Address),
            Some("pattern") => Some(RuleKind::Pattern),
            Some(other) => {
                return Err(AdminError::InvalidInput(format!(
                    "unknown rule kind {other:?}"
                )));
            }
        };
        let filter = RuleFilter {
            domain: None,
            organisation: present(&self.organisation),
            homeserver: present(&self.homeserver),
            source: present(&self.source),
            kind,
        };
        match present(&self.domain) {
            Some(domain) => filter.with_domain(&domain),
            None => Ok(filter),
        }
    }
}

#[derive(Serialize)]
struct ListPage<'a> {
    done: Option<&'a str>,
    error: Option<String>,
    filters: &'a FilterQuery,
    facets: Facets,
    rules: Vec<RuleRow>,
    next: Option<String>,
    from: Option<String>,
}

fn known_done(code: Option<&str>) -> Option<&'static str> {
    match code? {
        "created" => Some("created"),
        "updated" => Some("updated"),
        "deleted" => Some("deleted"),
        "converted" => Some("converted"),
        "accepted" => Some("accepted"),
        _ => None,
    }
}

/// # GET /_annuaire/console/rules
pub(super) async fn list(c: Console) -> HttpResponse {
    let q: FilterQuery = query(&c.req);
    let from = present(&q.from);
    let (rules, next, error) = match q.filter() {
        Err(e) => (Vec::new(), None, Some(e.to_string())),
        Ok(filter) => match c
            .app
            .admin
            .list_rules(filter, from.clone(), RULES_PAGE)
            .await
        {
            Ok(page) => (page.rules, page.next_batch, None),
            Err(e @ AdminError::InvalidInput(_)) => (Vec::new(), None, Some(e.to_string())),
            Err(e) => return c.error(&e),
        },
    };
    let now = c.app.clock.now_ms();
    let data = ListPage {
        done: known_done(q.done.as_deref()),
        error,
        filters: &q,
        facets: facets(&c),
        rules: rules.iter().map(|r| RuleRow::of(r, now)).collect(),
        next,
        from,
    };
    c.page("rules", "console_rules.html", &data)
}

#[derive(Default, Deserialize)]
struct ShowQuery {
    done: Option<String>,
    was: Option<String>,
    told: Option<usize>,
}

#[derive(Serialize)]
struct RulePage<'a> {
    done: Option<&'static str>,
    was: Option<String>,
    requesters_told: Option<usize>,
    error: Option<&'a str>,
    rule: RuleRow,
}

/// # GET /_annuaire/console/rules/{id}
pub(super) async fn show(c: Console, id: web::Path<String>) -> HttpResponse {
    let q: ShowQuery = query(&c.req);
    match c.app.admin.rule(&id).await {
        Ok(stored) => {
            let data = RulePage {
                done: known_done(q.done.as_deref()),
                was: q.was,
                requesters_told: q.told,
                error: None,
                rule: RuleRow::of(&stored.rule, c.app.clock.now_ms()),
            };
            c.page("rules", "console_rule.html", &data)
        }
        Err(e) => c.error(&e),
    }
}

/// The rule form's fields (strings as typed; checkboxes present when ticked).
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct RuleFields {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    subdomains: bool,
    #[serde(default)]
    email: String,
    #[serde(default)]
    regex: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    homeserver: String,
    #[serde(default)]
    shadow_homeserver: String,
    #[serde(default)]
    requires_invite: bool,
    #[serde(default)]
    expires_at: String,
    #[serde(default)]
    force: bool,
    #[serde(default, skip_serializing)]
    request_domain: String,
}

impl RuleFields {
    fn of(rule: &Rule) -> RuleFields {
        let mut f = RuleFields {
            kind: rule.kind.as_str().to_owned(),
            label: rule.label.clone().unwrap_or_default(),
            homeserver: rule.homeserver.clone().unwrap_or_default(),
            shadow_homeserver: rule.shadow_homeserver.clone().unwrap_or_default(),
            requires_invite: rule.requires_invite,
            expires_at: rule.expires_at.map(datetime_local).unwrap_or_default(),
            force: rule.force,
            ..RuleFields::default()
        };
        match &rule.target {
            RuleTarget::Domain { name, subdomains } => {
                f.name = name.clone();
                f.subdomains = *subdomains;
            }
            RuleTarget::Email(email) => f.email = email.clone(),
            RuleTarget::Regex(regex) => f.regex = regex.clone(),
        }
        f
    }

    /// The rule's JSON for the admin service: every target field that was filled in (so that
    /// the importer says which one does not apply), the others when given.
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        let put = |m: &mut Map<String, Value>, key: &str, value: &str| {
            let value = value.trim();
            if !value.is_empty() {
                m.insert(key.to_owned(), Value::from(value));
            }
        };
        m.insert("kind".into(), Value::from(self.kind.trim()));
        put(&mut m, "name", &self.name);
        if self.subdomains {
            m.insert("subdomains".into(), Value::Bool(true));
        }
        put(&mut m, "email", &self.email);
        put(&mut m, "regex", &self.regex);
        put(&mut m, "label", &self.label);
        if self.kind != "deny" {
            put(&mut m, "homeserver", &self.homeserver);
            put(&mut m, "shadow_homeserver", &self.shadow_homeserver);
            if self.requires_invite {
                m.insert("requires_invite".into(), Value::Bool(true));
            }
        }
        let expires = self.expires_at.trim();
        if !expires.is_empty() {
            m.insert("expires_at".into(), Value::from(rfc3339_of_local(expires)));
        }
        if self.force {
            m.insert("force".into(), Value::Bool(true));
        }
        Value::Object(m)
    }
}

/// `YYYY-MM-DDTHH:MM` (a `datetime-local` value, read as UTC) of an instant.
fn datetime_local(ms: i64) -> String {
    let shown = crate::web::format_datetime(ms); // "YYYY-MM-DD HH:MM UTC"
    shown.trim_end_matches(" UTC").replacen(' ', "T", 1)
}

/// A `datetime-local` value (UTC) as RFC 3339; anything else is passed on for the importer to
/// judge.
fn rfc3339_of_local(value: &str) -> String {
    let looks_local = value.len() >= 16
        && value.as_bytes().get(10) == Some(&b'T')
        && !value.ends_with('Z')
        && !value.get(16..).unwrap_or("").contains(['+', '-']);
    if looks_local && value.len() == 16 {
        format!("{value}:00Z")
    } else if looks_local {
        format!("{value}Z")
    } else {
        value.to_owned()
    }
}

/// The field an importer message is about (the others are shown above the form).
fn field_of(message: &str) -> Option<&'static str> {
    const FIELDS: [&str; 11] = [
        "shadow_homeserver",
        "homeserver",
        "expires_at",
        "subdomains",
        "requires_invite",
        "label",
        "email",
        "regex",
        "name",
        "force",
        "kind",
    ];
    if let Some(f) = FIELDS.iter().find(|f| message.contains(&format!("`{f}`"))) {
        return Some(f);
    }
    if message.contains("no homeserver") {
        return Some("homeserver");
    }
    if message.contains("public mail provider") && message.contains("pattern") {
        return Some("regex");
    }
    if message.contains("public mail provider") {
        return Some("name");
    }
    if message.contains("regex") || message.contains("the pattern") {
        return Some("regex");
    }
    if message.contains("unknown variant") {
        return Some("kind");
    }
    None
}

#[derive(Serialize)]
struct FormPage<'a> {
    mode: &'a str,
    action: String,
    cancel: String,
    request_domain: Option<&'a str>,
    values: &'a RuleFields,
    errors: Map<String, Value>,
    general_errors: Vec<String>,
}

fn form_page(
    c: &Console,
    status: StatusCode,
    mode: &str,
    id: Option<&str>,
    values: &RuleFields,
    errors: &[RuleError],
    general: Vec<String>,
) -> HttpResponse {
    let mut by_field = Map::new();
    let mut general_errors = general;
    for e in errors {
        match field_of(&e.message) {
            Some(field) if !by_field.contains_key(field) => {
                by_field.insert(field.to_owned(), Value::from(e.message.clone()));
            }
            _ => general_errors.push(e.to_string()),
        }
    }
    let (action, cancel) = match id {
        Some(id) => (
            format!("/_annuaire/console/rules/{id}/edit"),
            format!("/_annuaire/console/rules/{id}"),
        ),
        None => (
            "/_annuaire/console/rules/new".to_owned(),
            "/_annuaire/console/rules".to_owned(),
        ),
    };
    let request_domain = Some(values.request_domain.as_str()).filter(|d| !d.is_empty());
    let data = FormPage {
        mode,
        action,
        cancel,
        request_domain,
        values,
        errors: by_field,
        general_errors,
    };
    c.page_with_status(status, "rules", "console_rule_form.html", &data)
}

#[derive(Default, Deserialize)]
struct NewQuery {
    request_domain: Option<String>,
    label: Option<String>,
}

/// # GET /_annuaire/console/rules/new
///
/// With `request_domain` (a domain request being accepted), the form comes filled in.
pub(super) async fn new_form(c: Console) -> HttpResponse {
    if let Err(e) = c.session.require_editor() {
        return c.error(&e);
    }
    let q: NewQuery = query(&c.req);
    let mut values = RuleFields {
        kind: "domain".into(),
        ..RuleFields::default()
    };
    if let Some(domain) = present(&q.request_domain) {
        values.name = domain.clone();
        values.request_domain = domain;
        values.label = present(&q.label).unwrap_or_default();
    }
    form_page(&c, StatusCode::OK, "new", None, &values, &[], Vec::new())
}

fn form_errors(e: AdminError) -> Result<(Vec<RuleError>, Vec<String>), AdminError> {
    match e {
        AdminError::InvalidRules(errors) | AdminError::RuleExists(errors) => {
            Ok((errors, Vec::new()))
        }
        AdminError::InvalidInput(m) | AdminError::FileRule(m) => Ok((Vec::new(), vec![m])),
        other => Err(other),
    }
}

/// # POST /_annuaire/console/rules/new
///
/// Creates the rule; when it came from a domain request, the requests are then accepted and
/// the requesters told by mail.
pub(super) async fn create(
    EditorForm { console: c, form }: EditorForm<RuleFields>,
) -> HttpResponse {
    let actor = c.session.actor();
    match c.app.admin.create_rule(form.to_json(), &actor).await {
        Ok(rule) => {
            let domain = form.request_domain.trim();
            if domain.is_empty() {
                return done(
                    &format!("/_annuaire/console/rules/{}", rule.id),
                    "created",
                    &[],
                );
            }
            match c.app.requests.accept(domain, &actor).await {
                Ok(decided) => done(
                    &format!("/_annuaire/console/rules/{}", rule.id),
                    "accepted",
                    &[("told", &decided.requesters_told.to_string())],
                ),
                Err(e) => {
                    // The rule exists; the requests stay in the queue, saying why.
                    tracing::warn!(error = %e, "domain requests not accepted after the rule");
                    done(
                        &format!("/_annuaire/console/rules/{}", rule.id),
                        "created",
                        &[],
                    )
                }
            }
        }
        Err(e) => match form_errors(e) {
            Ok((errors, general)) => form_page(
                &c,
                StatusCode::BAD_REQUEST,
                "new",
                None,
                &form,
                &errors,
                general,
            ),
            Err(e) => c.error(&e),
        },
    }
}

/// # GET /_annuaire/console/rules/{id}/edit
pub(super) async fn edit_form(c: Console, id: web::Path<String>) -> HttpResponse {
    if let Err(e) = c.session.require_editor() {
        return c.error(&e);
    }
    match c.app.admin.rule(&id).await {
        Ok(stored) if stored.rule.source.is_file() => {
            super::super::pages::see_other(&format!("/_annuaire/console/rules/{id}"))
        }
        Ok(stored) => {
            let values = RuleFields::of(&stored.rule);
            form_page(
                &c,
                StatusCode::OK,
                "edit",
                Some(&id),
                &values,
                &[],
                Vec::new(),
            )
        }
        Err(e) => c.error(&e),
    }
}

/// # POST /_annuaire/console/rules/{id}/edit
pub(super) async fn update(
    EditorForm { console: c, form }: EditorForm<RuleFields>,
    id: web::Path<String>,
) -> HttpResponse {
    match c
        .app
        .admin
        .update_rule(&id, form.to_json(), &c.session.actor())
        .await
    {
        Ok(rule) => done(
            &format!("/_annuaire/console/rules/{}", rule.id),
            "updated",
            &[],
        ),
        Err(e) => match form_errors(e) {
            Ok((errors, general)) => form_page(
                &c,
                StatusCode::BAD_REQUEST,
                "edit",
                Some(&id),
                &form,
                &errors,
                general,
            ),
            Err(e) => c.error(&e),
        },
    }
}

#[derive(Deserialize)]
pub(super) struct NoFields {}

/// # POST /_annuaire/console/rules/{id}/delete
pub(super) async fn delete(
    EditorForm { console: c, .. }: EditorForm<NoFields>,
    id: web::Path<String>,
) -> HttpResponse {
    match c.app.admin.delete_rule(&id, &c.session.actor()).await {
        Ok(_) => done("/_annuaire/console/rules", "deleted", &[]),
        Err(e) => c.error(&e),
    }
}

/// # POST /_annuaire/console/rules/{id}/convert
pub(super) async fn convert(
    EditorForm { console: c, .. }: EditorForm<NoFields>,
    id: web::Path<String>,
) -> HttpResponse {
    match c.app.admin.convert_rule(&id, &c.session.actor()).await {
        Ok(converted) => done(
            &format!("/_annuaire/console/rules/{id}"),
            "converted",
            &[("was", &converted.was)],
        ),
        Err(e) => c.error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn importer_messages_find_their_field() {
        assert_eq!(
            field_of("`homeserver`: \"x y\" is not a valid server name"),
            Some("homeserver")
        );
        assert_eq!(
            field_of("the domain rule allows addresses but has no homeserver"),
            Some("homeserver")
        );
        assert_eq!(
            field_of("invalid domain in `name`: empty label"),
            Some("name")
        );
        assert_eq!(
            field_of("gmail.com is a public mail provider, not an agency domain"),
            Some("name")
        );
        assert_eq!(field_of("invalid regex: unclosed group"), Some("regex"));
        assert_eq!(
            field_of("invalid `expires_at`: not a date"),
            Some("expires_at")
        );
        assert_eq!(
            field_of("the same domain rule a.example is defined twice"),
            None
        );
    }

    #[test]
    fn datetime_local_values_are_utc() {
        assert_eq!(rfc3339_of_local("2027-01-15T08:00"), "2027-01-15T08:00:00Z");
        assert_eq!(
            rfc3339_of_local("2027-01-15T08:00:30"),
            "2027-01-15T08:00:30Z"
        );
        assert_eq!(
            rfc3339_of_local("2027-01-15T08:00:00+01:00"),
            "2027-01-15T08:00:00+01:00"
        );
        assert_eq!(rfc3339_of_local("tomorrow"), "tomorrow");
        assert_eq!(datetime_local(1_800_000_000_000), "2027-01-15T08:00");
    }

    #[test]
    fn only_filled_fields_go_to_the_importer() {
        let f = RuleFields {
            kind: "deny".into(),
            name: " x.example ".into(),
            homeserver: "hs".into(),
            requires_invite: true,
            ..RuleFields::default()
        };
        assert_eq!(
            f.to_json(),
            serde_json::json!({"kind": "deny", "name": "x.example"})
        );
    }
}
