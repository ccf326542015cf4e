//! Identity Service domain (Matrix Identity Service API v2).
//!
//! The submodules here are pure (no I/O): canonical JSON and ed25519 signatures
//! ([`signing`]), hashed-lookup hashing ([`hashing`]) and the X-Matrix request
//! signature header ([`xmatrix`]). Fetching homeserver keys lives in [`crate::federation`].
//! [`sessions`] holds the email validation sessions (with their storage and mail).

pub mod hashing;
pub mod sessions;
pub mod signing;
pub mod xmatrix;
