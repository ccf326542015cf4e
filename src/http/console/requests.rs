//! Agents' domain requests: the queue grouped by domain, one domain's requests, decline with a
//! message (accepting goes through the rule form, see `rules::create`).

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Console, EditorForm, done, present, query};
use crate::domain_requests::{DomainRequestError, DomainRequestView, QueuedDomain};

#[derive(Default, Deserialize)]
struct QueueQuery {
    done: Option<String>,
    domain: Option<String>,
    told: Option<usize>,
}

#[derive(Serialize)]
struct QueuePage {
    done: Option<&'static str>,
    done_domain: Option<String>,
    told: Option<usize>,
    queue: Vec<QueuedDomain>,
}

fn failed(c: &Console, e: &DomainRequestError) -> HttpResponse {
    match e {
        DomainRequestError::NotFound(m) => {
            c.error_page(StatusCode::NOT_FOUND, "not_found", Some(m.clone()))
        }
        DomainRequestError::InvalidAddress(_)
        | DomainRequestError::InvalidField { .. }
        | DomainRequestError::DomainNotAllowed(_) => {
            c.error_page(StatusCode::BAD_REQUEST, "error", Some(e.to_string()))
        }
        other => {
            tracing::error!(error = %other, "domain requests page failed");
            c.error_page(StatusCode::INTERNAL_SERVER_ERROR, "error", None)
        }
    }
}

/// # GET /_annuaire/console/requests
pub(super) async fn queue(c: Console) -> HttpResponse {
    let q: QueueQuery = query(&c.req);
    match c.app.requests.queue().await {
        Ok(queue) => {
            let data = QueuePage {
                done: match q.done.as_deref() {
                    Some("declined") => Some("declined"),
                    Some("accepted") => Some("accepted"),
                    _ => None,
                },
                done_domain: q.domain,
                told: q.told,
                queue,
            };
            c.page("requests", "console_requests.html", &data)
        }
        Err(e) => failed(&c, &e),
    }
}

#[derive(Serialize)]
struct DomainPage {
    domain: String,
    error: Option<String>,
    decline_message: String,
    suggested_label: Option<String>,
    requests: Vec<DomainRequestView>,
}

/// # GET /_annuaire/console/requests/domain?domain=…
pub(super) async fn domain(c: Console) -> HttpResponse {
    let q: QueueQuery = query(&c.req);
    let Some(domain) = present(&q.domain) else {
        return c.error_page(StatusCode::NOT_FOUND, "not_found", None);
    };
    match c.app.requests.requests(&domain, Some("pending")).await {
        Ok(requests) => {
            // The administration most requesters named.
            let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
            for r in &requests {
                *counts.entry(r.organisation.as_str()).or_default() += 1;
            }
            let suggested_label = counts
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(o, _)| (*o).to_owned());
            let data = DomainPage {
                domain,
                error: None,
                decline_message: String::new(),
                suggested_label,
                requests,
            };
            c.page("requests", "console_request_domain.html", &data)
        }
        Err(e) => failed(&c, &e),
    }
}

#[derive(Deserialize)]
pub(super) struct DeclineFields {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    message: String,
}

/// # POST /_annuaire/console/requests/domain
///
/// Declines the domain's pending requests; each requester gets the message by mail.
pub(super) async fn decline(
    EditorForm { console: c, form }: EditorForm<DeclineFields>,
) -> HttpResponse {
    let message = Some(form.message.as_str()).filter(|m| !m.trim().is_empty());
    match c
        .app
        .requests
        .decline(&form.domain, message, &c.session.actor())
        .await
    {
        Ok(decided) => done(
            "/_annuaire/console/requests",
            "declined",
            &[
                ("domain", &decided.domain),
                ("told", &decided.requesters_told.to_string()),
            ],
        ),
        Err(e) => failed(&c, &e),
    }
}
