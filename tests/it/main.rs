//! The integration test binary: every module drives a real server (or the real binary, or a real
//! SMTP/LDAP/PostgreSQL server) over the network. The same tests run on SQLite and on PostgreSQL
//! (`TEST_DATABASE`); one binary keeps link time down.

mod support;

mod admin;
mod directory;
mod foundation;
mod identity;
mod ldap;
mod mail_smtp;
mod outbox;
mod policy;
mod robustness;
mod sydent_import;
mod validation;
