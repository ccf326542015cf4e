//! `annuaire import sydent`, run as the binary against the backend under test:
//! - against a database the real Sydent 2.6.1 wrote (`scripts/sydent/env.sh record`: an address
//!   validated and bound through its v2 API, an invitation stored), annuaire's answers after the
//!   import are compared with Sydent's;
//! - against Sydent databases of both schemas (mainline 2.6.1, Tchap's dinsic) filled here with
//!   rows as Sydent writes them: what is imported and what is not, idempotence, dry runs, the
//!   signing key rules;
//! - against files that are not Sydent databases.
//!
//! The real-Sydent fixture comes from `TEST_SYDENT_FIXTURE` (scripts/test records it once per
//! run), else this test records it with the harness. It is skipped, loudly, only when neither
//! is possible and `TEST_SYDENT=not-installed` says so.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use annuaire::clock::Clock as _;
use annuaire::identity::associations::Association;
use annuaire::matrix::keys::canonical_public_key;
use annuaire::matrix::signing::{SigningKey, sign_json, verify_json};
use annuaire::store::{Db, DbConn};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use crate::support::{self, Builder, run_cli};

// ---- the real Sydent ----

/// The folder with `sydent.db`, `sydent.conf` and `expected.json`, or `None` (skip).
fn real_sydent_fixture() -> Option<PathBuf> {
    static FIXTURE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            if let Ok(dir) = std::env::var("TEST_SYDENT_FIXTURE") {
                let dir = PathBuf::from(dir);
                for file in ["sydent.db", "sydent.conf", "expected.json"] {
                    assert!(
                        dir.join(file).is_file(),
                        "TEST_SYDENT_FIXTURE={} has no {file}: run scripts/sydent/env.sh record DIR",
                        dir.display()
                    );
                }
                return Some(dir);
            }
            if std::env::var("TEST_SYDENT").as_deref() == Ok("not-installed") {
                eprintln!(
                    "\n*** SKIPPED: the real-Sydent import test: TEST_SYDENT=not-installed and no \
                     TEST_SYDENT_FIXTURE (scripts/test records one with scripts/sydent/env.sh) ***\n"
                );
                return None;
            }
            // Recorded once per test process, kept for its lifetime.
            let dir = tempfile::tempdir().unwrap().keep();
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sydent/env.sh");
            let out = std::process::Command::new(&script)
                .arg("record")
                .arg(&dir)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{} record failed (set TEST_SYDENT=not-installed to skip this test where Sydent \
                 cannot be installed):\n{}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Some(dir)
        })
        .clone()
}

/// Runs `annuaire import sydent` in `dir` on the database at `url`; returns (code, stdout,
/// stderr).
fn import(dir: &Path, url: &str, server_name: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["import", "sydent"];
    all.extend_from_slice(args);
    run_cli(
        dir,
        &all,
        &[
            ("ANNUAIRE_DATABASE__URL", url),
            ("ANNUAIRE_SERVER__NAME", server_name),
        ],
    )
}

/// Runs the import with `--json` and returns the summary.
fn import_json(dir: &Path, url: &str, server_name: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = import(dir, url, server_name, &all);
    assert_eq!(code, 0, "import failed:\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {out}"))
}

/// Puts an allowlist giving `domain` (and its subdomains) to the organisation `label` in the
/// database at `url`, as `annuaire allowlist import` does.
fn allow_domain(dir: &Path, url: &str, domain: &str, label: &str) {
    let folder = dir.join("allowlists");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("agencies.toml"),
        format!(
            "[organisation]\nlabel = \"{label}\"\nhomeserver = \"hs.example\"\n\n\
             [[domain]]\nname = \"{domain}\"\nsubdomains = true\n"
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(
        dir,
        &["allowlist", "import", folder.to_str().unwrap()],
        &[("ANNUAIRE_DATABASE__URL", url)],
    );
    assert_eq!(code, 0, "allowlist import failed:\n{out}\n{err}");
}

/// A terms file for annuaire with the policies Sydent published (same URLs).
fn terms_toml(terms: &Value) -> String {
    let mut text = String::from("version = \"from-sydent\"\n");
    for (name, policy) in terms["policies"].as_object().unwrap() {
        text.push_str(&format!(
            "\n[policies.{name}]\nversion = {}\n",
            policy["version"]
        ));
        for (lang, doc) in policy.as_object().unwrap() {
            if lang != "version" {
                text.push_str(&format!(
                    "{lang} = {{ name = {}, url = {} }}\n",
                    doc["name"], doc["url"]
                ));
            }
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_the_real_sydent_after_import() {
    let Some(fixture) = real_sydent_fixture() else {
        return;
    };
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
            .unwrap();
    let answers = &expected["answers"];
    let server_name = expected["server_name"].as_str().unwrap().to_string();
    let token = expected["access_token"].as_str().unwrap().to_string();

    let mut url = String::new();
    let builder = Builder::new().config(|c, dir| {
        c.server.name = server_name.clone();
        let terms = dir.join("terms.toml");
        std::fs::write(&terms, terms_toml(&answers["terms"])).unwrap();
        c.terms.file = Some(terms);
        url = c.database.url.clone().unwrap();
    });
    allow_domain(builder.dir(), &url, "sydent-import.example", "Import");
    // Sydent's database is only read: import the recorded one directly.
    let db = fixture.join("sydent.db");
    let conf = fixture.join("sydent.conf");
    let summary = import_json(
        builder.dir(),
        &url,
        &server_name,
        &[
            "--db",
            db.to_str().unwrap(),
            "--sydent-config",
            conf.to_str().unwrap(),
        ],
    );
    assert_eq!(summary["schema"], "mainline", "{summary}");
    assert_eq!(summary["user_version"], 5, "{summary}");
    assert_eq!(summary["signing_key"], "imported", "{summary}");
    assert_eq!(summary["pepper"], "created", "{summary}");
    assert_eq!(summary["associations"]["new"], 1, "{summary}");
    assert_eq!(summary["associations"]["verified"], 1, "{summary}");
    assert_eq!(summary["accounts"]["new"], 1, "{summary}");
    assert_eq!(summary["tokens"]["new"], 1, "{summary}");
    assert_eq!(summary["accepted_terms"]["new"], 1, "{summary}");
    assert_eq!(summary["invites"]["new"], 1, "{summary}");
    assert_eq!(summary["invites"]["with_ephemeral_key"], 1, "{summary}");
    assert_eq!(summary["directory"]["new"], 1, "{summary}");
    assert_eq!(summary["warnings"], json!([]), "{summary}");

    let server = builder.start().await;
    let c = &server.client;
    let get = |path: String| {
        let req = c.get(server.url(&path)).bearer_auth(&token);
        async move { support::Reply::from(req.send().await.unwrap()).await }
    };
    let post = |path: &str, body: &Value| {
        let req = c.post(server.url(path)).bearer_auth(&token).json(body);
        async move { support::Reply::from(req.send().await.unwrap()).await }
    };

    // Sydent's access token still works, and its account accepted the terms.
    let account = get("/_matrix/identity/v2/account".into()).await.assert_ok();
    assert_eq!(account, answers["account"]);

    // Hashed lookups: the same pepper, the same answers.
    let details = get("/_matrix/identity/v2/hash_details".into())
        .await
        .assert_ok();
    assert_eq!(
        details["lookup_pepper"],
        answers["hash_details"]["lookup_pepper"]
    );
    let mut ours: Vec<&str> = details["algorithms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut theirs: Vec<&str> = answers["hash_details"]["algorithms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ours.sort_unstable();
    theirs.sort_unstable();
    assert_eq!(ours, theirs);
    for name in ["lookup_sha256", "lookup_none"] {
        let recorded = &answers[name];
        let got = post("/_matrix/identity/v2/lookup", &recorded["request"])
            .await
            .assert_ok();
        assert_eq!(got, recorded["response"], "{name}");
    }

    // Keys: the same long-term key, valid; the invitation's ephemeral key still valid.
    let pubkey = get("/_matrix/identity/v2/pubkey/ed25519:0".into())
        .await
        .assert_ok();
    assert_eq!(pubkey, answers["pubkey"]);
    let public_key = pubkey["public_key"].as_str().unwrap();
    let enc = |s: &str| s.replace('+', "%2B").replace('/', "%2F");
    let valid = get(format!(
        "/_matrix/identity/v2/pubkey/isvalid?public_key={}",
        enc(public_key)
    ))
    .await
    .assert_ok();
    assert_eq!(valid, answers["pubkey_isvalid"]);
    let ephemeral = answers["store_invite"]["public_keys"][1]["public_key"]
        .as_str()
        .unwrap();
    let valid = get(format!(
        "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key={}",
        enc(ephemeral)
    ))
    .await
    .assert_ok();
    assert_eq!(valid, answers["ephemeral_isvalid"]);
    let valid = get(format!(
        "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key={}",
        enc(public_key)
    ))
    .await
    .assert_ok();
    assert_eq!(valid, answers["ephemeral_isvalid_unknown"]);

    // The invitation: signing with the ephemeral private key Sydent mailed gives Sydent's
    // answer, byte for byte.
    let signed = post(
        "/_matrix/identity/v2/sign-ed25519",
        &json!({
            "mxid": expected["user_id"],
            "token": answers["store_invite"]["token"],
            "private_key": expected["ephemeral_private_key"],
        }),
    )
    .await
    .assert_ok();
    assert_eq!(signed, answers["sign_ed25519"]);
    let invite_token = answers["store_invite"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let invite = server
        .app
        .db
        .run(move |conn| annuaire::store::invites::invite_by_token(conn, &invite_token))
        .await
        .unwrap()
        .expect("the invitation was imported");
    assert_eq!(
        invite.address,
        expected["invited_address"].as_str().unwrap()
    );
    assert_eq!(invite.room_id, expected["room_id"].as_str().unwrap());
    assert_eq!(invite.sender, expected["user_id"].as_str().unwrap());
    assert_eq!(
        invite.ephemeral_public_key,
        canonical_public_key(ephemeral).unwrap()
    );
    assert!(invite.delivery_mxid.is_none());

    // A signature Sydent made verifies with annuaire's published key, and annuaire, signing
    // the imported association, makes exactly Sydent's.
    for name in ["bind", "v1_lookup"] {
        verify_json(&answers[name], &server_name, "ed25519:0", public_key)
            .unwrap_or_else(|e| panic!("Sydent's {name} answer does not verify: {e}"));
    }
    let address = expected["bound_address"].as_str().unwrap().to_string();
    let row = server
        .app
        .db
        .run(move |conn| annuaire::store::identity::association(conn, "email", &address))
        .await
        .unwrap()
        .expect("the association was imported");
    let association = Association {
        medium: row.medium,
        address: row.address,
        mxid: row.mxid,
        ts: row.created_at,
        not_before: row.not_before,
        not_after: row.not_after,
    };
    let resigned = association
        .to_signed_json(&server_name, &server.app.identity.signing_key())
        .unwrap();
    assert_eq!(resigned, answers["bind"]);

    // The user is in the directory, as a bind in annuaire puts them there.
    let user_id = expected["user_id"].as_str().unwrap();
    let entry = server
        .app
        .directory
        .entry(user_id)
        .await
        .unwrap()
        .expect("a directory entry");
    assert_eq!(entry.organisation.as_deref(), Some("Import"));
}

// ---- Sydent databases filled here ----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Schema {
    Mainline,
    Dinsic,
}

const OWN: &str = "sydent.test.example";
const PEER: &str = "peer.test.example";

/// A Sydent database of `schema` in `dir`, with rows as Sydent writes them (see the module
/// doc of `annuaire::identity::import_sydent`). Returns (database, sydent.conf, own key).
fn sydent_database(dir: &Path, schema: Schema, now_ms: i64) -> (PathBuf, PathBuf, SigningKey) {
    let mut rng = StdRng::seed_from_u64(11);
    let own = SigningKey::generate(&mut rng);
    let old_own = SigningKey::generate(&mut rng);
    let peer = SigningKey::generate(&mut rng);
    let path = dir.join(match schema {
        Schema::Mainline => "sydent-mainline.db",
        Schema::Dinsic => "sydent-dinsic.db",
    });
    let sql = match schema {
        Schema::Mainline => include_str!("../fixtures/sydent/mainline-v5.sql"),
        Schema::Dinsic => include_str!("../fixtures/sydent/dinsic-v10.sql"),
    };
    let mut db = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    db.batch_execute(sql).unwrap();

    let lifetime = 100 * 365 * 24 * 3600 * 1000_i64;
    let signed = |medium: &str,
                  address: &str,
                  mxid: &str,
                  ts: i64,
                  not_after: i64,
                  by: &SigningKey,
                  as_: &str| {
        let mut v = json!({
            "medium": medium, "address": address, "mxid": mxid,
            "ts": ts, "not_before": ts, "not_after": not_after,
        });
        sign_json(&mut v, as_, by).unwrap();
        // Sydent stores json.dumps of it: not canonical.
        serde_json::to_string_pretty(&v).unwrap()
    };
    let q = |s: &str| s.replace('\'', "''");
    let mut stmts = Vec::new();
    let mut local_id = 0;
    let mut bind =
        |address: &str, mxid: &str, ts: i64, key: &SigningKey, stmts: &mut Vec<String>| {
            local_id += 1;
            stmts.push(format!(
            "INSERT INTO local_threepid_associations (id, medium, address, mxid, ts, notBefore, \
             notAfter) VALUES ({local_id}, 'email', '{}', '{}', {ts}, {ts}, {})",
            q(address),
            q(mxid),
            ts + lifetime
        ));
            stmts.push(format!(
                "INSERT INTO global_threepid_associations (medium, address, mxid, ts, notBefore, \
             notAfter, originServer, originId, sgAssoc) VALUES ('email', '{}', '{}', {ts}, {ts}, \
             {}, '{OWN}', {local_id}, '{}')",
                q(address),
                q(mxid),
                ts + lifetime,
                q(&signed("email", address, mxid, ts, ts + lifetime, key, OWN))
            ));
        };
    // Sydent's own binds; one signed by an earlier key of Sydent's; one stored before Sydent
    // case-folded the domain.
    bind(
        "alice@example.org",
        "@alice:hs.example",
        now_ms - 10_000,
        &own,
        &mut stmts,
    );
    bind(
        "carol@example.org",
        "@carol:hs.example",
        now_ms - 9_000,
        &old_own,
        &mut stmts,
    );
    bind(
        "Bob@EXAMPLE.org",
        "@bob:hs.example",
        now_ms - 8_000,
        &own,
        &mut stmts,
    );
    bind(
        "frank@example.org",
        "@frank:hs.example",
        now_ms - 7_000,
        &own,
        &mut stmts,
    );
    bind(
        "henri@example.org",
        "@henri:hs.example",
        now_ms - 6_000,
        &own,
        &mut stmts,
    );
    // An unbind: the local row stays without mxid, the global one is deleted.
    stmts.push(format!(
        "INSERT INTO local_threepid_associations (medium, address, mxid, ts, notBefore, notAfter) \
         VALUES ('email', 'gone@example.org', NULL, {}, NULL, NULL)",
        now_ms - 5_000
    ));
    // A peer, and what it replicated: a good one, a newer bind of frank's address, a forged
    // one (signed by someone else), one of a server without a key here, and an msisdn.
    let peer_key = match schema {
        // dinsic deployments kept hex keys longer: Sydent reads both.
        Schema::Dinsic => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(peer.public_key_base64())
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        }
        Schema::Mainline => peer.public_key_base64(),
    };
    stmts.push(format!(
        "INSERT INTO peers (name, port, active) VALUES ('{PEER}', 443, 1)"
    ));
    stmts.push(format!(
        "INSERT INTO peer_pubkeys (peername, alg, key) VALUES ('{PEER}', 'ed25519', '{peer_key}')"
    ));
    let mut origin_id = 0;
    let mut replicated = |address: &str,
                          mxid: &str,
                          ts: i64,
                          origin: &str,
                          by: &SigningKey,
                          medium: &str| {
        origin_id += 1;
        format!(
            "INSERT INTO global_threepid_associations (medium, address, mxid, ts, notBefore, \
             notAfter, originServer, originId, sgAssoc) VALUES ('{medium}', '{}', '{}', {ts}, {ts}, \
             {}, '{origin}', {origin_id}, '{}')",
            q(address),
            q(mxid),
            ts + lifetime,
            q(&signed(
                medium,
                address,
                mxid,
                ts,
                ts + lifetime,
                by,
                origin
            ))
        )
    };
    stmts.push(replicated(
        "dave@example.org",
        "@dave:hs2.example",
        now_ms - 4_000,
        PEER,
        &peer,
        "email",
    ));
    stmts.push(replicated(
        "frank@example.org",
        "@frank:hs2.example",
        now_ms - 3_000,
        PEER,
        &peer,
        "email",
    ));
    stmts.push(replicated(
        "eve@example.org",
        "@eve:hs2.example",
        now_ms - 2_000,
        PEER,
        &own,
        "email",
    ));
    stmts.push(replicated(
        "mallory@example.org",
        "@mallory:hs3.example",
        now_ms - 1_000,
        "stranger.example",
        &peer,
        "email",
    ));
    stmts.push(replicated(
        "33612345678",
        "@phone:hs2.example",
        now_ms - 1_000,
        PEER,
        &peer,
        "msisdn",
    ));
    stmts.push("INSERT INTO hashing_metadata (id, lookup_pepper) VALUES (0, 'pEpR5')".into());
    // Accounts: alice's, with a token and accepted terms; a token of no account.
    stmts.push(format!(
        "INSERT INTO accounts (user_id, created_ts, consent_version) VALUES \
         ('@alice:hs.example', {}, '1.0')",
        now_ms - 20_000
    ));
    stmts.push(
        "INSERT INTO tokens (token, user_id) VALUES ('alice-sydent-token', '@alice:hs.example')"
            .into(),
    );
    stmts.push(
        "INSERT INTO tokens (token, user_id) VALUES ('orphan-token', '@nobody:hs.example')".into(),
    );
    stmts.push("INSERT INTO accepted_terms_urls (user_id, url) VALUES ('@alice:hs.example', 'https://is.example/terms-en.html')".into());
    // Invitations (seconds): a pending one with its key; one handed over already; one three
    // weeks old; dinsic: one replicated from the peer with its replicated key.
    let secs = now_ms / 1000;
    let key_of = |seed: u64| {
        use base64::Engine as _;
        let k = SigningKey::generate(&mut StdRng::seed_from_u64(seed)).public_key_base64();
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(k)
            .unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let (origin_cols, origin_local) = match schema {
        Schema::Dinsic => (", origin_server", ", NULL"),
        Schema::Mainline => ("", ""),
    };
    for (n, address, received, sent) in [
        (1, "Invitee@Example.org", secs - 60, "NULL".to_string()),
        (
            2,
            "delivered@example.org",
            secs - 50,
            (secs - 40).to_string(),
        ),
        (
            3,
            "old@example.org",
            secs - 21 * 24 * 3600,
            "NULL".to_string(),
        ),
    ] {
        stmts.push(format!(
            "INSERT INTO ephemeral_public_keys (public_key, persistence_ts{origin_cols}) VALUES \
             ('{}', {received}{origin_local})",
            key_of(100 + n)
        ));
        stmts.push(format!(
            "INSERT INTO invite_tokens (medium, address, room_id, sender, token, received_ts, \
             sent_ts{origin_cols}) VALUES ('email', '{}', '!room{n}:hs.example', \
             '@alice:hs.example', 'invite-token-{n}', {received}, {sent}{origin_local})",
            address.to_lowercase()
        ));
    }
    if schema == Schema::Dinsic {
        stmts.push(format!(
            "INSERT INTO ephemeral_public_keys (public_key, persistence_ts, origin_server, \
             origin_id) VALUES ('{}', {}, '{PEER}', 7)",
            key_of(104),
            secs - 30
        ));
        stmts.push(format!(
            "INSERT INTO invite_tokens (medium, address, room_id, sender, token, received_ts, \
             origin_server, origin_id) VALUES ('email', 'replicated@example.org', \
             '!room4:hs2.example', '@dave:hs2.example', 'invite-token-4', {}, '{PEER}', 9)",
            secs - 29
        ));
        stmts.push(
            "INSERT INTO profiles (user_id, display_name, origin_server, batch) VALUES \
             ('@alice:hs.example', 'Alice', 'hs.example', 1)"
                .into(),
        );
    }
    db.batch_execute(&stmts.join(";\n")).unwrap();

    let conf = dir.join("sydent.conf");
    std::fs::write(
        &conf,
        format!(
            "[general]\nserver.name = {OWN}\n\n[db]\ndb.file = {}\n\n[crypto]\n\
             ed25519.signingkey = {}\n",
            path.display(),
            own.to_sydent_string()
        ),
    )
    .unwrap();
    (path, conf, own)
}

/// Every row of the tables the import writes, as text, sorted: "changes nothing" is equality.
fn snapshot(url: &str) -> Vec<String> {
    let db = Db::connect(url, 1, std::time::Duration::from_secs(10)).unwrap();
    let mut conn = db.get().unwrap();
    let queries = [
        "SELECT 'a|' || medium || '|' || address || '|' || mxid || '|' || CAST(created_at AS TEXT) \
         || '|' || CAST(not_before AS TEXT) || '|' || CAST(not_after AS TEXT) AS row FROM associations",
        "SELECT 'h|' || CAST(pepper_id AS TEXT) || '|' || lookup_hash || '|' || address AS row \
         FROM association_hashes",
        "SELECT 'u|' || user_id || '|' || CAST(created_at AS TEXT) || '|' || \
         COALESCE(consent_version, '-') AS row FROM identity_accounts",
        "SELECT 't|' || token_hash || '|' || user_id || '|' || CAST(expires_at AS TEXT) AS row \
         FROM identity_tokens",
        "SELECT 'c|' || user_id || '|' || url AS row FROM identity_accepted_terms",
        "SELECT 'i|' || token || '|' || address || '|' || room_id || '|' || sender || '|' || \
         ephemeral_public_key || '|' || CAST(created_at AS TEXT) || '|' || \
         CAST(expires_at AS TEXT) AS row FROM invites",
        "SELECT 'k|' || public_key || '|' || CAST(created_at AS TEXT) AS row \
         FROM imported_ephemeral_keys",
        "SELECT 's|' || key || '|' || value AS row FROM instance_state WHERE key <> 'database_id'",
        "SELECT 'd|' || mxid || '|' || name || '|' || COALESCE(organisation, '-') || '|' || \
         email_key || '|' || CAST(created_at AS TEXT) AS row FROM directory_entries",
    ];
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        row: String,
    }
    let mut rows = Vec::new();
    for sql in queries {
        let found: Vec<Row> =
            annuaire::db_dispatch!(&mut *conn, c => diesel::sql_query(sql).load(c).unwrap());
        rows.extend(found.into_iter().map(|r| r.row));
    }
    rows.sort();
    rows
}

fn conn_for(url: &str) -> (Db, annuaire::store::PooledConn) {
    let db = Db::connect(url, 1, std::time::Duration::from_secs(10)).unwrap();
    db.migrate().unwrap();
    let conn = db.get().unwrap();
    (db, conn)
}

/// Binds an address in annuaire as its own binds do (hashed under pepper #1, "old-pepper").
fn bind_in_annuaire(conn: &mut DbConn, address: &str, mxid: &str, ts: i64) {
    use annuaire::store::identity as store;
    annuaire::store::state::get_or_insert(
        conn,
        "lookup_pepper",
        r#"{"id":1,"value":"old-pepper"}"#,
        ts,
    )
    .unwrap();
    store::upsert_association(
        conn,
        &store::AssociationRow {
            medium: "email".into(),
            address: address.into(),
            mxid: mxid.into(),
            created_at: ts,
            not_before: ts,
            not_after: ts + 1_000_000_000,
        },
    )
    .unwrap();
    let hash = annuaire::matrix::hashing::lookup_hash(address, "email", "old-pepper");
    store::insert_hashes(conn, &[(1, hash, "email".into(), address.into())]).unwrap();
}

async fn imports_a_filled_database(schema: Schema) {
    let now = annuaire::clock::SystemClock.now_ms();
    let mut url = String::new();
    let builder = Builder::new().config(|c, _| {
        c.server.name = OWN.into();
        url = c.database.url.clone().unwrap();
    });
    let dir = builder.dir().to_path_buf();
    let (db, conf, own) = sydent_database(&dir, schema, now);
    let args = [
        "--db",
        db.to_str().unwrap(),
        "--sydent-config",
        conf.to_str().unwrap(),
    ];
    allow_domain(&dir, &url, "example.org", "Exemple");
    // annuaire already knows two addresses: one Sydent unbound since, one bound anew here.
    {
        let (_db, mut conn) = conn_for(&url);
        bind_in_annuaire(
            &mut conn,
            "gone@example.org",
            "@gone:hs.example",
            now - 60_000,
        );
        bind_in_annuaire(&mut conn, "henri@example.org", "@henri:hs9.example", now);
    }

    // A dry run writes nothing, and says what a real run does.
    let before = snapshot(&url);
    let mut dry_args = args.to_vec();
    dry_args.push("--dry-run");
    let dry = import_json(&dir, &url, OWN, &dry_args);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(snapshot(&url), before, "the dry run wrote something");

    let first = import_json(&dir, &url, OWN, &args);
    assert_eq!(first["dry_run"], false);
    for part in [
        "associations",
        "directory",
        "accounts",
        "tokens",
        "accepted_terms",
        "invites",
        "ephemeral_keys",
    ] {
        assert_eq!(dry[part], first[part], "{part}: the dry run said otherwise");
    }
    let want_schema = match schema {
        Schema::Mainline => "mainline",
        Schema::Dinsic => "dinsic",
    };
    assert_eq!(first["schema"], want_schema, "{first}");
    assert_eq!(first["signing_key"], "imported");
    assert_eq!(
        first["pepper"]["rotated"]["rehashed"], 2,
        "annuaire's pepper had to go, its two associations rehashed: {first}"
    );
    assert_eq!(dry["pepper"], first["pepper"]);
    let a = &first["associations"];
    assert_eq!(a["read_local"], 6, "{a}");
    assert_eq!(a["read_global"], 10, "{a}");
    // alice, bob, frank, henri (own), dave and frank's newer bind (peer), the msisdn's.
    assert_eq!(a["verified"], 7, "{a}");
    assert_eq!(
        a["own_unverified"], 1,
        "carol's was signed by an older key: {a}"
    );
    assert_eq!(
        a["unverified"], 2,
        "eve's forged one, mallory's of an unknown server: {a}"
    );
    assert_eq!(a["other_medium"], 1, "{a}");
    // alice, bob, carol (local row), dave, frank, henri.
    assert_eq!(a["addresses"], 6, "{a}");
    assert_eq!(a["new"], 5, "{a}");
    assert_eq!(a["kept_newer"], 1, "henri's bind in annuaire is newer: {a}");
    assert_eq!(a["removed"], 1, "gone@ was unbound in Sydent: {a}");
    // alice, bob, carol, dave, and frank's newer bind; henri's address is annuaire's newer
    // bind's, whose user has their entry from it.
    assert_eq!(
        first["directory"],
        json!({"new": 5, "unchanged": 0, "denied": 0, "invalid_user_id": 0})
    );
    assert_eq!(first["warnings"], json!([]), "{first}");
    assert_eq!(first["accounts"]["new"], 1);
    assert_eq!(first["tokens"]["new"], 1);
    assert_eq!(first["tokens"]["skipped"], 1, "the token of no account");
    assert_eq!(first["accepted_terms"]["new"], 1);
    let i = &first["invites"];
    let replicated = u64::from(schema == Schema::Dinsic);
    assert_eq!(i["new"], 1 + replicated, "{i}");
    assert_eq!(i["with_ephemeral_key"], 1 + replicated, "{i}");
    assert_eq!(i["delivered"], 1, "{i}");
    assert_eq!(i["expired"], 1, "{i}");
    assert_eq!(first["ephemeral_keys"]["new"], 3 + replicated);
    if schema == Schema::Dinsic {
        let not: Vec<String> = serde_json::from_value(first["not_imported"].clone()).unwrap();
        assert!(
            not.iter().any(|n| n.contains("1 Tchap profiles")),
            "{not:?}"
        );
    }

    // A second run changes nothing.
    let imported = snapshot(&url);
    assert_ne!(imported, before);
    let second = import_json(&dir, &url, OWN, &args);
    assert_eq!(snapshot(&url), imported, "the second run changed something");
    assert_eq!(second["signing_key"], "unchanged");
    assert_eq!(second["pepper"], "unchanged");
    let a2 = &second["associations"];
    assert_eq!(a2["new"], 0, "{a2}");
    assert_eq!(a2["updated"], 0, "{a2}");
    assert_eq!(a2["removed"], 0, "{a2}");
    assert_eq!(a2["unchanged"], 5, "{a2}");
    for part in ["accounts", "tokens", "accepted_terms", "ephemeral_keys"] {
        assert_eq!(second[part]["new"], 0, "{part}");
        assert_eq!(second[part]["unchanged"], first[part]["new"], "{part}");
    }
    assert_eq!(second["invites"]["new"], 0);
    assert_eq!(second["directory"]["new"], 0);
    assert_eq!(second["directory"]["unchanged"], 5);

    // What the imported data answers.
    let server = builder.start().await;
    assert_eq!(
        server.app.identity.signing_key().public_key_base64(),
        own.public_key_base64()
    );
    let frank = server
        .app
        .directory
        .entry("@frank:hs2.example")
        .await
        .unwrap()
        .expect("frank's latest bind gives him an entry");
    assert_eq!(frank.organisation.as_deref(), Some("Exemple"));
    assert!(
        server
            .app
            .directory
            .entry("@frank:hs.example")
            .await
            .unwrap()
            .is_none(),
        "frank's earlier bind was replaced"
    );
    let token = "alice-sydent-token";
    let r = server
        .client
        .get(server.url("/_matrix/identity/v2/hash_details"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let details = support::Reply::from(r).await.assert_ok();
    assert_eq!(details["lookup_pepper"], "pEpR5");
    let ask: Vec<String> = [
        "alice@example.org",
        "bob@example.org",
        "carol@example.org",
        "dave@example.org",
        "frank@example.org",
        "henri@example.org",
        "eve@example.org",
        "mallory@example.org",
        "gone@example.org",
    ]
    .iter()
    .map(|a| format!("{a} email"))
    .collect();
    let r = server
        .client
        .post(server.url("/_matrix/identity/v2/lookup"))
        .bearer_auth(token)
        .json(&json!({"algorithm": "none", "pepper": "pEpR5", "addresses": ask}))
        .send()
        .await
        .unwrap();
    let found = support::Reply::from(r).await.assert_ok();
    assert_eq!(
        found["mappings"],
        json!({
            "alice@example.org email": "@alice:hs.example",
            "bob@example.org email": "@bob:hs.example",
            "carol@example.org email": "@carol:hs.example",
            "dave@example.org email": "@dave:hs2.example",
            "frank@example.org email": "@frank:hs2.example",
            "henri@example.org email": "@henri:hs9.example",
        })
    );
    // Hashed the same way annuaire's own binds are: found by the spec's hash.
    let hash = annuaire::matrix::hashing::lookup_hash("bob@example.org", "email", "pEpR5");
    let r = server
        .client
        .post(server.url("/_matrix/identity/v2/lookup"))
        .bearer_auth(token)
        .json(&json!({"algorithm": "sha256", "pepper": "pEpR5", "addresses": [hash]}))
        .send()
        .await
        .unwrap();
    let found = support::Reply::from(r).await.assert_ok();
    assert_eq!(found["mappings"][&hash], "@bob:hs.example");
    // annuaire's own association, rehashed under Sydent's pepper.
    let henri = annuaire::matrix::hashing::lookup_hash("henri@example.org", "email", "pEpR5");
    let r = server
        .client
        .post(server.url("/_matrix/identity/v2/lookup"))
        .bearer_auth(token)
        .json(&json!({"algorithm": "sha256", "pepper": "pEpR5", "addresses": [henri]}))
        .send()
        .await
        .unwrap();
    let found = support::Reply::from(r).await.assert_ok();
    assert_eq!(found["mappings"][&henri], "@henri:hs9.example");
    // Every Sydent ephemeral key stays valid, the delivered invitation's included.
    for seed in [101, 102, 103] {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(seed)).public_key_base64();
        let r = server
            .get(&format!(
                "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key={}",
                key.replace('+', "%2B").replace('/', "%2F")
            ))
            .await;
        assert_eq!(r.assert_ok(), json!({"valid": true}), "key {seed}");
    }
    let pending = server
        .app
        .db
        .run(|conn| {
            annuaire::store::invites::invites_to_address(conn, "email", "invitee@example.org")
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].token, "invite-token-1");
    assert_eq!(
        pending[0].ephemeral_public_key,
        SigningKey::generate(&mut StdRng::seed_from_u64(101)).public_key_base64()
    );
    assert_eq!(pending[0].created_at, (now / 1000 - 60) * 1000);
}

/// An import into the database of a running instance: its in-memory lookup index follows, told
/// by the change feed (no restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_instance_follows_an_import() {
    let now = annuaire::clock::SystemClock.now_ms();
    let mut url = String::new();
    let builder = Builder::new().config(|c, _| {
        c.server.name = OWN.into();
        url = c.database.url.clone().unwrap();
    });
    let dir = builder.dir().to_path_buf();
    let (db, conf, _own) = sydent_database(&dir, Schema::Mainline, now);
    allow_domain(&dir, &url, "example.org", "Exemple");
    // annuaire already uses Sydent's pepper (as after an earlier import): only the feed's
    // "every association" change can tell the running instance that associations arrived.
    {
        let (_db, mut conn) = conn_for(&url);
        annuaire::identity::lookup::adopt_pepper(&mut conn, "pEpR5", 1000, now, &mut |_, _| {})
            .unwrap();
    }
    let server = builder.start().await;
    support::eventually(
        std::time::Duration::from_secs(30),
        "the lookup index",
        async || server.app.identity.lookup_index_size().is_some(),
    )
    .await;
    assert_eq!(server.app.identity.lookup_index_size(), Some(0));

    let summary = import_json(
        &dir,
        &url,
        OWN,
        &[
            "--db",
            db.to_str().unwrap(),
            "--sydent-config",
            conf.to_str().unwrap(),
            // The running instance made its own key at start.
            "--replace-signing-key",
        ],
    );
    let imported = summary["associations"]["new"].as_u64().unwrap();
    assert!(imported > 0, "{summary}");

    // Sydent's pepper and associations, through the running instance's memory.
    let token = "alice-sydent-token";
    let hash = annuaire::matrix::hashing::lookup_hash("bob@example.org", "email", "pEpR5");
    support::eventually(
        std::time::Duration::from_secs(30),
        "the imported binding",
        async || {
            let r = server
                .client
                .post(server.url("/_matrix/identity/v2/lookup"))
                .bearer_auth(token)
                .json(&json!({"algorithm": "sha256", "pepper": "pEpR5", "addresses": [hash]}))
                .send()
                .await
                .unwrap();
            let found = support::Reply::from(r).await;
            found.status == 200
                && serde_json::from_str::<Value>(&found.text).unwrap()["mappings"][&hash]
                    == "@bob:hs.example"
        },
    )
    .await;
    assert_eq!(summary["pepper"], "unchanged", "{summary}");
    // The index holds everything imported.
    let imported = usize::try_from(imported).unwrap();
    support::eventually(
        std::time::Duration::from_secs(30),
        "the index rebuilt",
        async || server.app.identity.lookup_index_size() == Some(imported),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_a_mainline_database_once() {
    imports_a_filled_database(Schema::Mainline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_a_dinsic_database_once() {
    imports_a_filled_database(Schema::Dinsic).await;
}

#[test]
fn signing_key_conflicts_are_refused_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let url = support::database_url(dir.path());
    let now = annuaire::clock::SystemClock.now_ms();
    let (db, conf, own) = sydent_database(dir.path(), Schema::Mainline, now);
    let mine = SigningKey::generate(&mut StdRng::seed_from_u64(99));
    {
        let (_db, mut conn) = conn_for(&url);
        annuaire::store::state::set(&mut conn, "signing_key", &mine.to_sydent_string(), now)
            .unwrap();
    }
    let before = snapshot(&url);
    let args = [
        "--db",
        db.to_str().unwrap(),
        "--sydent-config",
        conf.to_str().unwrap(),
    ];
    let (code, out, err) = import(dir.path(), &url, OWN, &args);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--replace-signing-key"), "{err}");
    assert!(err.contains(&mine.public_key_base64()), "{err}");
    assert_eq!(snapshot(&url), before, "a refused import wrote something");

    let mut replace = args.to_vec();
    replace.push("--replace-signing-key");
    let summary = import_json(dir.path(), &url, OWN, &replace);
    assert_eq!(summary["signing_key"], "replaced");
    let (_db, mut conn) = conn_for(&url);
    assert_eq!(
        annuaire::store::state::get(&mut conn, "signing_key").unwrap(),
        Some(own.to_sydent_string())
    );

    // server.signing_key_file: it must already hold Sydent's key.
    let file = dir.path().join("signing.key");
    std::fs::write(&file, format!("{}\n", mine.to_sydent_string())).unwrap();
    let mut all = vec!["import", "sydent"];
    all.extend_from_slice(&args);
    let (code, out, err) = run_cli(
        dir.path(),
        &all,
        &[
            ("ANNUAIRE_DATABASE__URL", url.as_str()),
            ("ANNUAIRE_SERVER__SIGNING_KEY_FILE", file.to_str().unwrap()),
        ],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("server.signing_key_file holds another key"),
        "{err}"
    );
    std::fs::write(&file, format!("{}\n", own.to_sydent_string())).unwrap();
    let (code, out, err) = run_cli(
        dir.path(),
        &all,
        &[
            ("ANNUAIRE_DATABASE__URL", url.as_str()),
            ("ANNUAIRE_SERVER__SIGNING_KEY_FILE", file.to_str().unwrap()),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("already in server.signing_key_file"), "{out}");
}

/// annuaire's key after `keys rotate-signing` (another key id than Sydent's `ed25519:0`) stays
/// published as a retired key when Sydent's replaces it; a retired key under Sydent's key id
/// refuses the import.
#[test]
fn a_replaced_key_under_another_id_stays_published() {
    let dir = tempfile::tempdir().unwrap();
    let url = support::database_url(dir.path());
    let now = annuaire::clock::SystemClock.now_ms();
    let (db, conf, own) = sydent_database(dir.path(), Schema::Mainline, now);
    assert_eq!(own.key_id(), "ed25519:0");
    let rotated = SigningKey::generate(&mut StdRng::seed_from_u64(98))
        .with_key_id("ed25519:1")
        .unwrap();
    {
        let (_db, mut conn) = conn_for(&url);
        annuaire::store::state::set(&mut conn, "signing_key", &rotated.to_sydent_string(), now)
            .unwrap();
    }
    let args = [
        "--db",
        db.to_str().unwrap(),
        "--sydent-config",
        conf.to_str().unwrap(),
        "--replace-signing-key",
    ];
    let summary = import_json(dir.path(), &url, OWN, &args);
    assert_eq!(summary["signing_key"], "replaced");
    let (_db, mut conn) = conn_for(&url);
    assert_eq!(
        annuaire::store::state::get(&mut conn, "signing_key").unwrap(),
        Some(own.to_sydent_string())
    );
    let retired = annuaire::store::keys::retired_key(&mut conn, "ed25519:1")
        .unwrap()
        .expect("annuaire's replaced key is retired");
    assert_eq!(retired.public_key, rotated.public_key_base64());
    // Again: nothing changes.
    assert_eq!(
        import_json(dir.path(), &url, OWN, &args)["signing_key"],
        "unchanged"
    );

    // Another database whose retired ed25519:0 is not Sydent's key: refused, nothing written.
    let other = tempfile::tempdir().unwrap();
    let other_url = support::database_url(other.path());
    let old = SigningKey::generate(&mut StdRng::seed_from_u64(97));
    {
        let (_db, mut conn) = conn_for(&other_url);
        annuaire::store::keys::insert_retired_key(
            &mut conn,
            &annuaire::store::keys::RetiredKeyRow {
                key_id: "ed25519:0".into(),
                public_key: old.public_key_base64(),
                retired_at: now,
            },
        )
        .unwrap();
        annuaire::store::state::set(&mut conn, "signing_key", &rotated.to_sydent_string(), now)
            .unwrap();
    }
    let before = snapshot(&other_url);
    let (code, out, err) = import(other.path(), &other_url, OWN, &args);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("retired another key under Sydent's key id ed25519:0"),
        "{err}"
    );
    assert_eq!(
        snapshot(&other_url),
        before,
        "a refused import wrote something"
    );
}

#[test]
fn refuses_files_that_are_not_sydent_databases() {
    let dir = tempfile::tempdir().unwrap();
    let url = support::database_url(dir.path());
    let random = dir.path().join("random.db");
    let mut bytes = vec![0u8; 8192];
    rand::RngCore::fill_bytes(&mut StdRng::seed_from_u64(3), &mut bytes);
    std::fs::write(&random, &bytes).unwrap();
    let unrelated = dir.path().join("unrelated.db");
    let mut other = SqliteConnection::establish(unrelated.to_str().unwrap()).unwrap();
    other
        .batch_execute(
            "CREATE TABLE accounts (user_id TEXT PRIMARY KEY); \
             INSERT INTO accounts VALUES ('@a:hs');",
        )
        .unwrap();
    drop(other);
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    for (file, says) in [
        (
            &random,
            "is not a Sydent database: it is not an SQLite file",
        ),
        (&empty, "is not a Sydent database: it is not an SQLite file"),
        (&unrelated, "is not a Sydent database: it has no table"),
        (&dir.path().join("missing.db"), "no such file"),
    ] {
        let (code, out, err) = import(dir.path(), &url, OWN, &["--db", file.to_str().unwrap()]);
        assert_eq!(code, 2, "{}: {out}{err}", file.display());
        assert!(err.contains(says), "{}: {err}", file.display());
        assert!(out.is_empty(), "{out}");
    }
    // annuaire's database was not even opened.
    match support::backend() {
        support::Backend::Sqlite => assert!(!dir.path().join("annuaire.db").exists()),
        support::Backend::Postgres => {
            let (_db, mut conn) = conn_for(&url);
            assert_eq!(
                annuaire::store::state::get(&mut conn, "signing_key").unwrap(),
                None
            );
        }
    }
}
