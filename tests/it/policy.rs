//! Allowlists over HTTP and the CLI: `/info`, `/internal-info`, imports, live reload across
//! instances, attempt counters.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::fixtures::{self, FINANCES, JUSTICE};
use crate::support::{self, Builder, Reply, TestServer, eventually, run_cli};

/// Both ministries' allowlists, in `dir/allowlists`.
fn write_allowlists(dir: &Path) -> std::path::PathBuf {
    fixtures::write_allowlists(dir, &[FINANCES, JUSTICE])
}

fn with_allowlists(b: Builder) -> Builder {
    fixtures::with_allowlists(b, &[FINANCES, JUSTICE])
}

async fn info(s: &TestServer, address: &str) -> Reply {
    let url = reqwest::Url::parse_with_params(
        &s.url("/_matrix/identity/api/v1/info"),
        &[("medium", "email"), ("address", address)],
    )
    .unwrap();
    Reply::from(s.client.get(url).send().await.unwrap()).await
}

async fn internal_info(s: &TestServer, address: &str, forwarded: Option<&str>) -> Reply {
    let url = reqwest::Url::parse_with_params(
        &s.url("/_matrix/identity/api/v1/internal-info"),
        &[("medium", "email"), ("address", address)],
    )
    .unwrap();
    let mut req = s.client.get(url);
    if let Some(f) = forwarded {
        req = req.header("X-Forwarded-For", f);
    }
    Reply::from(req.send().await.unwrap()).await
}

/// What the stock `threepid-checker` Synapse module does with an `/internal-info` answer.
fn threepid_checker_allows(body: &Value, server_name: &str) -> bool {
    let Some(hs) = body.get("hs") else {
        return false;
    };
    if hs != server_name {
        return false;
    }
    let requires = body
        .get("requires_invite")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let invited = body
        .get("invited")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    !requires || invited
}

#[tokio::test]
async fn info_maps_addresses_to_their_shard() {
    let s = with_allowlists(Builder::new()).start().await;
    let b = info(&s, "Jean.Dupont@Impots.Finances.Gouv.Example")
        .await
        .assert_ok();
    assert_eq!(b["hs"], "agent.finances.example");
    assert_eq!(b["shadow_hs"], "public.finances.example");
    assert_eq!(b["decision"], "allowed");
    assert_eq!(b["organisation"], "Finances");
    assert_eq!(b["requires_invite"], false);

    let b = info(&s, "x@justice.gouv.example").await.assert_ok();
    assert_eq!(b["hs"], "agent.justice.example");
    assert!(b.get("shadow_hs").is_none(), "no shadow configured: {b}");

    for denied in ["x@webmail.finances.gouv.example", "someone@unknown.example"] {
        let b = info(&s, denied).await.assert_ok();
        assert_eq!(b["decision"], "denied", "{b}");
        assert!(b.get("hs").is_none(), "a refusal has no hs: {b}");
        assert!(b["reason"].as_str().unwrap().len() > 5, "{b}");
    }
    let b = info(&s, "consultant@partner.example").await.assert_ok();
    assert_eq!(b["decision"], "invite_required");
    assert_eq!(b["requires_invite"], true);
    assert_eq!(b["hs"], "agent.finances.example");
}

#[tokio::test]
async fn outside_callers_see_the_shadow_homeserver_and_no_rule_details() {
    let s = with_allowlists(Builder::new())
        .config(|c, _| c.http.internal_networks = vec!["10.0.0.0/8".parse().unwrap()])
        .start()
        .await;
    let b = info(&s, "jean@finances.gouv.example").await.assert_ok();
    assert_eq!(b["hs"], "public.finances.example");
    assert!(b.get("shadow_hs").is_none(), "{b}");
    let b = info(&s, "jean@webmail.finances.gouv.example")
        .await
        .assert_ok();
    assert!(!b["reason"].as_str().unwrap().contains(".toml"), "{b}");
    // Homeserver-only endpoint.
    internal_info(&s, "jean@finances.gouv.example", None)
        .await
        .assert_error(403, "M_FORBIDDEN");
    // X-Forwarded-For is not believed from an untrusted peer.
    internal_info(&s, "jean@finances.gouv.example", Some("10.1.2.3"))
        .await
        .assert_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn forwarded_for_is_believed_from_trusted_proxies() {
    let s = with_allowlists(Builder::new())
        .config(|c, _| {
            c.http.internal_networks = vec!["10.0.0.0/8".parse().unwrap()];
            c.http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        })
        .start()
        .await;
    let b = internal_info(&s, "jean@finances.gouv.example", Some("10.1.2.3"))
        .await
        .assert_ok();
    assert_eq!(b["hs"], "agent.finances.example");
    internal_info(&s, "jean@finances.gouv.example", Some("203.0.113.9"))
        .await
        .assert_error(403, "M_FORBIDDEN");
    // A client cannot smuggle an internal address in front of its own.
    internal_info(
        &s,
        "jean@finances.gouv.example",
        Some("10.1.2.3, 203.0.113.9"),
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn internal_info_satisfies_the_threepid_checker_contract() {
    let s = with_allowlists(Builder::new())
        .config(|c, _| {
            c.policy.default = annuaire::config::DefaultPolicyName::InviteOnly;
            c.policy.external_homeserver = Some("externes.example".into());
        })
        .start()
        .await;
    let b = internal_info(&s, "jean@finances.gouv.example", None)
        .await
        .assert_ok();
    assert_eq!(b["invited"], false);
    assert!(threepid_checker_allows(&b, "agent.finances.example"));
    assert!(!threepid_checker_allows(&b, "agent.justice.example"));

    let b = internal_info(&s, "someone@unknown.example", None)
        .await
        .assert_ok();
    assert_eq!(b["hs"], "externes.example");
    assert_eq!(b["requires_invite"], true);
    assert_eq!(b["decision"], "invite_required");
    assert!(
        !threepid_checker_allows(&b, "externes.example"),
        "uninvited externals are refused"
    );

    let b = internal_info(&s, "x@webmail.finances.gouv.example", None)
        .await
        .assert_ok();
    assert_eq!(b["decision"], "denied");
    for hs in ["agent.finances.example", "externes.example"] {
        assert!(!threepid_checker_allows(&b, hs));
    }
}

#[tokio::test]
async fn bad_parameters_are_matrix_errors() {
    let s = with_allowlists(Builder::new()).start().await;
    s.get("/_matrix/identity/api/v1/info?medium=email")
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    s.get("/_matrix/identity/api/v1/info?address=a@b.example")
        .await
        .assert_error(400, "M_MISSING_PARAMS");
    s.get("/_matrix/identity/api/v1/info?medium=msisdn&address=33612345678")
        .await
        .assert_error(400, "M_INVALID_PARAM");
    for bad in [
        "nope",
        "Jean <j@finances.gouv.example>",
        "a@b.example,c@d.example",
        "@x.example",
    ] {
        info(&s, bad).await.assert_error(400, "M_INVALID_EMAIL");
    }
    internal_info(&s, "a b@c.example", None)
        .await
        .assert_error(400, "M_INVALID_EMAIL");
    let long = format!("{}@finances.gouv.example", "a".repeat(300));
    info(&s, &long).await.assert_error(400, "M_INVALID_EMAIL");
}

#[tokio::test]
async fn info_is_rate_limited_per_client() {
    let s = with_allowlists(Builder::new())
        .config(|c, _| {
            c.rate_limits.info_per_ip = annuaire::config::RateLimit {
                burst: 2,
                every: annuaire::config::HumanDuration(Duration::from_secs(60)),
            }
        })
        .start()
        .await;
    info(&s, "a@finances.gouv.example").await.assert_ok();
    info(&s, "b@finances.gouv.example").await.assert_ok();
    let r = info(&s, "c@finances.gouv.example").await;
    r.assert_error(429, "M_LIMIT_EXCEEDED");
    assert!(r.json()["retry_after_ms"].as_u64().unwrap() > 1000);
}

fn db_env(s: &TestServer) -> Vec<(&'static str, String)> {
    vec![("ANNUAIRE_DATABASE__URL", s.app.config.database_url())]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn every_instance_sees_a_change_within_seconds() {
    let first = with_allowlists(Builder::new()).start().await;
    // A second instance on the same database.
    let config = (*first.app.config).clone();
    let second = Builder::in_dir(first.dir.clone(), config).start().await;
    for s in [&first, &second] {
        assert_eq!(
            info(s, "x@sante.gouv.example").await.assert_ok()["decision"],
            "denied"
        );
    }
    // An operator adds a ministry with the CLI.
    let lists = first.dir.path().join("allowlists");
    std::fs::write(
        lists.join("sante.toml"),
        "[organisation]\nlabel = \"Santé\"\nhomeserver = \"agent.sante.example\"\n\n[[domain]]\nname = \"sante.gouv.example\"\n",
    )
    .unwrap();
    let env = db_env(&first);
    let work = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(
        work.path(),
        &["allowlist", "import", lists.to_str().unwrap()],
        &env_refs(&env),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("+ sante.toml:5 domain rule sante.gouv.example"),
        "{out}"
    );
    assert!(out.contains("1 added, 0 changed, 0 removed"), "{out}");
    for s in [&first, &second] {
        eventually(Duration::from_secs(5), "the new rule applies", async || {
            info(s, "x@sante.gouv.example").await.json()["hs"] == "agent.sante.example"
        })
        .await;
    }
}

#[tokio::test]
async fn refused_attempts_are_counted_per_domain() {
    let s = with_allowlists(Builder::new()).start().await;
    for _ in 0..3 {
        internal_info(&s, "someone@knocking.example", None)
            .await
            .assert_ok();
    }
    internal_info(&s, "other@knocking.example", None)
        .await
        .assert_ok();
    internal_info(&s, "jean@finances.gouv.example", None)
        .await
        .assert_ok();
    internal_info(&s, "consultant@partner.example", None)
        .await
        .assert_ok();
    s.app.shutdown().await;
    let counts = s
        .app
        .db
        .run(|c| annuaire::store::policy::attempts_since(c, 0, 10))
        .await
        .unwrap();
    let knocking = counts
        .iter()
        .find(|c| c.domain == "knocking.example")
        .unwrap();
    assert_eq!((knocking.outcome.as_str(), knocking.count), ("denied", 4));
    let partner = counts
        .iter()
        .find(|c| c.domain == "partner.example")
        .unwrap();
    assert_eq!(
        (partner.outcome.as_str(), partner.count),
        ("invite_required", 1)
    );
    assert!(
        !counts.iter().any(|c| c.domain == "finances.gouv.example"),
        "allowed is not counted"
    );
    let m = s.get("/metrics").await.text;
    assert!(
        m.contains(
            "annuaire_policy_decisions_total{endpoint=\"internal_info\",outcome=\"denied\"}"
        ),
        "{m}"
    );
}

#[tokio::test]
async fn imports_leave_admin_rules_alone_and_refuse_duplicates() {
    let s = with_allowlists(Builder::new()).start().await;
    // An administrator's rule (the admin API will create these).
    let mut rule = annuaire::policy::Rule::new(
        annuaire::policy::RuleKind::Domain,
        annuaire::policy::RuleTarget::Domain {
            name: "culture.gouv.example".into(),
            subdomains: false,
        },
        annuaire::policy::RuleSource::Admin,
    );
    rule.homeserver = Some("agent.culture.example".into());
    let stored = rule.clone();
    s.app
        .db
        .run(move |c| {
            annuaire::store::policy::insert_rule(c, &stored, 1)?;
            annuaire::store::policy::bump_generation(c, 1)
        })
        .await
        .unwrap();
    let env = db_env(&s);
    let work = tempfile::tempdir().unwrap();
    let lists = s.dir.path().join("allowlists");
    std::fs::remove_file(lists.join("justice.toml")).unwrap();
    let (code, out, err) = run_cli(
        work.path(),
        &["allowlist", "import", "--dry-run", lists.to_str().unwrap()],
        &env_refs(&env),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("- justice.toml:6 domain rule justice.gouv.example"),
        "{out}"
    );
    assert!(out.contains("dry run"), "{out}");
    let (code, out, _) = run_cli(
        work.path(),
        &["allowlist", "list", "--json"],
        &env_refs(&env),
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("justice.gouv.example"),
        "dry run changed nothing: {out}"
    );

    let (code, out, err) = run_cli(
        work.path(),
        &["allowlist", "import", lists.to_str().unwrap()],
        &env_refs(&env),
    );
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = run_cli(work.path(), &["allowlist", "list"], &env_refs(&env));
    assert!(!out.contains("justice.gouv.example"), "{out}");
    assert!(
        out.contains("culture.gouv.example"),
        "admin rule kept: {out}"
    );
    assert!(out.contains("admin:"), "{out}");

    // A file rule equal to the admin rule is refused, naming both.
    std::fs::write(
        lists.join("culture.toml"),
        "[organisation]\nhomeserver = \"agent.culture.example\"\n\n[[domain]]\nname = \"culture.gouv.example\"\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(
        work.path(),
        &["allowlist", "import", lists.to_str().unwrap()],
        &env_refs(&env),
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("culture.toml:4"), "{err}");
    assert!(err.contains("admin:"), "{err}");
}

#[tokio::test]
async fn export_then_import_changes_nothing() {
    let s = with_allowlists(Builder::new()).start().await;
    let env = db_env(&s);
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("exported");
    let (code, out, err) = run_cli(
        work.path(),
        &["allowlist", "export", out_dir.to_str().unwrap()],
        &env_refs(&env),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out_dir.join("finances.toml").is_file());
    let (code, _, err) = run_cli(
        work.path(),
        &["allowlist", "export", out_dir.to_str().unwrap()],
        &env_refs(&env),
    );
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "{err}");
    // The exported files decide like the originals.
    let (_, a, _) = run_cli(
        work.path(),
        &[
            "allowlist",
            "check",
            "--json",
            "--allowlists",
            out_dir.to_str().unwrap(),
            "j@x.finances.gouv.example",
            "c@partner.example",
        ],
        &[],
    );
    let (_, b, _) = run_cli(
        work.path(),
        &[
            "allowlist",
            "check",
            "--json",
            "j@x.finances.gouv.example",
            "c@partner.example",
        ],
        &env_refs(&env),
    );
    let outcomes = |text: &str| -> Vec<(String, String)> {
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["outcome"].to_string(), v["homeserver"].to_string())
            })
            .collect()
    };
    assert_eq!(outcomes(&a), outcomes(&b));
    assert_eq!(outcomes(&a).len(), 2);
}

#[test]
fn check_explains_addresses_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let lists = write_allowlists(dir.path());
    let (code, out, err) = run_cli(
        dir.path(),
        &[
            "allowlist",
            "check",
            "--allowlists",
            lists.to_str().unwrap(),
            "--json",
            "Jean@FINANCES.gouv.example",
            "not an address",
            "x@webmail.finances.gouv.example",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["address"], "jean@finances.gouv.example");
    assert_eq!(lines[0]["outcome"], "allowed");
    assert_eq!(lines[0]["homeserver"], "agent.finances.example");
    assert_eq!(lines[0]["shadow_homeserver"], "public.finances.example");
    assert_eq!(lines[0]["organisation"], "Finances");
    assert_eq!(lines[0]["rule"], "finances.toml:7");
    assert_eq!(lines[1]["outcome"], "invalid");
    assert!(lines[1]["reason"].as_str().unwrap().len() > 3);
    assert_eq!(lines[2]["outcome"], "denied");
    assert_eq!(lines[2]["homeserver"], Value::Null);
    assert_eq!(lines[2]["rule"], "finances.toml:11");
    // Text form.
    let (code, out, _) = run_cli(
        dir.path(),
        &[
            "allowlist",
            "check",
            "--allowlists",
            lists.to_str().unwrap(),
            "someone@unknown.example",
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.contains("someone@unknown.example: denied"), "{out}");
    // A broken file is an error naming file and line.
    std::fs::write(
        lists.join("broken.toml"),
        "[[domain]]\nname = \"x.example\"\nsubdomain = true\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(
        dir.path(),
        &[
            "allowlist",
            "check",
            "--allowlists",
            lists.to_str().unwrap(),
            "a@x.example",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("broken.toml:3"), "{err}");
}

#[test]
fn serve_refuses_to_start_with_a_broken_allowlist() {
    let dir = tempfile::tempdir().unwrap();
    let lists = write_allowlists(dir.path());
    std::fs::write(
        lists.join("broken.toml"),
        "[[domain]]\nname = \"gmail.com\"\nhomeserver = \"x.example\"\n",
    )
    .unwrap();
    let url = support::fresh_url_for_binary();
    let mut env = vec![("ANNUAIRE_HTTP__BIND", "127.0.0.1:0")];
    if let Some(u) = &url {
        env.push(("ANNUAIRE_DATABASE__URL", u.as_str()));
    }
    let (code, _, err) = run_cli(dir.path(), &["serve"], &env);
    assert_ne!(code, 0);
    assert!(err.contains("broken.toml:1"), "{err}");
    assert!(err.contains("gmail.com"), "{err}");
}

/// Codes every kind of decision, on a deployment whose unknown domains go to the externals.
const CODES: (&str, &str) = (
    "codes.toml",
    r#"
[organisation]
label = "Partenaires"
homeserver = "agent.partenaires.example"

[[domain]]
name = "partenaire.example"
requires_invite = true

[[domain]]
name = "ancien-partenaire.example"
expires_at = 2020-01-01T00:00:00Z

[[deny]]
email = "blocked.person@finances.gouv.example"
"#,
);

#[tokio::test]
async fn every_answer_with_a_decision_carries_its_reason_code() {
    for (default, unknown_decision) in [("deny", "denied"), ("invite_only", "invite_required")] {
        let s = crate::admin::start(Builder::new().config(move |c, dir| {
            c.policy.allowlists_dir = fixtures::write_allowlists(dir, &[FINANCES, JUSTICE, CODES]);
            if default == "invite_only" {
                c.policy.default = annuaire::config::DefaultPolicyName::InviteOnly;
                c.policy.external_homeserver = Some("externes.example".into());
            }
        }))
        .await;
        let cases = [
            ("jean@finances.gouv.example", "allowed", "allowed"),
            (
                "paul@partenaire.example",
                "invite_required",
                "invite_required",
            ),
            ("x@webmail.finances.gouv.example", "denied", "denied_domain"),
            (
                "blocked.person@finances.gouv.example",
                "denied",
                "denied_address",
            ),
            (
                "someone@unknown.example",
                unknown_decision,
                "unknown_domain",
            ),
            (
                "someone@gmail.com",
                unknown_decision,
                "public_mail_provider",
            ),
            (
                "old@ancien-partenaire.example",
                unknown_decision,
                "rule_expired",
            ),
        ];
        for (address, decision, code) in cases {
            for body in [
                info(&s, address).await.assert_ok(),
                internal_info(&s, address, None).await.assert_ok(),
            ] {
                assert_eq!(body["decision"], decision, "{default}: {address}: {body}");
                assert_eq!(body["reason_code"], code, "{default}: {address}: {body}");
            }
        }
        // The admin explainer, with the same codes.
        let token = crate::admin::editor(&s).await;
        for (address, _, code) in cases {
            let url = reqwest::Url::parse_with_params(
                &s.url("/_annuaire/admin/v1/explain"),
                &[("address", address)],
            )
            .unwrap();
            let r = Reply::from(s.client.get(url).bearer_auth(&token).send().await.unwrap()).await;
            assert_eq!(r.assert_ok()["decision"]["reason_code"], code, "{address}");
        }
    }
}

#[tokio::test]
async fn a_refused_request_token_says_why_in_a_code() {
    let s = crate::validation::base(Builder::new()).start().await;
    for (address, code) in [
        ("someone@unknown.example", "unknown_domain"),
        ("someone@gmail.com", "public_mail_provider"),
        ("x@webmail.finances.gouv.example", "denied_domain"),
    ] {
        let r = crate::validation::request(&s, address, "secret", 1).await;
        r.assert_error(403, "M_THREEPID_DENIED");
        let body = r.json();
        assert_eq!(body["decision"], "denied", "{address}: {body}");
        assert_eq!(body["reason_code"], code, "{address}: {body}");
    }
}
