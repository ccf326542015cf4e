//! The cross-shard directory over HTTP: search semantics, the client endpoint (Host mapping,
//! whoami against a homeserver double, caching), externals, the Tchap-compatible signed
//! endpoints (search and profile replication), moderation, and the CLI.

use annuaire::config::{ClientHostConfig, Config};
use annuaire::directory::{self, NameSource, Visibility};
use annuaire::matrix::signing::{SigningKey, sign_json};
use annuaire::matrix::xmatrix::sign_request;
use annuaire::policy::{Decision, Outcome, ReasonCode, normalize_email};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{Builder, Reply, TestServer, fresh_url_for_binary, run_cli};

const HOST_A: &str = "matrix.agent-a.example";
const SERVER_A: &str = "agent-a.example";
const TOKEN_A: &str = "syt_searcher_token";
const SEARCHER_A: &str = "@searcher:agent-a.example";
const CLIENT_SEARCH: &str = "/_matrix/client/v3/user_directory/search";
const HS_SEARCH: &str = "/_matrix/identity/api/v1/user_directory/search";
const REPLICATE: &str = "/_matrix/identity/api/v1/replicate_profiles";

fn decision(outcome: Outcome, organisation: Option<&str>) -> Decision {
    Decision {
        outcome,
        homeserver: None,
        shadow_homeserver: None,
        organisation: organisation.map(Into::into),
        rule: None,
        rule_id: None,
        reason: String::new(),
        reason_code: ReasonCode::Allowed,
    }
}

async fn bind_as(s: &TestServer, mxid: &str, email: &str, org: Option<&str>, outcome: Outcome) {
    let address = normalize_email(email).unwrap();
    s.app
        .directory
        .on_bind(mxid, &address, &decision(outcome, org))
        .await
        .unwrap();
}

async fn bind(s: &TestServer, mxid: &str, email: &str, org: Option<&str>) {
    bind_as(s, mxid, email, org, Outcome::Allowed).await;
}

/// A homeserver's client API: whoami knows `tokens` (token → user id); anything else is 401.
async fn homeserver(tokens: &[(&str, &str)]) -> MockServer {
    let mock = MockServer::start().await;
    for (token, user_id) in tokens {
        Mock::given(method("GET"))
            .and(path("/_matrix/client/v3/account/whoami"))
            .and(header("authorization", format!("Bearer {token}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"user_id": user_id})))
            .mount(&mock)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/_matrix/client/v3/account/whoami"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(
                json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid access token"}),
            ),
        )
        .with_priority(10)
        .mount(&mock)
        .await;
    mock
}

fn client_host(c: &mut Config, host: &str, server_name: &str, client_url: &str) {
    c.directory.client_hosts.insert(
        host.into(),
        ClientHostConfig {
            server_name: server_name.into(),
            client_url: client_url.into(),
        },
    );
}

/// A server whose `matrix.agent-a.example` host is served by a homeserver double that knows
/// `TOKEN_A` as `SEARCHER_A`.
async fn server_with(f: impl FnOnce(&mut Config)) -> (TestServer, MockServer) {
    let hs = homeserver(&[(TOKEN_A, SEARCHER_A)]).await;
    let uri = hs.uri();
    let s = Builder::new()
        .config(|c, _| {
            client_host(c, HOST_A, SERVER_A, &uri);
            f(c);
        })
        .start()
        .await;
    (s, hs)
}

async fn client_post(
    s: &TestServer,
    path: &str,
    host: &str,
    token: Option<&str>,
    body: &Value,
) -> Reply {
    let mut request = s.client.post(s.url(path)).header("host", host).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Reply::from(request.send().await.unwrap()).await
}

async fn search(s: &TestServer, body: Value) -> Value {
    client_post(s, CLIENT_SEARCH, HOST_A, Some(TOKEN_A), &body)
        .await
        .assert_ok()
}

async fn find(s: &TestServer, term: &str) -> Vec<String> {
    display_names(&search(s, json!({"search_term": term})).await)
}

fn display_names(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["display_name"].as_str().unwrap().to_owned())
        .collect()
}

fn user_ids(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn search_semantics() {
    let (s, _hs) = server_with(|_| {}).await;
    bind(
        &s,
        "@jean.dupont:agent-a.example",
        "jean.dupont@finances.example",
        Some("Finances"),
    )
    .await;
    bind(
        &s,
        "@anne.dupont:agent-b.example",
        "anne.dupont@justice.example",
        Some("Justice"),
    )
    .await;
    bind(
        &s,
        "@luc.dupontel:agent-b.example",
        "luc.dupontel@justice.example",
        Some("Justice"),
    )
    .await;
    bind(
        &s,
        "@marc.martin:agent-c.example",
        "marc.martin@conseil.example",
        Some("Dupont Conseil"),
    )
    .await;
    bind(
        &s,
        "@helene:agent-b.example",
        "hélène.lefèvre@culture.example",
        Some("Culture"),
    )
    .await;
    bind(
        &s,
        "@noel:agent-c.example",
        "noël.œuvrard@culture.example",
        Some("Culture"),
    )
    .await;
    // The address is case-folded as the spec asks (ß → ss), so the name says Strasse.
    bind(
        &s,
        "@jp:agent-a.example",
        "jean-pierre.straße@bund.example",
        None,
    )
    .await;

    // Names are verified (from the address) and carry the organisation label; results span
    // every shard, not only the caller's (agent-a).
    assert_eq!(find(&s, "jea dup").await, ["Jean Dupont [Finances]"]);
    assert_eq!(find(&s, "helene").await, ["Hélène Lefèvre [Culture]"]);
    assert_eq!(find(&s, "HÉLÈNE lef").await, ["Hélène Lefèvre [Culture]"]);
    assert_eq!(find(&s, "oeuvr").await, ["Noël Œuvrard [Culture]"]);
    assert_eq!(find(&s, "noel").await, ["Noël Œuvrard [Culture]"]);
    // Compound words are found both ways, ß as ss; no organisation, no brackets.
    assert_eq!(find(&s, "jeanpierre").await, ["Jean-Pierre Strasse"]);
    assert_eq!(find(&s, "pierre straße").await, ["Jean-Pierre Strasse"]);
    // Every term must match; prefixes only at word starts.
    assert!(find(&s, "jean martin").await.is_empty());
    assert!(find(&s, "upont").await.is_empty());
    // Prefixes longer than SQLite's prefix indexes (8 letters) are still exact.
    bind(
        &s,
        "@karl:agent-c.example",
        "karl.weber@bmi.example",
        Some("Bundesministerium des Innern"),
    )
    .await;
    bind(
        &s,
        "@lena:agent-c.example",
        "lena.weber@bmf.example",
        Some("Bundesministerkonferenz"),
    )
    .await;
    assert_eq!(
        find(&s, "bundesministeri weber").await,
        ["Karl Weber [Bundesministerium des Innern]"]
    );
    assert_eq!(find(&s, "bundesmi weber").await.len(), 2);
    // The localpart is searchable too.
    assert_eq!(find(&s, "luc.dupontel").await, ["Luc Dupontel [Justice]"]);

    // Ranking: exact word in the name, then exact elsewhere (organisation), then prefixes;
    // ties by name.
    assert_eq!(
        find(&s, "dupont").await,
        [
            "Anne Dupont [Justice]",
            "Jean Dupont [Finances]",
            "Marc Martin [Dupont Conseil]",
            "Luc Dupontel [Justice]",
        ]
    );
    // Organisation filter (an annuaire extension of the body), compared folded.
    let v = search(&s, json!({"search_term": "dup", "organisation": "JUSTICE"})).await;
    assert_eq!(
        display_names(&v),
        ["Anne Dupont [Justice]", "Luc Dupontel [Justice]"]
    );
    // The stock response shape.
    let v = search(&s, json!({"search_term": "jean dupont"})).await;
    assert_eq!(
        v,
        json!({"limited": false, "results": [{
            "user_id": "@jean.dupont:agent-a.example",
            "display_name": "Jean Dupont [Finances]",
            "avatar_url": null,
        }]})
    );

    // Empty terms are refused, never "everyone".
    for term in ["", "   ", "!!! ---", "\u{200B}"] {
        client_post(
            &s,
            CLIENT_SEARCH,
            HOST_A,
            Some(TOKEN_A),
            &json!({"search_term": term}),
        )
        .await
        .assert_error(400, "M_INVALID_PARAM");
    }
    client_post(
        &s,
        CLIENT_SEARCH,
        HOST_A,
        Some(TOKEN_A),
        &json!({"limit": 3}),
    )
    .await
    .assert_error(400, "M_MISSING_PARAMS");
}

#[tokio::test]
async fn limit_and_limited() {
    let (s, _hs) = server_with(|_| {}).await;
    for i in 0..55 {
        bind(
            &s,
            &format!("@martin{i:02}:agent-a.example"),
            &format!("paul.martin{i:02}@finances.example"),
            Some("Finances"),
        )
        .await;
    }
    let v = search(&s, json!({"search_term": "martin"})).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 10);
    assert_eq!(v["limited"], true);
    // Ties by name then user id: the order is stable.
    assert_eq!(user_ids(&v)[0], "@martin00:agent-a.example");
    assert_eq!(user_ids(&v)[9], "@martin09:agent-a.example");
    let v = search(&s, json!({"search_term": "martin", "limit": 55})).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 50, "at most 50");
    assert_eq!(v["limited"], true);
    let v = search(&s, json!({"search_term": "martin05"})).await;
    assert_eq!(user_ids(&v), ["@martin05:agent-a.example"]);
    assert_eq!(v["limited"], false);
    let v = search(&s, json!({"search_term": "paul", "limit": 0})).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn hidden_external_and_removed_entries_are_invisible() {
    let (s, _hs) = server_with(|_| {}).await;
    bind(
        &s,
        "@claire:agent-a.example",
        "claire.roux@finances.example",
        Some("Finances"),
    )
    .await;
    bind_as(
        &s,
        "@prestataire:externe.example",
        "claire.roussel@partner.example",
        None,
        Outcome::InviteRequired,
    )
    .await;
    assert_eq!(find(&s, "claire").await, ["Claire Roux [Finances]"]);

    // Moderation: hide, then show again.
    let e = s
        .app
        .directory
        .set_visibility("@claire:agent-a.example", Visibility::Hidden)
        .await
        .unwrap();
    assert_eq!(e.visibility, Visibility::Hidden);
    assert!(find(&s, "claire").await.is_empty());
    // A new bind keeps the moderation state.
    bind(
        &s,
        "@claire:agent-a.example",
        "claire.roux@finances.example",
        Some("Finances"),
    )
    .await;
    assert!(find(&s, "claire").await.is_empty());
    s.app
        .directory
        .set_visibility("@claire:agent-a.example", Visibility::Visible)
        .await
        .unwrap();
    assert_eq!(find(&s, "claire").await, ["Claire Roux [Finances]"]);

    // Admin rename: source admin, kept over later binds, removable.
    let e = s
        .app
        .directory
        .set_admin_name("@claire:agent-a.example", Some("  Claire  Roux-Martin "))
        .await
        .unwrap();
    assert_eq!(
        (e.name.as_str(), e.name_source),
        ("Claire Roux-Martin", NameSource::Admin)
    );
    bind(
        &s,
        "@claire:agent-a.example",
        "claire.roux@finances.example",
        Some("Finances"),
    )
    .await;
    assert_eq!(
        find(&s, "roux martin").await,
        ["Claire Roux-Martin [Finances]"]
    );
    let e = s
        .app
        .directory
        .set_admin_name("@claire:agent-a.example", None)
        .await
        .unwrap();
    assert_eq!(
        (e.name.as_str(), e.name_source),
        ("Claire Roux", NameSource::Email)
    );
    assert!(matches!(
        s.app
            .directory
            .set_admin_name("@claire:agent-a.example", Some(" \u{200B} "))
            .await,
        Err(directory::DirectoryError::InvalidName)
    ));
    assert!(matches!(
        s.app
            .directory
            .set_visibility("@nobody:agent-a.example", Visibility::Hidden)
            .await,
        Err(directory::DirectoryError::NotFound(_))
    ));

    // Unbind removes the entry; removal by an admin too.
    s.app
        .directory
        .on_unbind("@claire:agent-a.example")
        .await
        .unwrap();
    assert!(find(&s, "claire").await.is_empty());
    assert!(
        s.app
            .directory
            .entry("@claire:agent-a.example")
            .await
            .unwrap()
            .is_none()
    );
    s.app
        .directory
        .on_unbind("@claire:agent-a.example")
        .await
        .unwrap();
    assert!(
        s.app
            .directory
            .remove("@prestataire:externe.example")
            .await
            .unwrap()
    );
    assert!(
        !s.app
            .directory
            .remove("@prestataire:externe.example")
            .await
            .unwrap()
    );

    // With show_externals, external entries are returned.
    let (shown, _hs) = server_with(|c| c.directory.show_externals = true).await;
    bind_as(
        &shown,
        "@prestataire:externe.example",
        "claire.roussel@partner.example",
        None,
        Outcome::InviteRequired,
    )
    .await;
    assert_eq!(find(&shown, "claire").await, ["Claire Roussel"]);
}

#[tokio::test]
async fn the_client_endpoint_maps_hosts_and_checks_tokens() {
    let hs_a = homeserver(&[
        (TOKEN_A, SEARCHER_A),
        ("tok-b-user", "@bob:agent-b.example"),
    ])
    .await;
    // agent-b's homeserver must never see agent-a's tokens.
    let hs_b = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"user_id": "@x:agent-b.example"})),
        )
        .expect(0)
        .mount(&hs_b)
        .await;
    let (a, b) = (hs_a.uri(), hs_b.uri());
    let s = Builder::new()
        .config(|c, _| {
            client_host(c, HOST_A, SERVER_A, &a);
            client_host(c, "matrix.agent-b.example", "agent-b.example", &b);
        })
        .start()
        .await;
    bind(
        &s,
        "@bob:agent-b.example",
        "bob.leroy@justice.example",
        Some("Justice"),
    )
    .await;
    let body = json!({"search_term": "bob"});

    let ok = client_post(&s, CLIENT_SEARCH, HOST_A, Some(TOKEN_A), &body)
        .await
        .assert_ok();
    assert_eq!(display_names(&ok), ["Bob Leroy [Justice]"]);
    // r0, a port in Host, a token in the query string.
    client_post(
        &s,
        "/_matrix/client/r0/user_directory/search",
        HOST_A,
        Some(TOKEN_A),
        &body,
    )
    .await
    .assert_ok();
    client_post(
        &s,
        CLIENT_SEARCH,
        "Matrix.Agent-A.example:443",
        Some(TOKEN_A),
        &body,
    )
    .await
    .assert_ok();
    let r = Reply::from(
        s.client
            .post(s.url(&format!("{CLIENT_SEARCH}?access_token={TOKEN_A}")))
            .header("host", HOST_A)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_ok();

    client_post(
        &s,
        CLIENT_SEARCH,
        "matrix.unknown.example",
        Some(TOKEN_A),
        &body,
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
    client_post(&s, CLIENT_SEARCH, HOST_A, None, &body)
        .await
        .assert_error(401, "M_MISSING_TOKEN");
    client_post(&s, CLIENT_SEARCH, HOST_A, Some("not-a-token"), &body)
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
    // A valid token of another server's user, sent through agent-a's host.
    client_post(&s, CLIENT_SEARCH, HOST_A, Some("tok-b-user"), &body)
        .await
        .assert_error(403, "M_FORBIDDEN");
    // Authentication comes before the body is looked at.
    client_post(&s, CLIENT_SEARCH, HOST_A, None, &json!({}))
        .await
        .assert_error(401, "M_MISSING_TOKEN");
    drop(s);
    hs_b.verify().await;
}

#[tokio::test]
async fn whoami_answers_are_cached_failures_are_not() {
    let hs = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/_matrix/client/v3/account/whoami"))
        .and(header("authorization", "Bearer flaky"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&hs)
        .await;
    Mock::given(method("GET"))
        .and(path("/_matrix/client/v3/account/whoami"))
        .and(header("authorization", "Bearer flaky"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"user_id": "@f:agent-a.example"})),
        )
        .with_priority(2)
        .mount(&hs)
        .await;
    Mock::given(method("GET"))
        .and(path("/_matrix/client/v3/account/whoami"))
        .and(header(
            "authorization",
            format!("Bearer {TOKEN_A}").as_str(),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"user_id": SEARCHER_A})))
        .mount(&hs)
        .await;
    Mock::given(method("GET"))
        .and(path("/_matrix/client/v3/account/whoami"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"errcode": "M_UNKNOWN_TOKEN"})),
        )
        .with_priority(10)
        .mount(&hs)
        .await;
    let uri = hs.uri();
    let s = Builder::new()
        .config(|c, _| client_host(c, HOST_A, SERVER_A, &uri))
        .manual_clock(1_700_000_000_000)
        .start()
        .await;
    let clock = s.clock.clone().unwrap();
    let body = json!({"search_term": "x"});
    let whoami_calls = |token: &'static str| {
        let hs = &hs;
        async move {
            hs.received_requests()
                .await
                .unwrap()
                .iter()
                .filter(|r| {
                    r.headers
                        .get("authorization")
                        .is_some_and(|v| v.to_str().unwrap() == format!("Bearer {token}"))
                })
                .count()
        }
    };

    for _ in 0..3 {
        client_post(&s, CLIENT_SEARCH, HOST_A, Some(TOKEN_A), &body)
            .await
            .assert_ok();
    }
    assert_eq!(whoami_calls(TOKEN_A).await, 1, "answers are cached");
    clock.advance(59_000);
    client_post(&s, CLIENT_SEARCH, HOST_A, Some(TOKEN_A), &body)
        .await
        .assert_ok();
    assert_eq!(whoami_calls(TOKEN_A).await, 1);
    clock.advance(2_000);
    client_post(&s, CLIENT_SEARCH, HOST_A, Some(TOKEN_A), &body)
        .await
        .assert_ok();
    assert_eq!(
        whoami_calls(TOKEN_A).await,
        2,
        "the cache expires after whoami_cache_ttl"
    );

    // A homeserver failure is answered 502 and not cached: the next call asks again.
    client_post(&s, CLIENT_SEARCH, HOST_A, Some("flaky"), &body)
        .await
        .assert_error(502, "M_UNKNOWN");
    client_post(&s, CLIENT_SEARCH, HOST_A, Some("flaky"), &body)
        .await
        .assert_ok();
    client_post(&s, CLIENT_SEARCH, HOST_A, Some("flaky"), &body)
        .await
        .assert_ok();
    assert_eq!(whoami_calls("flaky").await, 2);
    // A refused token is not cached either.
    for _ in 0..2 {
        client_post(&s, CLIENT_SEARCH, HOST_A, Some("bad"), &body)
            .await
            .assert_error(401, "M_UNKNOWN_TOKEN");
    }
    assert_eq!(whoami_calls("bad").await, 2);
}

#[tokio::test]
async fn externals_may_not_search_unless_configured() {
    let hs_ext = homeserver(&[("tok-ext", "@ext:externe.example")]).await;
    let hs_a = homeserver(&[
        (TOKEN_A, SEARCHER_A),
        ("tok-invited", "@invited:agent-a.example"),
    ])
    .await;
    let (ext, a) = (hs_ext.uri(), hs_a.uri());
    let configure = move |may_search: bool| {
        let (ext, a) = (ext.clone(), a.clone());
        move |c: &mut Config, _: &std::path::Path| {
            client_host(c, HOST_A, SERVER_A, &a);
            client_host(c, "matrix.externe.example", "externe.example", &ext);
            c.policy.external_homeserver = Some("externe.example".into());
            c.directory.externals_may_search = may_search;
        }
    };
    let s = Builder::new().config(configure(false)).start().await;
    bind(
        &s,
        "@anna:agent-a.example",
        "anna.weber@finances.example",
        Some("Finances"),
    )
    .await;
    // An invite-required address bound on an internal homeserver is external too.
    bind_as(
        &s,
        "@invited:agent-a.example",
        "x.y@partner.example",
        None,
        Outcome::InviteRequired,
    )
    .await;
    let body = json!({"search_term": "anna"});
    client_post(
        &s,
        CLIENT_SEARCH,
        "matrix.externe.example",
        Some("tok-ext"),
        &body,
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
    client_post(&s, CLIENT_SEARCH, HOST_A, Some("tok-invited"), &body)
        .await
        .assert_error(403, "M_FORBIDDEN");
    let v = client_post(&s, CLIENT_SEARCH, HOST_A, Some(TOKEN_A), &body)
        .await
        .assert_ok();
    assert_eq!(display_names(&v), ["Anna Weber [Finances]"]);
    // ...and externals are not seen.
    let v = client_post(
        &s,
        CLIENT_SEARCH,
        HOST_A,
        Some(TOKEN_A),
        &json!({"search_term": "x y"}),
    )
    .await
    .assert_ok();
    assert!(display_names(&v).is_empty());

    let open = Builder::new().config(configure(true)).start().await;
    bind(
        &open,
        "@anna:agent-a.example",
        "anna.weber@finances.example",
        Some("Finances"),
    )
    .await;
    let v = client_post(
        &open,
        CLIENT_SEARCH,
        "matrix.externe.example",
        Some("tok-ext"),
        &body,
    )
    .await
    .assert_ok();
    assert_eq!(display_names(&v), ["Anna Weber [Finances]"]);
}

/// A homeserver whose signing key is served at `/_matrix/key/v2/server`.
struct SigningHomeserver {
    name: &'static str,
    key: SigningKey,
    mock: MockServer,
}

impl SigningHomeserver {
    async fn start(name: &'static str) -> SigningHomeserver {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let mock = MockServer::start().await;
        let valid_until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            + 86_400_000;
        let mut body = json!({
            "server_name": name,
            "verify_keys": {key.key_id(): {"key": key.public_key_base64()}},
            "old_verify_keys": {},
            "valid_until_ts": valid_until,
        });
        sign_json(&mut body, name, &key).unwrap();
        Mock::given(method("GET"))
            .and(path("/_matrix/key/v2/server"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&mock)
            .await;
        SigningHomeserver { name, key, mock }
    }

    fn signed(&self, mut body: Value) -> Value {
        sign_json(&mut body, self.name, &self.key).unwrap();
        body
    }
}

async fn tchap_server(hs: &[&SigningHomeserver], allowed: &[&str]) -> TestServer {
    let overrides: Vec<(String, String)> = hs
        .iter()
        .map(|h| (h.name.to_owned(), h.mock.uri()))
        .collect();
    let allowed: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
    Builder::new()
        .config(move |c, _| {
            for (name, uri) in overrides {
                c.federation.homeservers.insert(name, uri);
            }
            c.directory.allowed_homeservers = allowed;
        })
        .start()
        .await
}

#[tokio::test]
async fn tchap_search_needs_an_allowed_homeserver_signature() {
    let hs_a = SigningHomeserver::start("hs-a.example").await;
    let stranger = SigningHomeserver::start("stranger.example").await;
    let s = tchap_server(&[&hs_a, &stranger], &["hs-a.example"]).await;
    bind(
        &s,
        "@zoe:hs-b.example",
        "zoe.rousseau@finances.example",
        Some("Finances"),
    )
    .await;

    let v = s
        .post(
            HS_SEARCH,
            &hs_a.signed(json!({"search_term": "zoe rou", "limit": 5})),
        )
        .await
        .assert_ok();
    assert_eq!(display_names(&v), ["Zoe Rousseau [Finances]"]);

    // X-Matrix instead of a signed body.
    let body = json!({"search_term": "zoe"});
    let auth = sign_request(
        &hs_a.key,
        hs_a.name,
        "POST",
        HS_SEARCH,
        "is.test.example",
        Some(&body),
    )
    .unwrap();
    let r = Reply::from(
        s.client
            .post(s.url(HS_SEARCH))
            .header("authorization", auth)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(user_ids(&r.assert_ok()), ["@zoe:hs-b.example"]);

    s.post(HS_SEARCH, &body)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    s.post(HS_SEARCH, &stranger.signed(body.clone()))
        .await
        .assert_error(403, "M_FORBIDDEN");
    let mut tampered = hs_a.signed(json!({"search_term": "zoe"}));
    tampered["search_term"] = json!("anyone");
    s.post(HS_SEARCH, &tampered)
        .await
        .assert_error(403, "M_FORBIDDEN");
    // An X-Matrix header from a stranger is refused before any key is fetched.
    let auth = sign_request(
        &stranger.key,
        stranger.name,
        "POST",
        HS_SEARCH,
        "is.test.example",
        Some(&body),
    )
    .unwrap();
    let before = stranger.mock.received_requests().await.unwrap().len();
    let r = Reply::from(
        s.client
            .post(s.url(HS_SEARCH))
            .header("authorization", auth)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(403, "M_FORBIDDEN");
    assert_eq!(
        stranger.mock.received_requests().await.unwrap().len(),
        before
    );
    // Empty terms are still refused for homeservers.
    s.post(HS_SEARCH, &hs_a.signed(json!({"search_term": " "})))
        .await
        .assert_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn profile_replication() {
    let hs_a = SigningHomeserver::start("hs-a.example").await;
    let hs_b = SigningHomeserver::start("hs-b.example").await;
    let s = tchap_server(&[&hs_a, &hs_b], &["hs-a.example", "hs-b.example"]).await;
    bind(
        &s,
        "@ines:hs-a.example",
        "ines.bensaid@interieur.example",
        Some("Intérieur"),
    )
    .await;
    bind(
        &s,
        "@bruno:hs-b.example",
        "bruno.weiss@bund.example",
        Some("BMI"),
    )
    .await;
    let batch = |n: i64, profiles: Value| json!({"batchnum": n, "batch": profiles, "origin_server": "hs-a.example"});
    let hs_search = |term: &str| hs_a.signed(json!({"search_term": term}));

    // An avatar, and a display name that is ignored (not verified).
    s.post(
        REPLICATE,
        &hs_a.signed(batch(1, json!({
            "@ines:hs-a.example": {"display_name": "Queen Ines", "avatar_url": "mxc://hs-a.example/ines"},
            "@notbound:hs-a.example": {"display_name": "X", "avatar_url": null},
        }))),
    )
    .await
    .assert_ok();
    let v = s.post(HS_SEARCH, &hs_search("ines")).await.assert_ok();
    assert_eq!(
        v["results"],
        json!([{"user_id": "@ines:hs-a.example", "display_name": "Ines Bensaid [Intérieur]", "avatar_url": "mxc://hs-a.example/ines"}])
    );
    assert!(
        s.post(HS_SEARCH, &hs_search("queen")).await.assert_ok()["results"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Deactivated: no longer found.
    s.post(
        REPLICATE,
        &hs_a.signed(batch(2, json!({"@ines:hs-a.example": null}))),
    )
    .await
    .assert_ok();
    assert!(
        s.post(HS_SEARCH, &hs_search("ines")).await.assert_ok()["results"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let entry = s
        .app
        .directory
        .entry("@ines:hs-a.example")
        .await
        .unwrap()
        .unwrap();
    assert!(!entry.active);

    // A stale batch (replayed, or retried late) changes nothing.
    s.post(
        REPLICATE,
        &hs_a.signed(batch(
            2,
            json!({"@ines:hs-a.example": {"display_name": "I", "avatar_url": null}}),
        )),
    )
    .await
    .assert_ok();
    s.post(
        REPLICATE,
        &hs_a.signed(batch(
            1,
            json!({"@ines:hs-a.example": {"display_name": "I", "avatar_url": null}}),
        )),
    )
    .await
    .assert_ok();
    assert!(
        !s.app
            .directory
            .entry("@ines:hs-a.example")
            .await
            .unwrap()
            .unwrap()
            .active
    );

    // A homeserver cannot touch another's users: the whole batch is refused, its number unused.
    s.post(
        REPLICATE,
        &hs_a.signed(batch(
            3,
            json!({
                "@ines:hs-a.example": {"display_name": "I", "avatar_url": null},
                "@bruno:hs-b.example": null,
            }),
        )),
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
    assert!(
        s.app
            .directory
            .entry("@bruno:hs-b.example")
            .await
            .unwrap()
            .unwrap()
            .active
    );
    assert!(
        !s.app
            .directory
            .entry("@ines:hs-a.example")
            .await
            .unwrap()
            .unwrap()
            .active
    );
    s.post(
        REPLICATE,
        &hs_a.signed(batch(3, json!({"@ines:hs-a.example": {"display_name": "I", "avatar_url": "https://x.example/a.png"}}))),
    )
    .await
    .assert_ok();
    let entry = s
        .app
        .directory
        .entry("@ines:hs-a.example")
        .await
        .unwrap()
        .unwrap();
    assert!(entry.active, "reactivated by batch 3");
    assert_eq!(entry.avatar_url, None, "only mxc:// avatars are kept");

    // Signed by hs-b but claiming to be hs-a; origin_server naming another server than the
    // signer; too large; unsigned.
    s.post(REPLICATE, &hs_b.signed(batch(9, json!({}))))
        .await
        .assert_error(403, "M_FORBIDDEN");
    let big: serde_json::Map<String, Value> = (0..501)
        .map(|i| (format!("@u{i}:hs-a.example"), Value::Null))
        .collect();
    s.post(REPLICATE, &hs_a.signed(batch(10, Value::Object(big))))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    s.post(REPLICATE, &batch(11, json!({})))
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    s.post(REPLICATE, &hs_a.signed(json!({"batchnum": 1, "batch": {}})))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    // hs-b's own batches number independently.
    s.post(
        REPLICATE,
        &hs_b.signed(json!({"batchnum": 1, "batch": {"@bruno:hs-b.example": null}, "origin_server": "hs-b.example"})),
    )
    .await
    .assert_ok();
    assert!(
        !s.app
            .directory
            .entry("@bruno:hs-b.example")
            .await
            .unwrap()
            .unwrap()
            .active
    );
}

#[tokio::test]
async fn cli_imports_synthetic_people_and_searches() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_url_for_binary();
    let mut env: Vec<(&str, &str)> = vec![("ANNUAIRE_LOG__LEVEL", "warn")];
    if let Some(url) = &url {
        env.push(("ANNUAIRE_DATABASE__URL", url));
    }
    let (code, out, err) = run_cli(
        dir.path(),
        &["directory", "import-synthetic", "3000", "--seed", "7"],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("imported 3000 synthetic entries (0 already present)"),
        "{out}"
    );
    assert!(
        err.contains("import: 3000/3000 people"),
        "plain progress lines off a TTY: {err}"
    );
    let (code, out, _) = run_cli(
        dir.path(),
        &["directory", "import-synthetic", "3000", "--seed", "7"],
        &env,
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("imported 0 synthetic entries (3000 already present)"),
        "{out}"
    );

    let (code, out, err) = run_cli(
        dir.path(),
        &["directory", "search", "Jean", "--limit", "5", "--json"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(v["limited"], true);
    for r in results {
        let name = r["display_name"].as_str().unwrap();
        assert!(name.starts_with("Jean") || name.contains(" Jean"), "{name}");
        assert!(name.ends_with(']'), "organisation label: {name}");
    }
    let (code, out, _) = run_cli(
        dir.path(),
        &[
            "directory",
            "search",
            "jean",
            "--organisation",
            "finances",
            "--limit",
            "50",
        ],
        &env,
    );
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().filter(|l| l.contains('@')).collect();
    assert!(!lines.is_empty(), "{out}");
    assert!(lines.iter().all(|l| l.contains("[Finances]\t@")), "{out}");
    let (code, _, err) = run_cli(dir.path(), &["directory", "search", "  "], &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at least one letter or digit"), "{err}");
}

#[tokio::test]
async fn search_stays_consistent_through_updates_on_this_backend() {
    // The index follows renames and removals in the same transaction (FTS5 triggers on
    // SQLite, a generated column on PostgreSQL).
    let (s, _hs) = server_with(|_| {}).await;
    bind(
        &s,
        "@t:agent-a.example",
        "thomas.girard@finances.example",
        Some("Finances"),
    )
    .await;
    assert_eq!(find(&s, "girard").await, ["Thomas Girard [Finances]"]);
    s.app
        .directory
        .set_admin_name("@t:agent-a.example", Some("Thomas Garnier"))
        .await
        .unwrap();
    assert!(find(&s, "girard").await.is_empty());
    assert_eq!(find(&s, "garn").await, ["Thomas Garnier [Finances]"]);
    // Re-binding with another organisation moves the entry.
    bind(
        &s,
        "@t:agent-a.example",
        "thomas.girard@justice.example",
        Some("Justice"),
    )
    .await;
    assert_eq!(
        find(&s, "garnier justice").await,
        ["Thomas Garnier [Justice]"]
    );
    assert!(find(&s, "garnier finances").await.is_empty());
    s.app.directory.remove("@t:agent-a.example").await.unwrap();
    assert!(find(&s, "garnier").await.is_empty());
}

/// An entry as the search reference below sees it.
#[derive(diesel::QueryableByName)]
struct ReferenceEntry {
    #[diesel(sql_type = diesel::sql_types::Text)]
    mxid: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    search_all: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    organisation_key: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    listed: bool,
}

/// Whether an entry's folded key holds every term (a word equal to a whole term, or starting
/// with a prefix as the index is asked for it).
fn holds(search_all: &str, terms: &[annuaire::store::directory::TermMatch]) -> bool {
    let words: Vec<&str> = search_all.split(' ').filter(|w| !w.is_empty()).collect();
    terms.iter().all(|t| {
        words.iter().any(|w| {
            if t.whole {
                *w == t.text
            } else {
                w.starts_with(t.indexed())
            }
        })
    })
}

#[tokio::test]
async fn each_tier_gets_its_first_matches_however_the_backend_finds_them() {
    // On SQLite the narrower tiers read on from where the broad one stopped: their candidates
    // must be those of each tier's own query from the start, the first `candidates` matches in
    // rowid order, computed here from every entry. PostgreSQL orders candidates by word: there
    // every candidate must match its query and pass the filters.
    use annuaire::directory::service::tiers;
    use annuaire::store::DbConn;
    use annuaire::store::directory::{self as store, SearchFilter};
    use diesel::RunQueryDsl;

    let (s, _hs) = server_with(|_| {}).await;
    let app = &s.app;
    app.directory
        .import_synthetic(6000, 7, |_, _| {})
        .await
        .unwrap();
    let all_sql = "SELECT e.mxid, e.search_all, e.organisation_key, \
         (e.visibility = 'visible' AND e.active AND NOT e.external AND NOT EXISTS \
          (SELECT 1 FROM directory_opt_outs AS o WHERE o.mxid = e.mxid)) AS listed \
         FROM directory_entries AS e ORDER BY ";
    let load = |order: &'static str| {
        app.db.run(move |conn| {
            let sql = format!("{all_sql}{order}");
            Ok(match conn {
                DbConn::Sqlite(c) => diesel::sql_query(sql).load::<ReferenceEntry>(c)?,
                DbConn::Pg(c) => diesel::sql_query(sql).load::<ReferenceEntry>(c)?,
            })
        })
    };
    // Some entries leave the searches: hidden, or opted out.
    let entries = load("e.mxid").await.unwrap();
    for (i, e) in entries.iter().enumerate() {
        if i % 7 == 3 {
            app.directory
                .set_visibility(&e.mxid, Visibility::Hidden)
                .await
                .unwrap();
        } else if i % 11 == 5 {
            app.directory.set_listed(&e.mxid, false).await.unwrap();
        }
    }
    let sqlite = crate::support::backend() == crate::support::Backend::Sqlite;
    let entries = load(if sqlite { "e.id" } else { "e.mxid" }).await.unwrap();
    assert!(
        entries.iter().any(|e| !e.listed) && entries.iter().filter(|e| e.listed).count() > 2000
    );

    // Queries of common words (synthetic names repeat), of one to three terms.
    let mut queries: Vec<String> = [
        "jean",
        "j",
        "m d",
        "ma du",
        "jean d",
        "marie claire fo",
        "de la f",
    ]
    .map(String::from)
    .to_vec();
    for e in entries.iter().step_by(211) {
        let w: Vec<&str> = e.search_all.split(' ').collect();
        let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
        queries.push(w[0].to_owned());
        queries.push(format!("{} {}", w[0], cut(w[1], 2)));
        queries.push(format!("{} {}", cut(w[0], 3), w[1]));
        queries.push(format!("{} {} {}", w[0], w[1], cut(w[2], 3)));
        queries.push(format!(
            "{} {} {}",
            cut(w[0], 1),
            cut(w[1], 1),
            cut(w[2], 1)
        ));
        queries.push(format!("{} {}", w[0], cut(w[1], 1)));
        queries.push(format!("{} {}", cut(w[0], 1), cut(w[1], 1)));
        queries.push(format!("{} {}", cut(w[0], 1), cut(w[1], 2)));
        queries.push(format!("{} {}", cut(w[0], 2), cut(w[1], 1)));
    }
    let org = entries[0].organisation_key.clone();
    let (candidates, limit) = (50_i64, 10_usize);
    let (mut truncated, mut typing_ran) = (0, 0);
    for query in &queries {
        for organisation_key in [None, Some(org.clone())] {
            let parsed = directory::search::parse_query(query).unwrap();
            let t = tiers(&parsed);
            let filter = SearchFilter {
                show_externals: false,
                organisation_key: organisation_key.clone(),
            };
            let (t2, f2) = (t.clone(), filter.clone());
            let got: std::collections::BTreeSet<String> = app
                .db
                .run(move |conn| store::search(conn, &t2, &f2, candidates, limit))
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.mxid)
                .collect();
            let eligible: Vec<&ReferenceEntry> = entries
                .iter()
                .filter(|e| e.listed)
                .filter(|e| {
                    organisation_key
                        .as_ref()
                        .is_none_or(|o| *o == e.organisation_key)
                })
                .collect();
            let context = format!("{query:?}, organisation {organisation_key:?}");
            if !sqlite {
                for mxid in &got {
                    let e = eligible.iter().find(|e| e.mxid == *mxid);
                    let e = e.unwrap_or_else(|| panic!("{context}: {mxid} may not be found"));
                    assert!(holds(&e.search_all, &t.broad.terms), "{context}: {mxid}");
                }
                continue;
            }
            let first = |q: &store::IndexQuery| -> Vec<&str> {
                eligible
                    .iter()
                    .filter(|e| holds(&e.search_all, &q.terms))
                    .take(candidates as usize)
                    .map(|e| e.mxid.as_str())
                    .collect()
            };
            let broad = first(&t.broad);
            let mut want: std::collections::BTreeSet<String> =
                broad.iter().map(|m| m.to_string()).collect();
            if broad.len() == candidates as usize {
                truncated += 1;
                let whole = first(&t.whole);
                want.extend(whole.iter().map(|m| m.to_string()));
                if whole.len() <= limit
                    && let Some(typing) = &t.typing
                {
                    typing_ran += 1;
                    want.extend(first(typing).iter().map(|m| m.to_string()));
                }
            }
            assert_eq!(got, want, "{context}");
        }
    }
    if sqlite {
        assert!(
            truncated > 40 && typing_ran > 20,
            "the broad tier reached its limit {truncated} times, the typing tier ran {typing_ran} \
             times: too few to test them"
        );
    }
}
