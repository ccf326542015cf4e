//! The integration test binary: one binary, one module per area, to keep link time down.

mod mail_smtp;
