//! What instances keep in memory (access tokens and consents, the lookup pepper, the lookup
//! index) stays true when another instance or the command line changes the database: two
//! `Annuaire` instances on one database, on SQLite and on PostgreSQL.
//!
//! Each test changes something through instance A (or the CLI) after instance B has it in
//! memory, then checks B twice: after B reads the change feed on demand (`sync_now`, which is
//! what its background job does every 200 ms), and, on a fresh change, without any help from
//! the test (the background job alone; the wait has a generous bound and is not a timing
//! assertion).

use std::time::Duration;

use annuaire::matrix::hashing::lookup_hash;
use serde_json::{Value, json};

use crate::identity::{bind_directly, builder, get_auth, post_auth, register};
use crate::support::fixtures::{TERMS, with_terms};
use crate::support::homeserver::Homeserver;
use crate::support::{Builder, Reply, TestServer, eventually};

const V2: &str = "/_matrix/identity/v2";
const PATIENCE: Duration = Duration::from_secs(30);

/// A second instance on the first one's database (and folder).
pub(crate) async fn second_instance(a: &TestServer) -> TestServer {
    let config = (*a.app.config).clone();
    Builder::in_dir(a.dir.clone(), config).start().await
}

/// Waits until the instance's lookup index is ready (lookups and `/info` then come from it).
pub(crate) async fn index_ready(s: &TestServer) -> usize {
    let identity = s.app.identity.clone();
    eventually(PATIENCE, "the lookup index", async || {
        identity.sync_now().await.unwrap();
        identity.lookup_index_size().is_some()
    })
    .await;
    s.app.identity.lookup_index_size().unwrap()
}

async fn status(s: &TestServer, path: &str, token: &str) -> u16 {
    get_auth(s, path, token).await.status
}

async fn pepper(s: &TestServer, token: &str) -> String {
    get_auth(s, &format!("{V2}/hash_details"), token)
        .await
        .assert_ok()["lookup_pepper"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn lookup(s: &TestServer, token: &str, pepper: &str, addresses: &[&str]) -> Reply {
    let hashes: Vec<String> = addresses
        .iter()
        .map(|a| lookup_hash(a, "email", pepper))
        .collect();
    post_auth(
        s,
        &format!("{V2}/lookup"),
        token,
        &json!({"algorithm": "sha256", "pepper": pepper, "addresses": hashes}),
    )
    .await
}

/// The mxid `lookup` finds for `address`, if any.
async fn found(s: &TestServer, token: &str, address: &str) -> Option<String> {
    let pepper = pepper(s, token).await;
    let mappings = lookup(s, token, &pepper, &[address]).await.assert_ok()["mappings"].clone();
    mappings[lookup_hash(address, "email", &pepper)]
        .as_str()
        .map(str::to_owned)
}

/// `/info`'s `hs` for an address.
async fn info_hs(s: &TestServer, address: &str) -> Value {
    let url = reqwest::Url::parse_with_params(
        &s.url("/_matrix/identity/api/v1/info"),
        &[("medium", "email"), ("address", address)],
    )
    .unwrap();
    Reply::from(s.client.get(url).send().await.unwrap())
        .await
        .assert_ok()["hs"]
        .clone()
}

async fn logout(s: &TestServer, token: &str) {
    post_auth(s, &format!("{V2}/account/logout"), token, &json!({}))
        .await
        .assert_ok();
}

#[tokio::test]
async fn a_logout_on_one_instance_is_refused_by_the_other() {
    let hs = Homeserver::start(None);
    let a = builder(&hs).start().await;
    let b = second_instance(&a).await;
    let account = format!("{V2}/account");
    let first = register(&a, &hs, "@a:agent.finances.example").await;
    let second = register(&a, &hs, "@a:agent.finances.example").await;
    // B knows both tokens (in memory once its feed reader has run).
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(status(&b, &account, &first).await, 200);
    assert_eq!(status(&b, &account, &second).await, 200);
    assert_eq!(status(&b, &account, &first).await, 200);

    // Logged out through A: B refuses the token once it has read the feed...
    logout(&a, &first).await;
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(status(&b, &account, &first).await, 401);
    assert_eq!(status(&b, &account, &second).await, 200, "only that token");
    // ...and its own feed reader gets there without help.
    logout(&a, &second).await;
    eventually(PATIENCE, "B refuses the logged-out token", async || {
        status(&b, &account, &second).await == 401
    })
    .await;
    // The instance that logged out refuses at once.
    let third = register(&b, &hs, "@a:agent.finances.example").await;
    assert_eq!(status(&b, &account, &third).await, 200);
    logout(&b, &third).await;
    assert_eq!(status(&b, &account, &third).await, 401);
    assert_eq!(status(&a, &account, &third).await, 401);
}

#[tokio::test]
async fn a_cached_token_still_expires() {
    let hs = Homeserver::start(None);
    let s = builder(&hs)
        .config(|c, _| {
            c.identity.token_lifetime = annuaire::config::HumanDuration(Duration::from_secs(3600))
        })
        .manual_clock(1_800_000_000_000)
        .start()
        .await;
    let token = register(&s, &hs, "@a:agent.finances.example").await;
    s.app.identity.sync_now().await.unwrap();
    let account = format!("{V2}/account");
    assert_eq!(status(&s, &account, &token).await, 200);
    s.clock.as_ref().unwrap().advance(3_600_000);
    assert_eq!(status(&s, &account, &token).await, 401);
}

#[tokio::test]
async fn terms_accepted_on_one_instance_count_on_the_other_and_new_terms_apply() {
    let hs = Homeserver::start(None);
    let a = with_terms(builder(&hs)).start().await;
    let b = second_instance(&a).await;
    let hash_details = format!("{V2}/hash_details");
    let token = register(&a, &hs, "@a:agent.finances.example").await;
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(status(&b, &hash_details, &token).await, 403);
    // Accepted through A: B lets the account in.
    post_auth(
        &a,
        &format!("{V2}/terms"),
        &token,
        &json!({"user_accepts": [
            "https://is.test.example/tos-1.0-en.html",
            "https://is.test.example/privacy-1.0-en.html"
        ]}),
    )
    .await
    .assert_ok();
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(status(&b, &hash_details, &token).await, 200);
    assert_eq!(status(&a, &hash_details, &token).await, 200);

    // A third instance with new terms (a policy's new version) on the same database: the
    // account, known to the others, must accept again there.
    std::fs::write(
        a.dir.path().join("terms-2.toml"),
        TERMS.replace("privacy-1.0-en", "privacy-2.0-en").replacen(
            "[policies.privacy_policy]\nversion = \"1.0\"",
            "[policies.privacy_policy]\nversion = \"2.0\"",
            1,
        ),
    )
    .unwrap();
    let mut config = (*a.app.config).clone();
    config.terms.file = Some(a.dir.path().join("terms-2.toml"));
    let c = Builder::in_dir(a.dir.clone(), config).start().await;
    c.app.identity.sync_now().await.unwrap();
    get_auth(&c, &hash_details, &token)
        .await
        .assert_error(403, "M_TERMS_NOT_SIGNED");
    post_auth(
        &c,
        &format!("{V2}/terms"),
        &token,
        &json!({"user_accepts": ["https://is.test.example/privacy-2.0-en.html"]}),
    )
    .await
    .assert_ok();
    assert_eq!(status(&c, &hash_details, &token).await, 200);
    // B (old terms) sees the account's consent change and still lets it in (it accepted the
    // old terms too).
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(status(&b, &hash_details, &token).await, 200);
}

#[tokio::test]
async fn a_rotated_pepper_reaches_every_instance() {
    let hs = Homeserver::start(None);
    let a = builder(&hs).start().await;
    let b = second_instance(&a).await;
    let token = register(&a, &hs, "@a:agent.finances.example").await;
    bind_directly(
        &a,
        "marie@finances.gouv.example",
        "@marie:agent.finances.example",
    )
    .await;
    assert_eq!(index_ready(&b).await, 1);
    let old = pepper(&b, &token).await;
    assert_eq!(
        found(&b, &token, "marie@finances.gouv.example")
            .await
            .as_deref(),
        Some("@marie:agent.finances.example")
    );

    // The command line rotates (another process).
    let rotate = || {
        let url = a.app.config.database_url();
        let (code, _, err) = crate::support::run_cli(
            a.dir.path(),
            &["keys", "rotate-pepper"],
            &[("ANNUAIRE_DATABASE__URL", url.as_str())],
        );
        assert_eq!(code, 0, "{err}");
    };
    rotate();
    b.app.identity.sync_now().await.unwrap();
    let new = pepper(&b, &token).await;
    assert_ne!(new, old);
    a.app.identity.sync_now().await.unwrap();
    assert_eq!(pepper(&a, &token).await, new, "A too");
    let r = lookup(&b, &token, &old, &["marie@finances.gouv.example"]).await;
    r.assert_error(400, "M_INVALID_PEPPER");
    assert_eq!(r.json()["lookup_pepper"], json!(new));
    // Lookups with the new pepper find the address, from B's rebuilt index too.
    assert_eq!(
        found(&b, &token, "marie@finances.gouv.example")
            .await
            .as_deref(),
        Some("@marie:agent.finances.example")
    );
    assert_eq!(index_ready(&b).await, 1);
    assert_eq!(
        found(&b, &token, "marie@finances.gouv.example")
            .await
            .as_deref(),
        Some("@marie:agent.finances.example")
    );

    // Again, with no help: B's feed reader switches by itself.
    rotate();
    eventually(PATIENCE, "B serves the third pepper", async || {
        pepper(&b, &token).await != new
    })
    .await;
    let third = pepper(&b, &token).await;
    eventually(PATIENCE, "A serves the third pepper", async || {
        pepper(&a, &token).await == third
    })
    .await;
    assert_eq!(index_ready(&b).await, 1);
    assert_eq!(
        found(&b, &token, "marie@finances.gouv.example")
            .await
            .as_deref(),
        Some("@marie:agent.finances.example")
    );
}

#[tokio::test]
async fn binds_unbinds_and_erasures_reach_the_other_instances_index() {
    let hs = Homeserver::start(None);
    let a = builder(&hs).start().await;
    let b = second_instance(&a).await;
    let token = register(&a, &hs, "@a:agent.finances.example").await;
    for i in 0..20 {
        bind_directly(
            &a,
            &format!("agent{i}@finances.gouv.example"),
            &format!("@agent{i}:agent.finances.example"),
        )
        .await;
    }
    assert_eq!(index_ready(&b).await, 20);
    let address = "agent3@finances.gouv.example";
    assert_eq!(
        found(&b, &token, address).await.as_deref(),
        Some("@agent3:agent.finances.example")
    );
    assert_eq!(info_hs(&b, address).await, json!("agent.finances.example"));

    // A rebind to someone on another homeserver (straight into the store, as any bind path
    // does): B's lookups and /info follow.
    bind_directly(&a, address, "@agent3:agent.justice.example").await;
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(
        found(&b, &token, address).await.as_deref(),
        Some("@agent3:agent.justice.example")
    );
    assert_eq!(info_hs(&b, address).await, json!("agent.justice.example"));

    // An unbind through A's API (its own token-authenticated path).
    let owner = register(&a, &hs, "@agent4:agent.finances.example").await;
    let unbind = json!({
        "mxid": "@agent4:agent.finances.example",
        "threepid": {"medium": "email", "address": "agent4@finances.gouv.example"},
    });
    post_auth(&a, &format!("{V2}/3pid/unbind"), &owner, &unbind)
        .await
        .assert_ok();
    assert_eq!(
        found(&a, &token, "agent4@finances.gouv.example").await,
        None,
        "A at once"
    );
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(
        found(&b, &token, "agent4@finances.gouv.example").await,
        None
    );

    // An erasure by an administrator of A.
    let erasure = a
        .app
        .identity
        .erase(
            "email",
            "agent5@finances.gouv.example",
            &annuaire::audit::Actor::startup(),
        )
        .await
        .unwrap();
    assert_eq!(
        erasure.unbound_from.as_deref(),
        Some("@agent5:agent.finances.example")
    );
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(
        found(&b, &token, "agent5@finances.gouv.example").await,
        None
    );

    // A new bind, seen by B's feed reader without help.
    bind_directly(
        &a,
        "newcomer@finances.gouv.example",
        "@newcomer:agent.finances.example",
    )
    .await;
    eventually(PATIENCE, "B finds the newcomer", async || {
        found(&b, &token, "newcomer@finances.gouv.example")
            .await
            .is_some()
    })
    .await;
    // B's index answered all along (not the database): it holds the 20 - 2 + 1 associations.
    assert_eq!(b.app.identity.lookup_index_size(), Some(19));
}

#[tokio::test]
async fn an_instance_that_does_not_read_the_feed_answers_from_the_database() {
    let hs = Homeserver::start(None);
    let a = builder(&hs).start().await;
    // An instance without background jobs (as the command line runs it).
    let config = (*a.app.config).clone();
    let b = annuaire::Annuaire::open(config).await.unwrap();
    let token = register(&a, &hs, "@a:agent.finances.example").await;
    let now = a.app.clock.now_ms();
    assert!(b.identity.authenticate(&token, now).await.is_ok());
    bind_directly(
        &a,
        "marie@finances.gouv.example",
        "@marie:agent.finances.example",
    )
    .await;
    let now = a.app.clock.now_ms();
    assert_eq!(
        b.identity
            .bound_mxid("email", "marie@finances.gouv.example", now)
            .await
            .unwrap()
            .as_deref(),
        Some("@marie:agent.finances.example")
    );
    logout(&a, &token).await;
    assert!(b.identity.authenticate(&token, now).await.is_err());
    assert_eq!(b.identity.lookup_index_size(), None);
}

#[tokio::test]
async fn the_housekeeping_purges_old_feed_rows_and_readers_go_on() {
    use annuaire::store::changes::{self, ChangeKind};
    let hs = Homeserver::start(None);
    let a = builder(&hs).manual_clock(1_800_000_000_000).start().await;
    let b = second_instance(&a).await;
    let old = a.app.clock.now_ms();
    a.app
        .db
        .run(move |conn| {
            changes::record(
                conn,
                &[(ChangeKind::Account, "@old:agent.finances.example")],
                old,
            )
        })
        .await
        .unwrap();
    b.app.identity.sync_now().await.unwrap();
    // Two hours later (the feed keeps an hour), the housekeeping deletes the old row only.
    a.clock.as_ref().unwrap().advance(2 * 3600 * 1000);
    let now = a.app.clock.now_ms();
    a.app
        .db
        .run(move |conn| {
            changes::record(
                conn,
                &[(ChangeKind::Account, "@new:agent.finances.example")],
                now,
            )
        })
        .await
        .unwrap();
    a.app
        .db
        .run(move |conn| annuaire::identity::purge_expired(conn, now))
        .await
        .unwrap();
    let page = a
        .app
        .db
        .run(|conn| changes::after(conn, 0, 100))
        .await
        .unwrap();
    let keys: Vec<&str> = page.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["@new:agent.finances.example"]);
    // Ids are never reused: a reader that had read the old row goes on, and a logout through A
    // still reaches B.
    b.app.identity.sync_now().await.unwrap();
    let token = register(&a, &hs, "@a:agent.finances.example").await;
    let account = format!("{V2}/account");
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(status(&b, &account, &token).await, 200);
    logout(&a, &token).await;
    b.app.identity.sync_now().await.unwrap();
    assert_eq!(status(&b, &account, &token).await, 401);
}
