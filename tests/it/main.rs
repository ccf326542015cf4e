//! The integration test binary: every module drives a real server (or the real binary) over
//! HTTP. The same tests run on SQLite and on PostgreSQL (`TEST_DATABASE`).

mod support;

mod foundation;
