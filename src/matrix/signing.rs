//! Matrix canonical JSON and ed25519 JSON signatures (spec appendix "Signing JSON").
//!
//! Everything here is pure: keys are values, randomness is a parameter. Storage of the
//! long-term key (database or `server.signing_key_file`) belongs to the caller.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ed25519_dalek::{Signer as _, Verifier as _};
use rand::{CryptoRng, RngCore};
use serde_json::{Map, Value};

/// The key id annuaire signs with unless configured otherwise.
pub const DEFAULT_KEY_ID: &str = "ed25519:0";

/// Largest integer magnitude canonical JSON allows: 2^53 − 1.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Standard-alphabet base64 decoder that accepts padded or unpadded input and non-zero
/// trailing bits, because the spec asks decoders to be lenient and its own test seed
/// (`…XA1`) has non-zero trailing bits.
pub(crate) const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Why a value has no canonical JSON form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalJsonError {
    /// A number with a fractional part (canonical JSON has integers only).
    #[error("canonical JSON allows integers only, found {0}")]
    NotAnInteger(String),
    /// An integer outside ±(2^53 − 1).
    #[error("integer {0} is outside the canonical JSON range ±(2^53-1)")]
    OutOfRange(String),
}

/// Matrix canonical JSON: keys sorted by code point, no insignificant whitespace, UTF-8
/// unescaped except what JSON requires, integers only within ±(2^53 − 1).
///
/// A number whose value is an integer is accepted however it was written (`-0` → `0`,
/// `1e10` → `10000000000`, as the spec's own example requires); fractional or
/// out-of-range numbers are errors.
pub fn canonical_json(value: &Value) -> Result<String, CanonicalJsonError> {
    let mut out = String::new();
    write_value(&mut out, value)?;
    Ok(out)
}

/// Canonical JSON of an object without the top-level members named in `skip` (the
/// signed form leaves out `signatures` and `unsigned`), without cloning the object.
fn canonical_object_without(
    map: &Map<String, Value>,
    skip: &[&str],
) -> Result<String, CanonicalJsonError> {
    let mut out = String::new();
    write_object(&mut out, map, skip)?;
    Ok(out)
}

fn write_value(out: &mut String, value: &Value) -> Result<(), CanonicalJsonError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n)?,
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, &[])?,
    }
    Ok(())
}

fn write_object(
    out: &mut String,
    map: &Map<String, Value>,
    skip: &[&str],
) -> Result<(), CanonicalJsonError> {
    // Sorting `str`s compares their UTF-8 bytes, which orders by code point. The map's own
    // order is not relied on (serde_json's `preserve_order` may be on somewhere in the tree).
    let mut entries: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value)?;
    }
    out.push('}');
    Ok(())
}

fn write_number(out: &mut String, n: &serde_json::Number) -> Result<(), CanonicalJsonError> {
    let integer = if let Some(i) = n.as_i64() {
        i
    } else if let Some(u) = n.as_u64() {
        // Only reached above i64::MAX, hence out of range.
        return Err(CanonicalJsonError::OutOfRange(u.to_string()));
    } else {
        let f = n
            .as_f64()
            .ok_or_else(|| CanonicalJsonError::NotAnInteger(n.to_string()))?;
        if !f.is_finite() || f.fract() != 0.0 {
            return Err(CanonicalJsonError::NotAnInteger(n.to_string()));
        }
        if f.abs() > MAX_SAFE_INTEGER as f64 {
            return Err(CanonicalJsonError::OutOfRange(n.to_string()));
        }
        // Exact: the value is integral and within 2^53.
        f as i64
    };
    if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&integer) {
        return Err(CanonicalJsonError::OutOfRange(integer.to_string()));
    }
    out.push_str(&integer.to_string());
    Ok(())
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Why a signing key could not be read or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key id is not `ed25519:<version>` with a version of `[A-Za-z0-9_]`.
    #[error("invalid key id {0:?}: expected ed25519:<letters, digits or _>")]
    InvalidKeyId(String),
    /// The seed is not base64 of exactly 32 bytes.
    #[error("invalid ed25519 seed: {0}")]
    InvalidSeed(String),
    /// The text is not in Sydent's `ed25519 <version> <seed>` format.
    #[error("invalid signing key file: {0}")]
    InvalidFormat(String),
}

/// An ed25519 signing key and the key id it signs under (`ed25519:0`).
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    key_id: String,
}

impl fmt::Debug for SigningKey {
    // The seed is a secret: show only what is public.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("public_key", &self.public_key_base64())
            .finish()
    }
}

impl SigningKey {
    /// A fresh key under [`DEFAULT_KEY_ID`].
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
            key_id: DEFAULT_KEY_ID.to_owned(),
        }
    }

    /// The key from a base64 seed (padded or not) under `key_id`.
    pub fn from_seed_base64(key_id: &str, seed_b64: &str) -> Result<Self, KeyError> {
        validate_key_id(key_id)?;
        // Standard or URL-safe alphabet (Sydent mails URL-safe ephemeral keys).
        let standard: String = seed_b64
            .trim()
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        let bytes = LENIENT_BASE64
            .decode(standard)
            .map_err(|e| KeyError::InvalidSeed(e.to_string()))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| KeyError::InvalidSeed(format!("{} bytes, not 32", b.len())))?;
        Ok(Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
            key_id: key_id.to_owned(),
        })
    }

    /// The same key under another key id (ephemeral invite keys, spec vectors).
    pub fn with_key_id(mut self, key_id: &str) -> Result<Self, KeyError> {
        validate_key_id(key_id)?;
        key_id.clone_into(&mut self.key_id);
        Ok(self)
    }

    /// Reads Sydent's and Synapse's key file line: `ed25519 <version> <base64 seed>`.
    pub fn parse_sydent(text: &str) -> Result<Self, KeyError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let line = lines
            .next()
            .ok_or_else(|| KeyError::InvalidFormat("empty".to_owned()))?;
        if lines.next().is_some() {
            return Err(KeyError::InvalidFormat(
                "more than one key; keep exactly one line".to_owned(),
            ));
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [algorithm, version, seed] = parts.as_slice() else {
            return Err(KeyError::InvalidFormat(
                "expected `ed25519 <version> <base64 seed>`".to_owned(),
            ));
        };
        if *algorithm != "ed25519" {
            return Err(KeyError::InvalidFormat(format!(
                "unsupported algorithm {algorithm:?}"
            )));
        }
        Self::from_seed_base64(&format!("ed25519:{version}"), seed)
    }

    /// Writes the key in Sydent's format, so operators can move keys between the two.
    pub fn to_sydent_string(&self) -> String {
        let version = self.key_id.strip_prefix("ed25519:").unwrap_or(&self.key_id);
        format!("ed25519 {version} {}", self.to_seed_base64())
    }

    /// The 32-byte seed, unpadded standard base64 (a secret: store it, never log it).
    pub fn to_seed_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.key.to_bytes())
    }

    /// The 32-byte seed, unpadded URL-safe base64 (a secret): the form mailed for invitation
    /// keys, which links carry without `+` or `/`.
    pub fn to_seed_base64_url_safe(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.key.to_bytes())
    }

    /// The public key, unpadded standard base64, as `/pubkey/{keyId}` publishes it.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.key.verifying_key().as_bytes())
    }

    /// The key id, e.g. `ed25519:0`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs raw bytes; the signature in unpadded standard base64.
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        STANDARD_NO_PAD.encode(self.key.sign(message).to_bytes())
    }
}

fn validate_key_id(key_id: &str) -> Result<(), KeyError> {
    let valid = key_id.strip_prefix("ed25519:").is_some_and(|version| {
        !version.is_empty()
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    if valid {
        Ok(())
    } else {
        Err(KeyError::InvalidKeyId(key_id.to_owned()))
    }
}

/// Why a JSON value could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Only objects can carry signatures.
    #[error("only JSON objects can be signed")]
    NotAnObject,
    /// `signatures` (or its entry for the signer) exists but is not an object.
    #[error("`signatures` must be an object of objects")]
    MalformedSignatures,
    /// The value has no canonical form.
    #[error(transparent)]
    Canonical(#[from] CanonicalJsonError),
}

/// Signs `value` in place as `server_name` and adds `signatures[server_name][key_id]`,
/// keeping the other signatures; `signatures` and `unsigned` are not covered.
pub fn sign_json(value: &mut Value, server_name: &str, key: &SigningKey) -> Result<(), SignError> {
    let Value::Object(map) = value else {
        return Err(SignError::NotAnObject);
    };
    let well_formed = match map.get("signatures") {
        None => true,
        Some(Value::Object(by_server)) => by_server.get(server_name).is_none_or(Value::is_object),
        Some(_) => false,
    };
    if !well_formed {
        return Err(SignError::MalformedSignatures);
    }
    let canonical = canonical_object_without(map, &["signatures", "unsigned"])?;
    let signature = key.sign_bytes(canonical.as_bytes());
    let signatures = map
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(by_server) = signatures {
        let entry = by_server
            .entry(server_name)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(by_key) = entry {
            by_key.insert(key.key_id().to_owned(), Value::String(signature));
            return Ok(());
        }
    }
    // Checked above; kept as an error rather than a panic.
    Err(SignError::MalformedSignatures)
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Only objects carry signatures.
    #[error("only JSON objects carry signatures")]
    NotAnObject,
    /// No `signatures[server][key_id]` string.
    #[error("no signature by {server} with key {key_id}")]
    MissingSignature {
        /// The expected signer.
        server: String,
        /// The expected key id.
        key_id: String,
    },
    /// The signature is not base64 of 64 bytes.
    #[error("the signature is not valid base64 of 64 bytes")]
    MalformedSignature,
    /// The public key is not base64 of a valid ed25519 point.
    #[error("the public key is not a valid ed25519 key")]
    MalformedPublicKey,
    /// The value has no canonical form, so it cannot have been signed by a correct signer.
    #[error(transparent)]
    Canonical(#[from] CanonicalJsonError),
    /// The signature does not match the content and key.
    #[error("the signature does not match")]
    Mismatch,
}

/// Checks `signatures[server_name][key_id]` on `value` against `public_key_b64`.
pub fn verify_json(
    value: &Value,
    server_name: &str,
    key_id: &str,
    public_key_b64: &str,
) -> Result<(), VerifyError> {
    let Value::Object(map) = value else {
        return Err(VerifyError::NotAnObject);
    };
    let signature_b64 = map
        .get("signatures")
        .and_then(|s| s.get(server_name))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
        .ok_or_else(|| VerifyError::MissingSignature {
            server: server_name.to_owned(),
            key_id: key_id.to_owned(),
        })?;
    let signature_bytes: [u8; 64] = LENIENT_BASE64
        .decode(signature_b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(VerifyError::MalformedSignature)?;
    let public_key = decode_public_key(public_key_b64)?;
    let canonical = canonical_object_without(map, &["signatures", "unsigned"])?;
    let signature = ed25519_dalek::Signature::from_bytes(&signature_bytes);
    public_key
        .verify(canonical.as_bytes(), &signature)
        .map_err(|_| VerifyError::Mismatch)
}

/// Decodes an unpadded (or padded) base64 ed25519 public key.
fn decode_public_key(public_key_b64: &str) -> Result<ed25519_dalek::VerifyingKey, VerifyError> {
    let bytes: [u8; 32] = LENIENT_BASE64
        .decode(public_key_b64.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(VerifyError::MalformedPublicKey)?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| VerifyError::MalformedPublicKey)
}

/// Whether `public_key_b64` is a well-formed ed25519 public key.
pub fn is_valid_public_key(public_key_b64: &str) -> bool {
    decode_public_key(public_key_b64).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::json;

    /// The spec appendix's test key (matrix-doc `specification/appendices/test_vectors.rst`,
    /// "Cryptographic Test Vectors": seed, server `domain`, key `ed25519:1`).
    const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";
    /// Public key of the spec seed, as ruma-signatures' documentation gives it.
    const SPEC_PUBLIC_KEY: &str = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI";

    fn spec_key() -> SigningKey {
        SigningKey::from_seed_base64("ed25519:1", SPEC_SEED).unwrap()
    }

    fn canon(text: &str) -> Result<String, CanonicalJsonError> {
        canonical_json(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn spec_canonical_json_examples() {
        let cases = [
            ("{}", "{}"),
            (
                r#"{
                    "one": 1,
                    "two": "Two"
                }"#,
                r#"{"one":1,"two":"Two"}"#,
            ),
            (r#"{ "b": "2", "a": "1" }"#, r#"{"a":"1","b":"2"}"#),
            (r#"{"b":"2","a":"1"}"#, r#"{"a":"1","b":"2"}"#),
            (
                r#"{
                    "auth": {
                        "success": true,
                        "mxid": "@john.doe:example.com",
                        "profile": {
                            "display_name": "John Doe",
                            "three_pids": [
                                { "medium": "email", "address": "john.doe@example.org" },
                                { "medium": "msisdn", "address": "123456789" }
                            ]
                        }
                    }
                }"#,
                r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
            ),
            (r#"{ "a": "日本語" }"#, r#"{"a":"日本語"}"#),
            (r#"{ "本": 2, "日": 1 }"#, r#"{"日":1,"本":2}"#),
            (r#"{ "a": "\u65E5" }"#, r#"{"a":"日"}"#),
            (r#"{ "a": null }"#, r#"{"a":null}"#),
            (r#"{ "a": -0, "b": 1e10 }"#, r#"{"a":0,"b":10000000000}"#),
        ];
        for (input, expected) in cases {
            assert_eq!(canon(input).unwrap(), expected, "input: {input}");
        }
    }

    #[test]
    fn canonical_json_escapes_only_what_json_requires() {
        let value = json!({"s": "q\"b\\n\n t\t c\u{1} d\u{7f} e\u{2028} é 😀 /"});
        assert_eq!(
            canonical_json(&value).unwrap(),
            "{\"s\":\"q\\\"b\\\\n\\n t\\t c\\u0001 d\u{7f} e\u{2028} é 😀 /\"}"
        );
        assert_eq!(
            canonical_json(&json!("\u{8}\u{c}\r\u{1f}")).unwrap(),
            r#""\b\f\r\u001f""#
        );
    }

    #[test]
    fn canonical_json_sorts_by_code_point_at_every_level() {
        // 'Z' < 'a' < 'é' (U+00E9) < '日' (U+65E5) < '😀' (U+1F600).
        let value = json!({"😀": 1, "日": 2, "é": 3, "a": [ {"y": 1, "x": 2} ], "Z": {}});
        assert_eq!(
            canonical_json(&value).unwrap(),
            r#"{"Z":{},"a":[{"x":2,"y":1}],"é":3,"日":2,"😀":1}"#
        );
    }

    #[test]
    fn canonical_json_number_rules() {
        assert_eq!(canon("[9007199254740991]").unwrap(), "[9007199254740991]");
        assert_eq!(canon("[-9007199254740991]").unwrap(), "[-9007199254740991]");
        assert_eq!(canon("[2.0]").unwrap(), "[2]");
        assert!(matches!(
            canon("[9007199254740992]"),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
        assert!(matches!(
            canon("[-9007199254740992]"),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
        assert!(matches!(
            canon("[18446744073709551615]"),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
        assert!(matches!(
            canon("[1e300]"),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
        assert!(matches!(
            canon(r#"{"a":1.5}"#),
            Err(CanonicalJsonError::NotAnInteger(_))
        ));
        assert!(matches!(
            canon("[-0.25]"),
            Err(CanonicalJsonError::NotAnInteger(_))
        ));
    }

    #[test]
    fn spec_signing_vectors() {
        let key = spec_key();
        assert_eq!(key.public_key_base64(), SPEC_PUBLIC_KEY);

        let mut empty = json!({});
        sign_json(&mut empty, "domain", &key).unwrap();
        assert_eq!(
            empty,
            json!({"signatures": {"domain": {"ed25519:1":
                "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}})
        );

        let mut data = json!({"one": 1, "two": "Two"});
        sign_json(&mut data, "domain", &key).unwrap();
        assert_eq!(
            data,
            json!({"one": 1, "two": "Two", "signatures": {"domain": {"ed25519:1":
                "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}}})
        );

        verify_json(&empty, "domain", "ed25519:1", SPEC_PUBLIC_KEY).unwrap();
        verify_json(&data, "domain", "ed25519:1", SPEC_PUBLIC_KEY).unwrap();
    }

    #[test]
    fn signing_ignores_unsigned_and_keeps_other_signatures() {
        let key = spec_key();
        let mut value = json!({
            "one": 1,
            "two": "Two",
            "unsigned": {"age_ts": 922834800000_i64},
            "signatures": {"other.example": {"ed25519:x": "abc"}}
        });
        sign_json(&mut value, "domain", &key).unwrap();
        // Same signature as the spec vector: `unsigned` and `signatures` are not covered.
        assert_eq!(
            value["signatures"]["domain"]["ed25519:1"],
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
        assert_eq!(value["signatures"]["other.example"]["ed25519:x"], "abc");
        assert_eq!(value["unsigned"]["age_ts"], 922834800000_i64);

        // A second key of the same server adds to, not replaces, the first.
        let other = SigningKey::generate(&mut StdRng::seed_from_u64(7));
        sign_json(&mut value, "domain", &other).unwrap();
        assert_eq!(value["signatures"]["domain"].as_object().unwrap().len(), 2);
        verify_json(&value, "domain", "ed25519:1", SPEC_PUBLIC_KEY).unwrap();
        verify_json(&value, "domain", "ed25519:0", &other.public_key_base64()).unwrap();
    }

    #[test]
    fn verification_failures_are_distinguished() {
        let key = spec_key();
        let mut value = json!({"mxid": "@a:b", "ts": 1});
        sign_json(&mut value, "domain", &key).unwrap();

        let mut tampered = value.clone();
        tampered["ts"] = json!(2);
        assert_eq!(
            verify_json(&tampered, "domain", "ed25519:1", SPEC_PUBLIC_KEY),
            Err(VerifyError::Mismatch)
        );
        // Adding `unsigned` data does not break the signature.
        let mut annotated = value.clone();
        annotated["unsigned"] = json!({"note": "added later"});
        verify_json(&annotated, "domain", "ed25519:1", SPEC_PUBLIC_KEY).unwrap();

        assert!(matches!(
            verify_json(&value, "other", "ed25519:1", SPEC_PUBLIC_KEY),
            Err(VerifyError::MissingSignature { .. })
        ));
        assert!(matches!(
            verify_json(&value, "domain", "ed25519:2", SPEC_PUBLIC_KEY),
            Err(VerifyError::MissingSignature { .. })
        ));
        let wrong_key = SigningKey::generate(&mut StdRng::seed_from_u64(1));
        assert_eq!(
            verify_json(
                &value,
                "domain",
                "ed25519:1",
                &wrong_key.public_key_base64()
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_json(&value, "domain", "ed25519:1", "not base64!"),
            Err(VerifyError::MalformedPublicKey)
        );
        let mut bad_sig = value.clone();
        bad_sig["signatures"]["domain"]["ed25519:1"] = json!("AAAA");
        assert_eq!(
            verify_json(&bad_sig, "domain", "ed25519:1", SPEC_PUBLIC_KEY),
            Err(VerifyError::MalformedSignature)
        );
        assert_eq!(
            verify_json(&json!([1]), "domain", "ed25519:1", SPEC_PUBLIC_KEY),
            Err(VerifyError::NotAnObject)
        );
    }

    #[test]
    fn signing_rejects_what_it_cannot_sign() {
        let key = spec_key();
        assert_eq!(
            sign_json(&mut json!([]), "domain", &key),
            Err(SignError::NotAnObject)
        );
        assert_eq!(
            sign_json(&mut json!({"signatures": []}), "domain", &key),
            Err(SignError::MalformedSignatures)
        );
        assert_eq!(
            sign_json(&mut json!({"signatures": {"domain": 1}}), "domain", &key),
            Err(SignError::MalformedSignatures)
        );
        assert!(matches!(
            sign_json(&mut json!({"f": 0.5}), "domain", &key),
            Err(SignError::Canonical(_))
        ));
    }

    #[test]
    fn seeds_round_trip_and_sydent_format() {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(42));
        assert_eq!(key.key_id(), "ed25519:0");
        let seed = key.to_seed_base64();
        assert_eq!(seed.len(), 43, "32 bytes, unpadded");
        assert!(!seed.contains('='));
        let again = SigningKey::from_seed_base64("ed25519:0", &seed).unwrap();
        assert_eq!(again.public_key_base64(), key.public_key_base64());
        // Padded input is accepted too.
        let padded = SigningKey::from_seed_base64("ed25519:0", &format!("{seed}=")).unwrap();
        assert_eq!(padded.public_key_base64(), key.public_key_base64());
        // The URL-safe form (mailed invitation keys) reads back to the same key.
        for seed in 0..64 {
            let key = SigningKey::generate(&mut StdRng::seed_from_u64(seed));
            let url_safe = key.to_seed_base64_url_safe();
            assert!(!url_safe.contains(['+', '/', '=']), "{url_safe}");
            let again = SigningKey::from_seed_base64("ed25519:0", &url_safe).unwrap();
            assert_eq!(again.public_key_base64(), key.public_key_base64());
        }

        let sydent = key.to_sydent_string();
        assert_eq!(sydent, format!("ed25519 0 {seed}"));
        let parsed = SigningKey::parse_sydent(&format!("{sydent}\n")).unwrap();
        assert_eq!(parsed.key_id(), "ed25519:0");
        assert_eq!(parsed.public_key_base64(), key.public_key_base64());

        let spec = SigningKey::parse_sydent(&format!("ed25519 1 {SPEC_SEED}")).unwrap();
        assert_eq!(spec.key_id(), "ed25519:1");
        assert_eq!(spec.public_key_base64(), SPEC_PUBLIC_KEY);
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(
            SigningKey::parse_sydent(""),
            Err(KeyError::InvalidFormat(_))
        ));
        assert!(matches!(
            SigningKey::parse_sydent(&format!("ed25519 0 {SPEC_SEED}\ned25519 1 {SPEC_SEED}")),
            Err(KeyError::InvalidFormat(_))
        ));
        assert!(matches!(
            SigningKey::parse_sydent(&format!("rsa 0 {SPEC_SEED}")),
            Err(KeyError::InvalidFormat(_))
        ));
        assert!(matches!(
            SigningKey::parse_sydent(SPEC_SEED),
            Err(KeyError::InvalidFormat(_))
        ));
        assert!(matches!(
            SigningKey::parse_sydent(&format!("ed25519 a:b {SPEC_SEED}")),
            Err(KeyError::InvalidKeyId(_))
        ));
        assert!(matches!(
            SigningKey::from_seed_base64("ed25519:0", "AAAA"),
            Err(KeyError::InvalidSeed(_))
        ));
        assert!(matches!(
            SigningKey::from_seed_base64("ed25519:0", "*not base64*"),
            Err(KeyError::InvalidSeed(_))
        ));
        for bad in [
            "",
            "ed25519",
            "ed25519:",
            "curve25519:0",
            "ed25519:a-b",
            "ed25519:é",
        ] {
            assert!(
                matches!(
                    SigningKey::from_seed_base64(bad, SPEC_SEED),
                    Err(KeyError::InvalidKeyId(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            spec_key().with_key_id("ed25519:abc_1").unwrap().key_id(),
            "ed25519:abc_1"
        );
    }

    #[test]
    fn debug_does_not_show_the_seed() {
        let key = spec_key();
        let shown = format!("{key:?}");
        assert!(!shown.contains(SPEC_SEED));
        assert!(!shown.contains(&key.to_seed_base64()));
        assert!(shown.contains(SPEC_PUBLIC_KEY));
    }

    #[test]
    fn public_key_validity() {
        assert!(is_valid_public_key(SPEC_PUBLIC_KEY));
        assert!(!is_valid_public_key("AAAA"));
        assert!(!is_valid_public_key("%%%"));
    }

    // ----- cross-checks against ruma-signatures (an independent implementation) -----

    /// PKCS#8 v1 DER for an ed25519 seed (RFC 8410), the form ruma's key pair reads.
    fn pkcs8_from_seed(seed: &[u8; 32]) -> Vec<u8> {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(seed);
        der
    }

    fn ruma_key_pair(key: &SigningKey) -> ruma_signatures::Ed25519KeyPair {
        let seed: [u8; 32] = LENIENT_BASE64
            .decode(key.to_seed_base64())
            .unwrap()
            .try_into()
            .unwrap();
        let version = key.key_id().strip_prefix("ed25519:").unwrap().to_owned();
        ruma_signatures::Ed25519KeyPair::from_der(&pkcs8_from_seed(&seed), version).unwrap()
    }

    fn ruma_public_key_map(server: &str, key: &SigningKey) -> ruma_signatures::PublicKeyMap {
        let mut set = ruma_signatures::PublicKeySet::new();
        set.insert(
            key.key_id().to_owned(),
            ruma_common::serde::Base64::parse(key.public_key_base64()).unwrap(),
        );
        let mut map = ruma_signatures::PublicKeyMap::new();
        map.insert(server.to_owned(), set);
        map
    }

    /// JSON values canonical JSON can represent: integers in range, strings with any
    /// characters (controls, quotes, non-ASCII), nested arrays and objects.
    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).prop_map(|i| json!(i)),
            any::<String>().prop_map(Value::String),
            "[a-z\"\\\\\u{0}-\u{1f}é日😀]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z_é日😀\u{1}\"]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-z_é日]{1,6}", arb_json(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn canonical_json_matches_ruma(value in arb_object()) {
            let ours = canonical_json(&value).unwrap();
            let theirs: ruma_common::CanonicalJsonObject =
                serde_json::from_value(value.clone()).unwrap();
            prop_assert_eq!(&ours, &ruma_signatures::canonical_json(&theirs).unwrap());
            // And it is still the same JSON value.
            prop_assert_eq!(serde_json::from_str::<Value>(&ours).unwrap(), value);
        }

        #[test]
        fn our_signatures_verify_with_ruma_and_back(value in arb_object(), seed in any::<u64>()) {
            let key = SigningKey::generate(&mut StdRng::seed_from_u64(seed));
            let keys = ruma_public_key_map("hs.example", &key);

            let mut ours = value.clone();
            sign_json(&mut ours, "hs.example", &key).unwrap();
            let ours_obj: ruma_common::CanonicalJsonObject =
                serde_json::from_value(ours.clone()).unwrap();
            prop_assert!(ruma_signatures::verify_json(&keys, &ours_obj).is_ok());

            let mut theirs: ruma_common::CanonicalJsonObject =
                serde_json::from_value(value).unwrap();
            ruma_signatures::sign_json("hs.example", &ruma_key_pair(&key), &mut theirs).unwrap();
            let theirs = serde_json::to_value(&theirs).unwrap();
            // ed25519 is deterministic: both implementations produce the same signature.
            prop_assert_eq!(&theirs["signatures"], &ours["signatures"]);
            prop_assert!(
                verify_json(&theirs, "hs.example", "ed25519:0", &key.public_key_base64()).is_ok()
            );
        }
    }

    #[test]
    fn ruma_rejects_what_we_reject() {
        // Cross-check of the number rule at its edges.
        for text in [r#"{"a":9007199254740992}"#, r#"{"a":0.5}"#] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert!(canonical_json(&value).is_err());
            assert!(serde_json::from_value::<ruma_common::CanonicalJsonObject>(value).is_err());
        }
    }
}
