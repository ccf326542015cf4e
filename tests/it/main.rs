//! The integration test binary: every module drives a real server (or the real binary, or a real
//! SMTP/LDAP/PostgreSQL server) over the network. The same tests run on SQLite and on PostgreSQL
//! (`TEST_DATABASE`); one binary keeps link time down.

// Test helpers outside #[test] functions fail the test the same way: by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod admin;
mod caches;
mod directory;
mod foundation;
mod identity;
mod layering;
mod ldap;
mod mail_smtp;
mod outbox;
mod policy;
mod robustness;
mod snapshots;
mod validation;
