//! The Matrix Identity Service API over HTTP: accounts (OpenID against a homeserver double),
//! terms, public keys, hashed lookups and pepper rotation, store-invite and sign-ed25519, the
//! policy endpoints' `invited` and `new_hs`, the `keys` CLI, binds and unbinds (X-Matrix signed
//! by the double), invitation delivery (`onbind`, recorded by the double) and mails, the
//! validation endpoints' authentication, and the whole journey over HTTPS.

use std::sync::Arc;
use std::time::Duration;

use annuaire::config::{HumanDuration, WindowLimit};
use annuaire::identity::associations::{self, Association};
use annuaire::matrix::hashing::lookup_hash;
use annuaire::matrix::signing::{SigningKey, verify_json};
use annuaire::store::identity as store;
use serde_json::{Value, json};

use crate::support::fixtures::{
    FINANCES, FINANCES_HS, JUSTICE, JUSTICE_HS, TERMS, with_terms, write_allowlists,
};
use crate::support::homeserver::{Homeserver, UNBIND_PATH, sign_unbind_with};
use crate::support::{Builder, Reply, TestServer, eventually, run_cli};

const V2: &str = "/_matrix/identity/v2";
const START_MS: i64 = 1_800_000_000_000;

// ---- helpers ----

/// Allowlists (finances only), both homeservers routed to the double.
pub(crate) fn builder(hs: &Homeserver) -> Builder {
    let base = hs.base.clone();
    Builder::new().config(move |c, dir| {
        c.policy.allowlists_dir = write_allowlists(dir, &[FINANCES]);
        c.policy.reload_interval = HumanDuration(Duration::from_millis(200));
        for name in [FINANCES_HS, JUSTICE_HS, "public.finances.example"] {
            c.federation.homeservers.insert(name.into(), base.clone());
        }
    })
}

fn server_of(user_id: &str) -> &str {
    user_id.split_once(':').unwrap().1
}

pub(crate) async fn register_reply(s: &TestServer, hs: &Homeserver, user_id: &str) -> Reply {
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

pub(crate) async fn register(s: &TestServer, hs: &Homeserver, user_id: &str) -> String {
    let body = register_reply(s, hs, user_id).await.assert_ok();
    body["token"].as_str().unwrap().to_string()
}

pub(crate) async fn get_auth(s: &TestServer, path: &str, token: &str) -> Reply {
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

pub(crate) async fn post_auth(s: &TestServer, path: &str, token: &str, body: &Value) -> Reply {
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

/// Binds an address straight into the store, then has the server read the change feed as the
/// bind endpoint does after a bind (so that its in-memory lookup index has it at once).
pub(crate) async fn bind_directly(s: &TestServer, address: &str, mxid: &str) {
    let a = Association::new("email", address, mxid, s.app.clock.now_ms());
    s.app
        .db
        .run(move |conn| associations::record(conn, &a))
        .await
        .unwrap();
    s.app.identity.sync_now().await.unwrap();
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

pub(crate) fn invite_body(address: &str, sender: &str) -> Value {
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
    write_allowlists(s.dir.path(), &[JUSTICE]);
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
    let s = with_terms(builder(&hs)).start().await;
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
    // The server learns of the switch from the change feed (its background job reads it every
    // 200 ms); reading it now keeps the test deterministic.
    s.app.identity.sync_now().await.unwrap();
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
    s.app.identity.sync_now().await.unwrap();
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

    // sign-ed25519 signs {mxid, sender, token} with the invitation's own key only (the one
    // the mail carries; tests/it/invites.rs accepts with it), for the caller only.
    let invitee = "@marie.curie:agent.finances.example";
    let invitee_token = register(&s, &hs, invitee).await;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    post_auth(
        &s,
        &format!("{V2}/sign-ed25519"),
        &invitee_token,
        &json!({"mxid": invitee, "token": invite_token, "private_key": key.to_seed_base64()}),
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
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
            c.policy.allowlists_dir = write_allowlists(dir, &[FINANCES]);
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

// ---- binds and unbinds ----

const REQUEST_TOKEN: &str = "/_matrix/identity/v2/validate/email/requestToken";
const SUBMIT_TOKEN: &str = "/_matrix/identity/v2/validate/email/submitToken";
const GET_VALIDATED: &str = "/_matrix/identity/v2/3pid/getValidated3pid";

/// The `.eml` of the outbox row (kind, dedupe key), once the file transport sent it.
pub(crate) async fn sent_mail(s: &TestServer, kind: &str, key: &str) -> std::path::PathBuf {
    let mut message_id = String::new();
    eventually(Duration::from_secs(20), "the mail is sent", async || {
        match crate::validation::outbox(s)
            .await
            .into_iter()
            .find(|r| r.kind == kind && r.dedupe_key == key)
        {
            Some(r) if r.status == "sent" => {
                message_id = r.message_id;
                true
            }
            _ => false,
        }
    })
    .await;
    s.dir.path().join("mail").join(format!("{message_id}.eml"))
}

/// requestToken as `token`'s account, the token from the mail, submitToken: the session id.
pub(crate) async fn validate(s: &TestServer, token: &str, address: &str, secret: &str) -> String {
    let r = post_auth(
        s,
        REQUEST_TOKEN,
        token,
        &json!({"client_secret": secret, "email": address, "send_attempt": 1}),
    )
    .await;
    let sid = r.assert_ok()["sid"].as_str().unwrap().to_string();
    let raw =
        std::fs::read_to_string(sent_mail(s, "verification", &format!("{sid}:1")).await).unwrap();
    let mailed = crate::validation::token_in(&raw);
    post_auth(
        s,
        SUBMIT_TOKEN,
        token,
        &json!({"sid": sid, "client_secret": secret, "token": mailed}),
    )
    .await
    .assert_ok();
    sid
}

async fn bind(s: &TestServer, token: &str, sid: &str, secret: &str, mxid: &str) -> Reply {
    post_auth(
        s,
        &format!("{V2}/3pid/bind"),
        token,
        &json!({"sid": sid, "client_secret": secret, "mxid": mxid}),
    )
    .await
}

pub(crate) fn unbind_body(mxid: &str, address: &str) -> Value {
    json!({"mxid": mxid, "threepid": {"medium": "email", "address": address}})
}

/// POST /3pid/unbind with an optional `Authorization` header value.
async fn unbind(s: &TestServer, body: &Value, authorization: Option<&str>) -> Reply {
    let mut req = s.client.post(s.url(UNBIND_PATH)).json(body);
    if let Some(value) = authorization {
        req = req.header("Authorization", value);
    }
    Reply::from(req.send().await.unwrap()).await
}

/// Who the address (normalised) is bound to, from the store.
async fn bound_to(s: &TestServer, address: &str) -> Option<String> {
    let address = address.to_string();
    s.app
        .db
        .run(move |conn| store::association(conn, "email", &address))
        .await
        .unwrap()
        .map(|a| a.mxid)
}

async fn looked_up(s: &TestServer, token: &str, address: &str) -> Option<String> {
    let pepper = pepper(s, token).await;
    let hash = lookup_hash(address, "email", &pepper);
    let body = lookup(s, token, "sha256", &pepper, std::slice::from_ref(&hash))
        .await
        .assert_ok();
    body["mappings"][&hash].as_str().map(String::from)
}

#[tokio::test]
async fn bind_answers_a_signed_association_and_a_new_bind_replaces_the_old() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).manual_clock(START_MS).start().await;
    let marie = "@marie:agent.finances.example";
    let token = register(&s, &hs, marie).await;
    let address = "marie.curie@finances.gouv.example";
    let sid = validate(&s, &token, "Marie.Curie@Finances.GOUV.example", "secret-1").await;
    let signed = bind(&s, &token, &sid, "secret-1", marie).await.assert_ok();
    let mut fields: Vec<&str> = signed
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "address",
            "medium",
            "mxid",
            "not_after",
            "not_before",
            "signatures",
            "ts"
        ]
    );
    assert_eq!(signed["address"], address);
    assert_eq!(signed["medium"], "email");
    assert_eq!(signed["mxid"], marie);
    assert_eq!(signed["ts"], START_MS);
    assert_eq!(signed["not_before"], START_MS);
    assert!(signed["not_after"].as_i64().unwrap() > START_MS);
    verify_json(
        &signed,
        "is.test.example",
        "ed25519:0",
        &s.app.identity.signing_key().public_key_base64(),
    )
    .unwrap();
    assert_eq!(looked_up(&s, &token, address).await.as_deref(), Some(marie));
    assert_eq!(count_hash_rows(&s).await, 1);

    // The shadow homeserver's users may bind the address too, and the new bind replaces the
    // old one: one association, one hash, found for its new owner.
    let shadow = "@marie:public.finances.example";
    let shadow_token = register(&s, &hs, shadow).await;
    let sid2 = validate(&s, &shadow_token, address, "secret-2").await;
    bind(&s, &shadow_token, &sid2, "secret-2", shadow)
        .await
        .assert_ok();
    assert_eq!(
        looked_up(&s, &token, address).await.as_deref(),
        Some(shadow)
    );
    assert_eq!(count_hash_rows(&s).await, 1);
    // A validated session can be used again while it lives: the first user binds it back.
    s.clock.as_ref().unwrap().advance(60_000);
    let again = bind(&s, &token, &sid, "secret-1", marie).await.assert_ok();
    assert_eq!(again["ts"], START_MS + 60_000);
    assert_eq!(bound_to(&s, address).await.as_deref(), Some(marie));
    let count = s.app.db.run(store::count_associations).await.unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn bind_errors() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|_, dir| {
            write_allowlists(dir, &[JUSTICE]);
        })
        .manual_clock(START_MS)
        .start()
        .await;
    let path = format!("{V2}/3pid/bind");
    let marie = "@marie:agent.finances.example";
    let token = register(&s, &hs, marie).await;
    // No token; missing parameters.
    s.post(
        &path,
        &json!({"sid": "x", "client_secret": "y", "mxid": marie}),
    )
    .await
    .assert_error(401, "M_UNAUTHORIZED");
    post_auth(&s, &path, &token, &json!({"sid": "x", "mxid": marie}))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    // Session errors, as the spec says.
    bind(&s, &token, "nosuchsession", "secret", marie)
        .await
        .assert_error(404, "M_NO_VALID_SESSION");
    let r = post_auth(
        &s,
        REQUEST_TOKEN,
        &token,
        &json!({"client_secret": "pending", "email": "marie@finances.gouv.example", "send_attempt": 1}),
    )
    .await;
    let pending = r.assert_ok()["sid"].as_str().unwrap().to_string();
    bind(&s, &token, &pending, "pending", marie)
        .await
        .assert_error(400, "M_SESSION_NOT_VALIDATED");
    let sid = validate(&s, &token, "marie@finances.gouv.example", "s1").await;
    bind(&s, &token, &sid, "wrong-secret", marie)
        .await
        .assert_error(404, "M_NO_VALID_SESSION");
    // Only to the caller's own Matrix ID.
    bind(&s, &token, &sid, "s1", "@paul:agent.finances.example")
        .await
        .assert_error(403, "M_UNAUTHORIZED");
    // A user of another homeserver than the address's (or its shadow).
    let luc = "@luc:agent.justice.example";
    let luc_token = register(&s, &hs, luc).await;
    let luc_sid = validate(&s, &luc_token, "luc@finances.gouv.example", "s2").await;
    let r = bind(&s, &luc_token, &luc_sid, "s2", luc).await;
    r.assert_error(403, "M_BINDING_NOT_PERMITTED");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("agent.finances.example"),
        "{}",
        r.text
    );
    // Validated sessions expire (validation.session_lifetime, a day by default).
    s.clock.as_ref().unwrap().advance(24 * 3600 * 1000);
    bind(&s, &token, &sid, "s1", marie)
        .await
        .assert_error(400, "M_SESSION_EXPIRED");
    let count = s.app.db.run(store::count_associations).await.unwrap();
    assert_eq!(count, 0, "nothing was bound");

    // Without policy.bind_requires_matching_homeserver, any homeserver will do; a denied
    // address (validated here because validation.require_allowed is off) still may not be
    // bound.
    let open = builder(&hs)
        .config(|c, dir| {
            write_allowlists(dir, &[JUSTICE]);
            c.policy.bind_requires_matching_homeserver = false;
            c.validation.require_allowed = false;
        })
        .start()
        .await;
    let luc_token = register(&open, &hs, luc).await;
    let luc_sid = validate(&open, &luc_token, "luc@finances.gouv.example", "s2").await;
    bind(&open, &luc_token, &luc_sid, "s2", luc)
        .await
        .assert_ok();
    let denied = validate(&open, &luc_token, "luc@webmail.finances.gouv.example", "s3").await;
    bind(&open, &luc_token, &denied, "s3", luc)
        .await
        .assert_error(403, "M_THREEPID_DENIED");
    assert_eq!(
        bound_to(&open, "luc@webmail.finances.gouv.example").await,
        None
    );
}

#[tokio::test]
async fn unbind_three_ways_and_only_bad_credentials_are_refused() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| c.http.public_base_url = Some("https://id.finances.example:8443".into()))
        .manual_clock(START_MS)
        .start()
        .await;
    let marie = "@marie:agent.finances.example";
    let token = register(&s, &hs, marie).await;
    let address = "marie@finances.gouv.example";
    let sid = validate(&s, &token, address, "s1").await;
    bind(&s, &token, &sid, "s1", marie).await.assert_ok();
    // The body as Synapse sends it: the address as the user typed it.
    let body = unbind_body(marie, "Marie@Finances.gouv.example");

    // Bad or missing credentials: refused, and the association stays.
    unbind(&s, &body, None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    let impostor = SigningKey::generate(&mut rand::rngs::OsRng)
        .with_key_id("ed25519:hs1")
        .unwrap();
    let forged = sign_unbind_with(&impostor, FINANCES_HS, "is.test.example", &body);
    unbind(&s, &body, Some(&forged))
        .await
        .assert_error(403, "M_FORBIDDEN");
    let elsewhere = hs.sign_unbind(FINANCES_HS, "other-is.example", &body);
    unbind(&s, &body, Some(&elsewhere))
        .await
        .assert_error(403, "M_FORBIDDEN");
    let other_content = hs.sign_unbind(
        FINANCES_HS,
        "is.test.example",
        &unbind_body(marie, "other@finances.gouv.example"),
    );
    unbind(&s, &body, Some(&other_content))
        .await
        .assert_error(403, "M_FORBIDDEN");
    let other_origin = hs.sign_unbind(JUSTICE_HS, "is.test.example", &body);
    unbind(&s, &body, Some(&other_origin))
        .await
        .assert_error(403, "M_FORBIDDEN");
    unbind(&s, &body, Some("X-Matrix garbage"))
        .await
        .assert_error(403, "M_FORBIDDEN");
    unbind(&s, &body, Some("Bearer unknown-token"))
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    let paul = "@paul:agent.finances.example";
    let paul_token = register(&s, &hs, paul).await;
    unbind(&s, &body, Some(&format!("Bearer {paul_token}")))
        .await
        .assert_error(403, "M_FORBIDDEN");
    let paul_sid = validate(&s, &paul_token, "paul@finances.gouv.example", "p1").await;
    let mut with_session = body.clone();
    with_session["sid"] = json!(paul_sid);
    with_session["client_secret"] = json!("p1");
    unbind(&s, &with_session, None)
        .await
        .assert_error(403, "M_FORBIDDEN");
    with_session["sid"] = json!("nosuchsession");
    unbind(&s, &with_session, None)
        .await
        .assert_error(403, "M_FORBIDDEN");
    with_session
        .as_object_mut()
        .unwrap()
        .remove("client_secret");
    unbind(&s, &with_session, None)
        .await
        .assert_error(400, "M_INVALID_PARAM");
    unbind(&s, &json!({"mxid": marie}), None)
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    assert_eq!(bound_to(&s, address).await.as_deref(), Some(marie));

    // Valid credentials for another Matrix ID than the address's: nothing to unbind.
    let not_hers = unbind_body(paul, address);
    let signed = hs.sign_unbind(FINANCES_HS, "is.test.example", &not_hers);
    assert_eq!(
        unbind(&s, &not_hers, Some(&signed)).await.assert_ok(),
        json!({})
    );
    assert_eq!(bound_to(&s, address).await.as_deref(), Some(marie));

    // 1. Signed by the user's homeserver, as Synapse does.
    let signed = hs.sign_unbind(FINANCES_HS, "is.test.example", &body);
    assert_eq!(
        unbind(&s, &body, Some(&signed)).await.assert_ok(),
        json!({})
    );
    assert_eq!(bound_to(&s, address).await, None, "deleted, not kept");
    assert_eq!(looked_up(&s, &token, address).await, None);
    assert_eq!(count_hash_rows(&s).await, 0);
    // Unbinding what is not bound: {}.
    assert_eq!(
        unbind(&s, &body, Some(&signed)).await.assert_ok(),
        json!({})
    );
    // Addressed to the public base URL's host, which is what Synapse users type.
    bind(&s, &token, &sid, "s1", marie).await.assert_ok();
    let signed = hs.sign_unbind(FINANCES_HS, "id.finances.example:8443", &body);
    unbind(&s, &body, Some(&signed)).await.assert_ok();
    assert_eq!(bound_to(&s, address).await, None);

    // 2. With the validation session of the address.
    bind(&s, &token, &sid, "s1", marie).await.assert_ok();
    let mut with_session = body.clone();
    with_session["sid"] = json!(sid);
    with_session["client_secret"] = json!("s1");
    assert_eq!(unbind(&s, &with_session, None).await.assert_ok(), json!({}));
    assert_eq!(bound_to(&s, address).await, None);

    // 3. With the user's own access token.
    bind(&s, &token, &sid, "s1", marie).await.assert_ok();
    assert_eq!(
        unbind(&s, &body, Some(&format!("Bearer {token}")))
            .await
            .assert_ok(),
        json!({})
    );
    assert_eq!(bound_to(&s, address).await, None);
    assert_eq!(looked_up(&s, &token, address).await, None);
}

// ---- invitation mails and delivery ----

#[tokio::test]
async fn invitation_mails_are_queued_and_sent_in_the_senders_language() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| c.invites.web_client_url = Some("https://app.tchap.example/".into()))
        .manual_clock(START_MS)
        .start()
        .await;
    let jean = "@jean:agent.finances.example";
    let token = register(&s, &hs, jean).await;
    let mut body = invite_body("Marie@Finances.gouv.example", jean);
    body["room_name"] = json!("Budget <2027>");
    body["org.matrix.web_client_location"] = json!("https://phishing.example");
    let r = Reply::from(
        s.client
            .post(s.url(&format!("{V2}/store-invite")))
            .bearer_auth(&token)
            .header("Accept-Language", "en-GB,en;q=0.8")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let english = r.assert_ok()["token"].as_str().unwrap().to_string();
    let r = post_auth(
        &s,
        &format!("{V2}/store-invite"),
        &token,
        &invite_body("paul@finances.gouv.example", jean),
    )
    .await;
    let french = r.assert_ok()["token"].as_str().unwrap().to_string();

    let eml = crate::mail_smtp::Parsed::read(&sent_mail(&s, "invite", &english).await);
    assert_eq!(eml.header("to"), "marie@finances.gouv.example");
    assert_eq!(eml.header("content-language"), "en");
    assert!(eml.header("subject").contains("Jean Dupont"), "{:?}", eml.0);
    let text = eml.part("text/plain");
    let html = eml.part("text/html");
    assert!(text.contains("Budget <2027>"), "{text}");
    assert!(html.contains("Budget &lt;2027&gt;"), "{html}");
    assert!(!html.contains("<2027>"), "{html}");
    assert!(
        text.contains("https://app.tchap.example/#/room/!room:agent.finances.example"),
        "{text}"
    );
    assert!(!text.contains("phishing") && !html.contains("phishing"));
    let eml = crate::mail_smtp::Parsed::read(&sent_mail(&s, "invite", &french).await);
    assert_eq!(eml.header("to"), "paul@finances.gouv.example");
    assert_eq!(eml.header("content-language"), "fr");
    assert!(eml.header("subject").contains("vous invite"), "{:?}", eml.0);

    // Refused invitations send nothing.
    post_auth(
        &s,
        &format!("{V2}/store-invite"),
        &token,
        &invite_body("x@webmail.finances.gouv.example", jean),
    )
    .await
    .assert_error(403, "M_THREEPID_DENIED");
    let invite_mails = crate::validation::outbox(&s)
        .await
        .into_iter()
        .filter(|r| r.kind == "invite")
        .count();
    assert_eq!(invite_mails, 2);
}

async fn invites_to(s: &TestServer, address: &str) -> Vec<annuaire::store::invites::InviteRow> {
    let address = address.to_string();
    s.app
        .db
        .run(move |conn| annuaire::store::invites::invites_to_address(conn, "email", &address))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_bind_delivers_the_pending_invitations_to_the_new_users_homeserver() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).manual_clock(START_MS).start().await;
    let jean = "@jean:agent.finances.example";
    let jean_token = register(&s, &hs, jean).await;
    let address = "marie@finances.gouv.example";
    let mut tokens = Vec::new();
    for room in [
        "!budget:agent.finances.example",
        "!rh:agent.finances.example",
    ] {
        let mut body = invite_body("Marie@finances.gouv.example", jean);
        body["room_id"] = json!(room);
        let r = post_auth(&s, &format!("{V2}/store-invite"), &jean_token, &body).await;
        tokens.push(r.assert_ok()["token"].as_str().unwrap().to_string());
    }
    // An invitation that expires before the bind is not delivered.
    let luc_address = "luc@finances.gouv.example";
    post_auth(
        &s,
        &format!("{V2}/store-invite"),
        &jean_token,
        &invite_body(luc_address, jean),
    )
    .await
    .assert_ok();
    assert_eq!(internal_info(&s, address).await["invited"], json!(true));
    assert!(hs.onbinds().is_empty());

    let marie = "@marie:agent.finances.example";
    let marie_token = register(&s, &hs, marie).await;
    let sid = validate(&s, &marie_token, address, "s1").await;
    bind(&s, &marie_token, &sid, "s1", marie).await.assert_ok();
    eventually(
        Duration::from_secs(20),
        "both invitations are delivered",
        async || {
            invites_to(&s, address)
                .await
                .iter()
                .all(|i| i.delivered_at.is_some())
        },
    )
    .await;
    let calls = hs.onbinds();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let public_key = s.app.identity.signing_key().public_key_base64();
    let mut delivered = Vec::new();
    for (status, body) in &calls {
        assert_eq!(*status, 200);
        assert_eq!(body["medium"], "email");
        assert_eq!(body["address"], address);
        assert_eq!(body["mxid"], marie);
        let invites = body["invites"].as_array().unwrap();
        assert_eq!(invites.len(), 1);
        let invite = &invites[0];
        assert_eq!(invite["medium"], "email");
        assert_eq!(invite["address"], address);
        assert_eq!(invite["mxid"], marie);
        assert_eq!(invite["sender"], jean);
        assert!(invite["room_id"].as_str().unwrap().starts_with('!'));
        let signed = &invite["signed"];
        assert_eq!(signed["mxid"], marie);
        verify_json(signed, "is.test.example", "ed25519:0", &public_key).unwrap();
        delivered.push(signed["token"].as_str().unwrap().to_string());
    }
    delivered.sort();
    tokens.sort();
    assert_eq!(delivered, tokens);
    for invite in invites_to(&s, address).await {
        assert_eq!(invite.delivery_mxid.as_deref(), Some(marie));
        assert_eq!(invite.delivery_attempts, 1);
        assert_eq!(invite.last_error, None);
        assert_eq!(invite.delivery_failed_at, None);
    }
    // Delivered: no longer waiting for a bind.
    assert_eq!(internal_info(&s, address).await["invited"], json!(false));

    // Eight days later, Luc's invitation has expired: his bind delivers nothing.
    s.clock.as_ref().unwrap().advance(8 * 24 * 3600 * 1000);
    let luc = "@luc:agent.finances.example";
    let luc_token = register(&s, &hs, luc).await;
    let sid = validate(&s, &luc_token, luc_address, "s2").await;
    bind(&s, &luc_token, &sid, "s2", luc).await.assert_ok();
    let invites = invites_to(&s, luc_address).await;
    assert_eq!(invites.len(), 1);
    assert_eq!(invites[0].delivery_mxid, None);
    assert_eq!(hs.onbinds().len(), 2);
}

/// The `onbind` calls for one invitation token.
fn onbinds_for(hs: &Homeserver, token: &str) -> Vec<u16> {
    hs.onbinds()
        .into_iter()
        .filter(|(_, body)| body["invites"][0]["signed"]["token"] == token)
        .map(|(status, _)| status)
        .collect()
}

#[tokio::test]
async fn failed_deliveries_are_retried_then_given_up() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| {
            c.invites.delivery_initial_backoff = HumanDuration(Duration::from_millis(100));
            c.invites.delivery_max_backoff = HumanDuration(Duration::from_millis(200));
            c.invites.delivery_max_attempts = 3;
        })
        .start()
        .await;
    let jean = "@jean:agent.finances.example";
    let jean_token = register(&s, &hs, jean).await;
    let store_invite = async |address: &str| {
        let r = post_auth(
            &s,
            &format!("{V2}/store-invite"),
            &jean_token,
            &invite_body(address, jean),
        )
        .await;
        r.assert_ok()["token"].as_str().unwrap().to_string()
    };
    let bind_as = async |local: &str| {
        let mxid = format!("@{local}:agent.finances.example");
        let address = format!("{local}@finances.gouv.example");
        let token = register(&s, &hs, &mxid).await;
        let sid = validate(&s, &token, &address, "s").await;
        bind(&s, &token, &sid, "s", &mxid).await.assert_ok();
    };

    // One failure, then the retry goes through.
    let first = store_invite("anne@finances.gouv.example").await;
    hs.fail_onbinds(1);
    bind_as("anne").await;
    eventually(Duration::from_secs(20), "the retry delivers", async || {
        invites_to(&s, "anne@finances.gouv.example").await[0]
            .delivered_at
            .is_some()
    })
    .await;
    let invite = invites_to(&s, "anne@finances.gouv.example").await.remove(0);
    assert_eq!(invite.delivery_attempts, 2);
    assert_eq!(invite.last_error, None);
    assert_eq!(onbinds_for(&hs, &first), [500, 200]);

    // A homeserver that keeps failing: given up after delivery_max_attempts.
    let second = store_invite("bruno@finances.gouv.example").await;
    hs.fail_onbinds(1_000);
    bind_as("bruno").await;
    eventually(
        Duration::from_secs(20),
        "the delivery is given up",
        async || {
            invites_to(&s, "bruno@finances.gouv.example").await[0]
                .delivery_failed_at
                .is_some()
        },
    )
    .await;
    let invite = invites_to(&s, "bruno@finances.gouv.example")
        .await
        .remove(0);
    assert_eq!(invite.delivery_attempts, 3);
    assert_eq!(invite.delivered_at, None);
    assert_eq!(invite.next_delivery_at, None);
    let error = invite.last_error.unwrap();
    assert!(error.contains("500"), "{error}");
    assert!(!error.contains('@'), "no address in the error: {error}");
    // Well past the backoff: no further attempt.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(onbinds_for(&hs, &second), [500, 500, 500]);
}

#[tokio::test]
async fn scheduled_deliveries_survive_a_restart() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| {
            c.invites.delivery_initial_backoff = HumanDuration(Duration::from_secs(3600));
            c.invites.delivery_max_backoff = HumanDuration(Duration::from_secs(3600));
        })
        .manual_clock(START_MS)
        .start()
        .await;
    let jean = "@jean:agent.finances.example";
    let jean_token = register(&s, &hs, jean).await;
    let address = "anne@finances.gouv.example";
    let r = post_auth(
        &s,
        &format!("{V2}/store-invite"),
        &jean_token,
        &invite_body(address, jean),
    )
    .await;
    let invite_token = r.assert_ok()["token"].as_str().unwrap().to_string();
    hs.fail_onbinds(1);
    let anne = "@anne:agent.finances.example";
    let token = register(&s, &hs, anne).await;
    let sid = validate(&s, &token, address, "s").await;
    bind(&s, &token, &sid, "s", anne).await.assert_ok();
    eventually(Duration::from_secs(20), "a failed attempt", async || {
        invites_to(&s, address).await[0].delivery_attempts == 1
    })
    .await;
    let invite = invites_to(&s, address).await.remove(0);
    assert_eq!(invite.next_delivery_at, Some(START_MS + 3_600_000));
    let config = s.app.config.as_ref().clone();
    let dir = s.dir.clone();
    s.stop();

    // Another instance, an hour later: it finds the delivery in the database.
    let s = Builder::in_dir(dir, config)
        .manual_clock(START_MS + 3_600_000)
        .start()
        .await;
    eventually(
        Duration::from_secs(20),
        "delivered after the restart",
        async || invites_to(&s, address).await[0].delivered_at.is_some(),
    )
    .await;
    assert_eq!(onbinds_for(&hs, &invite_token), [500, 200]);
    assert_eq!(invites_to(&s, address).await[0].delivery_attempts, 2);
}

// ---- the validation endpoints' authentication ----

#[tokio::test]
async fn validation_endpoints_need_an_identity_token_and_the_terms() {
    let hs = Homeserver::start(None);
    let s = with_terms(builder(&hs)).start().await;
    let address = "marie@finances.gouv.example";
    let request = json!({"client_secret": "s1", "email": address, "send_attempt": 1});
    // No token: 401, and nothing is stored or mailed.
    s.post(REQUEST_TOKEN, &request)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    s.post(
        SUBMIT_TOKEN,
        &json!({"sid": "x", "client_secret": "s1", "token": "t"}),
    )
    .await
    .assert_error(401, "M_UNAUTHORIZED");
    s.get(&format!("{GET_VALIDATED}?sid=x&client_secret=s1"))
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    assert!(crate::validation::outbox(&s).await.is_empty());
    // A token, but the terms are not accepted yet.
    let marie = "@marie:agent.finances.example";
    let token = register(&s, &hs, marie).await;
    post_auth(&s, REQUEST_TOKEN, &token, &request)
        .await
        .assert_error(403, "M_TERMS_NOT_SIGNED");
    post_auth(
        &s,
        &format!("{V2}/terms"),
        &token,
        &json!({"user_accepts": [
            "https://is.test.example/tos-1.0-en.html",
            "https://is.test.example/privacy-1.0-en.html",
        ]}),
    )
    .await
    .assert_ok();
    let r = post_auth(&s, REQUEST_TOKEN, &token, &request).await;
    let sid = r.assert_ok()["sid"].as_str().unwrap().to_string();
    // The link in the mail works without a token: the mailed token is the credential.
    let raw =
        std::fs::read_to_string(sent_mail(&s, "verification", &format!("{sid}:1")).await).unwrap();
    let mailed = crate::validation::token_in(&raw);
    let link = reqwest::Url::parse_with_params(
        &s.url(SUBMIT_TOKEN),
        &[
            ("sid", sid.as_str()),
            ("client_secret", "s1"),
            ("token", mailed.as_str()),
        ],
    )
    .unwrap();
    let page = Reply::from(s.client.get(link).send().await.unwrap()).await;
    assert_eq!(page.status, 200, "{}", page.text);
    // getValidated3pid with the token, in the header or the query string.
    let validated = get_auth(
        &s,
        &format!("{GET_VALIDATED}?sid={sid}&client_secret=s1"),
        &token,
    )
    .await
    .assert_ok();
    assert_eq!(validated["address"], address);
    s.get(&format!(
        "{GET_VALIDATED}?sid={sid}&client_secret=s1&access_token={token}"
    ))
    .await
    .assert_ok();
    s.get(&format!("{GET_VALIDATED}?sid={sid}&client_secret=s1"))
        .await
        .assert_error(401, "M_UNAUTHORIZED");

    // identity.require_auth = false: anonymous callers may validate.
    let open = builder(&hs)
        .config(|c, _| c.identity.require_auth = false)
        .start()
        .await;
    let r = open.post(REQUEST_TOKEN, &request).await;
    let sid = r.assert_ok()["sid"].as_str().unwrap().to_string();
    open.get(&format!("{GET_VALIDATED}?sid={sid}&client_secret=s1"))
        .await
        .assert_error(400, "M_SESSION_NOT_VALIDATED");
}

// ---- the "done when", over HTTPS ----

#[tokio::test]
async fn a_client_journey_over_https_from_registration_to_unbind() {
    crate::support::install_crypto();
    let pki = pki();
    let hs = Homeserver::start(Some(rustls_server_config(&pki)));
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
            c.policy.allowlists_dir = write_allowlists(dir, &[FINANCES]);
            std::fs::write(dir.join("terms.toml"), TERMS).unwrap();
            c.terms.file = Some(dir.join("terms.toml"));
            std::fs::write(dir.join("cert.pem"), &leaf).unwrap();
            std::fs::write(dir.join("key.pem"), &key).unwrap();
            std::fs::write(dir.join("ca.pem"), &ca).unwrap();
            c.http.tls.cert = Some(dir.join("cert.pem"));
            c.http.tls.key = Some(dir.join("key.pem"));
            c.federation.ca_file = Some(dir.join("ca.pem"));
            c.federation.homeservers.insert(FINANCES_HS.into(), hs_base);
            c.invites.web_client_url = Some("https://app.tchap.example".into());
        })
        .client(client)
        .start()
        .await;
    assert!(s.base.starts_with("https://"));
    // Register with an OpenID token from the homeserver, accept the terms.
    let marie = "@marie:agent.finances.example";
    let token = register(&s, &hs, marie).await;
    let terms = s.get(&format!("{V2}/terms")).await.assert_ok();
    let urls: Vec<&str> = terms["policies"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| {
            p["fr"]
                .get("url")
                .or(p["en"].get("url"))
                .unwrap()
                .as_str()
                .unwrap()
        })
        .collect();
    post_auth(
        &s,
        &format!("{V2}/terms"),
        &token,
        &json!({ "user_accepts": urls }),
    )
    .await
    .assert_ok();
    // Request and validate an email (the token read from the mail), bind it.
    let address = "marie@finances.gouv.example";
    let sid = validate(&s, &token, address, "journey").await;
    let signed = bind(&s, &token, &sid, "journey", marie).await.assert_ok();
    verify_json(
        &signed,
        "is.test.example",
        "ed25519:0",
        &s.app.identity.signing_key().public_key_base64(),
    )
    .unwrap();
    // Found by a hashed lookup (hash_details with the token in the query, as Synapse does).
    let details = s
        .get(&format!("{V2}/hash_details?access_token={token}"))
        .await
        .assert_ok();
    let pepper = details["lookup_pepper"].as_str().unwrap();
    let hash = lookup_hash(address, "email", pepper);
    let found = lookup(&s, &token, "sha256", pepper, std::slice::from_ref(&hash))
        .await
        .assert_ok();
    assert_eq!(found["mappings"][&hash], marie);
    // A 3PID invitation stored and signed.
    let r = post_auth(
        &s,
        &format!("{V2}/store-invite"),
        &token,
        &invite_body("paul@finances.gouv.example", marie),
    )
    .await
    .assert_ok();
    let invite_token = r["token"].as_str().unwrap().to_string();
    let private_key = crate::invites::mailed_private_key(&s, &invite_token).await;
    let signed_invite = post_auth(
        &s,
        &format!("{V2}/sign-ed25519"),
        &token,
        &json!({"mxid": marie, "token": invite_token, "private_key": private_key}),
    )
    .await
    .assert_ok();
    assert_eq!(signed_invite["token"], json!(invite_token));
    // Unbind, as Synapse does it (signed by the homeserver, over HTTPS both ways).
    let body = unbind_body(marie, address);
    let authorization = hs.sign_unbind(FINANCES_HS, "is.test.example", &body);
    assert_eq!(
        unbind(&s, &body, Some(&authorization)).await.assert_ok(),
        json!({})
    );
    let found = lookup(&s, &token, "sha256", pepper, std::slice::from_ref(&hash))
        .await
        .assert_ok();
    assert_eq!(found["mappings"], json!({}));
}

async fn directory_entry(
    s: &TestServer,
    mxid: &str,
) -> Option<annuaire::directory::DirectoryEntry> {
    s.app.directory.entry(mxid).await.unwrap()
}

async fn directory_finds(s: &TestServer, term: &str, mxid: &str) -> bool {
    let results = s
        .app
        .directory
        .search(term, None, None, annuaire::directory::Viewer::Operator)
        .await
        .unwrap();
    results.results.iter().any(|r| r.user_id == mxid)
}

#[tokio::test]
async fn binds_publish_directory_entries_and_unbinds_withdraw_them() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).manual_clock(START_MS).start().await;
    let marie = "@marie:agent.finances.example";
    let token = register(&s, &hs, marie).await;
    let first = "marie.curie@finances.gouv.example";
    let second = "m.curie@impots.finances.gouv.example";
    let sid = validate(&s, &token, first, "secret-1").await;
    bind(&s, &token, &sid, "secret-1", marie).await.assert_ok();
    let entry = directory_entry(&s, marie)
        .await
        .expect("an entry after the bind");
    assert_eq!(entry.name, "Marie Curie");
    assert_eq!(entry.organisation.as_deref(), Some("Finances"));
    assert!(directory_finds(&s, "mari cur", marie).await);

    // A second address of hers: unbinding it keeps her entry (the first is still bound).
    let sid2 = validate(&s, &token, second, "secret-2").await;
    bind(&s, &token, &sid2, "secret-2", marie).await.assert_ok();
    unbind(
        &s,
        &unbind_body(marie, second),
        Some(&format!("Bearer {token}")),
    )
    .await
    .assert_ok();
    assert!(
        directory_finds(&s, "mari cur", marie).await,
        "still bound by her first address"
    );

    // The first address moves to another account: Marie has nothing bound any more.
    let shadow = "@marie:public.finances.example";
    let shadow_token = register(&s, &hs, shadow).await;
    let sid3 = validate(&s, &shadow_token, first, "secret-3").await;
    bind(&s, &shadow_token, &sid3, "secret-3", shadow)
        .await
        .assert_ok();
    assert!(
        directory_entry(&s, marie).await.is_none(),
        "the previous owner is withdrawn"
    );
    assert!(directory_finds(&s, "marie curie", shadow).await);

    // Unbinding the last address removes the entry.
    unbind(
        &s,
        &unbind_body(shadow, first),
        Some(&format!("Bearer {shadow_token}")),
    )
    .await
    .assert_ok();
    assert!(directory_entry(&s, shadow).await.is_none());
    assert!(!directory_finds(&s, "marie", shadow).await);
}
