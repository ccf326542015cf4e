//! The languages mails are written in: those whose templates exist, embedded (French, English,
//! German) or in the operator's `mail.templates_dir`; chosen from `Accept-Language` over that
//! set; `mail.default_language` must be one of them.

use std::path::Path;

use serde_json::json;

use crate::identity::{builder, invite_body, register, sent_mail};
use crate::mail_smtp::Parsed;
use crate::support::homeserver::Homeserver;
use crate::support::{Builder, Reply, TestServer, run_cli};

const REQUEST: &str = "/_matrix/identity/v2/validate/email/requestToken";

/// requestToken with `accept_language`; the mail as delivered.
async fn verification_mail(s: &TestServer, address: &str, accept_language: Option<&str>) -> Parsed {
    let mut req = s.authorized(
        s.client
            .post(s.url(REQUEST))
            .json(&json!({"client_secret": "secret-lang", "email": address, "send_attempt": 1})),
    );
    if let Some(l) = accept_language {
        req = req.header("accept-language", l);
    }
    let r = Reply::from(req.send().await.unwrap()).await;
    let sid = r.assert_ok()["sid"].as_str().unwrap().to_string();
    Parsed::read(&sent_mail(s, "verification", &format!("{sid}:1")).await)
}

/// An Italian set for every kind, as an operator would write it.
fn write_italian(dir: &Path, complete: bool) {
    let files = [
        (
            "verification.it.subject.txt",
            "Confermi il suo indirizzo e-mail\n",
        ),
        (
            "verification.it.txt",
            "Buongiorno,\n\n{{ link }}\n\n{{ token }}\n\nValido per {% include \"_valid_for.it.txt\" %}.\n",
        ),
        (
            "verification.it.html",
            "{% extends \"_layout.html\" %}{% block content %}<p><a href=\"{{ link }}\">Confermare</a> {{ token }}</p>{% endblock %}",
        ),
        ("_valid_for.it.txt", "{{ valid_for_minutes }} minuti"),
        (
            "invite.it.subject.txt",
            "{{ sender_name }} la invita{% if room_name %} in {{ room_name }}{% endif %}\n",
        ),
        (
            "invite.it.txt",
            "{{ sender_name }} la invita.\n{% if client_link %}{{ client_link }}\n{% endif %}",
        ),
        (
            "invite.it.html",
            "{% extends \"_layout.html\" %}{% block content %}<p>{{ sender_name }}</p>{% endblock %}",
        ),
    ];
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        if complete || name.starts_with("verification") || name.starts_with('_') {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
}

#[tokio::test]
async fn german_is_shipped_for_every_mail() {
    let hs = Homeserver::start(None);
    let s = crate::validation::base(builder(&hs))
        .config(|c, _| c.invites.web_client_url = Some("https://app.example".into()))
        .start()
        .await;
    let eml = verification_mail(
        &s,
        "jean@finances.gouv.example",
        Some("de-DE,de;q=0.9,en;q=0.5"),
    )
    .await;
    assert_eq!(eml.header("content-language"), "de");
    assert_eq!(eml.header("subject"), "Bestätigen Sie Ihre E-Mail-Adresse");
    let text = eml.part("text/plain");
    assert!(text.starts_with("Guten Tag,"), "{text}");
    assert!(text.contains("Bestätigungscode"), "{text}");
    assert!(text.contains("lang gültig"), "{text}");
    assert!(eml.part("text/html").contains("lang=\"de\""));

    let sender = "@jean:agent.finances.example";
    let token = register(&s, &hs, sender).await;
    let r = Reply::from(
        s.client
            .post(s.url("/_matrix/identity/v2/store-invite"))
            .bearer_auth(&token)
            .header("Accept-Language", "de-AT")
            .json(&invite_body("paul@finances.gouv.example", sender))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let invite_token = r.assert_ok()["token"].as_str().unwrap().to_string();
    let eml = Parsed::read(&sent_mail(&s, "invite", &invite_token).await);
    assert_eq!(eml.header("content-language"), "de");
    assert_eq!(
        eml.header("subject"),
        "Jean Dupont lädt Sie in „Budget 2027“ ein"
    );
    let text = eml.part("text/plain");
    assert!(text.contains("Um die Einladung anzunehmen"), "{text}");
    assert!(text.contains("https://app.example/#/room/"), "{text}");
}

#[tokio::test]
async fn an_operator_adds_a_language_by_adding_its_templates() {
    let s = crate::validation::base(Builder::new())
        .config(|c, dir| {
            let templates = dir.join("mail-templates");
            write_italian(&templates, true);
            c.mail.templates_dir = Some(templates);
        })
        .start()
        .await;
    let languages = s.app.mailer.languages();
    let codes: Vec<&str> = languages.iter().map(|l| l.code()).collect();
    assert_eq!(codes, ["de", "en", "fr", "it"]);
    let eml = verification_mail(&s, "maria@finances.gouv.example", Some("it-IT, en;q=0.5")).await;
    assert_eq!(eml.header("content-language"), "it");
    assert_eq!(eml.header("subject"), "Confermi il suo indirizzo e-mail");
    assert!(eml.part("text/plain").contains("minuti"));
    // Languages still negotiate as before for everyone else.
    let eml = verification_mail(&s, "marc@finances.gouv.example", Some("es, en;q=0.4")).await;
    assert_eq!(eml.header("content-language"), "en");
    let eml = verification_mail(&s, "luc@finances.gouv.example", None).await;
    assert_eq!(eml.header("content-language"), "fr");

    // And it may be the default.
    let s = crate::validation::base(Builder::new())
        .config(|c, dir| {
            let templates = dir.join("mail-templates");
            write_italian(&templates, true);
            c.mail.templates_dir = Some(templates);
            c.mail.default_language = annuaire::config::Language::new("it").unwrap();
        })
        .start()
        .await;
    let eml = verification_mail(&s, "lucia@finances.gouv.example", Some("es")).await;
    assert_eq!(eml.header("content-language"), "it");
}

#[tokio::test]
async fn an_incomplete_language_is_not_offered_and_cannot_be_the_default() {
    let s = crate::validation::base(Builder::new())
        .config(|c, dir| {
            let templates = dir.join("mail-templates");
            // Verification only: the invitation templates are missing.
            write_italian(&templates, false);
            c.mail.templates_dir = Some(templates);
        })
        .start()
        .await;
    let languages = s.app.mailer.languages();
    let codes: Vec<&str> = languages.iter().map(|l| l.code()).collect();
    assert_eq!(codes, ["de", "en", "fr"]);
    let eml = verification_mail(&s, "maria@finances.gouv.example", Some("it")).await;
    assert_eq!(eml.header("content-language"), "fr");

    // check-config refuses it as the default, naming the languages there are.
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("mail-templates");
    write_italian(&templates, false);
    let templates = templates.display().to_string();
    let env = [
        ("ANNUAIRE_LOG__LEVEL", "warn"),
        ("ANNUAIRE_MAIL__TEMPLATES_DIR", templates.as_str()),
        ("ANNUAIRE_MAIL__DEFAULT_LANGUAGE", "it"),
    ];
    let (code, out, err) = run_cli(dir.path(), &["check-config"], &env);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("mail.default_language"), "{err}");
    assert!(err.contains("available: de, en, fr"), "{err}");
    // Complete, it passes.
    write_italian(Path::new(&templates), true);
    let (code, out, err) = run_cli(dir.path(), &["check-config"], &env);
    assert_eq!(code, 0, "{out}{err}");
}
