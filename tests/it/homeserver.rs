//! The homeserver API (`/_annuaire/homeserver/v1/…`) over HTTP: tokens made on the command
//! line and through the library, their scope (a shard's token acts for its own users and the
//! addresses the policy sends to it, nothing else), revocation, and what each call does to
//! associations, lookups, invitations (`onbind`, recorded by the homeserver double), the
//! directory and the audit log.

use std::time::Duration;

use annuaire::audit::{Actor, AuditFilter};
use annuaire::homeserver::tokens;
use annuaire::matrix::hashing::lookup_hash;
use serde_json::{Value, json};

use crate::identity::{invite_body, post_auth, register};
use crate::support::fixtures::{FINANCES, FINANCES_HS, JUSTICE, JUSTICE_HS, write_allowlists};
use crate::support::homeserver::Homeserver;
use crate::support::{Builder, Reply, TestServer, eventually, make_account, run_cli};

const HS_API: &str = "/_annuaire/homeserver/v1";
const V2: &str = "/_matrix/identity/v2";
const START_MS: i64 = 1_800_000_000_000;

const MARIE: &str = "@marie:agent.finances.example";
const MARIE_ADDRESS: &str = "marie.curie@finances.gouv.example";

/// Finances and Justice allowlists; both homeservers (and Finances' shadow) routed to the
/// double, which receives the `onbind` calls.
fn builder(hs: &Homeserver) -> Builder {
    let base = hs.base.clone();
    Builder::new().config(move |c, dir| {
        c.policy.allowlists_dir = write_allowlists(dir, &[FINANCES, JUSTICE]);
        c.policy.reload_interval = annuaire::config::HumanDuration(Duration::from_millis(200));
        for name in [FINANCES_HS, JUSTICE_HS, "public.finances.example"] {
            c.federation.homeservers.insert(name.into(), base.clone());
        }
    })
}

/// A new token for `server_name`, made as `annuaire homeserver add` makes it.
fn add_token(s: &TestServer, server_name: &str) -> String {
    let mut conn = s.app.db.get().unwrap();
    tokens::add_homeserver(
        &mut conn,
        server_name,
        &Actor::cli("tester"),
        s.app.clock.now_ms(),
        &mut rand::rngs::OsRng,
    )
    .unwrap()
    .token
}

async fn call(s: &TestServer, token: Option<&str>, name: &str, body: &Value) -> Reply {
    let mut req = s.client.post(s.url(&format!("{HS_API}/{name}"))).json(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    Reply::from(req.send().await.unwrap()).await
}

async fn display_name(s: &TestServer, token: &str, address: &str) -> Reply {
    let url = reqwest::Url::parse_with_params(
        &s.url(&format!("{HS_API}/display_name")),
        &[("medium", "email"), ("address", address)],
    )
    .unwrap();
    Reply::from(s.client.get(url).bearer_auth(token).send().await.unwrap()).await
}

fn threepid(address: &str, mxid: &str) -> Value {
    json!({"medium": "email", "address": address, "mxid": mxid})
}

/// The Matrix ID `/v2/lookup` (sha256) finds for `address`, asked with identity token `token`.
async fn looked_up(s: &TestServer, token: &str, address: &str) -> Option<String> {
    let r = Reply::from(
        s.client
            .get(s.url(&format!("{V2}/hash_details")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
    .assert_ok();
    let pepper = r["lookup_pepper"].as_str().unwrap().to_owned();
    let hash = lookup_hash(address, "email", &pepper);
    let body = post_auth(
        s,
        &format!("{V2}/lookup"),
        token,
        &json!({"algorithm": "sha256", "pepper": pepper, "addresses": [hash.clone()]}),
    )
    .await
    .assert_ok();
    body["mappings"][&hash].as_str().map(str::to_owned)
}

async fn entry(s: &TestServer, mxid: &str) -> Option<annuaire::directory::DirectoryEntry> {
    s.app.directory.entry(mxid).await.unwrap()
}

async fn audit(s: &TestServer, action: &str) -> Vec<annuaire::audit::AuditEntry> {
    let action = action.to_owned();
    s.app
        .db
        .run(move |conn| {
            annuaire::audit::list(
                conn,
                &AuditFilter {
                    action: Some(action),
                    ..AuditFilter::default()
                },
                None,
                100,
            )
        })
        .await
        .unwrap()
        .entries
}

// ---- bind and unbind ----

#[tokio::test]
async fn a_bind_stores_the_association_as_v2_bind_does_and_delivers_invitations() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).manual_clock(START_MS).start().await;
    let token = add_token(&s, FINANCES_HS);
    let jean = "@jean:agent.finances.example";
    let jean_token = register(&s, &hs, jean).await;
    // An invitation waits for Marie's address before she has an account.
    let invite = post_auth(
        &s,
        &format!("{V2}/store-invite"),
        &jean_token,
        &invite_body(MARIE_ADDRESS, jean),
    )
    .await
    .assert_ok();
    assert!(hs.onbinds().is_empty());

    // The homeserver validated the address itself (its own mail) and reports the binding; the
    // address as it spelt it is normalised.
    let r = call(
        &s,
        Some(&token),
        "bind",
        &threepid("Marie.Curie@Finances.Gouv.example", MARIE),
    )
    .await
    .assert_ok();
    assert_eq!(
        r,
        json!({"medium": "email", "address": MARIE_ADDRESS, "mxid": MARIE, "ts": START_MS})
    );
    // Lookups find it (its hashes were made), as after /v2/3pid/bind.
    assert_eq!(
        looked_up(&s, &jean_token, MARIE_ADDRESS).await.as_deref(),
        Some(MARIE)
    );
    // The directory publishes her verified name.
    let e = entry(&s, MARIE).await.expect("an entry after the bind");
    assert_eq!(e.name, "Marie Curie");
    assert_eq!(e.organisation.as_deref(), Some("Finances"));
    // The invitation goes to her homeserver.
    eventually(Duration::from_secs(20), "the onbind call", async || {
        hs.onbinds().iter().any(|(status, _)| *status == 200)
    })
    .await;
    let calls = hs.onbinds();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let body = &calls[0].1;
    assert_eq!(body["mxid"], MARIE);
    assert_eq!(body["address"], MARIE_ADDRESS);
    assert_eq!(body["invites"][0]["signed"]["token"], invite["token"]);

    let address = MARIE_ADDRESS.to_owned();
    eventually(
        Duration::from_secs(20),
        "the delivery recorded",
        async || {
            let address = address.clone();
            s.app
                .db
                .run(move |conn| {
                    annuaire::store::invites::invites_to_address(conn, "email", &address)
                })
                .await
                .unwrap()
                .iter()
                .all(|i| i.delivered_at.is_some())
        },
    )
    .await;
    // Idempotent: the same call again changes nothing and delivers nothing twice.
    call(&s, Some(&token), "bind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hs.onbinds().len(), 1);
    assert_eq!(entry(&s, MARIE).await.unwrap().name, "Marie Curie");

    // A second address of hers binds too; unbinding it keeps her entry (the first is bound).
    let second = "m.curie@impots.finances.gouv.example";
    call(&s, Some(&token), "bind", &threepid(second, MARIE))
        .await
        .assert_ok();
    assert_eq!(
        looked_up(&s, &jean_token, second).await.as_deref(),
        Some(MARIE)
    );
    let r = call(&s, Some(&token), "unbind", &threepid(second, MARIE))
        .await
        .assert_ok();
    assert_eq!(r, json!({"removed": true}));
    assert_eq!(looked_up(&s, &jean_token, second).await, None);
    assert!(entry(&s, MARIE).await.is_some());
    // Unbinding again is no error, and says nothing was removed.
    let r = call(&s, Some(&token), "unbind", &threepid(second, MARIE))
        .await
        .assert_ok();
    assert_eq!(r, json!({"removed": false}));
    // An unbind never removes someone else's association.
    let r = call(
        &s,
        Some(&token),
        "unbind",
        &threepid(MARIE_ADDRESS, "@other:agent.finances.example"),
    )
    .await
    .assert_ok();
    assert_eq!(r, json!({"removed": false}));
    assert_eq!(
        looked_up(&s, &jean_token, MARIE_ADDRESS).await.as_deref(),
        Some(MARIE)
    );
    // Her last address goes: so does her entry.
    call(&s, Some(&token), "unbind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    assert!(entry(&s, MARIE).await.is_none());
    assert_eq!(looked_up(&s, &jean_token, MARIE_ADDRESS).await, None);
}

#[tokio::test]
async fn a_token_acts_only_for_its_own_homeserver() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    let finances = add_token(&s, FINANCES_HS);
    let shadow = add_token(&s, "public.finances.example");
    let justice = add_token(&s, JUSTICE_HS);
    let luc_address = "luc@justice.gouv.example";

    // Shard A's token cannot bind a user of shard B…
    let r = call(
        &s,
        Some(&finances),
        "bind",
        &threepid(MARIE_ADDRESS, "@x:agent.justice.example"),
    )
    .await;
    r.assert_error(403, "M_FORBIDDEN");
    let message = r.json()["error"].as_str().unwrap().to_owned();
    assert!(message.contains("Matrix ID rule"), "{message}");
    assert!(message.contains("agent.finances.example"), "{message}");
    // …nor an address the policy sends to shard B, even for its own user…
    let r = call(
        &s,
        Some(&finances),
        "bind",
        &threepid(luc_address, "@luc:agent.finances.example"),
    )
    .await;
    r.assert_error(403, "M_FORBIDDEN");
    let message = r.json()["error"].as_str().unwrap().to_owned();
    assert!(message.contains("address rule"), "{message}");
    assert!(message.contains("agent.justice.example"), "{message}");
    // …nor an address the policy denies, nor one of an unknown domain.
    for address in ["x@webmail.finances.gouv.example", "someone@unknown.example"] {
        let r = call(
            &s,
            Some(&finances),
            "bind",
            &threepid(address, "@x:agent.finances.example"),
        )
        .await;
        r.assert_error(403, "M_FORBIDDEN");
        assert!(
            r.json()["error"].as_str().unwrap().contains("address rule"),
            "{}",
            r.text
        );
    }
    // Nothing of that was stored.
    let probe = make_account(&s.app, "@probe:agent.finances.example").await;
    assert_eq!(looked_up(&s, &probe, luc_address).await, None);
    assert_eq!(looked_up(&s, &probe, MARIE_ADDRESS).await, None);
    // Nor may it ask for the name of shard B's address, or act on shard B's users otherwise.
    display_name(&s, &finances, luc_address)
        .await
        .assert_error(403, "M_FORBIDDEN");
    for (name, body) in [
        (
            "unbind",
            threepid(luc_address, "@luc:agent.justice.example"),
        ),
        (
            "profile",
            json!({"user_id": "@luc:agent.justice.example", "avatar_url": null}),
        ),
        (
            "deactivated",
            json!({"user_id": "@luc:agent.justice.example", "erased": true}),
        ),
    ] {
        let r = call(&s, Some(&finances), name, &body).await;
        r.assert_error(403, "M_FORBIDDEN");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("Matrix ID rule"),
            "{name}: {}",
            r.text
        );
    }

    // Shard B's own token does it all; the shadow homeserver's token acts for its own users on
    // the addresses of the homeserver it shadows.
    call(
        &s,
        Some(&justice),
        "bind",
        &threepid(luc_address, "@luc:agent.justice.example"),
    )
    .await
    .assert_ok();
    call(
        &s,
        Some(&shadow),
        "bind",
        &threepid(MARIE_ADDRESS, "@marie:public.finances.example"),
    )
    .await
    .assert_ok();
    assert_eq!(
        looked_up(&s, &probe, luc_address).await.as_deref(),
        Some("@luc:agent.justice.example")
    );
    assert_eq!(
        looked_up(&s, &probe, MARIE_ADDRESS).await.as_deref(),
        Some("@marie:public.finances.example")
    );
    // Server names compare without regard to case.
    call(
        &s,
        Some(&finances),
        "bind",
        &threepid(MARIE_ADDRESS, "@marie:Agent.Finances.example"),
    )
    .await
    .assert_ok();
}

#[tokio::test]
async fn tokens_are_needed_from_the_internal_networks_and_revocation_stops_them() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| c.http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()])
        .start()
        .await;
    let token = add_token(&s, FINANCES_HS);
    let body = threepid(MARIE_ADDRESS, MARIE);
    call(&s, None, "bind", &body)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    call(&s, Some("not-a-token"), "bind", &body)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    // An identity access token is not a homeserver token.
    let identity = make_account(&s.app, MARIE).await;
    call(&s, Some(&identity), "bind", &body)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    // Not in the query string either (it would reach access logs).
    let r = Reply::from(
        s.client
            .post(s.url(&format!("{HS_API}/bind?access_token={token}")))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(401, "M_UNAUTHORIZED");
    // From outside the internal networks, even with a good token.
    let r = Reply::from(
        s.client
            .post(s.url(&format!("{HS_API}/bind")))
            .bearer_auth(&token)
            .header("x-forwarded-for", "198.51.100.7")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(403, "M_FORBIDDEN");
    assert!(r.text.contains("internal networks"), "{}", r.text);
    call(&s, Some(&token), "bind", &body).await.assert_ok();

    // Revoked: refused at once; a new token works, the old one never again.
    {
        let mut conn = s.app.db.get().unwrap();
        let revoked = tokens::revoke_homeserver(
            &mut conn,
            FINANCES_HS,
            &Actor::cli("tester"),
            s.app.clock.now_ms(),
        )
        .unwrap();
        assert_eq!(revoked.status, "revoked");
        // Twice is an error, naming the server.
        let e = tokens::revoke_homeserver(
            &mut conn,
            FINANCES_HS,
            &Actor::cli("tester"),
            s.app.clock.now_ms(),
        )
        .unwrap_err();
        assert!(e.to_string().contains(FINANCES_HS), "{e}");
    }
    call(&s, Some(&token), "bind", &body)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    let fresh = add_token(&s, FINANCES_HS);
    assert_ne!(fresh, token);
    call(&s, Some(&fresh), "bind", &body).await.assert_ok();
    call(&s, Some(&token), "bind", &body)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    // While a token is active, another is refused.
    {
        let mut conn = s.app.db.get().unwrap();
        let e = tokens::add_homeserver(
            &mut conn,
            FINANCES_HS,
            &Actor::cli("tester"),
            s.app.clock.now_ms(),
            &mut rand::rngs::OsRng,
        )
        .unwrap_err();
        assert!(e.to_string().contains("revoke it first"), "{e}");
    }

    // Audited, with who and what, never the token or its hash.
    let added = audit(&s, "homeserver.add").await;
    let revoked = audit(&s, "homeserver.revoke").await;
    assert_eq!((added.len(), revoked.len()), (2, 1));
    for row in added.iter().chain(&revoked) {
        assert_eq!(row.actor, "cli:tester");
        assert_eq!(row.target, format!("homeserver:{FINANCES_HS}"));
        let text = serde_json::to_string(row).unwrap();
        assert!(!text.contains(&token) && !text.contains(&fresh), "{text}");
        assert!(!text.contains("token_hash"), "{text}");
    }
    assert_eq!(revoked[0].before.as_ref().unwrap()["status"], "active");
    assert_eq!(revoked[0].after.as_ref().unwrap()["status"], "revoked");
    // The newest `add` replaced the revoked row: its `before` is the revoked token.
    assert_eq!(added[0].before.as_ref().unwrap()["status"], "revoked");
    assert_eq!(added[0].after.as_ref().unwrap()["status"], "active");
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    let token = add_token(&s, FINANCES_HS);
    let t = Some(token.as_str());
    call(
        &s,
        t,
        "bind",
        &json!({"medium": "msisdn", "address": "33612345678", "mxid": MARIE}),
    )
    .await
    .assert_error(400, "M_INVALID_PARAM");
    call(&s, t, "bind", &threepid("not an address", MARIE))
        .await
        .assert_error(400, "M_INVALID_EMAIL");
    call(&s, t, "bind", &threepid(MARIE_ADDRESS, "marie"))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    call(&s, t, "bind", &json!({"medium": "email", "mxid": MARIE}))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    call(
        &s,
        t,
        "bind",
        &json!({"medium": 1, "address": [], "mxid": MARIE}),
    )
    .await
    .assert_error(400, "M_BAD_JSON");
    let r = Reply::from(
        s.client
            .post(s.url(&format!("{HS_API}/unbind")))
            .bearer_auth(&token)
            .body("not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(400, "M_NOT_JSON");
    call(&s, t, "deactivated", &json!({"user_id": MARIE}))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    call(
        &s,
        t,
        "profile",
        &json!({"user_id": MARIE, "displayname": "x".repeat(257)}),
    )
    .await
    .assert_error(400, "M_INVALID_PARAM");
    let r = Reply::from(
        s.client
            .get(s.url(&format!("{HS_API}/display_name?medium=email")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(400, "M_MISSING_PARAMS");
    // Wrong methods and unknown calls are Matrix errors too.
    let r = Reply::from(
        s.client
            .get(s.url(&format!("{HS_API}/bind")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(405, "M_UNRECOGNIZED");
}

// ---- names and profiles ----

#[tokio::test]
async fn display_names_come_from_the_admin_then_ldap_then_the_address() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    let token = add_token(&s, FINANCES_HS);
    // Before any account exists: the address's local part, with the rule's label.
    let r = display_name(&s, &token, "Jean-Pierre.Dupont@finances.gouv.example")
        .await
        .assert_ok();
    assert_eq!(
        r,
        json!({"displayname": "Jean-Pierre Dupont [Finances]", "organisation": "Finances"})
    );
    // The agency LDAP directory knows her.
    let key = annuaire::directory::email_lookup_key(MARIE_ADDRESS);
    s.app
        .db
        .run(move |conn| {
            annuaire::store::directory::upsert_ldap_names(
                conn,
                &[annuaire::store::directory::LdapNameRow {
                    email_key: key,
                    name: "Marie Skłodowska-Curie".into(),
                    organisation: Some("Direction du Budget".into()),
                    dn: "uid=mcurie,ou=people".into(),
                    sync_run: "r1".into(),
                    synced_at: 0,
                }],
            )
        })
        .await
        .unwrap();
    let r = display_name(&s, &token, MARIE_ADDRESS).await.assert_ok();
    assert_eq!(
        r,
        json!({"displayname": "Marie Skłodowska-Curie [Finances]", "organisation": "Finances"})
    );
    // An administrator's override of her entry wins.
    call(&s, Some(&token), "bind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    s.app
        .directory
        .set_admin_name(MARIE, Some("Marie Curie"))
        .await
        .unwrap();
    let r = display_name(&s, &token, MARIE_ADDRESS).await.assert_ok();
    assert_eq!(r["displayname"], "Marie Curie [Finances]");
    // Another ministry's address, or a denied one, is not Finances' to name.
    for address in [
        "luc@justice.gouv.example",
        "x@webmail.finances.gouv.example",
    ] {
        display_name(&s, &token, address)
            .await
            .assert_error(403, "M_FORBIDDEN");
    }
}

#[tokio::test]
async fn profiles_reach_the_directory_but_never_replace_the_verified_name() {
    let hs = Homeserver::start(None);
    let s = crate::admin::start(builder(&hs)).await;
    let token = add_token(&s, FINANCES_HS);
    let t = Some(token.as_str());
    // A profile of a user without an entry changes nothing, and is no error.
    call(
        &s,
        t,
        "profile",
        &json!({"user_id": MARIE, "displayname": "Marie", "avatar_url": "mxc://hs/a"}),
    )
    .await
    .assert_ok();
    assert!(entry(&s, MARIE).await.is_none());
    call(&s, t, "bind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    let r = call(
        &s,
        t,
        "profile",
        &json!({"user_id": MARIE, "displayname": "  La Reine du Radium  ", "avatar_url": "mxc://agent.finances.example/radium"}),
    )
    .await
    .assert_ok();
    assert_eq!(r, json!({}));
    let e = entry(&s, MARIE).await.unwrap();
    assert_eq!(e.name, "Marie Curie", "the verified name stays");
    assert_eq!(
        e.avatar_url.as_deref(),
        Some("mxc://agent.finances.example/radium")
    );
    let results = s
        .app
        .directory
        .search("marie", None, None, annuaire::directory::Viewer::Operator)
        .await
        .unwrap();
    assert_eq!(results.results[0].display_name, "Marie Curie [Finances]");
    assert_eq!(
        results.results[0].avatar_url.as_deref(),
        Some("mxc://agent.finances.example/radium")
    );
    // Nobody finds her by what she typed.
    let results = s
        .app
        .directory
        .search("radium", None, None, annuaire::directory::Viewer::Operator)
        .await
        .unwrap();
    assert!(results.results.is_empty());
    // Administrators see it next to the verified name.
    let admin = crate::admin::editor(&s).await;
    let path = format!("/_annuaire/admin/v1/directory/{MARIE}");
    let view = Reply::from(
        s.client
            .get(s.url(&path))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await
    .assert_ok();
    assert_eq!(view["user_displayname"], "La Reine du Radium");
    assert_eq!(view["name"], "Marie Curie");
    // A field left out is unchanged; null clears; a non-mxc avatar is not published.
    call(
        &s,
        t,
        "profile",
        &json!({"user_id": MARIE, "avatar_url": null}),
    )
    .await
    .assert_ok();
    let e = entry(&s, MARIE).await.unwrap();
    assert_eq!(e.avatar_url, None);
    let view = Reply::from(
        s.client
            .get(s.url(&path))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await
    .assert_ok();
    assert_eq!(view["user_displayname"], "La Reine du Radium");
    call(
        &s,
        t,
        "profile",
        &json!({"user_id": MARIE, "displayname": null, "avatar_url": "https://tracker.example/p.gif"}),
    )
    .await
    .assert_ok();
    let e = entry(&s, MARIE).await.unwrap();
    assert_eq!(e.avatar_url, None);
    let view = Reply::from(
        s.client
            .get(s.url(&path))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await
    .assert_ok();
    assert_eq!(view["user_displayname"], Value::Null);
    // A later bind (a new address) keeps what the homeserver reported.
    call(
        &s,
        t,
        "profile",
        &json!({"user_id": MARIE, "displayname": "Marie", "avatar_url": "mxc://hs/b"}),
    )
    .await
    .assert_ok();
    call(
        &s,
        t,
        "bind",
        &threepid("m.curie@impots.finances.gouv.example", MARIE),
    )
    .await
    .assert_ok();
    let e = entry(&s, MARIE).await.unwrap();
    assert_eq!(e.avatar_url.as_deref(), Some("mxc://hs/b"));
}

// ---- deactivation ----

#[tokio::test]
async fn a_deactivation_removes_the_entry_and_the_associations() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    let token = add_token(&s, FINANCES_HS);
    let t = Some(token.as_str());
    let probe = make_account(&s.app, "@probe:agent.finances.example").await;
    let second = "m.curie@impots.finances.gouv.example";
    for address in [MARIE_ADDRESS, second] {
        call(&s, t, "bind", &threepid(address, MARIE))
            .await
            .assert_ok();
    }
    assert!(entry(&s, MARIE).await.is_some());
    let r = call(
        &s,
        t,
        "deactivated",
        &json!({"user_id": MARIE, "erased": false}),
    )
    .await
    .assert_ok();
    assert_eq!(r, json!({"removed_associations": 2}));
    assert!(entry(&s, MARIE).await.is_none());
    assert_eq!(looked_up(&s, &probe, MARIE_ADDRESS).await, None);
    assert_eq!(looked_up(&s, &probe, second).await, None);
    // Again: nothing left to remove.
    let r = call(
        &s,
        t,
        "deactivated",
        &json!({"user_id": MARIE, "erased": false}),
    )
    .await
    .assert_ok();
    assert_eq!(r, json!({"removed_associations": 0}));
    // No erasure was asked: nothing audited.
    assert!(audit(&s, "threepid.erase").await.is_empty());
}

#[tokio::test]
async fn a_deactivation_with_erasure_erases_what_synapse_unbound_first() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    let token = add_token(&s, FINANCES_HS);
    let t = Some(token.as_str());
    let jean = "@jean:agent.finances.example";
    let jean_token = register(&s, &hs, jean).await;
    let second = "m.curie@impots.finances.gouv.example";
    let third = "marie.c@finances.gouv.example";
    for address in [MARIE_ADDRESS, second, third] {
        call(&s, t, "bind", &threepid(address, MARIE))
            .await
            .assert_ok();
    }
    // Synapse deactivates with erasure: it removes each address (unbind), then reports the
    // deactivation. Meanwhile her third address went to a colleague (re-bound): not erased.
    for address in [MARIE_ADDRESS, second, third] {
        call(&s, t, "unbind", &threepid(address, MARIE))
            .await
            .assert_ok();
    }
    let colleague = "@claire:agent.finances.example";
    call(&s, t, "bind", &threepid(third, colleague))
        .await
        .assert_ok();
    // An invitation sent to her first address after the unbind (nobody holds it now).
    let invite = post_auth(
        &s,
        &format!("{V2}/store-invite"),
        &jean_token,
        &invite_body(MARIE_ADDRESS, jean),
    )
    .await
    .assert_ok();
    assert!(invite["token"].is_string());
    let r = call(
        &s,
        t,
        "deactivated",
        &json!({"user_id": MARIE, "erased": true}),
    )
    .await
    .assert_ok();
    // Synapse's unbinds came first: this call removed no association itself.
    assert_eq!(r, json!({"removed_associations": 0}));
    // Both of her addresses were erased, audited as the homeserver's doing.
    // (The audit log keeps erased addresses only as pseudonyms.)
    let erased = audit(&s, "threepid.erase").await;
    let targets: Vec<&str> = erased.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets.len(), 2, "{targets:?}");
    for target in &targets {
        assert!(target.starts_with("threepid:email:erased:"), "{target}");
        assert!(!target.contains(second) && !target.contains(MARIE_ADDRESS));
    }
    assert_ne!(targets[0], targets[1]);
    for row in &erased {
        assert_eq!(row.actor, format!("homeserver:{FINANCES_HS}"));
    }
    let address = MARIE_ADDRESS.to_owned();
    let invites = s
        .app
        .db
        .run(move |conn| annuaire::store::invites::invites_to_address(conn, "email", &address))
        .await
        .unwrap();
    assert!(invites.is_empty(), "the invitation to an erased address");
    // Her colleague keeps the third address.
    let probe = make_account(&s.app, "@probe:agent.finances.example").await;
    assert_eq!(
        looked_up(&s, &probe, third).await.as_deref(),
        Some(colleague)
    );
    assert!(entry(&s, colleague).await.is_some());
    assert!(entry(&s, MARIE).await.is_none());
    // Nothing is remembered of her unbinds any more: a second call erases nothing more.
    call(
        &s,
        t,
        "deactivated",
        &json!({"user_id": MARIE, "erased": true}),
    )
    .await
    .assert_ok();
    assert_eq!(audit(&s, "threepid.erase").await.len(), 2);
}

#[tokio::test]
async fn an_administrators_erasure_forgets_what_the_homeserver_api_remembered() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).manual_clock(START_MS).start().await;
    let token = add_token(&s, FINANCES_HS);
    let t = Some(token.as_str());
    call(&s, t, "bind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    call(&s, t, "unbind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    let remembered = async || {
        s.app
            .db
            .run(|conn| annuaire::store::homeserver::unbinds_of(conn, MARIE, 0))
            .await
            .unwrap()
    };
    assert_eq!(
        remembered().await,
        [("email".to_owned(), MARIE_ADDRESS.to_owned())]
    );
    s.app
        .identity
        .erase("email", MARIE_ADDRESS, &Actor::admin("ed"))
        .await
        .unwrap();
    assert!(remembered().await.is_empty());
    // Unbinds are remembered for a week, then purged.
    call(&s, t, "bind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    call(&s, t, "unbind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    assert_eq!(remembered().await.len(), 1);
    s.clock.as_ref().unwrap().advance(8 * 24 * 3600 * 1000);
    call(
        &s,
        t,
        "unbind",
        &threepid("other@finances.gouv.example", MARIE),
    )
    .await
    .assert_ok();
    assert_eq!(
        remembered().await,
        [("email".to_owned(), "other@finances.gouv.example".to_owned())]
    );
}

#[tokio::test]
async fn binds_unbinds_and_deactivations_reach_another_instances_lookups() {
    // Instance B answers lookups from its in-memory index: what the homeserver API does through
    // instance A reaches it by the change feed.
    let hs = Homeserver::start(None);
    let a = builder(&hs).start().await;
    let b = crate::caches::second_instance(&a).await;
    let token = add_token(&a, FINANCES_HS);
    let t = Some(token.as_str());
    let probe = make_account(&a.app, "@probe:agent.finances.example").await;
    assert_eq!(crate::caches::index_ready(&b).await, 0);
    let second = "m.curie@impots.finances.gouv.example";

    call(&a, t, "bind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(
        looked_up(&b, &probe, MARIE_ADDRESS).await.as_deref(),
        Some(MARIE)
    );
    call(&a, t, "unbind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(looked_up(&b, &probe, MARIE_ADDRESS).await, None);

    // Bound again, then a deactivation without erasure, seen by B's own feed reader.
    for address in [MARIE_ADDRESS, second] {
        call(&a, t, "bind", &threepid(address, MARIE))
            .await
            .assert_ok();
    }
    eventually(
        Duration::from_secs(30),
        "B finds the second address",
        async || looked_up(&b, &probe, second).await.is_some(),
    )
    .await;
    call(
        &a,
        t,
        "deactivated",
        &json!({"user_id": MARIE, "erased": false}),
    )
    .await
    .assert_ok();
    eventually(
        Duration::from_secs(30),
        "B forgets both addresses",
        async || {
            looked_up(&b, &probe, MARIE_ADDRESS).await.is_none()
                && looked_up(&b, &probe, second).await.is_none()
        },
    )
    .await;

    // A deactivation with erasure.
    call(&a, t, "bind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(
        looked_up(&b, &probe, MARIE_ADDRESS).await.as_deref(),
        Some(MARIE)
    );
    call(
        &a,
        t,
        "deactivated",
        &json!({"user_id": MARIE, "erased": true}),
    )
    .await
    .assert_ok();
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(looked_up(&b, &probe, MARIE_ADDRESS).await, None);
    // B answered from its index all along (nothing is left in it).
    assert_eq!(b.app.identity.lookup_index_size(), Some(0));
}

// ---- the command line ----

#[tokio::test]
async fn the_command_line_adds_lists_and_revokes_tokens() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    let url = s.app.config.database_url();
    let dir = s.dir.path();
    let env = [
        ("ANNUAIRE_DATABASE__URL", url.as_str()),
        ("USER", "operator"),
        ("ANNUAIRE_LOG__LEVEL", "warn"),
    ];
    let (code, out, err) = run_cli(dir, &["homeserver", "add", "Agent.Finances.example"], &env);
    assert_eq!(code, 0, "{out}\n{err}");
    let token = out.trim().to_owned();
    assert_eq!(out.lines().count(), 1, "only the token on stdout: {out}");
    assert_eq!(token.len(), tokens::TOKEN_LEN);
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(err.contains("agent.finances.example"), "{err}");
    // The running server takes it at once.
    call(&s, Some(&token), "bind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_ok();
    // A server no rule names gets a token, with a note.
    let (code, _, err) = run_cli(dir, &["homeserver", "add", "hs.nowhere.example"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no allowlist rule names"), "{err}");
    // Twice: refused, nothing printed on stdout.
    let (code, out, err) = run_cli(dir, &["homeserver", "add", FINANCES_HS], &env);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.is_empty());
    assert!(err.contains("already has a token"), "{err}");
    let (code, _, err) = run_cli(dir, &["homeserver", "add", "not a server"], &env);
    assert_eq!(code, 2);
    assert!(err.contains("not a server name"), "{err}");

    let (code, out, _) = run_cli(dir, &["homeserver", "list"], &env);
    assert_eq!(code, 0);
    assert!(out.contains(FINANCES_HS) && out.contains("active"), "{out}");
    assert!(
        out.contains("2 homeservers, 2 with an active token"),
        "{out}"
    );
    assert!(!out.contains(&token));

    let (code, out, err) = run_cli(dir, &["homeserver", "revoke", FINANCES_HS], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    call(&s, Some(&token), "bind", &threepid(MARIE_ADDRESS, MARIE))
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    let (code, _, err) = run_cli(dir, &["homeserver", "revoke", FINANCES_HS], &env);
    assert_eq!(code, 2);
    assert!(err.contains("no token to revoke"), "{err}");

    let (code, out, _) = run_cli(dir, &["homeserver", "list", "--json"], &env);
    assert_eq!(code, 0);
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    let finances = rows
        .iter()
        .find(|r| r["server_name"] == FINANCES_HS)
        .unwrap();
    assert_eq!(finances["status"], "revoked");
    assert_eq!(finances["created_by"], "cli:operator");
    assert!(finances["last_used_at"].is_i64(), "{finances}");
    assert!(finances["revoked_at"].is_i64());

    let rows = audit(&s, "homeserver.*").await;
    let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        ["homeserver.revoke", "homeserver.add", "homeserver.add"]
    );
    assert!(rows.iter().all(|r| r.actor == "cli:operator"));
}
