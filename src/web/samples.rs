//! Sample values for every page: rendered in every language when the templates are loaded (a
//! broken override stops the start) and by the unit tests. They take the shapes the handlers
//! give (`http::pages`, `http::console`).

use serde_json::{Value, json};

use super::{Chrome, ChromeUser, LanguageLink};
use crate::config::Language;

/// The chrome of a sample page.
pub fn chrome(lang: Language, console: bool) -> Chrome {
    Chrome {
        lang: lang.code().to_owned(),
        service_name: "annuaire".into(),
        assets: if console {
            "/_annuaire/console/assets".into()
        } else {
            "/assets".into()
        },
        languages: vec![LanguageLink {
            code: lang.code().to_owned(),
            name: lang.code().to_owned(),
            href: "?lang=fr".into(),
            current: true,
        }],
        csrf: "csrf".into(),
        user: console.then(|| ChromeUser {
            username: "ed".into(),
            role: "editor".into(),
            editor: true,
        }),
        section: "rules".into(),
    }
}

fn rule(kind: &str, value: &str) -> Value {
    json!({"id": "r0123456789abcdef", "kind": kind, "value": value, "subdomains": true,
        "label": "Finances", "homeserver": "hs.example", "shadow_homeserver": null,
        "requires_invite": true, "expires_at": 1_800_000_000_000_i64, "expired": true,
        "force": false, "source": "admin", "reference": "admin:r0123456789abcdef"})
}

fn entry() -> Value {
    json!({"user_id": "@jean:hs.example", "homeserver": "hs.example", "name": "Jean Dupont",
        "name_source": "ldap", "admin_name": null, "display_name": "Jean Dupont [Finances]",
        "organisation": "Finances", "avatar_url": null, "visibility": "visible", "external": true,
        "active": false, "searchable": false, "updated_at": 1_800_000_000_000_i64})
}

/// Every page with sample values covering its branches.
pub fn all() -> Vec<(&'static str, Value)> {
    let facets = json!({"organisations": ["Finances"], "homeservers": ["hs.example"],
        "sources": ["admin", "finances.toml"]});
    let check = |verdict: &str, may_request: bool| {
        json!({"address": "a@b.example", "domain": "b.example", "verdict": verdict,
            "homeserver": "hs.example", "organisation": "Finances", "unknown_domain": may_request,
            "may_request": may_request, "client_link": "https://app.example/"})
    };
    let mut pages = vec![
        (
            "home.html",
            json!({"operator": "DINUM", "address": "", "error": "invalid_address", "check": null}),
        ),
        (
            "home.html",
            json!({"operator": null, "address": "a@b.example", "error": null, "check": check("allowed", false)}),
        ),
        (
            "home.html",
            json!({"operator": null, "address": "a@b.example", "error": null, "check": check("invite_required", true)}),
        ),
        (
            "request.html",
            json!({"address": "a@b.example", "name": "", "organisation": "", "message": "",
            "errors": {"address": "invalid_address", "name": "missing", "organisation": "too_long", "message": "control_characters"}}),
        ),
        (
            "request.html",
            json!({"address": "", "name": "", "organisation": "", "message": "", "errors": {}}),
        ),
        (
            "submit_token.html",
            json!({"outcome": "success", "server_name": "id.example"}),
        ),
        (
            "console_login.html",
            json!({"username": "ed", "error": "bad_credentials", "expired": true, "logged_out": true, "next": "/_annuaire/console/"}),
        ),
        (
            "console_dashboard.html",
            json!({
            "pending_domains": 2,
            "attempts_since": 1_800_000_000_000_i64,
            "chart": super::chart::bars(&[("a.example".into(), 3, 4)]),
            "attempts": [{"domain": "a.example", "denied": 3, "invite_required": 4, "total": 7, "last_seen": 1_800_000_000_000_i64}],
            "rules": {"total": 3, "admin": 1, "expiring": 1, "per_kind": [{"kind": "domain", "count": 3}]},
            "outbox": {"queued": 1, "sending": 0, "retrying": 1, "sent_24h": 4, "failed_24h": 1, "superseded_24h": 0,
                "oldest_unsent_at": 1_800_000_000_000_i64, "oldest_unsent_age_ms": 700_000},
            "directory": {"total": {"entries": 5, "visible": 4, "hidden": 1, "external": 1, "inactive": 0},
                "organisations": [{"organisation": null, "entries": 5}], "homeservers": [{"homeserver": "hs.example", "entries": 5}]},
            "directory_as_of": 1_800_000_000_000_i64}),
        ),
        (
            "console_rules.html",
            json!({"done": "created", "error": "oops", "filters": {"domain": "x", "organisation": "", "homeserver": "", "source": "", "kind": "domain"},
            "facets": facets, "rules": [rule("domain", "finances.example")], "next": "r1", "from": "r0"}),
        ),
        (
            "console_rules.html",
            json!({"done": null, "error": null, "filters": {}, "facets": facets, "rules": [], "next": null, "from": null}),
        ),
        (
            "console_rule.html",
            json!({"done": "converted", "was": "finances.toml:3", "requesters_told": 2, "error": "oops", "rule": rule("deny", "x.example")}),
        ),
        (
            "console_rule.html",
            json!({"done": null, "error": null, "rule": json!({"id": "r1", "kind": "domain", "value": "f.example", "subdomains": false, "label": null, "homeserver": null, "shadow_homeserver": null, "requires_invite": false, "expires_at": null, "expired": false, "force": false, "source": "f.toml", "reference": "f.toml:2"})}),
        ),
        (
            "console_rule_form.html",
            json!({"mode": "new", "action": "/_annuaire/console/rules/new", "cancel": "/_annuaire/console/rules", "request_domain": "mairie.example",
            "values": {"kind": "domain", "name": "mairie.example", "subdomains": true, "email": "", "regex": "", "label": "", "homeserver": "", "shadow_homeserver": "", "requires_invite": false, "expires_at": "", "force": false},
            "errors": {"homeserver": "the domain rule allows addresses but has no homeserver"}, "general_errors": ["duplicate"]}),
        ),
        (
            "console_rule_form.html",
            json!({"mode": "edit", "action": "/_annuaire/console/rules/r1/edit", "cancel": "/_annuaire/console/rules/r1", "request_domain": null,
            "values": {"kind": "address", "name": "", "subdomains": false, "email": "a@b.example", "regex": "", "label": "L", "homeserver": "hs", "shadow_homeserver": "", "requires_invite": true, "expires_at": "2027-01-01T00:00", "force": false},
            "errors": {}, "general_errors": []}),
        ),
        (
            "console_import.html",
            json!({"toml": "[[domain]]", "errors": ["import.toml:1: bad"], "applied": false,
            "diff": {"added": [rule("domain", "a.example")], "changed": [{"before": rule("domain", "b.example"), "after": rule("domain", "b.example")}]}}),
        ),
        (
            "console_import.html",
            json!({"toml": "", "errors": [], "applied": true, "diff": {"added": [], "changed": []}}),
        ),
        ("console_export.html", json!({"facets": facets})),
        (
            "console_explain.html",
            json!({"address": "a@b.example", "error": null, "result": {"address": "a@b.example",
            "decision": {"outcome": "allowed", "homeserver": "hs", "shadow_homeserver": null, "organisation": "F", "rule": "admin:r1", "rule_id": "r1", "reason": "because"},
            "considered": [{"id": "r1", "kind": "domain", "value": "b.example", "reference": "admin:r1", "matched": true, "why": "w", "winner": true}]}}),
        ),
        (
            "console_explain.html",
            json!({"address": "", "error": "invalid", "result": null}),
        ),
        (
            "console_audit.html",
            json!({"error": "bad", "filters": {"actor": "ed", "action": "rule.create", "target": "", "since": "2026-01-01", "until": ""},
            "actions": ["rule.create"], "entries": [{"id": 1, "at": 1_800_000_000_000_i64, "actor": "ed", "action": "rule.create", "target": "rule:r1", "before": null, "after": {"a": 1}}],
            "next": "5", "from": "9"}),
        ),
        (
            "console_directory.html",
            json!({"error": null, "filters": {"q": "jean", "organisation": "", "homeserver": "", "visibility": ""},
            "entries": [entry()], "next": "@x:y", "from": "@a:b", "limited": true}),
        ),
        (
            "console_entry.html",
            json!({"done": "hidden", "error": "oops", "entry": entry()}),
        ),
        (
            "console_erase.html",
            json!({"address": "a@b.example", "error": "mismatch", "result": {"medium": "email", "address": "a@b.example",
            "unbound_from": "@a:hs", "invites": 1, "sessions": 2, "queued_mails": 0, "directory": []}}),
        ),
        (
            "console_accounts.html",
            json!({"done": "added", "done_name": "vi", "error": "oops", "form": {"username": "", "role": "viewer"},
            "accounts": [{"username": "ed", "role": "editor", "source": "local", "created_at": 1, "last_login_at": 2, "locked_until": 3}]}),
        ),
        (
            "console_homeservers.html",
            json!({"done": "revoked", "done_name": "hs.example", "error": "oops", "server_name": "hs.example",
            "new_token": {"server_name": "hs.example", "token": "t0k3n"},
            "tokens": [{"server_name": "hs.example", "status": "active", "created_at": 1, "created_by": "cli:root", "revoked_at": null, "last_used_at": 2},
                       {"server_name": "old.example", "status": "revoked", "created_at": 1, "created_by": "ed", "revoked_at": 3, "last_used_at": null}]}),
        ),
        (
            "console_requests.html",
            json!({"done": "declined", "done_domain": "m.example", "told": 2,
            "queue": [{"domain": "m.example", "requesters": 2, "organisations": ["Mairie"], "first_requested_at": 1, "last_requested_at": 2}]}),
        ),
        (
            "console_request_domain.html",
            json!({"domain": "m.example", "error": "oops", "decline_message": "", "suggested_label": "Mairie",
            "requests": [{"id": "1", "domain": "m.example", "address": "a@m.example", "name": "A", "organisation": "Mairie", "message": "hi",
                "status": "pending", "requested_at": 1, "decided_at": null, "decided_by": null, "decision_message": null}]}),
        ),
        (
            "console_error.html",
            json!({"code": "csrf", "message": "detail"}),
        ),
    ];
    for outcome in [
        "mail_sent",
        "already_pending",
        "confirmed",
        "invalid_link",
        "rate_limited",
        "disabled",
        "not_needed",
        "form_expired",
        "error",
    ] {
        pages.push((
            "request_done.html",
            json!({"outcome": outcome, "domain": "m.example"}),
        ));
    }
    for code in ["forbidden", "not_found", "error"] {
        pages.push(("console_error.html", json!({"code": code, "message": null})));
    }
    for outcome in [
        "token_incorrect",
        "locked",
        "expired",
        "no_session",
        "invalid",
        "error",
    ] {
        pages.push((
            "submit_token.html",
            json!({"outcome": outcome, "server_name": "id.example"}),
        ));
    }
    pages
}
