//! Public keys: the one form annuaire stores and compares them in, and the checks behind
//! `/v2/pubkey/isvalid`.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::signing::SigningKey;
pub use super::signing::is_valid_public_key;

/// Standard and URL-safe base64 decoders, padded or not: `/pubkey/*isvalid` accepts both.
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);
const LENIENT_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A public key in the one form we store and compare (standard unpadded base64 of 32 bytes),
/// from standard or URL-safe base64, padded or not; `None` if it is not 32 bytes of base64.
pub fn canonical_public_key(text: &str) -> Option<String> {
    let text = text.trim();
    let bytes = LENIENT_STANDARD
        .decode(text)
        .or_else(|_| LENIENT_URL_SAFE.decode(text))
        .ok()?;
    (bytes.len() == 32).then(|| STANDARD_NO_PAD.encode(bytes))
}

/// Whether `public_key` (any base64 form) is the long-term key.
pub fn is_long_term_key(key: &SigningKey, public_key: &str) -> bool {
    canonical_public_key(public_key).is_some_and(|k| k == key.public_key_base64())
}

/// The public key published under `key_id`, if it is ours.
pub fn public_key_for(key: &SigningKey, key_id: &str) -> Option<String> {
    (key.key_id() == key_id).then(|| key.public_key_base64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn public_keys_compare_in_any_base64_form() {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(7));
        let standard = key.public_key_base64();
        let bytes = LENIENT_STANDARD.decode(&standard).unwrap();
        let url_safe = URL_SAFE_NO_PAD.encode(&bytes);
        let padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        for form in [&standard, &url_safe, &padded] {
            assert!(is_long_term_key(&key, form), "{form}");
            assert_eq!(canonical_public_key(form).unwrap(), standard);
        }
        let other = SigningKey::generate(&mut StdRng::seed_from_u64(8));
        assert!(!is_long_term_key(&key, &other.public_key_base64()));
        assert!(!is_long_term_key(&key, "not base64!"));
        assert_eq!(canonical_public_key("AAAA"), None, "3 bytes is not a key");
    }

    #[test]
    fn key_ids() {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(7));
        assert_eq!(
            public_key_for(&key, "ed25519:0"),
            Some(key.public_key_base64())
        );
        assert_eq!(public_key_for(&key, "ed25519:1"), None);
    }
}
