//! Fixtures shared by the test modules: the Finances and Justice allowlist files, the
//! homeservers they name, and terms of service.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Builder;

/// The Finances ministry's homeserver (and the name the homeserver double signs as).
pub const FINANCES_HS: &str = "agent.finances.example";
/// The Justice ministry's homeserver.
pub const JUSTICE_HS: &str = "agent.justice.example";

/// An allowlist file: its name in the allowlists folder, and its text.
pub type AllowlistFile = (&'static str, &'static str);

/// `finances.toml`: the domain and its subdomains, a shadow homeserver, one denied subdomain
/// (line 11, which tests quote) and one invited-only outside address.
pub const FINANCES: AllowlistFile = (
    "finances.toml",
    r#"
[organisation]
label = "Finances"
homeserver = "agent.finances.example"
shadow_homeserver = "public.finances.example"

[[domain]]
name = "finances.gouv.example"
subdomains = true

[[deny]]
name = "webmail.finances.gouv.example"

[[address]]
email = "consultant@partner.example"
requires_invite = true
"#,
);

/// `justice.toml`: one domain, no subdomains, no shadow homeserver.
pub const JUSTICE: AllowlistFile = (
    "justice.toml",
    r#"
[organisation]
label = "Justice"
homeserver = "agent.justice.example"

[[domain]]
name = "justice.gouv.example"
"#,
);

/// Writes `files` into `dir/allowlists` (created if needed); returns that folder.
pub fn write_allowlists(dir: &Path, files: &[AllowlistFile]) -> PathBuf {
    let lists = dir.join("allowlists");
    std::fs::create_dir_all(&lists).unwrap();
    for (name, text) in files {
        std::fs::write(lists.join(name), text).unwrap();
    }
    lists
}

/// A server reading `files` as its allowlists, reloaded every 200 ms.
pub fn with_allowlists(b: Builder, files: &[AllowlistFile]) -> Builder {
    b.config(|c, dir| {
        c.policy.allowlists_dir = write_allowlists(dir, files);
        c.policy.reload_interval = annuaire::config::HumanDuration(Duration::from_millis(200));
    })
}

/// Terms of service: two policies, the first in two languages.
pub const TERMS: &str = r#"
version = "1"
[policies.terms_of_service]
version = "1.0"
en = { name = "Terms", url = "https://is.test.example/tos-1.0-en.html" }
fr = { name = "Conditions", url = "https://is.test.example/tos-1.0-fr.html" }
[policies.privacy_policy]
version = "1.0"
en = { name = "Privacy", url = "https://is.test.example/privacy-1.0-en.html" }
"#;

/// A server with [`TERMS`] in `dir/terms.toml`.
pub fn with_terms(b: Builder) -> Builder {
    b.config(|c, dir| {
        std::fs::write(dir.join("terms.toml"), TERMS).unwrap();
        c.terms.file = Some(dir.join("terms.toml"));
    })
}
