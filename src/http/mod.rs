//! HTTP: actix routes, one file per API family. Handlers are thin: extract, call one domain
//! function, map the result. Unknown paths answer 404 `M_UNRECOGNIZED`, known paths with the
//! wrong method 405 `M_UNRECOGNIZED`.

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

pub mod account;
pub mod admin;
pub mod auth;
pub mod console;
pub mod directory;
pub mod error;
pub mod extract;
pub mod health;
pub mod homeserver;
pub mod identity;
pub mod middleware;
pub mod openapi;
pub mod pages;
pub mod policy;
pub mod validation;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, Service};
use actix_web::http::Method;
use actix_web::{App, HttpRequest, HttpServer, ResponseError, web};
use futures_util::future::LocalBoxFuture;

use crate::Annuaire;
use error::ApiError;
use extract::BodyLimit;

thread_local! {
    /// The paths `resource` is called with while [`registered_paths`] collects them.
    static REGISTERED: std::cell::RefCell<Option<Vec<String>>> =
        const { std::cell::RefCell::new(None) };
}

/// A resource whose unsupported methods answer 405 `M_UNRECOGNIZED`. Every route is made with
/// it, so that [`registered_paths`] sees it (the OpenAPI test checks each one is documented).
pub fn resource(path: &str) -> actix_web::Resource {
    REGISTERED.with(|paths| {
        if let Some(paths) = paths.borrow_mut().as_mut() {
            paths.push(path.to_owned());
        }
    });
    // Named by its pattern: the request log and metrics read the name without building it.
    web::resource(path)
        .name(path)
        .default_service(web::to(method_not_allowed))
}

/// Every path [`routes`] registers, in registration order.
pub fn registered_paths() -> Vec<String> {
    REGISTERED.with(|paths| *paths.borrow_mut() = Some(Vec::new()));
    // `configure` runs `routes` at once; the app itself is not needed.
    drop(App::new().configure(routes));
    REGISTERED
        .with(|paths| paths.borrow_mut().take())
        .unwrap_or_default()
}

async fn method_not_allowed() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::method_not_allowed())
}

async fn unrecognized() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::unrecognized())
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    health::routes(cfg);
    policy::routes(cfg);
    validation::routes(cfg);
    identity::routes(cfg);
    directory::routes(cfg);
    homeserver::routes(cfg);
    admin::routes(cfg);
    account::routes(cfg);
    openapi::routes(cfg);
    pages::routes(cfg);
    console::routes(cfg);
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS files could not be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Builds the HTTP server on an already bound listener (tests bind port 0). With
/// `http.admin_bind`, binds the admin listener too.
pub fn server(app: Arc<Annuaire>, listener: TcpListener) -> Result<Server, ServeError> {
    let admin = match app.config.http.admin_bind {
        Some(addr) => Some(bind(addr)?),
        None => None,
    };
    server_with_admin(app, listener, admin)
}

/// Whether a path belongs on the admin listener (`http.admin_bind`): `/_annuaire/*` and
/// `/metrics`, except the users' own account API (`/_annuaire/account/…`), which their clients
/// reach on the public listener.
pub fn is_admin_path(path: &str) -> bool {
    (path.starts_with("/_annuaire/") && !is_account_path(path)) || path == "/metrics"
}

/// Whether a path is the users' account API, always on the public listener.
pub fn is_account_path(path: &str) -> bool {
    path.starts_with("/_annuaire/account/")
}

/// Where the administration paths ([`is_admin_path`]) are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminExposure {
    /// On their own listener (`http.admin_bind`); the public one answers 404 for them.
    AdminListener,
    /// On the public listener: it is on loopback, or `admin.public_listener = true`.
    PublicListener,
    /// Nowhere: the public listener is not on loopback, `http.admin_bind` is unset and
    /// `admin.public_listener` is off.
    NotServed,
}

impl AdminExposure {
    /// The exposure the configuration asks for (`has_admin_listener`: one was bound).
    pub fn of(config: &crate::config::Config, has_admin_listener: bool) -> AdminExposure {
        if has_admin_listener {
            AdminExposure::AdminListener
        } else if config.http.bind.ip().is_loopback() || config.admin.public_listener {
            AdminExposure::PublicListener
        } else {
            AdminExposure::NotServed
        }
    }

    /// For the start-up log.
    pub fn describe(self) -> &'static str {
        match self {
            AdminExposure::AdminListener => "admin listener (http.admin_bind)",
            AdminExposure::PublicListener => "public listener",
            AdminExposure::NotServed => {
                "not served (the public listener is not on loopback and http.admin_bind is \
                 unset; set http.admin_bind, or admin.public_listener = true)"
            }
        }
    }
}

/// Builds the HTTP server on the public listener and, if given, a second listener that alone
/// serves `/_annuaire/*` (but the account API) and `/metrics` (the public one then answers 404
/// for them). Without it, see [`AdminExposure`].
pub fn server_with_admin(
    app: Arc<Annuaire>,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
) -> Result<Server, ServeError> {
    crate::telemetry::install_metrics();
    let data = web::Data::from(app.clone());
    let limit = BodyLimit(app.config.http.max_body.0);
    let admin_addr = admin_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let exposure = AdminExposure::of(&app.config, admin_addr.is_some());
    if exposure == AdminExposure::NotServed {
        tracing::warn!(
            bind = %app.config.http.bind,
            "/_annuaire/* and /metrics are not served: the public listener is not on loopback \
             and http.admin_bind is unset (set http.admin_bind, or admin.public_listener = true)"
        );
    }
    let http_server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(limit)
            .configure(routes)
            .default_service(web::to(unrecognized))
            .wrap_fn(move |req, srv| {
                // With an admin listener, each listener serves only its own paths; without
                // one, a public listener off loopback serves no admin path (unless allowed).
                let misplaced = match admin_addr {
                    Some(admin) => {
                        (req.app_config().local_addr() == admin) != is_admin_path(req.path())
                    }
                    None => exposure == AdminExposure::NotServed && is_admin_path(req.path()),
                };
                let fut: LocalBoxFuture<'static, _> = if misplaced {
                    let res = req.into_response(ApiError::unrecognized().error_response());
                    Box::pin(std::future::ready(Ok(res)))
                } else {
                    Box::pin(srv.call(req))
                };
                fut
            })
            .wrap_fn(|req, srv| {
                // CORS, as the Matrix specifications ask, on the Matrix paths only.
                let cors = middleware::cors_applies(req.path());
                let fut: LocalBoxFuture<'static, _> = if cors && req.method() == Method::OPTIONS {
                    let res = req.into_response(middleware::preflight_response());
                    Box::pin(std::future::ready(Ok(res)))
                } else {
                    let call = srv.call(req);
                    Box::pin(async move {
                        let mut res = call.await?;
                        if cors {
                            middleware::add_cors_headers(res.headers_mut());
                        }
                        Ok(res)
                    })
                };
                fut
            })
            .wrap_fn(|req, srv| {
                let ctx = middleware::RequestContext::start(&req);
                let fut = {
                    let _entered = ctx.span.enter();
                    srv.call(req)
                };
                middleware::finish(ctx, fut)
            })
    });
    let http_server = match app.config.http.workers {
        0 => http_server,
        n => http_server.workers(n),
    }
    .shutdown_timeout(10);
    let mut listeners = std::iter::once(listener).chain(admin_listener);
    let http_server = if app.config.tls_enabled() {
        let tls = tls_config(&app)?;
        listeners.try_fold(http_server, |s, l| s.listen_rustls_0_23(l, tls.clone()))?
    } else {
        listeners.try_fold(http_server, |s, l| s.listen(l))?
    };
    Ok(http_server.run())
}

/// Binds the configured address.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    Ok(TcpListener::bind(addr)?)
}

fn tls_config(app: &Annuaire) -> Result<rustls::ServerConfig, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&app.config.http.tls.cert, &app.config.http.tls.key) else {
        return Err(ServeError::Tls(
            "http.tls.cert and http.tls.key are both needed".into(),
        ));
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ServeError::Tls(format!("http.tls.cert ({}): {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Tls(format!("http.tls.cert ({}): {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "http.tls.cert ({}): no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServeError::Tls(format!("http.tls.key ({}): {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// An empty JSON object, `{}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Empty {}

/// The `Annuaire` behind a handler's app data.
pub type AppData = web::Data<Annuaire>;

/// The caller's IP address, honouring `http.trusted_proxies`.
pub fn caller_ip(req: &HttpRequest, app: &Annuaire) -> Option<std::net::IpAddr> {
    extract::client_ip(req, &app.config.http.trusted_proxies)
}

/// Whether the caller is in `http.internal_networks` (a homeserver).
pub fn is_internal(req: &HttpRequest, app: &Annuaire) -> bool {
    caller_ip(req, app).is_some_and(|ip| is_internal_ip(ip, app))
}

/// Whether `ip` (a caller's, from [`caller_ip`]) is in `http.internal_networks`.
pub fn is_internal_ip(ip: std::net::IpAddr, app: &Annuaire) -> bool {
    app.config
        .http
        .internal_networks
        .iter()
        .any(|n| n.contains(&ip))
}
