//! Foundation: the service starts, answers Matrix-style errors, serves health and metrics,
//! speaks TLS, stores on both backends, and its CLI behaves.

use crate::support::{self, Backend, Builder, ServeProcess, TestServer, backend, run_cli};

#[tokio::test]
async fn v2_answers_an_empty_object() {
    let s = TestServer::start().await;
    let r = s.get("/_matrix/identity/v2").await;
    assert_eq!(r.assert_ok(), serde_json::json!({}));
    let r = s.get("/_matrix/identity/versions").await;
    let versions = r.assert_ok()["versions"].as_array().unwrap().clone();
    assert!(versions.iter().any(|v| v == "v1.1"));
}

#[tokio::test]
async fn unknown_paths_and_methods_are_matrix_errors() {
    let s = TestServer::start().await;
    s.get("/nope").await.assert_error(404, "M_UNRECOGNIZED");
    s.get("/_matrix/identity/v3/whatever")
        .await
        .assert_error(404, "M_UNRECOGNIZED");
    s.post("/_matrix/identity/v2", &serde_json::json!({}))
        .await
        .assert_error(405, "M_UNRECOGNIZED");
    let r =
        support::Reply::from(s.client.delete(s.url("/health/live")).send().await.unwrap()).await;
    r.assert_error(405, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn identity_paths_carry_cors_headers() {
    let s = TestServer::start().await;
    let r = s.get("/_matrix/identity/v2").await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(
        r.header("access-control-allow-headers")
            .unwrap()
            .contains("Authorization")
    );
    let pre = support::Reply::from(
        s.client
            .request(
                reqwest::Method::OPTIONS,
                s.url("/_matrix/identity/v2/lookup"),
            )
            .header("Origin", "https://app.example")
            .header("Access-Control-Request-Method", "POST")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(pre.status, 200);
    assert!(
        pre.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    // Operations endpoints are not for browsers.
    assert!(
        s.get("/health/live")
            .await
            .header("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn health_and_metrics() {
    let s = TestServer::start().await;
    assert_eq!(s.get("/health/live").await.assert_ok()["status"], "live");
    assert_eq!(s.get("/health/ready").await.assert_ok()["status"], "ready");
    s.get("/_matrix/identity/v2").await.assert_ok();
    let m = s.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.text.contains("annuaire_http_requests_total{method=\"GET\",route=\"/_matrix/identity/v2\",status=\"200\"}"),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("annuaire_http_request_duration_seconds_bucket")
    );
    assert!(s.get("/x").await.header("x-request-id").is_some());
}

#[tokio::test]
async fn serves_https_when_tls_is_configured() {
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let builder = Builder::new().config(|c, dir| {
        std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
        c.http.tls.cert = Some(dir.join("cert.pem"));
        c.http.tls.key = Some(dir.join("key.pem"));
    });
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let s = builder.client(client).start().await;
    assert!(s.base.starts_with("https://"));
    assert_eq!(
        s.get("/_matrix/identity/v2").await.assert_ok(),
        serde_json::json!({})
    );
}

#[tokio::test]
async fn shared_state_has_one_winner_under_races() {
    let s = TestServer::start().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let db = s.app.db.clone();
        tasks.push(tokio::spawn(async move {
            db.run(move |c| {
                annuaire::store::state::get_or_insert(c, "race", &format!("candidate-{i}"), 1)
            })
            .await
            .unwrap()
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        winners.push(t.await.unwrap());
    }
    winners.dedup();
    assert_eq!(winners.len(), 1, "{winners:?}");
    let expected = match backend() {
        Backend::Sqlite => annuaire::store::Backend::Sqlite,
        Backend::Postgres => annuaire::store::Backend::Postgres,
    };
    assert_eq!(s.app.db.backend(), expected);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let first = TestServer::start().await;
    let config = (*first.app.config).clone();
    let dir = first.dir.clone();
    first
        .app
        .db
        .run(|c| annuaire::store::state::set(c, "kept", "yes", 1))
        .await
        .unwrap();
    first.stop();
    let second = Builder::in_dir(dir, config).start().await;
    let v = second
        .app
        .db
        .run(|c| annuaire::store::state::get(c, "kept"))
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("yes"));
}

#[test]
fn migrate_command_applies_the_schema_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = support::fresh_url_for_binary();
    let mut env = Vec::new();
    if let Some(u) = &url {
        env.push(("ANNUAIRE_DATABASE__URL", u.as_str()));
    }
    let (code, out, err) = run_cli(dir.path(), &["migrate"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied"), "{out}");
    let (code, out, err) = run_cli(dir.path(), &["migrate"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("up to date"), "{out}");
    if url.is_none() {
        assert!(dir.path().join("var/annuaire.db").is_file());
    }
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[http]\nbind = \"127.0.0.1:1\"\nmax_bdy = 3\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(dir.path(), &["--config", "bad.toml", "check-config"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("max_bdy"), "{err}");
    let (code, _, err) = run_cli(
        dir.path(),
        &["check-config"],
        &[("ANNUAIRE_HTTP__BIND", "nowhere")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("http.bind"), "{err}");
    let (code, _, err) = run_cli(
        dir.path(),
        &["--config", "missing.toml", "check-config"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("missing.toml"), "{err}");
    let (code, out, _) = run_cli(dir.path(), &["check-config"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("localhost:8090"), "{out}");
    let (code, out, _) = run_cli(dir.path(), &["--help"], &[]);
    assert_eq!(code, 0);
    for word in ["serve", "migrate", "check-config", "--config"] {
        assert!(out.contains(word), "{out}");
    }
}

#[test]
fn serve_starts_with_zero_configuration_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let url = support::fresh_url_for_binary();
    let mut env = Vec::new();
    if let Some(u) = &url {
        env.push(("ANNUAIRE_DATABASE__URL", u.as_str()));
    }
    let p = ServeProcess::start(dir.path(), &["serve"], &env);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = support::client();
        let r = c
            .get(format!("{}/_matrix/identity/v2", p.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "{}");
        let r = c
            .get(format!(
                "{}/nope?address=secret.person@finances.example&access_token=tok123",
                p.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    });
    let (code, log) = p.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("annuaire stopped"), "{log}");
    let expected = if url.is_some() { "postgres" } else { "sqlite" };
    assert!(
        log.contains(&format!("\"database\":\"{expected}\"")),
        "{log}"
    );
    // Logs never carry what came in the query string.
    assert!(!log.contains("secret.person"), "{log}");
    assert!(!log.contains("tok123"), "{log}");
    if url.is_none() {
        assert!(dir.path().join("var/annuaire.db").is_file());
    }
}
