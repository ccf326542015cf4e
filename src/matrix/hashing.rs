//! Hashed 3PID lookups (Identity Service API v2 `/hash_details`, `/lookup`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

/// The `sha256` lookup hash: SHA-256 of `"<address> <medium> <pepper>"`, URL-safe unpadded
/// base64. `address` must already be in its normalised form (the form that is stored).
pub fn lookup_hash(address: &str, medium: &str, pepper: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(address.as_bytes());
    hasher.update(b" ");
    hasher.update(medium.as_bytes());
    hasher.update(b" ");
    hasher.update(pepper.as_bytes());
    URL_SAFE_NO_PAD.encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_vector() {
        assert_eq!(
            lookup_hash("alice@example.com", "email", "matrixrocks"),
            "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"
        );
    }

    #[test]
    fn hash_is_sha256_of_the_space_joined_triple() {
        let expected = URL_SAFE_NO_PAD.encode(Sha256::digest("bob@example.org msisdn p3pper"));
        assert_eq!(lookup_hash("bob@example.org", "msisdn", "p3pper"), expected);
        // Every part matters, and the separator keeps parts from running together.
        let base = lookup_hash("a@b.c", "email", "x");
        assert_ne!(base, lookup_hash("a@b.c", "email", "y"));
        assert_ne!(base, lookup_hash("a@b.c", "msisdn", "x"));
        assert_ne!(
            lookup_hash("a@b.c e", "mail", "x"),
            lookup_hash("a@b.c", "email", "x")
        );
        assert_eq!(base.len(), 43);
        assert!(!base.contains(['+', '/', '=']));
    }

    #[test]
    fn hashes_unicode_addresses_as_utf8() {
        let expected =
            URL_SAFE_NO_PAD.encode(Sha256::digest("élodie@exemple.fr email p".as_bytes()));
        assert_eq!(lookup_hash("élodie@exemple.fr", "email", "p"), expected);
    }
}
