//! The OpenAPI 3 description of the admin API and the public endpoints, generated from the
//! handlers' `#[utoipa::path]` attributes and the request/response types, served at
//! `/_annuaire/openapi.json`.

use std::sync::OnceLock;

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::{
    account, admin, directory, health, homeserver, identity, policy, resource, validation,
};

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
        admin::rules::list_rules,
        admin::rules::create_rule,
        admin::rules::get_rule,
        admin::rules::update_rule,
        admin::rules::delete_rule,
        admin::rules::convert_rule,
        admin::rules::import_rules,
        admin::rules::export_rules,
        admin::rules::explain,
        admin::stats::audit,
        admin::stats::attempt_stats,
        admin::stats::directory_stats,
        admin::stats::outbox_stats,
        admin::moderation::list_directory,
        admin::moderation::get_directory_entry,
        admin::moderation::hide_directory_entry,
        admin::moderation::unhide_directory_entry,
        admin::moderation::rename_directory_entry,
        admin::moderation::remove_directory_entry,
        admin::moderation::erase_threepid,
        account::account_data,
        account::set_directory,
        admin::requests::list_domain_requests,
        admin::requests::domain_requests,
        admin::requests::accept_domain_requests,
        admin::requests::decline_domain_requests,
        identity::register,
        identity::account,
        identity::logout,
        identity::get_terms,
        identity::accept_terms,
        identity::pubkey,
        identity::pubkey_isvalid,
        identity::ephemeral_isvalid,
        identity::hash_details,
        identity::lookup,
        identity::bind,
        identity::unbind,
        identity::store_invite,
        identity::sign_ed25519,
        identity::sign_ed25519_v1,
        validation::request_token,
        validation::submit_token,
        validation::submit_token_page,
        validation::get_validated_3pid,
        directory::client_search,
        directory::client_search_r0,
        directory::homeserver_search,
        directory::replicate_profiles,
        homeserver::bind,
        homeserver::unbind,
        homeserver::display_name,
        homeserver::profile,
        homeserver::deactivated,
        directory::federated_search,
        directory::federated_search_v3,
        directory::federated_search_fr_tchap,
        health::versions,
        health::v2_status,
        health::live,
        health::ready,
        health::metrics,
        policy::info,
        policy::internal_info,
        openapi_json,
    ),
    components(schemas(ErrorBody, admin::RuleView, admin::RuleInput)),
    modifiers(&BearerToken),
    tags(
        (name = "admin", description = "Administration: rules, explain, directory moderation, erasure, audit, statistics"),
        (name = "account", description = "The users' own data and directory listing (public listener)"),
        (name = "identity", description = "Matrix Identity Service API v2: accounts, terms, keys, lookups, binds, invitations"),
        (name = "validation", description = "Matrix Identity Service API v2: email validation"),
        (name = "directory", description = "The cross-shard user directory"),
        (name = "homeserver", description = "The homeserver API: homeservers that validate addresses themselves report binds, unbinds, profiles and deactivations (callers from http.internal_networks, with a token from `annuaire homeserver add`)"),
        (name = "policy", description = "Tchap-compatible shard mapping for clients and homeservers"),
        (name = "operations", description = "Health, metrics, service discovery"),
    )
)]
pub struct ApiDoc;

/// Declares the security schemes the paths name: `admin_token` (the admin API's JWT),
/// `identity_token` (an identity-service access token), `client_token` (a homeserver's access
/// token, checked with whoami), `homeserver_token` (a homeserver API token) and `x_matrix` (a
/// homeserver's request signature).
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
        components.add_security_scheme(
            "identity_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("From POST /_matrix/identity/v2/account/register"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "client_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The user's access token on their homeserver (checked with whoami there)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "homeserver_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A homeserver's token, from `annuaire homeserver add SERVER_NAME`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "x_matrix",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`X-Matrix origin=…,destination=…,key=…,sig=…`: a homeserver's request signature",
            ))),
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
            "/_annuaire/admin/v1/stats/directory",
            "/_annuaire/admin/v1/stats/outbox",
            "/_annuaire/admin/v1/directory",
            "/_annuaire/admin/v1/directory/{user_id}",
            "/_annuaire/admin/v1/directory/{user_id}/hide",
            "/_annuaire/admin/v1/directory/{user_id}/unhide",
            "/_annuaire/admin/v1/directory/{user_id}/name",
            "/_annuaire/admin/v1/threepids/erase",
            "/_matrix/identity/api/v1/info",
            "/_matrix/identity/api/v1/internal-info",
            "/_matrix/identity/versions",
            "/_annuaire/homeserver/v1/bind",
            "/_annuaire/homeserver/v1/unbind",
            "/_annuaire/homeserver/v1/display_name",
            "/_annuaire/homeserver/v1/profile",
            "/_annuaire/homeserver/v1/deactivated",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert!(paths["/_annuaire/admin/v1/rules/{id}"]["put"].is_object());
        assert!(paths["/_annuaire/admin/v1/rules/{id}"]["delete"].is_object());
        let schemes = &value["components"]["securitySchemes"]["admin_token"];
        assert_eq!(schemes["scheme"], "bearer");
        let _: utoipa::openapi::OpenApi = serde_json::from_str(document()).unwrap();
        // Every schema a path or schema refers to is in the document.
        fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        match (k.as_str(), v.as_str()) {
                            ("$ref", Some(r)) => out.push(r),
                            _ => refs(v, out),
                        }
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(&value, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(
                value["components"]["schemas"][name].is_object(),
                "{r} is not defined"
            );
        }
    }

    const METHODS: [&str; 4] = ["get", "post", "put", "delete"];

    /// A request path for a route pattern (`{id}` → `x`).
    fn concrete(pattern: &str) -> String {
        let mut out = String::new();
        let mut in_param = false;
        for c in pattern.chars() {
            match c {
                '{' => {
                    in_param = true;
                    out.push('x');
                }
                '}' => in_param = false,
                c if !in_param => out.push(c),
                _ => {}
            }
        }
        out
    }

    /// Every route that `http::routes` registers is in the document with each method it
    /// answers, and the document lists nothing else: a new endpoint without `#[utoipa::path]`
    /// (and an entry in `ApiDoc`) fails here. The methods are found by asking the router: a
    /// method a resource does not route answers 405 `M_UNRECOGNIZED`.
    #[actix_web::test]
    async fn every_registered_route_is_documented_and_nothing_else() {
        use actix_web::test::{TestRequest, call_service, init_service};
        let registered = super::super::registered_paths();
        assert!(registered.len() > 40, "{registered:?}");
        let app = init_service(actix_web::App::new().configure(super::super::routes)).await;
        let mut routed = std::collections::BTreeSet::new();
        for path in &registered {
            for method in METHODS {
                let req = TestRequest::default()
                    .method(method.to_uppercase().parse().unwrap())
                    .uri(&concrete(path))
                    .to_request();
                // No app data: handlers that need it fail (500), which still proves the route.
                let status = call_service(&app, req).await.status();
                assert_ne!(status, 404, "{method} {path}");
                if status != 405 {
                    routed.insert((path.clone(), method));
                }
            }
        }
        let value: serde_json::Value = serde_json::from_str(document()).unwrap();
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in value["paths"].as_object().unwrap() {
            for method in METHODS {
                if item.get(method).is_some() {
                    documented.insert((path.clone(), method));
                }
            }
        }
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "routes without #[utoipa::path]: {undocumented:?}"
        );
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            unrouted.is_empty(),
            "documented but not routed: {unrouted:?}"
        );
        // Every route has at least one method.
        for path in &registered {
            assert!(
                routed.iter().any(|(p, _)| p == path),
                "{path} answers nothing"
            );
        }
    }
}
