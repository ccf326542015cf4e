//! Bad input everywhere: every endpoint answers malformed, oversized or absurd requests with a
//! Matrix error (4xx with an `errcode`), never a 5xx, a panic or a non-JSON body.

use reqwest::Method;
use serde_json::Value;

use crate::support::{Builder, Reply, TestServer};

#[derive(Clone, Copy)]
enum Auth {
    None,
    Identity,
    Admin,
    Homeserver,
}

/// Every route with a body or a query worth attacking.
const ROUTES: &[(&str, &str, Auth)] = &[
    ("POST", "/_matrix/identity/v2/account/register", Auth::None),
    ("POST", "/_matrix/identity/v2/terms", Auth::Identity),
    ("POST", "/_matrix/identity/v2/lookup", Auth::Identity),
    ("POST", "/_matrix/identity/v2/3pid/bind", Auth::Identity),
    ("POST", "/_matrix/identity/v2/3pid/unbind", Auth::Identity),
    ("POST", "/_matrix/identity/v2/store-invite", Auth::Identity),
    ("POST", "/_matrix/identity/v2/sign-ed25519", Auth::Identity),
    ("POST", "/_matrix/identity/api/v1/sign-ed25519", Auth::None),
    (
        "POST",
        "/_matrix/identity/v2/validate/email/requestToken",
        Auth::Identity,
    ),
    (
        "POST",
        "/_matrix/identity/v2/validate/email/submitToken",
        Auth::Identity,
    ),
    (
        "POST",
        "/_matrix/client/v3/user_directory/search",
        Auth::Identity,
    ),
    (
        "POST",
        "/_matrix/client/r0/user_directory/search",
        Auth::Identity,
    ),
    (
        "POST",
        "/_matrix/identity/api/v1/user_directory/search",
        Auth::None,
    ),
    (
        "POST",
        "/_matrix/identity/api/v1/replicate_profiles",
        Auth::None,
    ),
    (
        "POST",
        "/_matrix/federation/unstable/org.matrix.msc4258/user_directory/search",
        Auth::None,
    ),
    (
        "POST",
        "/_matrix/federation/v3/user_directory/search",
        Auth::None,
    ),
    (
        "POST",
        "/_matrix/federation/unstable/fr.tchap/user_directory/search",
        Auth::None,
    ),
    ("POST", "/_annuaire/admin/v1/login", Auth::None),
    ("POST", "/_annuaire/admin/v1/rules", Auth::Admin),
    (
        "PUT",
        "/_annuaire/admin/v1/rules/r0000000000000000",
        Auth::Admin,
    ),
    ("POST", "/_annuaire/admin/v1/rules/import", Auth::Admin),
    (
        "PUT",
        "/_annuaire/admin/v1/directory/@jean:agent.finances.example/name",
        Auth::Admin,
    ),
    (
        "POST",
        "/_annuaire/admin/v1/directory/@jean:agent.finances.example/hide",
        Auth::Admin,
    ),
    (
        "DELETE",
        "/_annuaire/admin/v1/directory/@jean:agent.finances.example",
        Auth::Admin,
    ),
    ("POST", "/_annuaire/admin/v1/threepids/erase", Auth::Admin),
    ("POST", "/_annuaire/homeserver/v1/bind", Auth::Homeserver),
    ("POST", "/_annuaire/homeserver/v1/unbind", Auth::Homeserver),
    ("POST", "/_annuaire/homeserver/v1/profile", Auth::Homeserver),
    (
        "POST",
        "/_annuaire/homeserver/v1/deactivated",
        Auth::Homeserver,
    ),
    ("POST", "/_annuaire/account/v1/directory", Auth::Identity),
    (
        "POST",
        "/_annuaire/admin/v1/domain-requests/mairie.example/decline",
        Auth::Admin,
    ),
    (
        "POST",
        "/_annuaire/admin/v1/domain-requests/mairie.example/accept",
        Auth::Admin,
    ),
];

const QUERIES: &[(&str, Auth)] = &[
    ("/_matrix/identity/api/v1/info", Auth::None),
    ("/_matrix/identity/api/v1/internal-info", Auth::None),
    ("/_matrix/identity/v2/3pid/getValidated3pid", Auth::Identity),
    (
        "/_matrix/identity/v2/validate/email/submitToken",
        Auth::None,
    ),
    ("/_matrix/identity/v2/pubkey/isvalid", Auth::None),
    ("/_matrix/identity/v2/pubkey/ephemeral/isvalid", Auth::None),
    ("/_matrix/identity/v2/hash_details", Auth::Identity),
    ("/_annuaire/admin/v1/explain", Auth::Admin),
    ("/_annuaire/admin/v1/audit", Auth::Admin),
    ("/_annuaire/admin/v1/rules", Auth::Admin),
    ("/_annuaire/admin/v1/stats/attempts", Auth::Admin),
    ("/_annuaire/admin/v1/stats/directory", Auth::Admin),
    ("/_annuaire/admin/v1/stats/outbox", Auth::Admin),
    ("/_annuaire/admin/v1/directory", Auth::Admin),
    (
        "/_annuaire/admin/v1/directory/@jean:agent.finances.example",
        Auth::Admin,
    ),
    ("/_annuaire/homeserver/v1/display_name", Auth::Homeserver),
    ("/_annuaire/account/v1/data", Auth::Identity),
    ("/_annuaire/admin/v1/domain-requests", Auth::Admin),
    (
        "/_annuaire/admin/v1/domain-requests/mairie.example",
        Auth::Admin,
    ),
];

struct Fixture {
    s: TestServer,
    identity: String,
    admin: String,
    homeserver: String,
}

async fn fixture() -> Fixture {
    let s = Builder::new()
        .config(|c, _| c.http.max_body = annuaire::config::ByteSize(64 * 1024))
        .account("@agent:agent.finances.example")
        .start()
        .await;
    let identity = s.token.clone().expect("an identity account");
    {
        let mut conn = s.app.db.get().unwrap();
        annuaire::admin::accounts::add_account(
            &mut conn,
            "robust",
            annuaire::admin::Role::parse("editor").unwrap(),
            "a-long-enough-password",
            &annuaire::admin::Actor::cli("test"),
            s.app.clock.now_ms(),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
    }
    let homeserver = {
        let mut conn = s.app.db.get().unwrap();
        annuaire::homeserver::tokens::add_homeserver(
            &mut conn,
            "agent.finances.example",
            &annuaire::admin::Actor::cli("test"),
            s.app.clock.now_ms(),
            &mut rand::rngs::OsRng,
        )
        .unwrap()
        .token
    };
    let login = s
        .post(
            "/_annuaire/admin/v1/login",
            &serde_json::json!({"username": "robust", "password": "a-long-enough-password"}),
        )
        .await
        .assert_ok();
    let admin = login["access_token"].as_str().unwrap().to_string();
    Fixture {
        s,
        identity,
        admin,
        homeserver,
    }
}

impl Fixture {
    fn token(&self, auth: Auth) -> Option<&str> {
        match auth {
            Auth::None => None,
            Auth::Identity => Some(&self.identity),
            Auth::Admin => Some(&self.admin),
            Auth::Homeserver => Some(&self.homeserver),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        auth: Auth,
        body: Vec<u8>,
        ctype: &str,
    ) -> Reply {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .s
            .client
            .request(method, self.s.url(path))
            .header("content-type", ctype)
            .body(body);
        if let Some(t) = self.token(auth) {
            req = req.bearer_auth(t);
        }
        Reply::from(req.send().await.unwrap()).await
    }
}

#[track_caller]
fn assert_matrix_error(what: &str, r: &Reply) {
    assert!(
        (400..500).contains(&r.status),
        "{what}: expected a 4xx, got {} {}",
        r.status,
        r.text
    );
    let body: Value = serde_json::from_str(&r.text)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {} {}", r.status, r.text));
    let code = body["errcode"].as_str().unwrap_or_default();
    assert!(
        code.starts_with("M_") || code.starts_with("ANNUAIRE_"),
        "{what}: no errcode: {}",
        r.text
    );
    assert!(
        body["error"].is_string(),
        "{what}: no error text: {}",
        r.text
    );
}

fn nested(depth: usize) -> Vec<u8> {
    let mut v = "[".repeat(depth).into_bytes();
    v.extend(std::iter::repeat_n(b']', depth));
    v
}

#[tokio::test]
async fn malformed_bodies_get_matrix_errors_everywhere() {
    let f = fixture().await;
    let huge_field = format!(
        r#"{{"client_secret": "{0}", "email": "{0}@x.example", "sid": "{0}", "mxid": "{0}", "token": "{0}", "search_term": "{0}", "username": "{0}", "password": "{0}", "addresses": ["{0}"], "algorithm": "{0}", "pepper": "{0}", "send_attempt": 1}}"#,
        "a".repeat(20_000)
    );
    // Every endpoint must refuse these, except "empty" (a valid empty allowlist for the TOML
    // import) and "empty object" (a valid request where every field is optional).
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", b"{\"a\":".to_vec()),
        ("not json", b"hello".to_vec()),
        ("array", b"[1,2,3]".to_vec()),
        ("null", b"null".to_vec()),
        ("string", b"\"x\"".to_vec()),
        ("empty object", b"{}".to_vec()),
        ("wrong types", br#"{"sid": 1, "client_secret": [], "email": {}, "mxid": true, "send_attempt": "x", "addresses": "x", "search_term": 5, "limit": "ten", "username": 1, "password": null}"#.to_vec()),
        ("negative and huge numbers", br#"{"send_attempt": -1, "limit": 1e400, "client_secret": "a", "email": "a@b.example"}"#.to_vec()),
        ("deep nesting", nested(100_000)),
        ("invalid utf-8", vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}']),
        ("huge fields", huge_field.into_bytes()),
        ("control characters", "{\"email\": \"a\u{0}@b.example\", \"client_secret\": \"x\\u0000y\", \"send_attempt\": 1}".as_bytes().to_vec()),
    ];
    for (method, path, auth) in ROUTES {
        for (name, body) in &bodies {
            for ctype in ["application/json", "application/toml"] {
                let r = f.send(method, path, *auth, body.clone(), ctype).await;
                let what = format!("{method} {path} with {name} ({ctype})");
                let may_succeed = matches!(*name, "empty" | "empty object");
                if may_succeed && r.status < 300 {
                    continue;
                }
                assert_matrix_error(&what, &r);
            }
        }
        // Over http.max_body.
        let r = f
            .send(
                method,
                path,
                *auth,
                vec![b' '; 64 * 1024 + 1],
                "application/json",
            )
            .await;
        assert_matrix_error(&format!("{method} {path} with an oversized body"), &r);
        if !matches!(auth, Auth::None) {
            // Bad tokens.
            let method_ = Method::from_bytes(method.as_bytes()).unwrap();
            for bad in ["", "x", "Bearer", "é", &"z".repeat(5000)] {
                let r = Reply::from(
                    f.s.client
                        .request(method_.clone(), f.s.url(path))
                        .header("authorization", format!("Bearer {bad}"))
                        .body("{}")
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                assert_matrix_error(&format!("{method} {path} with token {bad:.10}"), &r);
            }
        }
    }
}

#[tokio::test]
async fn malformed_queries_get_matrix_errors_everywhere() {
    let f = fixture().await;
    let long = "a".repeat(6000);
    let queries = [
        String::new(),
        "medium=email".into(),
        "address=a@b.example".into(),
        "medium=email&address=%00".into(),
        "medium=email&address=%FF%FE".into(),
        format!("medium=email&address={long}@x.example"),
        "medium=email&address=a@b.example&medium=msisdn".into(),
        "sid=&client_secret=&token=".into(),
        format!("sid={long}&client_secret={long}&token={long}"),
        "public_key=%%%".into(),
        "address=not%20an%20address".into(),
        "period=forever&limit=-5&next_batch=%00&since=x&until=y".into(),
        "limit=99999999999999999999999".into(),
    ];
    for (path, auth) in QUERIES {
        for q in &queries {
            let url = format!("{}{path}?{q}", f.s.base);
            let mut req = f.s.client.get(url);
            if let Some(t) = f.token(*auth) {
                req = req.bearer_auth(t);
            }
            let r = Reply::from(req.send().await.unwrap()).await;
            // Some of these are valid requests for some endpoints (a GET with no parameters
            // on the audit log, say): what matters is that none is a server error.
            assert!(
                r.status < 500,
                "GET {path}?{q:.60}: {} {}",
                r.status,
                r.text
            );
            if r.status >= 400 {
                if path.ends_with("submitToken") {
                    continue; // an HTML page for browsers
                }
                assert_matrix_error(&format!("GET {path}?{q:.60}"), &r);
            }
        }
    }
    // Path parameters too.
    for path in [
        "/_matrix/identity/v2/pubkey/%00",
        "/_matrix/identity/v2/pubkey/ed25519:999",
        "/_annuaire/admin/v1/rules/%FF",
        "/_annuaire/admin/v1/directory/%FF",
        "/_annuaire/admin/v1/directory/%00",
        "/_annuaire/admin/v1/domain-requests/%FF",
        "/_annuaire/admin/v1/domain-requests/%00",
        "/_annuaire/admin/v1/domain-requests/..",
    ] {
        let r = Reply::from(
            f.s.client
                .get(f.s.url(path))
                .bearer_auth(&f.admin)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_matrix_error(&format!("GET {path}"), &r);
    }
}
