//! The cross-shard directory's pure parts: verified display names, search folding and ranking,
//! and synthetic people for demos and benchmarks.
//!
//! Nothing here does I/O: storage (entries, the FTS5 / tsvector index) and the HTTP endpoints
//! call these functions. An entry's verified name comes from an admin override, the agency LDAP
//! directory ([`names::name_from_ldap`]) or the address's local part
//! ([`names::name_from_local_part`]); it is published through `directory.display_name_format`
//! ([`names::format_display_name`]) and indexed as a folded [`search::SearchKey`], which
//! [`search::rank`] scores against a parsed [`search::SearchQuery`].

pub mod names;
pub mod search;
pub mod synthetic;
