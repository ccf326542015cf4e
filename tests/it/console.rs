//! The administrators' console over HTTP, as a browser drives it (cookies, forms): login with
//! the API's rules, the session cookie, CSRF refusal, viewers refused, session expiry with the
//! manual clock, the rule form with the importer's messages beside their field, and every
//! page answering with the security headers. Also the agents' pages and the domain requests,
//! from the form to the mail to the console's acceptance.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::json;

use crate::support::fixtures::{self, FINANCES};
use crate::support::{Builder, Reply, TestServer, eventually};

const EDITOR_PASSWORD: &str = "editor password 1";
const VIEWER_PASSWORD: &str = "viewer password 1";
const T0: i64 = 1_800_000_000_000;

/// A browser: the server's client with a cookie jar of its own.
struct Browser<'a> {
    s: &'a TestServer,
    cookies: BTreeMap<String, String>,
}

impl<'a> Browser<'a> {
    fn new(s: &'a TestServer) -> Self {
        Browser {
            s,
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, r: &Reply) {
        for value in r.headers.get_all(SET_COOKIE) {
            let text = value.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let removal = text.to_ascii_lowercase().contains("max-age=0") || value.is_empty();
            if removal {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        let r = self
            .s
            .client
            .get(self.s.url(path))
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        let r = Reply::from(r).await;
        self.keep_cookies(&r);
        r
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        let body = serde_urlencoded::to_string(form).unwrap();
        let r = self
            .s
            .client
            .post(self.s.url(path))
            .header(COOKIE, self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let r = Reply::from(r).await;
        self.keep_cookies(&r);
        r
    }

    /// The value of the hidden `csrf` field of the last page.
    fn csrf_of(page: &Reply) -> String {
        let re = regex::Regex::new(r#"name="csrf" value="([^"]+)""#).unwrap();
        re.captures(&page.text)
            .unwrap_or_else(|| panic!("no csrf field in:\n{}", page.text))[1]
            .to_owned()
    }

    async fn login(&mut self, username: &str, password: &str) -> Reply {
        let page = self.get("/_annuaire/console/login").await;
        assert_eq!(page.status, 200, "{}", page.text);
        let csrf = Self::csrf_of(&page);
        self.post(
            "/_annuaire/console/login",
            &[
                ("csrf", &csrf),
                ("username", username),
                ("password", password),
                ("next", "/_annuaire/console/rules"),
            ],
        )
        .await
    }

    /// A console page's CSRF token (the session's).
    async fn session_csrf(&mut self) -> String {
        let page = self.get("/_annuaire/console/").await;
        assert_eq!(page.status, 200, "{}", page.text);
        Self::csrf_of(&page)
    }
}

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

async fn start(b: Builder) -> TestServer {
    let s = fixtures::with_allowlists(b, &[FINANCES]).start().await;
    add_account(&s, "ed", "editor", EDITOR_PASSWORD);
    add_account(&s, "vi", "viewer", VIEWER_PASSWORD);
    s
}

#[track_caller]
fn assert_page_headers(r: &Reply) {
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r.header("referrer-policy").is_some());
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn login_sets_a_strict_httponly_cookie_and_every_page_renders() {
    let s = start(Builder::new()).await;
    let mut b = Browser::new(&s);
    // Without a session: to the login page, remembering where to go.
    let r = b.get("/_annuaire/console/rules?kind=deny").await;
    assert_eq!(r.status, 303);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("/_annuaire/console/login?next=%2F_annuaire%2Fconsole%2Frules"),
        "{:?}",
        r.header("location")
    );
    let r = b.login("ed", "wrong password!").await;
    assert_eq!(r.status, 403);
    assert!(
        r.text.contains("Identifiant ou mot de passe incorrect"),
        "{}",
        r.text
    );
    assert!(!b.cookies.contains_key("annuaire_console"));

    let r = b.login("ed", EDITOR_PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.text);
    assert_eq!(r.header("location"), Some("/_annuaire/console/rules"));
    let set = r
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("annuaire_console="))
        .unwrap();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(set.contains("Path=/_annuaire/console"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP here: {set}");

    let rule_id = s.app.admin.rule_facets();
    assert!(rule_id.total > 0);
    let some_rule = s.app.allowlist.index().rules()[0].id.clone();
    for path in [
        "/_annuaire/console/".to_owned(),
        "/_annuaire/console/rules".into(),
        "/_annuaire/console/rules?domain=finances.gouv.example&kind=domain".into(),
        format!("/_annuaire/console/rules/{some_rule}"),
        "/_annuaire/console/rules/new".into(),
        "/_annuaire/console/rules/import".into(),
        "/_annuaire/console/rules/export".into(),
        "/_annuaire/console/explain?address=jean%40finances.gouv.example".into(),
        "/_annuaire/console/audit?action=rule.*".into(),
        "/_annuaire/console/directory".into(),
        "/_annuaire/console/directory?q=jean".into(),
        "/_annuaire/console/erase".into(),
        "/_annuaire/console/accounts".into(),
        "/_annuaire/console/homeservers".into(),
        "/_annuaire/console/requests".into(),
    ] {
        let r = b.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_page_headers(&r);
        assert!(r.text.contains("Connecté : ed"), "{path}");
    }
    let r = b
        .get("/_annuaire/console/rules/export.toml?source=finances.toml")
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("finances.gouv.example"), "{}", r.text);
    assert!(
        r.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );
    // The language switch: German, then kept by its cookie.
    let r = b.get("/_annuaire/console/rules?lang=de").await;
    assert!(r.text.contains("<html lang=\"de\">"));
    assert!(r.text.contains("Angemeldet: ed"), "{}", r.text);
    let r = b.get("/_annuaire/console/audit").await;
    assert!(r.text.contains("Änderungsprotokoll"));
    // Logout ends the session.
    let csrf = b.session_csrf().await;
    let r = b
        .post("/_annuaire/console/logout", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, 303);
    let r = b.get("/_annuaire/console/").await;
    assert_eq!(r.status, 303);
}

#[tokio::test]
async fn forms_without_the_session_csrf_token_change_nothing() {
    let s = start(Builder::new()).await;
    let mut b = Browser::new(&s);
    assert_eq!(b.login("ed", EDITOR_PASSWORD).await.status, 303);
    let rule = [
        ("kind", "domain"),
        ("name", "csrf.example"),
        ("homeserver", "agent.finances.example"),
    ];
    for csrf in [None, Some("forged-token-forged-token-forged")] {
        let mut form = rule.to_vec();
        if let Some(c) = csrf {
            form.push(("csrf", c));
        }
        let r = b.post("/_annuaire/console/rules/new", &form).await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert!(r.text.contains("Formulaire refusé"), "{}", r.text);
    }
    // The login form too (double-submit token).
    let mut fresh = Browser::new(&s);
    let r = fresh
        .post(
            "/_annuaire/console/login",
            &[
                ("username", "ed"),
                ("password", EDITOR_PASSWORD),
                ("csrf", "x"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(!fresh.cookies.contains_key("annuaire_console"));
    let page = b.get("/_annuaire/console/rules?domain=csrf.example").await;
    assert!(
        page.text.contains("Aucune règle ne correspond"),
        "{}",
        page.text
    );
    // With the token: created.
    let csrf = b.session_csrf().await;
    let mut form = rule.to_vec();
    form.push(("csrf", &csrf));
    let r = b.post("/_annuaire/console/rules/new", &form).await;
    assert_eq!(r.status, 303, "{}", r.text);
}

#[tokio::test]
async fn viewers_see_no_editing_controls_and_are_refused() {
    let s = start(Builder::new()).await;
    let mut b = Browser::new(&s);
    assert_eq!(b.login("vi", VIEWER_PASSWORD).await.status, 303);
    let rules = b.get("/_annuaire/console/rules").await;
    assert!(
        !rules.text.contains("/_annuaire/console/rules/new"),
        "no New rule button"
    );
    let accounts = b.get("/_annuaire/console/accounts").await;
    assert!(!accounts.text.contains("name=\"new_password\""));
    let some_rule = s.app.allowlist.index().rules()[0].id.clone();
    let rule = b
        .get(&format!("/_annuaire/console/rules/{some_rule}"))
        .await;
    assert!(!rule.text.contains("/convert\""), "{}", rule.text);
    let csrf = Browser::csrf_of(&rules);
    let r = b
        .post(
            "/_annuaire/console/rules/new",
            &[
                ("csrf", &csrf),
                ("kind", "domain"),
                ("name", "viewer.example"),
                ("homeserver", "agent.finances.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.text.contains("Action non permise"), "{}", r.text);
    let r = b
        .post(
            "/_annuaire/console/accounts",
            &[
                ("csrf", &csrf),
                ("action", "role"),
                ("username", "vi"),
                ("role", "editor"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    let r = b.get("/_annuaire/console/rules/new").await;
    assert_eq!(r.status, 403);
    let accounts = s.app.admin.list_accounts().await.unwrap();
    assert_eq!(
        accounts.iter().find(|a| a.username == "vi").unwrap().role,
        "viewer"
    );
    assert!(
        s.app.admin.rule_facets().total == s.app.allowlist.index().rules().len()
            && !s
                .app
                .allowlist
                .index()
                .rules()
                .iter()
                .any(|r| r.target.value() == "viewer.example")
    );
}

#[tokio::test]
async fn sessions_expire_after_the_idle_timeout_on_the_manual_clock() {
    let s = start(Builder::new().manual_clock(T0)).await;
    let clock = s.clock.clone().unwrap();
    let mut b = Browser::new(&s);
    assert_eq!(b.login("ed", EDITOR_PASSWORD).await.status, 303);
    // Activity keeps it alive: 10 minutes, a page, 10 minutes more.
    clock.advance(10 * 60_000);
    assert_eq!(b.get("/_annuaire/console/").await.status, 200);
    clock.advance(10 * 60_000);
    assert_eq!(b.get("/_annuaire/console/").await.status, 200);
    // 15 minutes and a second of silence: gone.
    clock.advance(15 * 60_000 + 1000);
    let r = b.get("/_annuaire/console/audit").await;
    assert_eq!(r.status, 303);
    let location = r.header("location").unwrap().to_owned();
    assert!(
        location.starts_with("/_annuaire/console/login?expired=1"),
        "{location}"
    );
    let login = b.get(&location).await;
    assert!(
        login.text.contains("Votre session a expiré"),
        "{}",
        login.text
    );
    // A removed account's session ends at once.
    assert_eq!(b.login("ed", EDITOR_PASSWORD).await.status, 303);
    assert_eq!(b.get("/_annuaire/console/").await.status, 200);
    s.app
        .admin
        .remove_account("ed", &annuaire::admin::Actor::cli("test"))
        .await
        .unwrap();
    assert_eq!(b.get("/_annuaire/console/").await.status, 303);
}

#[tokio::test]
async fn the_rule_form_shows_the_importers_messages_beside_the_field_and_rules_apply() {
    let s = start(Builder::new()).await;
    let mut b = Browser::new(&s);
    assert_eq!(b.login("ed", EDITOR_PASSWORD).await.status, 303);
    let csrf = b.session_csrf().await;
    // No homeserver on an allow rule: the importer's message, tied to the field.
    let r = b
        .post(
            "/_annuaire/console/rules/new",
            &[
                ("csrf", &csrf),
                ("kind", "domain"),
                ("name", "interieur.gouv.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let re = regex::Regex::new(
        r#"(?s)id="homeserver"[^>]*aria-describedby="homeserver-hint homeserver-error" aria-invalid="true".*id="homeserver-error">[^<]*has no homeserver"#,
    )
    .unwrap();
    assert!(re.is_match(&r.text), "{}", r.text);
    assert!(
        r.text.contains("value=\"interieur.gouv.example\""),
        "typed values kept"
    );
    // A public mail provider: beside the domain.
    let r = b
        .post(
            "/_annuaire/console/rules/new",
            &[
                ("csrf", &csrf),
                ("kind", "domain"),
                ("name", "gmail.com"),
                ("homeserver", "hs.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        regex::Regex::new(r#"id="name-error">[^<]*public mail provider"#)
            .unwrap()
            .is_match(&r.text),
        "{}",
        r.text
    );
    // Before: the address is refused; after the rule, /internal-info lets it in.
    let info = s
        .get("/_matrix/identity/api/v1/internal-info?medium=email&address=marie%40interieur.gouv.example")
        .await
        .json();
    assert_eq!(info["decision"], "denied");
    let r = b
        .post(
            "/_annuaire/console/rules/new",
            &[
                ("csrf", &csrf),
                ("kind", "domain"),
                ("name", "interieur.gouv.example"),
                ("subdomains", "true"),
                ("label", "Intérieur"),
                ("homeserver", "agent.interieur.example"),
                ("expires_at", "2099-01-01T00:00"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text);
    let location = r.header("location").unwrap().to_owned();
    assert!(location.contains("done=created"), "{location}");
    let page = b.get(&location).await;
    assert!(page.text.contains("2099-01-01 00:00 UTC"), "{}", page.text);
    let info = s
        .get("/_matrix/identity/api/v1/internal-info?medium=email&address=marie%40interieur.gouv.example")
        .await
        .json();
    assert_eq!(info["hs"], "agent.interieur.example");
    // The audit log names the console's user.
    let audit = b.get("/_annuaire/console/audit?actor=ed").await;
    assert!(audit.text.contains("rule.create"), "{}", audit.text);
    // Import: the dry run changes nothing, the confirmation does.
    let toml = "[organisation]\nlabel = \"Justice\"\nhomeserver = \"agent.justice.example\"\n\n[[domain]]\nname = \"justice.gouv.example\"\n";
    let r = b
        .post(
            "/_annuaire/console/rules/import",
            &[("csrf", &csrf), ("step", "preview"), ("toml", toml)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("justice.gouv.example") && r.text.contains("Changements prévus"));
    let before = s.app.allowlist.index().rules().len();
    assert!(
        !s.app
            .allowlist
            .index()
            .rules()
            .iter()
            .any(|r| r.target.value() == "justice.gouv.example")
    );
    let r = b
        .post(
            "/_annuaire/console/rules/import",
            &[("csrf", &csrf), ("step", "apply"), ("toml", toml)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("Import effectué"), "{}", r.text);
    assert_eq!(s.app.allowlist.index().rules().len(), before + 1);
    // Explain names the winner.
    let r = b
        .get("/_annuaire/console/explain?address=paul%40justice.gouv.example")
        .await;
    assert!(r.text.contains("class=\"winner\""), "{}", r.text);
    // A broken file: the importer's message with its line.
    let r = b
        .post(
            "/_annuaire/console/rules/import",
            &[
                ("csrf", &csrf),
                ("step", "preview"),
                ("toml", "[[domain]]\nname = 3\n"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("import.toml:"), "{}", r.text);
}

#[tokio::test]
async fn file_rules_are_converted_then_edited_and_deleted() {
    let s = start(Builder::new()).await;
    let mut b = Browser::new(&s);
    assert_eq!(b.login("ed", EDITOR_PASSWORD).await.status, 303);
    let csrf = b.session_csrf().await;
    let file_rule = s
        .app
        .allowlist
        .index()
        .rules()
        .iter()
        .find(|r| r.source.is_file() && r.kind == annuaire::policy::RuleKind::Domain)
        .unwrap()
        .clone();
    let path = format!("/_annuaire/console/rules/{}", file_rule.id);
    // A file rule cannot be edited here: the edit form sends back to the rule.
    let r = b.get(&format!("{path}/edit")).await;
    assert_eq!(r.status, 303);
    let r = b.post(&format!("{path}/convert"), &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303, "{}", r.text);
    let page = b.get(r.header("location").unwrap()).await;
    assert!(
        page.text.contains("finances.toml:"),
        "the note names the file line: {}",
        page.text
    );
    let form = b.get(&format!("{path}/edit")).await;
    assert_eq!(form.status, 200);
    let r = b
        .post(
            &format!("{path}/edit"),
            &[
                ("csrf", &csrf),
                ("kind", "domain"),
                ("name", file_rule.target.value()),
                ("subdomains", "true"),
                ("label", "Finances publiques"),
                ("homeserver", "agent.finances.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text);
    let rule = s.app.admin.rule(&file_rule.id).await.unwrap().rule;
    assert_eq!(rule.label.as_deref(), Some("Finances publiques"));
    let r = b.post(&format!("{path}/delete"), &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303);
    assert!(s.app.admin.rule(&file_rule.id).await.is_err());
}

#[tokio::test]
async fn domain_requests_are_limited_per_client_address() {
    let s = start(Builder::new().config(|c, _| {
        c.web.domain_requests_per_ip = annuaire::config::RateLimit {
            burst: 1,
            every: annuaire::config::HumanDuration(Duration::from_secs(3600)),
        };
    }))
    .await;
    let mut agent = Browser::new(&s);
    let csrf = Browser::csrf_of(&agent.get("/request").await);
    let ask = |address: &'static str| {
        [
            ("csrf", csrf.clone()),
            ("address", address.to_owned()),
            ("name", "A".to_owned()),
            ("organisation", "B".to_owned()),
        ]
    };
    let form = ask("a@one.example");
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(agent.post("/request", &pairs).await.status, 200);
    let form = ask("b@two.example");
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = agent.post("/request", &pairs).await;
    assert_eq!(r.status, 429, "{}", r.text);
}

#[tokio::test]
async fn accounts_and_directory_moderation_from_the_console() {
    let s = start(Builder::new()).await;
    let mut b = Browser::new(&s);
    assert_eq!(b.login("ed", EDITOR_PASSWORD).await.status, 303);
    let csrf = b.session_csrf().await;
    let r = b
        .post(
            "/_annuaire/console/accounts",
            &[
                ("csrf", &csrf),
                ("action", "add"),
                ("new_username", "nina"),
                ("new_role", "viewer"),
                ("new_password", "short"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("at least 12 characters"), "{}", r.text);
    let r = b
        .post(
            "/_annuaire/console/accounts",
            &[
                ("csrf", &csrf),
                ("action", "add"),
                ("new_username", "nina"),
                ("new_role", "viewer"),
                ("new_password", "a long enough password"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text);
    let r = b
        .post(
            "/_annuaire/console/accounts",
            &[
                ("csrf", &csrf),
                ("action", "role"),
                ("username", "nina"),
                ("role", "editor"),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    let accounts = s.app.admin.list_accounts().await.unwrap();
    assert_eq!(
        accounts.iter().find(|a| a.username == "nina").unwrap().role,
        "editor"
    );
    let r = b
        .post(
            "/_annuaire/console/accounts",
            &[("csrf", &csrf), ("action", "remove"), ("username", "nina")],
        )
        .await;
    assert_eq!(r.status, 303);
    assert!(
        !s.app
            .admin
            .list_accounts()
            .await
            .unwrap()
            .iter()
            .any(|a| a.username == "nina")
    );
    let audit = b
        .get("/_annuaire/console/audit?target=account%3Anina")
        .await;
    assert!(audit.text.contains("account.update") && audit.text.contains("account.remove"));
    // Erasure needs the address typed twice.
    let r = b
        .post(
            "/_annuaire/console/erase",
            &[
                ("csrf", &csrf),
                ("address", "jean@finances.gouv.example"),
                ("confirm", "jean@finances.gouv.exampl"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("rien n’a été effacé"), "{}", r.text);
    let r = b
        .post(
            "/_annuaire/console/erase",
            &[
                ("csrf", &csrf),
                ("address", "jean@finances.gouv.example"),
                ("confirm", "jean@finances.gouv.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("est effacée"), "{}", r.text);
}

/// The `.eml` of the latest queued domain-request mail of `stage`, once sent (quoted-printable
/// undone enough to read links).
async fn request_mail(s: &TestServer, stage: &str, nth: usize) -> String {
    let mut message_id = String::new();
    eventually(
        Duration::from_secs(20),
        "the request mail is sent",
        async || {
            let rows = s.app.db.run(annuaire::store::outbox::list).await.unwrap();
            let sent: Vec<_> = rows
                .into_iter()
                .filter(|r| {
                    r.kind == "domain_request"
                        && r.dedupe_key.ends_with(&format!(":{stage}"))
                        && r.status == "sent"
                })
                .collect();
            match sent.get(nth) {
                Some(r) => {
                    message_id = r.message_id.clone();
                    true
                }
                None => false,
            }
        },
    )
    .await;
    let raw = std::fs::read_to_string(s.dir.path().join("mail").join(format!("{message_id}.eml")))
        .unwrap();
    quoted_printable(&raw)
}

/// Undoes quoted-printable (soft line breaks, `=XX`) over the whole message.
fn quoted_printable(raw: &str) -> String {
    let joined = raw.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn confirm_link(mail: &str) -> String {
    let re = regex::Regex::new(
        r"https?://[^\s<>]+/request/confirm\?id=[A-Za-z0-9%_-]+&token=[A-Za-z0-9%_-]+",
    )
    .unwrap();
    re.find(mail)
        .unwrap_or_else(|| panic!("no link in {mail}"))
        .as_str()
        .to_owned()
}

#[tokio::test]
async fn a_domain_request_goes_from_the_form_to_the_mail_to_the_console_to_acceptance() {
    let s = start(Builder::new().config(|c, _| {
        c.http.public_base_url = Some("https://id.test.example".into());
        c.web.domain_requests_per_domain = annuaire::config::RateLimit {
            burst: 2,
            every: annuaire::config::HumanDuration(Duration::from_secs(3600)),
        };
    }))
    .await;
    let mut agent = Browser::new(&s);
    let home = agent.get("/").await;
    assert_eq!(home.status, 200);
    assert_page_headers(&home);
    let csrf = Browser::csrf_of(&home);
    // A known address: where to register.
    let r = agent
        .post(
            "/",
            &[("csrf", &csrf), ("address", "Jean@Finances.Gouv.Example")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("public.finances.example"), "{}", r.text);
    assert!(!r.text.contains("action=\"/request\""));
    // An unknown administration: refused, and the request form is offered.
    let r = agent
        .post(
            "/?lang=en",
            &[
                ("csrf", &csrf),
                ("address", "claire@mairie-exemple.example"),
            ],
        )
        .await;
    assert!(r.text.contains("is not on the service yet"), "{}", r.text);
    assert!(r.text.contains("action=\"/request\""));
    // A public provider: no form.
    let r = agent
        .post("/", &[("csrf", &csrf), ("address", "someone@gmail.com")])
        .await;
    assert!(!r.text.contains("action=\"/request\""), "{}", r.text);
    // Missing name: the error beside the field.
    let r = agent
        .post(
            "/request",
            &[
                ("csrf", &csrf),
                ("address", "claire@mairie-exemple.example"),
                ("organisation", "Mairie"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("id=\"name-error\""), "{}", r.text);
    let r = agent
        .post(
            "/request",
            &[
                ("csrf", &csrf),
                ("address", "claire@mairie-exemple.example"),
                ("name", "Claire Martin"),
                ("organisation", "Mairie d'Exemple"),
                ("message", "Nous sommes 40."),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.contains("Check your mailbox") || r.text.contains("Consultez"),
        "{}",
        r.text
    );
    // Not in the queue until confirmed.
    assert!(s.app.requests.queue().await.unwrap().is_empty());
    let mail = request_mail(&s, "confirm", 0).await;
    assert!(mail.contains("Mairie d'Exemple") || mail.contains("Mairie d&#x27;Exemple"));
    let link = confirm_link(&mail);
    let path = link.strip_prefix("https://id.test.example").unwrap();
    let r = agent.get(path).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    let r = agent.get(&path.replace("token=", "token=x")).await;
    assert_eq!(r.status, 200, "followed twice: still fine ({})", r.text);
    // A second requester at the same domain; the third hits the per-domain limit.
    let r = agent
        .post(
            "/request",
            &[
                ("csrf", &csrf),
                ("address", "paul@mairie-exemple.example"),
                ("name", "Paul"),
                ("organisation", "Mairie d'Exemple"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let link2 = confirm_link(&request_mail(&s, "confirm", 1).await);
    agent
        .get(link2.strip_prefix("https://id.test.example").unwrap())
        .await;
    let r = agent
        .post(
            "/request",
            &[
                ("csrf", &csrf),
                ("address", "zoe@mairie-exemple.example"),
                ("name", "Zoé"),
                ("organisation", "Mairie"),
            ],
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    // The console's queue, grouped by domain.
    let mut admin = Browser::new(&s);
    assert_eq!(admin.login("ed", EDITOR_PASSWORD).await.status, 303);
    let queue = admin.get("/_annuaire/console/requests").await;
    assert!(
        queue.text.contains("mairie-exemple.example"),
        "{}",
        queue.text
    );
    assert!(
        queue.text.contains("<td class=\"num\">2</td>"),
        "{}",
        queue.text
    );
    let domain_page = admin
        .get("/_annuaire/console/requests/domain?domain=mairie-exemple.example")
        .await;
    assert!(domain_page.text.contains("Nous sommes 40."));
    // Accept: the rule form, filled in; saving it accepts and tells the requesters.
    let accept = regex::Regex::new(r#"href="(/_annuaire/console/rules/new\?[^"]+)""#).unwrap();
    let form_path = accept.captures(&domain_page.text).unwrap()[1].replace("&amp;", "&");
    let form = admin.get(&form_path).await;
    assert!(
        form.text.contains("value=\"mairie-exemple.example\""),
        "{}",
        form.text
    );
    assert!(form.text.contains("name=\"request_domain\""));
    let csrf = Browser::csrf_of(&form);
    let r = admin
        .post(
            "/_annuaire/console/rules/new",
            &[
                ("csrf", &csrf),
                ("kind", "domain"),
                ("name", "mairie-exemple.example"),
                ("label", "Mairie d'Exemple"),
                ("homeserver", "agent.collectivites.example"),
                ("request_domain", "mairie-exemple.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text);
    assert!(r.header("location").unwrap().contains("done=accepted"));
    assert!(r.header("location").unwrap().contains("told=2"));
    let accepted = request_mail(&s, "accepted", 1).await;
    assert!(accepted.contains("@mairie-exemple.example"), "{accepted}");
    assert!(s.app.requests.queue().await.unwrap().is_empty());
    // The agent now gets a homeserver.
    let r = agent
        .post(
            "/",
            &[
                ("csrf", &Browser::csrf_of(&home)),
                ("address", "claire@mairie-exemple.example"),
            ],
        )
        .await;
    assert!(r.text.contains("agent.collectivites.example"), "{}", r.text);
}

async fn api_token(s: &TestServer, username: &str, password: &str) -> String {
    let r = s
        .post(
            "/_annuaire/admin/v1/login",
            &json!({"username": username, "password": password}),
        )
        .await;
    r.assert_ok()["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_domain_request_api_lists_accepts_declines_and_old_requests_are_purged() {
    let s = start(Builder::new().manual_clock(T0).config(|c, _| {
        c.http.public_base_url = Some("https://id.test.example".into());
    }))
    .await;
    let clock = s.clock.clone().unwrap();
    let submit = |address: &'static str| annuaire::domain_requests::NewDomainRequest {
        address: address.into(),
        name: "Agent".into(),
        organisation: "Préfecture".into(),
        message: None,
        language: annuaire::config::Language::DE,
    };
    let token = api_token(&s, "ed", EDITOR_PASSWORD).await;
    let viewer = api_token(&s, "vi", VIEWER_PASSWORD).await;
    for (i, address) in ["a@prefecture.example", "b@prefecture.example"]
        .into_iter()
        .enumerate()
    {
        s.app.requests.submit(submit(address), None).await.unwrap();
        // Mails are listed oldest first: one second apart.
        clock.advance(1000);
        let link = confirm_link(&request_mail(&s, "confirm", i).await);
        let q = reqwest::Url::parse(&link).unwrap();
        let params: BTreeMap<String, String> = q.query_pairs().into_owned().collect();
        s.app
            .requests
            .confirm(&params["id"], &params["token"])
            .await
            .unwrap();
    }
    let call =
        |method: reqwest::Method, path: &str, bearer: &str, body: Option<serde_json::Value>| {
            let mut req = s.client.request(method, s.url(path)).bearer_auth(bearer);
            if let Some(b) = body {
                req = req.json(&b);
            }
            async move { Reply::from(req.send().await.unwrap()).await }
        };
    let r = call(
        reqwest::Method::GET,
        "/_annuaire/admin/v1/domain-requests",
        &viewer,
        None,
    )
    .await;
    let body = r.assert_ok();
    assert_eq!(body["domains"][0]["domain"], "prefecture.example");
    assert_eq!(body["domains"][0]["requesters"], 2);
    let r = call(
        reqwest::Method::GET,
        "/_annuaire/admin/v1/domain-requests/prefecture.example?status=pending",
        &viewer,
        None,
    )
    .await;
    assert_eq!(r.assert_ok()["requests"].as_array().unwrap().len(), 2);
    call(
        reqwest::Method::GET,
        "/_annuaire/admin/v1/domain-requests/prefecture.example?status=maybe",
        &viewer,
        None,
    )
    .await
    .assert_error(400, "M_INVALID_PARAM");
    // Viewers may not decide; nobody accepts before a rule exists.
    call(
        reqwest::Method::POST,
        "/_annuaire/admin/v1/domain-requests/prefecture.example/accept",
        &viewer,
        None,
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
    call(
        reqwest::Method::POST,
        "/_annuaire/admin/v1/domain-requests/prefecture.example/accept",
        &token,
        None,
    )
    .await
    .assert_error(409, "ANNUAIRE_DOMAIN_NOT_ALLOWED");
    let r = call(
        reqwest::Method::POST,
        "/_annuaire/admin/v1/domain-requests/prefecture.example/decline",
        &token,
        Some(json!({"message": "Veuillez passer par votre ministère de tutelle."})),
    )
    .await;
    let body = r.assert_ok();
    assert_eq!(body["status"], "declined");
    assert_eq!(body["requesters_told"], 2);
    let declined = request_mail(&s, "declined", 1).await;
    assert!(declined.contains("ministère de tutelle"), "{declined}");
    assert!(
        declined.contains("Begründung"),
        "in the requester's language (German): {declined}"
    );
    call(
        reqwest::Method::POST,
        "/_annuaire/admin/v1/domain-requests/prefecture.example/decline",
        &token,
        Some(json!({})),
    )
    .await
    .assert_error(404, "M_NOT_FOUND");
    // Retention: 90 days by default.
    let r = call(
        reqwest::Method::GET,
        "/_annuaire/admin/v1/domain-requests/prefecture.example",
        &viewer,
        None,
    )
    .await;
    assert_eq!(r.assert_ok()["requests"].as_array().unwrap().len(), 2);
    clock.advance(89 * 86_400_000);
    assert_eq!(s.app.requests.purge().await.unwrap(), 0);
    clock.advance(2 * 86_400_000);
    assert_eq!(s.app.requests.purge().await.unwrap(), 2);
    assert!(
        s.app
            .requests
            .requests("prefecture.example", None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn malformed_page_requests_get_4xx_pages_never_5xx() {
    let s = start(Builder::new()).await;
    let mut b = Browser::new(&s);
    assert_eq!(b.login("ed", EDITOR_PASSWORD).await.status, 303);
    let csrf = b.session_csrf().await;
    let bodies: [&[u8]; 4] = [
        b"%%%",
        b"csrf=&&&=",
        &[0xff, 0xfe, b'=', 0x00],
        b"kind=domain&kind=deny",
    ];
    for path in [
        "/",
        "/request",
        "/_annuaire/console/login",
        "/_annuaire/console/rules/new",
        "/_annuaire/console/accounts",
        "/_annuaire/console/erase",
        "/_annuaire/console/directory/entry",
        "/_annuaire/console/requests/domain",
        "/_annuaire/console/rules/import",
    ] {
        for body in bodies {
            let r = s
                .client
                .post(s.url(path))
                .header(COOKIE, b.cookie_header())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            assert!((400..500).contains(&status), "{path}: {status}");
        }
        // A malformed form with the right token: still a 4xx.
        let r = s
            .client
            .post(s.url(path))
            .header(COOKIE, b.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}&subdomains=maybe&step=%ff"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!(status < 500, "{path}: {status}");
    }
    for path in [
        "/_annuaire/console/rules/nope",
        "/_annuaire/console/directory/entry?user_id=nobody",
        "/_annuaire/console/requests/domain?domain=..",
        "/request/confirm?id=x",
        "/request/confirm?id=x&token=y",
        "/assets/nothing.css",
        "/_annuaire/console/explain?address=not-an-address",
        "/_annuaire/console/audit?since=yesterday",
        "/_annuaire/console/rules?kind=nothing&domain=not%20a%20domain",
    ] {
        let r = b.get(path).await;
        assert!(
            (200..500).contains(&r.status) && r.status != 500,
            "{path}: {} {}",
            r.status,
            r.text
        );
    }
}

#[tokio::test]
async fn homeserver_tokens_are_made_shown_once_used_and_revoked_from_the_console() {
    let s = start(Builder::new()).await;
    let mut b = Browser::new(&s);
    assert_eq!(b.login("ed", EDITOR_PASSWORD).await.status, 303);
    let page = b.get("/_annuaire/console/homeservers").await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("encore de jeton"));
    let csrf = Browser::csrf_of(&page);
    // A name that is not a server name is refused beside the form.
    let r = b
        .post(
            "/_annuaire/console/homeservers",
            &[
                ("csrf", &csrf),
                ("action", "add"),
                ("server_name", "not a name"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("is not a server name"), "{}", r.text);
    // Made: the token is in this answer, once.
    let r = b
        .post(
            "/_annuaire/console/homeservers",
            &[
                ("csrf", &csrf),
                ("action", "add"),
                ("server_name", "Agent.Finances.Example"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_page_headers(&r);
    let marker = "id=\"new-token\" type=\"text\" readonly value=\"";
    let start = r.text.find(marker).expect("the new token is shown") + marker.len();
    let token: String = r.text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    assert_eq!(token.len(), 48, "{}", r.text);
    let list = b.get("/_annuaire/console/homeservers").await;
    assert!(list.text.contains("agent.finances.example"));
    assert!(!list.text.contains(&token), "shown only once");
    // The token works on the homeserver API.
    let call = |token: String| {
        let url = s.url(
            "/_annuaire/homeserver/v1/display_name?medium=email&address=jean%40finances.gouv.example",
        );
        let client = s.client.clone();
        async move { Reply::from(client.get(url).bearer_auth(token).send().await.unwrap()).await }
    };
    let r = call(token.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A second one is refused while the first is active.
    let r = b
        .post(
            "/_annuaire/console/homeservers",
            &[
                ("csrf", &csrf),
                ("action", "add"),
                ("server_name", "agent.finances.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    // Revoked: its next call is refused.
    let r = b
        .post(
            "/_annuaire/console/homeservers",
            &[
                ("csrf", &csrf),
                ("action", "revoke"),
                ("server_name", "agent.finances.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text);
    assert_eq!(call(token).await.status, 401);
    let audit = s
        .app
        .admin
        .audit(
            annuaire::admin::AuditFilter {
                action: Some("homeserver.*".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(audit.entries.len(), 2);
    assert!(audit.entries.iter().all(|e| e.actor == "ed"));
    // A viewer sees the list, no controls, and cannot change anything.
    let mut v = Browser::new(&s);
    assert_eq!(v.login("vi", VIEWER_PASSWORD).await.status, 303);
    let page = v.get("/_annuaire/console/homeservers").await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("agent.finances.example"));
    assert!(!page.text.contains("name=\"action\" value=\"add\""));
    let csrf = Browser::csrf_of(&page);
    let r = v
        .post(
            "/_annuaire/console/homeservers",
            &[
                ("csrf", &csrf),
                ("action", "add"),
                ("server_name", "x.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
}
