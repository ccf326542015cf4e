//! "Explain an address": the decision for it, the rule that won and the rules that lost.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Console, present, query};
use crate::admin::AdminError;

#[derive(Default, Deserialize)]
struct ExplainQuery {
    address: Option<String>,
}

#[derive(Serialize)]
struct DecisionView {
    outcome: &'static str,
    homeserver: Option<String>,
    shadow_homeserver: Option<String>,
    organisation: Option<String>,
    rule: Option<String>,
    rule_id: Option<String>,
    reason: String,
}

#[derive(Serialize)]
struct ConsideredRow {
    id: String,
    kind: &'static str,
    value: String,
    reference: String,
    matched: bool,
    why: String,
    winner: bool,
}

#[derive(Serialize)]
struct ExplainResult {
    address: String,
    decision: DecisionView,
    considered: Vec<ConsideredRow>,
}

#[derive(Serialize)]
struct ExplainPage {
    address: String,
    error: Option<String>,
    result: Option<ExplainResult>,
}

/// # GET /_annuaire/console/explain
pub(super) async fn explain(c: Console) -> HttpResponse {
    let q: ExplainQuery = query(&c.req);
    let Some(address) = present(&q.address) else {
        let data = ExplainPage {
            address: String::new(),
            error: None,
            result: None,
        };
        return c.page("explain", "console_explain.html", &data);
    };
    let (status, error, result) = match c.app.admin.explain(&address).await {
        Ok((normalised, explanation)) => {
            let d = explanation.decision;
            let winner = d.rule_id.clone();
            let result = ExplainResult {
                address: normalised.as_str().to_owned(),
                considered: explanation
                    .considered
                    .iter()
                    .map(|c| ConsideredRow {
                        id: c.rule.id.clone(),
                        kind: c.rule.kind.as_str(),
                        value: c.rule.target.value().to_owned(),
                        reference: c.rule.reference(),
                        matched: c.matched,
                        why: c.why.clone(),
                        winner: winner.as_deref() == Some(c.rule.id.as_str()),
                    })
                    .collect(),
                decision: DecisionView {
                    outcome: d.outcome.as_str(),
                    homeserver: d.homeserver,
                    shadow_homeserver: d.shadow_homeserver,
                    organisation: d.organisation,
                    rule: d.rule,
                    rule_id: d.rule_id,
                    reason: d.reason,
                },
            };
            (StatusCode::OK, None, Some(result))
        }
        Err(e @ (AdminError::InvalidAddress(_) | AdminError::InvalidInput(_))) => {
            (StatusCode::BAD_REQUEST, Some(e.to_string()), None)
        }
        Err(e) => return c.error(&e),
    };
    let data = ExplainPage {
        address,
        error,
        result,
    };
    c.page_with_status(status, "explain", "console_explain.html", &data)
}
