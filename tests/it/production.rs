//! Running in production (issue 15): signing key and admin secret rotations with overlap, the
//! retention purge and the erasure's pseudonyms in the audit log, the users' own data and
//! directory listing, the administration paths off loopback, SIGHUP, the new metrics, and what
//! `check-config` prints. On both backends.

use std::time::Duration;

use annuaire::matrix::signing::verify_json;
use annuaire::store::DbConn;
use serde_json::{Value, json};

use crate::identity::{builder, post_auth, register, validate};
use crate::support::fixtures::{FINANCES, FINANCES_HS, with_allowlists, write_allowlists};
use crate::support::homeserver::Homeserver;
use crate::support::{self, Builder, Reply, ServeProcess, TestServer, eventually, run_cli};

const V2: &str = "/_matrix/identity/v2";
const MARIE: &str = "@marie:agent.finances.example";
const MARIE_ADDRESS: &str = "marie.curie@finances.gouv.example";
const DAY_MS: i64 = 24 * 3600 * 1000;

fn system_now_ms() -> i64 {
    use annuaire::clock::Clock;
    annuaire::clock::SystemClock.now_ms()
}

/// The environment that points the command line at the server's database.
fn cli_env(s: &TestServer) -> Vec<(&'static str, String)> {
    vec![
        ("ANNUAIRE_DATABASE__URL", s.app.config.database_url()),
        ("ANNUAIRE_SERVER__NAME", s.app.config.server.name.clone()),
    ]
}

fn cli(s: &TestServer, args: &[&str], extra: &[(&str, &str)]) -> (i32, String, String) {
    let env = cli_env(s);
    let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.extend_from_slice(extra);
    run_cli(s.dir.path(), args, &pairs)
}

async fn audit_rows(s: &TestServer) -> Vec<annuaire::audit::AuditEntry> {
    s.app
        .db
        .run(|conn| {
            annuaire::audit::list(conn, &annuaire::audit::AuditFilter::default(), None, 1000)
        })
        .await
        .unwrap()
        .entries
}

async fn get_path(s: &TestServer, path: &str) -> Reply {
    Reply::from(s.client.get(s.url(path)).send().await.unwrap()).await
}

async fn is_valid(s: &TestServer, public_key: &str) -> bool {
    let url = reqwest::Url::parse_with_params(
        &s.url(&format!("{V2}/pubkey/isvalid")),
        &[("public_key", public_key)],
    )
    .unwrap();
    let r = Reply::from(s.client.get(url).send().await.unwrap()).await;
    r.assert_ok()["valid"].as_bool().unwrap()
}

async fn published(s: &TestServer, key_id: &str) -> Option<String> {
    let r = get_path(s, &format!("{V2}/pubkey/{key_id}")).await;
    match r.status {
        200 => Some(r.json()["public_key"].as_str().unwrap().to_owned()),
        404 => None,
        other => panic!("pubkey {key_id}: {other} {}", r.text),
    }
}

async fn bind(s: &TestServer, token: &str, sid: &str, secret: &str) -> Value {
    post_auth(
        s,
        &format!("{V2}/3pid/bind"),
        token,
        &json!({"sid": sid, "client_secret": secret, "mxid": MARIE}),
    )
    .await
    .assert_ok()
}

fn signing_key_ids(signed: &Value) -> Vec<String> {
    signed["signatures"]["is.test.example"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

// ---- rotation of the signing key ----

#[tokio::test]
async fn a_rotated_signing_key_stays_published_and_valid() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    let token = register(&s, &hs, MARIE).await;
    let sid = validate(&s, &token, MARIE_ADDRESS, "secret-1").await;
    let first = bind(&s, &token, &sid, "secret-1").await;
    assert_eq!(signing_key_ids(&first), ["ed25519:0"]);
    let key0 = published(&s, "ed25519:0").await.unwrap();
    assert_eq!(published(&s, "ed25519:1").await, None);

    let (code, out, err) = cli(&s, &["keys", "rotate-signing"], &[("SUDO_USER", "alice")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ed25519:1") && out.contains("ed25519:0"),
        "{out}"
    );
    // Published at once by this instance, which has not reread its keys yet.
    let key1 = published(&s, "ed25519:1").await.unwrap();
    assert_ne!(key1, key0);
    assert!(is_valid(&s, &key1).await);
    assert!(is_valid(&s, &key0).await);

    // Once it rereads them (every 10 s, or SIGHUP), it signs with the new key.
    s.app.identity.refresh_keys().await.unwrap();
    let second = bind(&s, &token, &sid, "secret-1").await;
    assert_eq!(signing_key_ids(&second), ["ed25519:1"]);
    verify_json(&second, "is.test.example", "ed25519:1", &key1).unwrap();
    // What the old key signed still verifies against what is published under its id.
    assert_eq!(
        published(&s, "ed25519:0").await.as_deref(),
        Some(key0.as_str())
    );
    verify_json(&first, "is.test.example", "ed25519:0", &key0).unwrap();
    assert!(is_valid(&s, &key0).await);

    // Audited, as the person behind sudo.
    let rows = audit_rows(&s).await;
    let rotation = rows
        .iter()
        .find(|r| r.action == "signing_key.rotate")
        .unwrap();
    assert_eq!(rotation.actor, "cli:alice");
    assert_eq!(rotation.before.as_ref().unwrap()["key_id"], "ed25519:0");
    assert_eq!(rotation.after.as_ref().unwrap()["public_key"], json!(key1));

    // Again: ed25519:2. A second instance on the database publishes all three, signs with 2.
    let (code, out, err) = cli(&s, &["keys", "rotate-signing"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let config = (*s.app.config).clone();
    let other = Builder::in_dir(s.dir.clone(), config).start().await;
    let key2 = published(&other, "ed25519:2").await.unwrap();
    assert_eq!(published(&other, "ed25519:1").await, Some(key1.clone()));
    assert_eq!(published(&other, "ed25519:0").await, Some(key0.clone()));
    assert_eq!(other.app.identity.signing_key().key_id(), "ed25519:2");
    for key in [&key0, &key1, &key2] {
        assert!(is_valid(&other, key).await);
    }

    let (code, out, err) = cli(&s, &["keys", "list", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<(&str, &str)> = listed["signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key_id"].as_str().unwrap(), k["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        keys,
        [
            ("ed25519:2", "current"),
            ("ed25519:1", "retired"),
            ("ed25519:0", "retired")
        ]
    );
    let (code, out, _) = cli(&s, &["keys", "list"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("still published"), "{out}");

    // With the key in a file, the file is what rotates.
    let (code, out, _) = cli(&s, &["keys", "generate", "--version", "7"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ed25519 7 "), "{out}");
    let key_file = s.dir.path().join("signing.key");
    std::fs::write(&key_file, &out).unwrap();
    let (code, _, err) = cli(
        &s,
        &["keys", "rotate-signing"],
        &[(
            "ANNUAIRE_SERVER__SIGNING_KEY_FILE",
            key_file.to_str().unwrap(),
        )],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("server.signing_key_file"), "{err}");
}

// ---- rotation of the admin token secret ----

fn add_editor(s: &TestServer) {
    let mut conn = s.app.db.get().unwrap();
    annuaire::admin::accounts::add_account(
        &mut conn,
        "ed",
        annuaire::admin::Role::Editor,
        "editor password 1",
        &annuaire::admin::Actor::cli("test"),
        s.app.clock.now_ms(),
        &mut rand::rngs::OsRng,
    )
    .unwrap();
}

async fn login(s: &TestServer) -> String {
    s.post(
        "/_annuaire/admin/v1/login",
        &json!({"username": "ed", "password": "editor password 1"}),
    )
    .await
    .assert_ok()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn rules_status(s: &TestServer, token: &str) -> Reply {
    Reply::from(
        s.client
            .get(s.url("/_annuaire/admin/v1/rules"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn cli_token(s: &TestServer, ttl: &str) -> String {
    let (code, out, err) = cli(s, &["admin", "token", "ed", "--ttl", ttl], &[]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_owned()
}

#[tokio::test]
async fn tokens_of_a_rotated_admin_secret_stay_valid_until_the_overlap_ends() {
    let s = Builder::new().manual_clock(system_now_ms()).start().await;
    add_editor(&s);
    let before_login = login(&s).await;
    assert_eq!(kid(&before_login), "1");
    let long_lived = cli_token(&s, "30days");
    assert_eq!(kid(&long_lived), "1");

    let (code, out, err) = cli(
        &s,
        &["admin", "rotate-secret", "--keep-previous", "1day"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("kid 2"), "{out}");
    // Tokens of the previous secret still work.
    rules_status(&s, &before_login).await.assert_ok();
    rules_status(&s, &long_lived).await.assert_ok();
    // A token of the new secret works on an instance that has not reread the secrets yet.
    let new_cli = cli_token(&s, "1h");
    assert_eq!(kid(&new_cli), "2");
    rules_status(&s, &new_cli).await.assert_ok();
    // And once it has, its own logins use the new secret.
    s.app.admin.refresh_secrets().await.unwrap();
    let after_login = login(&s).await;
    assert_eq!(kid(&after_login), "2");
    rules_status(&s, &after_login).await.assert_ok();

    // The overlap ends a day later: the 30-day token of the old secret is refused, a 30-day
    // token of the new one is not.
    let new_long_lived = cli_token(&s, "30days");
    s.clock.as_ref().unwrap().advance(2 * DAY_MS);
    let r = rules_status(&s, &long_lived).await;
    r.assert_error(401, "M_UNKNOWN_TOKEN");
    assert!(r.text.contains("no longer accepted"), "{}", r.text);
    rules_status(&s, &new_long_lived).await.assert_ok();

    // A leaked secret: --revoke-previous stops its tokens at once.
    let (code, out, err) = cli(&s, &["admin", "rotate-secret", "--revoke-previous"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no longer accepted"), "{out}");
    s.app.admin.refresh_secrets().await.unwrap();
    rules_status(&s, &new_long_lived)
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
    assert_eq!(kid(&login(&s).await), "3");

    let rows = audit_rows(&s).await;
    assert_eq!(
        rows.iter()
            .filter(|r| r.action == "admin_secret.rotate")
            .count(),
        2
    );
    let (code, out, _) = cli(&s, &["keys", "list", "--json"], &[]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    let secrets = listed["admin_token_secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 3, "{listed}");
    assert!(
        !out.contains("\"secret\""),
        "never the secrets themselves: {out}"
    );

    // With the secret in a file, the file is what rotates.
    let file = s.dir.path().join("jwt.secret");
    std::fs::write(&file, "0123456789abcdef0123456789abcdef0123").unwrap();
    let (code, _, err) = cli(
        &s,
        &["admin", "rotate-secret"],
        &[("ANNUAIRE_ADMIN__JWT_SECRET_FILE", file.to_str().unwrap())],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("admin.jwt_secret_file"), "{err}");
}

// ---- retention ----

async fn count(s: &TestServer, sql_table: &'static str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    s.app
        .db
        .run(move |conn| {
            use diesel::RunQueryDsl as _;
            let query = diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {sql_table}"));
            let n: N = match conn {
                DbConn::Pg(c) => query.get_result(c)?,
                DbConn::Sqlite(c) => query.get_result(c)?,
            };
            Ok(n.n)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn the_retention_purge_deletes_what_is_too_old_under_the_job_lock() {
    const T: i64 = 1_800_000_000_000;
    let s = Builder::new().manual_clock(T).start().await;
    s.app
        .db
        .run(|conn| {
            let actor = annuaire::audit::Actor::system();
            for at in [T - 400 * DAY_MS, T - 366 * DAY_MS, T - 300 * DAY_MS] {
                annuaire::audit::record(conn, &actor, "test.old", "x", None, None, at)?;
            }
            let counts = [
                (T - 100 * DAY_MS, "old.example"),
                (T - DAY_MS, "new.example"),
            ]
            .map(|(at, domain)| annuaire::store::policy::AttemptCount {
                day: at.div_euclid(DAY_MS),
                domain: domain.into(),
                outcome: "denied".into(),
                count: 3,
                last_seen: at,
            });
            annuaire::store::policy::add_attempts(conn, &counts)?;
            annuaire::store::admin::revoke_token(
                conn,
                "old-jti",
                "ed",
                T - DAY_MS,
                T - 2 * DAY_MS,
            )?;
            annuaire::store::admin::revoke_token(conn, "live-jti", "ed", T + DAY_MS, T)?;
            Ok(())
        })
        .await
        .unwrap();
    let audit_before = count(&s, "admin_audit").await;

    // While another instance holds the job lock, this one skips (PostgreSQL; SQLite has one
    // instance and no lock to wait for).
    let db = s.app.db.clone();
    let lock = tokio::task::spawn_blocking(move || {
        annuaire::store::directory::try_job_lock(
            &db,
            annuaire::admin::retention::RETENTION_LOCK_KEY,
        )
    })
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let held = s.app.admin.purge_expired_data().await.unwrap();
    match support::backend() {
        support::Backend::Postgres => assert_eq!(held, None),
        support::Backend::Sqlite => assert!(held.is_some()),
    }
    tokio::task::spawn_blocking(move || drop(lock))
        .await
        .unwrap();
    // (On SQLite the purge above already ran: run it again, it finds nothing more.)
    let purged = s.app.admin.purge_expired_data().await.unwrap().unwrap();
    let purged = match support::backend() {
        support::Backend::Postgres => purged,
        support::Backend::Sqlite => {
            assert!(purged.is_empty(), "{purged:?}");
            held.unwrap()
        }
    };
    assert_eq!(purged.audit_rows, 2, "older than 365 days");
    assert_eq!(purged.attempt_counters, 1, "older than 90 days");
    assert_eq!(purged.revoked_tokens, 1, "past their expiry");
    assert_eq!(count(&s, "admin_audit").await, audit_before - 2);
    assert_eq!(count(&s, "policy_attempts").await, 1);
    assert_eq!(count(&s, "admin_revoked_tokens").await, 1);
}

// ---- erasure and the audit log ----

#[tokio::test]
async fn an_erasure_replaces_the_address_by_a_keyed_pseudonym_in_the_audit_log() {
    let s = with_allowlists(Builder::new(), &[FINANCES]).start().await;
    add_editor(&s);
    let token = login(&s).await;
    let consultant = "consultant@partner.example";
    let senior = "senior.consultant@partner.example";
    // The start-up import wrote the finances rules (with the consultant's address) to the log;
    // a second rule names an address that contains the first one.
    let created = Reply::from(
        s.client
            .post(s.url("/_annuaire/admin/v1/rules"))
            .bearer_auth(&token)
            .json(&json!({"kind": "address", "email": senior, "homeserver": FINANCES_HS}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let mentions = |rows: &[annuaire::audit::AuditEntry], text: &str| {
        rows.iter()
            .filter(|r| {
                let all = format!(
                    "{} {} {}",
                    r.target,
                    r.before.clone().unwrap_or_default(),
                    r.after.clone().unwrap_or_default()
                );
                all.contains(&format!("\"{text}\"")) || r.target.ends_with(&format!(":{text}"))
            })
            .count()
    };
    let before = audit_rows(&s).await;
    assert!(mentions(&before, consultant) >= 1);
    assert_eq!(mentions(&before, senior), 1);

    let erase = |address: &'static str| {
        let s = &s;
        let token = token.clone();
        async move {
            Reply::from(
                s.client
                    .post(s.url("/_annuaire/admin/v1/threepids/erase"))
                    .bearer_auth(&token)
                    .json(&json!({"medium": "email", "address": address}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
            .assert_ok()
        }
    };
    let erased = erase("Consultant@Partner.example").await;
    let after = audit_rows(&s).await;
    let expected = mentions(&before, consultant) + 1; // the erasure's own row
    assert_eq!(erased["audit_rows_pseudonymised"], expected);
    assert_eq!(mentions(&after, consultant), 0, "{after:?}");
    assert_eq!(
        mentions(&after, senior),
        1,
        "another person's address is untouched"
    );
    let pseudonym = {
        let mut conn = s.app.db.get().unwrap();
        annuaire::audit::pseudonym(&mut conn, consultant, 0).unwrap()
    };
    assert!(pseudonym.starts_with("erased:") && pseudonym.len() == 7 + 32);
    assert_eq!(mentions(&after, &pseudonym), expected);
    let erasure = after.iter().find(|r| r.action == "threepid.erase").unwrap();
    assert_eq!(erasure.target, format!("threepid:email:{pseudonym}"));
    assert_eq!(erasure.actor, "ed");
    // The same address erased again gets the same pseudonym: rows about one person stay linked.
    erase(consultant).await;
    let again = audit_rows(&s).await;
    assert_eq!(mentions(&again, &pseudonym), expected + 1);
    assert_eq!(mentions(&again, consultant), 0);
}

// ---- the users' own data ----

async fn directory_finds(s: &TestServer, mxid: &str) -> bool {
    s.app
        .directory
        .search("marie", None, None, annuaire::directory::Viewer::Operator)
        .await
        .unwrap()
        .results
        .iter()
        .any(|r| r.user_id == mxid)
}

#[tokio::test]
async fn users_read_what_annuaire_holds_about_them_and_may_leave_the_directory() {
    let hs = Homeserver::start(None);
    let s = builder(&hs).start().await;
    add_editor(&s);
    let token = register(&s, &hs, MARIE).await;
    let sid = validate(&s, &token, MARIE_ADDRESS, "secret-1").await;
    bind(&s, &token, &sid, "secret-1").await;
    assert!(directory_finds(&s, MARIE).await);

    let data_path = "/_annuaire/account/v1/data";
    let directory_path = "/_annuaire/account/v1/directory";
    get_path(&s, data_path)
        .await
        .assert_error(401, "M_UNAUTHORIZED");
    let data = crate::identity::get_auth(&s, data_path, &token)
        .await
        .assert_ok();
    assert_eq!(data["user_id"], MARIE);
    assert_eq!(data["threepids"][0]["address"], MARIE_ADDRESS);
    assert_eq!(data["access_tokens"].as_array().unwrap().len(), 1);
    assert!(data["account"]["created_at"].is_i64());
    assert_eq!(data["directory"]["listed"], true);
    assert_eq!(data["directory"]["searchable"], true);
    assert_eq!(data["directory"]["entry"]["name"], "Marie Curie");
    assert_eq!(data["directory"]["entry"]["organisation"], "Finances");
    assert_eq!(data["validations"][0]["address"], MARIE_ADDRESS);
    assert!(!data.to_string().contains(&token), "never the token itself");

    // Leaving the directory.
    let left = post_auth(&s, directory_path, &token, &json!({"visible": false}))
        .await
        .assert_ok();
    assert_eq!(left, json!({"visible": false, "changed": true}));
    let again = post_auth(&s, directory_path, &token, &json!({"visible": false}))
        .await
        .assert_ok();
    assert_eq!(again["changed"], false);
    assert!(!directory_finds(&s, MARIE).await);
    let data = crate::identity::get_auth(&s, data_path, &token)
        .await
        .assert_ok();
    assert_eq!(data["directory"]["listed"], false);
    assert_eq!(data["directory"]["searchable"], false);
    assert!(data["directory"]["opted_out_at"].is_i64());
    // Administrators see the flag.
    let admin_token = login(&s).await;
    let entry = Reply::from(
        s.client
            .get(s.url(&format!("/_annuaire/admin/v1/directory/{MARIE}")))
            .bearer_auth(&admin_token)
            .send()
            .await
            .unwrap(),
    )
    .await
    .assert_ok();
    assert_eq!(entry["opted_out"], true);
    assert_eq!(entry["visibility"], "visible");
    assert_eq!(entry["searchable"], false);
    // The choice survives a new bind (the entry is written again).
    bind(&s, &token, &sid, "secret-1").await;
    assert!(!directory_finds(&s, MARIE).await);

    // Coming back.
    post_auth(&s, directory_path, &token, &json!({"visible": true}))
        .await
        .assert_ok();
    assert!(directory_finds(&s, MARIE).await);
    let rows = audit_rows(&s).await;
    let actions: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r.action.starts_with("directory.opt"))
        .map(|r| (r.action.as_str(), r.actor.as_str()))
        .collect();
    let actor = format!("user:{MARIE}");
    assert_eq!(
        actions,
        [
            ("directory.opt_in", actor.as_str()),
            ("directory.opt_out", actor.as_str())
        ]
    );
    post_auth(&s, directory_path, &token, &json!({}))
        .await
        .assert_error(400, "M_MISSING_PARAMS");
}

// ---- the administration paths off loopback ----

async fn status(s: &TestServer, path: &str) -> u16 {
    s.client
        .get(s.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn off_loopback_without_an_admin_listener_the_admin_paths_are_not_served() {
    // Configured on a routable address (a documentation address, never bound): the test
    // listens on loopback, the server decides from its configuration.
    let s = Builder::new()
        .config(|c, _| c.http.bind = "192.0.2.10:8090".parse().unwrap())
        .listen_on("127.0.0.1:0")
        .start()
        .await;
    for path in [
        "/metrics",
        "/_annuaire/openapi.json",
        "/_annuaire/admin/v1/rules",
        "/_annuaire/console/",
    ] {
        assert_eq!(status(&s, path).await, 404, "{path}");
    }
    assert_eq!(status(&s, "/_annuaire/account/v1/data").await, 401);
    assert_eq!(status(&s, "/health/ready").await, 200);
    assert_eq!(status(&s, "/_matrix/identity/versions").await, 200);

    let allowed = Builder::new()
        .config(|c, _| {
            c.http.bind = "192.0.2.10:8090".parse().unwrap();
            c.admin.public_listener = true;
        })
        .listen_on("127.0.0.1:0")
        .start()
        .await;
    assert_eq!(status(&allowed, "/metrics").await, 200);
    assert_eq!(status(&allowed, "/_annuaire/openapi.json").await, 200);
    assert_eq!(status(&allowed, "/_annuaire/admin/v1/rules").await, 401);

    // On loopback (the default), they are served.
    let local = TestServer::start().await;
    assert_eq!(status(&local, "/metrics").await, 200);
    // check-config says which.
    let (code, out, _) = run_cli(
        local.dir.path(),
        &["check-config"],
        &[("ANNUAIRE_HTTP__BIND", "192.0.2.10:8090")],
    );
    assert_eq!(code, 0);
    assert!(out.contains("not served"), "{out}");
}

// ---- SIGHUP ----

fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn info_hs(base: &str, address: &str) -> Value {
    let client = support::client();
    let url = reqwest::Url::parse_with_params(
        &format!("{base}/_matrix/identity/api/v1/info"),
        &[("medium", "email"), ("address", address)],
    )
    .unwrap();
    Reply::from(client.get(url).send().await.unwrap())
        .await
        .assert_ok()
}

#[tokio::test]
async fn sighup_reloads_the_allowlists_the_terms_and_rotated_keys() {
    let dir = tempfile::tempdir().unwrap();
    let lists = write_allowlists(dir.path(), &[FINANCES]);
    let terms = dir.path().join("terms.toml");
    let terms_text = |version: &str| {
        format!(
            "version = \"{version}\"\n[policies.privacy_policy]\nversion = \"{version}\"\n\
             en = {{ name = \"Privacy\", url = \"https://is.test.example/privacy-{version}.html\" }}\n"
        )
    };
    std::fs::write(&terms, terms_text("1.0")).unwrap();
    let mut env = vec![
        (
            "ANNUAIRE_POLICY__ALLOWLISTS_DIR",
            lists.display().to_string(),
        ),
        ("ANNUAIRE_TERMS__FILE", terms.display().to_string()),
        ("ANNUAIRE_SERVER__NAME", "is.test.example".to_string()),
    ];
    let url = support::fresh_url_for_binary();
    if let Some(url) = &url {
        env.push(("ANNUAIRE_DATABASE__URL", url.clone()));
    }
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let serve = ServeProcess::start(dir.path(), &["serve"], &env_refs);
    let justice = "greffier@justice.gouv.example";
    assert_eq!(info_hs(&serve.base, justice).await["decision"], "denied");

    std::fs::write(
        lists.join("justice.toml"),
        "[organisation]\nlabel = \"Justice\"\nhomeserver = \"agent.justice.example\"\n\n\
         [[domain]]\nname = \"justice.gouv.example\"\n",
    )
    .unwrap();
    std::fs::write(&terms, terms_text("2.0")).unwrap();
    let (code, out, err) = run_cli(dir.path(), &["keys", "rotate-signing"], &env_refs);
    assert_eq!(code, 0, "{out}{err}");
    signal(&serve.child, "HUP");
    eventually(Duration::from_secs(20), "the reload", async || {
        serve.log().contains("configuration reloaded")
    })
    .await;
    let decision = info_hs(&serve.base, justice).await;
    assert_eq!(decision["hs"], "agent.justice.example", "{decision}");
    let client = support::client();
    let terms_now: Value = client
        .get(format!("{}{V2}/terms", serve.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        terms_now["policies"]["privacy_policy"]["version"], "2.0",
        "{terms_now}"
    );
    let log = serve.log();
    assert!(log.contains("signing key changed"), "{log}");
    assert!(log.contains("\"ok\":true"), "{log}");
    // A second SIGHUP with a broken terms file keeps the current terms and the process.
    std::fs::write(&terms, "not = [toml").unwrap();
    signal(&serve.child, "HUP");
    eventually(Duration::from_secs(20), "the second reload", async || {
        serve.log().matches("configuration reloaded").count() == 2
    })
    .await;
    assert!(serve.log().contains("reload failed"), "{}", serve.log());
    let (code, log) = serve.terminate();
    assert_eq!(code, 0, "{log}");
    // The import on SIGHUP is audited as `reload`.
    if let Some(url) = url {
        let db = annuaire::store::Db::connect(&url, 1, Duration::from_secs(10)).unwrap();
        let mut conn = db.get().unwrap();
        let filter = annuaire::audit::AuditFilter {
            actor: Some("reload".into()),
            ..Default::default()
        };
        let page = annuaire::audit::list(&mut conn, &filter, None, 10).unwrap();
        assert!(!page.entries.is_empty());
    }
}

// ---- metrics ----

#[tokio::test]
async fn metrics_cover_the_pool_the_policy_reload_the_directory_and_federation_errors() {
    // The Finances homeserver is a port nothing listens on: an OpenID check fails outbound.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let s = with_allowlists(Builder::new(), &[FINANCES])
        .config(move |c, _| {
            c.federation
                .homeservers
                .insert(FINANCES_HS.into(), dead_url.clone());
        })
        .start()
        .await;
    s.post(
        &format!("{V2}/account/register"),
        &json!({"access_token": "x", "token_type": "Bearer",
            "matrix_server_name": FINANCES_HS, "expires_in": 60}),
    )
    .await
    .assert_error(502, "M_UNKNOWN");
    let metrics = async || get_path(&s, "/metrics").await.text;
    eventually(Duration::from_secs(20), "every new metric", async || {
        let text = metrics().await;
        [
            "annuaire_db_pool_connections_in_use",
            "annuaire_db_pool_size",
            "annuaire_db_pool_wait_duration_seconds",
            "annuaire_policy_last_check_timestamp_seconds",
            "annuaire_directory_entries",
            "annuaire_federation_errors_total{",
        ]
        .iter()
        .all(|m| text.contains(m))
    })
    .await;
    let text = metrics().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("annuaire_federation_errors_total")
                && l.contains("call=\"openid_userinfo\"")),
        "{text}"
    );
}

// ---- check-config ----

#[test]
fn check_config_prints_the_listeners_networks_and_words_not_debug_names() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(
        dir.path(),
        &["check-config"],
        &[
            ("ANNUAIRE_MAIL__TRANSPORT", "smtp"),
            ("ANNUAIRE_MAIL__SMTP__SECURITY", "none"),
            ("ANNUAIRE_MAIL__SMTP__HOST", "127.0.0.1"),
            ("ANNUAIRE_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1/32\"]"),
            ("ANNUAIRE_HTTP__ADMIN_BIND", "127.0.0.1:8091"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    for expected in [
        "smtp (127.0.0.1:587, security none)",
        "http.admin_bind    = 127.0.0.1:8091",
        "admin API, metrics = admin listener",
        "internal networks  = 127.0.0.0/8, ::1/128",
        "trusted proxies    = 127.0.0.1/32",
        "retention          = audit 365days, attempts 90days",
    ] {
        assert!(out.contains(expected), "{expected:?} in:\n{out}");
    }
    assert!(!out.contains("None"), "{out}");
}
