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
pub mod opt_out;
pub mod profiles;
pub mod replication;
pub mod search;
pub mod service;
pub mod synthetic;

pub use entries::{DirectoryEntry, ImportSummary, NameSource, Visibility, email_lookup_key};
pub use error::DirectoryError;
pub use profiles::{FieldChange, ProfileOutcome, VerifiedName};
pub use service::{DirectoryParts, DirectoryService, SearchResult, SearchResults, Viewer};

/// How often the directory gauges are recomputed (a count over every entry).
const GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// Starts the job that sets `annuaire_directory_entries`, `annuaire_directory_opted_out` and
/// the last LDAP sync's gauges (every 5 minutes, first at start); it ends with the runtime.
pub fn start_gauges(directory: &std::sync::Arc<DirectoryService>) {
    let directory = directory.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(GAUGE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let counts = directory
                .db
                .run(|conn| {
                    Ok((
                        crate::store::directory::count(conn)?,
                        crate::store::account::count_opted_out(conn)?,
                        ldap_sync::LastSync::read(conn)?,
                    ))
                })
                .await;
            match counts {
                #[allow(clippy::cast_precision_loss)]
                Ok((entries, opted_out, last_sync)) => {
                    metrics::gauge!("annuaire_directory_entries").set(entries as f64);
                    metrics::gauge!("annuaire_directory_opted_out").set(opted_out as f64);
                    if let Some(last_sync) = last_sync {
                        last_sync.set_gauges();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not count directory entries"),
            }
        }
    });
}
