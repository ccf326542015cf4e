//! Random tokens and the pseudonyms that stand for secrets and addresses in logs.

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

use rand::Rng as _;
use rand::RngCore;
use rand::distributions::Alphanumeric;
use sha2::{Digest as _, Sha256};

/// `len` random ASCII letters and digits from `rng`: safe in URLs, JSON and mail, and with
/// 5.95 bits each (a 32-character token carries 190 bits).
pub fn random_token(rng: &mut impl RngCore, len: usize) -> String {
    (0..len)
        .map(|_| char::from(rng.sample(Alphanumeric)))
        .collect()
}

/// A random identifier (24 alphanumeric characters) for rows, workers and databases.
pub fn random_id() -> String {
    random_token(&mut rand::thread_rng(), 24)
}

/// A short, stable, non-reversible tag for an address or token in logs.
pub fn log_tag(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// A keyed hash of `text` (HMAC-SHA-256 with `key`, 128 bits in hex): the same text gives the
/// same value under one key, and nobody without the key can tell which text it stands for,
/// even by trying every address.
pub fn keyed_hash(key: &[u8], text: &str) -> String {
    use hmac::{Hmac, Mac as _};
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return log_tag(text);
    };
    mac.update(text.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn tokens_are_alphanumeric_of_the_asked_length() {
        let mut rng = StdRng::seed_from_u64(1);
        let t = random_token(&mut rng, 32);
        assert_eq!(t.len(), 32);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(t, random_token(&mut rng, 32));
        assert_eq!(random_id().len(), 24);
    }

    #[test]
    fn log_tags_are_short_and_stable() {
        assert_eq!(log_tag("a@b.c"), log_tag("a@b.c"));
        assert_ne!(log_tag("a@b.c"), log_tag("a@b.d"));
        assert_eq!(log_tag("x").len(), 8);
    }

    #[test]
    fn keyed_hashes_depend_on_the_key() {
        // RFC 4231 test case 2, truncated to 128 bits.
        assert_eq!(
            keyed_hash(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c7"
        );
        assert_ne!(keyed_hash(b"k1", "a@b.c"), keyed_hash(b"k2", "a@b.c"));
        assert_eq!(keyed_hash(b"k1", "a@b.c"), keyed_hash(b"k1", "a@b.c"));
    }
}
