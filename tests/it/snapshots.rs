//! Snapshots (insta) of the exact responses of every public endpoint: status, Content-Type
//! (and Retry-After, Location when present) and the body text byte for byte, for successes
//! and the main error shapes. They pin today's bytes, key order included, so that a rewrite of
//! the HTTP layer can prove it answers exactly as before.
//!
//! What a snapshot shows, and what it hides:
//! - `> METHOD /path?query` and the request headers the test set (an `Authorization` value is
//!   shown as its scheme only), then `< status` and the response headers named above, a blank
//!   line and the body exactly as received;
//! - insta trims trailing whitespace, so a body ending in whitespace gets a last line
//!   `[trailing whitespace: "\n"]`, and a carriage return is written `\r`;
//! - values no test can know are replaced, and only these: (1) the values a test registered
//!   with [`Snapshots::known`] (tokens, session ids, peppers, lookup hashes, ephemeral keys it
//!   read from earlier answers), written `[what it is]`, wherever they appear; (2) loopback
//!   ports (`127.0.0.1:[port]`); (3) the fields each assertion names, whose string or number
//!   values become `"[field]"` or `[field]` (each named field must occur). The text is never
//!   parsed and re-emitted, so key order is the server's.
//!
//! Everything else is fixed: a manual clock, the identity server's signing key read from a
//! file (so its public key and its signatures over fixed content are fixed), rule ids
//! (hashes of the rule). The same snapshots must match on SQLite and on PostgreSQL.

use std::cell::RefCell;
use std::time::Duration;

use annuaire::config::{ByteSize, ClientHostConfig, HumanDuration, RateLimit, WindowLimit};
use annuaire::matrix::hashing::lookup_hash;
use annuaire::matrix::signing::SigningKey;
use annuaire::policy::normalize_email;
use reqwest::Method;
use serde_json::{Value, json};

use crate::identity::{bind_directly, builder, invite_body, register, sent_mail, unbind_body};
use crate::support::fixtures::{
    FINANCES, FINANCES_HS, JUSTICE, with_allowlists, with_terms, write_allowlists,
};
use crate::support::homeserver::{Homeserver, UNBIND_PATH};
use crate::support::{Builder, Reply, TestServer};

const V2: &str = "/_matrix/identity/v2";
const INFO: &str = "/_matrix/identity/api/v1/info";
const INTERNAL_INFO: &str = "/_matrix/identity/api/v1/internal-info";
const REQUEST_TOKEN: &str = "/_matrix/identity/v2/validate/email/requestToken";
const SUBMIT_TOKEN: &str = "/_matrix/identity/v2/validate/email/submitToken";
const GET_VALIDATED: &str = "/_matrix/identity/v2/3pid/getValidated3pid";
const ADMIN: &str = "/_annuaire/admin/v1";
/// 2027-01-15T08:00:00Z.
const START_MS: i64 = 1_800_000_000_000;
/// The identity server's signing key seed (32 bytes, unpadded base64).
const SIGNING_SEED: &str = "YW5udWFpcmUgc25hcHNob3RzIHNpZ25pbmcgc2VlZCE";
/// An ephemeral invitation key's seed, as a homeserver would send it to sign-ed25519.
const EPHEMERAL_SEED: &str = "ZXBoZW1lcmFsIGludml0YXRpb24ga2V5IHNlZWQgISE";

const JEAN: &str = "@jean:agent.finances.example";
const MARIE: &str = "@marie:agent.finances.example";
const LUC: &str = "@luc:agent.justice.example";

// ---- recording and scrubbing ----

/// One server's snapshots, with the values to hide that the test has learnt so far.
struct Snapshots<'s> {
    server: &'s TestServer,
    /// (value, placeholder), replaced in requests and responses.
    known: RefCell<Vec<(String, String)>>,
}

/// A request as the snapshot shows it, and its response.
struct Exchange {
    request: String,
    reply: Reply,
}

/// A request being built; [`Call::snap`] sends it and asserts its snapshot.
struct Call<'a> {
    snaps: &'a Snapshots<'a>,
    request: String,
    builder: reqwest::RequestBuilder,
}

/// The response headers a snapshot shows (when present).
const SHOWN_HEADERS: &[&str] = &["content-type", "retry-after", "location"];

impl<'s> Snapshots<'s> {
    fn new(server: &'s TestServer) -> Self {
        Snapshots {
            server,
            known: RefCell::new(Vec::new()),
        }
    }

    /// From now on, `value` reads `[what]` in snapshots.
    fn known(&self, value: &str, what: &str) {
        assert!(!value.is_empty());
        let mut known = self.known.borrow_mut();
        known.push((value.to_owned(), format!("[{what}]")));
        // Longest first, so that no value is replaced inside a longer one.
        known.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
    }

    fn call(&'s self, method: Method, path: &str) -> Call<'s> {
        Call {
            snaps: self,
            request: format!("> {method} {}\n", self.hide_known(path)),
            builder: self.server.client.request(method, self.server.url(path)),
        }
    }

    fn get(&'s self, path: &str) -> Call<'s> {
        self.call(Method::GET, path)
    }

    fn post(&'s self, path: &str) -> Call<'s> {
        self.call(Method::POST, path)
    }

    /// A GET with a query string built from `params` (percent-encoded; the snapshot shows
    /// them decoded, so that known values are recognised).
    fn get_query(&'s self, path: &str, params: &[(&str, &str)]) -> Call<'s> {
        let url = reqwest::Url::parse_with_params(&self.server.url(path), params).unwrap();
        let mut call = self.get(&format!(
            "{}?{}",
            url.path(),
            url.query().unwrap_or_default()
        ));
        let shown: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", self.hide_known(v)))
            .collect();
        call.request = format!("> GET {path}?{} (percent-encoded)\n", shown.join("&"));
        call
    }

    fn hide_known(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (value, placeholder) in self.known.borrow().iter() {
            text = text.replace(value.as_str(), placeholder);
        }
        let ports = regex::Regex::new(r"127\.0\.0\.1:[0-9]+").unwrap();
        ports.replace_all(&text, "127.0.0.1:[port]").into_owned()
    }

    /// Asserts the snapshot `name` of `exchange`, with the values of `fields` (JSON keys, or
    /// a response header of [`SHOWN_HEADERS`]) replaced.
    #[track_caller]
    fn check(&self, name: &str, exchange: &Exchange, fields: &[&str]) {
        let reply = &exchange.reply;
        let mut unused: Vec<&str> = fields.to_vec();
        let mut text = exchange.request.clone();
        text.push_str(&format!("< {}\n", reply.status));
        for header in SHOWN_HEADERS {
            if let Some(value) = reply.header(header) {
                let value = if fields.contains(header) {
                    unused.retain(|f| f != header);
                    format!("[{header}]")
                } else {
                    self.hide_known(value)
                };
                text.push_str(&format!("< {header}: {value}\n"));
            }
        }
        text.push('\n');
        let mut body = self.hide_known(&reply.text);
        for field in fields.iter().filter(|f| !SHOWN_HEADERS.contains(f)) {
            let pattern = format!(r#""{}":("(?:[^"\\]|\\.)*"|-?[0-9]+)"#, regex::escape(field));
            let re = regex::Regex::new(&pattern).unwrap();
            if re.is_match(&body) {
                unused.retain(|f| f != field);
            }
            body = re
                .replace_all(&body, |c: &regex::Captures| {
                    if c[1].starts_with('"') {
                        format!(r#""{field}":"[{field}]""#)
                    } else {
                        format!(r#""{field}":[{field}]"#)
                    }
                })
                .into_owned();
        }
        assert!(
            unused.is_empty(),
            "{name}: nothing to scrub for {unused:?} in:\n{}",
            reply.text
        );
        let trimmed = body.trim_end();
        let trailing = &body[trimmed.len()..];
        text.push_str(&trimmed.replace('\r', "\\r"));
        if !trailing.is_empty() {
            text.push_str(&format!("\n[trailing whitespace: {trailing:?}]"));
        }
        let mut settings = insta::Settings::clone_current();
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.bind(|| insta::assert_snapshot!(name, text));
    }
}

impl<'a> Call<'a> {
    fn header(mut self, name: &str, value: &str) -> Self {
        self.request
            .push_str(&format!("> {name}: {}\n", self.snaps.hide_known(value)));
        self.builder = self.builder.header(name, value);
        self
    }

    /// An `Authorization` header; the snapshot shows its scheme only.
    fn authorization(mut self, value: &str) -> Self {
        let scheme = value.split(' ').next().unwrap_or_default();
        self.request
            .push_str(&format!("> authorization: {scheme} …\n"));
        self.builder = self.builder.header("authorization", value);
        self
    }

    fn bearer(self, token: &str) -> Self {
        self.authorization(&format!("Bearer {token}"))
    }

    /// A JSON body (`Content-Type: application/json`).
    fn json(mut self, body: &Value) -> Self {
        self.request.push_str("> content-type: application/json\n");
        self.builder = self.builder.json(body);
        self
    }

    /// A body as given, with its content type.
    fn raw(mut self, content_type: &str, body: impl Into<String>) -> Self {
        self.request
            .push_str(&format!("> content-type: {content_type}\n"));
        self.builder = self
            .builder
            .header("content-type", content_type)
            .body(body.into());
        self
    }

    async fn send(self) -> Exchange {
        let reply = Reply::from(self.builder.send().await.unwrap()).await;
        Exchange {
            request: self.request,
            reply,
        }
    }

    /// Sends, and asserts the snapshot `name` (see [`Snapshots::check`]).
    async fn snap(self, name: &str, fields: &[&str]) -> Reply {
        let snaps = self.snaps;
        let exchange = self.send().await;
        snaps.check(name, &exchange, fields);
        exchange.reply
    }
}

// ---- shared setup ----

/// The identity server signs with [`SIGNING_SEED`].
fn fixed_signing_key(b: Builder) -> Builder {
    b.config(|c, dir| {
        let key = SigningKey::from_seed_base64("ed25519:0", SIGNING_SEED).unwrap();
        let path = dir.join("signing.key");
        std::fs::write(&path, key.to_sydent_string()).unwrap();
        c.server.signing_key_file = Some(path);
    })
}

fn server_public_key() -> String {
    SigningKey::from_seed_base64("ed25519:0", SIGNING_SEED)
        .unwrap()
        .public_key_base64()
}

/// The token of a validation mail, read from the `.eml` the file transport wrote.
async fn mailed_token(s: &TestServer, sid: &str) -> String {
    let raw =
        std::fs::read_to_string(sent_mail(s, "verification", &format!("{sid}:1")).await).unwrap();
    crate::validation::token_in(&raw)
}

/// Publishes `mxid`'s directory entry for `email` as a bind does, with the live policy's
/// decision.
async fn publish(s: &TestServer, mxid: &str, email: &str) {
    let address = normalize_email(email).unwrap();
    let decision = s.app.allowlist.decide(&address, s.app.clock.now_ms());
    s.app
        .directory
        .on_bind(mxid, &address, &decision)
        .await
        .unwrap();
}

fn openid(hs: &Homeserver, user_id: &str) -> Value {
    json!({
        "access_token": hs.openid_token(user_id),
        "token_type": "Bearer",
        "matrix_server_name": user_id.split_once(':').unwrap().1,
        "expires_in": 3600,
    })
}

/// A requestToken body.
fn token_request(client_secret: &str, email: &str, send_attempt: Value) -> Value {
    json!({"client_secret": client_secret, "email": email, "send_attempt": send_attempt})
}

/// A submitToken body.
fn submit_body(sid: &str, client_secret: &str, token: &str) -> Value {
    json!({"sid": sid, "client_secret": client_secret, "token": token})
}

/// A 3pid/bind body.
fn bind_body(sid: &str, client_secret: &str, mxid: &str) -> Value {
    json!({"sid": sid, "client_secret": client_secret, "mxid": mxid})
}

// ---- discovery, health and the errors every endpoint shares ----

#[tokio::test]
async fn discovery_health_and_request_errors() {
    let s = Builder::new()
        .config(|c, _| {
            c.http.max_body = ByteSize(1024);
            c.rate_limits.info_per_ip = RateLimit {
                burst: 1,
                every: HumanDuration(Duration::from_secs(3600)),
            };
            c.identity.allowed_homeservers = Some(vec!["dead.example".into()]);
            c.federation
                .homeservers
                .insert("dead.example".into(), "http://127.0.0.1:1".into());
        })
        .start()
        .await;
    let snaps = Snapshots::new(&s);
    snaps
        .get("/_matrix/identity/versions")
        .snap("versions", &[])
        .await;
    snaps.get(V2).snap("v2", &[]).await;
    snaps.get("/health/live").snap("health_live", &[]).await;
    snaps.get("/health/ready").snap("health_ready", &[]).await;

    let register = format!("{V2}/account/register");
    snaps
        .get("/_matrix/identity/v2/no-such-endpoint")
        .snap("error_404_unrecognized", &[])
        .await;
    snaps
        .get(&register)
        .snap("error_405_unrecognized", &[])
        .await;
    snaps
        .post(&register)
        .raw("application/json", "{not json")
        .snap("error_not_json", &[])
        .await;
    snaps
        .post(&register)
        .raw("application/json", "")
        .snap("error_not_json_empty_body", &[])
        .await;
    snaps
        .post(&register)
        .raw("application/json", "[1]")
        .snap("error_bad_json_not_an_object", &[])
        .await;
    snaps
        .post(&register)
        .json(&json!({"access_token": 5, "matrix_server_name": "hs.example"}))
        .snap("error_bad_json_wrong_type", &[])
        .await;
    snaps
        .post(&register)
        .json(&json!({"access_token": "x"}))
        .snap("error_missing_params_in_body", &[])
        .await;
    snaps
        .get(&format!("{V2}/pubkey/isvalid"))
        .snap("error_missing_params_in_query", &[])
        .await;
    snaps
        .post(&register)
        .raw("application/json", " ".repeat(2048))
        .snap("error_413_too_large", &[])
        .await;
    snaps
        .get(&format!("{V2}/account"))
        .snap("error_401_no_token", &[])
        .await;
    snaps
        .post(&register)
        .json(&json!({"access_token": "x", "matrix_server_name": "dead.example"}))
        .snap("error_502_homeserver_unreachable", &[])
        .await;
    // rate_limits.info_per_ip allows one request: the second is refused.
    let info = [("medium", "email"), ("address", "a@finances.gouv.example")];
    snaps.get_query(INFO, &info).send().await;
    snaps
        .get_query(INFO, &info)
        .snap(
            "error_429_limit_exceeded",
            &["retry_after_ms", "retry-after"],
        )
        .await;
}

// ---- identity: accounts, terms, keys ----

#[tokio::test]
async fn identity_accounts_terms_and_keys() {
    let hs = Homeserver::start(None);
    let s = fixed_signing_key(with_terms(builder(&hs)))
        .manual_clock(START_MS)
        .start()
        .await;
    let snaps = Snapshots::new(&s);
    let register = format!("{V2}/account/register");
    let account = format!("{V2}/account");

    let r = snaps
        .post(&register)
        .json(&openid(&hs, JEAN))
        .snap("v2_account_register", &["token"])
        .await;
    let token = r.json()["token"].as_str().unwrap().to_owned();
    snaps.known(&token, "jean's token");
    snaps
        .post(&register)
        .json(&json!({"access_token": "unknown", "matrix_server_name": FINANCES_HS}))
        .snap("v2_account_register_unknown_openid_token", &[])
        .await;
    snaps
        .post(&register)
        .json(&openid(&hs, "@x:stranger.example"))
        .snap("v2_account_register_homeserver_not_allowed", &[])
        .await;
    snaps
        .post(&register)
        .json(&json!({"access_token": "x", "matrix_server_name": "not a name"}))
        .snap("v2_account_register_invalid_server_name", &[])
        .await;
    snaps
        .get(&account)
        .bearer(&token)
        .snap("v2_account", &[])
        .await;
    snaps
        .get(&format!("{account}?access_token={token}"))
        .snap("v2_account_token_in_query", &[])
        .await;
    snaps
        .get(&account)
        .bearer("unknown")
        .snap("v2_account_unknown_token", &[])
        .await;

    let terms = format!("{V2}/terms");
    snaps.get(&terms).snap("v2_terms", &[]).await;
    snaps
        .get(&format!("{V2}/hash_details"))
        .bearer(&token)
        .snap("error_403_terms_not_signed", &[])
        .await;
    snaps
        .post(&terms)
        .bearer(&token)
        .json(&json!({"user_accepts": [
            "https://is.test.example/tos-1.0-fr.html",
            "https://is.test.example/privacy-1.0-en.html",
        ]}))
        .snap("v2_terms_accept", &[])
        .await;
    snaps
        .post(&terms)
        .bearer(&token)
        .json(&json!({}))
        .snap("v2_terms_accept_missing_user_accepts", &[])
        .await;
    snaps
        .post(&terms)
        .json(&json!({"user_accepts": []}))
        .snap("v2_terms_accept_no_token", &[])
        .await;

    snaps
        .get(&format!("{V2}/pubkey/ed25519:0"))
        .snap("v2_pubkey", &[])
        .await;
    snaps
        .get(&format!("{V2}/pubkey/ed25519:1"))
        .snap("v2_pubkey_unknown", &[])
        .await;
    let key = server_public_key();
    snaps
        .get_query(&format!("{V2}/pubkey/isvalid"), &[("public_key", &key)])
        .snap("v2_pubkey_isvalid_true", &[])
        .await;
    snaps
        .get_query(
            &format!("{V2}/pubkey/isvalid"),
            &[("public_key", "garbage")],
        )
        .snap("v2_pubkey_isvalid_false", &[])
        .await;
    snaps
        .get_query(
            &format!("{V2}/pubkey/ephemeral/isvalid"),
            &[("public_key", &key)],
        )
        .snap("v2_pubkey_ephemeral_isvalid_false", &[])
        .await;
    snaps
        .get(&format!("{V2}/pubkey/ephemeral/isvalid"))
        .snap("v2_pubkey_ephemeral_isvalid_missing_key", &[])
        .await;

    // Logout takes no body.
    snaps
        .post(&format!("{V2}/account/logout"))
        .bearer(&token)
        .snap("v2_account_logout", &[])
        .await;
    snaps
        .get(&account)
        .bearer(&token)
        .snap("v2_account_after_logout", &[])
        .await;
}

// ---- identity: hashed lookups ----

#[tokio::test]
async fn identity_lookups() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| c.identity.max_lookup_addresses = 3)
        .manual_clock(START_MS)
        .start()
        .await;
    let snaps = Snapshots::new(&s);
    let token = register(&s, &hs, JEAN).await;
    snaps.known(&token, "jean's token");
    bind_directly(&s, "marie@finances.gouv.example", MARIE).await;
    bind_directly(
        &s,
        "élodie@justice.gouv.example",
        "@elodie:agent.justice.example",
    )
    .await;

    let r = snaps
        .get(&format!("{V2}/hash_details"))
        .bearer(&token)
        .send()
        .await;
    let pepper = r.reply.json()["lookup_pepper"].as_str().unwrap().to_owned();
    snaps.known(&pepper, "pepper");
    snaps.check("v2_hash_details", &r, &[]);
    snaps
        .get(&format!("{V2}/hash_details?access_token={token}"))
        .snap("v2_hash_details_token_in_query", &[])
        .await;

    let marie = lookup_hash("marie@finances.gouv.example", "email", &pepper);
    let nobody = lookup_hash("nobody@finances.gouv.example", "email", &pepper);
    snaps.known(&marie, "sha256 of marie's address");
    snaps.known(&nobody, "sha256 of an unbound address");
    let lookup = format!("{V2}/lookup");
    // One hit: the order of several would follow the (random) hashes.
    snaps
        .post(&lookup)
        .bearer(&token)
        .json(&json!({"algorithm": "sha256", "pepper": pepper, "addresses": [marie, nobody]}))
        .snap("v2_lookup_sha256", &[])
        .await;
    snaps
        .post(&lookup)
        .bearer(&token)
        .json(
            &json!({"algorithm": "none", "pepper": pepper, "addresses": [
                "marie@finances.gouv.example email",
                "élodie@justice.gouv.example email",
                "nobody@finances.gouv.example email",
            ]}),
        )
        .snap("v2_lookup_none", &[])
        .await;
    snaps
        .post(&lookup)
        .bearer(&token)
        .json(&json!({"algorithm": "sha256", "pepper": pepper, "addresses": []}))
        .snap("v2_lookup_nothing", &[])
        .await;
    snaps
        .post(&lookup)
        .bearer(&token)
        .json(&json!({"algorithm": "sha256", "pepper": "old-pepper", "addresses": [marie]}))
        .snap("v2_lookup_invalid_pepper", &[])
        .await;
    snaps
        .post(&lookup)
        .bearer(&token)
        .json(&json!({"algorithm": "md5", "pepper": pepper, "addresses": [marie]}))
        .snap("v2_lookup_unknown_algorithm", &[])
        .await;
    snaps
        .post(&lookup)
        .bearer(&token)
        .json(&json!({"algorithm": "sha256", "pepper": pepper, "addresses": vec![&marie; 4]}))
        .snap("v2_lookup_too_many_addresses", &[])
        .await;
    snaps
        .post(&lookup)
        .bearer(&token)
        .json(&json!({"algorithm": "sha256", "pepper": pepper}))
        .snap("v2_lookup_missing_addresses", &[])
        .await;
    snaps
        .post(&lookup)
        .bearer(&token)
        .json(&json!({"algorithm": "sha256", "pepper": pepper, "addresses": "x"}))
        .snap("v2_lookup_addresses_not_a_list", &[])
        .await;
}

// ---- identity: email validation, binds and unbinds ----

#[tokio::test]
async fn identity_validation_binds_and_unbinds() {
    let hs = Homeserver::start(None);
    let s = fixed_signing_key(builder(&hs))
        .config(|_, dir| {
            write_allowlists(dir, &[JUSTICE]);
        })
        .manual_clock(START_MS)
        .start()
        .await;
    let snaps = Snapshots::new(&s);
    let token = register(&s, &hs, MARIE).await;
    snaps.known(&token, "marie's token");

    let r = snaps
        .post(REQUEST_TOKEN)
        .bearer(&token)
        .json(&token_request(
            "secret-1",
            "Marie.Curie@Finances.gouv.example",
            json!(1),
        ))
        .send()
        .await;
    let sid = r.reply.json()["sid"].as_str().unwrap().to_owned();
    snaps.known(&sid, "sid 1");
    snaps.check("v2_validate_email_request_token", &r, &[]);
    snaps
        .post(REQUEST_TOKEN)
        .bearer(&token)
        .json(&token_request(
            "secret-x",
            "x@webmail.finances.gouv.example",
            json!(1),
        ))
        .snap("v2_validate_email_request_token_denied", &[])
        .await;
    snaps
        .post(REQUEST_TOKEN)
        .bearer(&token)
        .json(&token_request("secret-x", "not-an-address", json!(1)))
        .snap("v2_validate_email_request_token_invalid_email", &[])
        .await;
    snaps
        .post(REQUEST_TOKEN)
        .bearer(&token)
        .json(&token_request(
            "secret-x",
            "a@finances.gouv.example",
            json!("1"),
        ))
        .snap("v2_validate_email_request_token_invalid_send_attempt", &[])
        .await;
    snaps
        .post(REQUEST_TOKEN)
        .json(&token_request(
            "secret-x",
            "a@finances.gouv.example",
            json!(1),
        ))
        .snap("v2_validate_email_request_token_no_token", &[])
        .await;

    let validated = [("sid", sid.as_str()), ("client_secret", "secret-1")];
    snaps
        .get_query(GET_VALIDATED, &validated)
        .bearer(&token)
        .snap("v2_get_validated_3pid_not_validated", &[])
        .await;
    snaps
        .post(SUBMIT_TOKEN)
        .bearer(&token)
        .json(&submit_body(&sid, "secret-1", "wrong"))
        .snap("v2_validate_email_submit_token_incorrect", &[])
        .await;
    snaps
        .post(SUBMIT_TOKEN)
        .bearer(&token)
        .json(&submit_body("nosuchsession", "secret-1", "wrong"))
        .snap("v2_validate_email_submit_token_no_session", &[])
        .await;
    let mailed = mailed_token(&s, &sid).await;
    snaps.known(&mailed, "mailed token 1");
    snaps
        .post(SUBMIT_TOKEN)
        .bearer(&token)
        .json(&submit_body(&sid, "secret-1", &mailed))
        .snap("v2_validate_email_submit_token", &[])
        .await;
    snaps
        .get_query(GET_VALIDATED, &validated)
        .bearer(&token)
        .snap("v2_get_validated_3pid", &[])
        .await;
    snaps
        .get_query(
            GET_VALIDATED,
            &[("sid", "nosuchsession"), ("client_secret", "secret-1")],
        )
        .bearer(&token)
        .snap("v2_get_validated_3pid_no_session", &[])
        .await;

    // The mail's link: HTML pages, in the browser's language.
    let r = snaps
        .post(REQUEST_TOKEN)
        .bearer(&token)
        .json(&token_request(
            "secret-2",
            "m.curie@finances.gouv.example",
            json!(1),
        ))
        .send()
        .await;
    let sid2 = r.reply.json()["sid"].as_str().unwrap().to_owned();
    snaps.known(&sid2, "sid 2");
    let mailed2 = mailed_token(&s, &sid2).await;
    snaps.known(&mailed2, "mailed token 2");
    let wrong = [
        ("sid", sid2.as_str()),
        ("client_secret", "secret-2"),
        ("token", "wrong"),
    ];
    snaps
        .get_query(SUBMIT_TOKEN, &wrong)
        .snap("v2_validate_email_submit_token_page_incorrect", &[])
        .await;
    let right = [
        ("sid", sid2.as_str()),
        ("client_secret", "secret-2"),
        ("token", mailed2.as_str()),
    ];
    snaps
        .get_query(SUBMIT_TOKEN, &right)
        .header("accept-language", "en")
        .snap("v2_validate_email_submit_token_page_en", &[])
        .await;
    snaps
        .get_query(SUBMIT_TOKEN, &right)
        .snap("v2_validate_email_submit_token_page", &[])
        .await;
    snaps
        .get_query(
            SUBMIT_TOKEN,
            &[
                ("sid", "nosuchsession"),
                ("client_secret", "s"),
                ("token", "t"),
            ],
        )
        .snap("v2_validate_email_submit_token_page_no_session", &[])
        .await;
    snaps
        .get_query(SUBMIT_TOKEN, &[("sid", sid2.as_str())])
        .snap("v2_validate_email_submit_token_page_invalid", &[])
        .await;

    // Binds.
    let bind_path = format!("{V2}/3pid/bind");
    snaps
        .post(&bind_path)
        .bearer(&token)
        .json(&bind_body(&sid, "secret-1", MARIE))
        .snap("v2_3pid_bind", &[])
        .await;
    snaps
        .post(&bind_path)
        .bearer(&token)
        .json(&bind_body(&sid, "secret-1", JEAN))
        .snap("v2_3pid_bind_not_yours", &[])
        .await;
    snaps
        .post(&bind_path)
        .bearer(&token)
        .json(&bind_body("nosuchsession", "secret-1", MARIE))
        .snap("v2_3pid_bind_no_session", &[])
        .await;
    snaps
        .post(&bind_path)
        .bearer(&token)
        .json(&json!({"sid": sid, "mxid": MARIE}))
        .snap("v2_3pid_bind_missing_params", &[])
        .await;
    let r = snaps
        .post(REQUEST_TOKEN)
        .bearer(&token)
        .json(&token_request(
            "secret-3",
            "pending@finances.gouv.example",
            json!(1),
        ))
        .send()
        .await;
    let pending = r.reply.json()["sid"].as_str().unwrap().to_owned();
    snaps.known(&pending, "sid 3");
    snaps
        .post(&bind_path)
        .bearer(&token)
        .json(&bind_body(&pending, "secret-3", MARIE))
        .snap("v2_3pid_bind_not_validated", &[])
        .await;
    let luc_token = register(&s, &hs, LUC).await;
    snaps.known(&luc_token, "luc's token");
    let luc_sid = crate::identity::validate(&s, &luc_token, "luc@finances.gouv.example", "l").await;
    snaps.known(&luc_sid, "luc's sid");
    snaps
        .post(&bind_path)
        .bearer(&luc_token)
        .json(&bind_body(&luc_sid, "l", LUC))
        .snap("v2_3pid_bind_not_permitted", &[])
        .await;

    // The user's own account API (public listener).
    snaps
        .get("/_annuaire/account/v1/data")
        .bearer(&token)
        .snap("account_v1_data", &[])
        .await;
    snaps
        .get("/_annuaire/account/v1/data")
        .snap("account_v1_data_no_token", &[])
        .await;
    snaps
        .post("/_annuaire/account/v1/directory")
        .bearer(&token)
        .json(&json!({"visible": false}))
        .snap("account_v1_directory_leave", &[])
        .await;
    snaps
        .post("/_annuaire/account/v1/directory")
        .bearer(&token)
        .json(&json!({"visible": "no"}))
        .snap("account_v1_directory_invalid", &[])
        .await;
    snaps
        .post("/_annuaire/account/v1/directory")
        .bearer(&token)
        .json(&json!({"visible": true}))
        .snap("account_v1_directory_return", &[])
        .await;

    // Unbinds.
    let body = unbind_body(MARIE, "Marie.Curie@Finances.gouv.example");
    snaps
        .post(UNBIND_PATH)
        .json(&body)
        .snap("v2_3pid_unbind_no_credentials", &[])
        .await;
    snaps
        .post(UNBIND_PATH)
        .authorization("X-Matrix garbage")
        .json(&body)
        .snap("v2_3pid_unbind_bad_signature", &[])
        .await;
    snaps
        .post(UNBIND_PATH)
        .bearer(&luc_token)
        .json(&body)
        .snap("v2_3pid_unbind_not_yours", &[])
        .await;
    snaps
        .post(UNBIND_PATH)
        .bearer(&token)
        .json(&json!({"mxid": MARIE}))
        .snap("v2_3pid_unbind_missing_params", &[])
        .await;
    let signed = hs.sign_unbind(FINANCES_HS, "is.test.example", &body);
    snaps
        .post(UNBIND_PATH)
        .authorization(&signed)
        .json(&body)
        .snap("v2_3pid_unbind", &[])
        .await;
}

// ---- identity: invitations ----

#[tokio::test]
async fn identity_invitations() {
    let hs = Homeserver::start(None);
    let s = fixed_signing_key(builder(&hs))
        .config(|c, _| {
            c.invites.per_address = WindowLimit {
                max: 1,
                within: HumanDuration(Duration::from_secs(3600)),
            };
            // The mail then carries the signing link with the private key.
            c.invites.web_client_url = Some("https://app.tchap.example".into());
        })
        .manual_clock(START_MS)
        .start()
        .await;
    let snaps = Snapshots::new(&s);
    let token = register(&s, &hs, JEAN).await;
    snaps.known(&token, "jean's token");
    let store_invite = format!("{V2}/store-invite");

    let r = snaps
        .post(&store_invite)
        .bearer(&token)
        .json(&invite_body("Marie.Curie@Finances.gouv.example", JEAN))
        .send()
        .await;
    let receipt = r.reply.json();
    let invite_token = receipt["token"].as_str().unwrap().to_owned();
    let ephemeral = receipt["public_keys"][1]["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    snaps.known(&invite_token, "invitation token");
    snaps.known(&ephemeral, "ephemeral public key");
    snaps.check("v2_store_invite", &r, &[]);
    snaps
        .post(&store_invite)
        .bearer(&token)
        .json(&invite_body("marie.curie@finances.gouv.example", JEAN))
        .snap("error_429_limit_exceeded_store_invite", &[])
        .await;
    bind_directly(&s, "bound@finances.gouv.example", MARIE).await;
    snaps
        .post(&store_invite)
        .bearer(&token)
        .json(&invite_body("Bound@finances.gouv.example", JEAN))
        .snap("v2_store_invite_threepid_in_use", &[])
        .await;
    snaps
        .post(&store_invite)
        .bearer(&token)
        .json(&invite_body("x@webmail.finances.gouv.example", JEAN))
        .snap("v2_store_invite_denied", &[])
        .await;
    snaps
        .post(&store_invite)
        .bearer(&token)
        .json(&invite_body("not-an-address", JEAN))
        .snap("v2_store_invite_invalid_email", &[])
        .await;
    let mut msisdn = invite_body("a@finances.gouv.example", JEAN);
    msisdn["medium"] = json!("msisdn");
    snaps
        .post(&store_invite)
        .bearer(&token)
        .json(&msisdn)
        .snap("v2_store_invite_unsupported_medium", &[])
        .await;
    snaps
        .post(&store_invite)
        .bearer(&token)
        .json(&invite_body("a@finances.gouv.example", MARIE))
        .snap("v2_store_invite_not_the_sender", &[])
        .await;

    snaps
        .get_query(
            &format!("{V2}/pubkey/ephemeral/isvalid"),
            &[("public_key", &ephemeral)],
        )
        .snap("v2_pubkey_ephemeral_isvalid_true", &[])
        .await;

    let invitee = "@marie.curie:agent.finances.example";
    let invitee_token = register(&s, &hs, invitee).await;
    snaps.known(&invitee_token, "marie.curie's token");
    let private_key = crate::invites::mailed_private_key(&s, &invite_token).await;
    snaps.known(&private_key, "mailed private key");
    let sign = format!("{V2}/sign-ed25519");
    snaps
        .post(&sign)
        .bearer(&invitee_token)
        .json(&json!({"mxid": invitee, "token": invite_token, "private_key": private_key}))
        .snap("v2_sign_ed25519", &["ed25519:0"])
        .await;
    snaps
        .post(&sign)
        .bearer(&invitee_token)
        .json(&json!({"mxid": invitee, "token": invite_token, "private_key": EPHEMERAL_SEED}))
        .snap("v2_sign_ed25519_not_the_invitations_key", &[])
        .await;
    // The unauthenticated v1 the mailed link points at, as Element calls it: query string only.
    let v1_sign = "/_matrix/identity/api/v1/sign-ed25519";
    let other = "%40marie.perso%3Aagent.justice.example";
    snaps
        .post(&format!(
            "{v1_sign}?token={invite_token}&private_key={private_key}&mxid={other}"
        ))
        .header("accept", "application/json")
        .snap("v1_sign_ed25519", &["ed25519:0"])
        .await;
    snaps
        .post(v1_sign)
        .json(&json!({"mxid": "@marie.perso:agent.justice.example", "token": invite_token, "private_key": private_key}))
        .snap("v1_sign_ed25519_json", &["ed25519:0"])
        .await;
    snaps
        .post(&format!("{v1_sign}?token={invite_token}&mxid={other}"))
        .snap("v1_sign_ed25519_missing_params", &[])
        .await;
    snaps
        .post(&format!(
            "{v1_sign}?token=unknown&private_key={private_key}&mxid={other}"
        ))
        .snap("v1_sign_ed25519_unknown_invitation", &[])
        .await;
    snaps
        .post(&sign)
        .bearer(&invitee_token)
        .json(&json!({"mxid": invitee, "token": "unknown", "private_key": EPHEMERAL_SEED}))
        .snap("v2_sign_ed25519_unknown_invitation", &[])
        .await;
    snaps
        .post(&sign)
        .bearer(&invitee_token)
        .json(&json!({"mxid": invitee, "token": invite_token, "private_key": "short"}))
        .snap("v2_sign_ed25519_invalid_key", &[])
        .await;
    snaps
        .post(&sign)
        .bearer(&invitee_token)
        .json(&json!({"mxid": JEAN, "token": invite_token, "private_key": EPHEMERAL_SEED}))
        .snap("v2_sign_ed25519_not_yours", &[])
        .await;
}

// ---- policy: /info and /internal-info ----

#[tokio::test]
async fn policy_info_and_internal_info() {
    let s = with_allowlists(Builder::new(), &[FINANCES, JUSTICE])
        .config(|c, _| c.http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()])
        .manual_clock(START_MS)
        .start()
        .await;
    let snaps = Snapshots::new(&s);
    bind_directly(&s, "luc@finances.gouv.example", LUC).await;
    let outside = "198.51.100.7";
    let cases = [
        ("allowed", "marie@finances.gouv.example"),
        ("invite_required", "consultant@partner.example"),
        ("denied_by_rule", "x@webmail.finances.gouv.example"),
        ("denied_unknown_domain", "x@unknown.example"),
    ];
    for (case, address) in cases {
        let query = [("medium", "email"), ("address", address)];
        snaps
            .get_query(INFO, &query)
            .snap(&format!("v1_info_{case}"), &[])
            .await;
        snaps
            .get_query(INFO, &query)
            .header("x-forwarded-for", outside)
            .snap(&format!("v1_info_{case}_outside"), &[])
            .await;
        snaps
            .get_query(INTERNAL_INFO, &query)
            .snap(&format!("v1_internal_info_{case}"), &[])
            .await;
    }
    // Bound elsewhere than the policy says: hs is where the account is, new_hs the policy's.
    let bound = [
        ("medium", "email"),
        ("address", "Luc@finances.gouv.example"),
    ];
    snaps
        .get_query(INFO, &bound)
        .snap("v1_info_bound_elsewhere", &[])
        .await;
    snaps
        .get_query(INFO, &bound)
        .header("x-forwarded-for", outside)
        .snap("v1_info_bound_elsewhere_outside", &[])
        .await;
    snaps
        .get_query(INTERNAL_INFO, &bound)
        .header("x-forwarded-for", outside)
        .snap("v1_internal_info_outside", &[])
        .await;
    snaps
        .get_query(INFO, &[("medium", "msisdn"), ("address", "33612345678")])
        .snap("v1_info_unsupported_medium", &[])
        .await;
    snaps
        .get_query(INFO, &[("medium", "email"), ("address", "not-an-address")])
        .snap("v1_info_invalid_email", &[])
        .await;
    snaps
        .get_query(INTERNAL_INFO, &[("medium", "email")])
        .snap("v1_internal_info_missing_address", &[])
        .await;
}

// ---- directory: client search, Tchap search, profile replication ----

#[tokio::test]
async fn directory_searches_and_replication() {
    const HOST: &str = "matrix.finances.example";
    let hs = Homeserver::start(None);
    let base = hs.base.clone();
    let s = with_allowlists(Builder::new(), &[FINANCES, JUSTICE])
        .config(move |c, _| {
            c.directory.client_hosts.insert(
                HOST.into(),
                ClientHostConfig {
                    server_name: FINANCES_HS.into(),
                    client_url: base.clone(),
                },
            );
            c.federation.homeservers.insert(FINANCES_HS.into(), base);
            c.directory.allowed_homeservers = vec![FINANCES_HS.into()];
            c.directory.federated_search_servers = vec![FINANCES_HS.into()];
        })
        .manual_clock(START_MS)
        .start()
        .await;
    let snaps = Snapshots::new(&s);
    publish(&s, MARIE, "marie.curie@finances.gouv.example").await;
    publish(&s, JEAN, "jean.dupont@finances.gouv.example").await;
    publish(&s, LUC, "luc.martin@justice.gouv.example").await;
    publish(&s, "@ext:partner.example", "consultant@partner.example").await;
    let searcher = hs.client_token(JEAN);
    let stranger = hs.client_token("@someone:agent.justice.example");

    let search = |path: &str| snaps.post(path).header("host", HOST);
    for (name, path) in [
        ("client_v3", "/_matrix/client/v3/user_directory/search"),
        ("client_r0", "/_matrix/client/r0/user_directory/search"),
    ] {
        search(path)
            .bearer(&searcher)
            .json(&json!({"search_term": "mar"}))
            .snap(&format!("{name}_user_directory_search"), &[])
            .await;
    }
    let v3 = "/_matrix/client/v3/user_directory/search";
    search(v3)
        .bearer(&searcher)
        .json(&json!({"search_term": "finances", "limit": 1}))
        .snap("client_v3_user_directory_search_limited", &[])
        .await;
    search(v3)
        .bearer(&searcher)
        .json(&json!({"search_term": "nobody"}))
        .snap("client_v3_user_directory_search_nothing", &[])
        .await;
    search(v3)
        .json(&json!({"search_term": "mar"}))
        .snap("client_v3_user_directory_search_missing_token", &[])
        .await;
    search(v3)
        .bearer("syt_unknown")
        .json(&json!({"search_term": "mar"}))
        .snap("client_v3_user_directory_search_unknown_token", &[])
        .await;
    search(v3)
        .bearer(&stranger)
        .json(&json!({"search_term": "mar"}))
        .snap("client_v3_user_directory_search_wrong_server", &[])
        .await;
    snaps
        .post(v3)
        .header("host", "matrix.unknown.example")
        .bearer(&searcher)
        .json(&json!({"search_term": "mar"}))
        .snap("client_v3_user_directory_search_unknown_host", &[])
        .await;
    search(v3)
        .bearer(&searcher)
        .json(&json!({"search_term": " "}))
        .snap("client_v3_user_directory_search_empty_term", &[])
        .await;
    search(v3)
        .bearer(&searcher)
        .json(&json!({"limit": 3}))
        .snap("client_v3_user_directory_search_missing_term", &[])
        .await;

    // Tchap: signed by an allowed homeserver.
    let hs_search = "/_matrix/identity/api/v1/user_directory/search";
    snaps
        .post(hs_search)
        .json(&hs.signed(json!({"search_term": "dupont"})))
        .snap("v1_user_directory_search", &[])
        .await;
    snaps
        .post(hs_search)
        .json(&json!({"search_term": "dupont"}))
        .snap("v1_user_directory_search_unsigned", &[])
        .await;
    let mut tampered = hs.signed(json!({"search_term": "dupont"}));
    tampered["search_term"] = json!("anyone");
    snaps
        .post(hs_search)
        .json(&tampered)
        .snap("v1_user_directory_search_bad_signature", &[])
        .await;

    let replicate = "/_matrix/identity/api/v1/replicate_profiles";
    let batch = |n: i64, profiles: Value| {
        hs.signed(json!({"batchnum": n, "batch": profiles, "origin_server": FINANCES_HS}))
    };
    snaps
        .post(replicate)
        .json(&batch(
            1,
            json!({MARIE: {
                "display_name": "Queen Marie",
                "avatar_url": "mxc://agent.finances.example/marie",
            }}),
        ))
        .snap("v1_replicate_profiles", &[])
        .await;
    snaps
        .post(hs_search)
        .json(&hs.signed(json!({"search_term": "marie"})))
        .snap("v1_user_directory_search_with_avatar", &[])
        .await;
    snaps
        .post(replicate)
        .json(&batch(2, json!({LUC: null})))
        .snap("v1_replicate_profiles_foreign_user", &[])
        .await;
    snaps
        .post(replicate)
        .json(&hs.signed(json!({"batchnum": 3, "batch": {}})))
        .snap("v1_replicate_profiles_missing_origin", &[])
        .await;

    // MSC4258: a federated search, signed with X-Matrix by the calling server.
    let federated = "/_matrix/federation/unstable/org.matrix.msc4258/user_directory/search";
    let signed_search = |body: Value| {
        let auth = hs.x_matrix("POST", federated, "is.test.example", &body);
        snaps.post(federated).authorization(&auth).json(&body)
    };
    signed_search(
        json!({"requester": "@remote:agent.finances.example", "search_term": "marie", "limit": 5}),
    )
    .snap("msc4258_user_directory_search", &[])
    .await;
    signed_search(json!({"requester": "@remote:agent.finances.example", "search_term": "ma"}))
        .snap("msc4258_user_directory_search_short_term", &[])
        .await;
    signed_search(json!({"requester": "@remote:agent.justice.example", "search_term": "marie"}))
        .snap("msc4258_user_directory_search_foreign_requester", &[])
        .await;
    snaps
        .post(federated)
        .json(&json!({"requester": "@remote:agent.finances.example", "search_term": "marie"}))
        .snap("msc4258_user_directory_search_unsigned", &[])
        .await;
}

// ---- administration ----

/// A logged-in admin's token (the editor `ed` or the viewer `vi` of `crate::admin::start`).
async fn admin_token(s: &TestServer, username: &str) -> String {
    let password = match username {
        "ed" => crate::admin::EDITOR_PASSWORD,
        _ => crate::admin::VIEWER_PASSWORD,
    };
    let r = s
        .post(
            &format!("{ADMIN}/login"),
            &json!({"username": username, "password": password}),
        )
        .await;
    r.assert_ok()["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn admin_login_and_rules() {
    let s =
        crate::admin::start(with_allowlists(Builder::new(), &[FINANCES]).manual_clock(START_MS))
            .await;
    let snaps = Snapshots::new(&s);
    let login = format!("{ADMIN}/login");
    snaps
        .post(&login)
        .json(&json!({"username": "ed", "password": crate::admin::EDITOR_PASSWORD}))
        .snap("admin_login", &["access_token"])
        .await;
    snaps
        .post(&login)
        .json(&json!({"username": "ed", "password": "wrong password!"}))
        .snap("admin_login_bad_credentials", &[])
        .await;
    snaps
        .post(&login)
        .json(&json!({"username": "ed"}))
        .snap("admin_login_missing_password", &[])
        .await;
    let ed = admin_token(&s, "ed").await;
    let vi = admin_token(&s, "vi").await;

    let rules = format!("{ADMIN}/rules");
    snaps.get(&rules).snap("admin_missing_token", &[]).await;
    snaps
        .get(&rules)
        .bearer("garbage")
        .snap("admin_unknown_token", &[])
        .await;
    snaps.get(&rules).bearer(&ed).snap("admin_rules", &[]).await;
    snaps
        .get(&format!("{rules}?limit=1"))
        .bearer(&ed)
        .snap("admin_rules_page", &[])
        .await;
    snaps
        .get(&format!("{rules}?kind=maybe"))
        .bearer(&ed)
        .snap("admin_rules_invalid_filter", &[])
        .await;
    let r = snaps
        .post(&rules)
        .bearer(&ed)
        .json(&crate::admin::sante_rule())
        .snap("admin_rules_create", &[])
        .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    snaps
        .post(&rules)
        .bearer(&ed)
        .json(&crate::admin::sante_rule())
        .snap("admin_rules_create_exists", &[])
        .await;
    snaps
        .post(&rules)
        .bearer(&ed)
        .json(&json!({"kind": "domain", "name": "gmail.com"}))
        .snap("admin_rules_create_invalid", &[])
        .await;
    snaps
        .post(&rules)
        .bearer(&vi)
        .json(&crate::admin::sante_rule())
        .snap("admin_rules_create_as_viewer", &[])
        .await;
    let rule = format!("{rules}/{id}");
    snaps.get(&rule).bearer(&ed).snap("admin_rule", &[]).await;
    let mut changed = crate::admin::sante_rule();
    changed["label"] = json!("Santé publique");
    changed["requires_invite"] = json!(true);
    snaps
        .call(Method::PUT, &rule)
        .bearer(&ed)
        .json(&changed)
        .snap("admin_rule_update", &[])
        .await;
    // The file's deny rule.
    let listed = snaps
        .get(&format!("{rules}?kind=deny"))
        .bearer(&ed)
        .send()
        .await;
    let webmail = listed.reply.json()["rules"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    snaps
        .call(Method::PUT, &format!("{rules}/{webmail}"))
        .bearer(&ed)
        .json(&json!({"kind": "deny", "name": "webmail.finances.gouv.example"}))
        .snap("admin_rule_update_file_rule", &[])
        .await;
    snaps
        .post(&format!("{rules}/{webmail}/convert"))
        .bearer(&ed)
        .snap("admin_rule_convert", &[])
        .await;
    snaps
        .call(Method::DELETE, &rule)
        .bearer(&ed)
        .snap("admin_rule_delete", &[])
        .await;
    snaps
        .get(&rule)
        .bearer(&ed)
        .snap("admin_rule_not_found", &[])
        .await;

    let import = format!("{rules}/import");
    snaps
        .post(&format!("{import}?dry_run=true"))
        .bearer(&ed)
        .raw("application/toml", crate::admin::IMPORT)
        .snap("admin_rules_import_dry_run", &[])
        .await;
    snaps
        .post(&import)
        .bearer(&ed)
        .raw("application/toml", crate::admin::IMPORT)
        .snap("admin_rules_import", &[])
        .await;
    snaps
        .post(&import)
        .bearer(&ed)
        .raw(
            "application/toml",
            "[organisation]\nhomeserver = \"hs.example\"\n\n[[domain]]\nname = \"gmail.com\"\n",
        )
        .snap("admin_rules_import_invalid", &[])
        .await;
    snaps
        .post(&import)
        .bearer(&ed)
        .json(&json!({}))
        .snap("admin_rules_import_not_toml", &[])
        .await;
    snaps
        .get(&format!("{rules}/export"))
        .bearer(&ed)
        .snap("admin_rules_export", &[])
        .await;

    let explain = format!("{ADMIN}/explain");
    for (case, address) in [
        ("denied_by_rule", "Jean@WebMail.Finances.Gouv.Example"),
        ("allowed", "a@finances.gouv.example"),
        ("unknown_domain", "a@unknown.example"),
        ("invalid", "not-an-address"),
    ] {
        snaps
            .get_query(&explain, &[("address", address)])
            .bearer(&vi)
            .snap(&format!("admin_explain_{case}"), &[])
            .await;
    }
    snaps
        .post(&format!("{ADMIN}/logout"))
        .bearer(&vi)
        .snap("admin_logout", &[])
        .await;
}

#[tokio::test]
async fn admin_directory_audit_statistics_and_erasure() {
    let s =
        crate::admin::start(with_allowlists(Builder::new(), &[FINANCES]).manual_clock(START_MS))
            .await;
    let snaps = Snapshots::new(&s);
    let ed = admin_token(&s, "ed").await;
    let vi = admin_token(&s, "vi").await;
    for (address, mxid) in [
        ("jean.dupont@finances.gouv.example", JEAN),
        ("marie.curie@finances.gouv.example", MARIE),
    ] {
        bind_directly(&s, address, mxid).await;
        publish(&s, mxid, address).await;
    }
    publish(&s, "@ext:partner.example", "consultant@partner.example").await;

    let directory = format!("{ADMIN}/directory");
    snaps
        .get(&directory)
        .bearer(&vi)
        .snap("admin_directory", &[])
        .await;
    snaps
        .get(&format!("{directory}?limit=1"))
        .bearer(&vi)
        .snap("admin_directory_page", &[])
        .await;
    snaps
        .get(&format!("{directory}?q=marie"))
        .bearer(&vi)
        .snap("admin_directory_search", &[])
        .await;
    let marie = format!("{directory}/{MARIE}");
    snaps
        .get(&marie)
        .bearer(&vi)
        .snap("admin_directory_entry", &[])
        .await;
    snaps
        .get(&format!("{directory}/@nobody:agent.finances.example"))
        .bearer(&vi)
        .snap("admin_directory_entry_not_found", &[])
        .await;
    snaps
        .get(&format!("{directory}/not-a-user-id"))
        .bearer(&vi)
        .snap("admin_directory_entry_invalid_user_id", &[])
        .await;
    snaps
        .post(&format!("{marie}/hide"))
        .bearer(&vi)
        .snap("admin_directory_hide_as_viewer", &[])
        .await;
    snaps
        .post(&format!("{marie}/hide"))
        .bearer(&ed)
        .snap("admin_directory_hide", &[])
        .await;
    snaps
        .post(&format!("{marie}/unhide"))
        .bearer(&ed)
        .snap("admin_directory_unhide", &[])
        .await;
    snaps
        .call(Method::PUT, &format!("{marie}/name"))
        .bearer(&ed)
        .json(&json!({"name": "Marie Skłodowska-Curie"}))
        .snap("admin_directory_rename", &[])
        .await;
    snaps
        .call(Method::PUT, &format!("{marie}/name"))
        .bearer(&ed)
        .json(&json!({}))
        .snap("admin_directory_rename_missing_name", &[])
        .await;
    snaps
        .get(&format!("{ADMIN}/stats/directory"))
        .bearer(&vi)
        .snap("admin_stats_directory", &[])
        .await;
    snaps
        .call(Method::DELETE, &format!("{directory}/@ext:partner.example"))
        .bearer(&ed)
        .snap("admin_directory_remove", &[])
        .await;

    let erase = format!("{ADMIN}/threepids/erase");
    snaps
        .post(&erase)
        .bearer(&ed)
        .json(&json!({"medium": "email", "address": "Jean.Dupont@Finances.gouv.example"}))
        .snap("admin_threepids_erase", &[])
        .await;
    snaps
        .post(&erase)
        .bearer(&ed)
        .json(&json!({"medium": "email", "address": "nobody@finances.gouv.example"}))
        .snap("admin_threepids_erase_nothing", &[])
        .await;
    snaps
        .post(&erase)
        .bearer(&ed)
        .json(&json!({"medium": "msisdn", "address": "33612345678"}))
        .snap("admin_threepids_erase_unsupported_medium", &[])
        .await;

    // Refused attempts, counted by /internal-info.
    for address in [
        "a@knocking.example",
        "b@knocking.example",
        "consultant@partner.example",
    ] {
        s.get(&format!("{INTERNAL_INFO}?medium=email&address={address}"))
            .await
            .assert_ok();
    }
    snaps
        .get(&format!("{ADMIN}/stats/attempts?period=7d"))
        .bearer(&vi)
        .snap("admin_stats_attempts", &[])
        .await;
    snaps
        .get(&format!("{ADMIN}/stats/attempts?period=1y"))
        .bearer(&vi)
        .snap("admin_stats_attempts_invalid_period", &[])
        .await;
    snaps
        .get(&format!("{ADMIN}/stats/outbox"))
        .bearer(&vi)
        .snap("admin_stats_outbox", &[])
        .await;
    // Erased addresses appear in the audit log as keyed pseudonyms (the key is random).
    for (address, what) in [
        ("jean.dupont@finances.gouv.example", "jean's pseudonym"),
        ("nobody@finances.gouv.example", "nobody's pseudonym"),
    ] {
        let mut conn = s.app.db.get().unwrap();
        let pseudonym = annuaire::audit::pseudonym(&mut conn, address, 0).unwrap();
        snaps.known(&pseudonym, what);
    }
    snaps
        .get(&format!("{ADMIN}/audit?limit=3"))
        .bearer(&vi)
        .snap("admin_audit", &[])
        .await;
    snaps
        .get(&format!("{ADMIN}/audit?action=directory.*&limit=2"))
        .bearer(&vi)
        .snap("admin_audit_filtered", &[])
        .await;
    snaps
        .get(&format!("{ADMIN}/audit?since=yesterday"))
        .bearer(&vi)
        .snap("admin_audit_invalid_since", &[])
        .await;

    // Domain requests (the queue is empty: requests join it once confirmed by mail, which
    // tests/it/console.rs follows).
    snaps
        .get(&format!("{ADMIN}/domain-requests"))
        .bearer(&vi)
        .snap("admin_domain_requests", &[])
        .await;
    snaps
        .get(&format!(
            "{ADMIN}/domain-requests/knocking.example?status=pending"
        ))
        .bearer(&vi)
        .snap("admin_domain_requests_for_domain", &[])
        .await;
    snaps
        .get(&format!(
            "{ADMIN}/domain-requests/knocking.example?status=maybe"
        ))
        .bearer(&vi)
        .snap("admin_domain_requests_invalid_status", &[])
        .await;
    snaps
        .post(&format!("{ADMIN}/domain-requests/knocking.example/accept"))
        .bearer(&vi)
        .snap("admin_domain_requests_accept_as_viewer", &[])
        .await;
    snaps
        .post(&format!("{ADMIN}/domain-requests/knocking.example/accept"))
        .bearer(&ed)
        .snap("admin_domain_requests_accept_unknown_domain", &[])
        .await;
    snaps
        .post(&format!(
            "{ADMIN}/domain-requests/finances.gouv.example/decline"
        ))
        .bearer(&ed)
        .json(&json!({"message": "Non."}))
        .snap("admin_domain_requests_decline_nothing_pending", &[])
        .await;
}

// ---- the homeserver API ----

#[tokio::test]
async fn homeserver_api() {
    const HS_API: &str = "/_annuaire/homeserver/v1";
    let s = with_allowlists(Builder::new(), &[FINANCES, JUSTICE])
        .config(|c, _| c.http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()])
        .manual_clock(START_MS)
        .start()
        .await;
    let snaps = Snapshots::new(&s);
    let token = {
        let mut conn = s.app.db.get().unwrap();
        annuaire::homeserver::tokens::add_homeserver(
            &mut conn,
            FINANCES_HS,
            &annuaire::audit::Actor::cli("test"),
            START_MS,
            &mut rand::rngs::OsRng,
        )
        .unwrap()
        .token
    };
    snaps.known(&token, "homeserver token");
    let bind = format!("{HS_API}/bind");
    let threepid =
        |address: &str, mxid: &str| json!({"medium": "email", "address": address, "mxid": mxid});

    snaps
        .post(&bind)
        .bearer(&token)
        .json(&threepid("Marie.Curie@finances.gouv.example", MARIE))
        .snap("homeserver_v1_bind", &[])
        .await;
    snaps
        .post(&bind)
        .bearer(&token)
        .json(&threepid("marie.curie@finances.gouv.example", LUC))
        .snap("homeserver_v1_bind_foreign_user", &[])
        .await;
    snaps
        .post(&bind)
        .bearer(&token)
        .json(&threepid("luc@justice.gouv.example", JEAN))
        .snap("homeserver_v1_bind_foreign_address", &[])
        .await;
    snaps
        .post(&bind)
        .bearer(&token)
        .json(&threepid("x@webmail.finances.gouv.example", JEAN))
        .snap("homeserver_v1_bind_denied_address", &[])
        .await;
    snaps
        .post(&bind)
        .bearer(&token)
        .json(&threepid("not-an-address", JEAN))
        .snap("homeserver_v1_bind_invalid_email", &[])
        .await;
    snaps
        .post(&bind)
        .bearer(&token)
        .json(&json!({"medium": "msisdn", "address": "33612345678", "mxid": JEAN}))
        .snap("homeserver_v1_bind_unsupported_medium", &[])
        .await;
    snaps
        .post(&bind)
        .bearer(&token)
        .json(&json!({"medium": "email", "mxid": JEAN}))
        .snap("homeserver_v1_bind_missing_params", &[])
        .await;
    snaps
        .post(&bind)
        .json(&threepid("marie.curie@finances.gouv.example", MARIE))
        .snap("homeserver_v1_no_token", &[])
        .await;
    snaps
        .post(&bind)
        .bearer("not-a-token")
        .json(&threepid("marie.curie@finances.gouv.example", MARIE))
        .snap("homeserver_v1_unknown_token", &[])
        .await;
    snaps
        .post(&bind)
        .bearer(&token)
        .header("x-forwarded-for", "198.51.100.7")
        .json(&threepid("marie.curie@finances.gouv.example", MARIE))
        .snap("homeserver_v1_outside", &[])
        .await;

    let name = format!("{HS_API}/display_name");
    snaps
        .get_query(
            &name,
            &[
                ("medium", "email"),
                ("address", "jean.dupont@finances.gouv.example"),
            ],
        )
        .bearer(&token)
        .snap("homeserver_v1_display_name", &[])
        .await;
    snaps
        .get_query(
            &name,
            &[("medium", "email"), ("address", "luc@justice.gouv.example")],
        )
        .bearer(&token)
        .snap("homeserver_v1_display_name_foreign_address", &[])
        .await;

    let profile = format!("{HS_API}/profile");
    snaps
        .post(&profile)
        .bearer(&token)
        .json(&json!({"user_id": MARIE, "displayname": "Marie", "avatar_url": "mxc://agent.finances.example/a"}))
        .snap("homeserver_v1_profile", &[])
        .await;
    snaps
        .post(&profile)
        .bearer(&token)
        .json(&json!({"user_id": MARIE, "displayname": "x".repeat(300)}))
        .snap("homeserver_v1_profile_displayname_too_long", &[])
        .await;

    let unbind = format!("{HS_API}/unbind");
    snaps
        .post(&unbind)
        .bearer(&token)
        .json(&threepid("marie.curie@finances.gouv.example", MARIE))
        .snap("homeserver_v1_unbind", &[])
        .await;
    snaps
        .post(&unbind)
        .bearer(&token)
        .json(&threepid("marie.curie@finances.gouv.example", MARIE))
        .snap("homeserver_v1_unbind_nothing", &[])
        .await;

    Reply::from(
        s.client
            .post(s.url(&bind))
            .bearer_auth(&token)
            .json(&threepid("marie.curie@finances.gouv.example", MARIE))
            .send()
            .await
            .unwrap(),
    )
    .await
    .assert_ok();
    snaps
        .post(&format!("{HS_API}/deactivated"))
        .bearer(&token)
        .json(&json!({"user_id": MARIE, "erased": false}))
        .snap("homeserver_v1_deactivated", &[])
        .await;
}
