//! Request extractors that answer malformed input with Matrix errors: JSON bodies with a size
//! limit, query strings, and the caller's IP address behind trusted proxies.

use std::net::IpAddr;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The request body size limit (`http.max_body`), as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON request body. Any content type is accepted (as Synapse does); the body must be a JSON
/// object. Errors: empty or unparsable → `M_NOT_JSON`; a missing field → `M_MISSING_PARAMS`;
/// a wrong type → `M_BAD_JSON`; over the limit → 413 `M_TOO_LARGE`.
#[derive(Debug)]
pub struct MatrixJson<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for MatrixJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = RawBody::from_request(req, payload);
        Box::pin(async move {
            let RawBody(bytes) = body.await?;
            parse_json_object(&bytes).map(MatrixJson)
        })
    }
}

/// A JSON body that may be absent (`POST /v2/account/logout` takes an optional body).
#[derive(Debug)]
pub struct OptionalMatrixJson<T>(pub Option<T>);

impl<T: DeserializeOwned + 'static> FromRequest for OptionalMatrixJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = RawBody::from_request(req, payload);
        Box::pin(async move {
            let RawBody(bytes) = body.await?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalMatrixJson(None));
            }
            parse_json_object(&bytes).map(|v| OptionalMatrixJson(Some(v)))
        })
    }
}

/// Parses a JSON object body into `T`, classifying errors as Matrix does.
pub fn parse_json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // The usual case in one pass, straight into `T` (a 1,000-hash lookup is 45 kB). Anything
    // it refuses, and anything but an object (serde would take an array for a struct), goes
    // the long way below, which alone decides what the error says.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && let Ok(value) = serde_json::from_slice::<T>(bytes)
    {
        return Ok(value);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::not_json(
            "The request body is empty; a JSON object is expected",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::not_json(format!("Content not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_json("The request body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        if message.starts_with("missing field") {
            ApiError::missing_params(format!("Missing parameter: {}", field_name(&message)))
        } else {
            ApiError::bad_json(format!("Invalid JSON: {message}"))
        }
    })
}

/// `missing field `sid`` → `sid`.
fn field_name(message: &str) -> &str {
    message.split('`').nth(1).unwrap_or(message)
}

/// The raw request body, read up to [`BodyLimit`].
#[derive(Debug)]
pub struct RawBody(pub web::Bytes);

impl FromRequest for RawBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req.app_data::<BodyLimit>().map_or(1024 * 1024, |l| l.0);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if declared.is_some_and(|n| n > limit) {
                return Err(too_large(limit));
            }
            let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| match e {
                    actix_web::error::PayloadError::Overflow => too_large(limit),
                    other => {
                        ApiError::not_json(format!("Could not read the request body: {other}"))
                    }
                })?;
                if body.len() + chunk.len() > limit {
                    return Err(too_large(limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(RawBody(body.freeze()))
        })
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::too_large(format!(
        "The request body is larger than the limit of {}",
        crate::config::ByteSize(limit)
    ))
}

/// A query string. A missing parameter → `M_MISSING_PARAMS`, a malformed one → `M_INVALID_PARAM`.
#[derive(Debug)]
pub struct MatrixQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequest for MatrixQuery<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(parse_query(req.query_string()).map(MatrixQuery))
    }
}

/// Parses a query string into `T` with Matrix errors.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    web::Query::<T>::from_query(query)
        .map(web::Query::into_inner)
        .map_err(|e| {
            let message = match &e {
                actix_web::error::QueryPayloadError::Deserialize(inner) => inner.to_string(),
                other => other.to_string(),
            };
            if message.starts_with("missing field") {
                ApiError::missing_params(format!("Missing parameter: {}", field_name(&message)))
            } else {
                ApiError::invalid_param(format!("Invalid query parameter: {message}"))
            }
        })
}

/// What request authentication by a homeserver signature (X-Matrix) needs: the
/// `Authorization` header as sent, the method and the request target as received (path and
/// query). Never fails: the domain decides what an absent or malformed header means.
#[derive(Debug, Clone)]
pub struct XMatrix {
    /// The `Authorization` header, whatever its scheme.
    pub authorization: Option<String>,
    /// The HTTP method.
    pub method: String,
    /// The request target as received.
    pub uri: String,
}

impl XMatrix {
    /// The header, when its scheme is `X-Matrix`.
    pub fn x_matrix_header(&self) -> Option<&str> {
        self.authorization.as_deref().map(str::trim).filter(|v| {
            v.get(..9)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("X-Matrix "))
        })
    }
}

impl FromRequest for XMatrix {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(Ok(XMatrix {
            authorization: req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            method: req.method().as_str().to_owned(),
            uri: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned()),
        }))
    }
}

/// The caller's address: the TCP peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address in `X-Forwarded-For` (read from the right, skipping trusted proxies).
pub fn client_ip(req: &HttpRequest, trusted_proxies: &[IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| canonical_ip(a.ip()))?;
    if !trusted_proxies.iter().any(|n| n.contains(&peer)) {
        return Some(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in req.headers().get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return Some(peer);
        };
        for part in text.split(',') {
            match parse_forwarded_ip(part.trim()) {
                Some(ip) => hops.push(ip),
                // A malformed chain cannot be trusted past this proxy.
                None => return Some(peer),
            }
        }
    }
    for ip in hops.iter().rev() {
        if !trusted_proxies.iter().any(|n| n.contains(ip)) {
            return Some(*ip);
        }
    }
    // Every hop is a trusted proxy: the leftmost is the origin.
    Some(hops.first().copied().unwrap_or(peer))
}

fn parse_forwarded_ip(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    // "1.2.3.4:5678" or "[::1]:5678"
    text.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| canonical_ip(a.ip()))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are their IPv4 address.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        sid: String,
        n: u32,
    }

    #[test]
    fn json_errors_are_classified() {
        assert_eq!(
            parse_json_object::<Body>(b"").unwrap_err().errcode,
            "M_NOT_JSON"
        );
        assert_eq!(
            parse_json_object::<Body>(b"{").unwrap_err().errcode,
            "M_NOT_JSON"
        );
        assert_eq!(
            parse_json_object::<Body>(b"[1]").unwrap_err().errcode,
            "M_BAD_JSON"
        );
        let e = parse_json_object::<Body>(br#"{"n": 1}"#).unwrap_err();
        assert_eq!(e.errcode, "M_MISSING_PARAMS");
        assert!(e.message.contains("sid"));
        let e = parse_json_object::<Body>(br#"{"sid": 1, "n": 1}"#).unwrap_err();
        assert_eq!(e.errcode, "M_BAD_JSON");
        assert!(parse_json_object::<Body>(br#"{"sid": "a", "n": 1, "extra": true}"#).is_ok());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let direct = TestRequest::default()
            .peer_addr("192.0.2.1:1234".parse().unwrap())
            .insert_header(("X-Forwarded-For", "127.0.0.1"))
            .to_http_request();
        assert_eq!(
            client_ip(&direct, &trusted),
            Some("192.0.2.1".parse().unwrap())
        );
        let proxied = TestRequest::default()
            .peer_addr("10.0.0.2:1234".parse().unwrap())
            .insert_header(("X-Forwarded-For", "198.51.100.7, 10.0.0.9"))
            .to_http_request();
        assert_eq!(
            client_ip(&proxied, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        let spoofed = TestRequest::default()
            .peer_addr("10.0.0.2:1234".parse().unwrap())
            .insert_header(("X-Forwarded-For", "127.0.0.1, 198.51.100.7"))
            .to_http_request();
        assert_eq!(
            client_ip(&spoofed, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        let garbage = TestRequest::default()
            .peer_addr("10.0.0.2:1234".parse().unwrap())
            .insert_header(("X-Forwarded-For", "not-an-ip"))
            .to_http_request();
        assert_eq!(
            client_ip(&garbage, &trusted),
            Some("10.0.0.2".parse().unwrap())
        );
    }
}
