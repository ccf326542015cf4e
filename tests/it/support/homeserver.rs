//! A homeserver double: as much of a homeserver's federation and client APIs as the identity
//! service calls. OpenID userinfo, its signing keys (as [`FINANCES_HS`], whatever name it is
//! reached by), `onbind` (calls recorded, and made to fail on demand), and the client API's
//! whoami.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use actix_web::{HttpRequest, HttpResponse, web};
use annuaire::matrix::signing::{SigningKey, sign_json};
use annuaire::matrix::xmatrix::{XMatrixAuth, identity_request_json};
use serde_json::{Value, json};

use super::fixtures::FINANCES_HS;

/// The identity service's unbind endpoint, which homeservers call signed.
pub const UNBIND_PATH: &str = "/_matrix/identity/v2/3pid/unbind";

/// A running homeserver double.
pub struct Homeserver {
    /// `http(s)://127.0.0.1:PORT`.
    pub base: String,
    tokens: Arc<Mutex<HashMap<String, String>>>,
    client_tokens: Arc<Mutex<HashMap<String, String>>>,
    userinfo_calls: Arc<AtomicUsize>,
    /// The key it signs requests and its key response with.
    pub key: Arc<SigningKey>,
    /// Every `onbind` POST: (status answered, body).
    onbinds: Arc<Mutex<Vec<(u16, Value)>>>,
    /// `onbind` calls still to answer with a 500.
    onbind_failures: Arc<AtomicUsize>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct State {
    tokens: Arc<Mutex<HashMap<String, String>>>,
    client_tokens: Arc<Mutex<HashMap<String, String>>>,
    userinfo_calls: Arc<AtomicUsize>,
    key: Arc<SigningKey>,
    onbinds: Arc<Mutex<Vec<(u16, Value)>>>,
    onbind_failures: Arc<AtomicUsize>,
}

async fn server_keys(state: web::Data<State>) -> HttpResponse {
    let mut body = json!({
        "server_name": FINANCES_HS,
        "verify_keys": { state.key.key_id(): { "key": state.key.public_key_base64() } },
        "old_verify_keys": {},
        "valid_until_ts": 4_000_000_000_000_i64,
    });
    sign_json(&mut body, FINANCES_HS, &state.key).unwrap();
    HttpResponse::Ok().json(body)
}

async fn onbind(state: web::Data<State>, body: web::Json<Value>) -> HttpResponse {
    let fail = state
        .onbind_failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail { 500 } else { 200 };
    state
        .onbinds
        .lock()
        .unwrap()
        .push((status, body.into_inner()));
    if fail {
        HttpResponse::InternalServerError()
            .json(json!({"errcode": "M_UNKNOWN", "error": "try again"}))
    } else {
        HttpResponse::Ok().json(json!({}))
    }
}

async fn userinfo(
    state: web::Data<State>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    state.userinfo_calls.fetch_add(1, Ordering::SeqCst);
    let token = query.get("access_token").cloned().unwrap_or_default();
    match state.tokens.lock().unwrap().get(&token) {
        Some(sub) => HttpResponse::Ok().json(json!({ "sub": sub })),
        None => HttpResponse::Unauthorized()
            .json(json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid token"})),
    }
}

async fn whoami(state: web::Data<State>, req: HttpRequest) -> HttpResponse {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match state.client_tokens.lock().unwrap().get(token) {
        Some(user_id) => HttpResponse::Ok().json(json!({ "user_id": user_id })),
        None => HttpResponse::Unauthorized()
            .json(json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid access token"})),
    }
}

impl Homeserver {
    /// Starts the double on a random loopback port (HTTPS with `tls`).
    pub fn start(tls: Option<rustls::ServerConfig>) -> Homeserver {
        let state = State {
            tokens: Arc::new(Mutex::new(HashMap::new())),
            client_tokens: Arc::new(Mutex::new(HashMap::new())),
            userinfo_calls: Arc::new(AtomicUsize::new(0)),
            key: Arc::new(
                SigningKey::generate(&mut rand::rngs::OsRng)
                    .with_key_id("ed25519:hs1")
                    .unwrap(),
            ),
            onbinds: Arc::new(Mutex::new(Vec::new())),
            onbind_failures: Arc::new(AtomicUsize::new(0)),
        };
        let (tx, rx) = mpsc::channel();
        let served = state.clone();
        let thread = std::thread::spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let data = web::Data::new(served);
                let server = actix_web::HttpServer::new(move || {
                    actix_web::App::new()
                        .app_data(data.clone())
                        .route(
                            "/_matrix/federation/v1/openid/userinfo",
                            web::get().to(userinfo),
                        )
                        .route("/_matrix/key/v2/server", web::get().to(server_keys))
                        .route("/_matrix/federation/v1/3pid/onbind", web::post().to(onbind))
                        .route("/_matrix/client/v3/account/whoami", web::get().to(whoami))
                })
                .workers(1);
                let (server, scheme) = match tls {
                    Some(tls) => (server.listen_rustls_0_23(listener, tls).unwrap(), "https"),
                    None => (server.listen(listener).unwrap(), "http"),
                };
                let server = server.run();
                tx.send((format!("{scheme}://{addr}"), server.handle()))
                    .unwrap();
                let _ = server.await;
            });
        });
        let (base, handle) = rx.recv().unwrap();
        Homeserver {
            base,
            tokens: state.tokens,
            client_tokens: state.client_tokens,
            userinfo_calls: state.userinfo_calls,
            key: state.key,
            onbinds: state.onbinds,
            onbind_failures: state.onbind_failures,
            handle,
            thread: Some(thread),
        }
    }

    /// An OpenID token this homeserver vouches for as `user_id`.
    pub fn openid_token(&self, user_id: &str) -> String {
        let token = format!("openid-{}", annuaire::secret::random_id());
        self.tokens
            .lock()
            .unwrap()
            .insert(token.clone(), user_id.to_string());
        token
    }

    /// A client access token whose whoami answers `user_id`.
    pub fn client_token(&self, user_id: &str) -> String {
        let token = format!("syt_{}", annuaire::secret::random_id());
        self.client_tokens
            .lock()
            .unwrap()
            .insert(token.clone(), user_id.to_string());
        token
    }

    /// The OpenID userinfo calls so far.
    pub fn calls(&self) -> usize {
        self.userinfo_calls.load(Ordering::SeqCst)
    }

    /// The `onbind` calls so far.
    pub fn onbinds(&self) -> Vec<(u16, Value)> {
        self.onbinds.lock().unwrap().clone()
    }

    /// The next `n` `onbind` calls fail with a 500.
    pub fn fail_onbinds(&self, n: usize) {
        self.onbind_failures.store(n, Ordering::SeqCst);
    }

    /// `body` signed by this homeserver (as [`FINANCES_HS`]).
    pub fn signed(&self, mut body: Value) -> Value {
        sign_json(&mut body, FINANCES_HS, &self.key).unwrap();
        body
    }

    /// An `Authorization: X-Matrix` header for a server-server request (`uri` is the path and
    /// query), signed as [`FINANCES_HS`] for `destination`.
    pub fn x_matrix(&self, method: &str, uri: &str, destination: &str, content: &Value) -> String {
        annuaire::matrix::xmatrix::sign_request(
            &self.key,
            FINANCES_HS,
            method,
            uri,
            destination,
            Some(content),
        )
        .unwrap()
    }

    /// An `Authorization: X-Matrix` header for an unbind, signed as Synapse signs it
    /// (`destination_is` in the signed object, no `destination` in the header).
    pub fn sign_unbind(&self, origin: &str, destination_is: &str, content: &Value) -> String {
        sign_unbind_with(&self.key, origin, destination_is, content)
    }
}

/// An `Authorization: X-Matrix` header for an unbind signed with `key` as `origin`.
pub fn sign_unbind_with(
    key: &SigningKey,
    origin: &str,
    destination_is: &str,
    content: &Value,
) -> String {
    let mut object =
        identity_request_json("POST", UNBIND_PATH, origin, destination_is, Some(content));
    sign_json(&mut object, origin, key).unwrap();
    XMatrixAuth {
        origin: origin.to_string(),
        destination: None,
        key: key.key_id().to_string(),
        sig: object["signatures"][origin][key.key_id()]
            .as_str()
            .unwrap()
            .to_string(),
    }
    .to_string()
}

impl Drop for Homeserver {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            drop(self.handle.stop(false));
            let _ = t.join();
        }
    }
}
