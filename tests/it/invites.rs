//! Email invitations that clients can accept: the mail carries every store-invite field, the
//! token and the ephemeral private key, and (with a known web client) the Element-compatible
//! link whose `signurl` is the unauthenticated `/api/v1/sign-ed25519`; an invitee accepts with
//! another account through that key. The web client location of a request is used only when
//! `invites.allowed_web_clients` lists it.

use std::collections::HashMap;

use annuaire::matrix::signing::verify_json;
use serde_json::{Value, json};

use crate::identity::{builder, invite_body, post_auth, register, sent_mail};
use crate::mail_smtp::Parsed;
use crate::support::homeserver::Homeserver;
use crate::support::{Reply, TestServer};

const V2: &str = "/_matrix/identity/v2";
const V1_SIGN: &str = "/_matrix/identity/api/v1/sign-ed25519";
const START_MS: i64 = 1_800_000_000_000;
/// The public base URL the test server writes into links (`support::test_config`).
const PUBLIC_BASE: &str = "https://is.test.example";
const WEB_CLIENT: &str = "https://app.tchap.example";
const SENDER: &str = "@jean:agent.finances.example";

/// Stores an invitation as `SENDER` (Synapse's full body) and returns the receipt and the
/// mail's text and HTML parts.
async fn invite(s: &TestServer, token: &str, body: &Value) -> (Value, String, String) {
    let receipt = post_auth(s, &format!("{V2}/store-invite"), token, body)
        .await
        .assert_ok();
    let invite_token = receipt["token"].as_str().unwrap().to_string();
    let eml = Parsed::read(&sent_mail(s, "invite", &invite_token).await);
    (receipt, eml.part("text/plain"), eml.part("text/html"))
}

/// Synapse 1.163's store-invite body, every field set.
fn full_body(address: &str) -> Value {
    json!({
        "medium": "email",
        "address": address,
        "room_id": "!budget:agent.finances.example",
        "room_alias": "#budget:agent.finances.example",
        "room_avatar_url": "mxc://agent.finances.example/room-avatar",
        "room_join_rules": "invite",
        "room_name": "Budget 2027",
        "sender": SENDER,
        "sender_display_name": "Jean Dupont",
        "sender_avatar_url": "mxc://agent.finances.example/jean-avatar",
        "room_type": "m.space",
    })
}

/// The client link of a mail's text part: (the link, its fragment's query parameters).
fn client_link(text: &str) -> (String, HashMap<String, String>) {
    let link = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(WEB_CLIENT))
        .unwrap_or_else(|| panic!("no client link in:\n{text}"))
        .to_string();
    fragment_params(link)
}

/// The private key of an invitation, as its mail's `signurl` carries it (the server needs a
/// web client for the mail to have the link).
pub(crate) async fn mailed_private_key(s: &TestServer, invite_token: &str) -> String {
    let text = Parsed::read(&sent_mail(s, "invite", invite_token).await).part("text/plain");
    let (_, params) = client_link_anywhere(&text);
    let sign_url = reqwest::Url::parse(&params["signurl"]).unwrap();
    sign_url
        .query_pairs()
        .find(|(k, _)| k == "private_key")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no private key in {sign_url}"))
}

/// Like [`client_link`], whatever the web client.
fn client_link_anywhere(text: &str) -> (String, HashMap<String, String>) {
    let link = text
        .lines()
        .map(str::trim)
        .find(|l| l.contains("/#/room/") && l.contains("signurl="))
        .unwrap_or_else(|| panic!("no client link in:\n{text}"))
        .to_string();
    fragment_params(link)
}

fn fragment_params(link: String) -> (String, HashMap<String, String>) {
    let (_, fragment) = link.split_once('#').unwrap();
    let (_, query) = fragment.split_once('?').unwrap();
    // As a browser's URLSearchParams reads it.
    let params = reqwest::Url::parse(&format!("https://x.example/?{query}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    (link, params)
}

/// Checks `signed` as a homeserver does when a user joins with it as `third_party_signed`
/// (Synapse's `_check_signature`): some key of the invitation must verify one of its
/// `ed25519:*` signatures, and that key's `key_validity_url` must say it is valid. Returns the
/// key that verified.
async fn verify_as_a_homeserver(s: &TestServer, receipt: &Value, signed: &Value) -> String {
    for key in receipt["public_keys"].as_array().unwrap() {
        let public_key = key["public_key"].as_str().unwrap();
        for (server, sigs) in signed["signatures"].as_object().unwrap() {
            for key_id in sigs.as_object().unwrap().keys() {
                if verify_json(signed, server, key_id, public_key).is_ok() {
                    let url =
                        key["key_validity_url"]
                            .as_str()
                            .unwrap()
                            .replacen(PUBLIC_BASE, &s.base, 1);
                    let url = reqwest::Url::parse_with_params(&url, &[("public_key", public_key)])
                        .unwrap();
                    let valid = Reply::from(s.client.get(url).send().await.unwrap())
                        .await
                        .assert_ok();
                    assert_eq!(valid["valid"], json!(true), "{key}");
                    return public_key.to_string();
                }
            }
        }
    }
    panic!("no key of the invitation verifies {signed}");
}

#[tokio::test]
async fn an_invitee_accepts_with_another_account_through_the_mailed_key() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| c.invites.web_client_url = Some(format!("{WEB_CLIENT}/")))
        .manual_clock(START_MS)
        .start()
        .await;
    let token = register(&s, &hs, SENDER).await;
    let address = "marie.curie@finances.gouv.example";
    let (receipt, text, html) = invite(&s, &token, &full_body(address)).await;
    let invite_token = receipt["token"].as_str().unwrap().to_string();
    let ephemeral = receipt["public_keys"][1]["public_key"]
        .as_str()
        .unwrap()
        .to_string();

    // The link Element opens: room, email, signurl, and the preview's details.
    let (link, params) = client_link(&text);
    assert!(
        link.starts_with(&format!(
            "{WEB_CLIENT}/#/room/!budget:agent.finances.example?"
        )),
        "{link}"
    );
    assert!(html.contains(&format!("href=\"{}\"", link.replace('&', "&amp;"))));
    assert_eq!(params["email"], address);
    assert_eq!(params["room_name"], "Budget 2027");
    assert_eq!(params["inviter_name"], "Jean Dupont");
    assert_eq!(
        params["room_avatar_url"],
        "mxc://agent.finances.example/room-avatar"
    );
    assert_eq!(params["room_type"], "m.space");
    let sign_url = reqwest::Url::parse(&params["signurl"]).unwrap();
    assert_eq!(
        format!(
            "{}://{}{}",
            sign_url.scheme(),
            sign_url.host_str().unwrap(),
            sign_url.path()
        ),
        format!("{PUBLIC_BASE}{V1_SIGN}")
    );
    let signurl_args: HashMap<String, String> = sign_url.query_pairs().into_owned().collect();
    assert_eq!(signurl_args["token"], invite_token);
    let private_key = signurl_args["private_key"].clone();
    assert!(
        !private_key.contains(['+', '/', '=']),
        "URL-safe: {private_key}"
    );
    // The mail shows the token and the key too, and annuaire did not keep the key.
    assert!(text.contains(&invite_token));
    let stored = {
        let t = invite_token.clone();
        s.app
            .db
            .run(move |conn| annuaire::store::invites::invite_by_token(conn, &t))
            .await
            .unwrap()
            .unwrap()
    };
    assert!(!stored.details_json.contains(&private_key));

    // Someone else's account accepts: Element posts `<signurl>&mxid=…`, no body, no token.
    let other = "@marie.perso:agent.justice.example";
    let mut url = sign_url.clone();
    url.set_scheme("http").unwrap();
    let local = reqwest::Url::parse(&s.base).unwrap();
    url.set_host(local.host_str()).unwrap();
    url.set_port(local.port()).unwrap();
    url.query_pairs_mut().append_pair("mxid", other);
    let r = Reply::from(
        s.client
            .post(url.clone())
            .header("Origin", WEB_CLIENT)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let signed = r.assert_ok();
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(signed["mxid"], other);
    assert_eq!(signed["sender"], SENDER, "the inviter, never the caller");
    assert_eq!(signed["token"], json!(invite_token));
    assert_eq!(
        signed["signatures"]["is.test.example"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["ed25519:0"]
    );
    // A homeserver accepts it: the ephemeral key verifies, and it is valid.
    assert_eq!(
        verify_as_a_homeserver(&s, &receipt, &signed).await,
        ephemeral
    );
    // ...and only for that account: another mxid breaks the signature.
    let mut forged = signed.clone();
    forged["mxid"] = json!("@mallory:agent.justice.example");
    assert!(verify_json(&forged, "is.test.example", "ed25519:0", &ephemeral).is_err());

    // The same through a JSON body (Sydent's v1 accepts both), and through the
    // authenticated v2 for the caller's own account.
    let r = Reply::from(
        s.client
            .post(s.url(V1_SIGN))
            .json(&json!({"mxid": other, "token": invite_token, "private_key": private_key}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.assert_ok(),
        signed,
        "ed25519 signatures are deterministic"
    );
    let other_token = register(&s, &hs, "@marie.curie:agent.finances.example").await;
    let v2 = post_auth(
        &s,
        &format!("{V2}/sign-ed25519"),
        &other_token,
        &json!({"mxid": "@marie.curie:agent.finances.example", "token": invite_token, "private_key": private_key}),
    )
    .await
    .assert_ok();
    verify_as_a_homeserver(&s, &receipt, &v2).await;

    // Refusals: a key that is not the invitation's, an unknown token, missing arguments, a
    // malformed mxid.
    let stranger_key = annuaire::matrix::signing::SigningKey::generate(&mut rand::rngs::OsRng);
    let sign = async |query: &[(&str, &str)]| {
        let url = reqwest::Url::parse_with_params(&s.url(V1_SIGN), query).unwrap();
        Reply::from(s.client.post(url).send().await.unwrap()).await
    };
    sign(&[
        ("token", &invite_token),
        ("private_key", &stranger_key.to_seed_base64()),
        ("mxid", other),
    ])
    .await
    .assert_error(403, "M_FORBIDDEN");
    sign(&[
        ("token", "NoSuchToken"),
        ("private_key", &private_key),
        ("mxid", other),
    ])
    .await
    .assert_error(404, "M_UNRECOGNIZED");
    let r = sign(&[("token", &invite_token), ("mxid", other)]).await;
    r.assert_error(400, "M_MISSING_PARAMS");
    assert!(r.text.contains("private_key"), "{}", r.text);
    sign(&[
        ("token", &invite_token),
        ("private_key", &private_key),
        ("mxid", "marie"),
    ])
    .await
    .assert_error(400, "M_INVALID_PARAM");
    sign(&[
        ("token", &invite_token),
        ("private_key", "not a key"),
        ("mxid", other),
    ])
    .await
    .assert_error(400, "M_INVALID_PARAM");

    // Once the invitation has expired, nothing signs it any more.
    s.clock.as_ref().unwrap().advance(7 * 24 * 3600 * 1000);
    let r = Reply::from(s.client.post(url).send().await.unwrap()).await;
    r.assert_error(404, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn every_store_invite_field_reaches_the_templates() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, dir| {
            c.invites.web_client_url = Some(WEB_CLIENT.into());
            let templates = dir.join("mail-templates");
            std::fs::create_dir_all(&templates).unwrap();
            // An operator's template printing every variable, one per line.
            let names = [
                "sender",
                "sender_name",
                "sender_display_name",
                "sender_avatar_url",
                "room_id",
                "room_alias",
                "room_name",
                "room_avatar_url",
                "room_join_rules",
                "room_type",
                "is_space",
                "token",
                "ephemeral_private_key",
                "sign_url",
                "web_client_location",
                "client_link",
                "address",
                "server_name",
                "lang",
            ];
            let text: String = names
                .iter()
                .map(|n| format!("{n}={{{{ {n} }}}}\n"))
                .collect();
            std::fs::write(templates.join("invite.en.txt"), &text).unwrap();
            std::fs::write(
                templates.join("invite.en.html"),
                "<p>{{ room_name }}|{{ sender_display_name }}|{{ room_alias }}</p>",
            )
            .unwrap();
            c.mail.templates_dir = Some(templates);
            c.mail.default_language = annuaire::config::Language::EN;
        })
        .manual_clock(START_MS)
        .start()
        .await;
    let token = register(&s, &hs, SENDER).await;
    let mut body = full_body("paul@finances.gouv.example");
    // Display values arrive from strangers: HTML-escaped in .html, no control characters.
    body["room_name"] = json!("Budget <b>2027</b>\r\nBcc: x@evil.example");
    body["sender_display_name"] = json!("Jean \"JD\" Dupont\u{202E}");
    let (receipt, text, html) = invite(&s, &token, &body).await;
    let values: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let invite_token = receipt["token"].as_str().unwrap();
    assert_eq!(values["sender"], SENDER);
    assert_eq!(values["sender_name"], "Jean \"JD\" Dupont");
    assert_eq!(values["sender_display_name"], "Jean \"JD\" Dupont");
    assert_eq!(
        values["sender_avatar_url"],
        "mxc://agent.finances.example/jean-avatar"
    );
    assert_eq!(values["room_id"], "!budget:agent.finances.example");
    assert_eq!(values["room_alias"], "#budget:agent.finances.example");
    assert_eq!(
        values["room_name"],
        "Budget <b>2027</b> Bcc: x@evil.example"
    );
    assert_eq!(
        values["room_avatar_url"],
        "mxc://agent.finances.example/room-avatar"
    );
    assert_eq!(values["room_join_rules"], "invite");
    assert_eq!(values["room_type"], "m.space");
    assert_eq!(
        values["is_space"], "True",
        "minijinja prints booleans as Jinja does"
    );
    assert_eq!(values["token"], invite_token);
    assert_eq!(values["web_client_location"], WEB_CLIENT);
    assert_eq!(values["address"], "paul@finances.gouv.example");
    assert_eq!(values["server_name"], "agent.finances.example");
    assert_eq!(values["lang"], "en");
    // The private key is the invitation's: it signs what the ephemeral public key verifies.
    let key = annuaire::matrix::signing::SigningKey::from_seed_base64(
        "ed25519:0",
        values["ephemeral_private_key"],
    )
    .unwrap();
    assert_eq!(
        json!(key.public_key_base64()),
        receipt["public_keys"][1]["public_key"]
    );
    assert!(values["sign_url"].starts_with(&format!("{PUBLIC_BASE}{V1_SIGN}?token=")));
    assert!(values["client_link"].starts_with(&format!("{WEB_CLIENT}/#/room/")));
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert!(!text.contains('\u{202E}'));
    assert_eq!(
        html.trim(),
        "<p>Budget &lt;b&gt;2027&lt;/b&gt; Bcc: x@evil.example|Jean &quot;JD&quot; Dupont|#budget:agent.finances.example</p>"
    );

    // Absent fields print as nothing (and are false in `{% if %}`).
    let bare = invite_body("anne@finances.gouv.example", SENDER);
    let (_, text, _) = invite(&s, &token, &bare).await;
    let values: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(values["room_alias"], "");
    assert_eq!(values["room_type"], "");
    assert_eq!(values["is_space"], "False");
    assert_eq!(values["sender_avatar_url"], "");
}

#[tokio::test]
async fn a_requested_web_client_is_used_only_when_allowed() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| {
            c.invites.web_client_url = Some(WEB_CLIENT.into());
            c.invites.allowed_web_clients = vec!["https://element.agents.example/".into()];
        })
        .manual_clock(START_MS)
        .start()
        .await;
    let token = register(&s, &hs, SENDER).await;
    let link_of = |text: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.contains("/#/room/"))
            .map(str::to_owned)
    };
    let cases = [
        // Listed (the trailing slash does not matter): used.
        (
            Some("https://element.agents.example"),
            Some("https://element.agents.example/#/room/"),
        ),
        // Not listed, or only a prefix of a listed one: the default.
        (
            Some("https://phishing.example"),
            Some("https://app.tchap.example/#/room/"),
        ),
        (
            Some("https://element.agents.example.evil.example"),
            Some("https://app.tchap.example/#/room/"),
        ),
        (
            Some("javascript:alert(1)"),
            Some("https://app.tchap.example/#/room/"),
        ),
        (None, Some("https://app.tchap.example/#/room/")),
    ];
    for (i, (requested, expected)) in cases.into_iter().enumerate() {
        let mut body = invite_body(&format!("agent{i}@finances.gouv.example"), SENDER);
        if let Some(location) = requested {
            body["org.matrix.web_client_location"] = json!(location);
        }
        let (_, text, html) = invite(&s, &token, &body).await;
        let link = link_of(&text);
        assert!(
            link.as_deref()
                .is_some_and(|l| l.starts_with(expected.unwrap())),
            "{requested:?}: {link:?}"
        );
        for part in [&text, &html] {
            assert!(!part.contains("phishing") && !part.contains("evil.example"));
            assert!(!part.contains("javascript"));
        }
    }

    // Without a default, only an allowed request gives a link.
    let s = builder(&hs)
        .config(|c, _| {
            c.invites.allowed_web_clients = vec!["https://element.agents.example".into()];
        })
        .manual_clock(START_MS)
        .start()
        .await;
    let token = register(&s, &hs, SENDER).await;
    let mut body = invite_body("one@finances.gouv.example", SENDER);
    body["org.matrix.web_client_location"] = json!("https://other.example");
    let (_, text, html) = invite(&s, &token, &body).await;
    assert_eq!(link_of(&text), None, "{text}");
    assert!(!html.contains("/#/room/"));
    body["address"] = json!("two@finances.gouv.example");
    body["org.matrix.web_client_location"] = json!("https://element.agents.example/");
    let (_, text, _) = invite(&s, &token, &body).await;
    assert!(
        link_of(&text)
            .unwrap()
            .starts_with("https://element.agents.example/#/room/")
    );
}
