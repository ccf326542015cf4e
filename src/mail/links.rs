//! The links mails carry: checked to be plain http(s) URLs, their values percent-encoded.

use super::MailError;

/// Accepts only absolute `http(s)` URLs made of printable ASCII without characters that could
/// break out of an attribute or be read differently by a mail client. The reason never
/// contains the URL (it may carry a token).
pub(super) fn check_http_url(url: &str) -> Result<(), &'static str> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        url.get(8..).unwrap_or_default()
    } else if lower.starts_with("http://") {
        url.get(7..).unwrap_or_default()
    } else {
        return Err("not an http(s) URL");
    };
    if rest.is_empty() || rest.starts_with(['/', '?', '#']) {
        return Err("the URL has no host");
    }
    if url
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b"\"'<>\\^`{|}".contains(&b))
    {
        return Err("the URL contains spaces, non-ASCII or unsafe characters");
    }
    Ok(())
}

/// Percent-encodes everything but ASCII alphanumerics and the bytes in `keep`.
pub fn percent_encode(value: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a query value).
pub fn percent_encode_unreserved(value: &str) -> String {
    percent_encode(value, b"-._~")
}

/// `public_base_url` without its trailing slashes, if it is a plain http(s) URL without query
/// or fragment.
fn public_base(public_base_url: &str) -> Result<&str, MailError> {
    let base = public_base_url.trim().trim_end_matches('/');
    check_http_url(base).map_err(MailError::Link)?;
    if base.contains(['?', '#']) {
        return Err(MailError::Link(
            "the public base URL has a query or fragment",
        ));
    }
    Ok(base)
}

/// The link of the confirmation mail:
/// `{public_base_url}/_matrix/identity/v2/validate/email/submitToken?sid=…&client_secret=…&token=…`
/// with percent-encoded values. `public_base_url` must be a plain http(s) URL without query.
pub fn submit_token_link(
    public_base_url: &str,
    sid: &str,
    client_secret: &str,
    token: &str,
) -> Result<String, MailError> {
    let base = public_base(public_base_url)?;
    let enc = percent_encode_unreserved;
    Ok(format!(
        "{base}/_matrix/identity/v2/validate/email/submitToken?sid={}&client_secret={}&token={}",
        enc(sid),
        enc(client_secret),
        enc(token)
    ))
}

/// The unauthenticated `sign-ed25519` link of an invitation, as Element-compatible clients
/// call it (`POST <link>&mxid=…`, no body):
/// `{public_base_url}/_matrix/identity/api/v1/sign-ed25519?token=…&private_key=…`.
pub fn sign_ed25519_link(
    public_base_url: &str,
    token: &str,
    private_key: &str,
) -> Result<String, MailError> {
    let base = public_base(public_base_url)?;
    let enc = percent_encode_unreserved;
    Ok(format!(
        "{base}/_matrix/identity/api/v1/sign-ed25519?token={}&private_key={}",
        enc(token),
        enc(private_key)
    ))
}
