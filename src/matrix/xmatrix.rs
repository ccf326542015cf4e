//! The `Authorization: X-Matrix …` header of the server-server API (request authentication).
//!
//! A homeserver signs `{method, uri, origin, destination, content}` with its server key and
//! sends the signature in the header. Synapse signs its requests to identity servers (unbind)
//! with `destination_is` instead of `destination` in the signed object; [`verify_request`]
//! accepts either, since both name the recipient.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::signing::{SignError, SigningKey, VerifyError, sign_json, verify_json};

/// The authorization scheme name (compared case-insensitively when parsing).
pub const SCHEME: &str = "X-Matrix";

/// The parameters of an `X-Matrix` authorization header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrixAuth {
    /// The sending server's name.
    pub origin: String,
    /// The recipient's server name, when the sender included it (optional in the spec).
    pub destination: Option<String>,
    /// The signing key id, e.g. `ed25519:abc`.
    pub key: String,
    /// The signature, unpadded base64.
    pub sig: String,
}

/// Why an X-Matrix header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XMatrixError {
    /// The header does not follow the `X-Matrix name=value,…` syntax.
    #[error("malformed X-Matrix header: {0}")]
    Malformed(String),
    /// A required parameter is absent or empty.
    #[error("X-Matrix header lacks `{0}`")]
    MissingParam(&'static str),
    /// A parameter appears twice.
    #[error("X-Matrix header repeats `{0}`")]
    DuplicateParam(String),
    /// The header names another server as the recipient.
    #[error("request is addressed to {found}, not {expected}")]
    WrongDestination {
        /// Our own server name.
        expected: String,
        /// The header's `destination`.
        found: String,
    },
    /// The signature does not verify.
    #[error("bad request signature: {0}")]
    Signature(#[from] VerifyError),
}

impl XMatrixAuth {
    /// Parses an `Authorization` header value (`X-Matrix origin=…,key="…",sig="…"`).
    ///
    /// Follows the spec: the scheme and parameter names are case-insensitive, values may be
    /// quoted (with backslash escapes) or bare tokens, bare values may contain `:` for older
    /// servers, whitespace around commas is allowed, unknown parameters are ignored.
    pub fn parse(header: &str) -> Result<Self, XMatrixError> {
        let header = header.trim_matches([' ', '\t']);
        let (scheme, rest) = header
            .split_once([' ', '\t'])
            .ok_or_else(|| XMatrixError::Malformed("no parameters".to_owned()))?;
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(XMatrixError::Malformed(format!("scheme is not {SCHEME}")));
        }
        let mut origin = None;
        let mut destination = None;
        let mut key = None;
        let mut sig = None;
        for (name, value) in parse_params(rest)? {
            let slot = match name.to_ascii_lowercase().as_str() {
                "origin" => &mut origin,
                "destination" => &mut destination,
                "key" => &mut key,
                "sig" => &mut sig,
                _ => continue,
            };
            if slot.is_some() {
                return Err(XMatrixError::DuplicateParam(name.to_ascii_lowercase()));
            }
            *slot = Some(value);
        }
        let required = |v: Option<String>, name| {
            v.filter(|s| !s.is_empty())
                .ok_or(XMatrixError::MissingParam(name))
        };
        Ok(Self {
            origin: required(origin, "origin")?,
            destination: destination.filter(|d| !d.is_empty()),
            key: required(key, "key")?,
            sig: required(sig, "sig")?,
        })
    }
}

impl FromStr for XMatrixAuth {
    type Err = XMatrixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for XMatrixAuth {
    /// The header value, in the form older servers parse: one space, lower-case names,
    /// quoted values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME} origin={}", quote(&self.origin))?;
        if let Some(destination) = &self.destination {
            write!(f, ",destination={}", quote(destination))?;
        }
        write!(f, ",key={},sig={}", quote(&self.key), quote(&self.sig))
    }
}

fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Splits `name=value, name="value"` into pairs, unescaping quoted values.
fn parse_params(input: &str) -> Result<Vec<(String, String)>, XMatrixError> {
    let malformed = |why: &str| XMatrixError::Malformed(why.to_owned());
    let is_ws = |c: char| c == ' ' || c == '\t';
    let mut chars = input.chars().peekable();
    let mut params = Vec::new();
    loop {
        // Leading whitespace and empty list elements (`a=1,,b=2`) are allowed.
        while chars.next_if(|&c| is_ws(c) || c == ',').is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|&c| c != '=' && c != ',' && !is_ws(c)) {
            name.push(c);
        }
        while chars.next_if(|&c| is_ws(c)).is_some() {}
        if chars.next() != Some('=') || name.is_empty() {
            return Err(malformed("expected name=value"));
        }
        while chars.next_if(|&c| is_ws(c)).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err(malformed("unterminated quoted value")),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(malformed("unterminated quoted value")),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|&c| c != ',' && !is_ws(c)) {
                if c == '"' || c.is_control() {
                    return Err(malformed("invalid character in bare value"));
                }
                value.push(c);
            }
            if value.is_empty() {
                return Err(malformed("empty value"));
            }
        }
        while chars.next_if(|&c| is_ws(c)).is_some() {}
        match chars.next() {
            None | Some(',') => {}
            Some(_) => return Err(malformed("expected `,` between parameters")),
        }
        params.push((name, value));
    }
    Ok(params)
}

/// The object a homeserver signs for a request: `{method, uri, origin, destination,
/// content?}` (`content` only when the request has a JSON body).
pub fn request_json(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: Option<&Value>,
) -> Value {
    signed_object(method, uri, origin, ("destination", destination), content)
}

/// The object Synapse signs for requests to an identity server (unbind): like
/// [`request_json`] but with `destination_is` instead of `destination`.
pub fn identity_request_json(
    method: &str,
    uri: &str,
    origin: &str,
    destination_is: &str,
    content: Option<&Value>,
) -> Value {
    signed_object(
        method,
        uri,
        origin,
        ("destination_is", destination_is),
        content,
    )
}

fn signed_object(
    method: &str,
    uri: &str,
    origin: &str,
    (destination_field, destination): (&str, &str),
    content: Option<&Value>,
) -> Value {
    let mut map = Map::new();
    map.insert("method".to_owned(), Value::String(method.to_owned()));
    map.insert("uri".to_owned(), Value::String(uri.to_owned()));
    map.insert("origin".to_owned(), Value::String(origin.to_owned()));
    map.insert(
        destination_field.to_owned(),
        Value::String(destination.to_owned()),
    );
    if let Some(content) = content {
        map.insert("content".to_owned(), content.clone());
    }
    Value::Object(map)
}

/// Checks a request's X-Matrix signature against the origin's public key.
///
/// `destination` is our own server name; `uri` is the request target as received (path and
/// query, e.g. `/_matrix/identity/v2/3pid/unbind`). The signed object may carry
/// `destination` (server-server form) or `destination_is` (Synapse's form for identity
/// servers). The caller must fetch `public_key_b64` for `auth.origin` and `auth.key`.
pub fn verify_request(
    auth: &XMatrixAuth,
    method: &str,
    uri: &str,
    destination: &str,
    content: Option<&Value>,
    public_key_b64: &str,
) -> Result<(), XMatrixError> {
    if let Some(found) = &auth.destination
        && found != destination
    {
        return Err(XMatrixError::WrongDestination {
            expected: destination.to_owned(),
            found: found.clone(),
        });
    }
    let check = |mut object: Value| {
        if let Value::Object(map) = &mut object {
            let mut by_key = Map::new();
            by_key.insert(auth.key.clone(), Value::String(auth.sig.clone()));
            let mut by_server = Map::new();
            by_server.insert(auth.origin.clone(), Value::Object(by_key));
            map.insert("signatures".to_owned(), Value::Object(by_server));
        }
        verify_json(&object, &auth.origin, &auth.key, public_key_b64)
    };
    match check(request_json(
        method,
        uri,
        &auth.origin,
        destination,
        content,
    )) {
        Err(VerifyError::Mismatch) => Ok(check(identity_request_json(
            method,
            uri,
            &auth.origin,
            destination,
            content,
        ))?),
        other => Ok(other?),
    }
}

/// Signs an outbound request as `origin` and returns the `Authorization` header value.
pub fn sign_request(
    key: &SigningKey,
    origin: &str,
    method: &str,
    uri: &str,
    destination: &str,
    content: Option<&Value>,
) -> Result<String, SignError> {
    let mut object = request_json(method, uri, origin, destination, content);
    sign_json(&mut object, origin, key)?;
    let sig = object
        .get("signatures")
        .and_then(|s| s.get(origin))
        .and_then(|s| s.get(key.key_id()))
        .and_then(Value::as_str)
        .ok_or(SignError::MalformedSignatures)?
        .to_owned();
    Ok(XMatrixAuth {
        origin: origin.to_owned(),
        destination: Some(destination.to_owned()),
        key: key.key_id().to_owned(),
        sig,
    }
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::generate(&mut StdRng::seed_from_u64(11))
    }

    #[test]
    fn parses_the_spec_example_and_synapse_forms() {
        let spec = r#"X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF...""#;
        assert_eq!(
            XMatrixAuth::parse(spec).unwrap(),
            XMatrixAuth {
                origin: "origin.hs.example.com".into(),
                destination: Some("destination.hs.example.com".into()),
                key: "ed25519:key1".into(),
                sig: "ABCDEF...".into(),
            }
        );
        // Synapse: origin first, destination last.
        let synapse =
            r#"X-Matrix origin="hs.example",key="ed25519:a_b",sig="c2ln",destination="is.example""#;
        let auth = XMatrixAuth::parse(synapse).unwrap();
        assert_eq!(auth.destination.as_deref(), Some("is.example"));
        assert_eq!(auth.key, "ed25519:a_b");
    }

    #[test]
    fn parses_bare_values_case_and_whitespace_variants() {
        let auth = XMatrixAuth::parse(
            "x-matrix   ORIGIN=hs.example:8448 ,\tKey=ed25519:1 , sig = \"a\\\"b\\\\c\",extra=ignored",
        )
        .unwrap();
        assert_eq!(auth.origin, "hs.example:8448");
        assert_eq!(auth.key, "ed25519:1");
        assert_eq!(auth.sig, "a\"b\\c");
        assert_eq!(auth.destination, None);
    }

    #[test]
    fn rejects_malformed_headers() {
        let cases = [
            "",
            "X-Matrix",
            "Bearer origin=a,key=b,sig=c",
            r#"X-Matrix origin="a,key=b,sig=c"#,
            "X-Matrix origin=a key=b,sig=c",
            "X-Matrix =a,key=b,sig=c",
            "X-Matrix origin,key=b,sig=c",
            "X-Matrix origin=,key=b,sig=c",
            "X-Matrix origin=a\"b,key=b,sig=c",
        ];
        for case in cases {
            assert!(
                matches!(XMatrixAuth::parse(case), Err(XMatrixError::Malformed(_))),
                "{case:?}"
            );
        }
        assert_eq!(
            XMatrixAuth::parse("X-Matrix origin=a,key=b"),
            Err(XMatrixError::MissingParam("sig"))
        );
        assert_eq!(
            XMatrixAuth::parse(r#"X-Matrix origin="",key=b,sig=c"#),
            Err(XMatrixError::MissingParam("origin"))
        );
        assert_eq!(
            XMatrixAuth::parse("X-Matrix origin=a,key=b,sig=c,Origin=d"),
            Err(XMatrixError::DuplicateParam("origin".into()))
        );
    }

    #[test]
    fn build_then_parse_round_trips() {
        let auth = XMatrixAuth {
            origin: "hs.example".into(),
            destination: Some("[::1]:8448".into()),
            key: "ed25519:0".into(),
            sig: "we\"ird\\".into(),
        };
        let header = auth.to_string();
        assert!(header.starts_with("X-Matrix origin=\"hs.example\",destination="));
        assert_eq!(XMatrixAuth::parse(&header).unwrap(), auth);
        let no_destination = XMatrixAuth {
            destination: None,
            ..auth
        };
        assert_eq!(
            XMatrixAuth::parse(&no_destination.to_string()).unwrap(),
            no_destination
        );
    }

    proptest! {
        #[test]
        fn any_printable_values_round_trip(
            origin in "[ -~]{1,30}",
            destination in proptest::option::of("[ -~]{1,30}"),
            key in "[ -~]{1,20}",
            sig in "[ -~]{1,90}",
        ) {
            let auth = XMatrixAuth { origin, destination, key, sig };
            prop_assert_eq!(XMatrixAuth::parse(&auth.to_string()).unwrap(), auth);
        }

        #[test]
        fn parser_never_panics(input in "\\PC{0,80}") {
            let _ = XMatrixAuth::parse(&input);
        }
    }

    #[test]
    fn request_json_shape() {
        assert_eq!(
            request_json("GET", "/a?b=c", "hs", "is", None),
            json!({"method": "GET", "uri": "/a?b=c", "origin": "hs", "destination": "is"})
        );
        let content = json!({"mxid": "@u:hs"});
        assert_eq!(
            identity_request_json("POST", "/u", "hs", "is", Some(&content)),
            json!({"method": "POST", "uri": "/u", "origin": "hs", "destination_is": "is",
                   "content": {"mxid": "@u:hs"}})
        );
    }

    #[test]
    fn signed_requests_verify_and_tampering_is_caught() {
        let key = key();
        let pk = key.public_key_base64();
        let content =
            json!({"mxid": "@u:hs.example", "threepid": {"medium": "email", "address": "a@b.c"}});
        let header = sign_request(
            &key,
            "hs.example",
            "POST",
            "/_matrix/identity/v2/3pid/unbind",
            "is.example",
            Some(&content),
        )
        .unwrap();
        let auth = XMatrixAuth::parse(&header).unwrap();
        let uri = "/_matrix/identity/v2/3pid/unbind";
        verify_request(&auth, "POST", uri, "is.example", Some(&content), &pk).unwrap();

        let other_content = json!({"mxid": "@v:hs.example"});
        let mismatch = Err(XMatrixError::Signature(VerifyError::Mismatch));
        assert_eq!(
            verify_request(&auth, "POST", uri, "is.example", Some(&other_content), &pk),
            mismatch
        );
        assert_eq!(
            verify_request(&auth, "PUT", uri, "is.example", Some(&content), &pk),
            mismatch
        );
        assert_eq!(
            verify_request(&auth, "POST", "/other", "is.example", Some(&content), &pk),
            mismatch
        );
        assert_eq!(
            verify_request(&auth, "POST", uri, "is.example", None, &pk),
            mismatch
        );
        // The header says is.example; we are someone else.
        assert!(matches!(
            verify_request(&auth, "POST", uri, "evil.example", Some(&content), &pk),
            Err(XMatrixError::WrongDestination { .. })
        ));
        // Without the header's destination, the signed object still names is.example.
        let no_dest = XMatrixAuth {
            destination: None,
            ..auth.clone()
        };
        assert_eq!(
            verify_request(&no_dest, "POST", uri, "evil.example", Some(&content), &pk),
            mismatch
        );
        let wrong_key = SigningKey::generate(&mut StdRng::seed_from_u64(12));
        assert_eq!(
            verify_request(
                &auth,
                "POST",
                uri,
                "is.example",
                Some(&content),
                &wrong_key.public_key_base64()
            ),
            mismatch
        );
    }

    #[test]
    fn synapse_destination_is_form_verifies() {
        // What Synapse's build_auth_headers(destination=None, destination_is=…) produces.
        let key = key();
        let content =
            json!({"mxid": "@u:hs.example", "threepid": {"medium": "email", "address": "a@b.c"}});
        let mut object = identity_request_json(
            "POST",
            "/_matrix/identity/v2/3pid/unbind",
            "hs.example",
            "is.example",
            Some(&content),
        );
        sign_json(&mut object, "hs.example", &key).unwrap();
        let sig = object["signatures"]["hs.example"]["ed25519:0"]
            .as_str()
            .unwrap();
        let header = format!(
            r#"X-Matrix origin="hs.example",key="ed25519:0",sig="{sig}",destination="is.example""#
        );
        let auth = XMatrixAuth::parse(&header).unwrap();
        let uri = "/_matrix/identity/v2/3pid/unbind";
        verify_request(
            &auth,
            "POST",
            uri,
            "is.example",
            Some(&content),
            &key.public_key_base64(),
        )
        .unwrap();
        // It names is.example, so nobody else can replay it.
        let no_dest = XMatrixAuth {
            destination: None,
            ..auth
        };
        assert!(
            verify_request(
                &no_dest,
                "POST",
                uri,
                "other.example",
                Some(&content),
                &key.public_key_base64()
            )
            .is_err()
        );
    }

    #[test]
    fn ruma_signed_request_verifies_with_ours() {
        // An independent signer: ruma-signatures over the same request object.
        let key = key();
        let seed: [u8; 32] =
            base64::Engine::decode(&super::super::signing::LENIENT_BASE64, key.to_seed_base64())
                .unwrap()
                .try_into()
                .unwrap();
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        let pair = ruma_signatures::Ed25519KeyPair::from_der(&der, "0".into()).unwrap();

        let content =
            json!({"batch": 3, "profiles": {"@a:hs.example": {"avatar_url": "mxc://x/y"}}});
        let object = request_json(
            "POST",
            "/_matrix/identity/api/v1/replicate_profiles",
            "hs.example",
            "is.example",
            Some(&content),
        );
        let mut canonical: ruma_common::CanonicalJsonObject =
            serde_json::from_value(object).unwrap();
        ruma_signatures::sign_json("hs.example", &pair, &mut canonical).unwrap();
        let signed = serde_json::to_value(&canonical).unwrap();
        let sig = signed["signatures"]["hs.example"]["ed25519:0"]
            .as_str()
            .unwrap()
            .to_owned();
        let auth = XMatrixAuth {
            origin: "hs.example".into(),
            destination: Some("is.example".into()),
            key: "ed25519:0".into(),
            sig,
        };
        verify_request(
            &auth,
            "POST",
            "/_matrix/identity/api/v1/replicate_profiles",
            "is.example",
            Some(&content),
            &key.public_key_base64(),
        )
        .unwrap();
        // And our header matches theirs, signature for signature.
        let ours = sign_request(
            &key,
            "hs.example",
            "POST",
            "/_matrix/identity/api/v1/replicate_profiles",
            "is.example",
            Some(&content),
        )
        .unwrap();
        assert_eq!(XMatrixAuth::parse(&ours).unwrap(), auth);
    }
}
