//! The allowlist engine: address normalisation, rules, the allowlist file format and the compiled
//! index that decides, for one address, allowed / invite required / denied and on which
//! homeserver. Pure code: no files, network, environment or clock (callers pass `now_ms`).

#![deny(missing_docs)]

pub mod address;
pub mod diff;
pub mod file;
pub mod index;
mod instant;
mod json;
mod public_mail;
pub mod render;
pub mod rule;
pub mod validate;

#[cfg(test)]
mod tests;

pub use address::{Address, AddressError, normalize_domain, normalize_email};
pub use diff::{RuleDiff, diff};
pub use file::{RuleError, parse_allowlist_file, parse_allowlists};
pub use index::{
    Considered, Decision, DefaultPolicy, Explanation, Outcome, PolicyIndex, ReasonCode,
};
pub use public_mail::public_provider;
pub use render::render_allowlist_file;
pub use rule::{Rule, RuleKind, RuleSource, RuleTarget};
pub use validate::{check_duplicates, validate_rule};
