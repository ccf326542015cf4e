//! The federated user directory (MSC4258, revision 9b60af68 of 2025-12-10): a remote homeserver
//! searches the directory over federation, on behalf of one of its users, with a request
//! signed by X-Matrix (here: the homeserver double, whose keys annuaire fetches).

use annuaire::config::{HumanDuration, RateLimit};
use annuaire::policy::{Decision, Outcome, ReasonCode, normalize_email};
use serde_json::{Value, json};

use crate::support::fixtures::FINANCES_HS;
use crate::support::homeserver::Homeserver;
use crate::support::{Builder, Reply, TestServer};

const UNSTABLE: &str = "/_matrix/federation/unstable/org.matrix.msc4258/user_directory/search";
const STABLE: &str = "/_matrix/federation/v3/user_directory/search";
const FR_TCHAP: &str = "/_matrix/federation/unstable/fr.tchap/user_directory/search";
/// The test server's own name (`support::test_config`).
const SELF: &str = "is.test.example";
/// A user of the calling homeserver (the double signs as [`FINANCES_HS`]).
const REQUESTER: &str = "@searcher:agent.finances.example";

async fn bind(s: &TestServer, mxid: &str, email: &str, org: Option<&str>, outcome: Outcome) {
    let decision = Decision {
        outcome,
        homeserver: None,
        shadow_homeserver: None,
        organisation: org.map(Into::into),
        rule: None,
        rule_id: None,
        reason: String::new(),
        reason_code: ReasonCode::Allowed,
    };
    s.app
        .directory
        .on_bind(mxid, &normalize_email(email).unwrap(), &decision)
        .await
        .unwrap();
}

/// A directory that lets the double's server search, with a few entries.
async fn server(
    hs: &Homeserver,
    f: impl FnOnce(&mut annuaire::config::Config) + 'static,
) -> TestServer {
    let base = hs.base.clone();
    let s = Builder::new()
        .config(move |c, _| {
            c.federation.homeservers.insert(FINANCES_HS.into(), base);
            c.directory.federated_search_servers = vec![FINANCES_HS.into()];
            c.directory.allowed_homeservers = vec!["agent.justice.example".into()];
            f(c);
        })
        .start()
        .await;
    bind(
        &s,
        "@zoe:agent.justice.example",
        "zoe.rousseau@justice.gouv.example",
        Some("Justice"),
        Outcome::Allowed,
    )
    .await;
    bind(
        &s,
        "@zoran:agent.justice.example",
        "zoran.roussel@justice.gouv.example",
        Some("Justice"),
        Outcome::Allowed,
    )
    .await;
    bind(
        &s,
        "@zora:externe.example",
        "zora.rousseau@partner.example",
        None,
        Outcome::InviteRequired,
    )
    .await;
    s
}

/// POSTs `body` to `path`, with `authorization` if any.
async fn post(s: &TestServer, path: &str, body: &Value, authorization: Option<&str>) -> Reply {
    let mut req = s.client.post(s.url(path)).json(body);
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    Reply::from(req.send().await.unwrap()).await
}

/// A search signed by the double for `destination`.
async fn search(
    s: &TestServer,
    hs: &Homeserver,
    path: &str,
    destination: &str,
    body: &Value,
) -> Reply {
    let auth = hs.x_matrix("POST", path, destination, body);
    post(s, path, body, Some(&auth)).await
}

fn user_ids(v: &Value) -> Vec<&str> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_signed_remote_search_sees_what_the_visibility_rules_allow() {
    let hs = Homeserver::start(None);
    let s = server(&hs, |_| {}).await;
    let body = json!({"requester": REQUESTER, "search_term": "rousseau", "limit": 10});
    for path in [UNSTABLE, STABLE, FR_TCHAP] {
        let v = search(&s, &hs, path, SELF, &body).await.assert_ok();
        // The external entry is not returned (directory.show_externals is false).
        assert_eq!(user_ids(&v), ["@zoe:agent.justice.example"], "{path}: {v}");
        assert_eq!(v["limited"], json!(false));
        assert_eq!(
            v["results"][0],
            json!({"user_id": "@zoe:agent.justice.example", "display_name": "Zoe Rousseau [Justice]", "avatar_url": null})
        );
    }
    // Reached through a shard's reverse proxy: signed for that homeserver's name.
    let v = search(&s, &hs, UNSTABLE, "agent.justice.example", &body)
        .await
        .assert_ok();
    assert_eq!(user_ids(&v), ["@zoe:agent.justice.example"]);
    // `limit` bounds the answer (default 10).
    let v = search(
        &s,
        &hs,
        UNSTABLE,
        SELF,
        &json!({"requester": REQUESTER, "search_term": "justice", "limit": 1}),
    )
    .await
    .assert_ok();
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["limited"], json!(true));
    // Terms under 3 characters find nothing (the MSC's advice against scraping).
    let v = search(
        &s,
        &hs,
        UNSTABLE,
        SELF,
        &json!({"requester": REQUESTER, "search_term": "zo"}),
    )
    .await
    .assert_ok();
    assert_eq!(v, json!({"limited": false, "results": []}));

    // With show_externals the external is found too.
    let shown = server(&hs, |c| c.directory.show_externals = true).await;
    let v = search(&shown, &hs, UNSTABLE, SELF, &body).await.assert_ok();
    assert_eq!(
        user_ids(&v),
        ["@zoe:agent.justice.example", "@zora:externe.example"]
    );
}

#[tokio::test]
async fn only_allowed_servers_with_valid_signatures_may_search() {
    let hs = Homeserver::start(None);
    let s = server(&hs, |_| {}).await;
    let body = json!({"requester": REQUESTER, "search_term": "rousseau"});

    // Not signed.
    post(&s, UNSTABLE, &body, None)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    // Signed for a server this directory does not answer for.
    search(&s, &hs, UNSTABLE, "elsewhere.example", &body)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    // A signature over another body, another path, or another destination than announced.
    let auth = hs.x_matrix("POST", UNSTABLE, SELF, &body);
    post(
        &s,
        UNSTABLE,
        &json!({"requester": REQUESTER, "search_term": "anyone"}),
        Some(&auth),
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
    post(&s, STABLE, &body, Some(&auth))
        .await
        .assert_error(403, "M_FORBIDDEN");
    // The requester must be a user of the signing server.
    let r = search(
        &s,
        &hs,
        UNSTABLE,
        SELF,
        &json!({"requester": "@someone:agent.justice.example", "search_term": "rousseau"}),
    )
    .await;
    r.assert_error(400, "M_BAD_JSON");
    assert!(r.text.contains("requester"), "{}", r.text);
    search(&s, &hs, UNSTABLE, SELF, &json!({"search_term": "rousseau"}))
        .await
        .assert_error(400, "M_BAD_JSON");
    search(
        &s,
        &hs,
        UNSTABLE,
        SELF,
        &json!({"requester": REQUESTER, "search_term": "rousseau", "limit": "ten"}),
    )
    .await
    .assert_error(400, "M_BAD_JSON");

    // A server that is not listed is refused before any key is fetched.
    let closed = server(&hs, |c| {
        c.directory.federated_search_servers = vec!["other.example".into()]
    })
    .await;
    search(&closed, &hs, UNSTABLE, SELF, &body)
        .await
        .assert_error(403, "M_FORBIDDEN");
    let nobody = server(&hs, |c| c.directory.federated_search_servers = vec![]).await;
    search(&nobody, &hs, UNSTABLE, SELF, &body)
        .await
        .assert_error(403, "M_FORBIDDEN");
    // "*": any server whose signature verifies.
    let open = server(&hs, |c| {
        c.directory.federated_search_servers = vec!["*".into()]
    })
    .await;
    let v = search(&open, &hs, UNSTABLE, SELF, &body).await.assert_ok();
    assert_eq!(user_ids(&v), ["@zoe:agent.justice.example"]);
}

#[tokio::test]
async fn external_requesters_are_refused_and_servers_are_rate_limited() {
    let hs = Homeserver::start(None);
    // The calling server is the externals' homeserver: its users may not search.
    let s = server(&hs, |c| {
        c.policy.external_homeserver = Some(FINANCES_HS.into());
    })
    .await;
    search(
        &s,
        &hs,
        UNSTABLE,
        SELF,
        &json!({"requester": REQUESTER, "search_term": "rousseau"}),
    )
    .await
    .assert_error(403, "M_FORBIDDEN");

    let limited = server(&hs, |c| {
        c.rate_limits.federated_search_per_server = RateLimit {
            burst: 2,
            every: HumanDuration(std::time::Duration::from_secs(3600)),
        };
    })
    .await;
    let body = json!({"requester": REQUESTER, "search_term": "rousseau"});
    search(&limited, &hs, UNSTABLE, SELF, &body)
        .await
        .assert_ok();
    search(&limited, &hs, STABLE, SELF, &body).await.assert_ok();
    let r = search(&limited, &hs, UNSTABLE, SELF, &body).await;
    r.assert_error(429, "M_LIMIT_EXCEEDED");
    assert!(r.json()["retry_after_ms"].as_u64().unwrap() > 0);
}
