//! Turning a rendered mail into the bytes of an RFC 5322 message, ready to store and send.

use std::fmt;
use std::time::{Duration, SystemTime};

use lettre::Message;
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use rand::RngCore;

use super::{MailError, RenderedMail};

/// A complete message and its envelope: what the outbox stores and a transport sends.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The envelope sender (`MAIL FROM`), a bare address.
    pub from: String,
    /// The envelope recipient (`RCPT TO`), a bare address with an ASCII (IDNA) domain.
    pub to: String,
    /// The `Message-ID` without angle brackets (`<random>@<domain>`); also names the `.eml` of
    /// the file transport, so sending the same message twice writes the same file.
    pub message_id: String,
    /// The RFC 5322 message: headers, multipart/alternative text + HTML, CRLF line ends.
    pub raw: Vec<u8>,
}

// The raw message carries a token and the recipient's address: keep them out of debug output.
impl fmt::Debug for OutgoingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingMessage")
            .field("message_id", &self.message_id)
            .field("raw_len", &self.raw.len())
            .finish_non_exhaustive()
    }
}

/// Builds the message from `from` (`noreply@example.org` or `Name <noreply@example.org>`) to
/// the bare address `to`, dated `now_ms`, with a `Message-ID` drawn from `rng` at
/// `message_id_domain`.
///
/// Both parts are quoted-printable UTF-8; the subject is RFC 2047-encoded when not ASCII; the
/// recipient's domain is converted to IDNA ASCII so that any SMTP server accepts it.
/// `Auto-Submitted: auto-generated` keeps vacation responders quiet.
pub fn build_message(
    from: &str,
    to: &str,
    mail: &RenderedMail,
    message_id_domain: &str,
    now_ms: i64,
    rng: &mut impl RngCore,
) -> Result<OutgoingMessage, MailError> {
    let from_mailbox: Mailbox = from.trim().parse().map_err(|e| MailError::Address {
        role: "from",
        reason: format!("{e}"),
    })?;
    let to_address = ascii_domain(to.trim())
        .ok_or_else(|| MailError::Address {
            role: "to",
            reason: "not an address with a valid domain".into(),
        })?
        .parse::<lettre::Address>()
        .map_err(|e| MailError::Address {
            role: "to",
            reason: format!("{e}"),
        })?;
    if !is_hostname(message_id_domain) {
        return Err(MailError::Message(
            "the Message-ID domain is not a host name".into(),
        ));
    }
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let message_id = format!("{id}@{}", message_id_domain.to_ascii_lowercase());
    let date = u64::try_from(now_ms)
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        .map_err(|_| MailError::Message("the date is before 1970".into()))?;

    let raw_header = |name: &'static str, value: &str| {
        HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_string())
    };
    let part = |content_type: ContentType, body: &str| {
        SinglePart::builder()
            .header(content_type)
            .header(ContentTransferEncoding::QuotedPrintable)
            .body(body.to_string())
    };
    let message = Message::builder()
        .from(from_mailbox.clone())
        .to(Mailbox::new(None, to_address.clone()))
        .subject(mail.subject.as_str())
        .date(date)
        .message_id(Some(format!("<{message_id}>")))
        .raw_header(raw_header("Auto-Submitted", "auto-generated"))
        .raw_header(raw_header("Content-Language", mail.language.code()))
        .multipart(
            MultiPart::alternative()
                .singlepart(part(ContentType::TEXT_PLAIN, &mail.text))
                .singlepart(part(ContentType::TEXT_HTML, &mail.html)),
        )
        .map_err(|e| MailError::Message(e.to_string()))?;
    Ok(OutgoingMessage {
        from: from_mailbox.email.to_string(),
        to: to_address.to_string(),
        message_id,
        raw: message.formatted(),
    })
}

/// `local@domain` with the domain in IDNA ASCII form (the local part is kept as it is).
fn ascii_domain(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    let domain = idna::domain_to_ascii(domain).ok()?;
    Some(format!("{local}@{domain}"))
}

/// Letters, digits, hyphens and dots, as in a DNS name.
fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::Language;
    use base64::Engine;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn mail() -> RenderedMail {
        RenderedMail {
            language: Language::FR,
            subject: "Confirmez votre adresse e-mail".into(),
            text: "Bonjour,\nLien : https://id.example/submitToken?sid=1&client_secret=a%3Db&token=AbC\n".into(),
            html: "<p>Bonjour,</p>\n<p><a href=\"https://id.example/x?a=1&amp;b=2\">Confirmer</a> — é</p>\n".into(),
        }
    }

    const NOW_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn build(mail: &RenderedMail) -> OutgoingMessage {
        build_message(
            "Annuaire <noreply@id.example.gouv.fr>",
            "Jean.Dupont@Exemple.gouv.fr",
            mail,
            "id.example.gouv.fr",
            NOW_MS,
            &mut StdRng::seed_from_u64(7),
        )
        .unwrap()
    }

    /// Splits a message into (headers, body) and unfolds the headers.
    fn headers(raw: &str) -> (Vec<(String, String)>, &str) {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut out: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                out.last_mut().unwrap().1.push_str(line);
            } else {
                let (name, value) = line.split_once(':').unwrap();
                out.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        (out, body)
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
        h.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    /// Decodes a quoted-printable body (soft breaks, `=XX`), as a mail client would.
    fn decode_qp(s: &str) -> String {
        let s = s.replace("=\r\n", "");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// The decoded parts of a multipart body, as (content-type, text).
    fn parts(content_type: &str, body: &str) -> Vec<(String, String)> {
        let boundary = content_type
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .unwrap()
            .trim_matches('"');
        let delimiter = format!("--{boundary}");
        let mut out = Vec::new();
        for chunk in body.split(delimiter.as_str()).skip(1) {
            if chunk.starts_with("--") {
                break;
            }
            let chunk = chunk.strip_prefix("\r\n").unwrap();
            let (h, b) = headers(chunk);
            assert_eq!(header(&h, "content-transfer-encoding"), "quoted-printable");
            let b = b.strip_suffix("\r\n").unwrap_or(b);
            out.push((header(&h, "content-type").to_string(), decode_qp(b)));
        }
        out
    }

    #[test]
    fn builds_a_multipart_alternative_message_with_the_expected_headers() {
        let msg = build(&mail());
        let raw = String::from_utf8(msg.raw.clone()).unwrap();
        assert!(raw.lines().all(|l| l.len() <= 998), "line too long");
        assert!(!raw.replace("\r\n", "").contains('\n'), "bare LF in {raw}");
        let (h, body) = headers(&raw);
        assert_eq!(header(&h, "from"), "Annuaire <noreply@id.example.gouv.fr>");
        assert_eq!(header(&h, "to"), "Jean.Dupont@exemple.gouv.fr");
        assert_eq!(header(&h, "subject"), "Confirmez votre adresse e-mail");
        assert_eq!(header(&h, "date"), "Thu, 01 Jan 2026 00:00:00 +0000");
        assert_eq!(header(&h, "mime-version"), "1.0");
        assert_eq!(header(&h, "auto-submitted"), "auto-generated");
        assert_eq!(header(&h, "content-language"), "fr");
        assert_eq!(header(&h, "message-id"), format!("<{}>", msg.message_id));
        assert!(msg.message_id.ends_with("@id.example.gouv.fr"));
        assert_eq!(msg.message_id.split('@').next().unwrap().len(), 32);
        let content_type = header(&h, "content-type");
        assert!(
            content_type.starts_with("multipart/alternative;"),
            "{content_type}"
        );

        let p = parts(content_type, body);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, "text/plain; charset=utf-8");
        assert_eq!(p[0].1.replace("\r\n", "\n"), mail().text);
        assert_eq!(p[1].0, "text/html; charset=utf-8");
        assert_eq!(p[1].1.replace("\r\n", "\n"), mail().html);

        assert_eq!(msg.from, "noreply@id.example.gouv.fr");
        assert_eq!(msg.to, "Jean.Dupont@exemple.gouv.fr");
    }

    #[test]
    fn utf8_subject_and_idn_recipient_are_encoded() {
        let m = RenderedMail {
            subject: "Jeanne Martin vous invite à rejoindre « Budget »".into(),
            ..mail()
        };
        let msg = build_message(
            "noreply@id.example.gouv.fr",
            "agent@préfecture.example",
            &m,
            "id.example.gouv.fr",
            NOW_MS,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        let raw = String::from_utf8(msg.raw).unwrap();
        assert!(raw.is_ascii(), "headers and QP bodies are 7-bit");
        let (h, _) = headers(&raw);
        let subject = header(&h, "subject");
        assert!(subject.contains("=?utf-8?b?"), "{subject}");
        // RFC 2047: decode the encoded words; the space between two of them does not count.
        let mut decoded = Vec::new();
        let mut previous_encoded = false;
        for (i, word) in subject.split(' ').enumerate() {
            let inner = word
                .strip_prefix("=?utf-8?b?")
                .and_then(|w| w.strip_suffix("?="));
            if i > 0 && !(previous_encoded && inner.is_some()) {
                decoded.push(b' ');
            }
            match inner {
                Some(b64) => decoded.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap(),
                ),
                None => decoded.extend(word.as_bytes()),
            }
            previous_encoded = inner.is_some();
        }
        assert_eq!(String::from_utf8(decoded).unwrap(), m.subject);
        assert_eq!(header(&h, "to"), "agent@xn--prfecture-c4a.example");
        assert_eq!(msg.to, "agent@xn--prfecture-c4a.example");
    }

    #[test]
    fn message_ids_come_from_the_rng() {
        let a = build(&mail());
        let b = build(&mail());
        assert_eq!(a.message_id, b.message_id, "same seed, same id");
        let c = build_message(
            "noreply@id.example.gouv.fr",
            "a@b.example",
            &mail(),
            "id.example.gouv.fr",
            NOW_MS,
            &mut StdRng::seed_from_u64(8),
        )
        .unwrap();
        assert_ne!(a.message_id, c.message_id);
    }

    #[test]
    fn bad_inputs_are_errors_without_the_address() {
        let m = mail();
        let mut rng = StdRng::seed_from_u64(0);
        let err = build_message(
            "not an address",
            "a@b.example",
            &m,
            "x.example",
            NOW_MS,
            &mut rng,
        )
        .unwrap_err();
        assert!(
            matches!(err, MailError::Address { role: "from", .. }),
            "{err}"
        );
        for to in [
            "nobody",
            "secret@",
            "@b.example",
            "sec ret@b.example",
            "a@b..example",
        ] {
            let err =
                build_message("n@x.example", to, &m, "x.example", NOW_MS, &mut rng).unwrap_err();
            assert!(
                matches!(err, MailError::Address { role: "to", .. }),
                "{to}: {err}"
            );
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        for domain in ["", "bad domain", "x..example", "<x>"] {
            let err = build_message("n@x.example", "a@b.example", &m, domain, NOW_MS, &mut rng)
                .unwrap_err();
            assert!(matches!(err, MailError::Message(_)), "{domain}: {err}");
        }
        assert!(
            build_message("n@x.example", "a@b.example", &m, "x.example", -1, &mut rng).is_err()
        );
    }

    #[test]
    fn a_subject_cannot_inject_headers() {
        // The renderer already strips line breaks; lettre must encode them if one slips by.
        let m = RenderedMail {
            subject: "Hi\r\nBcc: victim@example.org".into(),
            ..mail()
        };
        let raw = String::from_utf8(build(&m).raw).unwrap();
        let (h, _) = headers(&raw);
        assert!(h.iter().all(|(n, _)| n != "bcc"));
    }

    #[test]
    fn debug_output_hides_the_content() {
        let shown = format!("{:?}", build(&mail()));
        assert!(!shown.contains("Dupont"), "{shown}");
        assert!(!shown.contains("token"), "{shown}");
    }
}
