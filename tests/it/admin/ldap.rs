//! Admin login with an LDAP bind, against the real slapd of scripts/lib/services.sh (fixture
//! tests/fixtures/ldap/people.ldif: admin.alice and admin.bob are in cn=annuaire-admins,
//! agent.carol is not, but is in cn=support).

use std::path::Path;

use annuaire::admin::LdapLogin;
use annuaire::config::Config;
use serde_json::json;

use super::{audit, call, get, login};
use crate::support::{Builder, TestServer};
use reqwest::Method;

const ALICE: &str = "alice-admin-secret";
const BOB: &str = "bob-admin-secret";
const CAROL: &str = "carol-agent-secret";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the services with `eval \"$(scripts/lib/services.sh start)\"`"
        )
    })
}

fn group(cn: &str) -> String {
    format!("cn={cn},ou=groups,{}", env("TEST_LDAP_BASE_DN"))
}

/// `[ldap]` on the test slapd, and the LDAP login with cn=annuaire-admins as the editors.
fn configure(c: &mut Config, dir: &Path) {
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
    c.admin.ldap_user_filter = Some("(&(objectClass=inetOrgPerson)(uid={username}))".into());
    c.admin.ldap_group = Some(group("annuaire-admins"));
}

/// A rule no allowlist file of the repository has.
fn rule() -> serde_json::Value {
    json!({"kind": "domain", "name": "ldap-login.gouv.example", "homeserver": "agent.test.example"})
}

async fn server(f: impl FnOnce(&mut Config)) -> TestServer {
    Builder::new()
        .config(|c, dir| {
            configure(c, dir);
            f(c);
        })
        .start()
        .await
}

async fn account(s: &TestServer, username: &str) -> Option<annuaire::store::admin::AccountRow> {
    let username = username.to_owned();
    s.app
        .db
        .run(move |conn| annuaire::store::admin::get_account(conn, &username))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_group_member_logs_in_as_editor_and_gets_an_ldap_account() {
    let s = server(|_| {}).await;
    assert!(account(&s, "admin.alice").await.is_none());
    let body = login(&s, "admin.alice", ALICE).await.assert_ok();
    assert_eq!(body["role"], "editor");
    let t = body["access_token"].as_str().unwrap().to_string();
    // The token works like a local one, editing included.
    let created = call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/rules",
        Some(&t),
        Some(&rule()),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let rules = get(&s, "/_annuaire/admin/v1/rules?source=admin", &t)
        .await
        .assert_ok();
    assert_eq!(rules["rules"].as_array().unwrap().len(), 1, "{rules}");
    let created = audit(&s, &t, "?action=rule.create").await;
    assert_eq!(created[0]["actor"], "admin.alice");

    let row = account(&s, "admin.alice").await.unwrap();
    assert_eq!((row.source.as_str(), row.role.as_str()), ("ldap", "editor"));
    assert_eq!(row.password_hash, None);
    assert!(row.last_login_at.is_some());
    let created = audit(&s, &t, "?target=account:admin.alice").await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["action"], "account.create");
    assert_eq!(created[0]["actor"], "system");
    assert_eq!(
        created[0]["after"],
        json!({"username": "admin.alice", "role": "editor", "source": "ldap"})
    );
    // A local account cannot be created over it without removing it first.
    let mut conn = s.app.db.get().unwrap();
    let e = annuaire::admin::accounts::add_account(
        &mut conn,
        "admin.alice",
        annuaire::admin::Role::Editor,
        "a local password",
        &annuaire::admin::Actor::cli("test"),
        s.app.clock.now_ms(),
        &mut rand::rngs::OsRng,
    )
    .unwrap_err();
    assert!(e.to_string().contains("created by an LDAP login"), "{e}");
    drop(conn);
    // A second login reuses the account (no second creation); the case of the name does not
    // matter.
    login(&s, "Admin.Alice", ALICE).await.assert_ok();
    assert_eq!(audit(&s, &t, "?target=account:admin.alice").await.len(), 1);
    // Bob too; logout revokes an LDAP login's token as any other.
    let b = login(&s, "admin.bob", BOB).await.assert_ok();
    let bt = b["access_token"].as_str().unwrap();
    call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/logout",
        Some(bt),
        None,
    )
    .await
    .assert_ok();
    get(&s, "/_annuaire/admin/v1/rules", bt)
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn people_outside_the_groups_wrong_passwords_and_injections_are_refused() {
    let s = server(|c| c.admin.lockout_threshold = 3).await;
    // Carol binds fine, but is in no admin group.
    let r = login(&s, "agent.carol", CAROL).await;
    r.assert_error(403, "M_FORBIDDEN");
    assert!(account(&s, "agent.carol").await.is_none());
    // Nobody by that name; an empty password (an anonymous bind would succeed) is never sent.
    login(&s, "nobody.here", ALICE)
        .await
        .assert_error(403, "M_FORBIDDEN");
    login(&s, "admin.alice", "")
        .await
        .assert_error(403, "M_FORBIDDEN");
    // A filter injection never matches anyone: not through the API...
    for username in ["*)(uid=*", "*", "admin.alice)(uid=*", "admin*"] {
        login(&s, username, ALICE)
            .await
            .assert_error(403, "M_FORBIDDEN");
    }
    // ...nor when the LDAP lookup is asked directly (the API also refuses names no account
    // can have before asking LDAP: this checks the escaping itself).
    let ldap = LdapLogin::from_config(&s.app.config).unwrap().unwrap();
    let settings = annuaire::ldap::LdapSettings::from_config(&s.app.config.ldap)
        .unwrap()
        .unwrap();
    let mut conn = annuaire::ldap::connect(&settings).await.unwrap();
    for username in ["*)(uid=*", "*", "admin*", "admin.alice)(|(uid=*"] {
        assert_eq!(
            ldap.find_dn(&mut conn, username).await.unwrap(),
            None,
            "{username}"
        );
    }
    assert_eq!(
        ldap.find_dn(&mut conn, "admin.alice").await.unwrap(),
        Some(format!(
            "uid=admin.alice,ou=people,{}",
            env("TEST_LDAP_BASE_DN")
        ))
    );
    assert_eq!(
        ldap.user_filter("*)(uid=*"),
        "(&(objectClass=inetOrgPerson)(uid=\\2a\\29\\28uid=\\2a))"
    );

    // Wrong passwords of an admin count toward the lock, like a local account's.
    login(&s, "admin.bob", "not bob's password")
        .await
        .assert_error(403, "M_FORBIDDEN");
    let row = account(&s, "admin.bob").await.unwrap();
    assert_eq!((row.source.as_str(), row.failed_logins), ("ldap", 1));
    login(&s, "admin.bob", "still not it")
        .await
        .assert_error(403, "M_FORBIDDEN");
    let locked = login(&s, "admin.bob", "third time").await;
    locked.assert_error(403, "ANNUAIRE_ACCOUNT_LOCKED");
    assert!(locked.json()["retry_after_ms"].as_u64().unwrap() > 0);
    // Locked: even the right password is refused, without asking LDAP.
    login(&s, "admin.bob", BOB)
        .await
        .assert_error(403, "ANNUAIRE_ACCOUNT_LOCKED");
    // Alice is not affected, and sees the lock in the audit log.
    let t = login(&s, "admin.alice", ALICE).await.assert_ok()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let lock = audit(&s, &t, "?action=account.lock").await;
    assert_eq!(lock[0]["target"], "account:admin.bob");
    assert_eq!(lock[0]["actor"], "system");
}

#[tokio::test]
async fn the_viewer_group_gives_the_viewer_role_and_roles_follow_the_groups() {
    let s = server(|c| c.admin.ldap_viewer_group = Some(group("support"))).await;
    // Carol is in cn=support: a viewer.
    let body = login(&s, "agent.carol", CAROL).await.assert_ok();
    assert_eq!(body["role"], "viewer");
    let t = body["access_token"].as_str().unwrap();
    get(&s, "/_annuaire/admin/v1/rules", t).await.assert_ok();
    call(
        &s,
        Method::POST,
        "/_annuaire/admin/v1/rules",
        Some(t),
        Some(&rule()),
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
    // Alice (in the editors' group) is an editor even if her account says viewer: the role
    // follows the groups at each login, audited.
    login(&s, "admin.alice", ALICE).await.assert_ok();
    let mut conn = s.app.db.get().unwrap();
    annuaire::store::admin::set_account_role(&mut conn, "admin.alice", "viewer", 1).unwrap();
    drop(conn);
    let body = login(&s, "admin.alice", ALICE).await.assert_ok();
    assert_eq!(body["role"], "editor");
    let t = body["access_token"].as_str().unwrap();
    let update = audit(&s, t, "?action=account.update").await;
    assert_eq!(update.len(), 1, "{update:?}");
    assert_eq!(update[0]["before"]["role"], "viewer");
    assert_eq!(update[0]["after"]["role"], "editor");
}

#[tokio::test]
async fn a_local_account_of_the_same_name_wins() {
    let s = server(|_| {}).await;
    super::add_account(&s, "admin.bob", "viewer", "bob's local password");
    // LDAP's password does not open the local account...
    login(&s, "admin.bob", BOB)
        .await
        .assert_error(403, "M_FORBIDDEN");
    // ...its own does, with its own role.
    let body = login(&s, "admin.bob", "bob's local password")
        .await
        .assert_ok();
    assert_eq!(body["role"], "viewer");
    let row = account(&s, "admin.bob").await.unwrap();
    assert_eq!(row.source, "local");
}

#[tokio::test]
async fn an_unreachable_directory_is_a_503_and_local_accounts_still_work() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let s = server(|c| {
        c.ldap.url = Some(format!("ldap://127.0.0.1:{port}"));
        c.ldap.timeout = annuaire::config::HumanDuration(std::time::Duration::from_secs(2));
    })
    .await;
    login(&s, "admin.alice", ALICE)
        .await
        .assert_error(503, "M_UNKNOWN");
    assert!(account(&s, "admin.alice").await.is_none());
    super::add_account(&s, "ed", "editor", super::EDITOR_PASSWORD);
    login(&s, "ed", super::EDITOR_PASSWORD).await.assert_ok();
}

#[tokio::test]
async fn login_works_over_ldaps_and_starttls() {
    let ca = std::path::PathBuf::from(env("TEST_LDAP_CA_FILE"));
    for starttls in [false, true] {
        let ca = ca.clone();
        let s = server(move |c| {
            c.ldap.url = Some(if starttls {
                env("TEST_LDAP_URL")
            } else {
                env("TEST_LDAPS_URL")
            });
            c.ldap.starttls = starttls;
            c.ldap.ca_file = Some(ca);
        })
        .await;
        let body = login(&s, "admin.alice", ALICE).await.assert_ok();
        assert_eq!(body["role"], "editor", "starttls = {starttls}");
        // A wrong password is still a wrong password over TLS.
        login(&s, "admin.bob", "not bob's password")
            .await
            .assert_error(403, "M_FORBIDDEN");
    }
}

#[tokio::test]
async fn login_refuses_a_directory_whose_certificate_is_not_trusted() {
    let s = server(|c| {
        c.ldap.url = Some(env("TEST_LDAPS_URL"));
        c.ldap.ca_file = None;
    })
    .await;
    // The directory cannot be used: 503, never a login.
    login(&s, "admin.alice", ALICE)
        .await
        .assert_error(503, "M_UNKNOWN");
}
