//! The cross-shard directory: entries of bound users with verified display names and
//! organisation labels, searched across every shard.
//!
//! Pure parts: verified display names ([`names`]), search folding and ranking ([`search`]) and
//! synthetic people ([`synthetic`]). An entry's verified name comes from an admin override, the
//! agency LDAP directory ([`names::name_from_ldap`]) or the address's local part
//! ([`names::name_from_local_part`]); it is published through `directory.display_name_format`
//! ([`names::format_display_name`]) and indexed as a folded [`search::SearchKey`], which
//! [`search::rank`] scores against a parsed [`search::SearchQuery`].
//!
//! Services (storage through `store::directory`, no HTTP): entries created at bind and removed
//! at unbind, and moderation ([`entries`]); searching and who may search ([`service`],
//! [`access`]); the federated directory of MSC4258 ([`federated`]); profile replication from
//! homeservers ([`replication`]); verified names and profile changes reported through the
//! homeserver API ([`profiles`]); LDAP sync ([`ldap_sync`]).

pub mod access;
pub mod entries;
pub mod error;
pub mod federated;
pub mod ldap_sync;
pub mod names;
pub mod profiles;
pub mod replication;
pub mod search;
pub mod service;
pub mod synthetic;

pub use entries::{DirectoryEntry, ImportSummary, NameSource, Visibility, email_lookup_key};
pub use error::DirectoryError;
pub use profiles::{FieldChange, ProfileOutcome, VerifiedName};
pub use service::{DirectoryParts, DirectoryService, SearchResult, SearchResults, Viewer};
