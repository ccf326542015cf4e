//! Unit tests of the configuration: defaults, errors naming their key, the example file.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = Config::load_from(None, &[]).unwrap();
    assert_eq!(c.server.name, "localhost:8090");
    assert_eq!(c.http.bind.to_string(), "127.0.0.1:8090");
    assert_eq!(c.database_url(), "sqlite://var/annuaire.db");
    assert_eq!(c.public_base_url(), "http://127.0.0.1:8090");
    assert_eq!(c.http.max_body, ByteSize(1 << 20));
}

#[test]
fn environment_overrides_nested_keys() {
    let c = Config::load_from(
        None,
        &env(&[
            ("ANNUAIRE_DATABASE__URL", "postgres://u@h/db"),
            ("ANNUAIRE_HTTP__BIND", "0.0.0.0:9000"),
            ("ANNUAIRE_HTTP__INTERNAL_NETWORKS", "[\"10.0.0.0/8\"]"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.database_url(), "postgres://u@h/db");
    assert_eq!(c.http.bind.port(), 9000);
    assert_eq!(c.http.internal_networks.len(), 1);
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let e = Config::from_toml("[http]\nbindd = \"1.2.3.4:5\"\n").unwrap_err();
    assert!(e.0.contains("bindd"), "{e}");
    assert!(e.0.contains("http"), "{e}");
    let e = Config::load_from(None, &env(&[("ANNUAIRE_HTTP__NOPE", "1")])).unwrap_err();
    assert!(e.0.contains("nope"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let e = Config::from_toml("[http]\nbind = \"nowhere\"\n").unwrap_err();
    assert!(e.0.contains("http.bind"), "{e}");
    let e = Config::from_toml("[http]\nmax_body = \"1 parsec\"\n").unwrap_err();
    assert!(e.0.contains("http.max_body"), "{e}");
    let e = Config::from_toml("[server]\nname = \"a b\"\n").unwrap_err();
    assert!(e.0.contains("server.name"), "{e}");
    let e = Config::from_toml("[database]\nurl = \"mysql://x\"\n").unwrap_err();
    assert!(e.0.contains("database.url"), "{e}");
    let e = Config::from_toml("[database]\nconnection_timeout = \"soon\"\n").unwrap_err();
    assert!(e.0.contains("database.connection_timeout"), "{e}");
}

#[test]
fn data_dir_moves_the_relative_defaults() {
    let c = Config::from_toml("[server]\ndata_dir = \"/srv/annuaire\"\n").unwrap();
    assert_eq!(c.database_url(), "sqlite:///srv/annuaire/annuaire.db");
}

#[test]
fn policy_keys() {
    let c = Config::load_from(None, &[]).unwrap();
    assert_eq!(c.policy.allowlists_dir, PathBuf::from("allowlists"));
    assert_eq!(c.policy.default, DefaultPolicyName::Deny);
    let e = Config::from_toml("[policy]\ndefault = \"invite_only\"\n").unwrap_err();
    assert!(e.0.contains("policy.external_homeserver"), "{e}");
    let c = Config::from_toml(
        "[policy]\ndefault = \"invite_only\"\nexternal_homeserver = \"ext.example\"\n",
    )
    .unwrap();
    assert_eq!(
        c.policy.default_policy(),
        crate::policy::DefaultPolicy::InviteOnly {
            external_homeserver: "ext.example".into()
        }
    );
    let e = Config::from_toml("[policy]\ndefault = \"maybe\"\n").unwrap_err();
    assert!(e.0.contains("policy.default"), "{e}");
    let e =
        Config::from_toml("[rate_limits.info_per_ip]\nburst = 0\nevery = \"1s\"\n").unwrap_err();
    assert!(e.0.contains("rate_limits.info_per_ip.burst"), "{e}");
}

#[test]
fn validation_and_mail_defaults() {
    let c = Config::load_from(None, &[]).unwrap();
    assert!(c.identity.require_auth);
    assert_eq!(c.validation.token_lifetime.0, Duration::from_secs(86_400));
    assert_eq!(c.validation.session_lifetime.0, Duration::from_secs(86_400));
    assert!(c.validation.require_allowed);
    assert!(c.validation.next_link_hosts.is_empty());
    assert_eq!(c.mail.transport, MailTransportKind::File);
    assert_eq!(c.mail_file_dir(), PathBuf::from("var/mail"));
    assert_eq!(c.mail.default_language, Language::FR);
    assert_eq!(c.mail.smtp.security, SmtpSecurity::StartTls);
    assert_eq!(c.mail.outbox.initial_backoff.0, Duration::from_secs(5));
    assert_eq!(c.mail.outbox.max_backoff.0, Duration::from_secs(600));
    assert_eq!(c.mail.outbox.max_attempts, 20);
    assert_eq!(c.rate_limits.request_token_per_address.burst, 5);
    assert_eq!(
        c.rate_limits.request_token_per_address.every.0,
        Duration::from_secs(300)
    );
    let c = Config::from_toml("[server]\ndata_dir = \"/srv/a\"\n").unwrap();
    assert_eq!(c.mail_file_dir(), PathBuf::from("/srv/a/mail"));
    let c = Config::from_toml("[mail.file]\ndir = \"/tmp/m\"\n").unwrap();
    assert_eq!(c.mail_file_dir(), PathBuf::from("/tmp/m"));
}

#[test]
fn validation_and_mail_errors_name_the_key() {
    for (toml, key) in [
        ("[identity]\nrequire_auth = 1\n", "identity.require_auth"),
        (
            "[validation]\ntoken_lifetime = \"10s\"\n",
            "validation.token_lifetime",
        ),
        (
            "[validation]\nsession_lifetime = \"0s\"\n",
            "validation.session_lifetime",
        ),
        (
            "[validation]\npurge_interval = \"0s\"\n",
            "validation.purge_interval",
        ),
        (
            "[validation]\nnext_link_hosts = [\"http://x\"]\n",
            "validation.next_link_hosts",
        ),
        (
            "[validation]\nnext_link_hosts = [\"x:80\"]\n",
            "validation.next_link_hosts",
        ),
        (
            "[validation]\nnext_link_hosts = [\"Host\"]\n",
            "validation.next_link_hosts",
        ),
        (
            "[validation]\nrequire_allowed = \"yes\"\n",
            "validation.require_allowed",
        ),
        ("[mail]\ntransport = \"pigeon\"\n", "mail.transport"),
        ("[mail]\nfrom = \"not an address\"\n", "mail.from"),
        (
            "[mail]\ndefault_language = \"german\"\n",
            "mail.default_language",
        ),
        ("[mail.smtp]\nsecurity = \"ssl\"\n", "mail.smtp.security"),
        ("[mail.smtp]\nport = 0\n", "mail.smtp.port"),
        ("[mail.smtp]\nusername = \"u\"\n", "mail.smtp.username"),
        ("[mail.smtp]\npassword = \"p\"\n", "mail.smtp.username"),
        (
            "[mail.smtp]\nusername = \"u\"\npassword = \"p\"\npassword_file = \"/f\"\n",
            "mail.smtp.password_file",
        ),
        ("[mail.smtp]\ntimeout = \"1h\"\n", "mail.smtp.timeout"),
        (
            "[mail.outbox]\nmax_attempts = 0\n",
            "mail.outbox.max_attempts",
        ),
        (
            "[mail.outbox]\nmax_backoff = \"1s\"\n",
            "mail.outbox.max_backoff",
        ),
        (
            "[mail.outbox]\ninitial_backoff = \"0s\"\n",
            "mail.outbox.initial_backoff",
        ),
        (
            "[mail.outbox]\npoll_interval = \"1ms\"\n",
            "mail.outbox.poll_interval",
        ),
        ("[mail.outbox]\nretries = 3\n", "retries"),
        (
            "[rate_limits.request_token_per_address]\nburst = 0\nevery = \"1s\"\n",
            "rate_limits.request_token_per_address.burst",
        ),
        (
            "[rate_limits.request_token_per_ip]\nburst = 1\nevery = \"0s\"\n",
            "rate_limits.request_token_per_ip.every",
        ),
        ("[web]\ntemplates = \"x\"\n", "templates"),
    ] {
        let e = Config::from_toml(toml).unwrap_err();
        assert!(e.0.contains(key), "{toml}: {e}");
    }
    let ok = Config::from_toml(
        "[validation]\nnext_link_hosts = [\"localhost\", \"[::1]\", \"dev.example\"]\n\
         [mail]\nfrom = \"Annuaire <noreply@id.example.gouv.fr>\"\n",
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn smtp_password_comes_from_the_file_and_is_not_debug_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\nignored\n").unwrap();
    let c = Config::from_toml(&format!(
        "[mail.smtp]\nusername = \"u\"\npassword_file = \"{}\"\n",
        file.display()
    ))
    .unwrap();
    assert_eq!(
        c.mail.smtp.read_password().unwrap().as_deref(),
        Some("s3cret")
    );
    let c = Config::from_toml("[mail.smtp]\nusername = \"u\"\npassword = \"hunter2\"\n").unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
    let c = Config::from_toml(&format!(
        "[mail.smtp]\nusername = \"u\"\npassword_file = \"{}\"\n",
        dir.path().join("missing").display()
    ))
    .unwrap();
    let e = c.mail.smtp.read_password().unwrap_err();
    assert!(e.0.contains("mail.smtp.password_file"), "{e}");
}

#[test]
fn admin_keys() {
    let c = Config::load_from(None, &[]).unwrap();
    assert_eq!(c.admin.token_lifetime.0, Duration::from_secs(900));
    assert_eq!(c.admin.lockout_threshold, 5);
    assert_eq!(c.admin.jwt_secret_file, None);
    assert_eq!(c.http.admin_bind, None);
    let e = Config::from_toml("[admin]\ntoken_lifetime = \"2days\"\n").unwrap_err();
    assert!(e.0.contains("admin.token_lifetime"), "{e}");
    let e = Config::from_toml("[admin]\nlockout_threshold = 0\n").unwrap_err();
    assert!(e.0.contains("admin.lockout_threshold"), "{e}");
    let e = Config::from_toml("[admin.login_per_ip]\nburst = 0\nevery = \"1s\"\n").unwrap_err();
    assert!(e.0.contains("admin.login_per_ip.burst"), "{e}");
    let e =
        Config::from_toml("[http]\nbind = \"127.0.0.1:9000\"\nadmin_bind = \"127.0.0.1:9000\"\n")
            .unwrap_err();
    assert!(e.0.contains("http.admin_bind"), "{e}");
    let c = Config::from_toml("[http]\nadmin_bind = \"127.0.0.1:9001\"\n").unwrap();
    assert_eq!(c.http.admin_bind.unwrap().port(), 9001);
}

#[test]
fn admin_ldap_login_keys() {
    let c = Config::load_from(None, &[]).unwrap();
    assert!(!c.admin.ldap_login_enabled());
    assert_eq!(c.admin.ldap_group, None);
    let ldap = "[ldap]\nurl = \"ldap://127.0.0.1:389\"\nbase_dn = \"dc=x\"\n";
    let filter = "ldap_user_filter = \"(&(objectClass=inetOrgPerson)(uid={username}))\"\n";
    let c = Config::from_toml(&format!(
        "{ldap}[admin]\n{filter}ldap_group = \"cn=admins,dc=x\"\n"
    ))
    .unwrap();
    assert!(c.admin.ldap_login_enabled());
    assert_eq!(c.admin.ldap_group.as_deref(), Some("cn=admins,dc=x"));
    let c = Config::from_toml(&format!(
        "{ldap}[admin]\n{filter}ldap_viewer_group = \"cn=viewers,dc=x\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.admin.ldap_viewer_group.as_deref(),
        Some("cn=viewers,dc=x")
    );
    for (toml, key) in [
        (format!("{ldap}[admin]\n{filter}"), "admin.ldap_group"),
        (
            format!("[admin]\n{filter}ldap_group = \"cn=a\"\n"),
            "ldap.url",
        ),
        (
            format!("{ldap}[admin]\nldap_user_filter = \"(uid=alice)\"\nldap_group = \"cn=a\"\n"),
            "{username}",
        ),
        (
            format!(
                "{ldap}[admin]\nldap_user_filter = \"uid={{username}}\"\nldap_group = \"cn=a\"\n"
            ),
            "admin.ldap_user_filter",
        ),
        (
            format!("{ldap}[admin]\nldap_group = \"cn=a\"\n"),
            "admin.ldap_group: needs admin.ldap_user_filter",
        ),
        (
            format!("{ldap}[admin]\n{filter}ldap_group = \" \"\n"),
            "admin.ldap_group: must not be empty",
        ),
    ] {
        let e = Config::from_toml(&toml).unwrap_err();
        assert!(e.0.contains(key), "{toml}: {e}");
    }
}

/// Every key with a default must be documented in annuaire.example.toml, with that default.
#[test]
fn example_file_documents_every_key_with_its_default() {
    let text = include_str!("../../annuaire.example.toml");
    let example = Config::from_toml(text).unwrap();
    assert_eq!(
        serde_json::to_value(&example).unwrap(),
        serde_json::to_value(Config::default()).unwrap(),
        "annuaire.example.toml must show the defaults"
    );
    let parsed: toml::Table = toml::from_str(text).unwrap();
    fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    // A table of user-chosen keys (maps) is documented by example only.
                    if v.as_object().is_some_and(|m| m.is_empty()) {
                        continue;
                    }
                    leaves(&path, v, out);
                }
            }
            serde_json::Value::Null => {}
            _ => out.push(prefix.to_string()),
        }
    }
    let mut paths = Vec::new();
    leaves(
        "",
        &serde_json::to_value(Config::default()).unwrap(),
        &mut paths,
    );
    for path in paths {
        let mut node = toml::Value::Table(parsed.clone());
        for part in path.split('.') {
            node = node
                .get(part)
                .unwrap_or_else(|| panic!("annuaire.example.toml does not document `{path}`"))
                .clone();
        }
    }
}

#[test]
fn byte_sizes_parse_and_print() {
    assert_eq!("1MiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
    assert_eq!("64KB".parse::<ByteSize>().unwrap(), ByteSize(64_000));
    assert_eq!("2048".parse::<ByteSize>().unwrap(), ByteSize(2048));
    assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
    assert!("1 parsec".parse::<ByteSize>().is_err());
}

#[test]
fn identity_keys_defaults_and_errors() {
    let c = Config::load_from(None, &[]).unwrap();
    assert_eq!(c.identity.allowed_homeservers, None);
    assert_eq!(
        c.identity.token_lifetime.0,
        Duration::from_secs(30 * 24 * 3600)
    );
    assert_eq!(c.identity.max_lookup_addresses, 10_000);
    assert_eq!(c.terms.file, None);
    assert_eq!(c.server.signing_key_file, None);
    assert!(c.policy.bind_requires_matching_homeserver);
    assert_eq!(c.invites.validity.0, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(c.invites.per_sender.max, 50);
    assert_eq!(
        c.invites.per_address.within.0,
        Duration::from_secs(24 * 3600)
    );
    let e = Config::from_toml("[identity]\nallowed_homeservers = [\"a b\"]\n").unwrap_err();
    assert!(e.0.contains("identity.allowed_homeservers"), "{e}");
    let e = Config::from_toml("[identity]\ntoken_lifetime = \"1s\"\n").unwrap_err();
    assert!(e.0.contains("identity.token_lifetime"), "{e}");
    let e = Config::from_toml("[identity]\nmax_lookup_addresses = 0\n").unwrap_err();
    assert!(e.0.contains("identity.max_lookup_addresses"), "{e}");
    let e = Config::from_toml("[invites]\nvalidity = \"1s\"\n").unwrap_err();
    assert!(e.0.contains("invites.validity"), "{e}");
    let e = Config::from_toml("[invites.per_address]\nmax = 0\nwithin = \"1h\"\n").unwrap_err();
    assert!(e.0.contains("invites.per_address.max"), "{e}");
    assert_eq!(c.invites.web_client_url, None);
    assert!(c.invites.allowed_web_clients.is_empty());
    assert_eq!(
        c.invites.delivery_initial_backoff.0,
        Duration::from_secs(30)
    );
    assert_eq!(c.invites.delivery_max_backoff.0, Duration::from_secs(7200));
    assert_eq!(c.invites.delivery_max_attempts, 12);
    for (toml, key) in [
        (
            "[invites]\nweb_client_url = \"app.example\"\n",
            "invites.web_client_url",
        ),
        (
            "[invites]\nweb_client_url = \"ftp://app.example\"\n",
            "invites.web_client_url",
        ),
        (
            "[invites]\nallowed_web_clients = [\"https://ok.example\", \"javascript:alert(1)\"]\n",
            "invites.allowed_web_clients",
        ),
        (
            "[invites]\nallowed_web_clients = [\"https://app.example/#/x\"]\n",
            "invites.allowed_web_clients",
        ),
        (
            "[invites]\ndelivery_initial_backoff = \"0s\"\n",
            "invites.delivery_initial_backoff",
        ),
        (
            "[invites]\ndelivery_max_backoff = \"10s\"\n",
            "invites.delivery_max_backoff",
        ),
        (
            "[invites]\ndelivery_max_attempts = 0\n",
            "invites.delivery_max_attempts",
        ),
    ] {
        let e = Config::from_toml(toml).unwrap_err();
        assert!(e.0.contains(key), "{toml}: {e}");
    }
    let c = Config::from_toml("[invites]\nweb_client_url = \"https://app.example/\"\n").unwrap();
    assert_eq!(
        c.invites.web_client_url.as_deref(),
        Some("https://app.example/")
    );
    let e = Config::from_toml("[terms]\nfiles = \"x\"\n").unwrap_err();
    assert!(e.0.contains("files"), "{e}");
}

#[test]
fn federation_keys_defaults_and_errors() {
    let c = Config::load_from(None, &[]).unwrap();
    assert!(c.federation.homeserver_urls().unwrap().is_empty());
    assert_eq!(c.federation.timeout.0, Duration::from_secs(10));
    assert_eq!(c.federation.max_response_size.0, 1 << 20);
    let c = Config::from_toml(
        "[federation]\nallowed_networks = [\"10.0.0.0/8\"]\nmax_response_size = \"64KiB\"\n\
         [federation.homeservers]\n\"hs1.example\" = \"http://127.0.0.1:8008\"\n",
    )
    .unwrap();
    assert_eq!(
        c.federation.homeserver_urls().unwrap()["hs1.example"].as_str(),
        "http://127.0.0.1:8008/"
    );
    assert_eq!(c.federation.allowed_networks.len(), 1);
    assert_eq!(c.federation.max_response_size.0, 64 << 10);
    let e =
        Config::from_toml("[federation.homeservers]\n\"hs1.example\" = \"ftp://x\"\n").unwrap_err();
    assert!(e.0.contains("federation.homeservers"), "{e}");
    let e = Config::from_toml("[federation.homeservers]\n\"a b\" = \"https://x\"\n").unwrap_err();
    assert!(e.0.contains("federation.homeservers"), "{e}");
    let e = Config::from_toml("[federation]\ntimeout = \"0s\"\n").unwrap_err();
    assert!(e.0.contains("federation.timeout"), "{e}");
    let e = Config::from_toml("[federation]\nmax_response_size = 10\n").unwrap_err();
    assert!(e.0.contains("federation.max_response_size"), "{e}");
}
