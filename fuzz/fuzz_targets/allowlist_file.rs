//! The allowlist file parser and the engine: no input panics either; what parses compiles and
//! decides.
#![no_main]

use annuaire::policy::{DefaultPolicy, PolicyIndex, normalize_email, parse_allowlist_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(rules) = parse_allowlist_file("fuzz.toml", input)
        && let Ok(index) = PolicyIndex::build(
            rules,
            DefaultPolicy::InviteOnly {
                external_homeserver: "ext.example".into(),
            },
        )
    {
        for probe in [
            "a@b.example",
            "jean.dupont@finances.gouv.example",
            "x@gmail.com",
        ] {
            if let Ok(address) = normalize_email(probe) {
                let _ = index.decide(&address, 0);
                let _ = index.explain(&address, i64::MAX);
            }
        }
    }
});
