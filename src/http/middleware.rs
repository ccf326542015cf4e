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

/// A short random request id: 16 lowercase hex digits.
pub fn new_request_id() -> String {
    let id = RequestId::new();
    id.as_str().to_owned()
}

/// A request id, kept on the stack (one per request: no allocation).
#[derive(Clone, Copy)]
pub struct RequestId([u8; 16]);

impl RequestId {
    fn new() -> Self {
        let n: u64 = rand::thread_rng().r#gen();
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            let nibble = ((n >> (60 - 4 * i)) & 0xf) as u8;
            *byte = if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            };
        }
        RequestId(out)
    }

    fn as_str(&self) -> &str {
        // Hex digits only.
        std::str::from_utf8(&self.0).unwrap_or("0000000000000000")
    }
}

/// The Prometheus series of one (route, method, status), looked up once per worker thread.
#[derive(Clone)]
struct Series {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// Routes, methods and statuses are few; strangers' methods are not: past this many series a
/// thread stops remembering them (they are still recorded).
const MAX_CACHED_SERIES: usize = 2048;

/// Series by (method, status), then route.
type SeriesMap =
    std::collections::HashMap<(Method, u16), std::collections::HashMap<Box<str>, Series>>;

thread_local! {
    static SERIES: std::cell::RefCell<SeriesMap> =
        std::cell::RefCell::new(std::collections::HashMap::new());
    static SERIES_COUNT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn series(method: &Method, route: &str, status: u16) -> Series {
    let cached = SERIES.with(|map| {
        map.borrow()
            .get(&(method.clone(), status))
            .and_then(|routes| routes.get(route).cloned())
    });
    if let Some(series) = cached {
        return series;
    }
    let labels = [
        ("method", method.as_str().to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    let series = Series {
        requests: metrics::counter!("annuaire_http_requests_total", &labels),
        duration: metrics::histogram!(
            "annuaire_http_request_duration_seconds",
            "method" => method.as_str().to_string(),
            "route" => route.to_string()
        ),
    };
    if SERIES_COUNT.with(std::cell::Cell::get) < MAX_CACHED_SERIES {
        SERIES_COUNT.with(|n| n.set(n.get() + 1));
        SERIES.with(|map| {
            map.borrow_mut()
                .entry((method.clone(), status))
                .or_default()
                .insert(route.into(), series.clone());
        });
    }
    series
}

/// Records one finished request: a log line and the Prometheus series.
pub fn record(method: &Method, route: &str, status: u16, started: Instant) {
    let elapsed = started.elapsed();
    if status >= 500 {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        tracing::error!(target: "annuaire::http", %method, route, status, latency_ms, "request");
    } else if tracing::enabled!(target: "annuaire::http", tracing::Level::INFO) {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        tracing::info!(target: "annuaire::http", %method, route, status, latency_ms, "request");
    }
    let series = series(method, route, status);
    series.requests.increment(1);
    series.duration.record(elapsed.as_secs_f64());
}

/// The span a request's work runs in (its id appears on every log line of the request).
pub fn request_span(request_id: &str) -> tracing::Span {
    tracing::info_span!("request", request_id = %request_id)
}

/// What is known of a request when it arrives.
pub struct RequestContext {
    started: Instant,
    method: Method,
    request_id: RequestId,
    /// The span the request's work runs in.
    pub span: tracing::Span,
}

impl RequestContext {
    /// Starts timing a request and gives it an id.
    pub fn start(req: &ServiceRequest) -> Self {
        let request_id = RequestId::new();
        Self {
            started: Instant::now(),
            method: req.method().clone(),
            span: request_span(request_id.as_str()),
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
                let status = res.status().as_u16();
                // Every route is a resource named by its pattern (`http::resource`).
                record(
                    &ctx.method,
                    res.request().match_name().unwrap_or("(unmatched)"),
                    status,
                    ctx.started,
                );
                let mut res = res.map_into_boxed_body();
                if let Ok(v) = HeaderValue::from_bytes(&ctx.request_id.0) {
                    res.headers_mut().insert(REQUEST_ID, v);
                }
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
