//! Semantics of the allowlist engine, one test per rule of DESIGN.md "Policy semantics".

use proptest::prelude::*;

use super::*;

const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn rules_of(files: &[(&str, &str)]) -> Vec<Rule> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
        .collect();
    match parse_allowlists(&files) {
        Ok(rules) => rules,
        Err(errors) => panic!(
            "{}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn index_of(files: &[(&str, &str)], default: DefaultPolicy) -> PolicyIndex {
    PolicyIndex::build(rules_of(files), default).unwrap()
}

fn deny_default(files: &[(&str, &str)]) -> PolicyIndex {
    index_of(files, DefaultPolicy::Deny)
}

fn decide(index: &PolicyIndex, address: &str) -> Decision {
    index.decide(&normalize_email(address).unwrap(), NOW)
}

fn errors_of(path: &str, content: &str) -> Vec<String> {
    parse_allowlist_file(path, content)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

const FINANCES: &str = r#"
[organisation]
label = "Finances"
homeserver = "agent.finances.tchap.example"
shadow_homeserver = "public.finances.tchap.example"

[[domain]]
name = "finances.gouv.fr"
subdomains = true

[[domain]]
name = "douane.finances.gouv.fr"
label = "Douanes"

[[deny]]
name = "webmail.finances.gouv.fr"

[[address]]
email = "prestataire@partner.example"
requires_invite = false

[[pattern]]
regex = '^[a-z]+\.[a-z]+@region-[0-9]+\.example$'
"#;

// --- Decision order

#[test]
fn domain_rule_with_subdomains_allows_a_subdomain() {
    let index = deny_default(&[("finances.toml", FINANCES)]);
    let d = decide(&index, "jean.dupont@dgfip.finances.gouv.fr");
    assert_eq!(d.outcome, Outcome::Allowed);
    assert_eq!(
        d.homeserver.as_deref(),
        Some("agent.finances.tchap.example")
    );
    assert_eq!(
        d.shadow_homeserver.as_deref(),
        Some("public.finances.tchap.example")
    );
    assert_eq!(d.organisation.as_deref(), Some("Finances"));
    assert_eq!(d.rule.as_deref(), Some("finances.toml:7"));
    assert_eq!(
        d.reason,
        "allowed by domain rule finances.gouv.fr and its subdomains (finances.toml:7)"
    );
}

#[test]
fn subdomains_true_matches_the_apex_too() {
    let index = deny_default(&[("finances.toml", FINANCES)]);
    assert_eq!(
        decide(&index, "a@finances.gouv.fr").outcome,
        Outcome::Allowed
    );
}

#[test]
fn subdomains_match_on_label_boundaries_only() {
    let index = deny_default(&[("finances.toml", FINANCES)]);
    let d = decide(&index, "a@notfinances.gouv.fr");
    assert_eq!(d.outcome, Outcome::Denied);
    assert_eq!(d.rule, None);
}

#[test]
fn subdomains_false_is_the_default_and_matches_only_the_exact_domain() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "hs.example"
[[domain]]
name = "exact.example"
"#,
    )]);
    assert_eq!(decide(&index, "a@exact.example").outcome, Outcome::Allowed);
    assert_eq!(
        decide(&index, "a@sub.exact.example").outcome,
        Outcome::Denied
    );
}

#[test]
fn deny_subdomains_false_blocks_only_the_exact_domain() {
    let index = deny_default(&[("finances.toml", FINANCES)]);
    let d = decide(&index, "a@webmail.finances.gouv.fr");
    assert_eq!(d.outcome, Outcome::Denied);
    assert_eq!(d.homeserver, None);
    assert_eq!(
        d.reason,
        "denied: domain webmail.finances.gouv.fr is blocked (finances.toml:15)"
    );
    // A subdomain of the denied domain falls through to the parent allow rule.
    let d = decide(&index, "a@x.webmail.finances.gouv.fr");
    assert_eq!(d.outcome, Outcome::Allowed);
    assert_eq!(d.rule.as_deref(), Some("finances.toml:7"));
}

#[test]
fn deny_with_subdomains_blocks_the_apex_and_every_subdomain() {
    let index = deny_default(&[
        ("finances.toml", FINANCES),
        (
            "blocked.toml",
            r#"
[[deny]]
name = "dgfip.finances.gouv.fr"
subdomains = true
"#,
        ),
    ]);
    assert_eq!(
        decide(&index, "a@dgfip.finances.gouv.fr").outcome,
        Outcome::Denied
    );
    let d = decide(&index, "a@x.y.dgfip.finances.gouv.fr");
    assert_eq!(d.outcome, Outcome::Denied);
    assert_eq!(
        d.reason,
        "denied: domain dgfip.finances.gouv.fr and its subdomains are blocked (blocked.toml:2)"
    );
    assert_eq!(
        decide(&index, "a@notdgfip.finances.gouv.fr").outcome,
        Outcome::Allowed
    );
}

#[test]
fn most_specific_domain_rule_wins() {
    let index = deny_default(&[("finances.toml", FINANCES)]);
    let d = decide(&index, "a@douane.finances.gouv.fr");
    assert_eq!(d.outcome, Outcome::Allowed);
    assert_eq!(d.organisation.as_deref(), Some("Douanes"));
    assert_eq!(d.rule.as_deref(), Some("finances.toml:11"));
    // douane.finances.gouv.fr has subdomains = false: its subdomains go to the parent rule.
    let d = decide(&index, "a@x.douane.finances.gouv.fr");
    assert_eq!(d.organisation.as_deref(), Some("Finances"));
}

#[test]
fn a_more_specific_allow_beats_a_general_deny() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "hs.example"
[[deny]]
name = "gouv.example"
subdomains = true
[[domain]]
name = "finances.gouv.example"
subdomains = true
"#,
    )]);
    assert_eq!(
        decide(&index, "a@x.finances.gouv.example").outcome,
        Outcome::Allowed
    );
    assert_eq!(
        decide(&index, "a@justice.gouv.example").outcome,
        Outcome::Denied
    );
    assert_eq!(decide(&index, "a@gouv.example").outcome, Outcome::Denied);
}

#[test]
fn deny_wins_a_tie_at_equal_length() {
    let index = deny_default(&[
        (
            "a.toml",
            r#"
[organisation]
homeserver = "hs.example"
[[domain]]
name = "tie.example"
subdomains = true
"#,
        ),
        (
            "b.toml",
            r#"
[[deny]]
name = "tie.example"
subdomains = true
"#,
        ),
    ]);
    let d = decide(&index, "a@tie.example");
    assert_eq!(d.outcome, Outcome::Denied);
    assert_eq!(d.rule.as_deref(), Some("b.toml:2"));
    assert_eq!(decide(&index, "a@x.tie.example").outcome, Outcome::Denied);
}

#[test]
fn deny_exact_and_allow_with_subdomains_at_same_name() {
    // At the apex both match: deny wins. Below, only the allow (subdomains) matches.
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "hs.example"
[[domain]]
name = "x.example"
subdomains = true
[[deny]]
name = "x.example"
"#,
    )]);
    assert_eq!(decide(&index, "a@x.example").outcome, Outcome::Denied);
    assert_eq!(decide(&index, "a@sub.x.example").outcome, Outcome::Allowed);
}

#[test]
fn exact_address_allow_beats_a_domain_deny() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "hs.example"
[[deny]]
name = "blocked.example"
subdomains = true
[[address]]
email = "Chef@Blocked.Example"
"#,
    )]);
    let d = decide(&index, "chef@blocked.example");
    assert_eq!(d.outcome, Outcome::Allowed);
    assert_eq!(d.rule.as_deref(), Some("t.toml:7"));
    assert_eq!(d.reason, "allowed by address rule (t.toml:7)");
    assert_eq!(
        decide(&index, "other@blocked.example").outcome,
        Outcome::Denied
    );
}

#[test]
fn address_deny_wins_a_tie_with_address_allow() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "hs.example"
[[domain]]
name = "x.example"
[[address]]
email = "a@x.example"
[[deny]]
email = "A@X.example"
"#,
    )]);
    let d = decide(&index, "a@x.example");
    assert_eq!(d.outcome, Outcome::Denied);
    assert_eq!(d.rule.as_deref(), Some("t.toml:8"));
    assert_eq!(d.reason, "denied: this address is blocked (t.toml:8)");
    assert_eq!(decide(&index, "b@x.example").outcome, Outcome::Allowed);
}

#[test]
fn address_deny_beats_a_domain_allow() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "hs.example"
[[domain]]
name = "x.example"
[[deny]]
email = "gone@x.example"
"#,
    )]);
    assert_eq!(decide(&index, "gone@x.example").outcome, Outcome::Denied);
}

#[test]
fn patterns_come_after_domain_rules() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "hs.example"
[[deny]]
name = "region-1.example"
[[pattern]]
regex = '[a-z]+\.[a-z]+@region-[0-9]+\.example'
"#,
    )]);
    assert_eq!(
        decide(&index, "jean.dupont@region-1.example").outcome,
        Outcome::Denied
    );
    let d = decide(&index, "jean.dupont@region-2.example");
    assert_eq!(d.outcome, Outcome::Allowed);
    assert_eq!(d.rule.as_deref(), Some("t.toml:6"));
    assert_eq!(
        decide(&index, "jean@region-2.example").outcome,
        Outcome::Denied
    );
}

#[test]
fn patterns_are_anchored_as_a_whole() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "hs.example"
[[pattern]]
regex = 'a@x\.example|b@y\.example'
"#,
    )]);
    assert_eq!(decide(&index, "a@x.example").outcome, Outcome::Allowed);
    assert_eq!(decide(&index, "b@y.example").outcome, Outcome::Allowed);
    // Without the (?:…) group, `^a@x\.example|b@y\.example$` would let these through.
    assert_eq!(
        decide(&index, "a@x.example.evil.example").outcome,
        Outcome::Denied
    );
    assert_eq!(decide(&index, "zb@y.example").outcome, Outcome::Denied);
}

#[test]
fn patterns_match_the_ascii_domain_and_casefolded_local_part() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "hs.example"
[[pattern]]
regex = 'strasse@xn--bcher-kva\.example'
"#,
    )]);
    let d = decide(&index, "STRAßE@Bücher.example");
    assert_eq!(d.outcome, Outcome::Allowed);
}

#[test]
fn patterns_follow_file_name_order_then_file_order_then_admin() {
    let b = r#"
[organisation]
homeserver = "b.example"
[[pattern]]
regex = 'x@.*'
[[pattern]]
regex = '.*@p\.example'
"#;
    let a = r#"
[organisation]
homeserver = "a.example"
[[pattern]]
regex = '.*@.*\.example'
"#;
    let mut rules = rules_of(&[("b.toml", b), ("a.toml", a)]);
    let mut admin = Rule::new(
        RuleKind::Pattern,
        RuleTarget::Regex("y@.*".to_owned()),
        RuleSource::Admin,
    );
    admin.homeserver = Some("admin.example".to_owned());
    // Admin rules come first in the vector but still rank after every file.
    rules.insert(0, admin);
    let index = PolicyIndex::build(rules, DefaultPolicy::Deny).unwrap();
    // a.toml sorts before b.toml.
    assert_eq!(
        decide(&index, "x@p.example").homeserver.as_deref(),
        Some("a.example")
    );
    // Within b.toml, file order: `x@.*` before `.*@p\.example`.
    let d = decide(&index, "x@p.other");
    assert_eq!(d.rule.as_deref(), Some("b.toml:4"));
    assert_eq!(
        decide(&index, "z@p.example").homeserver.as_deref(),
        Some("a.example")
    );
    // Only the admin pattern matches.
    let d = decide(&index, "y@q.other");
    assert_eq!(d.homeserver.as_deref(), Some("admin.example"));
    assert!(d.rule.unwrap().starts_with("admin:r"));
}

#[test]
fn default_deny_gives_denied_without_homeserver() {
    let index = deny_default(&[("finances.toml", FINANCES)]);
    let d = decide(&index, "someone@unknown.example");
    assert_eq!(d.outcome, Outcome::Denied);
    assert_eq!(d.homeserver, None);
    assert_eq!(d.shadow_homeserver, None);
    assert_eq!(d.organisation, None);
    assert_eq!(d.rule, None);
    assert_eq!(d.rule_id, None);
    assert!(d.reason.starts_with("not an agency domain"), "{}", d.reason);
}

#[test]
fn default_invite_only_gives_invite_required_on_the_external_homeserver() {
    let index = index_of(
        &[("finances.toml", FINANCES)],
        DefaultPolicy::InviteOnly {
            external_homeserver: "externes.tchap.example".to_owned(),
        },
    );
    let d = decide(&index, "someone@unknown.example");
    assert_eq!(d.outcome, Outcome::InviteRequired);
    assert_eq!(d.homeserver.as_deref(), Some("externes.tchap.example"));
    assert_eq!(d.rule, None);
    assert!(d.reason.starts_with("not an agency domain"));
}

#[test]
fn requires_invite_gives_invite_required_on_the_rules_own_homeserver() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "agents.example"
[[address]]
email = "consultant@partner.example"
homeserver = "externes.example"
requires_invite = true
"#,
    )]);
    let d = decide(&index, "consultant@partner.example");
    assert_eq!(d.outcome, Outcome::InviteRequired);
    assert_eq!(d.homeserver.as_deref(), Some("externes.example"));
    assert_eq!(d.shadow_homeserver, None);
}

#[test]
fn requires_invite_can_be_set_on_the_organisation_and_overridden() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "externes.example"
requires_invite = true
[[domain]]
name = "partner.example"
[[domain]]
name = "trusted.example"
requires_invite = false
"#,
    )]);
    assert_eq!(
        decide(&index, "a@partner.example").outcome,
        Outcome::InviteRequired
    );
    assert_eq!(
        decide(&index, "a@trusted.example").outcome,
        Outcome::Allowed
    );
}

// --- Organisation defaults and effective values

#[test]
fn organisation_is_optional_for_a_file_of_denies() {
    let rules = rules_of(&[(
        "blocked.toml",
        r#"
[[deny]]
name = "webmail.example"
[[deny]]
email = "spammer@agency.example"
"#,
    )]);
    assert_eq!(rules.len(), 2);
    assert!(
        rules
            .iter()
            .all(|r| r.homeserver.is_none() && r.label.is_none())
    );
}

#[test]
fn rule_settings_override_the_organisation() {
    let rules = rules_of(&[(
        "t.toml",
        r#"
[organisation]
label = "Org"
homeserver = "org.example"
shadow_homeserver = "shadow.org.example"
[[domain]]
name = "a.example"
label = "Own"
shadow_homeserver = "own-shadow.example"
[[domain]]
name = "b.example"
"#,
    )]);
    assert_eq!(rules[0].label.as_deref(), Some("Own"));
    assert_eq!(rules[0].homeserver.as_deref(), Some("org.example"));
    assert_eq!(
        rules[0].shadow_homeserver.as_deref(),
        Some("own-shadow.example")
    );
    assert_eq!(rules[1].label.as_deref(), Some("Org"));
    assert_eq!(
        rules[1].shadow_homeserver.as_deref(),
        Some("shadow.org.example")
    );
}

#[test]
fn a_rule_setting_its_homeserver_does_not_inherit_the_organisation_shadow() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "org.example"
shadow_homeserver = "shadow.org.example"
[[domain]]
name = "a.example"
homeserver = "other.example"
[[domain]]
name = "b.example"
homeserver = "other.example"
shadow_homeserver = "shadow.other.example"
"#,
    )]);
    let d = decide(&index, "x@a.example");
    assert_eq!(d.homeserver.as_deref(), Some("other.example"));
    assert_eq!(d.shadow_homeserver, None);
    let d = decide(&index, "x@b.example");
    assert_eq!(d.shadow_homeserver.as_deref(), Some("shadow.other.example"));
}

#[test]
fn organisation_in_a_decision_is_the_effective_label() {
    let index = deny_default(&[("finances.toml", FINANCES)]);
    assert_eq!(
        decide(&index, "a@douane.finances.gouv.fr")
            .organisation
            .as_deref(),
        Some("Douanes")
    );
    assert_eq!(
        decide(&index, "prestataire@partner.example")
            .organisation
            .as_deref(),
        Some("Finances")
    );
}

#[test]
fn an_empty_label_clears_the_organisation_label() {
    let rules = rules_of(&[(
        "t.toml",
        r#"
[organisation]
label = "Org"
homeserver = "org.example"
[[domain]]
name = "a.example"
label = ""
"#,
    )]);
    assert_eq!(rules[0].label, None);
}

#[test]
fn an_allow_rule_without_homeserver_is_an_error_at_its_line() {
    let errors = errors_of(
        "justice.toml",
        r#"[organisation]
label = "Justice"

[[domain]]
name = "justice.gouv.fr"
"#,
    );
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with(
            "justice.toml:4: the domain rule justice.gouv.fr allows addresses but has no homeserver"
        ),
        "{}",
        errors[0]
    );
}

#[test]
fn a_deny_never_has_a_homeserver() {
    let rules = rules_of(&[(
        "t.toml",
        r#"
[organisation]
label = "Org"
homeserver = "org.example"
shadow_homeserver = "shadow.example"
[[deny]]
name = "webmail.example"
[[deny]]
email = "x@y.example"
homeserver = "ignored.example"
"#,
    )]);
    for rule in &rules {
        assert_eq!(rule.homeserver, None);
        assert_eq!(rule.shadow_homeserver, None);
        assert!(!rule.requires_invite);
        assert_eq!(rule.label.as_deref(), Some("Org"));
    }
    let index = PolicyIndex::build(rules, DefaultPolicy::Deny).unwrap();
    let d = decide(&index, "a@webmail.example");
    assert_eq!(
        (d.outcome, d.homeserver, d.shadow_homeserver),
        (Outcome::Denied, None, None)
    );
}

// --- Expiry

const EXPIRING: &str = r#"
[organisation]
homeserver = "hs.example"
[[domain]]
name = "gouv.example"
subdomains = true
label = "General"
[[domain]]
name = "mission.gouv.example"
label = "Mission"
expires_at = 2026-01-01T00:00:00Z
[[address]]
email = "temp@other.example"
expires_at = 2026-01-01T01:00:00+01:00
"#;

#[test]
fn an_expired_rule_is_ignored_as_if_absent() {
    let index = deny_default(&[("t.toml", EXPIRING)]);
    let a = normalize_email("x@mission.gouv.example").unwrap();
    let before = index.decide(&a, NOW - 1);
    assert_eq!(before.organisation.as_deref(), Some("Mission"));
    // At the instant itself the rule no longer applies: the more general rule does.
    let at = index.decide(&a, NOW);
    assert_eq!(at.outcome, Outcome::Allowed);
    assert_eq!(at.organisation.as_deref(), Some("General"));
    // The address rule expires too (same instant, written with an offset): the default applies.
    let t = normalize_email("temp@other.example").unwrap();
    assert_eq!(index.decide(&t, NOW - 1).outcome, Outcome::Allowed);
    assert_eq!(index.decide(&t, NOW).outcome, Outcome::Denied);
    assert_eq!(index.decide(&t, NOW).rule, None);
}

#[test]
fn an_expired_deny_lets_the_allow_through() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "hs.example"
[[domain]]
name = "x.example"
[[deny]]
name = "x.example"
expires_at = 2026-01-01T00:00:00Z
"#,
    )]);
    let a = normalize_email("a@x.example").unwrap();
    assert_eq!(index.decide(&a, NOW - 1).outcome, Outcome::Denied);
    assert_eq!(index.decide(&a, NOW).outcome, Outcome::Allowed);
}

#[test]
fn expires_at_without_offset_is_an_error() {
    let errors = errors_of(
        "t.toml",
        r#"[organisation]
homeserver = "hs.example"
[[domain]]
name = "x.example"
expires_at = 2026-01-01T00:00:00
"#,
    );
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("t.toml:5: invalid `expires_at`"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("no offset"), "{}", errors[0]);
    let errors = errors_of(
        "t.toml",
        "[[deny]]\nname = \"x.example\"\nexpires_at = 2026-01-01\n",
    );
    assert!(errors[0].starts_with("t.toml:3:"), "{}", errors[0]);
}

// --- Patterns

#[test]
fn the_first_matching_unexpired_pattern_wins() {
    let index = deny_default(&[(
        "t.toml",
        r#"
[organisation]
homeserver = "hs.example"
[[pattern]]
regex = 'a.*@x\.example'
label = "First"
expires_at = 2026-01-01T00:00:00Z
[[pattern]]
regex = '.*@x\.example'
label = "Second"
"#,
    )]);
    let a = normalize_email("ab@x.example").unwrap();
    assert_eq!(
        index.decide(&a, NOW - 1).organisation.as_deref(),
        Some("First")
    );
    assert_eq!(
        index.decide(&a, NOW).organisation.as_deref(),
        Some("Second")
    );
}

#[test]
fn an_invalid_regex_is_an_error_with_file_and_line() {
    let errors = errors_of(
        "sante.toml",
        "[organisation]\nhomeserver = \"hs.example\"\n\n[[pattern]]\nregex = '[a-z'\n",
    );
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("sante.toml:4: invalid regex"),
        "{}",
        errors[0]
    );
}

#[test]
fn an_oversized_regex_is_refused() {
    let errors = errors_of(
        "t.toml",
        "[organisation]\nhomeserver = \"hs.example\"\n[[pattern]]\nregex = '(\\w{100}){100}@x\\.example'\n",
    );
    assert!(errors[0].contains("too complex"), "{}", errors[0]);
}

#[test]
fn an_empty_regex_is_refused() {
    let errors = errors_of(
        "t.toml",
        "[organisation]\nhomeserver = \"hs.example\"\n[[pattern]]\nregex = ''\n",
    );
    assert!(errors[0].contains("empty"), "{}", errors[0]);
}

// --- Duplicates

#[test]
fn the_same_kind_and_value_twice_in_one_file_is_an_error() {
    let errors = errors_of(
        "finances.toml",
        r#"[organisation]
homeserver = "hs.example"
[[domain]]
name = "finances.gouv.fr"
[[domain]]
name = "Finances.Gouv.FR"
subdomains = true
"#,
    );
    assert_eq!(
        errors,
        vec![
            "finances.toml:5: the same domain rule finances.gouv.fr is defined twice: finances.toml:3 and finances.toml:5"
        ]
    );
}

#[test]
fn the_same_kind_and_value_across_files_is_an_error_naming_both() {
    let files = vec![
        (
            "justice.toml".to_owned(),
            "[organisation]\nhomeserver = \"j.example\"\n[[domain]]\nname = \"shared.example\"\n".to_owned(),
        ),
        (
            "finances.toml".to_owned(),
            "[organisation]\nhomeserver = \"f.example\"\n\n\n\n\n\n\n\n\n\n[[domain]]\nname = \"shared.example\"\n"
                .to_owned(),
        ),
    ];
    let errors = parse_allowlists(&files).unwrap_err();
    assert_eq!(errors.len(), 1);
    let message = errors[0].to_string();
    assert!(
        message.contains("finances.toml:12 and justice.toml:3"),
        "{message}"
    );
}

#[test]
fn duplicate_addresses_compare_in_matching_form() {
    let errors = errors_of(
        "t.toml",
        "[organisation]\nhomeserver = \"hs.example\"\n[[address]]\nemail = \"a@bücher.example\"\n[[address]]\nemail = \"A@xn--bcher-kva.example\"\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("address rule is defined twice: t.toml:3 and t.toml:5"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_file_rule_and_an_admin_rule_with_the_same_value_are_duplicates() {
    let mut rules = rules_of(&[("finances.toml", FINANCES)]);
    let admin = Rule::from_json(
        serde_json::json!({"kind": "deny", "name": "webmail.finances.gouv.fr"}),
        RuleSource::Admin,
    )
    .unwrap();
    let id = admin.id.clone();
    rules.push(admin);
    let errors = check_duplicates(&rules).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .contains(&format!("finances.toml:15 and admin:{id}")),
        "{}",
        errors[0]
    );
    assert!(PolicyIndex::build(rules, DefaultPolicy::Deny).is_err());
}

#[test]
fn an_allow_and_a_deny_of_the_same_name_are_not_duplicates() {
    let rules = rules_of(&[(
        "t.toml",
        "[organisation]\nhomeserver = \"hs.example\"\n[[domain]]\nname = \"x.example\"\n[[deny]]\nname = \"x.example\"\n[[address]]\nemail = \"a@y.example\"\n[[deny]]\nemail = \"a@y.example\"\n",
    )]);
    assert_eq!(rules.len(), 4);
}

// --- Public mail providers

#[test]
fn public_mail_domains_are_refused_as_allowed_domains_unless_forced() {
    for name in [
        "gmail.com",
        "mail.orange.fr",
        "yahoo.fr",
        "yahoo.co.uk",
        "hotmail.com",
        "GMX.de",
    ] {
        let content =
            format!("[organisation]\nhomeserver = \"hs.example\"\n[[domain]]\nname = \"{name}\"\n");
        let errors = errors_of("t.toml", &content);
        assert_eq!(errors.len(), 1, "{name}");
        assert!(errors[0].starts_with("t.toml:3:"), "{}", errors[0]);
        assert!(errors[0].contains("public mail provider"), "{}", errors[0]);
        let forced = format!("{content}force = true\n");
        assert!(parse_allowlist_file("t.toml", &forced).is_ok(), "{name}");
    }
}

#[test]
fn patterns_admitting_public_mail_domains_are_refused_unless_forced() {
    for regex in [
        ".*",
        r".*@gmail\.com",
        r"[a-z.]+@(gmail\.com|agency\.example)",
        r".*@yahoo\.[a-z]+",
    ] {
        let content = format!(
            "[organisation]\nhomeserver = \"hs.example\"\n[[pattern]]\nregex = '{regex}'\n"
        );
        let errors = errors_of("t.toml", &content);
        assert!(
            errors[0].contains("public mail provider"),
            "{regex}: {errors:?}"
        );
        assert!(parse_allowlist_file("t.toml", &format!("{content}force = true\n")).is_ok());
    }
    let fine =
        "[organisation]\nhomeserver = \"hs.example\"\n[[pattern]]\nregex = '.*@.*\\.gouv\\.fr'\n";
    assert!(parse_allowlist_file("t.toml", fine).is_ok());
}

#[test]
fn public_mail_domains_may_be_denied_and_individual_addresses_allowed() {
    let rules = rules_of(&[(
        "t.toml",
        "[organisation]\nhomeserver = \"hs.example\"\n[[deny]]\nname = \"gmail.com\"\nsubdomains = true\n[[address]]\nemail = \"consultant@gmail.com\"\nrequires_invite = true\n",
    )]);
    let index = PolicyIndex::build(rules, DefaultPolicy::Deny).unwrap();
    assert_eq!(
        decide(&index, "consultant@gmail.com").outcome,
        Outcome::InviteRequired
    );
    assert_eq!(decide(&index, "other@gmail.com").outcome, Outcome::Denied);
}

// --- File format

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let errors = errors_of(
        "finances.toml",
        "[organisation]\nhomeserver = \"hs.example\"\n\n[[domain]]\nname = \"finances.gouv.fr\"\n\nsubdomain = true\n",
    );
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("finances.toml:7: unknown field `subdomain`, expected one of"),
        "{}",
        errors[0]
    );
    let errors = errors_of("t.toml", "[[domains]]\nname = \"x.example\"\n");
    assert!(
        errors[0].starts_with("t.toml:1: unknown field `domains`"),
        "{}",
        errors[0]
    );
    let errors = errors_of("t.toml", "[organisation]\nname = \"x\"\n");
    assert!(
        errors[0].starts_with("t.toml:2: unknown field `name`"),
        "{}",
        errors[0]
    );
}

#[test]
fn type_and_syntax_errors_have_lines() {
    let errors = errors_of(
        "t.toml",
        "[[domain]]\nname = \"x.example\"\nsubdomains = \"yes\"\n",
    );
    assert!(errors[0].starts_with("t.toml:3:"), "{}", errors[0]);
    let errors = errors_of("t.toml", "\n\n[[domain]\nname = 1\n");
    assert!(errors[0].starts_with("t.toml:3:"), "{}", errors[0]);
    let errors = errors_of("t.toml", "[[domain]]\nlabel = \"x\"\n");
    assert!(errors[0].contains("missing field `name`"), "{}", errors[0]);
}

#[test]
fn a_rules_line_is_the_line_of_its_header() {
    let rules = rules_of(&[("finances.toml", FINANCES)]);
    let lines: Vec<String> = rules.iter().map(Rule::reference).collect();
    assert_eq!(
        lines,
        [
            "finances.toml:7",
            "finances.toml:11",
            "finances.toml:15",
            "finances.toml:18",
            "finances.toml:22"
        ]
    );
}

#[test]
fn deny_takes_exactly_one_of_name_or_email() {
    let both = errors_of(
        "t.toml",
        "[[deny]]\nname = \"x.example\"\nemail = \"a@x.example\"\n",
    );
    assert!(both[0].contains("exactly one of `name`"), "{}", both[0]);
    let neither = errors_of("t.toml", "\n[[deny]]\nlabel = \"x\"\n");
    assert!(neither[0].starts_with("t.toml:2:"), "{}", neither[0]);
    assert!(
        neither[0].contains("exactly one of `name`"),
        "{}",
        neither[0]
    );
    let subdomains_on_email = errors_of(
        "t.toml",
        "[[deny]]\nemail = \"a@x.example\"\nsubdomains = true\n",
    );
    assert!(
        subdomains_on_email[0].contains("`subdomains`"),
        "{}",
        subdomains_on_email[0]
    );
}

#[test]
fn invalid_values_are_errors_with_lines() {
    let errors = errors_of(
        "t.toml",
        "[organisation]\nhomeserver = \"hs.example\"\n[[address]]\nemail = \"Jean <j@x.example>\"\n[[domain]]\nname = \"bad_domain.example\"\n[[domain]]\nname = \"ok.example\"\nhomeserver = \"not a server\"\n",
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].starts_with("t.toml:3: invalid address in `email`: display-name form"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].starts_with("t.toml:5: invalid domain"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].starts_with("t.toml:7: `homeserver`"),
        "{}",
        errors[2]
    );
}

#[test]
fn domain_names_and_addresses_go_through_idna_and_normalisation() {
    let rules = rules_of(&[(
        "t.toml",
        "[organisation]\nhomeserver = \"hs.example\"\n[[domain]]\nname = \"Bücher.Example\"\n[[address]]\nemail = \" Jean.Dupont@Bücher.Example \"\n",
    )]);
    assert_eq!(
        rules[0].target,
        RuleTarget::Domain {
            name: "xn--bcher-kva.example".to_owned(),
            subdomains: false
        }
    );
    assert_eq!(
        rules[1].target,
        RuleTarget::Email("jean.dupont@bücher.example".to_owned())
    );
    let index = PolicyIndex::build(rules, DefaultPolicy::Deny).unwrap();
    assert_eq!(
        decide(&index, "x@xn--bcher-kva.example").outcome,
        Outcome::Allowed
    );
    assert_eq!(
        decide(&index, "JEAN.DUPONT@xn--bcher-kva.example")
            .rule
            .as_deref(),
        Some("t.toml:5")
    );
}

#[test]
fn rule_ids_are_stable_across_reimports_and_moves() {
    let first = rules_of(&[("finances.toml", FINANCES)]);
    let moved = format!("# a comment\n\n{FINANCES}");
    let second = rules_of(&[("ministere.toml", &moved)]);
    let ids = |rules: &[Rule]| rules.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&second));
    assert!(
        first
            .iter()
            .all(|r| r.id.len() == 17 && r.id.starts_with('r'))
    );
    // Toggling subdomains keeps the id: it is the same rule, changed.
    let toggled = FINANCES.replace("subdomains = true", "subdomains = false");
    let third = rules_of(&[("finances.toml", &toggled)]);
    assert_eq!(ids(&first), ids(&third));
    // Kind matters: an allow and a deny of the same name have different ids.
    let allow = Rule::compute_id(
        RuleKind::Domain,
        &RuleTarget::Domain {
            name: "x.example".into(),
            subdomains: false,
        },
    );
    let deny = Rule::compute_id(
        RuleKind::Deny,
        &RuleTarget::Domain {
            name: "x.example".into(),
            subdomains: false,
        },
    );
    assert_ne!(allow, deny);
}

#[test]
fn parse_render_parse_round_trips() {
    let mixed = r#"
[organisation]
label = "Org"
homeserver = "org.example"
shadow_homeserver = "shadow.org.example"
[[domain]]
name = "a.example"
subdomains = true
[[domain]]
name = "b.example"
homeserver = "other.example"
label = "B \"quoted\""
[[domain]]
name = "c.example"
shadow_homeserver = "c-shadow.example"
requires_invite = true
expires_at = 2027-03-04T05:06:07.089+02:00
[[deny]]
name = "webmail.a.example"
subdomains = true
[[deny]]
email = "x@a.example"
[[address]]
email = "Ext@Bücher.example"
homeserver = "ext.example"
requires_invite = true
[[pattern]]
regex = '[a-z]+\.[a-z]+@region-[0-9]+\.example'
[[pattern]]
regex = "it's@x\\.example"
force = true
"#;
    for source in [FINANCES, EXPIRING, mixed] {
        let rules = rules_of(&[("t.toml", source)]);
        let rendered = render_allowlist_file(&rules);
        let again = parse_allowlist_file("t.toml", &rendered)
            .unwrap_or_else(|e| panic!("{rendered}\n{e:?}"));
        assert_eq!(again.len(), rules.len());
        for (a, b) in rules.iter().zip(&again) {
            let mut b = b.clone();
            b.source = a.source.clone();
            assert_eq!(a, &b, "{rendered}");
        }
        assert_eq!(
            render_allowlist_file(&again).lines().count(),
            rendered.lines().count()
        );
    }
}

#[test]
fn rendering_keeps_rules_from_several_files_and_admin() {
    let mut rules = rules_of(&[("finances.toml", FINANCES), ("t.toml", EXPIRING)]);
    rules.push(
        Rule::from_json(
            serde_json::json!({"kind": "domain", "name": "admin.example", "homeserver": "a.example"}),
            RuleSource::Admin,
        )
        .unwrap(),
    );
    let rendered = render_allowlist_file(&rules);
    let again = parse_allowlist_file("all.toml", &rendered).unwrap();
    let strip = |r: &Rule| Rule {
        source: RuleSource::Admin,
        ..r.clone()
    };
    assert_eq!(
        rules.iter().map(strip).collect::<Vec<_>>(),
        again.iter().map(strip).collect::<Vec<_>>()
    );
}

// --- JSON (storage and admin API)

#[test]
fn rules_as_json_use_the_toml_field_names() {
    let rules = rules_of(&[("finances.toml", FINANCES), ("t.toml", EXPIRING)]);
    let json = rules[0].to_json();
    assert_eq!(
        json,
        serde_json::json!({
            "id": rules[0].id, "kind": "domain", "name": "finances.gouv.fr", "subdomains": true,
            "label": "Finances", "homeserver": "agent.finances.tchap.example",
            "shadow_homeserver": "public.finances.tchap.example", "requires_invite": false,
            "expires_at": null, "force": false, "source": "finances.toml", "line": 7
        })
    );
    let expiring = rules.iter().find(|r| r.expires_at.is_some()).unwrap();
    assert_eq!(expiring.to_json()["expires_at"], "2026-01-01T00:00:00Z");
    for rule in &rules {
        // Serde uses the same shape, and reads it back with the source.
        let text = serde_json::to_string(rule).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            rule.to_json()
        );
        assert_eq!(&serde_json::from_str::<Rule>(&text).unwrap(), rule);
        // from_json places the rule where the caller says.
        let admin = Rule::from_json(rule.to_json(), RuleSource::Admin).unwrap();
        assert_eq!(
            admin,
            Rule {
                source: RuleSource::Admin,
                ..rule.clone()
            }
        );
    }
}

#[test]
fn from_json_validates_like_files() {
    let err = |v: serde_json::Value| {
        Rule::from_json(v, RuleSource::Admin)
            .unwrap_err()
            .to_string()
    };
    assert!(
        err(serde_json::json!({"kind": "domain", "name": "gmail.com", "homeserver": "hs.example"}))
            .contains("public mail provider")
    );
    assert!(
        err(serde_json::json!({"kind": "domain", "name": "x.example"})).contains("no homeserver")
    );
    assert!(
        err(serde_json::json!({"kind": "domain", "name": "x.example", "subdomain": true}))
            .contains("unknown field `subdomain`")
    );
    assert!(
        err(serde_json::json!({"kind": "pattern", "regex": "[", "homeserver": "hs.example"}))
            .contains("invalid regex")
    );
    assert!(
        err(serde_json::json!({"kind": "deny", "name": "x.example", "email": "a@x.example"}))
            .contains("exactly one of")
    );
    assert!(
        err(serde_json::json!({"kind": "address", "email": "a@@x", "homeserver": "h.example"}))
            .contains("@ signs")
    );
    assert!(err(serde_json::json!({"kind": "domain", "name": "x.example", "homeserver": "h.example", "expires_at": "2026-01-01T00:00:00"})).contains("expires_at"));
    assert!(err(serde_json::json!({"kind": "domain", "name": "x.example", "regex": "x", "homeserver": "h.example"})).contains("`regex` does not apply"));
    let ok = Rule::from_json(
        serde_json::json!({"kind": "domain", "name": "gmail.com", "homeserver": "hs.example", "force": true, "expires_at": "2026-01-01T01:00:00+01:00"}),
        RuleSource::Admin,
    )
    .unwrap();
    assert_eq!(ok.expires_at, Some(NOW));
    assert!(ok.reference().starts_with("admin:r"));
}

// --- Explain, homeservers, diff

#[test]
fn explain_lists_every_matching_rule_and_why_it_lost() {
    let index = deny_default(&[
        ("finances.toml", FINANCES),
        (
            "t.toml",
            r#"
[organisation]
homeserver = "hs.example"
[[domain]]
name = "gouv.fr"
[[deny]]
name = "douane.finances.gouv.fr"
expires_at = 2020-01-01T00:00:00Z
[[pattern]]
regex = '.*@douane\.finances\.gouv\.fr'
"#,
        ),
    ]);
    let a = normalize_email("a@douane.finances.gouv.fr").unwrap();
    let explanation = index.explain(&a, NOW);
    assert_eq!(explanation.decision, index.decide(&a, NOW));
    let whys: Vec<(String, bool, &str)> = explanation
        .considered
        .iter()
        .map(|c| (c.rule.reference(), c.matched, c.why.as_str()))
        .collect();
    assert_eq!(whys.len(), 5, "{whys:#?}");
    assert_eq!(whys[0].0, "t.toml:6");
    assert!(
        !whys[0].1 && whys[0].2.starts_with("expired at 2020-01-01T00:00:00Z"),
        "{whys:?}"
    );
    assert_eq!(whys[1].0, "finances.toml:11");
    assert!(
        whys[1].1
            && whys[1]
                .2
                .starts_with("applies: allowed by domain rule douane"),
        "{whys:?}"
    );
    assert_eq!(whys[2].0, "finances.toml:7");
    assert!(
        whys[2].1
            && whys[2]
                .2
                .starts_with("beaten by a more specific domain rule (finances.toml:11)"),
        "{whys:?}"
    );
    assert_eq!(whys[3].0, "t.toml:4");
    assert!(
        !whys[3].1 && whys[3].2.contains("matches only gouv.fr itself"),
        "{whys:?}"
    );
    assert_eq!(whys[4].0, "t.toml:9");
    assert!(
        whys[4].1
            && whys[4]
                .2
                .starts_with("beaten by a domain rule, which comes before patterns"),
        "{whys:?}"
    );
}

#[test]
fn explain_names_the_deny_that_won_a_tie() {
    let index = deny_default(&[(
        "t.toml",
        "[organisation]\nhomeserver = \"hs.example\"\n[[domain]]\nname = \"x.example\"\n[[deny]]\nname = \"x.example\"\n",
    )]);
    let e = index.explain(&normalize_email("a@x.example").unwrap(), NOW);
    assert_eq!(e.decision.outcome, Outcome::Denied);
    assert_eq!(e.considered.len(), 2);
    assert!(
        e.considered[1]
            .why
            .starts_with("beaten by the deny rule at the same level"),
        "{:?}",
        e.considered
    );
}

#[test]
fn homeservers_lists_every_named_server_and_the_external_one() {
    let index = index_of(
        &[("finances.toml", FINANCES)],
        DefaultPolicy::InviteOnly {
            external_homeserver: "externes.example".to_owned(),
        },
    );
    let list: Vec<String> = index.homeservers().into_iter().collect();
    assert_eq!(
        list,
        [
            "agent.finances.tchap.example",
            "externes.example",
            "public.finances.tchap.example"
        ]
    );
}

#[test]
fn diff_reports_added_changed_and_removed_by_id() {
    let old = rules_of(&[("finances.toml", FINANCES)]);
    let edited = FINANCES
        .replace("label = \"Douanes\"", "label = \"DGDDI\"")
        .replace("[[deny]]\nname = \"webmail.finances.gouv.fr\"\n", "")
        .replace(
            "[[address]]",
            "[[domain]]\nname = \"new.finances.gouv.fr\"\n\n[[address]]",
        );
    let new = rules_of(&[("finances.toml", &edited)]);
    let d = diff(&old, &new);
    assert_eq!(d.added.len(), 1);
    assert_eq!(d.added[0].target.value(), "new.finances.gouv.fr");
    assert_eq!(d.removed.len(), 1);
    assert_eq!(d.removed[0].target.value(), "webmail.finances.gouv.fr");
    // The label change, plus the address and pattern whose lines moved.
    let changed: Vec<&str> = d.changed.iter().map(|(_, n)| n.target.value()).collect();
    assert_eq!(changed.len(), 3, "{changed:?}");
    assert_eq!(changed[0], "douane.finances.gouv.fr");
    assert!(diff(&old, &old).is_empty());
}

#[test]
fn build_refuses_an_invite_only_default_without_homeserver() {
    let result = PolicyIndex::build(
        Vec::new(),
        DefaultPolicy::InviteOnly {
            external_homeserver: " ".to_owned(),
        },
    );
    assert!(result.is_err());
}

#[test]
fn the_index_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<PolicyIndex>();
}

// --- Example allowlists shipped in allowlists/

#[test]
fn the_example_allowlists_parse_and_decide_as_documented() {
    let files: Vec<(String, String)> = [
        (
            "blocked.toml",
            include_str!("../../allowlists/blocked.toml"),
        ),
        (
            "finances.toml",
            include_str!("../../allowlists/finances.toml"),
        ),
        (
            "interieur.toml",
            include_str!("../../allowlists/interieur.toml"),
        ),
        (
            "justice.toml",
            include_str!("../../allowlists/justice.toml"),
        ),
        ("sante.toml", include_str!("../../allowlists/sante.toml")),
        (
            "externes.toml",
            include_str!("../../allowlists/externes.toml"),
        ),
    ]
    .iter()
    .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
    .collect();
    let rules = parse_allowlists(&files).unwrap_or_else(|e| panic!("{e:?}"));
    let index = PolicyIndex::build(
        rules,
        DefaultPolicy::InviteOnly {
            external_homeserver: "externes.tchap.example".to_owned(),
        },
    )
    .unwrap();
    let check = |address: &str, outcome: Outcome, homeserver: Option<&str>| {
        let d = decide(&index, address);
        assert_eq!(
            (d.outcome, d.homeserver.as_deref()),
            (outcome, homeserver),
            "{address}: {}",
            d.reason
        );
    };
    check(
        "jean.dupont@finances.gouv.example",
        Outcome::Allowed,
        Some("agent.finances.tchap.example"),
    );
    check(
        "a@dgfip.finances.gouv.example",
        Outcome::Allowed,
        Some("agent.finances.tchap.example"),
    );
    check("a@webmail.finances.gouv.example", Outcome::Denied, None);
    check(
        "a@interieur.gouv.example",
        Outcome::Allowed,
        Some("agent.interieur.tchap.example"),
    );
    check(
        "a@prefecture-75.interieur.gouv.example",
        Outcome::Allowed,
        Some("agent.interieur.tchap.example"),
    );
    check(
        "a@justice.gouv.example",
        Outcome::Allowed,
        Some("agent.justice.tchap.example"),
    );
    check(
        "jean.dupont@ars-bretagne.sante.example",
        Outcome::Allowed,
        Some("agent.sante.tchap.example"),
    );
    check(
        "consultante@cabinet-conseil.example",
        Outcome::InviteRequired,
        Some("externes.tchap.example"),
    );
    check(
        "someone@unknown.example",
        Outcome::InviteRequired,
        Some("externes.tchap.example"),
    );
    check("a@gmail.com", Outcome::Denied, None);
    check(
        "x@brigade.gendarmerie.interieur.gouv.example",
        Outcome::Allowed,
        Some("agent.gendarmerie.tchap.example"),
    );
    check("ancien.agent@interieur.gouv.example", Outcome::Denied, None);
    check(
        "greffe.partenaire@avocats.example",
        Outcome::Allowed,
        Some("agent.justice.tchap.example"),
    );
    check(
        "accueil@ars-bretagne.sante.example",
        Outcome::InviteRequired,
        Some("externes.tchap.example"),
    );
    check(
        "a@prestataire-it.example",
        Outcome::InviteRequired,
        Some("externes.tchap.example"),
    );
    let d = decide(&index, "x@brigade.gendarmerie.interieur.gouv.example");
    assert_eq!(d.shadow_homeserver, None);
    assert_eq!(d.organisation.as_deref(), Some("Gendarmerie"));
    let d = decide(&index, "a@prefecture-75.interieur.gouv.example");
    assert_eq!(
        d.shadow_homeserver.as_deref(),
        Some("public.interieur.tchap.example")
    );
    assert_eq!(
        decide(&index, "a@mission-reforme.justice.gouv.example")
            .organisation
            .as_deref(),
        Some("Mission réforme")
    );
    let after = index.decide(
        &normalize_email("a@mission-reforme.justice.gouv.example").unwrap(),
        1_830_293_999_000,
    );
    assert_eq!(after.organisation.as_deref(), Some("Justice"));
    assert_eq!(
        decide(&index, "consultante@cabinet-conseil.example")
            .rule
            .as_deref(),
        Some("externes.toml:9")
    );
}

// --- Properties

/// A direct, linear reading of DESIGN.md's decision order, to check the index against.
fn naive_decide(rules: &[Rule], address: &Address, now_ms: i64) -> Option<String> {
    let live = |r: &&Rule| !r.is_expired(now_ms);
    let by_address: Vec<&Rule> = rules
        .iter()
        .filter(live)
        .filter(|r| match &r.target {
            RuleTarget::Email(e) => {
                normalize_email(e).unwrap().matching_form() == address.matching_form()
            }
            _ => false,
        })
        .collect();
    if let Some(r) = by_address
        .iter()
        .find(|r| r.kind == RuleKind::Deny)
        .or(by_address.first())
    {
        return Some(r.id.clone());
    }
    let domain = address.ascii_domain();
    let by_domain: Vec<&Rule> = rules
        .iter()
        .filter(live)
        .filter(|r| match &r.target {
            RuleTarget::Domain { name, subdomains } => {
                domain == name || (*subdomains && domain.ends_with(&format!(".{name}")))
            }
            _ => false,
        })
        .collect();
    if let Some(longest) = by_domain.iter().map(|r| r.target.value().len()).max() {
        let at: Vec<&&Rule> = by_domain
            .iter()
            .filter(|r| r.target.value().len() == longest)
            .collect();
        let r = at
            .iter()
            .find(|r| r.kind == RuleKind::Deny)
            .unwrap_or(&at[0]);
        return Some(r.id.clone());
    }
    let mut patterns: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.kind == RuleKind::Pattern)
        .collect();
    patterns.sort_by_key(|r| match &r.source {
        RuleSource::File { path, line } => (0, path.clone(), *line),
        RuleSource::Admin => (1, String::new(), 0),
    });
    for r in patterns.into_iter().filter(|r| !r.is_expired(now_ms)) {
        if let RuleTarget::Regex(re) = &r.target
            && regex::Regex::new(&format!("^(?:{re})$"))
                .unwrap()
                .is_match(address.matching_str())
        {
            return Some(r.id.clone());
        }
    }
    None
}

fn arb_rule_line() -> impl Strategy<Value = String> {
    let domain = prop::sample::select(vec![
        "a.example",
        "b.a.example",
        "c.b.a.example",
        "ab.example",
        "example",
        "x.example",
    ]);
    let expiry = prop::sample::select(vec![
        "",
        "expires_at = 2025-06-01T00:00:00Z\n",
        "expires_at = 2027-06-01T00:00:00Z\n",
    ]);
    let local = prop::sample::select(vec!["u", "v"]);
    let mail_domain = prop::sample::select(vec!["a.example", "b.a.example", "x.example"]);
    prop_oneof![
        (domain.clone(), any::<bool>(), expiry.clone(), any::<bool>()).prop_map(
            |(d, s, e, inv)| format!(
                "[[domain]]\nname = \"{d}\"\nsubdomains = {s}\nrequires_invite = {inv}\n{e}"
            )
        ),
        (domain.clone(), any::<bool>(), expiry.clone())
            .prop_map(|(d, s, e)| format!("[[deny]]\nname = \"{d}\"\nsubdomains = {s}\n{e}")),
        (local.clone(), mail_domain.clone(), expiry.clone())
            .prop_map(|(l, d, e)| format!("[[address]]\nemail = \"{l}@{d}\"\n{e}")),
        (local.clone(), mail_domain, expiry.clone())
            .prop_map(|(l, d, e)| format!("[[deny]]\nemail = \"{l}@{d}\"\n{e}")),
        (
            prop::sample::select(vec![
                "u@.*",
                ".*@b\\.a\\.example",
                "[uv]@.*a\\.example",
                "v@x\\.example"
            ]),
            expiry
        )
            .prop_map(|(p, e)| format!("[[pattern]]\nregex = '{p}'\n{e}")),
    ]
}

proptest! {
    #[test]
    fn the_index_agrees_with_a_linear_reading_of_the_rules(
        files in prop::collection::vec(prop::collection::vec(arb_rule_line(), 0..8), 1..4),
        local in prop::sample::select(vec!["u", "v", "w"]),
        domain in prop::sample::select(vec!["a.example", "b.a.example", "c.b.a.example", "d.c.b.a.example", "ab.example", "b.ab.example", "x.example", "y.example"]),
    ) {
        let files: Vec<(String, String)> = files
            .iter()
            .enumerate()
            .map(|(i, rules)| (format!("f{i}.toml"), format!("[organisation]\nhomeserver = \"hs{i}.example\"\n{}", rules.join("\n"))))
            .collect();
        // Random sets often hold duplicates; those are refused, which is also checked here.
        let rules = match parse_allowlists(&files) {
            Ok(rules) => rules,
            Err(errors) => {
                prop_assert!(errors.iter().all(|e| e.message.contains("defined twice")), "{errors:?}");
                return Ok(());
            }
        };
        let default = DefaultPolicy::Deny;
        let index = PolicyIndex::build(rules.clone(), default.clone()).unwrap();
        let address = normalize_email(&format!("{local}@{domain}")).unwrap();
        let expected = naive_decide(&rules, &address, NOW);
        let decision = index.decide(&address, NOW);
        prop_assert_eq!(&decision.rule_id, &expected);
        prop_assert_eq!(&index.explain(&address, NOW).decision, &decision);
        let rule = expected.and_then(|id| rules.iter().find(|r| r.id == id));
        let outcome = match rule {
            None => Outcome::Denied,
            Some(r) if r.kind == RuleKind::Deny => Outcome::Denied,
            Some(r) if r.requires_invite => Outcome::InviteRequired,
            Some(_) => Outcome::Allowed,
        };
        prop_assert_eq!(decision.outcome, outcome);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(s in any::<String>()) {
        let _ = parse_allowlist_file("t.toml", &s);
    }

    #[test]
    fn parsing_toml_like_text_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                Just("[organisation]".to_owned()),
                Just("[[domain]]".to_owned()),
                Just("[[deny]]".to_owned()),
                Just("[[address]]".to_owned()),
                Just("[[pattern]]".to_owned()),
                "(name|email|regex|label|homeserver|shadow_homeserver) = \"[a-zA-Z0-9@.*\\\\()\\[-]{0,12}\"",
                "(subdomains|requires_invite|force) = (true|false|1)",
                "expires_at = (2026-01-01T00:00:00Z|2026-01-01|2026-13-01T00:00:00Z|\"x\")",
            ],
            0..12,
        )
    ) {
        let _ = parse_allowlist_file("t.toml", &lines.join("\n"));
    }

    #[test]
    fn deciding_any_address_never_panics(s in any::<String>(), local in "[a-zA-Z0-9.ßé_+-]{1,12}", domain in "[a-zA-Z0-9é.-]{1,30}") {
        let index = deny_default(&[("finances.toml", FINANCES), ("t.toml", EXPIRING)]);
        for input in [s, format!("{local}@{domain}")] {
            if let Ok(a) = normalize_email(&input) {
                let d = index.decide(&a, NOW);
                prop_assert_eq!(index.explain(&a, NOW).decision, d);
            }
        }
    }
}

// ---- reason codes ----

const CODES: &str = r#"
[organisation]
label = "Finances"
homeserver = "agent.finances.example"

[[domain]]
name = "finances.gouv.fr"
subdomains = true

[[domain]]
name = "partenaire.example"
requires_invite = true

[[domain]]
name = "ancien.example"
expires_at = 2025-06-01T00:00:00Z

[[address]]
email = "ancien.prestataire@consult.example"
expires_at = 2025-06-01T00:00:00Z

[[deny]]
name = "webmail.finances.gouv.fr"

[[deny]]
email = "bloque@finances.gouv.fr"

[[deny]]
name = "hotmail.fr"

[[pattern]]
regex = '^[a-z]+@region-[0-9]+\.example$'
"#;

#[test]
fn every_decision_carries_a_stable_reason_code() {
    let external = DefaultPolicy::InviteOnly {
        external_homeserver: "externes.example".into(),
    };
    for default in [DefaultPolicy::Deny, external] {
        let index = index_of(&[("codes.toml", CODES)], default.clone());
        let cases = [
            ("jean@finances.gouv.fr", ReasonCode::Allowed),
            ("jean@douane.finances.gouv.fr", ReasonCode::Allowed),
            ("anne@region-12.example", ReasonCode::Allowed),
            ("paul@partenaire.example", ReasonCode::InviteRequired),
            ("x@webmail.finances.gouv.fr", ReasonCode::DeniedDomain),
            ("bloque@finances.gouv.fr", ReasonCode::DeniedAddress),
            // A deny rule naming a public provider is a deny rule first.
            ("someone@hotmail.fr", ReasonCode::DeniedDomain),
            ("someone@gmail.com", ReasonCode::PublicMailProvider),
            ("someone@mail.gmail.com", ReasonCode::PublicMailProvider),
            ("someone@nowhere.example", ReasonCode::UnknownDomain),
            ("jean@ancien.example", ReasonCode::RuleExpired),
            (
                "ancien.prestataire@consult.example",
                ReasonCode::RuleExpired,
            ),
            // A parent domain rule without subdomains never matched: not "expired".
            ("jean@sub.ancien.example", ReasonCode::UnknownDomain),
        ];
        for (address, code) in cases {
            let d = decide(&index, address);
            assert_eq!(d.reason_code, code, "{address} under {default:?}: {d:?}");
            // `explain` agrees with `decide`, codes included.
            let e = index.explain(&normalize_email(address).unwrap(), NOW);
            assert_eq!(e.decision, d, "{address}");
            match code {
                ReasonCode::UnknownDomain
                | ReasonCode::PublicMailProvider
                | ReasonCode::RuleExpired => {
                    assert!(d.rule.is_none(), "{address}: the default decided");
                    let expected = match default {
                        DefaultPolicy::Deny => Outcome::Denied,
                        DefaultPolicy::InviteOnly { .. } => Outcome::InviteRequired,
                    };
                    assert_eq!(d.outcome, expected, "{address}");
                }
                ReasonCode::DeniedDomain | ReasonCode::DeniedAddress => {
                    assert_eq!(d.outcome, Outcome::Denied, "{address}")
                }
                ReasonCode::InviteRequired => assert_eq!(d.outcome, Outcome::InviteRequired),
                ReasonCode::Allowed => assert_eq!(d.outcome, Outcome::Allowed),
            }
        }
    }
}

#[test]
fn reason_codes_are_spelled_as_documented() {
    let spelled: Vec<String> = ReasonCode::ALL
        .iter()
        .map(|c| {
            serde_json::to_value(c)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        spelled,
        [
            "allowed",
            "invite_required",
            "unknown_domain",
            "public_mail_provider",
            "denied_domain",
            "denied_address",
            "rule_expired"
        ]
    );
    for code in ReasonCode::ALL {
        assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
    }
}

#[test]
fn the_default_keeps_its_older_wording_for_unknown_domains() {
    let index = index_of(
        &[("codes.toml", CODES)],
        DefaultPolicy::InviteOnly {
            external_homeserver: "externes.example".into(),
        },
    );
    assert_eq!(
        decide(&index, "a@nowhere.example").reason,
        "not an agency domain: addresses at nowhere.example may join the external homeserver by invitation only"
    );
    let gmail = decide(&index, "a@gmail.com").reason;
    assert!(
        gmail.contains("gmail.com is a public mail provider"),
        "{gmail}"
    );
    let expired = decide(&index, "jean@ancien.example").reason;
    assert!(expired.contains("has expired"), "{expired}");
}
