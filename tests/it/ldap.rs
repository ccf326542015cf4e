//! LDAP against the real slapd that scripts/lib/services.sh starts (fixture
//! tests/fixtures/ldap/people.ldif): sync of verified names into the directory, escaping, the
//! CLI, and the periodic sync of `serve`.

use std::path::Path;
use std::time::Duration;

use annuaire::config::{Config, HumanDuration};
use annuaire::directory::ldap_sync::{self, SyncSummary};
use annuaire::directory::{self, NameSource};
use annuaire::ldap::{self, LdapSettings, escape_filter_value};
use annuaire::policy::{Decision, Outcome, ReasonCode, normalize_email};
use serde_json::Value;

use crate::support::{
    Backend, Builder, TestServer, backend, eventually, fresh_url_for_binary, run_cli,
};

/// People in the fixture (inetOrgPerson entries).
const PEOPLE: usize = 37;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the services with `eval \"$(scripts/lib/services.sh start)\"`"
        )
    })
}

/// Points `[ldap]` at the test slapd, the service password in a file under `dir`.
fn configure_ldap(c: &mut Config, dir: &Path) {
    let password_file = dir.join("ldap-password");
    std::fs::write(
        &password_file,
        format!("{}\n", env("TEST_LDAP_BIND_PASSWORD")),
    )
    .unwrap();
    c.ldap.url = Some(env("TEST_LDAP_URL"));
    c.ldap.base_dn = env("TEST_LDAP_BASE_DN");
    c.ldap.bind_dn = Some(env("TEST_LDAP_BIND_DN"));
    c.ldap.bind_password_file = Some(password_file);
    // Small pages, so that paging is exercised.
    c.ldap.page_size = 7;
}

fn settings(s: &TestServer) -> LdapSettings {
    LdapSettings::from_config(&s.app.config.ldap)
        .unwrap()
        .unwrap()
}

async fn bind(s: &TestServer, mxid: &str, email: &str, org: Option<&str>) {
    let decision = Decision {
        outcome: Outcome::Allowed,
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

async fn name_of(s: &TestServer, mxid: &str) -> (String, NameSource, Option<String>) {
    let e = s.app.directory.entry(mxid).await.unwrap().unwrap();
    (e.name, e.name_source, e.organisation)
}

async fn operator_search(s: &TestServer, term: &str) -> Vec<String> {
    s.app
        .directory
        .search(term, None, None, directory::Viewer::Operator)
        .await
        .unwrap()
        .results
        .into_iter()
        .map(|r| r.display_name)
        .collect()
}

#[tokio::test]
async fn sync_sets_verified_names_and_follows_the_directory() {
    let s = Builder::new().config(configure_ldap).start().await;
    bind(
        &s,
        "@jean:finances.example",
        "jean.dupont@finances.gouv.fr",
        Some("Finances"),
    )
    .await;
    bind(
        &s,
        "@helene:finances.example",
        "helene.lefevre@finances.gouv.fr",
        None,
    )
    .await;
    bind(
        &s,
        "@eve:finances.example",
        "eve.piege@finances.gouv.fr",
        Some("Finances"),
    )
    .await;
    bind(
        &s,
        "@mc:finances.example",
        "marie-claire.fontaine@finances.gouv.fr",
        Some("Finances"),
    )
    .await;
    bind(
        &s,
        "@kaethe:aa.example",
        "K.Schaefer-Weiss@auswaertiges-amt.example",
        Some("AA"),
    )
    .await;
    bind(
        &s,
        "@cedric:finances.example",
        "cedric.fevrier@finances.gouv.fr",
        Some("Finances"),
    )
    .await;
    bind(
        &s,
        "@anna:bmi.example",
        "anna*schmidt@bmi.bund.example",
        Some("BMI"),
    )
    .await;
    bind(
        &s,
        "@jp:interieur.example",
        "jean-pierre.dupont-moretti@interieur.gouv.fr",
        Some("Intérieur"),
    )
    .await;
    bind(
        &s,
        "@other:finances.example",
        "someone.else@finances.gouv.fr",
        Some("Finances"),
    )
    .await;
    s.app
        .directory
        .set_admin_name("@jp:interieur.example", Some("JP Dupont-Moretti"))
        .await
        .unwrap();
    assert_eq!(
        name_of(&s, "@helene:finances.example").await,
        ("Helene Lefevre".into(), NameSource::Email, None)
    );

    // A dry run counts and writes nothing.
    let dry = s
        .app
        .directory
        .sync_ldap(&settings(&s), true, |_| {})
        .await
        .unwrap();
    assert_eq!(
        dry,
        SyncSummary {
            dry_run: true,
            read: PEOPLE,
            records: PEOPLE, // one without mail, one with two
            matched: 8,
            updated: 7, // all but the admin-named one
            skipped_no_mail: 1,
            ..SyncSummary::default()
        }
    );
    assert_eq!(
        name_of(&s, "@helene:finances.example").await.1,
        NameSource::Email
    );

    let mut progress_calls = 0;
    let summary = s
        .app
        .directory
        .sync_ldap(&settings(&s), false, |_| progress_calls += 1)
        .await
        .unwrap();
    assert_eq!(
        summary,
        SyncSummary {
            dry_run: false,
            ..dry
        }
    );
    assert!(progress_calls >= 1);

    // Authoritative names, kept as the directory writes them; the rule's label wins, LDAP's
    // organisation fills in when the rule has none.
    assert_eq!(
        name_of(&s, "@helene:finances.example").await,
        (
            "Hélène Lefèvre".into(),
            NameSource::Ldap,
            Some("Ministère de l'Économie et des Finances".into())
        )
    );
    assert_eq!(
        name_of(&s, "@jean:finances.example").await.1,
        NameSource::Ldap
    );
    assert_eq!(
        name_of(&s, "@mc:finances.example").await.0,
        "Marie-Claire Fontaine"
    );
    assert_eq!(
        name_of(&s, "@kaethe:aa.example").await.0,
        "Käthe Schäfer-Weiß"
    );
    assert_eq!(
        name_of(&s, "@cedric:finances.example").await.0,
        "Cédric Février"
    );
    assert_eq!(name_of(&s, "@anna:bmi.example").await.0, "Anna Schmidt");
    assert_eq!(
        name_of(&s, "@jp:interieur.example").await,
        (
            "JP Dupont-Moretti".into(),
            NameSource::Admin,
            Some("Intérieur".into())
        )
    );
    assert_eq!(
        name_of(&s, "@other:finances.example").await.1,
        NameSource::Email
    );
    // The `*)(` name is just text: stored as is, searchable, nothing else matched.
    assert_eq!(
        name_of(&s, "@eve:finances.example").await.0,
        "Ève *)(uid=*) Piège"
    );
    assert_eq!(
        operator_search(&s, "piege").await,
        ["Ève *)(uid=*) Piège [Finances]"]
    );
    assert_eq!(operator_search(&s, "helene lef").await.len(), 1);

    // A later bind of an address LDAP knows gets the LDAP name at once.
    bind(
        &s,
        "@zoe:finances.example",
        "zoe.rousseau@finances.gouv.fr",
        Some("Finances"),
    )
    .await;
    assert_eq!(name_of(&s, "@zoe:finances.example").await.0, "Zoé Rousseau");

    // Nothing changed: nothing updated.
    let again = s
        .app
        .directory
        .sync_ldap(&settings(&s), false, |_| {})
        .await
        .unwrap();
    assert_eq!((again.matched, again.updated, again.removed), (9, 0, 0));

    // Hélène leaves the directory (here: the filter no longer selects her): her record goes
    // and her entry falls back to her address's name, without LDAP's organisation.
    let mut narrower = settings(&s);
    narrower.filter = "(&(objectClass=inetOrgPerson)(!(uid=helene.lefevre)))".into();
    let left = s
        .app
        .directory
        .sync_ldap(&narrower, true, |_| {})
        .await
        .unwrap();
    assert_eq!((left.removed, left.reverted), (1, 1), "dry run counts");
    assert_eq!(
        name_of(&s, "@helene:finances.example").await.1,
        NameSource::Ldap
    );
    let left = s
        .app
        .directory
        .sync_ldap(&narrower, false, |_| {})
        .await
        .unwrap();
    assert_eq!((left.read, left.removed, left.reverted), (PEOPLE - 1, 1, 1));
    assert_eq!(
        name_of(&s, "@helene:finances.example").await,
        ("Helene Lefevre".into(), NameSource::Email, None)
    );

    // A failed search deletes nothing.
    let mut broken = settings(&s);
    broken.base_dn = "ou=nowhere,dc=agents,dc=example".into();
    let e = s
        .app
        .directory
        .sync_ldap(&broken, false, |_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("LDAP search failed"), "{e}");
    assert_eq!(
        name_of(&s, "@jean:finances.example").await.1,
        NameSource::Ldap
    );

    // Two writing syncs never interleave: on PostgreSQL (several instances) the second one is
    // refused while the job lock is held; SQLite has a single instance, which always gets it.
    let db = s.app.db.clone();
    let lock = tokio::task::spawn_blocking(move || {
        annuaire::store::directory::try_job_lock(&db, ldap_sync::SYNC_LOCK_KEY).unwrap()
    })
    .await
    .unwrap()
    .unwrap();
    let busy = s
        .app
        .directory
        .sync_ldap(&settings(&s), false, |_| {})
        .await;
    match backend() {
        Backend::Postgres => assert!(
            matches!(busy, Err(directory::DirectoryError::SyncInProgress)),
            "{busy:?}"
        ),
        Backend::Sqlite => assert!(busy.is_ok(), "{busy:?}"),
    }
    assert!(
        s.app
            .directory
            .sync_ldap(&settings(&s), true, |_| {})
            .await
            .is_ok(),
        "dry runs do not lock"
    );
    tokio::task::spawn_blocking(move || drop(lock))
        .await
        .unwrap();
    s.app
        .directory
        .sync_ldap(&settings(&s), false, |_| {})
        .await
        .unwrap();

    // A wrong password is a bind error naming the account, not the password.
    let mut wrong = settings(&s);
    wrong.bind_password = Some("not-the-password".into());
    let e = ldap::connect(&wrong).await.unwrap_err();
    assert!(matches!(e, ldap::LdapError::Bind { .. }), "{e}");
    assert!(!e.to_string().contains("not-the-password"));
}

#[tokio::test]
async fn user_values_are_escaped_in_filters() {
    let s = Builder::new().config(configure_ldap).start().await;
    let settings = settings(&s);
    let mut conn = ldap::connect(&settings).await.unwrap();

    // `*` in an address is a literal: Anna Schmidt, not also anna.maria.schmidt.
    let found = ldap::find_by_mail(&mut conn, &settings, "anna*schmidt@bmi.bund.example")
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].display_name.as_deref(), Some("Anna Schmidt"));
    for hostile in ["*", "*)(uid=*", "x)(|(mail=*", "\\2a"] {
        let found = ldap::find_by_mail(&mut conn, &settings, hostile)
            .await
            .unwrap();
        assert!(found.is_empty(), "{hostile:?} matched {found:?}");
    }
    // Lookups are case-insensitive, as the mail attribute's matching rule is.
    let found = ldap::find_by_mail(
        &mut conn,
        &settings,
        "MARIE-CLAIRE.fontaine@finances.gouv.fr",
    )
    .await
    .unwrap();
    assert_eq!(found.len(), 1);

    // The `*)(` name, escaped, finds exactly its owner; unescaped it is not even a filter.
    let name = "Ève *)(uid=*) Piège";
    let escaped = format!("(cn={})", escape_filter_value(name));
    let (entries, _) = conn
        .search(
            &settings.base_dn,
            ldap3::Scope::Subtree,
            &escaped,
            vec!["uid"],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(entries.len(), 1);
    let entry = ldap3::SearchEntry::construct(entries.into_iter().next().unwrap());
    assert_eq!(entry.attrs["uid"], ["eve.piege"]);
    let raw = conn
        .search(
            &settings.base_dn,
            ldap3::Scope::Subtree,
            &format!("(cn={name})"),
            vec!["uid"],
        )
        .await;
    assert!(raw.is_err() || raw.unwrap().success().is_err());
}

#[tokio::test]
async fn cli_sync_and_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, env("TEST_LDAP_BIND_PASSWORD")).unwrap();
    let (url, base, bind_dn, pw) = (
        env("TEST_LDAP_URL"),
        env("TEST_LDAP_BASE_DN"),
        env("TEST_LDAP_BIND_DN"),
        password_file.display().to_string(),
    );
    let db = fresh_url_for_binary();
    let mut vars: Vec<(&str, &str)> = vec![
        ("ANNUAIRE_LOG__LEVEL", "warn"),
        ("ANNUAIRE_LDAP__URL", &url),
        ("ANNUAIRE_LDAP__BASE_DN", &base),
        ("ANNUAIRE_LDAP__BIND_DN", &bind_dn),
        ("ANNUAIRE_LDAP__BIND_PASSWORD_FILE", &pw),
    ];
    if let Some(db) = &db {
        vars.push(("ANNUAIRE_DATABASE__URL", db));
    }

    let (code, out, err) = run_cli(dir.path(), &["ldap", "sync", "--json"], &vars);
    assert_eq!(code, 0, "{out}{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["read"], PEOPLE);
    assert_eq!(summary["records"], PEOPLE);
    assert_eq!(summary["skipped_no_mail"], 1);
    assert_eq!(summary["dry_run"], false);
    // Not a terminal: plain progress lines, no bar.
    assert!(err.contains("ldap sync: 37 read"), "{err}");
    assert!(!err.contains('\r'), "{err}");

    let (code, out, err) = run_cli(dir.path(), &["ldap", "sync", "--dry-run"], &vars);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dry run: nothing was written"), "{out}");
    assert!(out.contains("read            37"), "{out}");
    assert!(out.contains("no mail               1"), "{out}");

    let (code, out, err) = run_cli(
        dir.path(),
        &["ldap", "lookup", "anna*schmidt@bmi.bund.example"],
        &vars,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("uid=").count(), 1, "{out}");
    assert!(out.contains("verified name: Anna Schmidt"), "{out}");

    let (code, _, err) = run_cli(
        dir.path(),
        &["ldap", "sync"],
        &[("ANNUAIRE_LOG__LEVEL", "warn")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("set ldap.url"), "{err}");
}

#[tokio::test]
async fn serve_syncs_periodically_when_configured() {
    let s = Builder::new()
        .config(|c, dir| {
            configure_ldap(c, dir);
            c.ldap.sync_interval = Some(HumanDuration(Duration::from_secs(3600)));
        })
        .start()
        .await;
    // The first round runs at start: once it is done, binds get LDAP names.
    eventually(
        Duration::from_secs(30),
        "the start-up LDAP sync",
        async || {
            bind(&s, "@b:bmi.example", "bjoern.gross@bmi.bund.example", None).await;
            name_of(&s, "@b:bmi.example").await.0 == "Björn Groß"
        },
    )
    .await;
    assert_eq!(
        name_of(&s, "@b:bmi.example").await.2.as_deref(),
        Some("Bundesministerium des Innern")
    );
}

// ---- TLS: ldaps:// and StartTLS, with the throwaway CA of scripts/lib/ldap.sh ----

/// `[ldap]` over TLS: `ldaps://` (`starttls` false) or StartTLS on the plain port, trusting
/// `ca_file`.
fn configure_ldap_tls(c: &mut Config, dir: &Path, starttls: bool, ca_file: &Path) {
    configure_ldap(c, dir);
    c.ldap.url = Some(if starttls {
        env("TEST_LDAP_URL")
    } else {
        env("TEST_LDAPS_URL")
    });
    c.ldap.starttls = starttls;
    c.ldap.ca_file = Some(ca_file.to_path_buf());
}

/// A CA that did not sign the test server's certificate (PEM in `dir`).
fn unrelated_ca(dir: &Path) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "not the LDAP server's CA");
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join("other-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

#[tokio::test]
async fn sync_runs_over_ldaps_and_starttls() {
    let ca = std::path::PathBuf::from(env("TEST_LDAP_CA_FILE"));
    for starttls in [false, true] {
        let ca = ca.clone();
        let s = Builder::new()
            .config(move |c, dir| configure_ldap_tls(c, dir, starttls, &ca))
            .start()
            .await;
        bind(
            &s,
            "@helene:finances.example",
            "helene.lefevre@finances.gouv.fr",
            None,
        )
        .await;
        let summary = s
            .app
            .directory
            .sync_ldap(&settings(&s), false, |_| {})
            .await
            .unwrap_or_else(|e| panic!("starttls = {starttls}: {e}"));
        assert_eq!(summary.read, PEOPLE, "starttls = {starttls}");
        let (name, source, _) = name_of(&s, "@helene:finances.example").await;
        assert_eq!(
            (name.as_str(), source),
            ("Hélène Lefèvre", NameSource::Ldap),
            "starttls = {starttls}"
        );
    }
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = unrelated_ca(dir.path());
    for starttls in [false, true] {
        let ca = wrong.clone();
        let s = Builder::new()
            .config(move |c, dir| configure_ldap_tls(c, dir, starttls, &ca))
            .start()
            .await;
        let settings = settings(&s);
        let e = ldap::connect(&settings).await.unwrap_err();
        let message = e.to_string();
        assert!(matches!(e, ldap::LdapError::Tls(_)), "{starttls}: {e:?}");
        assert!(
            message.contains("certificate is not trusted"),
            "{starttls}: {message}"
        );
        assert!(message.contains("ldap.ca_file"), "{starttls}: {message}");
        assert!(
            message.contains(&wrong.display().to_string()),
            "{starttls}: {message}"
        );
        // The sync says the same, and writes nothing.
        let e = s
            .app
            .directory
            .sync_ldap(&settings, false, |_| {})
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("certificate is not trusted"),
            "{starttls}: {e}"
        );
    }
    // Without ldap.ca_file the platform's roots do not know the throwaway CA either.
    let s = Builder::new()
        .config(|c, dir| {
            configure_ldap(c, dir);
            c.ldap.url = Some(env("TEST_LDAPS_URL"));
        })
        .start()
        .await;
    let message = ldap::connect(&settings(&s)).await.unwrap_err().to_string();
    assert!(message.contains("certificate is not trusted"), "{message}");
    assert!(message.contains("set ldap.ca_file"), "{message}");
}
