//! Pure Matrix primitives, shared by the identity service, the directory and the federation
//! client: canonical JSON and ed25519 JSON signatures ([`signing`]), public keys and
//! server-key responses ([`keys`]), the `X-Matrix` request signature ([`xmatrix`]), server
//! names and user ids ([`server_name`]) and the hashed-lookup hash ([`hashing`]).
//!
//! No I/O, no clock, no randomness of its own (an RNG is a parameter), and nothing else of the
//! crate is imported here: this is the leaf every other layer may use.

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

pub mod hashing;
pub mod keys;
pub mod server_name;
pub mod signing;
pub mod xmatrix;
