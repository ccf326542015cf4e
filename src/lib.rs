//! annuaire: identity and directory service for sovereign, sharded Matrix deployments.
//!
//! See README.md ("Architecture") for the module layering.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod clock;
pub mod policy;
