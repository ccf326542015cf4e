//! annuaire: identity and directory service for sovereign, sharded Matrix deployments.
//!
//! See README.md ("Architecture") for the module layering.

pub mod admin;
pub mod allowlist;
pub mod audit;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod directory;
pub mod domain_requests;
pub mod federation;
pub mod homeserver;
pub mod http;
pub mod identity;
pub mod ldap;
pub mod mail;
pub mod matrix;
pub mod policy;
pub mod ratelimit;
pub mod runtime;
pub mod secret;
pub mod store;
pub mod telemetry;
pub mod templates;
pub mod web;

pub use runtime::Annuaire;
