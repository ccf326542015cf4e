//! Cross-cutting HTTP behaviour: one log line and metrics per request, request ids, CORS.
//!
//! The log line names the route *pattern* (`/_matrix/identity/v2/pubkey/{keyId}`), never the
//! path or the query string, which can carry addresses and tokens.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{Error, HttpResponse};
use rand::Rng;
use tracing::Instrument;

/// The response header carrying the request id.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A short random request id.
pub fn new_request_id() -> String {
    let n: u64 = rand::thread_rng().r#gen();
    format!("{n:016x}")
}

/// Records one finished request: a log line and the Prometheus series.
pub fn record(method: &Method, route: &str, status: u16, started: Instant) {
    let elapsed = started.elapsed();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::error!(target: "annuaire::http", %method, route, status, latency_ms, "request");
    } else {
        tracing::info!(target: "annuaire::http", %method, route, status, latency_ms, "request");
    }
    let labels = [
        ("method", method.as_str().to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!("annuaire_http_requests_total", &labels).increment(1);
    metrics::histogram!(
        "annuaire_http_request_duration_seconds",
        "method" => method.as_str().to_string(),
        "route" => route.to_string()
    )
    .record(elapsed.as_secs_f64());
}

/// The span a request's work runs in (its id appears on every log line of the request).
pub fn request_span(request_id: &str) -> tracing::Span {
    tracing::info_span!("request", request_id = %request_id)
}

/// What is known of a request when it arrives.
pub struct RequestContext {
    started: Instant,
    method: Method,
    request_id: String,
    /// The span the request's work runs in.
    pub span: tracing::Span,
}

impl RequestContext {
    /// Starts timing a request and gives it an id.
    pub fn start(req: &ServiceRequest) -> Self {
        let request_id = new_request_id();
        Self {
            started: Instant::now(),
            method: req.method().clone(),
            span: request_span(&request_id),
            request_id,
        }
    }
}

/// Awaits the rest of the chain inside the request span, then logs, measures and tags the
/// response with its request id.
pub fn finish<F, B>(
    ctx: RequestContext,
    fut: F,
) -> impl std::future::Future<Output = Result<ServiceResponse<BoxBody>, Error>>
where
    F: std::future::Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody + 'static,
{
    let span = ctx.span.clone();
    async move {
        match fut.await {
            Ok(res) => {
                let route = res
                    .request()
                    .match_pattern()
                    .unwrap_or_else(|| "(unmatched)".to_string());
                let mut res = res.map_into_boxed_body();
                if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
                    res.headers_mut().insert(REQUEST_ID, v);
                }
                record(&ctx.method, &route, res.status().as_u16(), ctx.started);
                Ok(res)
            }
            Err(e) => {
                let status = e.as_response_error().status_code().as_u16();
                record(&ctx.method, "(error)", status, ctx.started);
                Err(e)
            }
        }
    }
    .instrument(span)
}

/// Whether CORS applies to this path: the Matrix APIs (`/_matrix/…`), as the specs ask, and
/// the users' account API (`/_annuaire/account/…`), which web clients call the same way.
pub fn cors_applies(path: &str) -> bool {
    path.starts_with("/_matrix/") || super::is_account_path(path)
}

/// Adds the CORS headers the Matrix specifications ask for.
pub fn add_cors_headers(headers: &mut actix_web::http::header::HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
}

/// The answer to a CORS preflight (`OPTIONS`) on a Matrix path.
pub fn preflight_response() -> HttpResponse {
    let mut response = HttpResponse::Ok().json(serde_json::json!({}));
    add_cors_headers(response.headers_mut());
    response
}
