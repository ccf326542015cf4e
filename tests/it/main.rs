//! The integration test binary: every module drives a real server (or the real binary, or a real
//! SMTP/LDAP/PostgreSQL server) over the network. The same tests run on SQLite and on PostgreSQL
//! (`TEST_DATABASE`); one binary keeps link time down.

// Test helpers outside #[test] functions fail the test the same way: by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod admin;
mod caches;
mod console;
mod directory;
mod federated_directory;
mod foundation;
mod homeserver;
mod identity;
mod invites;
mod layering;
mod ldap;
mod mail_languages;
mod mail_smtp;
mod outbox;
mod policy;
mod production;
mod robustness;
mod snapshots;
mod sydent_import;
mod validation;
