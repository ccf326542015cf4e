//! Identity Service domain (Matrix Identity Service API v2).
//!
//! The submodules here are pure (no I/O): canonical JSON and ed25519 signatures
//! ([`signing`]), hashed-lookup hashing ([`hashing`]) and the X-Matrix request
//! signature header ([`xmatrix`]). Fetching homeserver keys lives in [`crate::federation`].

pub mod hashing;
pub mod signing;
pub mod xmatrix;
