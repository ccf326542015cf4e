//! Tests of the federation client: pure parts, and calls against wiremock doubles and a local
//! TLS server.

use super::keys::parse_key_response;
use super::resolve::{base_url, direct_base, endpoint, parse_well_known};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde_json::Value;

use super::ssrf::{BlockedTarget, GuardedResolver, is_permitted};
use super::*;
use crate::clock::ManualClock;
use crate::matrix::server_name::ServerName;
use crate::matrix::signing::{SigningKey, sign_json};
use crate::matrix::xmatrix::sign_request;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use wiremock::matchers::{bearer_token, body_json, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const T0: i64 = 1_700_000_000_000;
const HS: &str = "hs.test";
const IS: &str = "is.test";

fn key(seed: u64) -> SigningKey {
    SigningKey::generate(&mut StdRng::seed_from_u64(seed))
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

fn settings() -> FederationSettings {
    FederationSettings {
        timeout: Duration::from_secs(5),
        ..FederationSettings::default()
    }
}

/// A client that reaches `server` as homeserver `HS` through an override.
fn client_for(server: &MockServer, clock: &Arc<ManualClock>) -> FederationClient {
    let mut settings = settings();
    settings
        .homeservers
        .insert(HS.to_owned(), Url::parse(&server.uri()).unwrap());
    let shared: SharedClock = clock.clone();
    FederationClient::with_clock(settings, shared).unwrap()
}

fn key_response(server: &str, key: &SigningKey, valid_until_ts: i64) -> Value {
    let mut response = json!({
        "server_name": server,
        "verify_keys": {key.key_id(): {"key": key.public_key_base64()}},
        "old_verify_keys": {},
        "valid_until_ts": valid_until_ts,
    });
    sign_json(&mut response, server, key).unwrap();
    response
}

async fn mount_keys(server: &MockServer, response: Value, times: u64) {
    Mock::given(method("GET"))
        .and(path("/_matrix/key/v2/server"))
        .respond_with(ResponseTemplate::new(200).set_body_json(response))
        .expect(times)
        .mount(server)
        .await;
}

#[test]
fn client_is_cheap_to_share_across_tasks() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<FederationClient>();
}

// ----- server names and resolution (pure parts) -----

#[test]
fn resolution_steps_without_lookup() {
    let direct = |name: &str| {
        direct_base(&ServerName::parse(name).unwrap())
            .unwrap()
            .map(|u| u.to_string())
    };
    assert_eq!(direct("1.2.3.4").as_deref(), Some("https://1.2.3.4:8448/"));
    assert_eq!(direct("1.2.3.4:99").as_deref(), Some("https://1.2.3.4:99/"));
    assert_eq!(
        direct("[2001:db8::1]").as_deref(),
        Some("https://[2001:db8::1]:8448/")
    );
    assert_eq!(
        direct("hs.example:443").as_deref(),
        Some("https://hs.example/")
    );
    assert_eq!(
        direct("hs.example:8449").as_deref(),
        Some("https://hs.example:8449/")
    );
    assert_eq!(direct("hs.example"), None, "needs .well-known");
}

#[test]
fn well_known_delegation_parsing() {
    let base =
        |body: &str| parse_well_known(body.as_bytes()).map(|s| base_url(&s).unwrap().to_string());
    assert_eq!(
        base(r#"{"m.server": "matrix.hs.example:443"}"#).as_deref(),
        Some("https://matrix.hs.example/")
    );
    assert_eq!(
        base(r#"{"m.server": "matrix.hs.example"}"#).as_deref(),
        Some("https://matrix.hs.example:8448/")
    );
    assert_eq!(
        base(r#"{"m.server": "5.6.7.8"}"#).as_deref(),
        Some("https://5.6.7.8:8448/")
    );
    for bad in [
        r#"{}"#,
        r#"{"m.server": 1}"#,
        r#"{"m.server": "a/b"}"#,
        "not json",
        "[]",
    ] {
        assert_eq!(base(bad), None, "{bad}");
    }
}

#[test]
fn endpoints_keep_a_base_path_prefix() {
    let base = Url::parse("https://proxy.example/hs1/").unwrap();
    assert_eq!(
        endpoint(&base, "/_matrix/key/v2/server").as_str(),
        "https://proxy.example/hs1/_matrix/key/v2/server"
    );
    let base = Url::parse("http://10.0.0.5:8448").unwrap();
    assert_eq!(
        endpoint(&base, "/_matrix/key/v2/server").as_str(),
        "http://10.0.0.5:8448/_matrix/key/v2/server"
    );
}

// ----- SSRF guard -----

#[test]
fn address_classification() {
    let forbidden = [
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.1",
        "127.255.0.9",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "198.18.0.1",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::127.0.0.1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
        "3fff::1",
        "100::1",
        "64:ff9b::a00:1",
        "64:ff9b:1::1",
        "2002:7f00:1::1",
        "2001:0:4136:e378::1",
    ];
    for ip in forbidden {
        assert!(
            !is_permitted(ip.parse().unwrap(), &[]),
            "{ip} must be refused"
        );
    }
    let public = [
        "1.1.1.1",
        "8.8.8.8",
        "100.63.255.255",
        "100.128.0.1",
        "172.15.0.1",
        "172.32.0.1",
        "192.0.1.1",
        "198.17.0.1",
        "198.20.0.1",
        "2a01:4f8::1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ];
    for ip in public {
        assert!(
            is_permitted(ip.parse().unwrap(), &[]),
            "{ip} must be allowed"
        );
    }
    let allowed: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
    assert!(is_permitted("10.2.3.4".parse().unwrap(), &allowed));
    assert!(is_permitted("::ffff:10.2.3.4".parse().unwrap(), &allowed));
    assert!(is_permitted("fd00::5".parse().unwrap(), &allowed));
    assert!(!is_permitted("192.168.0.1".parse().unwrap(), &allowed));
}

#[tokio::test]
async fn resolver_drops_non_public_addresses_unless_allowed() {
    use reqwest::dns::Resolve as _;
    let guarded = GuardedResolver {
        allowed: Vec::new().into(),
    };
    let err = guarded
        .resolve("localhost".parse().unwrap())
        .await
        .err()
        .unwrap();
    assert!(err.downcast_ref::<BlockedTarget>().is_some(), "{err}");

    let open = GuardedResolver {
        allowed: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()].into(),
    };
    let addrs: Vec<SocketAddr> = open
        .resolve("localhost".parse().unwrap())
        .await
        .unwrap()
        .collect();
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a.ip().is_loopback()));
}

#[tokio::test]
async fn private_targets_are_refused_without_an_override() {
    let server = MockServer::start().await;
    let port = server.address().port();
    let client = FederationClient::new(settings()).unwrap();
    for name in [
        format!("127.0.0.1:{port}"),
        "10.0.0.1".to_owned(),
        "169.254.169.254".to_owned(),
        "[::1]:8448".to_owned(),
        "[fd00::1]".to_owned(),
    ] {
        let err = client.openid_userinfo(&name, "tok").await.unwrap_err();
        assert!(
            matches!(err, FederationError::Forbidden { .. }),
            "{name}: {err}"
        );
        assert!(matches!(
            client.resolve(&name).await,
            Err(FederationError::Forbidden { .. })
        ));
    }
    // A name is checked when it resolves, before any connection.
    let err = client
        .openid_userinfo(&format!("localhost:{port}"), "tok")
        .await
        .unwrap_err();
    assert!(matches!(err, FederationError::Forbidden { .. }), "{err}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn allowed_networks_open_the_guard() {
    // Wiremock speaks plain HTTP and resolution always yields https://, so the request
    // then fails at TLS: what matters is that it got past the guard to the server.
    let server = MockServer::start().await;
    let port = server.address().port();
    let client = FederationClient::new(FederationSettings {
        allowed_networks: vec!["127.0.0.0/8".parse().unwrap()],
        ..settings()
    })
    .unwrap();
    let name = format!("127.0.0.1:{port}");
    assert_eq!(
        client.resolve(&name).await.unwrap().as_str(),
        format!("https://127.0.0.1:{port}/")
    );
    let err = client.openid_userinfo(&name, "tok").await.unwrap_err();
    assert!(matches!(err, FederationError::Unreachable { .. }), "{err}");
    let err = client
        .openid_userinfo(&format!("localhost:{port}"), "tok")
        .await
        .unwrap_err();
    assert!(
        !matches!(err, FederationError::Forbidden { .. }),
        "localhost resolves to 127.0.0.1 (and maybe ::1): {err}"
    );
}

#[test]
fn overrides_must_be_http_urls() {
    let mut settings = settings();
    settings
        .homeservers
        .insert(HS.to_owned(), Url::parse("ftp://10.0.0.5/").unwrap());
    assert!(matches!(
        FederationClient::new(settings),
        Err(FederationError::Config(_))
    ));
}

#[test]
fn a_bad_ca_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    for ca_file in [missing, empty] {
        let err = FederationClient::new(FederationSettings {
            ca_file: Some(ca_file),
            ..settings()
        })
        .unwrap_err();
        assert!(matches!(err, FederationError::Config(_)), "{err}");
    }
}

// ----- OpenID -----

#[tokio::test]
async fn openid_userinfo_through_an_override() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/_matrix/federation/v1/openid/userinfo"))
        .and(query_param("access_token", "s3cr3t+/="))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"sub": "@alice:hs.test"})))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server, &clock());
    assert_eq!(
        client.openid_userinfo(HS, "s3cr3t+/=").await.unwrap(),
        "@alice:hs.test"
    );
}

#[tokio::test]
async fn openid_errors_are_distinguished() {
    let server = MockServer::start().await;
    let respond = |token: &str, template: ResponseTemplate| {
        Mock::given(path("/_matrix/federation/v1/openid/userinfo"))
            .and(query_param("access_token", token))
            .respond_with(template)
    };
    respond(
        "expired",
        ResponseTemplate::new(401).set_body_json(json!({"errcode": "M_UNKNOWN_TOKEN"})),
    )
    .mount(&server)
    .await;
    respond("forbidden", ResponseTemplate::new(403))
        .mount(&server)
        .await;
    respond("broken", ResponseTemplate::new(500))
        .mount(&server)
        .await;
    respond(
        "nosub",
        ResponseTemplate::new(200).set_body_json(json!({"user": "@a:hs.test"})),
    )
    .mount(&server)
    .await;
    respond(
        "garbage",
        ResponseTemplate::new(200).set_body_string("<html>"),
    )
    .mount(&server)
    .await;
    let client = client_for(&server, &clock());

    for token in ["expired", "forbidden"] {
        let err = client.openid_userinfo(HS, token).await.unwrap_err();
        assert!(matches!(err, FederationError::InvalidToken { .. }), "{err}");
        assert!(err.is_authentication_failure());
    }
    let err = client.openid_userinfo(HS, "broken").await.unwrap_err();
    assert!(
        matches!(err, FederationError::Status { status: 500, .. }),
        "{err}"
    );
    assert!(!err.is_authentication_failure());
    for token in ["nosub", "garbage"] {
        let err = client.openid_userinfo(HS, token).await.unwrap_err();
        assert!(
            matches!(err, FederationError::InvalidResponse { .. }),
            "{err}"
        );
    }
}

#[tokio::test]
async fn unreachable_homeservers_are_reported_without_the_token() {
    // A port nobody listens on (bound then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = settings();
    settings.homeservers.insert(
        HS.to_owned(),
        Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
    );
    let client = FederationClient::new(settings).unwrap();
    let err = client
        .openid_userinfo(HS, "very-secret-token")
        .await
        .unwrap_err();
    assert!(matches!(err, FederationError::Unreachable { .. }), "{err}");
    assert!(!err.is_authentication_failure());
    assert!(!format!("{err} {err:?}").contains("very-secret-token"));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    Mock::given(path("/_matrix/federation/v1/openid/userinfo"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/elsewhere", server.uri())),
        )
        .mount(&server)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"sub": "@x:hs.test"})))
        .expect(0)
        .mount(&server)
        .await;
    let client = client_for(&server, &clock());
    let err = client.openid_userinfo(HS, "tok").await.unwrap_err();
    assert!(
        matches!(err, FederationError::Status { status: 302, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn response_size_is_capped() {
    let server = MockServer::start().await;
    let big = format!(r#"{{"sub": "@a:hs.test", "pad": "{}"}}"#, "x".repeat(4096));
    Mock::given(path("/_matrix/federation/v1/openid/userinfo"))
        .respond_with(ResponseTemplate::new(200).set_body_string(big))
        .mount(&server)
        .await;
    let mut settings = settings();
    settings.max_response_bytes = 1024;
    settings
        .homeservers
        .insert(HS.to_owned(), Url::parse(&server.uri()).unwrap());
    let client = FederationClient::new(settings.clone()).unwrap();
    let err = client.openid_userinfo(HS, "tok").await.unwrap_err();
    assert!(
        matches!(err, FederationError::TooLarge { limit: 1024, .. }),
        "{err}"
    );

    settings.max_response_bytes = 8192;
    let client = FederationClient::new(settings).unwrap();
    assert_eq!(
        client.openid_userinfo(HS, "tok").await.unwrap(),
        "@a:hs.test"
    );
}

#[tokio::test]
async fn slow_homeservers_time_out() {
    let server = MockServer::start().await;
    Mock::given(path("/_matrix/federation/v1/openid/userinfo"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"sub": "@a:hs.test"}))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let mut settings = settings();
    settings.timeout = Duration::from_millis(300);
    settings
        .homeservers
        .insert(HS.to_owned(), Url::parse(&server.uri()).unwrap());
    let client = FederationClient::new(settings).unwrap();
    let started = std::time::Instant::now();
    let err = client.openid_userinfo(HS, "tok").await.unwrap_err();
    assert!(
        matches!(&err, FederationError::Unreachable { reason, .. } if reason == "timed out"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ----- keys -----

#[tokio::test]
async fn server_keys_are_verified_and_cached() {
    let server = MockServer::start().await;
    let hs_key = key(1);
    mount_keys(&server, key_response(HS, &hs_key, T0 + 10 * 60 * 1000), 1).await;
    let client = client_for(&server, &clock());
    let keys = client.server_keys(HS).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys["ed25519:0"], hs_key.public_key_base64());
    // Second call: from the cache (the mock expects exactly one request).
    assert_eq!(client.server_keys(HS).await.unwrap(), keys);
    server.verify().await;
}

#[tokio::test]
async fn key_cache_follows_valid_until_capped_at_an_hour() {
    let server = MockServer::start().await;
    let hs_key = key(1);
    // valid_until_ts ten minutes ahead: refetched after ten minutes.
    mount_keys(&server, key_response(HS, &hs_key, T0 + 10 * 60 * 1000), 2).await;
    let clock = clock();
    let client = client_for(&server, &clock);
    client.server_keys(HS).await.unwrap();
    clock.advance(10 * 60 * 1000 - 1);
    client.server_keys(HS).await.unwrap();
    clock.advance(1);
    client.server_keys(HS).await.unwrap();
    server.verify().await;

    // valid_until_ts a week ahead: still refetched after an hour.
    let server = MockServer::start().await;
    let week = 7 * 24 * 3600 * 1000;
    mount_keys(&server, key_response(HS, &hs_key, T0 + week), 2).await;
    let clock = self::clock();
    let client = client_for(&server, &clock);
    client.server_keys(HS).await.unwrap();
    clock.advance(KEY_CACHE_MAX_MS - 1);
    client.server_keys(HS).await.unwrap();
    clock.advance(1);
    client.server_keys(HS).await.unwrap();
    server.verify().await;
}

#[test]
fn key_responses_are_checked() {
    let hs_key = key(1);
    let other = key(2);
    let good = key_response(HS, &hs_key, T0 + 1000);
    let set = parse_key_response(HS, &good, T0).unwrap();
    assert_eq!(set.expires_at_ms, T0 + 1000);

    // Another server's name.
    let err = parse_key_response("other.test", &good, T0).unwrap_err();
    assert!(
        matches!(err, FederationError::InvalidResponse { .. }),
        "{err}"
    );

    // Signed by a key that is not among its verify_keys.
    let mut foreign = json!({
        "server_name": HS,
        "verify_keys": {"ed25519:0": {"key": hs_key.public_key_base64()}},
        "valid_until_ts": T0 + 1000,
    });
    sign_json(
        &mut foreign,
        HS,
        &other.clone().with_key_id("ed25519:1").unwrap(),
    )
    .unwrap();
    assert!(matches!(
        parse_key_response(HS, &foreign, T0),
        Err(FederationError::BadSignature { .. })
    ));

    // Tampered after signing.
    let mut tampered = good.clone();
    tampered["valid_until_ts"] = json!(T0 + 999_999_999);
    assert!(matches!(
        parse_key_response(HS, &tampered, T0),
        Err(FederationError::BadSignature { .. })
    ));

    // Signature under the right key id but made by another key.
    let mut forged = json!({
        "server_name": HS,
        "verify_keys": {"ed25519:0": {"key": hs_key.public_key_base64()}},
        "valid_until_ts": T0 + 1000,
    });
    sign_json(&mut forged, HS, &other).unwrap();
    assert!(matches!(
        parse_key_response(HS, &forged, T0),
        Err(FederationError::BadSignature { .. })
    ));

    // Unsigned, or without ed25519 keys, or with a broken key.
    let unsigned = json!({
        "server_name": HS,
        "verify_keys": {"ed25519:0": {"key": hs_key.public_key_base64()}},
        "valid_until_ts": T0 + 1000,
    });
    assert!(parse_key_response(HS, &unsigned, T0).is_err());
    let mut no_keys = json!({"server_name": HS, "verify_keys": {}, "valid_until_ts": T0});
    sign_json(&mut no_keys, HS, &hs_key).unwrap();
    assert!(matches!(
        parse_key_response(HS, &no_keys, T0),
        Err(FederationError::InvalidResponse { .. })
    ));
    let broken = json!({"server_name": HS, "verify_keys": {"ed25519:0": {"key": "AAAA"}}});
    assert!(matches!(
        parse_key_response(HS, &broken, T0),
        Err(FederationError::InvalidResponse { .. })
    ));
}

#[test]
fn old_keys_are_kept_only_until_they_expire() {
    let current = key(1);
    let old_live = key(3);
    let old_dead = key(4);
    let mut response = json!({
        "server_name": HS,
        "verify_keys": {"ed25519:0": {"key": current.public_key_base64()}},
        "old_verify_keys": {
            "ed25519:live": {"key": old_live.public_key_base64(), "expired_ts": T0 + 5000},
            "ed25519:dead": {"key": old_dead.public_key_base64(), "expired_ts": T0 - 1},
            "curve25519:x": {"key": old_live.public_key_base64(), "expired_ts": T0 + 5000},
        },
        "valid_until_ts": T0 + 60_000,
        "unknown_field": true,
    });
    sign_json(&mut response, HS, &current).unwrap();
    let set = parse_key_response(HS, &response, T0).unwrap();
    let mut ids: Vec<&str> = set.keys.keys().map(String::as_str).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["ed25519:0", "ed25519:live"]);
    // The cache ends when the live old key expires.
    assert_eq!(set.expires_at_ms, T0 + 5000);
}

// ----- X-Matrix -----

#[tokio::test]
async fn verify_xmatrix_end_to_end() {
    let server = MockServer::start().await;
    let hs_key = key(1);
    mount_keys(&server, key_response(HS, &hs_key, T0 + 3_600_000), 1).await;
    let client = client_for(&server, &clock());
    let uri = "/_matrix/identity/v2/3pid/unbind";
    let content = json!({"mxid": "@alice:hs.test",
        "threepid": {"medium": "email", "address": "alice@example.org"}});
    let header = sign_request(&hs_key, HS, "POST", uri, IS, Some(&content)).unwrap();

    let origin = client
        .verify_xmatrix(&header, "POST", uri, IS, Some(&content))
        .await
        .unwrap();
    assert_eq!(origin, HS);

    let other = json!({"mxid": "@bob:hs.test", "threepid": content["threepid"].clone()});
    let err = client
        .verify_xmatrix(&header, "POST", uri, IS, Some(&other))
        .await
        .unwrap_err();
    assert!(matches!(err, FederationError::BadAuthorization(_)), "{err}");
    assert!(err.is_authentication_failure());

    let err = client
        .verify_xmatrix(&header, "POST", uri, "another-is.test", Some(&content))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FederationError::BadAuthorization(XMatrixError::WrongDestination { .. })
        ),
        "{err}"
    );
    let err = client
        .verify_xmatrix("Bearer abc", "POST", uri, IS, Some(&content))
        .await
        .unwrap_err();
    assert!(matches!(err, FederationError::BadAuthorization(_)), "{err}");
    // One key fetch for all of the above.
    server.verify().await;
}

#[tokio::test]
async fn verify_xmatrix_accepts_synapse_unbind_signatures() {
    let server = MockServer::start().await;
    let hs_key = key(1);
    mount_keys(&server, key_response(HS, &hs_key, T0 + 3_600_000), 1).await;
    let client = client_for(&server, &clock());
    let uri = "/_matrix/identity/v2/3pid/unbind";
    let content = json!({"mxid": "@alice:hs.test",
        "threepid": {"medium": "email", "address": "alice@example.org"}});
    let mut object =
        crate::matrix::xmatrix::identity_request_json("POST", uri, HS, IS, Some(&content));
    sign_json(&mut object, HS, &hs_key).unwrap();
    let sig = object["signatures"][HS]["ed25519:0"].as_str().unwrap();
    let header =
        format!(r#"X-Matrix origin="{HS}",key="ed25519:0",sig="{sig}",destination="{IS}""#);
    assert_eq!(
        client
            .verify_xmatrix(&header, "POST", uri, IS, Some(&content))
            .await
            .unwrap(),
        HS
    );
}

#[tokio::test]
async fn rotated_keys_are_refetched_at_most_once_a_minute() {
    let server = MockServer::start().await;
    let old = key(1);
    let new = key(2).with_key_id("ed25519:new").unwrap();
    mount_keys(&server, key_response(HS, &old, T0 + 3_600_000), 1).await;
    let clock = clock();
    let client = client_for(&server, &clock);
    assert_eq!(client.server_keys(HS).await.unwrap().len(), 1);

    let uri = "/_matrix/identity/api/v1/replicate_profiles";
    let content = json!({"batch": 1});
    let header = sign_request(&new, HS, "POST", uri, IS, Some(&content)).unwrap();
    // Within the minute: no refetch, unknown key.
    clock.advance(30_000);
    let err = client
        .verify_xmatrix(&header, "POST", uri, IS, Some(&content))
        .await
        .unwrap_err();
    assert!(matches!(err, FederationError::UnknownKey { .. }), "{err}");
    server.verify().await;

    // The server now publishes the new key; after the minute we ask again.
    server.reset().await;
    mount_keys(&server, key_response(HS, &new, T0 + 3_600_000), 1).await;
    clock.advance(30_000);
    assert_eq!(
        client
            .verify_xmatrix(&header, "POST", uri, IS, Some(&content))
            .await
            .unwrap(),
        HS
    );
    server.verify().await;
}

// ----- signed JSON -----

#[tokio::test]
async fn verify_signed_json_checks_the_servers_signature() {
    let server = MockServer::start().await;
    let hs_key = key(1);
    mount_keys(&server, key_response(HS, &hs_key, T0 + 3_600_000), 1).await;
    let client = client_for(&server, &clock());
    let mut body = json!({"batchnum": 7, "original_server": HS,
        "profiles": {"@a:hs.test": {"display_name": "A", "avatar_url": "mxc://hs.test/x"}}});
    sign_json(&mut body, HS, &hs_key).unwrap();
    client.verify_signed_json(&body, HS).await.unwrap();

    let mut tampered = body.clone();
    tampered["batchnum"] = json!(8);
    let err = client.verify_signed_json(&tampered, HS).await.unwrap_err();
    assert!(matches!(err, FederationError::BadSignature { .. }), "{err}");

    // Signed by hs.test, presented as another server's.
    let err = client
        .verify_signed_json(&body, "other.test")
        .await
        .unwrap_err();
    assert!(matches!(err, FederationError::BadSignature { .. }), "{err}");

    let unsigned = json!({"batchnum": 7});
    assert!(client.verify_signed_json(&unsigned, HS).await.is_err());

    // A signature by an unknown key id is not enough on its own.
    let mut stranger = json!({"batchnum": 9});
    sign_json(
        &mut stranger,
        HS,
        &key(5).with_key_id("ed25519:zz").unwrap(),
    )
    .unwrap();
    let err = client.verify_signed_json(&stranger, HS).await.unwrap_err();
    assert!(matches!(err, FederationError::UnknownKey { .. }), "{err}");
}

// ----- onbind and whoami -----

#[tokio::test]
async fn onbind_is_posted() {
    let server = MockServer::start().await;
    let body = json!({"address": "alice@example.org", "medium": "email",
        "mxid": "@alice:hs.test", "invites": []});
    Mock::given(method("POST"))
        .and(path("/_matrix/federation/v1/3pid/onbind"))
        .and(body_json(body.clone()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server, &clock());
    client.post_onbind(HS, &body).await.unwrap();

    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&server)
        .await;
    let err = client.post_onbind(HS, &body).await.unwrap_err();
    assert!(
        matches!(err, FederationError::Status { status: 502, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn whoami_uses_the_bearer_token_on_the_client_url() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/prefix/_matrix/client/v3/account/whoami"))
        .and(bearer_token("syt_good"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"user_id": "@alice:hs.test", "device_id": "D"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/prefix/_matrix/client/v3/account/whoami"))
        .and(bearer_token("syt_bad"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"errcode": "M_UNKNOWN_TOKEN"})),
        )
        .mount(&server)
        .await;
    // The client URL is configuration, trusted like an override (127.0.0.1 here).
    let client = FederationClient::new(settings()).unwrap();
    let client_url = Url::parse(&format!("{}/prefix", server.uri())).unwrap();
    assert_eq!(
        client.whoami(&client_url, "syt_good").await.unwrap(),
        "@alice:hs.test"
    );
    let err = client.whoami(&client_url, "syt_bad").await.unwrap_err();
    assert!(matches!(err, FederationError::InvalidToken { .. }), "{err}");
    let ftp = Url::parse("ftp://hs.test/").unwrap();
    assert!(matches!(
        client.whoami(&ftp, "syt_good").await,
        Err(FederationError::InvalidUrl(_))
    ));
}

// ----- TLS -----

/// A one-request-per-connection HTTPS server with a throwaway CA (rcgen); answers every
/// request with `body`. Returns its port and the CA certificate (PEM).
fn start_tls_server(body: String) -> (u16, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use std::io::{BufRead as _, BufReader, Write as _};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "annuaire test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut reader = BufReader::new(&mut tls);
            let mut complete = false;
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" => {
                        complete = true;
                        break;
                    }
                    Ok(_) => {}
                }
            }
            drop(reader);
            if !complete {
                continue; // e.g. the client refused our certificate
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(response.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (port, ca_cert.pem())
}

#[tokio::test]
async fn https_with_a_private_ca_and_an_allowed_network() {
    let (port, ca_pem) = start_tls_server(json!({"sub": "@alice:127.0.0.1"}).to_string());
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let name = format!("127.0.0.1:{port}");

    // Trusted CA and allowed network: a real HTTPS round trip through resolution.
    let client = FederationClient::new(FederationSettings {
        ca_file: Some(ca_file.clone()),
        allowed_networks: vec!["127.0.0.1/32".parse().unwrap()],
        ..settings()
    })
    .unwrap();
    assert_eq!(
        client.openid_userinfo(&name, "tok").await.unwrap(),
        "@alice:127.0.0.1"
    );

    // Without the CA the certificate is refused.
    let client = FederationClient::new(FederationSettings {
        allowed_networks: vec!["127.0.0.1/32".parse().unwrap()],
        ..settings()
    })
    .unwrap();
    let err = client.openid_userinfo(&name, "tok").await.unwrap_err();
    assert!(
        matches!(&err, FederationError::Unreachable { reason, .. } if reason.contains("certificate")),
        "{err}"
    );

    // Without the allowed network the guard refuses before connecting.
    let client = FederationClient::new(FederationSettings {
        ca_file: Some(ca_file),
        ..settings()
    })
    .unwrap();
    let err = client.openid_userinfo(&name, "tok").await.unwrap_err();
    assert!(matches!(err, FederationError::Forbidden { .. }), "{err}");
}
