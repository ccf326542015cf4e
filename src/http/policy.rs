//! The Tchap-compatible policy endpoints: which homeserver (shard) an address belongs to.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::extract::MatrixQuery;
use super::{AppData, caller_ip, resource};
use crate::allowlist::{ShardAnswer, shard_answer};
use crate::error::ApiError;
use crate::policy::{Address, Outcome, normalize_email};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/_matrix/identity/api/v1/info").route(web::get().to(info)))
        .service(
            resource("/_matrix/identity/api/v1/internal-info").route(web::get().to(internal_info)),
        );
}

/// The query of both endpoints.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThreepidQuery {
    /// `email`.
    medium: String,
    /// The email address.
    address: String,
}

/// Checks the medium and normalises the address (400 `M_INVALID_PARAM` / `M_INVALID_EMAIL`).
pub fn email_param(medium: &str, address: &str) -> Result<Address, ApiError> {
    if medium != "email" {
        return Err(ApiError::invalid_param(
            "Only the `email` medium is supported",
        ));
    }
    normalize_email(address).map_err(|e| {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "M_INVALID_EMAIL",
            format!("Invalid email address: {e}"),
        )
    })
}

fn is_internal(app: &crate::Annuaire, req: &HttpRequest) -> bool {
    caller_ip(req, app).is_some_and(|ip| {
        app.config
            .http
            .internal_networks
            .iter()
            .any(|n| n.contains(&ip))
    })
}

/// The reason shown to callers outside the internal networks: what happened, without the
/// rule's file and line.
fn public_reason(answer: &ShardAnswer) -> String {
    let d = &answer.decision;
    match (d.outcome, d.rule.is_some()) {
        (Outcome::Allowed, _) => "This address may register".into(),
        (Outcome::InviteRequired, _) => "This address may register once invited by a member".into(),
        (Outcome::Denied, true) => "This address is not allowed on the service".into(),
        (Outcome::Denied, false) => {
            "This address's administration is not on the service yet".into()
        }
    }
}

fn body(answer: &ShardAnswer, internal: bool) -> Map<String, Value> {
    let d = &answer.decision;
    let mut body = Map::new();
    if let Some(hs) = &answer.hs {
        body.insert("hs".into(), json!(hs));
    }
    if let Some(shadow) = &answer.shadow_hs {
        body.insert("shadow_hs".into(), json!(shadow));
    }
    body.insert(
        "requires_invite".into(),
        json!(d.outcome == Outcome::InviteRequired),
    );
    body.insert("decision".into(), json!(d.outcome.as_str()));
    if let Some(org) = &d.organisation {
        body.insert("organisation".into(), json!(org));
    }
    let reason = if internal {
        d.reason.clone()
    } else {
        public_reason(answer)
    };
    body.insert("reason".into(), json!(reason));
    body
}

fn count(endpoint: &'static str, outcome: Outcome) {
    metrics::counter!(
        "annuaire_policy_decisions_total",
        "endpoint" => endpoint,
        "outcome" => outcome.as_str()
    )
    .increment(1);
}

/// # GET /_matrix/identity/api/v1/info
///
/// For clients choosing a homeserver. Rate limited per client IP; outside callers see the
/// public (shadow) homeserver.
#[utoipa::path(get, path = "/_matrix/identity/api/v1/info", tag = "policy",
    summary = "Which homeserver an address belongs to (clients)",
    params(ThreepidQuery),
    responses(
        (status = 200, description = "`{hs?, shadow_hs?, requires_invite, decision: allowed|invite_required|denied, organisation?, reason}`; outside callers see the public (shadow) homeserver as `hs`", content_type = "application/json"),
        (status = 400, description = "M_INVALID_PARAM, M_INVALID_EMAIL, M_MISSING_PARAMS", content_type = "application/json"),
        (status = 429, description = "M_LIMIT_EXCEEDED", content_type = "application/json"),
    ))]
async fn info(
    req: HttpRequest,
    app: AppData,
    MatrixQuery(q): MatrixQuery<ThreepidQuery>,
) -> Result<HttpResponse, ApiError> {
    if let Some(ip) = caller_ip(&req, &app) {
        app.limits
            .info_per_ip
            .check(&ip)
            .map_err(ApiError::limit_exceeded)?;
    }
    let address = email_param(&q.medium, &q.address)?;
    let internal = is_internal(&app, &req);
    let now = app.clock.now_ms();
    let decision = app.allowlist.decide(&address, now);
    count("info", decision.outcome);
    let answer = shard_answer(decision, internal);
    let mut body = body(&answer, internal);
    // An address already bound lives where it was bound: `hs` is that server, and `new_hs`
    // the one the policy assigns now, when they differ.
    let bound = crate::identity::associations::bound(&app, "email", address.as_str(), now).await?;
    if let Some(bound_hs) = bound
        .as_ref()
        .and_then(|a| crate::matrix::server_name::user_id_server(&a.mxid))
    {
        let d = &answer.decision;
        let same = [&d.homeserver, &d.shadow_homeserver]
            .into_iter()
            .any(|hs| hs.as_deref() == Some(bound_hs));
        if !same {
            body.insert("hs".into(), json!(bound_hs));
            if let Some(policy_hs) = &answer.hs {
                body.insert("new_hs".into(), json!(policy_hs));
            }
        }
    }
    Ok(HttpResponse::Ok().json(Value::Object(body)))
}

/// # GET /_matrix/identity/api/v1/internal-info
///
/// For homeservers (the `threepid-checker` module): only from `http.internal_networks`.
#[utoipa::path(get, path = "/_matrix/identity/api/v1/internal-info", tag = "policy",
    summary = "Which homeserver an address belongs to (homeservers, internal networks only)",
    params(ThreepidQuery),
    responses(
        (status = 200, description = "`{hs?, shadow_hs?, requires_invite, invited, decision, organisation?, reason}`", content_type = "application/json"),
        (status = 400, description = "M_INVALID_PARAM, M_INVALID_EMAIL, M_MISSING_PARAMS", content_type = "application/json"),
        (status = 403, description = "M_FORBIDDEN: caller outside http.internal_networks", content_type = "application/json"),
    ))]
async fn internal_info(
    req: HttpRequest,
    app: AppData,
    MatrixQuery(q): MatrixQuery<ThreepidQuery>,
) -> Result<HttpResponse, ApiError> {
    if !is_internal(&app, &req) {
        return Err(ApiError::forbidden(
            "This endpoint is only for homeservers on the internal networks",
        ));
    }
    let address = email_param(&q.medium, &q.address)?;
    let now = app.clock.now_ms();
    let decision = app.allowlist.decide(&address, now);
    count("internal_info", decision.outcome);
    app.allowlist.record_attempt(&address, &decision, now);
    let answer = shard_answer(decision, true);
    let mut body = body(&answer, true);
    let invited = crate::identity::invites::is_invited(&app, address.as_str(), now).await?;
    body.insert("invited".into(), json!(invited));
    Ok(HttpResponse::Ok().json(Value::Object(body)))
}
