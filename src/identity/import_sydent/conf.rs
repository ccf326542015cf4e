//! `sydent.conf`: the parts the import reads (an INI file).

use super::*;

/// What `sydent.conf` gives the import.
#[derive(Debug, Default)]
pub struct SydentConf {
    /// `[general] server.name`: the name Sydent signed as.
    pub server_name: Option<String>,
    /// `[crypto] ed25519.signingkey`.
    pub signing_key: Option<SigningKey>,
}

/// Reads the parts of `sydent.conf` the import needs (an INI file, Python's `configparser`
/// syntax: `[section]`, `key = value` or `key: value`, `#`/`;` comments, `%%` for `%`).
pub fn parse_sydent_conf(text: &str) -> Result<SydentConf, ImportError> {
    let mut section = String::new();
    let mut values: BTreeMap<(String, String), String> = BTreeMap::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        let Some(split) = line.find(['=', ':']) else {
            return Err(ImportError::Conf(format!(
                "line {}: expected `key = value` or `[section]`",
                number + 1
            )));
        };
        let key = line[..split].trim().to_lowercase();
        let value = line[split + 1..].trim().replace("%%", "%");
        values.insert((section.clone(), key), value);
    }
    let get = |s: &str, k: &str| {
        values
            .get(&(s.to_string(), k.to_string()))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let signing_key = get("crypto", "ed25519.signingkey")
        .map(|v| parse_signing_key(&v))
        .transpose()
        .map_err(|e| ImportError::Conf(format!("[crypto] ed25519.signingkey: {e}")))?;
    Ok(SydentConf {
        server_name: get("general", "server.name"),
        signing_key,
    })
}

/// Sydent's key: `ed25519 <version> <base64 seed>`, or the pre-1.0 form, one hex seed.
fn parse_signing_key(value: &str) -> Result<SigningKey, String> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    match parts.as_slice() {
        [hex] => {
            let seed = decode_hex(hex).ok_or("a one-part key must be 64 hex digits")?;
            SigningKey::from_seed_base64("ed25519:0", &std_b64(&seed)).map_err(|e| e.to_string())
        }
        _ => SigningKey::parse_sydent(value).map_err(|e| e.to_string()),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn std_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// A peer's public key as Sydent stores it (hex first, as Sydent tries, then base64), in the
/// canonical form.
pub(super) fn peer_public_key(text: &str) -> Option<String> {
    match decode_hex(text.trim()) {
        Some(bytes) => Some(std_b64(&bytes)),
        None => canonical_public_key(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn reads_sydent_conf() {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(1));
        let text = format!(
            "[general]\nserver.name = id.example\n# a comment\n; another\nlog.path =\n\n\
             [db]\ndb.file: /var/lib/sydent/sydent.db\n[crypto]\ned25519.signingkey = {}\n",
            key.to_sydent_string()
        );
        let conf = parse_sydent_conf(&text).unwrap();
        assert_eq!(conf.server_name.as_deref(), Some("id.example"));
        let got = conf.signing_key.unwrap();
        assert_eq!(got.public_key_base64(), key.public_key_base64());
        assert_eq!(got.key_id(), "ed25519:0");
    }

    #[test]
    fn reads_the_old_hex_key_and_refuses_junk() {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(2));
        use base64::Engine as _;
        let seed = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(key.to_seed_base64())
            .unwrap();
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let conf = parse_sydent_conf(&format!("[crypto]\ned25519.signingkey = {hex}\n")).unwrap();
        assert_eq!(
            conf.signing_key.unwrap().public_key_base64(),
            key.public_key_base64()
        );
        let err = parse_sydent_conf("[crypto]\ned25519.signingkey = nonsense\n").unwrap_err();
        assert!(err.to_string().contains("ed25519.signingkey"), "{err}");
        let err = parse_sydent_conf("[general]\njust words\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        // No key yet (Sydent creates one at its first start): nothing to import.
        let conf = parse_sydent_conf("[crypto]\ned25519.signingkey =\n").unwrap();
        assert!(conf.signing_key.is_none());
    }

    #[test]
    fn peer_keys_in_hex_or_base64() {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(3)).public_key_base64();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(&key)
            .unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(peer_public_key(&hex).as_deref(), Some(key.as_str()));
        assert_eq!(peer_public_key(&key).as_deref(), Some(key.as_str()));
        assert_eq!(peer_public_key("short"), None);
    }
}
