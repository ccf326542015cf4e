//! The OpenAPI 3 description of the admin API and the public endpoints, generated from the
//! handlers' `#[utoipa::path]` attributes and the request/response types, served at
//! `/_annuaire/openapi.json`.

use std::sync::OnceLock;

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, health, policy, resource};

/// The document: every path with a `#[utoipa::path]` attribute is listed here.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "annuaire",
        description = "Identity and directory service for sovereign, sharded Matrix deployments. \
            Errors are JSON objects `{errcode, error}`. The administration API \
            (/_annuaire/admin/v1) takes `Authorization: Bearer <token>` from POST /login or \
            `annuaire admin token`; the viewer role may use GET endpoints only.",
    ),
    paths(
        admin::login,
        admin::logout,
        admin::list_rules,
        admin::create_rule,
        admin::get_rule,
        admin::update_rule,
        admin::delete_rule,
        admin::convert_rule,
        admin::import_rules,
        admin::export_rules,
        admin::explain,
        admin::audit,
        admin::attempt_stats,
        health::versions,
        health::v2_status,
        health::live,
        health::ready,
        health::metrics,
        policy::info,
        policy::internal_info,
        openapi_json,
    ),
    components(schemas(admin::ErrorBody, admin::RuleView, admin::RuleInput)),
    modifiers(&BearerToken),
    tags(
        (name = "admin", description = "Administration: rules, explain, audit, statistics"),
        (name = "policy", description = "Tchap-compatible shard mapping for clients and homeservers"),
        (name = "operations", description = "Health, metrics, service discovery"),
    )
)]
pub struct ApiDoc;

/// Declares the `admin_token` bearer scheme the admin paths name.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document as JSON (built once).
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
}

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/_annuaire/openapi.json").route(web::get().to(openapi_json)));
}

/// # GET /_annuaire/openapi.json
#[utoipa::path(get, path = "/_annuaire/openapi.json", tag = "operations",
    summary = "This OpenAPI document",
    responses((status = 200, description = "OpenAPI 3", content_type = "application/json")))]
pub(super) async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_admin_path_and_parses_back() {
        let value: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert!(value["openapi"].as_str().unwrap().starts_with("3."));
        let paths = value["paths"].as_object().unwrap();
        for path in [
            "/_annuaire/admin/v1/login",
            "/_annuaire/admin/v1/logout",
            "/_annuaire/admin/v1/rules",
            "/_annuaire/admin/v1/rules/{id}",
            "/_annuaire/admin/v1/rules/{id}/convert",
            "/_annuaire/admin/v1/rules/import",
            "/_annuaire/admin/v1/rules/export",
            "/_annuaire/admin/v1/explain",
            "/_annuaire/admin/v1/audit",
            "/_annuaire/admin/v1/stats/attempts",
            "/_matrix/identity/api/v1/info",
            "/_matrix/identity/api/v1/internal-info",
            "/_matrix/identity/versions",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert!(paths["/_annuaire/admin/v1/rules/{id}"]["put"].is_object());
        assert!(paths["/_annuaire/admin/v1/rules/{id}"]["delete"].is_object());
        let schemes = &value["components"]["securitySchemes"]["admin_token"];
        assert_eq!(schemes["scheme"], "bearer");
        let _: utoipa::openapi::OpenApi = serde_json::from_str(document()).unwrap();
    }
}
