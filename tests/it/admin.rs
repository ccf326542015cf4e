//! The administration API over HTTP and the admin CLI: tokens (login, expiry, audience,
//! revocation, lockout, rate limits), roles, the rules API with the file importer's validation,
//! import/export, explain, audit, statistics, a second instance, the admin listener, OpenAPI.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::fixtures::{self, FINANCES};
use crate::support::{self, Builder, Reply, ServeProcess, TestServer, eventually, run_cli};

pub(crate) const EDITOR_PASSWORD: &str = "editor password 1";
pub(crate) const VIEWER_PASSWORD: &str = "viewer password 1";
const T0: i64 = 1_800_000_000_000;

/// A server with the Finances allowlist.
fn with_allowlists(b: Builder) -> Builder {
    fixtures::with_allowlists(b, &[FINANCES])
}

/// Creates an account directly in the server's database.
fn add_account(s: &TestServer, username: &str, role: &str, password: &str) {
    let mut conn = s.app.db.get().unwrap();
    annuaire::admin::accounts::add_account(
        &mut conn,
        username,
        annuaire::admin::Role::parse(role).unwrap(),
        password,
        &annuaire::admin::Actor::cli("test"),
        s.app.clock.now_ms(),
        &mut rand::rngs::OsRng,
    )
    .unwrap();
}

/// A server with an editor `ed` and a viewer `vi`.
pub(crate) async fn start(b: Builder) -> TestServer {
    let s = b.start().await;
    add_account(&s, "ed", "editor", EDITOR_PASSWORD);
    add_account(&s, "vi", "viewer", VIEWER_PASSWORD);
    s
}

async fn login(s: &TestServer, username: &str, password: &str) -> Reply {
    s.post(
        "/_annuaire/admin/v1/login",
        &json!({"username": username, "password": password}),
    )
    .await
}

async fn token(s: &TestServer, username: &str, password: &str) -> String {
    let body = login(s, username, password).await.assert_ok();
    body["access_token"].as_str().unwrap().to_string()
}

pub(crate) async fn editor(s: &TestServer) -> String {
    token(s, "ed", EDITOR_PASSWORD).await
}

async fn viewer(s: &TestServer) -> String {
    token(s, "vi", VIEWER_PASSWORD).await
}

async fn call(
    s: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut req = s.client.request(method, s.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    Reply::from(req.send().await.unwrap()).await
}

async fn get(s: &TestServer, path: &str, token: &str) -> Reply {
    call(s, Method::GET, path, Some(token), None).await
}

async fn import(s: &TestServer, token: &str, toml: &str, query: &str) -> Reply {
    let req = s
        .client
        .post(s.url(&format!("/_annuaire/admin/v1/rules/import{query}")))
        .bearer_auth(token)
        .header("content-type", "application/toml")
        .body(toml.to_string());
    Reply::from(req.send().await.unwrap()).await
}

async fn internal_info(s: &TestServer, address: &str) -> Reply {
    let url = reqwest::Url::parse_with_params(
        &s.url("/_matrix/identity/api/v1/internal-info"),
        &[("medium", "email"), ("address", address)],
    )
    .unwrap();
    Reply::from(s.client.get(url).send().await.unwrap()).await
}

pub(crate) fn sante_rule() -> Value {
    json!({
        "kind": "domain",
        "name": "sante.gouv.example",
        "subdomains": true,
        "label": "Santé",
        "homeserver": "agent.sante.example",
    })
}

async fn audit(s: &TestServer, token: &str, query: &str) -> Vec<Value> {
    let body = get(s, &format!("/_annuaire/admin/v1/audit{query}"), token)
        .await
        .assert_ok();
    body["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn login_gives_a_token_and_logout_revokes_it() {
    let s = start(Builder::new()).await;
    let body = login(&s, "ed", EDITOR_PASSWORD).await.assert_ok();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["role"], "editor");
    let t = body["access_token"].as_str().unwrap();
    get(&s, "/_annuaire/admin/v1/rules", t).await.assert_ok();
    // Usernames are compared in lower case.
    login(&s, "ED", EDITOR_PASSWORD).await.assert_ok();
    let out = call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/logout",
        Some(t),
        None,
    )
    .await;
    assert_eq!(out.assert_ok(), json!({}));
    let r = get(&s, "/_annuaire/admin/v1/rules", t).await;
    r.assert_error(401, "M_UNKNOWN_TOKEN");
    assert!(
        r.json()["error"].as_str().unwrap().contains("revoked"),
        "{}",
        r.text
    );
    // Logging out twice: the token is no longer accepted.
    call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/logout",
        Some(t),
        None,
    )
    .await
    .assert_error(401, "M_UNKNOWN_TOKEN");
    // Wrong password and unknown user answer the same.
    login(&s, "ed", "wrong password!")
        .await
        .assert_error(403, "M_FORBIDDEN");
    let unknown = login(&s, "nobody", "wrong password!").await;
    unknown.assert_error(403, "M_FORBIDDEN");
    assert_eq!(
        unknown.json()["error"],
        login(&s, "ed", "wrong again!!").await.json()["error"]
    );
    // Malformed bodies.
    s.post("/_annuaire/admin/v1/login", &json!({"username": "ed"}))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    s.post_raw("/_annuaire/admin/v1/login", "nope")
        .await
        .assert_error(400, "M_NOT_JSON");
}

#[tokio::test]
async fn missing_malformed_and_foreign_tokens_are_refused() {
    let secret = "a shared secret of more than thirty-two bytes";
    let s = start(Builder::new().config(|c, dir| {
        let file = dir.join("jwt.secret");
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        c.admin.jwt_secret_file = Some(file);
    }))
    .await;
    for path in [
        "/_annuaire/admin/v1/rules",
        "/_annuaire/admin/v1/audit",
        "/_annuaire/admin/v1/explain?address=a@b.example",
        "/_annuaire/admin/v1/stats/attempts",
        "/_annuaire/admin/v1/rules/export",
        "/_annuaire/admin/v1/rules/r0000000000000000",
    ] {
        call(&s, Method::GET, path, None, None)
            .await
            .assert_error(401, "M_MISSING_TOKEN");
        get(&s, path, "garbage")
            .await
            .assert_error(401, "M_UNKNOWN_TOKEN");
    }
    for (method, path) in [
        (Method::POST, "/_annuaire/admin/v1/rules"),
        (Method::POST, "/_annuaire/admin/v1/rules/import"),
        (Method::PUT, "/_annuaire/admin/v1/rules/r0000000000000000"),
        (
            Method::DELETE,
            "/_annuaire/admin/v1/rules/r0000000000000000",
        ),
        (
            Method::POST,
            "/_annuaire/admin/v1/rules/r0000000000000000/convert",
        ),
        (Method::POST, "/_annuaire/admin/v1/logout"),
    ] {
        call(&s, method, path, None, Some(&sante_rule()))
            .await
            .assert_error(401, "M_MISSING_TOKEN");
    }
    let basic = s
        .client
        .get(s.url("/_annuaire/admin/v1/rules"))
        .basic_auth("ed", Some(EDITOR_PASSWORD))
        .send()
        .await
        .unwrap();
    Reply::from(basic)
        .await
        .assert_error(401, "M_MISSING_TOKEN");

    // Tokens signed with the right secret but the wrong audience, issuer or account.
    let acct = |username: &str| {
        let mut conn = s.app.db.get().unwrap();
        annuaire::store::admin::get_account(&mut conn, username)
            .unwrap()
            .unwrap()
            .created_at
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sign = |claims: Value, key: &[u8]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    let good = json!({"iss": "is.test.example", "aud": "annuaire-admin", "sub": "ed",
        "role": "editor", "iat": now, "exp": now + 600, "jti": "handmade1", "acct": acct("ed")});
    get(
        &s,
        "/_annuaire/admin/v1/rules",
        &sign(good.clone(), secret.as_bytes()),
    )
    .await
    .assert_ok();
    let mut aud = good.clone();
    aud["aud"] = json!("synapse");
    let r = get(
        &s,
        "/_annuaire/admin/v1/rules",
        &sign(aud, secret.as_bytes()),
    )
    .await;
    r.assert_error(401, "M_UNKNOWN_TOKEN");
    assert!(r.text.contains("not an admin token"), "{}", r.text);
    let mut iss = good.clone();
    iss["iss"] = json!("other.example");
    get(
        &s,
        "/_annuaire/admin/v1/rules",
        &sign(iss, secret.as_bytes()),
    )
    .await
    .assert_error(401, "M_UNKNOWN_TOKEN");
    get(
        &s,
        "/_annuaire/admin/v1/rules",
        &sign(good.clone(), b"another secret, 32 bytes or more"),
    )
    .await
    .assert_error(401, "M_UNKNOWN_TOKEN");
    let mut ghost = good.clone();
    ghost["sub"] = json!("ghost");
    let r = get(
        &s,
        "/_annuaire/admin/v1/rules",
        &sign(ghost, secret.as_bytes()),
    )
    .await;
    r.assert_error(401, "M_UNKNOWN_TOKEN");
    assert!(r.text.contains("no longer exists"), "{}", r.text);
    // The role is the account's, not the token's: a forged "editor" claim for a viewer.
    let mut forged = good.clone();
    forged["sub"] = json!("vi");
    forged["acct"] = json!(acct("vi"));
    call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/rules",
        Some(&sign(forged, secret.as_bytes())),
        Some(&sante_rule()),
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn tokens_expire_by_the_clock_with_bounded_leeway() {
    let s = start(Builder::new().manual_clock(T0)).await;
    let clock = s.clock.clone().unwrap();
    let t = editor(&s).await;
    clock.advance(15 * 60 * 1000 + 20_000);
    get(&s, "/_annuaire/admin/v1/rules", &t).await.assert_ok();
    clock.advance(15_000);
    let r = get(&s, "/_annuaire/admin/v1/rules", &t).await;
    r.assert_error(401, "M_UNKNOWN_TOKEN");
    assert!(r.text.contains("expired"), "{}", r.text);
    // A token minted by a machine whose clock is ahead is refused beyond the leeway.
    let ahead = token(&s, "ed", EDITOR_PASSWORD).await;
    clock.set(T0);
    let r = get(&s, "/_annuaire/admin/v1/rules", &ahead).await;
    r.assert_error(401, "M_UNKNOWN_TOKEN");
    assert!(r.text.contains("future"), "{}", r.text);
}

#[tokio::test]
async fn viewers_read_but_cannot_change() {
    let s = start(with_allowlists(Builder::new())).await;
    let v = viewer(&s).await;
    let body = get(&s, "/_annuaire/admin/v1/rules", &v).await.assert_ok();
    let file_rule = body["rules"][0]["id"].as_str().unwrap().to_string();
    get(&s, &format!("/_annuaire/admin/v1/rules/{file_rule}"), &v)
        .await
        .assert_ok();
    get(
        &s,
        "/_annuaire/admin/v1/explain?address=a@finances.gouv.example",
        &v,
    )
    .await
    .assert_ok();
    get(&s, "/_annuaire/admin/v1/audit", &v).await.assert_ok();
    get(&s, "/_annuaire/admin/v1/stats/attempts", &v)
        .await
        .assert_ok();
    assert_eq!(
        get(&s, "/_annuaire/admin/v1/rules/export", &v).await.status,
        200
    );
    for (method, path) in [
        (Method::POST, "/_annuaire/admin/v1/rules".to_string()),
        (
            Method::PUT,
            format!("/_annuaire/admin/v1/rules/{file_rule}"),
        ),
        (
            Method::DELETE,
            format!("/_annuaire/admin/v1/rules/{file_rule}"),
        ),
        (
            Method::POST,
            format!("/_annuaire/admin/v1/rules/{file_rule}/convert"),
        ),
    ] {
        let r = call(&s, method, &path, Some(&v), Some(&sante_rule())).await;
        r.assert_error(403, "M_FORBIDDEN");
        assert!(r.text.contains("viewer"), "{}", r.text);
    }
    import(&s, &v, "[[deny]]\nname = \"x.example\"\n", "")
        .await
        .assert_error(403, "M_FORBIDDEN");
    // Nothing changed, nothing audited but the accounts' creation.
    let e = editor(&s).await;
    let entries = audit(&s, &e, "?action=rule.*").await;
    assert!(
        entries.iter().all(|e| e["action"] == "rule.file_import"),
        "{entries:?}"
    );
    // A viewer may log out.
    call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/logout",
        Some(&v),
        None,
    )
    .await
    .assert_ok();
}

#[tokio::test]
async fn failed_logins_lock_the_account_and_say_so() {
    let s = start(Builder::new().manual_clock(T0).config(|c, _| {
        c.admin.lockout_threshold = 3;
    }))
    .await;
    let clock = s.clock.clone().unwrap();
    login(&s, "ed", "wrong password 1")
        .await
        .assert_error(403, "M_FORBIDDEN");
    login(&s, "ed", "wrong password 2")
        .await
        .assert_error(403, "M_FORBIDDEN");
    let r = login(&s, "ed", "wrong password 3").await;
    r.assert_error(403, "ANNUAIRE_ACCOUNT_LOCKED");
    assert_eq!(r.json()["retry_after_ms"], 15 * 60 * 1000);
    assert_eq!(r.json()["locked_until"], T0 + 15 * 60 * 1000);
    assert_eq!(r.header("retry-after"), Some("900"));
    // Even the right password is refused while locked; other accounts are not affected.
    clock.advance(60_000);
    let r = login(&s, "ed", EDITOR_PASSWORD).await;
    r.assert_error(403, "ANNUAIRE_ACCOUNT_LOCKED");
    assert_eq!(r.json()["retry_after_ms"], 14 * 60 * 1000);
    let v = viewer(&s).await;
    // The lock is audited.
    let entries = audit(&s, &v, "?action=account.lock").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["target"], "account:ed");
    assert_eq!(entries[0]["actor"], "system");
    clock.advance(14 * 60 * 1000);
    login(&s, "ed", EDITOR_PASSWORD).await.assert_ok();
    // A success resets the count: two failures do not lock again.
    login(&s, "ed", "wrong password 4")
        .await
        .assert_error(403, "M_FORBIDDEN");
    login(&s, "ed", "wrong password 5")
        .await
        .assert_error(403, "M_FORBIDDEN");
    login(&s, "ed", EDITOR_PASSWORD).await.assert_ok();
}

#[tokio::test]
async fn login_attempts_are_rate_limited_per_username_and_per_ip() {
    let s = start(Builder::new().config(|c, _| {
        c.admin.login_per_username = annuaire::config::RateLimit {
            burst: 2,
            every: annuaire::config::HumanDuration(Duration::from_secs(3600)),
        };
        c.admin.login_per_ip = annuaire::config::RateLimit {
            burst: 5,
            every: annuaire::config::HumanDuration(Duration::from_secs(3600)),
        };
    }))
    .await;
    login(&s, "ed", "wrong password 1")
        .await
        .assert_error(403, "M_FORBIDDEN");
    login(&s, "ed", EDITOR_PASSWORD).await.assert_ok();
    let r = login(&s, "ed", EDITOR_PASSWORD).await;
    r.assert_error(429, "M_LIMIT_EXCEEDED");
    assert!(r.json()["retry_after_ms"].as_u64().unwrap() > 1000);
    // Another username from the same address, until the address's bucket is empty.
    login(&s, "vi", VIEWER_PASSWORD).await.assert_ok();
    login(&s, "someone", "whatever it is")
        .await
        .assert_error(403, "M_FORBIDDEN");
    login(&s, "vi", VIEWER_PASSWORD)
        .await
        .assert_error(429, "M_LIMIT_EXCEEDED");
}

#[tokio::test]
async fn rules_are_created_read_listed_replaced_and_deleted_with_audit() {
    let s = start(with_allowlists(Builder::new())).await;
    let e = editor(&s).await;
    let created = call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/rules",
        Some(&e),
        Some(&sante_rule()),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let rule = created.json();
    let id = rule["id"].as_str().unwrap().to_string();
    assert!(id.starts_with('r') && id.len() == 17, "{id}");
    assert_eq!(rule["source"], "admin");
    assert_eq!(rule["line"], Value::Null);
    assert_eq!(rule["kind"], "domain");
    assert_eq!(rule["subdomains"], true);
    assert_eq!(
        get(&s, &format!("/_annuaire/admin/v1/rules/{id}"), &e)
            .await
            .assert_ok(),
        rule
    );
    // It applies on this instance at once.
    let info = internal_info(&s, "a@hopital.sante.gouv.example")
        .await
        .assert_ok();
    assert_eq!(info["hs"], "agent.sante.example");
    assert_eq!(info["organisation"], "Santé");

    // Filters.
    let ids = |body: Value| -> Vec<String> {
        body["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = get(&s, "/_annuaire/admin/v1/rules", &e).await.assert_ok();
    assert_eq!(all["rules"].as_array().unwrap().len(), 4);
    assert!(all.get("next_batch").is_none());
    let q = |query: &str| format!("/_annuaire/admin/v1/rules?{query}");
    assert_eq!(
        ids(get(&s, &q("source=admin"), &e).await.assert_ok()),
        vec![id.clone()]
    );
    assert_eq!(
        ids(get(&s, &q("domain=cardio.hopital.sante.gouv.example"), &e)
            .await
            .assert_ok()),
        vec![id.clone()]
    );
    assert_eq!(
        ids(get(&s, &q("organisation=Sant%C3%A9"), &e).await.assert_ok()),
        vec![id.clone()]
    );
    assert_eq!(
        ids(
            get(&s, &q("homeserver=agent.sante.example&kind=domain"), &e)
                .await
                .assert_ok()
        ),
        vec![id.clone()]
    );
    assert!(
        ids(get(&s, &q("homeserver=agent.sante.example&kind=deny"), &e)
            .await
            .assert_ok())
        .is_empty()
    );
    let finances = get(&s, &q("source=finances.toml"), &e).await.assert_ok();
    assert_eq!(finances["rules"].as_array().unwrap().len(), 3);
    let webmail = get(&s, &q("domain=webmail.finances.gouv.example"), &e)
        .await
        .assert_ok();
    assert_eq!(webmail["rules"].as_array().unwrap().len(), 2, "{webmail}");
    let partner = get(&s, &q("domain=partner.example"), &e).await.assert_ok();
    assert_eq!(partner["rules"][0]["kind"], "address");
    get(&s, &q("domain=not%20a%20domain"), &e)
        .await
        .assert_error(400, "M_INVALID_PARAM");
    get(&s, &q("kind=maybe"), &e)
        .await
        .assert_error(400, "M_INVALID_PARAM");
    get(&s, &q("limit=0"), &e)
        .await
        .assert_error(400, "M_INVALID_PARAM");
    get(&s, &q("limit=1001"), &e)
        .await
        .assert_error(400, "M_INVALID_PARAM");

    // Pages of one rule each cover everything once, in id order.
    let mut paged = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(n) => q(&format!("limit=1&next_batch={n}")),
            None => q("limit=1"),
        };
        let page = get(&s, &path, &e).await.assert_ok();
        paged.extend(ids(page.clone()));
        match page["next_batch"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => break,
        }
    }
    let mut sorted = ids(all);
    sorted.sort();
    assert_eq!(paged, sorted);

    // Replace: every field; the kind and value cannot change.
    let mut changed = sante_rule();
    changed["label"] = json!("Santé publique");
    changed["requires_invite"] = json!(true);
    let r = call(
        &s,
        Method::PUT,
        &format!("/_annuaire/admin/v1/rules/{id}"),
        Some(&e),
        Some(&changed),
    )
    .await
    .assert_ok();
    assert_eq!(r["label"], "Santé publique");
    assert_eq!(r["requires_invite"], true);
    // A listed rule can be sent back as it is (id, source, line are ignored).
    call(
        &s,
        Method::PUT,
        &format!("/_annuaire/admin/v1/rules/{id}"),
        Some(&e),
        Some(&r),
    )
    .await
    .assert_ok();
    let mut renamed = sante_rule();
    renamed["name"] = json!("sante.example");
    let bad = call(
        &s,
        Method::PUT,
        &format!("/_annuaire/admin/v1/rules/{id}"),
        Some(&e),
        Some(&renamed),
    )
    .await;
    bad.assert_error(400, "M_INVALID_PARAM");
    assert!(bad.text.contains("cannot change"), "{}", bad.text);
    assert_eq!(
        internal_info(&s, "a@sante.gouv.example").await.assert_ok()["decision"],
        "invite_required"
    );
    call(
        &s,
        Method::PUT,
        "/_annuaire/admin/v1/rules/r0000000000000000",
        Some(&e),
        Some(&sante_rule()),
    )
    .await
    .assert_error(404, "M_NOT_FOUND");

    // Delete.
    let deleted = call(
        &s,
        Method::DELETE,
        &format!("/_annuaire/admin/v1/rules/{id}"),
        Some(&e),
        None,
    )
    .await
    .assert_ok();
    assert_eq!(deleted["label"], "Santé publique");
    get(&s, &format!("/_annuaire/admin/v1/rules/{id}"), &e)
        .await
        .assert_error(404, "M_NOT_FOUND");
    call(
        &s,
        Method::DELETE,
        &format!("/_annuaire/admin/v1/rules/{id}"),
        Some(&e),
        None,
    )
    .await
    .assert_error(404, "M_NOT_FOUND");
    assert_eq!(
        internal_info(&s, "a@sante.gouv.example").await.assert_ok()["decision"],
        "denied"
    );

    // One audit row per change (the no-op replacement wrote none), with before and after.
    let target = format!("rule:{id}");
    let entries = audit(&s, &e, &format!("?target={target}")).await;
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["rule.delete", "rule.update", "rule.create"]);
    assert!(entries.iter().all(|e| e["actor"] == "ed"));
    assert_eq!(entries[2]["before"], Value::Null);
    assert_eq!(entries[2]["after"], rule);
    assert_eq!(entries[1]["before"]["label"], "Santé");
    assert_eq!(entries[1]["after"]["label"], "Santé publique");
    assert_eq!(entries[0]["before"]["label"], "Santé publique");
    assert_eq!(entries[0]["after"], Value::Null);
}

/// The message the file importer gives for the same rule written in a file.
fn file_message(toml: &str) -> String {
    let errors = annuaire::policy::parse_allowlist_file("x.toml", toml).unwrap_err();
    errors[0].message.clone()
}

#[tokio::test]
async fn invalid_rules_get_the_file_importers_messages() {
    let s = start(with_allowlists(Builder::new())).await;
    let e = editor(&s).await;
    let post = |body: Value| {
        let s = &s;
        let e = e.clone();
        async move {
            call(
                s,
                Method::POST,
                "/_annuaire/admin/v1/rules",
                Some(&e),
                Some(&body),
            )
            .await
        }
    };
    let cases = [
        (
            json!({"kind": "domain", "name": "gmail.com", "homeserver": "hs.example"}),
            "[[domain]]\nname = \"gmail.com\"\nhomeserver = \"hs.example\"\n",
        ),
        (
            json!({"kind": "pattern", "regex": "[a-z", "homeserver": "hs.example"}),
            "[[pattern]]\nregex = \"[a-z\"\nhomeserver = \"hs.example\"\n",
        ),
        (
            json!({"kind": "pattern", "regex": ".*", "homeserver": "hs.example"}),
            "[[pattern]]\nregex = \".*\"\nhomeserver = \"hs.example\"\n",
        ),
        (
            json!({"kind": "domain", "name": "x.example", "homeserver": "bad host"}),
            "[[domain]]\nname = \"x.example\"\nhomeserver = \"bad host\"\n",
        ),
        (
            json!({"kind": "domain", "name": "x.example", "homeserver": "hs.example", "label": " "}),
            "[[domain]]\nname = \"x.example\"\nhomeserver = \"hs.example\"\nlabel = \" \"\n",
        ),
        (
            json!({"kind": "address", "email": "not an address", "homeserver": "hs.example"}),
            "[[address]]\nemail = \"not an address\"\nhomeserver = \"hs.example\"\n",
        ),
    ];
    for (body, toml) in cases {
        let r = post(body.clone()).await;
        r.assert_error(400, "M_INVALID_PARAM");
        let errors = r.json()["errors"].clone();
        assert_eq!(errors.as_array().unwrap().len(), 1, "{}", r.text);
        assert_eq!(errors[0]["message"], file_message(toml), "{body}");
        assert!(
            errors[0]["path"].as_str().unwrap().starts_with("admin"),
            "{}",
            r.text
        );
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains(&file_message(toml))
        );
    }
    // Shape errors the file format cannot have.
    let r = post(json!({"kind": "domain"})).await;
    r.assert_error(400, "M_INVALID_PARAM");
    assert!(r.text.contains("needs `name`"), "{}", r.text);
    let r = post(json!({"kind": "domain", "nme": "x.example"})).await;
    r.assert_error(400, "M_INVALID_PARAM");
    assert!(r.text.contains("unknown field"), "{}", r.text);
    let r = post(json!({"kind": "domain", "name": "x.example"})).await;
    assert!(r.text.contains("no homeserver"), "{}", r.text);
    call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/rules",
        Some(&e),
        None,
    )
    .await
    .assert_error(400, "M_NOT_JSON");
    // A public provider is accepted with force.
    let forced = post(
        json!({"kind": "domain", "name": "gmail.com", "homeserver": "hs.example", "force": true}),
    )
    .await;
    assert_eq!(forced.status, 201, "{}", forced.text);
    // The same kind and value as a file rule: 409, naming both.
    let r = post(
        json!({"kind": "domain", "name": "finances.gouv.example", "homeserver": "hs.example"}),
    )
    .await;
    r.assert_error(409, "ANNUAIRE_RULE_EXISTS");
    assert!(
        r.text.contains("defined twice: finances.toml:7 and admin:"),
        "{}",
        r.text
    );
    // And as an admin rule.
    post(json!({"kind": "domain", "name": "gmail.com", "homeserver": "hs.example", "force": true}))
        .await
        .assert_error(409, "ANNUAIRE_RULE_EXISTS");
    // Nothing invalid was stored or audited.
    let body = get(&s, "/_annuaire/admin/v1/rules?source=admin", &e)
        .await
        .assert_ok();
    assert_eq!(body["rules"].as_array().unwrap().len(), 1);
    assert_eq!(audit(&s, &e, "?action=rule.create").await.len(), 1);
}

#[tokio::test]
async fn file_rules_are_read_only_until_converted() {
    let s = start(with_allowlists(Builder::new())).await;
    let e = editor(&s).await;
    let body = get(
        &s,
        "/_annuaire/admin/v1/rules?domain=finances.gouv.example&kind=domain",
        &e,
    )
    .await
    .assert_ok();
    let rule = body["rules"][0].clone();
    let id = rule["id"].as_str().unwrap().to_string();
    assert_eq!(rule["source"], "finances.toml");
    assert_eq!(rule["line"], 7);
    let mut changed = rule.clone();
    changed["label"] = json!("Bercy");
    let path = format!("/_annuaire/admin/v1/rules/{id}");
    let r = call(&s, Method::PUT, &path, Some(&e), Some(&changed)).await;
    r.assert_error(409, "ANNUAIRE_FILE_RULE");
    assert!(r.text.contains("finances.toml:7"), "{}", r.text);
    assert!(
        r.text.contains("Edit the file, or convert it"),
        "{}",
        r.text
    );
    call(&s, Method::DELETE, &path, Some(&e), None)
        .await
        .assert_error(409, "ANNUAIRE_FILE_RULE");

    let converted = call(&s, Method::POST, &format!("{path}/convert"), Some(&e), None)
        .await
        .assert_ok();
    assert_eq!(converted["rule"]["id"], id.as_str());
    assert_eq!(converted["rule"]["source"], "admin");
    assert_eq!(converted["rule"]["line"], Value::Null);
    assert_eq!(converted["was"], "finances.toml:7");
    assert!(converted["note"].as_str().unwrap().contains("duplicate"));
    call(&s, Method::POST, &format!("{path}/convert"), Some(&e), None)
        .await
        .assert_error(400, "M_INVALID_PARAM");
    let r = call(&s, Method::PUT, &path, Some(&e), Some(&changed))
        .await
        .assert_ok();
    assert_eq!(r["label"], "Bercy");
    assert_eq!(
        internal_info(&s, "x@finances.gouv.example")
            .await
            .assert_ok()["organisation"],
        "Bercy"
    );
    let entries = audit(&s, &e, &format!("?target=rule:{id}")).await;
    assert_eq!(entries[1]["action"], "rule.convert");
    assert_eq!(entries[1]["before"]["source"], "finances.toml");
    assert_eq!(entries[1]["after"]["source"], "admin");

    // The file still has the line: the next import reports the duplicate and changes nothing.
    let env = [("ANNUAIRE_DATABASE__URL", s.app.config.database_url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let lists = s.dir.path().join("allowlists");
    let work = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(
        work.path(),
        &["allowlist", "import", lists.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("defined twice"), "{err}");
    // Once the line is removed, the import succeeds and leaves the admin rule alone.
    let without: String = FINANCES.1.replace(
        "[[domain]]\nname = \"finances.gouv.example\"\nsubdomains = true\n",
        "",
    );
    std::fs::write(lists.join("finances.toml"), without).unwrap();
    let (code, out, err) = run_cli(
        work.path(),
        &["allowlist", "import", lists.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 added, 2 changed, 0 removed"), "{out}");
    get(&s, &path, &e).await.assert_ok();
}

pub(crate) const IMPORT: &str = r#"
[organisation]
label = "Justice"
homeserver = "agent.justice.example"

[[domain]]
name = "justice.gouv.example"
subdomains = true

[[pattern]]
regex = '^[a-z]+@tribunal-[0-9]+\.example$'

[[pattern]]
regex = '^[a-z]+\.[a-z]+@tribunal-[0-9]+\.example$'
"#;

#[tokio::test]
async fn an_allowlist_file_imports_as_admin_rules_with_its_diff() {
    let s = start(with_allowlists(Builder::new())).await;
    let e = editor(&s).await;
    // TOML only.
    call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/rules/import",
        Some(&e),
        Some(&json!({})),
    )
    .await
    .assert_error(415, "M_INVALID_PARAM");

    let dry = import(&s, &e, IMPORT, "?dry_run=true").await.assert_ok();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["added"].as_array().unwrap().len(), 3);
    assert!(
        dry["added"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["source"] == "admin")
    );
    assert_eq!(
        dry["summary"][0].as_str().unwrap().split(' ').next(),
        Some("+")
    );
    let listed = get(&s, "/_annuaire/admin/v1/rules?source=admin", &e)
        .await
        .assert_ok();
    assert!(listed["rules"].as_array().unwrap().is_empty());
    assert_eq!(
        internal_info(&s, "a@justice.gouv.example")
            .await
            .assert_ok()["decision"],
        "denied"
    );

    let done = import(&s, &e, IMPORT, "").await.assert_ok();
    assert_eq!(done["dry_run"], false);
    assert_eq!(done["added"], dry["added"]);
    assert!(done["changed"].as_array().unwrap().is_empty());
    assert!(done["removed"].as_array().unwrap().is_empty());
    let info = internal_info(&s, "a@justice.gouv.example")
        .await
        .assert_ok();
    assert_eq!(info["hs"], "agent.justice.example");
    assert_eq!(info["organisation"], "Justice");
    // The file's pattern order is kept among admin rules: the first pattern decides.
    let explained = get(
        &s,
        "/_annuaire/admin/v1/explain?address=jean@tribunal-3.example",
        &e,
    )
    .await
    .assert_ok();
    assert_eq!(explained["decision"]["outcome"], "allowed");
    assert_eq!(
        explained["matched_rule"]["regex"],
        "^[a-z]+@tribunal-[0-9]+\\.example$"
    );

    // Again with a new label: the same ids are replaced, nothing else.
    let again = import(
        &s,
        &e,
        &IMPORT.replace("\"Justice\"", "\"Chancellerie\""),
        "",
    )
    .await
    .assert_ok();
    assert!(again["added"].as_array().unwrap().is_empty());
    assert_eq!(again["changed"].as_array().unwrap().len(), 3);
    assert_eq!(again["changed"][0]["before"]["label"], "Justice");
    assert_eq!(again["changed"][0]["after"]["label"], "Chancellerie");
    let unchanged = import(
        &s,
        &e,
        &IMPORT.replace("\"Justice\"", "\"Chancellerie\""),
        "",
    )
    .await
    .assert_ok();
    assert!(unchanged["summary"].as_array().unwrap().is_empty());
    let all = get(&s, "/_annuaire/admin/v1/rules", &e).await.assert_ok();
    assert_eq!(all["rules"].as_array().unwrap().len(), 6);

    // Errors carry import.toml and the line, with the importer's messages.
    let bad = "[organisation]\nhomeserver = \"hs.example\"\n\n[[domain]]\nname = \"gmail.com\"\n";
    let r = import(&s, &e, bad, "").await;
    r.assert_error(400, "M_INVALID_PARAM");
    assert_eq!(r.json()["errors"][0]["path"], "import.toml");
    assert_eq!(r.json()["errors"][0]["line"], 4);
    assert_eq!(r.json()["errors"][0]["message"], file_message(bad));
    import(&s, &e, "[[domain]\n", "")
        .await
        .assert_error(400, "M_INVALID_PARAM");
    // A rule a file defines: refused, naming both.
    let dup = "[[deny]]\nname = \"webmail.finances.gouv.example\"\n";
    let r = import(&s, &e, dup, "").await;
    r.assert_error(409, "ANNUAIRE_RULE_EXISTS");
    assert!(
        r.text.contains("finances.toml:11 and import.toml:1"),
        "{}",
        r.text
    );

    // Audited per rule.
    let entries = audit(&s, &e, "?action=rule.import").await;
    assert_eq!(entries.len(), 6);
    assert!(entries.iter().all(|e| e["actor"] == "ed"));
}

#[tokio::test]
async fn export_gives_an_allowlist_file_that_imports_back_unchanged() {
    let s = start(with_allowlists(Builder::new())).await;
    let e = editor(&s).await;
    import(&s, &e, IMPORT, "").await.assert_ok();
    let r = get(&s, "/_annuaire/admin/v1/rules/export?source=admin", &e).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/toml")
    );
    let rules = annuaire::policy::parse_allowlist_file("export.toml", &r.text).unwrap();
    assert_eq!(rules.len(), 3);
    let back = import(&s, &e, &r.text, "?dry_run=true").await.assert_ok();
    assert!(back["summary"].as_array().unwrap().is_empty(), "{back}");
    // Everything, file rules included.
    let all = get(&s, "/_annuaire/admin/v1/rules/export", &e).await;
    let rules = annuaire::policy::parse_allowlist_file("all.toml", &all.text).unwrap();
    assert_eq!(rules.len(), 6);
    let deny = get(&s, "/_annuaire/admin/v1/rules/export?kind=deny", &e).await;
    assert_eq!(
        annuaire::policy::parse_allowlist_file("d.toml", &deny.text)
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn explain_shows_the_decision_and_the_rules_it_beat() {
    let s = start(with_allowlists(Builder::new())).await;
    let v = viewer(&s).await;
    let body = get(
        &s,
        "/_annuaire/admin/v1/explain?address=Jean@WebMail.Finances.Gouv.Example",
        &v,
    )
    .await
    .assert_ok();
    assert_eq!(body["address"], "jean@webmail.finances.gouv.example");
    assert_eq!(body["decision"]["outcome"], "denied");
    assert_eq!(body["decision"]["rule"], "finances.toml:11");
    assert_eq!(body["matched_rule"]["kind"], "deny");
    assert_eq!(
        body["matched_rule"]["name"],
        "webmail.finances.gouv.example"
    );
    let considered = body["considered"].as_array().unwrap();
    assert_eq!(considered.len(), 2, "{body}");
    assert_eq!(considered[0]["rule"]["kind"], "deny");
    assert!(
        considered[0]["why"]
            .as_str()
            .unwrap()
            .starts_with("applies")
    );
    assert_eq!(considered[1]["rule"]["kind"], "domain");
    assert_eq!(considered[1]["matched"], true);
    assert!(
        !considered[1]["why"]
            .as_str()
            .unwrap()
            .starts_with("applies")
    );

    let allowed = get(
        &s,
        "/_annuaire/admin/v1/explain?address=a@finances.gouv.example",
        &v,
    )
    .await
    .assert_ok();
    assert_eq!(allowed["decision"]["outcome"], "allowed");
    assert_eq!(allowed["decision"]["homeserver"], "agent.finances.example");
    assert_eq!(
        allowed["decision"]["shadow_homeserver"],
        "public.finances.example"
    );
    assert_eq!(allowed["decision"]["organisation"], "Finances");
    let unknown = get(
        &s,
        "/_annuaire/admin/v1/explain?address=a@unknown.example",
        &v,
    )
    .await
    .assert_ok();
    assert_eq!(unknown["decision"]["outcome"], "denied");
    assert_eq!(unknown["decision"]["rule"], Value::Null);
    assert_eq!(unknown["matched_rule"], Value::Null);
    assert!(unknown["considered"].as_array().unwrap().is_empty());

    get(&s, "/_annuaire/admin/v1/explain?address=not-an-address", &v)
        .await
        .assert_error(400, "M_INVALID_EMAIL");
    get(&s, "/_annuaire/admin/v1/explain", &v)
        .await
        .assert_error(400, "M_MISSING_PARAMS");
}

#[tokio::test]
async fn the_audit_log_filters_and_pages() {
    let s = start(with_allowlists(Builder::new())).await;
    let e = editor(&s).await;
    let created = call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/rules",
        Some(&e),
        Some(&sante_rule()),
    )
    .await
    .json();
    let id = created["id"].as_str().unwrap().to_string();
    call(
        &s,
        Method::DELETE,
        &format!("/_annuaire/admin/v1/rules/{id}"),
        Some(&e),
        None,
    )
    .await
    .assert_ok();
    import(&s, &e, IMPORT, "").await.assert_ok();

    let all = audit(&s, &e, "").await;
    // 3 file-import rows (start-up), 2 account creations, create, delete, 3 imports.
    assert_eq!(all.len(), 10, "{all:#?}");
    let seq: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(seq.windows(2).all(|w| w[0] > w[1]), "newest first: {seq:?}");
    let startup = audit(&s, &e, "?actor=startup").await;
    assert_eq!(startup.len(), 3);
    assert!(startup.iter().all(|e| e["action"] == "rule.file_import"));
    assert!(
        startup
            .iter()
            .all(|e| e["before"].is_null() && e["after"].is_object())
    );
    let accounts = audit(&s, &e, "?action=account.*").await;
    assert_eq!(accounts.len(), 2);
    assert_eq!(
        accounts[0]["after"],
        json!({"username": "vi", "role": "viewer", "source": "local"})
    );
    assert!(!accounts[0].to_string().contains("argon2"));
    assert_eq!(audit(&s, &e, "?actor=ed&action=rule.*").await.len(), 5);
    assert_eq!(audit(&s, &e, &format!("?target=rule:{id}")).await.len(), 2);
    assert!(audit(&s, &e, "?actor=nobody").await.is_empty());
    // Time filters: milliseconds or RFC 3339.
    let last_at = all[0]["at"].as_i64().unwrap();
    assert_eq!(
        audit(&s, &e, &format!("?since={}", last_at + 1))
            .await
            .len(),
        0
    );
    assert_eq!(audit(&s, &e, "?until=2000-01-01T00:00:00Z").await.len(), 0);
    assert_eq!(audit(&s, &e, "?since=2000-01-01T00:00:00Z").await.len(), 10);
    get(&s, "/_annuaire/admin/v1/audit?since=yesterday", &e)
        .await
        .assert_error(400, "M_INVALID_PARAM");
    get(&s, "/_annuaire/admin/v1/audit?next_batch=abc", &e)
        .await
        .assert_error(400, "M_INVALID_PARAM");
    // Pages of 3.
    let mut paged = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(n) => format!("/_annuaire/admin/v1/audit?limit=3&next_batch={n}"),
            None => "/_annuaire/admin/v1/audit?limit=3".to_string(),
        };
        let page = get(&s, &path, &e).await.assert_ok();
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 3);
        paged.extend(entries.iter().cloned());
        match page["next_batch"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, all);
    // No API deletes the log.
    call(
        &s,
        Method::DELETE,
        "/_annuaire/admin/v1/audit",
        Some(&e),
        None,
    )
    .await
    .assert_error(405, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn refused_domains_are_listed_largest_first() {
    let s = start(with_allowlists(Builder::new().manual_clock(T0))).await;
    let v = viewer(&s).await;
    for _ in 0..3 {
        internal_info(&s, "a@knocking.example").await.assert_ok();
    }
    internal_info(&s, "b@rare.example").await.assert_ok();
    internal_info(&s, "x@webmail.finances.gouv.example")
        .await
        .assert_ok();
    internal_info(&s, "consultant@partner.example")
        .await
        .assert_ok();
    internal_info(&s, "consultant@partner.example")
        .await
        .assert_ok();
    internal_info(&s, "a@finances.gouv.example")
        .await
        .assert_ok();
    let body = get(&s, "/_annuaire/admin/v1/stats/attempts?period=7d", &v)
        .await
        .assert_ok();
    assert_eq!(body["period"], "7d");
    assert_eq!(body["since"], (T0 / 86_400_000 - 7) * 86_400_000);
    let domains = body["domains"].as_array().unwrap();
    let names: Vec<&str> = domains
        .iter()
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "knocking.example",
            "partner.example",
            "rare.example",
            "webmail.finances.gouv.example"
        ]
    );
    assert_eq!(domains[0]["denied"], 3);
    assert_eq!(domains[0]["total"], 3);
    assert_eq!(domains[0]["last_seen"], T0);
    assert_eq!(domains[1]["invite_required"], 2);
    assert_eq!(domains[1]["denied"], 0);
    let top = get(&s, "/_annuaire/admin/v1/stats/attempts?limit=1", &v)
        .await
        .assert_ok();
    assert_eq!(top["period"], "24h");
    assert_eq!(top["domains"].as_array().unwrap().len(), 1);
    // Older than the period: not counted.
    s.clock.as_ref().unwrap().advance(3 * 86_400_000);
    let v = viewer(&s).await;
    let day = get(&s, "/_annuaire/admin/v1/stats/attempts?period=24h", &v)
        .await
        .assert_ok();
    assert!(day["domains"].as_array().unwrap().is_empty(), "{day}");
    let month = get(&s, "/_annuaire/admin/v1/stats/attempts?period=30d", &v)
        .await
        .assert_ok();
    assert_eq!(month["domains"].as_array().unwrap().len(), 4);
    get(&s, "/_annuaire/admin/v1/stats/attempts?period=1y", &v)
        .await
        .assert_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn a_change_reaches_a_second_instance_within_seconds() {
    let first = start(with_allowlists(Builder::new())).await;
    let config = (*first.app.config).clone();
    let second = Builder::in_dir(first.dir.clone(), config).start().await;
    assert_eq!(
        internal_info(&second, "a@sante.gouv.example")
            .await
            .assert_ok()["decision"],
        "denied"
    );
    // A token from one instance works on the other (the secret is in the database).
    let t = editor(&first).await;
    get(&second, "/_annuaire/admin/v1/rules", &t)
        .await
        .assert_ok();
    call(
        &first,
        Method::POST,
        "/_annuaire/admin/v1/rules",
        Some(&t),
        Some(&sante_rule()),
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the second instance applies the rule",
        async || {
            internal_info(&second, "a@sante.gouv.example").await.json()["hs"]
                == "agent.sante.example"
        },
    )
    .await;
    // The second instance explains with the new rule too.
    let body = get(
        &second,
        "/_annuaire/admin/v1/explain?address=a@sante.gouv.example",
        &t,
    )
    .await
    .assert_ok();
    assert_eq!(body["decision"]["organisation"], "Santé");
    // Logging out on one instance revokes the token on the other at once.
    call(
        &first,
        Method::POST,
        "/_annuaire/admin/v1/logout",
        Some(&t),
        None,
    )
    .await
    .assert_ok();
    get(&second, "/_annuaire/admin/v1/rules", &t)
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn the_openapi_document_lists_the_admin_and_public_paths() {
    let s = TestServer::start().await;
    let r = s.get("/_annuaire/openapi.json").await;
    let doc = r.assert_ok();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let _: utoipa::openapi::OpenApi = serde_json::from_str(&r.text).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/_annuaire/admin/v1/login", "post"),
        ("/_annuaire/admin/v1/logout", "post"),
        ("/_annuaire/admin/v1/rules", "get"),
        ("/_annuaire/admin/v1/rules", "post"),
        ("/_annuaire/admin/v1/rules/{id}", "get"),
        ("/_annuaire/admin/v1/rules/{id}", "put"),
        ("/_annuaire/admin/v1/rules/{id}", "delete"),
        ("/_annuaire/admin/v1/rules/{id}/convert", "post"),
        ("/_annuaire/admin/v1/rules/import", "post"),
        ("/_annuaire/admin/v1/rules/export", "get"),
        ("/_annuaire/admin/v1/explain", "get"),
        ("/_annuaire/admin/v1/audit", "get"),
        ("/_annuaire/admin/v1/stats/attempts", "get"),
        ("/_annuaire/admin/v1/stats/directory", "get"),
        ("/_annuaire/admin/v1/stats/outbox", "get"),
        ("/_annuaire/admin/v1/directory", "get"),
        ("/_annuaire/admin/v1/directory/{user_id}", "get"),
        ("/_annuaire/admin/v1/directory/{user_id}", "delete"),
        ("/_annuaire/admin/v1/directory/{user_id}/hide", "post"),
        ("/_annuaire/admin/v1/directory/{user_id}/unhide", "post"),
        ("/_annuaire/admin/v1/directory/{user_id}/name", "put"),
        ("/_annuaire/admin/v1/threepids/erase", "post"),
        ("/_matrix/identity/v2/lookup", "post"),
        ("/_matrix/identity/v2/3pid/bind", "post"),
        ("/_matrix/identity/v2/validate/email/requestToken", "post"),
        ("/_matrix/identity/v2/validate/email/submitToken", "get"),
        ("/_matrix/client/v3/user_directory/search", "post"),
        ("/_matrix/client/r0/user_directory/search", "post"),
        ("/_matrix/identity/api/v1/replicate_profiles", "post"),
        ("/_matrix/identity/api/v1/info", "get"),
        ("/_matrix/identity/api/v1/internal-info", "get"),
        ("/_matrix/identity/versions", "get"),
        ("/health/ready", "get"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    let rules = &paths["/_annuaire/admin/v1/rules"]["get"];
    assert_eq!(rules["security"][0]["admin_token"], json!([]));
    let params: Vec<&str> = rules["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "domain",
        "organisation",
        "homeserver",
        "source",
        "limit",
        "next_batch",
    ] {
        assert!(params.contains(&p), "{p} not in {params:?}");
    }
    let rule_schema = &doc["components"]["schemas"]["RuleView"]["properties"];
    for field in [
        "id",
        "kind",
        "source",
        "line",
        "name",
        "homeserver",
        "force",
    ] {
        assert!(rule_schema[field].is_object(), "RuleView.{field}");
    }
    // The reason codes are documented, every one of them, where decisions are answered.
    let codes: Vec<&str> = doc["components"]["schemas"]["ReasonCode"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("no ReasonCode enum: {}", doc["components"]["schemas"]))
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let documented: Vec<&str> = annuaire::policy::ReasonCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(codes, documented);
    for schema in ["ShardInfo", "DecisionView"] {
        assert_eq!(
            doc["components"]["schemas"][schema]["properties"]["reason_code"]["$ref"],
            "#/components/schemas/ReasonCode",
            "{schema}"
        );
    }
    for path in [
        "/_matrix/identity/api/v1/sign-ed25519",
        "/_matrix/federation/unstable/org.matrix.msc4258/user_directory/search",
        "/_matrix/federation/v3/user_directory/search",
        "/_matrix/federation/unstable/fr.tchap/user_directory/search",
    ] {
        assert!(paths[path]["post"].is_object(), "POST {path} missing");
    }
}

/// `annuaire` with stdin, for `admin add` reading the password.
fn run_cli_stdin(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = std::process::Command::new(support::binary());
    // The audit actor reads SUDO_USER first: a test run under sudo must not change it.
    cmd.current_dir(dir)
        .args(args)
        .env_remove("SUDO_USER")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_manages_accounts_and_tokens_with_audit() {
    let s = TestServer::start().await;
    let url = s.app.config.database_url();
    let env = [
        ("ANNUAIRE_DATABASE__URL", url.as_str()),
        ("ANNUAIRE_SERVER__NAME", "is.test.example"),
        ("USER", "operator"),
    ];
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    // Password on standard input.
    let (code, out, err) = run_cli_stdin(
        dir,
        &["admin", "add", "alice", "--role", "editor"],
        &env,
        "alice's password\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("created admin account alice (editor)"),
        "{out}"
    );
    // Or from a file.
    std::fs::write(dir.join("pw"), "bob's long password\n").unwrap();
    let (code, out, err) = run_cli(
        dir,
        &[
            "admin",
            "add",
            "bob",
            "--role",
            "viewer",
            "--password-file",
            "pw",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    // Refusals.
    let (code, _, err) = run_cli_stdin(
        dir,
        &["admin", "add", "carol", "--role", "viewer"],
        &env,
        "short\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at least 12 characters"), "{err}");
    let (code, _, err) = run_cli_stdin(
        dir,
        &["admin", "add", "alice", "--role", "viewer"],
        &env,
        "another password\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = run_cli_stdin(
        dir,
        &["admin", "add", "dave", "--role", "root"],
        &env,
        "another password\n",
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run_cli_stdin(
        dir,
        &["admin", "add", "Dave:x", "--role", "viewer"],
        &env,
        "another password\n",
    );
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = run_cli(dir, &["admin", "list", "--json"], &env);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["username"], "alice");
    assert_eq!(listed[0]["role"], "editor");
    assert_eq!(listed[1]["role"], "viewer");
    assert!(!out.contains("argon2"));
    let (code, out, _) = run_cli(dir, &["admin", "list"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("2 admin accounts"), "{out}");

    // The accounts log in on the server; a CLI token works there too.
    let alice = token(&s, "alice", "alice's password").await;
    get(&s, "/_annuaire/admin/v1/rules", &alice)
        .await
        .assert_ok();
    let (code, out, err) = run_cli(dir, &["admin", "token", "bob", "--ttl", "2h"], &env);
    assert_eq!(code, 0, "{err}");
    let bob = out.trim().to_string();
    assert!(err.contains("valid for 2h"), "{err}");
    get(&s, "/_annuaire/admin/v1/audit", &bob).await.assert_ok();
    call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/rules",
        Some(&bob),
        Some(&sante_rule()),
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
    let (code, _, err) = run_cli(dir, &["admin", "token", "nobody"], &env);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run_cli(dir, &["admin", "token", "bob", "--ttl", "soon"], &env);
    assert_eq!(code, 2, "{err}");

    // Removing an account stops its tokens at once.
    let (code, out, err) = run_cli(dir, &["admin", "remove", "alice"], &env);
    assert_eq!(code, 0, "{out}{err}");
    get(&s, "/_annuaire/admin/v1/rules", &alice)
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
    let (code, _, _) = run_cli(dir, &["admin", "remove", "alice"], &env);
    assert_eq!(code, 1);
    // Re-created under the same name (even within the same second): the old token stays
    // invalid.
    let (code, _, err) = run_cli_stdin(
        dir,
        &["admin", "add", "alice", "--role", "editor"],
        &env,
        "alice's new password\n",
    );
    assert_eq!(code, 0, "{err}");
    get(&s, "/_annuaire/admin/v1/rules", &alice)
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");

    let entries = audit(&s, &bob, "?actor=cli:operator").await;
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("account.create", "account:alice"),
            ("account.remove", "account:alice"),
            ("token.issue", "account:bob"),
            ("account.create", "account:bob"),
            ("account.create", "account:alice"),
        ]
    );
    assert_eq!(entries[1]["before"]["role"], "editor");
    assert_eq!(entries[1]["after"], Value::Null);
}

#[tokio::test]
async fn the_admin_listener_alone_serves_admin_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![("ANNUAIRE_HTTP__ADMIN_BIND", "127.0.0.1:0".to_string())];
    if let Some(url) = support::fresh_url_for_binary() {
        env.push(("ANNUAIRE_DATABASE__URL", url));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let serve = ServeProcess::start(dir.path(), &["serve"], &env);
    // The start-up line reaches the captured log just after `start` returns.
    let mut started: Option<Value> = None;
    eventually(
        Duration::from_secs(10),
        "the start-up log line",
        async || {
            started = serve
                .log()
                .lines()
                .find(|l| l.contains("annuaire started"))
                .map(|l| serde_json::from_str(l).unwrap());
            started.is_some()
        },
    )
    .await;
    let started = started.unwrap();
    let admin = format!("http://{}", started["admin_listen"].as_str().unwrap());
    assert_ne!(admin, serve.base);
    let client = support::client();
    let status = async |base: &str, path: &str| -> u16 {
        client
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for path in [
        "/_annuaire/openapi.json",
        "/metrics",
        "/_annuaire/admin/v1/rules",
    ] {
        assert_eq!(status(&serve.base, path).await, 404, "public {path}");
    }
    assert_eq!(status(&admin, "/_annuaire/openapi.json").await, 200);
    assert_eq!(status(&admin, "/metrics").await, 200);
    assert_eq!(status(&admin, "/_annuaire/admin/v1/rules").await, 401);
    assert_eq!(status(&serve.base, "/_matrix/identity/versions").await, 200);
    assert_eq!(status(&admin, "/_matrix/identity/versions").await, 404);
    // The users' own account API is theirs: on the public listener, never the admin one.
    assert_eq!(status(&serve.base, "/_annuaire/account/v1/data").await, 401);
    assert_eq!(status(&admin, "/_annuaire/account/v1/data").await, 404);
    assert!(
        started["admin_api"]
            .as_str()
            .unwrap()
            .starts_with("admin listener"),
        "{started}"
    );
    let (code, log) = serve.terminate();
    assert_eq!(code, 0, "{log}");
}

mod directory;
mod ldap;
