//! Directory moderation, erasure of an address, and the directory and outbox statistics,
//! through the admin API.

use annuaire::directory::Viewer;
use annuaire::identity::associations::{self, Association};
use annuaire::policy::{Decision, Outcome, ReasonCode, normalize_email};
use annuaire::store::invites::InviteRow;
use annuaire::store::sessions::SessionRow;
use reqwest::Method;
use serde_json::{Value, json};

use super::{T0, audit, call, editor, get, internal_info, start, viewer, with_allowlists};
use crate::support::{Builder, Reply, TestServer};

const DIR: &str = "/_annuaire/admin/v1/directory";
const JEAN: &str = "@jean:agent.finances.example";
const MARIE: &str = "@marie:agent.finances.example";
const EXT: &str = "@ext:externes.example";
const HANS: &str = "@hans:agent.aa.example";

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

/// Publishes a directory entry as a bind does.
async fn publish(s: &TestServer, mxid: &str, email: &str, org: Option<&str>, outcome: Outcome) {
    let address = normalize_email(email).unwrap();
    s.app
        .directory
        .on_bind(mxid, &address, &decision(outcome, org))
        .await
        .unwrap();
}

/// Jean and Marie (Finances), an external user, Hans (AA).
async fn people(s: &TestServer) {
    publish(
        s,
        JEAN,
        "jean.dupont@finances.gouv.example",
        Some("Finances"),
        Outcome::Allowed,
    )
    .await;
    publish(
        s,
        MARIE,
        "marie.curie@finances.gouv.example",
        Some("Finances"),
        Outcome::Allowed,
    )
    .await;
    publish(
        s,
        EXT,
        "consultant@partner.example",
        None,
        Outcome::InviteRequired,
    )
    .await;
    publish(
        s,
        HANS,
        "hans.mueller@aa.example",
        Some("AA"),
        Outcome::Allowed,
    )
    .await;
}

/// The user ids a user search returns.
async fn user_search(s: &TestServer, term: &str) -> Vec<String> {
    s.app
        .directory
        .search(term, None, None, Viewer::Operator)
        .await
        .unwrap()
        .results
        .into_iter()
        .map(|r| r.user_id)
        .collect()
}

fn ids(page: &Value) -> Vec<String> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user_id"].as_str().unwrap().to_string())
        .collect()
}

async fn put_name(s: &TestServer, t: &str, user_id: &str, body: &Value) -> Reply {
    call(
        s,
        Method::PUT,
        &format!("{DIR}/{user_id}/name"),
        Some(t),
        Some(body),
    )
    .await
}

async fn post(s: &TestServer, t: Option<&str>, path: &str, body: Option<&Value>) -> Reply {
    call(s, Method::POST, path, t, body).await
}

#[tokio::test]
async fn operators_find_every_entry_and_moderation_shows_in_user_searches() {
    let s = start(Builder::new()).await;
    people(&s).await;
    let t = editor(&s).await;

    // Listing: by user id, pages, filters; hidden and external entries are there, marked.
    let all = get(&s, DIR, &t).await.assert_ok();
    assert_eq!(ids(&all), [EXT, HANS, JEAN, MARIE]);
    assert!(all.get("next_batch").is_none());
    let ext = &all["entries"][0];
    assert_eq!(ext["external"], true);
    assert_eq!(ext["searchable"], false);
    assert_eq!(ext["visibility"], "visible");
    let page = get(&s, &format!("{DIR}?limit=3"), &t).await.assert_ok();
    assert_eq!(ids(&page), [EXT, HANS, JEAN]);
    let next = page["next_batch"].as_str().unwrap();
    let rest = get(
        &s,
        &format!("{DIR}?limit=3&next_batch={}", urlencode(next)),
        &t,
    )
    .await
    .assert_ok();
    assert_eq!(ids(&rest), [MARIE]);
    assert!(rest.get("next_batch").is_none());
    let finances = get(&s, &format!("{DIR}?organisation=Finances"), &t)
        .await
        .assert_ok();
    assert_eq!(ids(&finances), [JEAN, MARIE]);
    let aa = get(&s, &format!("{DIR}?homeserver=agent.aa.example"), &t)
        .await
        .assert_ok();
    assert_eq!(ids(&aa), [HANS]);
    let externals = get(&s, &format!("{DIR}?external=true"), &t)
        .await
        .assert_ok();
    assert_eq!(ids(&externals), [EXT]);

    // One entry, by its user id as is or percent-encoded.
    let jean = get(&s, &format!("{DIR}/{JEAN}"), &t).await.assert_ok();
    assert_eq!(jean["name"], "Jean Dupont");
    assert_eq!(jean["name_source"], "email");
    assert_eq!(jean["display_name"], "Jean Dupont [Finances]");
    assert_eq!(jean["searchable"], true);
    let encoded = get(&s, &format!("{DIR}/{}", urlencode(JEAN)), &t)
        .await
        .assert_ok();
    assert_eq!(encoded, jean);

    // Hide: gone from user searches at once, still found by operators, marked.
    assert_eq!(user_search(&s, "jean").await, [JEAN]);
    let hidden = post(&s, Some(&t), &format!("{DIR}/{JEAN}/hide"), None)
        .await
        .assert_ok();
    assert_eq!(hidden["visibility"], "hidden");
    assert_eq!(hidden["searchable"], false);
    assert!(user_search(&s, "jean").await.is_empty());
    let found = get(&s, &format!("{DIR}?q=jean"), &t).await.assert_ok();
    assert_eq!(ids(&found), [JEAN]);
    assert_eq!(found["entries"][0]["visibility"], "hidden");
    assert_eq!(found["limited"], false);
    let only_hidden = get(&s, &format!("{DIR}?visibility=hidden"), &t)
        .await
        .assert_ok();
    assert_eq!(ids(&only_hidden), [JEAN]);
    // Hiding again changes nothing and writes no audit row.
    post(&s, Some(&t), &format!("{DIR}/{JEAN}/hide"), None)
        .await
        .assert_ok();
    // Unhide: back in user searches.
    let shown = post(&s, Some(&t), &format!("{DIR}/{JEAN}/unhide"), None)
        .await
        .assert_ok();
    assert_eq!(shown["visibility"], "visible");
    assert_eq!(user_search(&s, "jean").await, [JEAN]);

    // Rename: the verified name override (source admin) is what searches find and show.
    assert!(user_search(&s, "lenoir").await.is_empty());
    let renamed = put_name(&s, &t, JEAN, &json!({"name": "  Jean-Marc   Lenoir "}))
        .await
        .assert_ok();
    assert_eq!(renamed["name"], "Jean-Marc Lenoir");
    assert_eq!(renamed["name_source"], "admin");
    assert_eq!(renamed["admin_name"], "Jean-Marc Lenoir");
    assert_eq!(renamed["display_name"], "Jean-Marc Lenoir [Finances]");
    assert_eq!(user_search(&s, "lenoir").await, [JEAN]);
    assert_eq!(user_search(&s, "jean-marc").await, [JEAN]);
    let shown = s
        .app
        .directory
        .search("lenoir", None, None, Viewer::Operator)
        .await
        .unwrap();
    assert_eq!(shown.results[0].display_name, "Jean-Marc Lenoir [Finances]");
    // Operators' search ranks like user searches.
    let ranked = get(&s, &format!("{DIR}?q=lenoir"), &t).await.assert_ok();
    assert_eq!(ids(&ranked), [JEAN]);
    // {name: null} removes the override: the name comes from the address again.
    let reverted = put_name(&s, &t, JEAN, &json!({"name": null}))
        .await
        .assert_ok();
    assert_eq!(reverted["name"], "Jean Dupont");
    assert_eq!(reverted["name_source"], "email");
    assert_eq!(reverted["admin_name"], Value::Null);
    assert!(user_search(&s, "lenoir").await.is_empty());

    // Remove.
    assert_eq!(user_search(&s, "marie").await, [MARIE]);
    let removed = call(
        &s,
        Method::DELETE,
        &format!("{DIR}/{MARIE}"),
        Some(&t),
        None,
    )
    .await
    .assert_ok();
    assert_eq!(removed["user_id"], MARIE);
    assert!(user_search(&s, "marie").await.is_empty());
    get(&s, &format!("{DIR}/{MARIE}"), &t)
        .await
        .assert_error(404, "M_NOT_FOUND");
    call(
        &s,
        Method::DELETE,
        &format!("{DIR}/{MARIE}"),
        Some(&t),
        None,
    )
    .await
    .assert_error(404, "M_NOT_FOUND");

    // The audit log: each change with the entry before and after, newest first.
    let jean_log = audit(&s, &t, &format!("?target=directory:{}", urlencode(JEAN))).await;
    let actions: Vec<&str> = jean_log
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "directory.rename",
            "directory.rename",
            "directory.unhide",
            "directory.hide"
        ]
    );
    assert!(jean_log.iter().all(|e| e["actor"] == "ed"));
    assert_eq!(jean_log[3]["before"]["visibility"], "visible");
    assert_eq!(jean_log[3]["after"]["visibility"], "hidden");
    assert_eq!(jean_log[1]["before"]["name"], "Jean Dupont");
    assert_eq!(jean_log[1]["after"]["name"], "Jean-Marc Lenoir");
    assert_eq!(jean_log[1]["after"]["name_source"], "admin");
    assert_eq!(jean_log[0]["after"]["admin_name"], Value::Null);
    let marie_log = audit(&s, &t, "?action=directory.remove").await;
    assert_eq!(marie_log.len(), 1);
    assert_eq!(marie_log[0]["target"], format!("directory:{MARIE}"));
    assert_eq!(marie_log[0]["before"]["name"], "Marie Curie");
    assert_eq!(marie_log[0]["after"], Value::Null);
}

#[tokio::test]
async fn moderation_needs_an_editor_and_valid_input() {
    let s = start(Builder::new()).await;
    people(&s).await;
    let t = editor(&s).await;
    let v = viewer(&s).await;

    // No token.
    call(&s, Method::GET, DIR, None, None)
        .await
        .assert_error(401, "M_MISSING_TOKEN");
    post(&s, None, &format!("{DIR}/{JEAN}/hide"), None)
        .await
        .assert_error(401, "M_MISSING_TOKEN");
    call(
        &s,
        Method::DELETE,
        &format!("{DIR}/{JEAN}"),
        Some("not.a.token"),
        None,
    )
    .await
    .assert_error(401, "M_UNKNOWN_TOKEN");
    // A viewer reads, and changes nothing.
    get(&s, DIR, &v).await.assert_ok();
    get(&s, &format!("{DIR}/{JEAN}"), &v).await.assert_ok();
    for path in ["hide", "unhide"] {
        post(&s, Some(&v), &format!("{DIR}/{JEAN}/{path}"), None)
            .await
            .assert_error(403, "M_FORBIDDEN");
    }
    put_name(&s, &v, JEAN, &json!({"name": "X"}))
        .await
        .assert_error(403, "M_FORBIDDEN");
    call(&s, Method::DELETE, &format!("{DIR}/{JEAN}"), Some(&v), None)
        .await
        .assert_error(403, "M_FORBIDDEN");
    post(
        &s,
        Some(&v),
        "/_annuaire/admin/v1/threepids/erase",
        Some(&json!({"medium": "email", "address": "jean.dupont@finances.gouv.example"})),
    )
    .await
    .assert_error(403, "M_FORBIDDEN");

    // Invalid input.
    get(&s, &format!("{DIR}/not-a-user-id"), &t)
        .await
        .assert_error(400, "M_INVALID_PARAM");
    post(
        &s,
        Some(&t),
        &format!("{DIR}/@nobody:agent.finances.example/hide"),
        None,
    )
    .await
    .assert_error(404, "M_NOT_FOUND");
    put_name(&s, &t, JEAN, &json!({}))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    put_name(&s, &t, JEAN, &json!({"name": 5}))
        .await
        .assert_error(400, "M_BAD_JSON");
    let blank = put_name(&s, &t, JEAN, &json!({"name": " \u{200b} "})).await;
    blank.assert_error(400, "M_INVALID_PARAM");
    assert!(blank.text.contains("visible characters"), "{}", blank.text);
    let not_json = s
        .client
        .put(s.url(&format!("{DIR}/{JEAN}/name")))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body("name=x")
        .send()
        .await
        .unwrap();
    Reply::from(not_json).await.assert_error(400, "M_NOT_JSON");
    for query in [
        "?visibility=secret",
        "?q=%20%21%20",
        "?limit=0",
        "?external=maybe",
    ] {
        get(&s, &format!("{DIR}{query}"), &t)
            .await
            .assert_error(400, "M_INVALID_PARAM");
    }
    // Nothing was changed, so nothing was audited.
    assert!(audit(&s, &t, "?action=directory.*").await.is_empty());
    let jean = get(&s, &format!("{DIR}/{JEAN}"), &t).await.assert_ok();
    assert_eq!(
        (jean["visibility"].as_str(), jean["name"].as_str()),
        (Some("visible"), Some("Jean Dupont"))
    );
}

fn invite(token: &str, address: &str, now: i64) -> InviteRow {
    InviteRow {
        token: token.into(),
        medium: "email".into(),
        address: address.into(),
        room_id: "!room:agent.finances.example".into(),
        sender: JEAN.into(),
        details_json: "{}".into(),
        ephemeral_public_key: format!("key-{token}"),
        created_at: now,
        expires_at: now + 86_400_000,
        delivery_mxid: None,
        delivery_attempts: 0,
        next_delivery_at: None,
        last_error: None,
        delivered_at: None,
        delivery_failed_at: None,
    }
}

fn session(sid: &str, address: &str, now: i64) -> SessionRow {
    SessionRow {
        sid: sid.into(),
        medium: "email".into(),
        address: address.into(),
        client_secret_hash: format!("secret-{sid}"),
        token_hash: format!("token-{sid}"),
        next_link: None,
        send_attempt: 1,
        wrong_tokens: 0,
        created_at: now,
        token_issued_at: now,
        validated_at: Some(now),
        expires_at: now + 86_400_000,
    }
}

/// Queues a mail to `recipient`, due at `due_ms`.
fn queue_mail(s: &TestServer, id: &str, recipient: &str, due_ms: i64) {
    let mut conn = s.app.db.get().unwrap();
    annuaire::store::outbox::insert(
        &mut conn,
        &annuaire::store::outbox::NewOutboxRow {
            id,
            kind: "verification",
            dedupe_key: id,
            message_id: id,
            sender: "noreply@is.test.example",
            recipient,
            recipient_domain: recipient.rsplit_once('@').unwrap().1,
            body: b"Subject: x\r\n\r\nx",
            now_ms: due_ms,
        },
    )
    .unwrap();
}

fn outbox_row(s: &TestServer, id: &str) -> annuaire::store::outbox::OutboxEntry {
    let mut conn = s.app.db.get().unwrap();
    annuaire::store::outbox::list(&mut conn)
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap()
}

/// The Matrix id a hashed lookup of `address` finds, as a client sees it.
async fn looked_up(s: &TestServer, address: &str) -> Option<String> {
    let details = s.get("/_matrix/identity/v2/hash_details").await.assert_ok();
    let pepper = details["lookup_pepper"].as_str().unwrap();
    let hash = annuaire::matrix::hashing::lookup_hash(address, "email", pepper);
    let body = s
        .post(
            "/_matrix/identity/v2/lookup",
            &json!({"algorithm": "sha256", "pepper": pepper, "addresses": [hash]}),
        )
        .await
        .assert_ok();
    body["mappings"][&hash].as_str().map(String::from)
}

#[tokio::test]
async fn erasure_forgets_an_address_and_the_directory_follows_the_unbind_path() {
    let s = start(with_allowlists(Builder::new()).account("@looker:agent.finances.example")).await;
    let t = editor(&s).await;
    let now = s.app.clock.now_ms();
    let (a, b, m, c) = (
        "jean.dupont@finances.gouv.example",
        "j.dupont@finances.gouv.example",
        "marie.curie@finances.gouv.example",
        "someone.else@finances.gouv.example",
    );
    // Jean has two addresses bound, Marie one; both are in the directory.
    for (address, mxid) in [(a, JEAN), (b, JEAN), (m, MARIE)] {
        let association = Association::new("email", address, mxid, now);
        s.app
            .db
            .run(move |conn| associations::record(conn, &association))
            .await
            .unwrap();
    }
    for (address, mxid) in [(a, JEAN), (m, MARIE)] {
        let parsed = normalize_email(address).unwrap();
        let decision = s.app.allowlist.decide(&parsed, now);
        s.app
            .directory
            .on_bind(mxid, &parsed, &decision)
            .await
            .unwrap();
    }
    // Invitations, validation sessions and queued mails for A, and for another address C.
    {
        let mut conn = s.app.db.get().unwrap();
        for (token, address) in [("inva", a), ("invc", c)] {
            annuaire::store::invites::insert_invite(&mut conn, &invite(token, address, now))
                .unwrap();
        }
        for (sid, address) in [("sida", a), ("sidc", c)] {
            annuaire::store::sessions::insert(&mut conn, &session(sid, address, now)).unwrap();
        }
    }
    // Due in an hour: the outbox worker leaves them queued meanwhile.
    queue_mail(&s, "mail-a", a, now + 3_600_000);
    queue_mail(&s, "mail-c", c, now + 3_600_000);
    // The associations were written straight into the store: the server's lookup index learns
    // of them from the change feed (read every 200 ms; read now to stay deterministic).
    s.app.identity.sync_now().await.unwrap();
    assert_eq!(looked_up(&s, a).await.as_deref(), Some(JEAN));
    assert_eq!(internal_info(&s, a).await.assert_ok()["invited"], true);

    // Erase A (spelled with capitals: normalised like any input).
    let erased = post(
        &s,
        Some(&t),
        "/_annuaire/admin/v1/threepids/erase",
        Some(&json!({"medium": "email", "address": "Jean.Dupont@Finances.gouv.example"})),
    )
    .await
    .assert_ok();
    assert_eq!(
        erased,
        json!({
            "medium": "email",
            "address": a,
            "unbound_from": JEAN,
            "invites": 1,
            "sessions": 1,
            "queued_mails": 1,
            "directory": [{"user_id": JEAN, "entry": "kept"}],
            "audit_rows_pseudonymised": 1,
        })
    );
    // Lookups no longer find A; B still finds Jean.
    assert_eq!(looked_up(&s, a).await, None);
    assert_eq!(looked_up(&s, b).await.as_deref(), Some(JEAN));
    // A is no longer invited; C's invitation, session and mail are untouched.
    assert_eq!(internal_info(&s, a).await.assert_ok()["invited"], false);
    assert_eq!(internal_info(&s, c).await.assert_ok()["invited"], true);
    {
        let mut conn = s.app.db.get().unwrap();
        assert!(
            annuaire::store::invites::invites_to_address(&mut conn, "email", a)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            annuaire::store::invites::invites_to_address(&mut conn, "email", c)
                .unwrap()
                .len(),
            1
        );
        assert!(
            annuaire::store::sessions::find(&mut conn, "sida")
                .unwrap()
                .is_none()
        );
        assert!(
            annuaire::store::sessions::find(&mut conn, "sidc")
                .unwrap()
                .is_some()
        );
        assert!(
            annuaire::store::identity::association(&mut conn, "email", a)
                .unwrap()
                .is_none()
        );
    }
    let mail_a = outbox_row(&s, "mail-a");
    assert_eq!(mail_a.status, "superseded");
    assert!(!mail_a.has_body && !mail_a.has_recipient);
    assert_eq!(outbox_row(&s, "mail-c").status, "queued");
    // Jean keeps his entry (B is still bound), now published from B.
    let jean = get(&s, &format!("{DIR}/{JEAN}"), &t).await.assert_ok();
    assert_eq!(jean["name"], "J. Dupont");
    assert_eq!(user_search(&s, "dupont").await, [JEAN]);

    // Marie's only address: her entry goes.
    let erased = post(
        &s,
        Some(&t),
        "/_annuaire/admin/v1/threepids/erase",
        Some(&json!({"medium": "email", "address": m})),
    )
    .await
    .assert_ok();
    assert_eq!(
        erased["directory"],
        json!([{"user_id": MARIE, "entry": "removed"}])
    );
    assert!(user_search(&s, "marie").await.is_empty());
    get(&s, &format!("{DIR}/{MARIE}"), &t)
        .await
        .assert_error(404, "M_NOT_FOUND");
    // An address nobody knows: nothing to remove, still on the record.
    let erased = post(
        &s,
        Some(&t),
        "/_annuaire/admin/v1/threepids/erase",
        Some(&json!({"medium": "email", "address": "nobody@finances.gouv.example"})),
    )
    .await
    .assert_ok();
    assert_eq!(erased["unbound_from"], Value::Null);
    assert_eq!(erased["directory"], json!([]));

    // Audited, the address replaced by its keyed pseudonym (the log keeps that it was erased
    // and by whom, not which address).
    let log = audit(&s, &t, "?action=threepid.erase").await;
    assert_eq!(log.len(), 3);
    let pseudonym = {
        let mut conn = s.app.db.get().unwrap();
        annuaire::audit::pseudonym(&mut conn, a, 0).unwrap()
    };
    assert_eq!(log[2]["target"], format!("threepid:email:{pseudonym}"));
    assert_eq!(log[2]["actor"], "ed");
    assert_eq!(log[2]["before"]["address"], pseudonym);
    assert_eq!(log[2]["before"]["bound_to"], JEAN);
    assert_eq!(log[2]["before"]["invites"], 1);
    assert_eq!(log[2]["after"], Value::Null);

    // Invalid input; no token.
    for (body, errcode) in [
        (
            json!({"medium": "msisdn", "address": "33612345678"}),
            "M_INVALID_PARAM",
        ),
        (
            json!({"medium": "email", "address": "not an address"}),
            "M_INVALID_EMAIL",
        ),
        (json!({"medium": "email"}), "M_MISSING_PARAMS"),
    ] {
        post(
            &s,
            Some(&t),
            "/_annuaire/admin/v1/threepids/erase",
            Some(&body),
        )
        .await
        .assert_error(400, errcode);
    }
    post(
        &s,
        None,
        "/_annuaire/admin/v1/threepids/erase",
        Some(&json!({"medium": "email", "address": b})),
    )
    .await
    .assert_error(401, "M_MISSING_TOKEN");
    assert_eq!(audit(&s, &t, "?action=threepid.erase").await.len(), 3);
}

#[tokio::test]
async fn directory_and_outbox_statistics() {
    let s = start(Builder::new().manual_clock(T0)).await;
    people(&s).await;
    let t = viewer(&s).await;
    let e = editor(&s).await;
    post(&s, Some(&e), &format!("{DIR}/{MARIE}/hide"), None)
        .await
        .assert_ok();
    {
        let mut conn = s.app.db.get().unwrap();
        annuaire::store::directory::apply_replicated_profile(
            &mut conn,
            HANS,
            "agent.aa.example",
            None,
            false,
            T0,
        )
        .unwrap();
    }
    let stats = get(&s, "/_annuaire/admin/v1/stats/directory", &t)
        .await
        .assert_ok();
    assert_eq!(
        stats["total"],
        json!({"entries": 4, "visible": 3, "hidden": 1, "external": 1, "inactive": 1})
    );
    assert_eq!(
        stats["organisations"],
        json!([
            {"organisation": "Finances", "entries": 2, "visible": 1, "hidden": 1, "external": 0, "inactive": 0},
            {"organisation": "AA", "entries": 1, "visible": 1, "hidden": 0, "external": 0, "inactive": 1},
            {"organisation": null, "entries": 1, "visible": 1, "hidden": 0, "external": 1, "inactive": 0},
        ])
    );
    assert_eq!(
        stats["homeservers"],
        json!([
            {"homeserver": "agent.finances.example", "entries": 2, "visible": 1, "hidden": 1, "external": 0, "inactive": 0},
            {"homeserver": "agent.aa.example", "entries": 1, "visible": 1, "hidden": 0, "external": 0, "inactive": 1},
            {"homeserver": "externes.example", "entries": 1, "visible": 1, "hidden": 0, "external": 1, "inactive": 0},
        ])
    );
    let one = get(&s, "/_annuaire/admin/v1/stats/directory?limit=1", &t)
        .await
        .assert_ok();
    assert_eq!(one["organisations"].as_array().unwrap().len(), 1);
    assert_eq!(one["homeservers"].as_array().unwrap().len(), 1);

    // The outbox, empty.
    let empty = get(&s, "/_annuaire/admin/v1/stats/outbox", &t)
        .await
        .assert_ok();
    assert_eq!(
        empty,
        json!({"queued": 0, "sending": 0, "retrying": 0, "sent_24h": 0, "failed_24h": 0,
               "superseded_24h": 0, "oldest_unsent_at": null, "oldest_unsent_age_ms": null})
    );
    // Rows in every state, made the way workers make them. The clock stays at T0, and each row
    // is queued and claimed in one transaction (or is due later), so the server's own worker
    // never takes one.
    const HOUR: i64 = 3_600_000;
    let rows = move |conn: &mut annuaire::store::DbConn| {
        use annuaire::store::outbox as o;
        use diesel::Connection;
        let mut step =
            |id: &str, at: i64, lease: i64, finish: &dyn Fn(&mut annuaire::store::DbConn, &str)| {
                conn.transaction::<_, annuaire::store::StoreError, _>(|conn| {
                    o::insert(
                        conn,
                        &o::NewOutboxRow {
                            id,
                            kind: "verification",
                            dedupe_key: id,
                            message_id: id,
                            sender: "noreply@is.test.example",
                            recipient: "someone@finances.gouv.example",
                            recipient_domain: "finances.gouv.example",
                            body: b"x",
                            now_ms: at,
                        },
                    )?;
                    if lease > 0 {
                        let claimed = o::claim(conn, "test", at, lease)?.unwrap();
                        assert_eq!(claimed.id, id);
                        finish(conn, id);
                    }
                    Ok(())
                })
                .unwrap();
            };
        step("sent-old", T0 - 30 * HOUR, T0, &|c, id| {
            assert!(o::mark_sent(c, id, "test", 1, T0 - 30 * HOUR).unwrap());
        });
        step("sent", T0 - 3 * HOUR, T0, &|c, id| {
            assert!(o::mark_sent(c, id, "test", 1, T0 - 3 * HOUR).unwrap());
        });
        // Being sent: a live lease; the oldest unsent mail.
        step("sending", T0 - 2 * HOUR, T0 + 10 * HOUR, &|_, _| {});
        step("failed", T0 - HOUR, T0, &|c, id| {
            assert!(o::mark_failed(c, id, "test", 3, "550 no such user", T0 - HOUR).unwrap());
        });
        step("retrying", T0 + HOUR, T0 + 2 * HOUR, &|c, id| {
            assert!(o::mark_retry(c, id, "test", 1, "421 try later", T0 + 5 * HOUR).unwrap());
        });
        step("queued", T0 + 2 * HOUR, 0, &|_, _| {});
        Ok(())
    };
    s.app.db.run(rows).await.unwrap();
    let health = get(&s, "/_annuaire/admin/v1/stats/outbox", &t)
        .await
        .assert_ok();
    assert_eq!(
        health,
        json!({"queued": 3, "sending": 1, "retrying": 1, "sent_24h": 1, "failed_24h": 1,
               "superseded_24h": 0, "oldest_unsent_at": T0 - 2 * HOUR,
               "oldest_unsent_age_ms": 2 * HOUR})
    );

    // Unauthorised.
    for path in ["stats/directory", "stats/outbox"] {
        call(
            &s,
            Method::GET,
            &format!("/_annuaire/admin/v1/{path}"),
            None,
            None,
        )
        .await
        .assert_error(401, "M_MISSING_TOKEN");
    }
    get(&s, "/_annuaire/admin/v1/stats/directory?limit=5000", &t)
        .await
        .assert_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn nul_characters_are_refused_not_a_server_error() {
    let s = start(Builder::new()).await;
    people(&s).await;
    let t = editor(&s).await;
    for path in [
        "/_annuaire/admin/v1/rules?organisation=a%00b",
        "/_annuaire/admin/v1/rules?next_batch=%00",
        "/_annuaire/admin/v1/rules/export?source=%00",
        "/_annuaire/admin/v1/audit?actor=%00",
        "/_annuaire/admin/v1/audit?target=x%00",
        "/_annuaire/admin/v1/directory?organisation=%00",
        "/_annuaire/admin/v1/directory?homeserver=%00",
        "/_annuaire/admin/v1/directory?next_batch=%00",
    ] {
        get(&s, path, &t).await.assert_error(400, "M_INVALID_PARAM");
    }
    for path in [
        "/_annuaire/admin/v1/directory/%00",
        "/_annuaire/admin/v1/directory/@a%00:hs.example",
    ] {
        get(&s, path, &t).await.assert_error(400, "M_INVALID_PARAM");
    }
    // Searched text is folded: a NUL is only a separator there.
    get(&s, &format!("{DIR}?q=jean%00dupont"), &t)
        .await
        .assert_ok();
    // No account name holds one: refused like any wrong name.
    super::login(&s, "ed\u{0}", super::EDITOR_PASSWORD)
        .await
        .assert_error(403, "M_FORBIDDEN");
}

fn urlencode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
