//! Email validation over HTTP: requestToken → mail (through the outbox, to a real SMTP server
//! or to `.eml` files) → submitToken (POST and the link's GET page) → getValidated3pid, with
//! the spec's errors, the lock, expiry, next_link, the policy and the rate limits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use annuaire::clock::Clock;
use annuaire::config::{HumanDuration, MailTransportKind, RateLimit};
use annuaire::mail::SmtpSecurity;
use annuaire::store::outbox::OutboxEntry;
use serde_json::{Value, json};

use crate::mail_smtp::{Parsed, Sink, make_certificates};
use crate::support::{self, Builder, Reply, ServeProcess, TestServer, eventually};

pub(crate) const REQUEST: &str = "/_matrix/identity/v2/validate/email/requestToken";
const SUBMIT: &str = "/_matrix/identity/v2/validate/email/submitToken";
const VALIDATED: &str = "/_matrix/identity/v2/3pid/getValidated3pid";
const BASE_URL: &str = "https://id.test.example";
/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600_000;
const DAY_MS: i64 = 24 * 3600 * 1000;
pub(crate) const AGENT: &str = "jean.dupont@finances.gouv.example";
/// The identity account the tests' requests use (`identity.require_auth` is on by default).
pub(crate) const CALLER: &str = "@tester:agent.finances.example";

const ALLOWLIST: &str = r#"
[organisation]
label = "Finances"
homeserver = "agent.finances.example"

[[domain]]
name = "finances.gouv.example"
subdomains = true

[[deny]]
name = "webmail.finances.gouv.example"

[[address]]
email = "consultant@partner.example"
requires_invite = true
"#;

/// A server with the Finances allowlist, mail links under [`BASE_URL`], the file transport,
/// and an identity account ([`CALLER`]) whose token `s.get`/`s.post` send.
pub(crate) fn base(b: Builder) -> Builder {
    b.account(CALLER).config(|c, dir| {
        let lists = dir.join("allowlists");
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(lists.join("finances.toml"), ALLOWLIST).unwrap();
        c.policy.allowlists_dir = lists;
        c.http.public_base_url = Some(BASE_URL.into());
        c.mail.from = "Annuaire <noreply@id.test.example>".into();
    })
}

/// Mail through the SMTP server on `port` (plain, loopback).
pub(crate) fn smtp(b: Builder, port: u16) -> Builder {
    b.config(move |c, _| {
        c.mail.transport = MailTransportKind::Smtp;
        c.mail.smtp.host = "127.0.0.1".into();
        c.mail.smtp.port = port;
        c.mail.smtp.security = SmtpSecurity::None;
        c.mail.smtp.timeout = HumanDuration(Duration::from_secs(5));
        c.mail.smtp.hello_name = Some("annuaire.test".into());
    })
}

fn clock(s: &TestServer) -> &annuaire::clock::ManualClock {
    s.clock.as_deref().expect("a manual clock")
}

async fn post_with(s: &TestServer, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut req = s.authorized(s.client.post(s.url(path)).json(body));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Reply::from(req.send().await.unwrap()).await
}

pub(crate) async fn request(s: &TestServer, email: &str, secret: &str, attempt: i64) -> Reply {
    s.post(
        REQUEST,
        &json!({"client_secret": secret, "email": email, "send_attempt": attempt}),
    )
    .await
}

#[track_caller]
fn sid_of(r: &Reply) -> String {
    r.assert_ok()["sid"].as_str().unwrap().to_string()
}

async fn submit(s: &TestServer, sid: &str, secret: &str, token: &str) -> Reply {
    s.post(
        SUBMIT,
        &json!({"sid": sid, "client_secret": secret, "token": token}),
    )
    .await
}

async fn get_query(
    s: &TestServer,
    path: &str,
    params: &[(&str, &str)],
    lang: Option<&str>,
) -> Reply {
    let url = reqwest::Url::parse_with_params(&s.url(path), params).unwrap();
    let mut req = s.client.get(url);
    // The mail link's page is opened by a browser, without a token: it must work so.
    if path != SUBMIT {
        req = s.authorized(req);
    }
    if let Some(l) = lang {
        req = req.header("accept-language", l);
    }
    Reply::from(req.send().await.unwrap()).await
}

async fn validated(s: &TestServer, sid: &str, secret: &str) -> Reply {
    get_query(
        s,
        VALIDATED,
        &[("sid", sid), ("client_secret", secret)],
        None,
    )
    .await
}

async fn page(s: &TestServer, sid: &str, secret: &str, token: &str, lang: Option<&str>) -> Reply {
    get_query(
        s,
        SUBMIT,
        &[("sid", sid), ("client_secret", secret), ("token", token)],
        lang,
    )
    .await
}

pub(crate) async fn outbox(s: &TestServer) -> Vec<OutboxEntry> {
    s.app.db.run(annuaire::store::outbox::list).await.unwrap()
}

async fn session_count(s: &TestServer) -> i64 {
    s.app
        .db
        .run(annuaire::store::sessions::count)
        .await
        .unwrap()
}

/// Waits until no outbox row is queued.
pub(crate) async fn drained(s: &TestServer) {
    eventually(
        Duration::from_secs(20),
        "the outbox is drained",
        async || outbox(s).await.iter().all(|r| r.status != "queued"),
    )
    .await;
}

/// The token of the confirmation mail queued for (sid, send attempt), read from its `.eml`
/// (file transport) once it is sent.
async fn token_for(s: &TestServer, sid: &str, attempt: i64) -> String {
    let key = format!("{sid}:{attempt}");
    let mut message_id = String::new();
    eventually(
        Duration::from_secs(20),
        "the mail is sent",
        async || match outbox(s).await.into_iter().find(|r| r.dedupe_key == key) {
            Some(r) if r.status == "sent" => {
                message_id = r.message_id;
                true
            }
            _ => false,
        },
    )
    .await;
    let raw = std::fs::read_to_string(s.dir.path().join("mail").join(format!("{message_id}.eml")))
        .unwrap();
    token_in(&raw)
}

/// The token: a line of exactly 32 letters and digits in the text part.
pub(crate) fn token_in(raw: &str) -> String {
    let re = regex::Regex::new(r"(?m)^([A-Za-z0-9]{32})\r?$").unwrap();
    re.captures(raw)
        .unwrap_or_else(|| panic!("no token in the mail:\n{raw}"))[1]
        .to_string()
}

fn eml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The submitToken link in a mail's text part, and its query parameters.
fn link_in(text: &str) -> (String, HashMap<String, String>) {
    let link = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(BASE_URL))
        .unwrap_or_else(|| panic!("no link in:\n{text}"))
        .to_string();
    let url = reqwest::Url::parse(&link).unwrap();
    assert_eq!(url.path(), SUBMIT);
    let params = url.query_pairs().into_owned().collect();
    (link, params)
}

#[tokio::test]
async fn journey_over_smtp_request_mail_submit_and_validated_3pid() {
    let sink = Sink::start(&[]);
    let s = smtp(base(Builder::new()), sink.port)
        .manual_clock(NOW)
        .start()
        .await;
    let secret = "s3cr=t.1_-";
    let r = s
        .post(
            REQUEST,
            &json!({"client_secret": secret, "email": "Jean.Dupont@Finances.GOUV.example", "send_attempt": 1}),
        )
        .await;
    let sid = sid_of(&r);
    assert!(
        sid.len() >= 22 && sid.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{sid}"
    );
    eventually(
        Duration::from_secs(20),
        "the mail reaches the SMTP server",
        async || sink.messages().len() == 1,
    )
    .await;

    let eml = Parsed::read(&sink.messages()[0]);
    assert_eq!(eml.header("x-sink-rcpt-to"), AGENT);
    assert_eq!(eml.header("x-sink-mail-from"), "noreply@id.test.example");
    assert_eq!(eml.header("to"), AGENT);
    assert_eq!(eml.header("from"), "Annuaire <noreply@id.test.example>");
    assert_eq!(eml.header("subject"), "Confirmez votre adresse e-mail");
    assert_eq!(eml.header("content-language"), "fr");
    assert_eq!(eml.header("date"), "Thu, 01 Jan 2026 00:00:00 +0000");
    assert_eq!(eml.header("auto-submitted"), "auto-generated");
    assert!(eml.header("message-id").ends_with("@id.test.example>"));
    assert_eq!(eml.0["content_type"], "multipart/alternative");
    let text = eml.part("text/plain");
    let html = eml.part("text/html");
    let (link, params) = link_in(&text);
    assert_eq!(params["sid"], sid);
    assert_eq!(params["client_secret"], secret);
    let token = params["token"].clone();
    assert!(
        token.len() >= 32 && token.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{token}"
    );
    assert!(
        text.contains(&format!("\n{token}\n")),
        "the token on its own line: {text}"
    );
    assert!(text.contains(AGENT));
    assert!(
        html.contains(&format!("href=\"{}\"", link.replace('&', "&amp;"))),
        "{html}"
    );
    assert!(html.contains(&token));
    assert!(html.contains("<html lang=\"fr\">"));

    validated(&s, &sid, secret)
        .await
        .assert_error(400, "M_SESSION_NOT_VALIDATED");
    clock(&s).advance(60_000);
    assert_eq!(
        submit(&s, &sid, secret, &token).await.assert_ok(),
        json!({"success": true})
    );
    let expected = json!({"medium": "email", "address": AGENT, "validated_at": NOW + 60_000});
    assert_eq!(validated(&s, &sid, secret).await.assert_ok(), expected);
    // A validated session stays validated: submitting again succeeds and changes nothing.
    clock(&s).advance(60_000);
    assert_eq!(
        submit(&s, &sid, secret, &token).await.assert_ok(),
        json!({"success": true})
    );
    assert_eq!(validated(&s, &sid, secret).await.assert_ok(), expected);

    // The link in the mail, opened by an English browser: a new session with another secret.
    let r = post_with(
        &s,
        REQUEST,
        &json!({"client_secret": "other-secret", "email": AGENT, "send_attempt": 1}),
        &[("accept-language", "en-GB,en;q=0.9,fr;q=0.5")],
    )
    .await;
    let sid2 = sid_of(&r);
    assert_ne!(sid2, sid);
    eventually(Duration::from_secs(20), "the second mail", async || {
        sink.messages().len() == 2
    })
    .await;
    let eml = Parsed::read(&sink.messages()[1]);
    assert_eq!(eml.header("subject"), "Confirm your email address");
    assert_eq!(eml.header("content-language"), "en");
    let (link, params) = link_in(&eml.part("text/plain"));
    assert_eq!(params["sid"], sid2);
    let local = link.replacen(BASE_URL, &s.base, 1);
    let r = Reply::from(
        s.client
            .get(&local)
            .header("accept-language", "en")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text.contains("Address confirmed"), "{}", r.text);
    assert!(!r.text.contains(&params["token"]));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        validated(&s, &sid2, "other-secret").await.assert_ok()["address"],
        AGENT
    );
}

#[tokio::test]
async fn starttls_with_the_configured_ca_file_delivers() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(certs.path());
    let sink = Sink::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let s = smtp(base(Builder::new()), sink.port)
        .config(move |c, _| {
            c.mail.smtp.security = SmtpSecurity::StartTls;
            c.mail.smtp.ca_file = Some(ca);
        })
        .start()
        .await;
    sid_of(&request(&s, AGENT, "tls", 1).await);
    eventually(
        Duration::from_secs(20),
        "the mail over STARTTLS",
        async || sink.messages().len() == 1,
    )
    .await;
    assert_eq!(
        Parsed::read(&sink.messages()[0]).header("x-sink-tls"),
        "yes"
    );
}

#[tokio::test]
async fn smtp_outage_loses_nothing_and_sends_once() {
    // A port with no SMTP server behind it yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = smtp(base(Builder::new()), port)
        .config(|c, _| {
            c.mail.outbox.initial_backoff = HumanDuration(Duration::from_millis(100));
            c.mail.outbox.max_backoff = HumanDuration(Duration::from_millis(400));
        })
        .start()
        .await;
    let sid = sid_of(&request(&s, AGENT, "outage", 1).await);
    eventually(
        Duration::from_secs(20),
        "failed deliveries are recorded",
        async || outbox(&s).await.first().is_some_and(|r| r.attempts >= 2),
    )
    .await;
    let row = outbox(&s).await.remove(0);
    assert_eq!(row.status, "queued");
    assert_eq!(row.dedupe_key, format!("{sid}:1"));
    assert!(row.has_body && row.has_recipient);
    let error = row.last_error.unwrap();
    assert!(!error.is_empty() && !error.contains('@'), "{error}");

    // The server comes back: the worker delivers the mail, once.
    let sink = Sink::start(&["--port", &port.to_string()]);
    eventually(
        Duration::from_secs(20),
        "the mail is delivered",
        async || sink.messages().len() == 1,
    )
    .await;
    drained(&s).await;
    let rows = outbox(&s).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "sent");
    assert!(
        !rows[0].has_body,
        "the body (it carries the token) is erased once sent"
    );
    assert!(!rows[0].has_recipient);
    // Well past any backoff: still one mail.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.messages().len(), 1);
    let eml = Parsed::read(&sink.messages()[0]);
    assert_eq!(link_in(&eml.part("text/plain")).1["sid"], sid);
}

#[tokio::test]
async fn repeated_send_attempt_sends_nothing_and_a_greater_one_sends() {
    let s = base(Builder::new()).manual_clock(NOW).start().await;
    let sid = sid_of(&request(&s, AGENT, "repeat", 1).await);
    let first = token_for(&s, &sid, 1).await;
    // The same attempt (a client retrying) and a smaller one: same sid, no new mail.
    assert_eq!(sid_of(&request(&s, AGENT, "repeat", 1).await), sid);
    assert_eq!(
        sid_of(&request(&s, "JEAN.DUPONT@finances.gouv.example", "repeat", 0).await),
        sid
    );
    assert_eq!(outbox(&s).await.len(), 1);
    // A greater attempt: same sid, a new mail with a new token that replaces the old one.
    assert_eq!(sid_of(&request(&s, AGENT, "repeat", 2).await), sid);
    let rows = outbox(&s).await;
    assert_eq!(rows.len(), 2);
    let second = token_for(&s, &sid, 2).await;
    assert_ne!(first, second);
    drained(&s).await;
    assert_eq!(eml_files(&s.dir.path().join("mail")).len(), 2);
    submit(&s, &sid, "repeat", &first)
        .await
        .assert_error(400, "M_TOKEN_INCORRECT");
    submit(&s, &sid, "repeat", &second).await.assert_ok();
    // The same address with another client secret is another session.
    let other = sid_of(&request(&s, AGENT, "another", 1).await);
    assert_ne!(other, sid);
}

#[tokio::test]
async fn five_wrong_tokens_lock_the_session() {
    let s = base(Builder::new()).start().await;
    let sid = sid_of(&request(&s, AGENT, "lock", 1).await);
    let token = token_for(&s, &sid, 1).await;
    for i in 1..=5 {
        let r = submit(&s, &sid, "lock", "WrongToken0123456789WrongToken01").await;
        r.assert_error(400, "M_TOKEN_INCORRECT");
        assert_eq!(
            r.json()["error"].as_str().unwrap().contains("locked"),
            i == 5,
            "{i}: {}",
            r.text
        );
    }
    let r = submit(&s, &sid, "lock", &token).await;
    r.assert_error(400, "M_TOKEN_INCORRECT");
    assert!(
        r.json()["error"].as_str().unwrap().contains("locked"),
        "{}",
        r.text
    );
    assert_eq!(r.json()["locked"], true);
    // The link's page says so too.
    let r = page(&s, &sid, "lock", &token, Some("fr")).await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("Lien bloqué"), "{}", r.text);
    validated(&s, &sid, "lock")
        .await
        .assert_error(400, "M_SESSION_NOT_VALIDATED");
    // A new send attempt neither unlocks it nor sends a mail.
    assert_eq!(sid_of(&request(&s, AGENT, "lock", 2).await), sid);
    assert_eq!(outbox(&s).await.len(), 1);
    submit(&s, &sid, "lock", &token)
        .await
        .assert_error(400, "M_TOKEN_INCORRECT");
    // A new client secret starts afresh.
    let fresh = sid_of(&request(&s, AGENT, "lock-2", 1).await);
    let token = token_for(&s, &fresh, 1).await;
    submit(&s, &fresh, "lock-2", &token).await.assert_ok();
}

#[tokio::test]
async fn tokens_and_validated_sessions_expire() {
    let s = base(Builder::new()).manual_clock(NOW).start().await;
    let sid = sid_of(&request(&s, AGENT, "expiry", 1).await);
    let token = token_for(&s, &sid, 1).await;
    clock(&s).advance(DAY_MS);
    submit(&s, &sid, "expiry", &token)
        .await
        .assert_error(400, "M_SESSION_EXPIRED");
    validated(&s, &sid, "expiry")
        .await
        .assert_error(400, "M_SESSION_EXPIRED");
    let r = page(&s, &sid, "expiry", &token, Some("en")).await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("Link expired"), "{}", r.text);

    // The same pair again: a fresh session replaces the expired one.
    let renewed = sid_of(&request(&s, AGENT, "expiry", 1).await);
    assert_ne!(renewed, sid);
    submit(&s, &sid, "expiry", &token)
        .await
        .assert_error(404, "M_NO_VALID_SESSION");
    let token = token_for(&s, &renewed, 1).await;
    clock(&s).advance(DAY_MS - 1);
    submit(&s, &renewed, "expiry", &token).await.assert_ok();
    // Validated: usable for 24 hours from the validation.
    clock(&s).advance(DAY_MS - 1);
    validated(&s, &renewed, "expiry").await.assert_ok();
    clock(&s).advance(1);
    validated(&s, &renewed, "expiry")
        .await
        .assert_error(400, "M_SESSION_EXPIRED");

    // The purge deletes expired sessions.
    assert_eq!(session_count(&s).await, 1);
    let config = s.app.config.clone();
    let now = clock(&s).now_ms();
    let purged = s
        .app
        .db
        .run(move |conn| annuaire::identity::sessions::purge(conn, &config, now))
        .await
        .unwrap();
    assert_eq!(purged.sessions, 1);
    assert_eq!(session_count(&s).await, 0);
    validated(&s, &renewed, "expiry")
        .await
        .assert_error(404, "M_NO_VALID_SESSION");
}

#[tokio::test]
async fn next_link_is_checked_and_followed_only_on_success() {
    let s = base(Builder::new())
        .config(|c, _| c.validation.next_link_hosts = vec!["localhost".into()])
        .start()
        .await;
    for bad in [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "http://evil.example/welcome",
        "https://user:pw@app.example/",
        "//app.example/",
    ] {
        let r = s
            .post(
                REQUEST,
                &json!({"client_secret": "nl", "email": AGENT, "send_attempt": 1, "next_link": bad}),
            )
            .await;
        r.assert_error(400, "M_INVALID_PARAM");
    }
    assert_eq!(
        session_count(&s).await,
        0,
        "refused before anything is stored"
    );
    let next = "https://app.tchap.example/#/welcome?from=mail";
    let r = s
        .post(
            REQUEST,
            &json!({"client_secret": "nl", "email": AGENT, "send_attempt": 1, "next_link": next}),
        )
        .await;
    let sid = sid_of(&r);
    let token = token_for(&s, &sid, 1).await;
    // A wrong token: the page, not the redirect.
    let r = page(&s, &sid, "nl", "WrongToken0123456789WrongToken01", None).await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    assert!(r.text.contains("Code incorrect"), "{}", r.text);
    let r = page(&s, &sid, "nl", &token, None).await;
    assert_eq!(r.status, 302, "{}", r.text);
    assert_eq!(r.header("location"), Some(next));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    // http:// to a listed host is accepted.
    let r = s
        .post(
            REQUEST,
            &json!({"client_secret": "nl2", "email": AGENT, "send_attempt": 1, "next_link": "http://localhost:8080/done"}),
        )
        .await;
    sid_of(&r);
    // Without next_link the page says it worked; a bad link says it is incomplete.
    let sid = sid_of(&request(&s, AGENT, "nl3", 1).await);
    let token = token_for(&s, &sid, 1).await;
    // German pages exist (issue 16): German is chosen over English.
    let r = page(&s, &sid, "nl3", &token, Some("de, en;q=0.5")).await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("Adresse bestätigt"), "{}", r.text);
    let r = page(&s, &sid, "nl3", &token, Some("it, en;q=0.5")).await;
    assert!(r.text.contains("Address confirmed"), "{}", r.text);
    let r = get_query(&s, SUBMIT, &[("sid", sid.as_str())], None).await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("Lien incomplet"), "{}", r.text);
    let r = page(&s, "nosuchsession", "nl3", &token, None).await;
    assert_eq!(r.status, 404);
    assert!(r.text.contains("Lien inconnu"), "{}", r.text);
}

#[tokio::test]
async fn denied_addresses_get_403_and_no_mail() {
    let s = base(Builder::new()).start().await;
    for address in [
        "someone@unknown.example",
        "boss@webmail.finances.gouv.example",
    ] {
        let r = request(&s, address, "denied", 1).await;
        r.assert_error(403, "M_THREEPID_DENIED");
        assert_eq!(r.json()["decision"], "denied");
    }
    let r = request(&s, "someone@unknown.example", "denied", 1).await;
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("not on the service"),
        "{}",
        r.text
    );
    assert_eq!(session_count(&s).await, 0);
    assert!(outbox(&s).await.is_empty());
    // The attempts are counted per domain ("who is knocking").
    let app = s.app.clone();
    s.app
        .db
        .run(move |conn| app.allowlist.flush_attempts(conn))
        .await
        .unwrap();
    let counts = s
        .app
        .db
        .run(|conn| annuaire::store::policy::attempts_since(conn, 0, 10))
        .await
        .unwrap();
    let unknown = counts
        .iter()
        .find(|c| c.domain == "unknown.example")
        .unwrap();
    assert_eq!((unknown.outcome.as_str(), unknown.count), ("denied", 2));
    // invite_required may validate.
    let sid = sid_of(&request(&s, "consultant@partner.example", "invited", 1).await);
    token_for(&s, &sid, 1).await;

    // With validation.require_allowed = false, anyone may validate.
    let open = base(Builder::new())
        .config(|c, _| c.validation.require_allowed = false)
        .start()
        .await;
    let sid = sid_of(&request(&open, "someone@unknown.example", "open", 1).await);
    token_for(&open, &sid, 1).await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let s = base(Builder::new())
        .manual_clock(NOW)
        .config(|c, _| {
            c.rate_limits.request_token_per_address = RateLimit {
                burst: 2,
                every: HumanDuration(Duration::from_secs(300)),
            };
        })
        .start()
        .await;
    sid_of(&request(&s, AGENT, "a", 1).await);
    sid_of(&request(&s, AGENT, "b", 1).await);
    let r = request(&s, "Jean.Dupont@finances.gouv.example", "c", 1).await;
    r.assert_error(429, "M_LIMIT_EXCEEDED");
    assert_eq!(r.json()["retry_after_ms"], 300_000);
    assert_eq!(r.header("retry-after"), Some("300"));
    // Other addresses are not affected; the bucket refills with time.
    sid_of(&request(&s, "marie.curie@finances.gouv.example", "a", 1).await);
    clock(&s).advance(300_000);
    sid_of(&request(&s, AGENT, "c", 1).await);
    request(&s, AGENT, "d", 1)
        .await
        .assert_error(429, "M_LIMIT_EXCEEDED");

    // The limit lives in the database: a second instance on the same database shares it.
    let config = s.app.config.as_ref().clone();
    let second = Builder::in_dir(s.dir.clone(), config)
        .manual_clock(NOW + 300_000)
        .account(CALLER)
        .start()
        .await;
    request(&second, AGENT, "e", 1)
        .await
        .assert_error(429, "M_LIMIT_EXCEEDED");

    // Per client IP, in the instance.
    let s = base(Builder::new())
        .config(|c, _| {
            c.rate_limits.request_token_per_ip = RateLimit {
                burst: 2,
                every: HumanDuration(Duration::from_secs(3600)),
            };
        })
        .start()
        .await;
    sid_of(&request(&s, "a@finances.gouv.example", "x", 1).await);
    sid_of(&request(&s, "b@finances.gouv.example", "x", 1).await);
    let r = request(&s, "c@finances.gouv.example", "x", 1).await;
    r.assert_error(429, "M_LIMIT_EXCEEDED");
    let retry = r.json()["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 3_000_000 && retry <= 3_600_000, "{retry}");
}

#[tokio::test]
async fn malformed_requests_get_matrix_errors() {
    let s = base(Builder::new())
        .config(|c, _| c.http.max_body = annuaire::config::ByteSize(1024))
        .start()
        .await;
    let big = json!({"client_secret": "x".repeat(2000), "email": AGENT, "send_attempt": 1});
    s.post(REQUEST, &big).await.assert_error(413, "M_TOO_LARGE");
    s.post_raw(REQUEST, "{not json")
        .await
        .assert_error(400, "M_NOT_JSON");
    s.post_raw(REQUEST, "")
        .await
        .assert_error(400, "M_NOT_JSON");
    s.post_raw(REQUEST, "[1]")
        .await
        .assert_error(400, "M_BAD_JSON");
    s.post(REQUEST, &json!({"client_secret": "x", "send_attempt": 1}))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    for attempt in [json!("1"), json!(-1), json!(1.5), json!(null)] {
        s.post(
            REQUEST,
            &json!({"client_secret": "x", "email": AGENT, "send_attempt": attempt}),
        )
        .await
        .assert_error(400, "M_INVALID_PARAM");
    }
    for secret in ["", "has space", "é", &"x".repeat(256)] {
        request(&s, AGENT, secret, 1)
            .await
            .assert_error(400, "M_INVALID_PARAM");
    }
    for email in [
        "not-an-address",
        "Jean <jean@finances.gouv.example>",
        "a@b@c",
        "",
    ] {
        request(&s, email, "x", 1)
            .await
            .assert_error(400, "M_INVALID_EMAIL");
    }
    s.get(REQUEST).await.assert_error(405, "M_UNRECOGNIZED");
    assert_eq!(session_count(&s).await, 0);

    let sid = sid_of(&request(&s, AGENT, "good", 1).await);
    let token = token_for(&s, &sid, 1).await;
    submit(&s, "unknownsid", "good", &token)
        .await
        .assert_error(404, "M_NO_VALID_SESSION");
    submit(&s, &sid, "wrong-secret", &token)
        .await
        .assert_error(404, "M_NO_VALID_SESSION");
    submit(&s, &sid, "good", "bad token!")
        .await
        .assert_error(400, "M_INVALID_PARAM");
    submit(&s, &sid, "bad secret", &token)
        .await
        .assert_error(400, "M_INVALID_PARAM");
    s.post(SUBMIT, &json!({"sid": sid, "client_secret": "good"}))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    validated(&s, &sid, "wrong-secret")
        .await
        .assert_error(404, "M_NO_VALID_SESSION");
    get_query(&s, VALIDATED, &[("sid", sid.as_str())], None)
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    // The wrong secret did not count as a wrong token.
    submit(&s, &sid, "good", &token).await.assert_ok();
}

#[test]
fn zero_configuration_writes_an_eml_under_var_mail() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dir.path().join("allowlists");
    std::fs::create_dir_all(&lists).unwrap();
    std::fs::write(lists.join("finances.toml"), ALLOWLIST).unwrap();
    let url = support::fresh_url_for_binary();
    let mut env = Vec::new();
    if let Some(u) = &url {
        env.push(("ANNUAIRE_DATABASE__URL", u.as_str()));
    }
    let p = ServeProcess::start(dir.path(), &["serve"], &env);
    // The served database (migrated by now) gets an identity account for the caller.
    let served_url = url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("var/annuaire.db").display()));
    let access_token = support::make_account_in(&served_url, CALLER);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let secret = "ZeroConfSecret";
    let sid = rt.block_on(async {
        let c = support::client();
        let r = c
            .post(format!("{}{REQUEST}", p.base))
            .bearer_auth(&access_token)
            .json(&json!({"client_secret": secret, "email": AGENT, "send_attempt": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        body["sid"].as_str().unwrap().to_string()
    });
    let mail = dir.path().join("var/mail");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while eml_files(&mail).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no .eml under var/mail"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let files = eml_files(&mail);
    assert_eq!(files.len(), 1);
    let raw = std::fs::read_to_string(&files[0]).unwrap();
    let token = token_in(&raw);
    assert!(raw.contains(&format!("To: {AGENT}")), "{raw}");
    let (code, log) = p.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("outbox worker started"), "{log}");
    assert!(log.contains("mail sent"), "{log}");
    // Logs carry the domain, never the address, the token, the sid or the client secret.
    assert!(log.contains("finances.gouv.example"), "{log}");
    for secret_value in [
        AGENT,
        "jean.dupont",
        token.as_str(),
        sid.as_str(),
        secret,
        access_token.as_str(),
    ] {
        assert!(
            !log.contains(secret_value),
            "{secret_value} in the log:\n{log}"
        );
    }
}

#[tokio::test]
async fn concurrent_identical_requests_share_one_session_and_one_mail() {
    // The default per-address limit: 5 at once.
    let s = base(Builder::new()).manual_clock(NOW).start().await;
    let requests = (0..8).map(|_| request(&s, AGENT, "race", 1));
    let replies = futures_util::future::join_all(requests).await;
    let (allowed, limited): (Vec<&Reply>, Vec<&Reply>) =
        replies.iter().partition(|r| r.status == 200);
    assert_eq!(
        allowed.len(),
        5,
        "the database limit holds under concurrency"
    );
    for r in limited {
        r.assert_error(429, "M_LIMIT_EXCEEDED");
    }
    let sids: std::collections::BTreeSet<String> = allowed.into_iter().map(sid_of).collect();
    assert_eq!(sids.len(), 1, "{sids:?}");
    assert_eq!(session_count(&s).await, 1);
    assert_eq!(outbox(&s).await.len(), 1);
    // Let the first mail go before moving the (manual) clock: a jump of an hour while it is in
    // flight would expire its lease, which real time never does within a delivery timeout.
    drained(&s).await;
    clock(&s).advance(3_600_000);
    // A burst of greater attempts: the same session; the mail of the greatest attempt is
    // sent and its token is the one that works (older queued mails may be superseded).
    let sid = sids.first().unwrap().clone();
    let requests = (2..6).map(|n| request(&s, AGENT, "race", n));
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(sid_of(&r), sid);
    }
    drained(&s).await;
    let rows = outbox(&s).await;
    let sent = rows.iter().filter(|r| r.status == "sent").count();
    assert_eq!(eml_files(&s.dir.path().join("mail")).len(), sent);
    let last = token_for(&s, &sid, 5).await;
    submit(&s, &sid, "race", &last).await.assert_ok();
}
