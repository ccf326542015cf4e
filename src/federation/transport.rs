//! The HTTP transport: two reqwest clients (one behind the SSRF resolver), TLS with the ring
//! provider and the platform roots, capped bodies, and errors that never carry a URL.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use reqwest::{Client, Method, RequestBuilder, StatusCode, Url};
use serde_json::Value;

use super::ssrf::{BlockedTarget, GuardedResolver, is_permitted};
use super::{FederationClient, FederationError, FederationSettings, Target};

impl FederationClient {
    /// Refuses an untrusted URL whose host is a forbidden IP literal (names are checked by
    /// the resolver at connect time).
    pub(super) fn check_literal(&self, url: &Url) -> Result<(), FederationError> {
        let host = url
            .host_str()
            .ok_or_else(|| FederationError::InvalidUrl("no host".to_owned()))?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = IpAddr::from_str(literal)
            && !is_permitted(ip, &self.inner.allowed_networks)
        {
            return Err(FederationError::Forbidden {
                target: host.to_owned(),
                reason: "not a public address and not in federation.allowed_networks".to_owned(),
            });
        }
        Ok(())
    }

    /// Sends one request and reads the body with the size cap.
    pub(super) async fn fetch(
        &self,
        server: &str,
        target: &Target,
        method: Method,
        url: Url,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), FederationError> {
        let client = if target.trusted {
            &self.inner.trusted
        } else {
            self.check_literal(&url)?;
            &self.inner.guarded
        };
        let response = build(client.request(method, url))
            .send()
            .await
            .map_err(|e| send_error(server, e))?;
        let status = response.status();
        tracing::debug!(server, status = status.as_u16(), "homeserver answered");
        let body = read_capped(server, response, self.inner.max_response_bytes).await?;
        Ok((status, body))
    }
}

pub(super) fn status_error(server: &str, status: StatusCode) -> FederationError {
    FederationError::Status {
        server: server.to_owned(),
        status: status.as_u16(),
    }
}

pub(super) fn json_string_field(
    server: &str,
    body: &[u8],
    field: &str,
) -> Result<String, FederationError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| FederationError::InvalidResponse {
            server: server.to_owned(),
            reason: format!("not JSON: {e}"),
        })?;
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| FederationError::InvalidResponse {
            server: server.to_owned(),
            reason: format!("no string `{field}`"),
        })
}

pub(super) async fn read_capped(
    server: &str,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, FederationError> {
    let too_large = || FederationError::TooLarge {
        server: server.to_owned(),
        limit,
    };
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| send_error(server, e))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Maps a transport error, recognising the SSRF guard's refusal in the source chain.
pub(super) fn send_error(server: &str, error: reqwest::Error) -> FederationError {
    // The URL may carry a token (`?access_token=`): never keep it.
    let error = error.without_url();
    let mut source: Option<&(dyn StdError + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(blocked) = e.downcast_ref::<BlockedTarget>() {
            return FederationError::Forbidden {
                target: blocked.host.clone(),
                reason: blocked.to_string(),
            };
        }
        source = e.source();
    }
    let reason = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error_chain(&error)
    };
    tracing::debug!(server, %reason, "homeserver unreachable");
    FederationError::Unreachable {
        server: server.to_owned(),
        reason,
    }
}

pub(super) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

pub(super) fn http_client(
    settings: &FederationSettings,
    tls: rustls::ClientConfig,
    resolver: Option<Arc<GuardedResolver>>,
) -> Result<Client, FederationError> {
    let mut builder = Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(settings.user_agent.clone());
    if let Some(resolver) = resolver {
        builder = builder.dns_resolver(resolver);
    }
    builder
        .build()
        .map_err(|e| FederationError::Config(error_chain(&e)))
}

/// TLS with the ring provider passed explicitly (so building a client never depends on a
/// process-wide default), the platform roots and the optional extra CA file.
pub(super) fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, FederationError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra_roots = match ca_file {
        Some(path) => load_ca_file(path)?,
        None => Vec::new(),
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, Arc::clone(&provider))
            .map_err(|e| {
                FederationError::Config(format!(
                    "no usable TLS trust anchors ({e}); install the system CA certificates or set federation.ca_file"
                ))
            })?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FederationError::Config(format!("TLS: {e}")))?
        .dangerous() // the rustls name for "bring your own verifier"; this one verifies fully
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // reqwest is built without HTTP/2 here.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

pub(super) fn load_ca_file(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, FederationError> {
    use rustls_pki_types::pem::PemObject as _;
    let bad = |e: String| FederationError::Config(format!("ca_file {}: {e}", path.display()));
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".to_owned()));
    }
    Ok(certs)
}
