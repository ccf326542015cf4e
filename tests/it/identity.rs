//! The Matrix Identity Service API over HTTP: accounts (OpenID against a homeserver double),
//! terms, public keys, hashed lookups and pepper rotation, store-invite and sign-ed25519, the
//! policy endpoints' `invited` and `new_hs`, the `keys` CLI, and the whole thing over HTTPS.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use annuaire::config::{HumanDuration, WindowLimit};
use annuaire::identity::associations::{self, Association};
use annuaire::identity::hashing::lookup_hash;
use annuaire::identity::signing::{SigningKey, verify_json};
use annuaire::store::identity as store;
use serde_json::{Value, json};

use crate::support::{Builder, Reply, TestServer, eventually, run_cli};

const V2: &str = "/_matrix/identity/v2";
const FINANCES_HS: &str = "agent.finances.example";
const JUSTICE_HS: &str = "agent.justice.example";
const START_MS: i64 = 1_800_000_000_000;

const FINANCES: &str = r#"
[organisation]
label = "Finances"
homeserver = "agent.finances.example"
shadow_homeserver = "public.finances.example"

[[domain]]
name = "finances.gouv.example"
subdomains = true

[[deny]]
name = "webmail.finances.gouv.example"
"#;

const JUSTICE: &str = r#"
[organisation]
label = "Justice"
homeserver = "agent.justice.example"

[[domain]]
name = "justice.gouv.example"
"#;

const TERMS: &str = r#"
version = "1"
[policies.terms_of_service]
version = "1.0"
en = { name = "Terms", url = "https://is.test.example/tos-1.0-en.html" }
fr = { name = "Conditions", url = "https://is.test.example/tos-1.0-fr.html" }
[policies.privacy_policy]
version = "1.0"
en = { name = "Privacy", url = "https://is.test.example/privacy-1.0-en.html" }
"#;

// ---- a homeserver double ----

/// A homeserver's federation API, as much as the identity service calls: OpenID userinfo.
struct Homeserver {
    base: String,
    tokens: Arc<Mutex<HashMap<String, String>>>,
    userinfo_calls: Arc<AtomicUsize>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct HomeserverState {
    tokens: Arc<Mutex<HashMap<String, String>>>,
    userinfo_calls: Arc<AtomicUsize>,
}

async fn userinfo(
    state: actix_web::web::Data<HomeserverState>,
    query: actix_web::web::Query<HashMap<String, String>>,
) -> actix_web::HttpResponse {
    state.userinfo_calls.fetch_add(1, Ordering::SeqCst);
    let token = query.get("access_token").cloned().unwrap_or_default();
    match state.tokens.lock().unwrap().get(&token) {
        Some(sub) => actix_web::HttpResponse::Ok().json(json!({ "sub": sub })),
        None => actix_web::HttpResponse::Unauthorized()
            .json(json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid token"})),
    }
}

impl Homeserver {
    fn start(tls: Option<rustls::ServerConfig>) -> Homeserver {
        let state = HomeserverState {
            tokens: Arc::new(Mutex::new(HashMap::new())),
            userinfo_calls: Arc::new(AtomicUsize::new(0)),
        };
        let (tx, rx) = mpsc::channel();
        let served = state.clone();
        let thread = std::thread::spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let data = actix_web::web::Data::new(served);
                let server = actix_web::HttpServer::new(move || {
                    actix_web::App::new().app_data(data.clone()).route(
                        "/_matrix/federation/v1/openid/userinfo",
                        actix_web::web::get().to(userinfo),
                    )
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
            userinfo_calls: state.userinfo_calls,
            handle,
            thread: Some(thread),
        }
    }

    /// An OpenID token this homeserver vouches for as `user_id`.
    fn openid_token(&self, user_id: &str) -> String {
        let token = format!("openid-{}", annuaire::app::random_id());
        self.tokens
            .lock()
            .unwrap()
            .insert(token.clone(), user_id.to_string());
        token
    }

    fn calls(&self) -> usize {
        self.userinfo_calls.load(Ordering::SeqCst)
    }
}

impl Drop for Homeserver {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            drop(self.handle.stop(false));
            let _ = t.join();
        }
    }
}

// ---- helpers ----

fn write_allowlists(dir: &Path) -> std::path::PathBuf {
    let lists = dir.join("allowlists");
    std::fs::create_dir_all(&lists).unwrap();
    std::fs::write(lists.join("finances.toml"), FINANCES).unwrap();
    lists
}

/// Allowlists (finances only), both homeservers routed to the double.
fn builder(hs: &Homeserver) -> Builder {
    let base = hs.base.clone();
    Builder::new().config(move |c, dir| {
        c.policy.allowlists_dir = write_allowlists(dir);
        c.policy.reload_interval = HumanDuration(Duration::from_millis(200));
        for name in [FINANCES_HS, JUSTICE_HS, "public.finances.example"] {
            c.federation.homeservers.insert(name.into(), base.clone());
        }
    })
}

fn server_of(user_id: &str) -> &str {
    user_id.split_once(':').unwrap().1
}

async fn register_reply(s: &TestServer, hs: &Homeserver, user_id: &str) -> Reply {
    let openid = hs.openid_token(user_id);
    s.post(
        &format!("{V2}/account/register"),
        &json!({
            "access_token": openid,
            "token_type": "Bearer",
            "matrix_server_name": server_of(user_id),
            "expires_in": 3600,
        }),
    )
    .await
}

async fn register(s: &TestServer, hs: &Homeserver, user_id: &str) -> String {
    let body = register_reply(s, hs, user_id).await.assert_ok();
    body["token"].as_str().unwrap().to_string()
}

async fn get_auth(s: &TestServer, path: &str, token: &str) -> Reply {
    Reply::from(
        s.client
            .get(s.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn post_auth(s: &TestServer, path: &str, token: &str, body: &Value) -> Reply {
    Reply::from(
        s.client
            .post(s.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Binds an address the way the bind endpoint will (phase 2): straight into the store.
async fn bind_directly(s: &TestServer, address: &str, mxid: &str) {
    let a = Association::new("email", address, mxid, s.app.clock.now_ms());
    s.app
        .db
        .run(move |conn| associations::record(conn, &a))
        .await
        .unwrap();
}

async fn pepper(s: &TestServer, token: &str) -> String {
    let body = get_auth(s, &format!("{V2}/hash_details"), token)
        .await
        .assert_ok();
    assert_eq!(body["algorithms"], json!(["none", "sha256"]));
    body["lookup_pepper"].as_str().unwrap().to_string()
}

async fn lookup(
    s: &TestServer,
    token: &str,
    algorithm: &str,
    pepper: &str,
    addresses: &[String],
) -> Reply {
    post_auth(
        s,
        &format!("{V2}/lookup"),
        token,
        &json!({"algorithm": algorithm, "pepper": pepper, "addresses": addresses}),
    )
    .await
}

fn invite_body(address: &str, sender: &str) -> Value {
    json!({
        "medium": "email",
        "address": address,
        "room_id": "!room:agent.finances.example",
        "sender": sender,
        "room_name": "Budget 2027",
        "sender_display_name": "Jean Dupont",
    })
}

async fn internal_info(s: &TestServer, address: &str) -> Value {
    let url = reqwest::Url::parse_with_params(
        &s.url("/_matrix/identity/api/v1/internal-info"),
        &[("medium", "email"), ("address", address)],
    )
    .unwrap();
    Reply::from(s.client.get(url).send().await.unwrap())
        .await
        .assert_ok()
}

async fn info(s: &TestServer, address: &str, forwarded_for: Option<&str>) -> Value {
    let url = reqwest::Url::parse_with_params(
        &s.url("/_matrix/identity/api/v1/info"),
        &[("medium", "email"), ("address", address)],
    )
    .unwrap();
    let mut req = s.client.get(url);
    if let Some(ip) = forwarded_for {
        req = req.header("X-Forwarded-For", ip);
    }
    Reply::from(req.send().await.unwrap()).await.assert_ok()
}

// ---- accounts ----

#[tokio::test]
async fn register_account_and_logout() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    let user = "@jean.dupont:agent.finances.example";
    let token = register(&s, &hs, user).await;
    assert_eq!(token.len(), 48);
    assert_eq!(
        get_auth(&s, &format!("{V2}/account"), &token)
            .await
            .assert_ok(),
        json!({ "user_id": user })
    );
    // The query string works too (Synapse uses it on /hash_details).
    let r = s
        .get(&format!("{V2}/account?access_token={token}"))
        .await
        .assert_ok();
    assert_eq!(r["user_id"], user);
    // A second registration gives a second token; both work until logged out.
    let second = register(&s, &hs, user).await;
    assert_ne!(second, token);
    // Logout takes no body (the spec's exception) and ends only that token.
    let r = Reply::from(
        s.client
            .post(s.url(&format!("{V2}/account/logout")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.assert_ok(), json!({}));
    get_auth(&s, &format!("{V2}/account"), &token)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    post_auth(&s, &format!("{V2}/account/logout"), &token, &json!({}))
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    get_auth(&s, &format!("{V2}/account"), &second)
        .await
        .assert_ok();
    // Tokens are stored hashed: the clear token appears nowhere in the database.
    let clear = second.clone();
    let found = s
        .app
        .db
        .run(move |conn| {
            use annuaire::store::schema::identity_tokens::dsl as t;
            use diesel::prelude::*;
            let hashes: Vec<String> = annuaire::db_dispatch!(conn, c => t::identity_tokens
                .select(t::token_hash)
                .load::<String>(c)?);
            Ok(hashes.iter().any(|h| h.contains(&clear)))
        })
        .await
        .unwrap();
    assert!(!found);
}

#[tokio::test]
async fn registration_errors() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| {
            c.federation
                .homeservers
                .insert("dead.example".into(), "http://127.0.0.1:1".into());
        })
        .start()
        .await;
    let path = format!("{V2}/account/register");
    // The homeserver does not know the token.
    s.post(
        &path,
        &json!({"access_token": "nope", "token_type": "Bearer", "matrix_server_name": FINANCES_HS, "expires_in": 60}),
    )
    .await
    .assert_error(401, "M_UNAUTHORIZED");
    // The homeserver vouches for a user of another server.
    let foreign = hs.openid_token("@x:agent.justice.example");
    s.post(
        &path,
        &json!({"access_token": foreign, "matrix_server_name": FINANCES_HS}),
    )
    .await
    .assert_error(401, "M_UNAUTHORIZED");
    // A homeserver the allowlists do not name is refused before it is even asked.
    let before = hs.calls();
    register_reply(&s, &hs, "@x:agent.justice.example")
        .await
        .assert_error(403, "M_FORBIDDEN");
    register_reply(&s, &hs, "@x:stranger.example")
        .await
        .assert_error(403, "M_FORBIDDEN");
    assert_eq!(hs.calls(), before);
    // Malformed requests.
    s.post(
        &path,
        &json!({"access_token": "x", "matrix_server_name": "not a name"}),
    )
    .await
    .assert_error(400, "M_INVALID_PARAM");
    s.post(
        &path,
        &json!({"access_token": "", "matrix_server_name": FINANCES_HS}),
    )
    .await
    .assert_error(400, "M_INVALID_PARAM");
    s.post(&path, &json!({"access_token": "x"}))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    s.post_raw(&path, "{not json")
        .await
        .assert_error(400, "M_NOT_JSON");
    // Missing or unknown tokens on authenticated endpoints.
    s.get(&format!("{V2}/account"))
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    get_auth(&s, &format!("{V2}/account"), "unknown")
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    s.get(&format!("{V2}/hash_details"))
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    // Wrong method.
    s.get(&path).await.assert_error(405, "M_UNRECOGNIZED");
    drop(s);

    // An unreachable (but allowed) homeserver is a gateway failure, not the caller's fault.
    let s = builder(&hs)
        .config(|c, _| {
            c.federation
                .homeservers
                .insert("dead.example".into(), "http://127.0.0.1:1".into());
            c.identity.allowed_homeservers = Some(vec!["dead.example".into()]);
        })
        .start()
        .await;
    s.post(
        &path,
        &json!({"access_token": "x", "matrix_server_name": "dead.example"}),
    )
    .await
    .assert_error(502, "M_UNKNOWN");
    // With an explicit list, the allowlists' homeservers are no longer enough.
    register_reply(&s, &hs, "@a:agent.finances.example")
        .await
        .assert_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn allowed_homeservers_follow_the_live_rules() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    register_reply(&s, &hs, "@a:agent.justice.example")
        .await
        .assert_error(403, "M_FORBIDDEN");
    // The shadow homeserver of a rule counts.
    register(&s, &hs, "@b:public.finances.example").await;
    // An operator adds the Justice ministry.
    let lists = s.dir.path().join("allowlists");
    std::fs::write(lists.join("justice.toml"), JUSTICE).unwrap();
    let default = s.app.config.policy.default_policy();
    let now = s.app.clock.now_ms();
    s.app
        .db
        .run(move |conn| {
            annuaire::allowlist::import_dir(conn, &lists, &default, false, now)
                .map_err(|e| annuaire::store::StoreError::Corrupt(e.to_string()))
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the new homeserver is allowed",
        async || {
            register_reply(&s, &hs, "@a:agent.justice.example")
                .await
                .status
                == 200
        },
    )
    .await;
}

#[tokio::test]
async fn tokens_expire() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| c.identity.token_lifetime = HumanDuration(Duration::from_secs(3600)))
        .manual_clock(START_MS)
        .start()
        .await;
    let token = register(&s, &hs, "@a:agent.finances.example").await;
    let clock = s.clock.clone().unwrap();
    clock.advance(3_599_000);
    get_auth(&s, &format!("{V2}/account"), &token)
        .await
        .assert_ok();
    clock.advance(1_000);
    get_auth(&s, &format!("{V2}/account"), &token)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    // The purge job's work: expired tokens are deleted.
    let now = clock_now(&s);
    let (tokens, _) = s
        .app
        .db
        .run(move |conn| annuaire::identity::purge_expired(conn, now))
        .await
        .unwrap();
    assert_eq!(tokens, 1);
}

fn clock_now(s: &TestServer) -> i64 {
    use annuaire::clock::Clock;
    s.clock.as_ref().unwrap().now_ms()
}

// ---- terms ----

#[tokio::test]
async fn terms_must_be_accepted_before_authenticated_endpoints() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, dir| {
            std::fs::write(dir.join("terms.toml"), TERMS).unwrap();
            c.terms.file = Some(dir.join("terms.toml"));
        })
        .start()
        .await;
    // GET /terms needs no token and has the spec's shape.
    let terms = s.get(&format!("{V2}/terms")).await.assert_ok();
    assert_eq!(terms["policies"]["terms_of_service"]["version"], "1.0");
    assert_eq!(
        terms["policies"]["terms_of_service"]["fr"],
        json!({"name": "Conditions", "url": "https://is.test.example/tos-1.0-fr.html"})
    );
    assert_eq!(
        terms["policies"]["privacy_policy"]["en"]["url"],
        "https://is.test.example/privacy-1.0-en.html"
    );
    let token = register(&s, &hs, "@a:agent.finances.example").await;
    // Account endpoints work without terms; the others answer M_TERMS_NOT_SIGNED.
    get_auth(&s, &format!("{V2}/account"), &token)
        .await
        .assert_ok();
    get_auth(&s, &format!("{V2}/hash_details"), &token)
        .await
        .assert_error(403, "M_TERMS_NOT_SIGNED");
    post_auth(
        &s,
        &format!("{V2}/store-invite"),
        &token,
        &invite_body("marie@finances.gouv.example", "@a:agent.finances.example"),
    )
    .await
    .assert_error(403, "M_TERMS_NOT_SIGNED");
    // Acceptances accumulate; one language counts for its policy; unknown URLs are ignored.
    let accept = |urls: Vec<&str>| json!({ "user_accepts": urls });
    post_auth(
        &s,
        &format!("{V2}/terms"),
        &token,
        &accept(vec![
            "https://is.test.example/tos-1.0-fr.html",
            "https://evil.example/x",
        ]),
    )
    .await
    .assert_ok();
    get_auth(&s, &format!("{V2}/hash_details"), &token)
        .await
        .assert_error(403, "M_TERMS_NOT_SIGNED");
    post_auth(
        &s,
        &format!("{V2}/terms"),
        &token,
        &accept(vec!["https://is.test.example/privacy-1.0-en.html"]),
    )
    .await
    .assert_ok();
    get_auth(&s, &format!("{V2}/hash_details"), &token)
        .await
        .assert_ok();
    // POST /terms needs a token, and a body with user_accepts.
    s.post(&format!("{V2}/terms"), &accept(vec![]))
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    post_auth(&s, &format!("{V2}/terms"), &token, &json!({}))
        .await
        .assert_error(400, "M_MISSING_PARAMS");

    // New terms (a policy's version changes): everyone accepts again.
    let mut config = (*s.app.config).clone();
    let dir = s.dir.clone();
    drop(s);
    std::fs::write(
        dir.path().join("terms.toml"),
        TERMS.replace("privacy-1.0-en", "privacy-2.0-en").replacen(
            "[policies.privacy_policy]\nversion = \"1.0\"",
            "[policies.privacy_policy]\nversion = \"2.0\"",
            1,
        ),
    )
    .unwrap();
    config.terms.file = Some(dir.path().join("terms.toml"));
    let s = Builder::in_dir(dir, config).start().await;
    get_auth(&s, &format!("{V2}/hash_details"), &token)
        .await
        .assert_error(403, "M_TERMS_NOT_SIGNED");
    post_auth(
        &s,
        &format!("{V2}/terms"),
        &token,
        &accept(vec!["https://is.test.example/privacy-2.0-en.html"]),
    )
    .await
    .assert_ok();
    get_auth(&s, &format!("{V2}/hash_details"), &token)
        .await
        .assert_ok();
}

#[tokio::test]
async fn without_terms_there_is_nothing_to_accept() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    assert_eq!(
        s.get(&format!("{V2}/terms")).await.assert_ok(),
        json!({"policies": {}})
    );
    let token = register(&s, &hs, "@a:agent.finances.example").await;
    get_auth(&s, &format!("{V2}/hash_details"), &token)
        .await
        .assert_ok();
    post_auth(
        &s,
        &format!("{V2}/terms"),
        &token,
        &json!({"user_accepts": ["https://x.example/terms"]}),
    )
    .await
    .assert_ok();
}

// ---- keys ----

#[tokio::test]
async fn public_keys_are_published_and_shared_by_instances() {
    let s = TestServer::start().await;
    let body = s.get(&format!("{V2}/pubkey/ed25519:0")).await.assert_ok();
    let key = body["public_key"].as_str().unwrap().to_string();
    assert_eq!(key, s.app.identity.signing_key().public_key_base64());
    s.get(&format!("{V2}/pubkey/ed25519:1"))
        .await
        .assert_error(404, "M_NOT_FOUND");
    let valid = |k: &str| {
        let url = reqwest::Url::parse_with_params(
            &s.url(&format!("{V2}/pubkey/isvalid")),
            &[("public_key", k)],
        )
        .unwrap();
        let client = s.client.clone();
        async move {
            Reply::from(client.get(url).send().await.unwrap())
                .await
                .assert_ok()["valid"]
                .clone()
        }
    };
    assert_eq!(valid(&key).await, json!(true));
    let url_safe = key.replace('+', "-").replace('/', "_");
    assert_eq!(valid(&url_safe).await, json!(true));
    let other = SigningKey::generate(&mut rand::rngs::OsRng).public_key_base64();
    assert_eq!(valid(&other).await, json!(false));
    assert_eq!(valid("garbage").await, json!(false));
    s.get(&format!("{V2}/pubkey/isvalid"))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    s.get(&format!("{V2}/pubkey/ephemeral/isvalid"))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    // A second instance on the same database signs with the same key.
    let config = (*s.app.config).clone();
    let second = Builder::in_dir(s.dir.clone(), config).start().await;
    assert_eq!(
        second
            .get(&format!("{V2}/pubkey/ed25519:0"))
            .await
            .assert_ok()["public_key"],
        json!(key)
    );
}

#[tokio::test]
async fn keys_generate_writes_a_key_the_server_uses() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(dir.path(), &["keys", "generate"], &[]);
    assert_eq!(code, 0, "{err}");
    let printed = SigningKey::parse_sydent(&out).unwrap();
    assert_eq!(printed.key_id(), "ed25519:0");
    let path = dir.path().join("signing.key");
    let path_arg = path.to_str().unwrap();
    let (code, out, err) = run_cli(dir.path(), &["keys", "generate", "--output", path_arg], &[]);
    assert_eq!(code, 0, "{err}");
    let key = SigningKey::parse_sydent(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(out.contains(&key.public_key_base64()), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never overwritten by accident.
    let (code, _, err) = run_cli(dir.path(), &["keys", "generate", "--output", path_arg], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        SigningKey::parse_sydent(&std::fs::read_to_string(&path).unwrap())
            .unwrap()
            .public_key_base64(),
        key.public_key_base64()
    );
    let (code, _, err) = run_cli(
        dir.path(),
        &["keys", "generate", "--output", path_arg, "--force"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let replaced = SigningKey::parse_sydent(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_ne!(replaced.public_key_base64(), key.public_key_base64());

    // The server signs with the file's key.
    let keyfile = path.clone();
    let s = Builder::new()
        .config(move |c, _| c.server.signing_key_file = Some(keyfile))
        .start()
        .await;
    assert_eq!(
        s.get(&format!("{V2}/pubkey/ed25519:0")).await.assert_ok()["public_key"],
        json!(replaced.public_key_base64())
    );
    // A broken key file stops the start with a message naming the key.
    std::fs::write(&path, "ed25519 0 not-base64!\n").unwrap();
    let (code, _, err) = run_cli(
        dir.path(),
        &["check-config"],
        &[("ANNUAIRE_SERVER__SIGNING_KEY_FILE", path_arg)],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("server.signing_key_file"), "{err}");
}

// ---- lookups ----

#[tokio::test]
async fn hashed_and_plain_lookups() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| c.identity.max_lookup_addresses = 3)
        .start()
        .await;
    let token = register(&s, &hs, "@a:agent.finances.example").await;
    bind_directly(
        &s,
        "marie@finances.gouv.example",
        "@marie:agent.finances.example",
    )
    .await;
    bind_directly(
        &s,
        "élodie@justice.gouv.example",
        "@elodie:agent.justice.example",
    )
    .await;
    // Synapse sends the token in the query string here.
    let r = s
        .get(&format!("{V2}/hash_details?access_token={token}"))
        .await
        .assert_ok();
    let pepper = pepper(&s, &token).await;
    assert_eq!(r["lookup_pepper"], json!(pepper));
    assert!(pepper.len() >= 32);

    let marie = lookup_hash("marie@finances.gouv.example", "email", &pepper);
    let elodie = lookup_hash("élodie@justice.gouv.example", "email", &pepper);
    let nobody = lookup_hash("nobody@finances.gouv.example", "email", &pepper);
    let body = lookup(
        &s,
        &token,
        "sha256",
        &pepper,
        &[marie.clone(), elodie.clone(), nobody],
    )
    .await
    .assert_ok();
    assert_eq!(
        body,
        json!({"mappings": {
            marie.clone(): "@marie:agent.finances.example",
            elodie: "@elodie:agent.justice.example",
        }})
    );
    let body = lookup(
        &s,
        &token,
        "none",
        &pepper,
        &[
            "marie@finances.gouv.example email".into(),
            "marie@finances.gouv.example msisdn".into(),
            "MARIE@finances.gouv.example email".into(),
        ],
    )
    .await
    .assert_ok();
    assert_eq!(
        body,
        json!({"mappings": {"marie@finances.gouv.example email": "@marie:agent.finances.example"}})
    );
    // Errors: wrong pepper (with the current one), unknown algorithm, too many, malformed.
    let r = lookup(
        &s,
        &token,
        "sha256",
        "old-pepper",
        std::slice::from_ref(&marie),
    )
    .await;
    r.assert_error(400, "M_INVALID_PEPPER");
    assert_eq!(r.json()["lookup_pepper"], json!(pepper));
    lookup(&s, &token, "md5", &pepper, std::slice::from_ref(&marie))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    let four = vec![marie.clone(); 4];
    lookup(&s, &token, "sha256", &pepper, &four)
        .await
        .assert_error(413, "M_TOO_LARGE");
    post_auth(
        &s,
        &format!("{V2}/lookup"),
        &token,
        &json!({"algorithm": "sha256", "pepper": pepper}),
    )
    .await
    .assert_error(400, "M_MISSING_PARAMS");
    post_auth(
        &s,
        &format!("{V2}/lookup"),
        &token,
        &json!({"algorithm": "sha256", "pepper": pepper, "addresses": "x"}),
    )
    .await
    .assert_error(400, "M_BAD_JSON");
    lookup(&s, "bad-token", "sha256", &pepper, &[marie])
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    // A new bind replaces the previous one: lookups give the new Matrix ID.
    bind_directly(
        &s,
        "marie@finances.gouv.example",
        "@marie2:agent.finances.example",
    )
    .await;
    let marie = lookup_hash("marie@finances.gouv.example", "email", &pepper);
    assert_eq!(
        lookup(&s, &token, "sha256", &pepper, std::slice::from_ref(&marie))
            .await
            .assert_ok()["mappings"][&marie],
        "@marie2:agent.finances.example"
    );
}

async fn count_hash_rows(s: &TestServer) -> i64 {
    s.app
        .db
        .run(|conn| {
            use annuaire::store::schema::association_hashes::dsl as h;
            use diesel::prelude::*;
            let n = annuaire::db_dispatch!(conn, c => h::association_hashes
                .count()
                .get_result::<i64>(c)?);
            Ok(n)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn lookups_after_pepper_rotations() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    let token = register(&s, &hs, "@a:agent.finances.example").await;
    let addresses: Vec<String> = (0..25)
        .map(|i| format!("agent{i:02}@finances.gouv.example"))
        .collect();
    for (i, a) in addresses.iter().enumerate() {
        bind_directly(&s, a, &format!("@agent{i:02}:agent.finances.example")).await;
    }
    let old = pepper(&s, &token).await;

    // Rotate in batches of 7; an address bound in the middle of the walk must not be missed.
    let db = s.app.db.clone();
    let now = s.app.clock.now_ms();
    let old_pepper = old.clone();
    let rotation = s
        .app
        .db
        .run(move |conn| {
            let mut late_bind_done = false;
            let mut progress = |step: &str, _n: usize| {
                if step == "rehashed" && !late_bind_done {
                    late_bind_done = true;
                    let mut other = db.get().unwrap();
                    let a = Association::new(
                        "email",
                        "late@finances.gouv.example",
                        "@late:agent.finances.example",
                        now,
                    );
                    associations::record(&mut other, &a).unwrap();
                    // A bind that read the pepper state before the rotation began, landing
                    // behind the walk's cursor with only a current-pepper hash: the switch
                    // must sweep it up.
                    let early = "aaa-early@finances.gouv.example";
                    store::upsert_association(
                        &mut other,
                        &store::AssociationRow {
                            medium: "email".into(),
                            address: early.into(),
                            mxid: "@early:agent.finances.example".into(),
                            created_at: now,
                            not_before: now,
                            not_after: now + 1_000_000_000,
                        },
                    )
                    .unwrap();
                    store::insert_hashes(
                        &mut other,
                        &[(
                            1,
                            lookup_hash(early, "email", &old_pepper),
                            "email".into(),
                            early.into(),
                        )],
                    )
                    .unwrap();
                }
            };
            annuaire::identity::lookup::rotate_pepper(
                conn,
                &mut rand::rngs::OsRng,
                7,
                now,
                &mut progress,
            )
        })
        .await
        .unwrap();
    assert_eq!(rotation.previous_id, 1);
    assert_eq!(rotation.pepper.id, 2);
    assert!(rotation.rehashed >= 25, "{rotation:?}");
    assert_eq!(rotation.swept, 1, "{rotation:?}");
    let new = pepper(&s, &token).await;
    assert_eq!(new, rotation.pepper.value);
    assert_ne!(new, old);

    // The old pepper is refused, with the new one in the answer.
    let r = lookup(
        &s,
        &token,
        "sha256",
        &old,
        &[lookup_hash(&addresses[0], "email", &old)],
    )
    .await;
    r.assert_error(400, "M_INVALID_PEPPER");
    assert_eq!(r.json()["lookup_pepper"], json!(new));
    // Every address, the late one included, is found with the new pepper.
    let mut all = addresses.clone();
    all.push("late@finances.gouv.example".into());
    all.push("aaa-early@finances.gouv.example".into());
    let hashes: Vec<String> = all.iter().map(|a| lookup_hash(a, "email", &new)).collect();
    let mappings = lookup(&s, &token, "sha256", &new, &hashes)
        .await
        .assert_ok()["mappings"]
        .clone();
    assert_eq!(mappings.as_object().unwrap().len(), 27, "{mappings}");
    assert_eq!(mappings[&hashes[25]], "@late:agent.finances.example");
    assert_eq!(mappings[&hashes[26]], "@early:agent.finances.example");
    // Old hashes are gone: one row per association.
    assert_eq!(count_hash_rows(&s).await, 27);

    // The CLI rotates too (another process on the same database).
    let url = s.app.config.database_url();
    let (code, out, err) = run_cli(
        s.dir.path(),
        &["keys", "rotate-pepper", "--batch-size", "10"],
        &[("ANNUAIRE_DATABASE__URL", url.as_str())],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pepper #3 replaces #2"), "{out}");
    assert!(out.contains("27 associations rehashed"), "{out}");
    let third = pepper(&s, &token).await;
    assert_ne!(third, new);
    let hashes: Vec<String> = all
        .iter()
        .map(|a| lookup_hash(a, "email", &third))
        .collect();
    let mappings = lookup(&s, &token, "sha256", &third, &hashes)
        .await
        .assert_ok()["mappings"]
        .clone();
    assert_eq!(mappings.as_object().unwrap().len(), 27);
    assert_eq!(count_hash_rows(&s).await, 27);
}

// ---- invitations ----

#[tokio::test]
async fn store_invite_stores_signs_and_flips_invited() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).manual_clock(START_MS).start().await;
    let sender = "@jean:agent.finances.example";
    let token = register(&s, &hs, sender).await;
    let address = "Marie.Curie@Finances.gouv.example";
    assert_eq!(internal_info(&s, address).await["invited"], json!(false));

    // Synapse's shape: empty strings for unset fields, and fields of its own.
    let mut body = invite_body(address, sender);
    body["room_alias"] = json!("");
    body["room_avatar_url"] = json!("");
    body["room_type"] = json!("");
    body["sender_avatar_url"] = json!("");
    body["org.matrix.web_client_location"] = json!("https://app.example");
    let r = post_auth(&s, &format!("{V2}/store-invite"), &token, &body)
        .await
        .assert_ok();
    let invite_token = r["token"].as_str().unwrap().to_string();
    assert!(!invite_token.is_empty() && invite_token.len() <= 255);
    assert!(invite_token.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(r["display_name"], "m…@f…");
    let keys = r["public_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[0]["public_key"],
        json!(s.app.identity.signing_key().public_key_base64())
    );
    assert_eq!(
        keys[0]["key_validity_url"],
        "https://is.test.example/_matrix/identity/v2/pubkey/isvalid"
    );
    assert_eq!(
        keys[1]["key_validity_url"],
        "https://is.test.example/_matrix/identity/v2/pubkey/ephemeral/isvalid"
    );
    let ephemeral = keys[1]["public_key"].as_str().unwrap().to_string();
    assert_ne!(ephemeral, keys[0]["public_key"].as_str().unwrap());
    let ephemeral_valid = async |key: &str| {
        let url = reqwest::Url::parse_with_params(
            &s.url(&format!("{V2}/pubkey/ephemeral/isvalid")),
            &[("public_key", key)],
        )
        .unwrap();
        Reply::from(s.client.get(url).send().await.unwrap())
            .await
            .assert_ok()["valid"]
            .clone()
    };
    assert_eq!(ephemeral_valid(&ephemeral).await, json!(true));
    assert_eq!(
        ephemeral_valid(&s.app.identity.signing_key().public_key_base64()).await,
        json!(false),
        "the long-term key is not an ephemeral key"
    );
    // The invited address (normalised) is now invited, as the registration check sees it.
    assert_eq!(internal_info(&s, address).await["invited"], json!(true));
    assert_eq!(
        internal_info(&s, "marie.curie@finances.gouv.example").await["invited"],
        json!(true)
    );
    assert_eq!(
        internal_info(&s, "other@finances.gouv.example").await["invited"],
        json!(false)
    );

    // sign-ed25519: signs {mxid, sender, token} with the given key, for the caller only.
    let invitee = "@marie.curie:agent.finances.example";
    let invitee_token = register(&s, &hs, invitee).await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let signed = post_auth(
        &s,
        &format!("{V2}/sign-ed25519"),
        &invitee_token,
        &json!({"mxid": invitee, "token": invite_token, "private_key": key.to_seed_base64()}),
    )
    .await
    .assert_ok();
    assert_eq!(signed["mxid"], invitee);
    assert_eq!(signed["sender"], sender);
    assert_eq!(signed["token"], json!(invite_token));
    verify_json(
        &signed,
        "is.test.example",
        "ed25519:0",
        &key.public_key_base64(),
    )
    .unwrap();
    post_auth(
        &s,
        &format!("{V2}/sign-ed25519"),
        &invitee_token,
        &json!({"mxid": sender, "token": invite_token, "private_key": key.to_seed_base64()}),
    )
    .await
    .assert_error(403, "M_UNAUTHORIZED");
    post_auth(
        &s,
        &format!("{V2}/sign-ed25519"),
        &invitee_token,
        &json!({"mxid": invitee, "token": "unknown", "private_key": key.to_seed_base64()}),
    )
    .await
    .assert_error(404, "M_UNRECOGNIZED");
    post_auth(
        &s,
        &format!("{V2}/sign-ed25519"),
        &invitee_token,
        &json!({"mxid": invitee, "token": invite_token, "private_key": "short"}),
    )
    .await
    .assert_error(400, "M_INVALID_PARAM");
    post_auth(
        &s,
        &format!("{V2}/sign-ed25519"),
        &invitee_token,
        &json!({"mxid": invitee, "token": invite_token}),
    )
    .await
    .assert_error(400, "M_MISSING_PARAMS");

    // Invitations expire (invites.validity, 7 days by default).
    s.clock.as_ref().unwrap().advance(7 * 24 * 3600 * 1000);
    assert_eq!(internal_info(&s, address).await["invited"], json!(false));
    assert_eq!(ephemeral_valid(&ephemeral).await, json!(false));
    post_auth(
        &s,
        &format!("{V2}/sign-ed25519"),
        &invitee_token,
        &json!({"mxid": invitee, "token": invite_token, "private_key": key.to_seed_base64()}),
    )
    .await
    .assert_error(404, "M_UNRECOGNIZED");
    // A day later the purge job deletes it.
    s.clock.as_ref().unwrap().advance(24 * 3600 * 1000 + 1);
    let now = clock_now(&s);
    let (_, invites) = s
        .app
        .db
        .run(move |conn| annuaire::identity::purge_expired(conn, now))
        .await
        .unwrap();
    assert_eq!(invites, 1);
}

#[tokio::test]
async fn store_invite_rules() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| {
            c.invites.per_sender = WindowLimit {
                max: 3,
                within: HumanDuration(Duration::from_secs(3600)),
            };
            c.invites.per_address = WindowLimit {
                max: 2,
                within: HumanDuration(Duration::from_secs(3600)),
            };
        })
        .manual_clock(START_MS)
        .start()
        .await;
    let sender = "@jean:agent.finances.example";
    let token = register(&s, &hs, sender).await;
    let path = format!("{V2}/store-invite");
    let store = async |token: &str, address: &str, sender: &str| {
        post_auth(&s, &path, token, &invite_body(address, sender)).await
    };
    // The sender must be the caller.
    store(
        &token,
        "a@finances.gouv.example",
        "@other:agent.finances.example",
    )
    .await
    .assert_error(403, "M_UNAUTHORIZED");
    // Only email; valid addresses; a room ID.
    let mut body = invite_body("a@finances.gouv.example", sender);
    body["medium"] = json!("msisdn");
    post_auth(&s, &path, &token, &body)
        .await
        .assert_error(400, "M_UNRECOGNIZED");
    store(&token, "not-an-address", sender)
        .await
        .assert_error(400, "M_INVALID_EMAIL");
    let mut body = invite_body("a@finances.gouv.example", sender);
    body["room_id"] = json!("");
    post_auth(&s, &path, &token, &body)
        .await
        .assert_error(400, "M_INVALID_PARAM");
    let mut body = invite_body("a@finances.gouv.example", sender);
    body.as_object_mut().unwrap().remove("room_id");
    post_auth(&s, &path, &token, &body)
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    // A bound address: the invitee is already on Matrix.
    bind_directly(
        &s,
        "bound@finances.gouv.example",
        "@bound:agent.finances.example",
    )
    .await;
    let r = store(&token, "Bound@finances.gouv.example", sender).await;
    r.assert_error(400, "M_THREEPID_IN_USE");
    assert_eq!(r.json()["mxid"], "@bound:agent.finances.example");
    // A denied address: no invitation (and so no mail).
    store(&token, "x@webmail.finances.gouv.example", sender)
        .await
        .assert_error(403, "M_THREEPID_DENIED");
    store(&token, "x@gmail.example", sender)
        .await
        .assert_error(403, "M_THREEPID_DENIED");
    assert_eq!(
        internal_info(&s, "x@gmail.example").await["invited"],
        json!(false)
    );
    // Per address: 2 within the hour, whoever sends them.
    let other = "@paul:agent.finances.example";
    let other_token = register(&s, &hs, other).await;
    store(&token, "one@finances.gouv.example", sender)
        .await
        .assert_ok();
    store(&other_token, "one@finances.gouv.example", other)
        .await
        .assert_ok();
    let r = store(&token, "one@finances.gouv.example", sender).await;
    r.assert_error(429, "M_LIMIT_EXCEEDED");
    assert_eq!(r.json()["retry_after_ms"], json!(3_600_000));
    // Per sender: 3 within the hour (the refused ones above did not count).
    store(&token, "two@finances.gouv.example", sender)
        .await
        .assert_ok();
    s.clock.as_ref().unwrap().advance(60_000);
    store(&token, "three@finances.gouv.example", sender)
        .await
        .assert_ok();
    let r = store(&token, "four@finances.gouv.example", sender).await;
    r.assert_error(429, "M_LIMIT_EXCEEDED");
    assert_eq!(r.json()["retry_after_ms"], json!(3_600_000 - 60_000));
    assert!(r.header("retry-after").is_some());
    store(&other_token, "four@finances.gouv.example", other)
        .await
        .assert_ok();
    // The window slides.
    s.clock.as_ref().unwrap().advance(3_600_000 - 60_000);
    store(&token, "four@finances.gouv.example", sender)
        .await
        .assert_ok();
    // No token.
    s.post(&path, &invite_body("z@finances.gouv.example", sender))
        .await
        .assert_error(401, "M_UNAUTHORIZED");
}

// ---- the policy endpoints ----

#[tokio::test]
async fn info_tells_where_a_bound_address_lives() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| c.http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()])
        .start()
        .await;
    // Not bound: the policy's answer, no new_hs.
    let body = info(&s, "marie@finances.gouv.example", None).await;
    assert_eq!(body["hs"], FINANCES_HS);
    assert!(body.get("new_hs").is_none(), "{body}");
    // Bound on the homeserver the policy assigns (or its shadow): unchanged.
    bind_directly(
        &s,
        "marie@finances.gouv.example",
        "@marie:agent.finances.example",
    )
    .await;
    let body = info(&s, "marie@finances.gouv.example", None).await;
    assert_eq!(body["hs"], FINANCES_HS);
    assert!(body.get("new_hs").is_none(), "{body}");
    bind_directly(
        &s,
        "paul@finances.gouv.example",
        "@paul:public.finances.example",
    )
    .await;
    let body = info(&s, "paul@finances.gouv.example", Some("198.51.100.7")).await;
    assert_eq!(body["hs"], "public.finances.example");
    assert!(body.get("new_hs").is_none(), "{body}");
    // Bound elsewhere: hs is where the account is, new_hs where policy now puts the address.
    bind_directly(
        &s,
        "luc@finances.gouv.example",
        "@luc:agent.justice.example",
    )
    .await;
    let body = info(&s, "Luc@finances.gouv.example", None).await;
    assert_eq!(body["hs"], JUSTICE_HS);
    assert_eq!(body["new_hs"], FINANCES_HS);
    assert_eq!(body["decision"], "allowed");
    // An outside caller gets the public homeserver as new_hs.
    let body = info(&s, "luc@finances.gouv.example", Some("198.51.100.7")).await;
    assert_eq!(body["hs"], JUSTICE_HS);
    assert_eq!(body["new_hs"], "public.finances.example");
    // Bound, but the policy now refuses the address: hs says where it is, no new_hs.
    bind_directly(
        &s,
        "old@webmail.finances.gouv.example",
        "@old:agent.finances.example",
    )
    .await;
    let body = info(&s, "old@webmail.finances.gouv.example", None).await;
    assert_eq!(body["hs"], FINANCES_HS);
    assert_eq!(body["decision"], "denied");
    assert!(body.get("new_hs").is_none(), "{body}");
}

// ---- HTTPS ----

struct Pki {
    ca_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

/// A throwaway CA and a leaf for 127.0.0.1 and localhost (rustls refuses a self-signed leaf
/// used as its own CA).
fn pki() -> Pki {
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}

fn rustls_server_config(pki: &Pki) -> rustls::ServerConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(pki.leaf_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.leaf_key_pem.as_bytes()).unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
}

#[tokio::test]
async fn the_identity_service_over_https() {
    crate::support::install_crypto();
    let pki = pki();
    // The homeserver is HTTPS too, trusted through federation.ca_file.
    let hs = Homeserver::start(Some(rustls_server_config(&pki)));
    assert!(hs.base.starts_with("https://"));
    let hs_base = hs.base.clone();
    let (leaf, key, ca) = (
        pki.leaf_pem.clone(),
        pki.leaf_key_pem.clone(),
        pki.ca_pem.clone(),
    );
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let s = Builder::new()
        .config(move |c, dir| {
            c.policy.allowlists_dir = write_allowlists(dir);
            std::fs::write(dir.join("cert.pem"), &leaf).unwrap();
            std::fs::write(dir.join("key.pem"), &key).unwrap();
            std::fs::write(dir.join("ca.pem"), &ca).unwrap();
            c.http.tls.cert = Some(dir.join("cert.pem"));
            c.http.tls.key = Some(dir.join("key.pem"));
            c.federation.ca_file = Some(dir.join("ca.pem"));
            c.federation.homeservers.insert(FINANCES_HS.into(), hs_base);
        })
        .client(client)
        .start()
        .await;
    assert!(s.base.starts_with("https://"));
    let sender = "@jean:agent.finances.example";
    let token = register(&s, &hs, sender).await;
    assert_eq!(
        get_auth(&s, &format!("{V2}/account"), &token)
            .await
            .assert_ok()["user_id"],
        sender
    );
    bind_directly(
        &s,
        "marie@finances.gouv.example",
        "@marie:agent.finances.example",
    )
    .await;
    let pepper = pepper(&s, &token).await;
    let hash = lookup_hash("marie@finances.gouv.example", "email", &pepper);
    assert_eq!(
        lookup(&s, &token, "sha256", &pepper, std::slice::from_ref(&hash))
            .await
            .assert_ok()["mappings"][&hash],
        "@marie:agent.finances.example"
    );
    post_auth(
        &s,
        &format!("{V2}/store-invite"),
        &token,
        &invite_body("paul@finances.gouv.example", sender),
    )
    .await
    .assert_ok();
    assert_eq!(
        internal_info(&s, "paul@finances.gouv.example").await["invited"],
        json!(true)
    );
}
