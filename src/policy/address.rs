//! Email address parsing and normalisation: the one function every module uses.
//!
//! The normalised form is the Matrix identity spec's (Synapse's `canonicalise_email`): local part
//! Unicode case-folded (Python's `str.casefold`), domain lowercased and kept as written (Unicode or
//! punycode). That form is what is hashed, stored and mailed. Policy matching additionally needs
//! the IDNA ASCII form of the domain, computed once here.

use std::fmt;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Longest normalised address accepted, in octets (RFC 5321 path limit minus the brackets).
const MAX_ADDRESS_OCTETS: usize = 254;
/// Longest local part accepted, in octets (RFC 5321).
const MAX_LOCAL_OCTETS: usize = 64;
/// Inputs longer than this cannot normalise to 254 octets (case mapping shrinks at most 3:1), so
/// they are refused before any Unicode work.
const MAX_INPUT_OCTETS: usize = 1024;

/// One normalised email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// "local@domain", normalised.
    normalised: String,
    /// Byte index of the `@` in `normalised`.
    at: usize,
    /// IDNA ASCII form of the domain.
    ascii_domain: String,
    /// "local@ascii_domain", kept so that decisions do not allocate it.
    matching: String,
}

impl Address {
    /// The normalised "local@domain" (local part case-folded, domain lowercased, Unicode kept).
    pub fn as_str(&self) -> &str {
        &self.normalised
    }

    /// The case-folded local part.
    pub fn local(&self) -> &str {
        &self.normalised[..self.at]
    }

    /// The lowercased domain as given (Unicode or punycode).
    pub fn domain(&self) -> &str {
        &self.normalised[self.at + 1..]
    }

    /// The IDNA ASCII (punycode) domain, used for matching rules.
    pub fn ascii_domain(&self) -> &str {
        &self.ascii_domain
    }

    /// "local@ascii_domain": the form that rules and patterns are matched against.
    pub fn matching_form(&self) -> String {
        self.matching.clone()
    }

    /// Borrowed matching form, for the hot path of decisions.
    pub(crate) fn matching_str(&self) -> &str {
        &self.matching
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalised)
    }
}

/// Why an input is not one plain `local@domain` address (Display is a reason for people).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing but whitespace.
    #[error("the address is empty")]
    Empty,
    /// `Jean Dupont <jean@x.fr>` or `<jean@x.fr>`.
    #[error("display-name form is not accepted: give the bare address (local@domain)")]
    DisplayName,
    /// Separators or spaces between several addresses.
    #[error("several addresses are not accepted: give exactly one")]
    Several,
    /// A space inside one address.
    #[error("spaces are not accepted in an address")]
    Whitespace,
    /// A control character anywhere.
    #[error("control characters are not accepted in an address")]
    ControlCharacter,
    /// `"a b"@x.fr`.
    #[error("quoted local parts are not accepted")]
    Quoted,
    /// No `@` at all.
    #[error("missing @: an address is local@domain")]
    MissingAt,
    /// More than one `@`.
    #[error("{0} @ signs: an address has exactly one")]
    SeveralAt(usize),
    /// `@x.fr`.
    #[error("missing local part before the @")]
    MissingLocal,
    /// `jean@`.
    #[error("missing domain after the @")]
    MissingDomain,
    /// A character that RFC 5322 does not allow unquoted.
    #[error("the character {0:?} is not accepted in the local part")]
    LocalCharacter(char),
    /// Leading, trailing or doubled dot in the local part.
    #[error("the local part may not start or end with a dot, nor hold two dots in a row")]
    LocalDots,
    /// Local part over 64 octets.
    #[error("the local part is longer than 64 octets")]
    LocalTooLong,
    /// Whole address over 254 octets.
    #[error("the address is longer than 254 octets")]
    TooLong,
    /// The domain is not a valid host name after IDNA processing.
    #[error("the domain {0:?} is not a valid host name")]
    InvalidDomain(String),
    /// A single-label domain (`jean@localhost`): not reachable for mail.
    #[error("the domain {0:?} has no dot: a mail domain has at least two labels")]
    SingleLabel(String),
    /// `*.x.fr` given as a rule's domain.
    #[error(
        "wildcards are not accepted in a domain: name the parent domain with `subdomains = true`"
    )]
    Wildcard,
    /// `1.2.3.4`, `[1.2.3.4]`: address literals.
    #[error("the domain {0:?} looks like an IP address: give a domain name")]
    IpLiteral(String),
}

/// Parses and normalises one email address (trimmed; one plain `local@domain` only).
pub fn normalize_email(input: &str) -> Result<Address, AddressError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(AddressError::Empty);
    }
    if trimmed.len() > MAX_INPUT_OCTETS {
        return Err(AddressError::TooLong);
    }
    if trimmed.chars().any(char::is_control) {
        return Err(AddressError::ControlCharacter);
    }
    if trimmed.contains(['<', '>']) {
        return Err(AddressError::DisplayName);
    }
    if trimmed.contains([',', ';']) {
        return Err(AddressError::Several);
    }
    if trimmed.chars().any(char::is_whitespace) {
        // "a@x.fr b@y.fr" is two addresses; "jean dupont@x.fr" is a typo.
        let with_at = trimmed
            .split(char::is_whitespace)
            .filter(|w| w.contains('@'))
            .count();
        return Err(if with_at > 1 {
            AddressError::Several
        } else {
            AddressError::Whitespace
        });
    }
    if trimmed.contains('"') {
        return Err(AddressError::Quoted);
    }
    let ats = trimmed.matches('@').count();
    if ats == 0 {
        return Err(AddressError::MissingAt);
    }
    if ats > 1 {
        return Err(AddressError::SeveralAt(ats));
    }
    let (raw_local, raw_domain) = trimmed.split_once('@').ok_or(AddressError::MissingAt)?;
    if raw_local.is_empty() {
        return Err(AddressError::MissingLocal);
    }
    if raw_domain.is_empty() {
        return Err(AddressError::MissingDomain);
    }

    // Unicode case folding maps ASCII letters to their lowercase and nothing else of ASCII.
    let local = if raw_local.is_ascii() {
        raw_local.to_ascii_lowercase()
    } else {
        caseless::default_case_fold_str(raw_local)
    };
    check_local(&local)?;
    let domain = raw_domain.to_lowercase();
    let ascii_domain = if is_plain_host_name(&domain) {
        domain.clone()
    } else {
        domain_to_ascii(&domain)?
    };
    if !ascii_domain.contains('.') {
        return Err(AddressError::SingleLabel(domain));
    }

    let normalised = joined(&local, &domain);
    if normalised.len() > MAX_ADDRESS_OCTETS {
        return Err(AddressError::TooLong);
    }
    let matching = if ascii_domain == domain {
        normalised.clone()
    } else {
        joined(&local, &ascii_domain)
    };
    Ok(Address {
        at: local.len(),
        normalised,
        ascii_domain,
        matching,
    })
}

/// Normalises a domain name given in a rule: trimmed, lowercased, IDNA ASCII (punycode) returned.
pub fn normalize_domain(input: &str) -> Result<String, AddressError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(AddressError::InvalidDomain(String::new()));
    }
    if trimmed.len() > MAX_INPUT_OCTETS {
        return Err(AddressError::InvalidDomain(
            trimmed.chars().take(64).collect(),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(AddressError::ControlCharacter);
    }
    if trimmed.contains('*') {
        return Err(AddressError::Wildcard);
    }
    domain_to_ascii(&trimmed.to_lowercase())
}

/// RFC 5322 `atext` outside letters and digits, plus the dot handled separately.
const LOCAL_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~.";

/// Checks a case-folded local part: dot-atom (RFC 5322), UTF-8 allowed (RFC 6531).
fn check_local(local: &str) -> Result<(), AddressError> {
    if local.len() > MAX_LOCAL_OCTETS {
        return Err(AddressError::LocalTooLong);
    }
    if let Some(c) = local
        .chars()
        .find(|c| c.is_ascii() && !c.is_ascii_alphanumeric() && !LOCAL_SPECIALS.contains(*c))
    {
        return Err(AddressError::LocalCharacter(c));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(AddressError::LocalDots);
    }
    Ok(())
}

/// "local@domain" in one allocation.
fn joined(local: &str, domain: &str) -> String {
    let mut out = String::with_capacity(local.len() + 1 + domain.len());
    out.push_str(local);
    out.push('@');
    out.push_str(domain);
    out
}

/// Whether `domain` (lowercased) is a host name that UTS-46 would give back unchanged and
/// accept, so the common case skips it: labels of 1 to 63 letters, digits and inner hyphens,
/// no punycode (`xn--`) label, at most 253 octets, a top-level label that is not all digits.
/// Anything else goes through [`domain_to_ascii`], which decides (the tests check both agree).
fn is_plain_host_name(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > 253 {
        return false;
    }
    let plain_label = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
            && !label.starts_with("xn--")
    };
    let tld = domain.rsplit('.').next().unwrap_or_default();
    domain.split('.').all(plain_label) && !tld.bytes().all(|b| b.is_ascii_digit())
}

/// UTS-46 to ASCII with STD3 rules and DNS lengths, then host-name checks (no IP literals).
fn domain_to_ascii(domain: &str) -> Result<String, AddressError> {
    if domain.starts_with('[') {
        return Err(AddressError::IpLiteral(domain.to_owned()));
    }
    let ascii = Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .map_err(|_| AddressError::InvalidDomain(domain.to_owned()))?
        .into_owned();
    // A top-level label made of digits only is an IPv4 address, not a domain.
    let tld = ascii.rsplit('.').next().unwrap_or_default();
    if !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressError::IpLiteral(domain.to_owned()));
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> Address {
        normalize_email(s).unwrap()
    }

    fn err(s: &str) -> AddressError {
        normalize_email(s).unwrap_err()
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert_eq!(
            ok("  jean.dupont@finances.gouv.fr\t\n").as_str(),
            "jean.dupont@finances.gouv.fr"
        );
    }

    #[test]
    fn local_part_is_casefolded_like_python() {
        // Python: "Straße".casefold() == "strasse"; "ΣΑΣ".casefold() == "σασ".
        assert_eq!(ok("Straße@x.fr").local(), "strasse");
        assert_eq!(ok("ΣΑΣ@x.fr").local(), "σασ");
        assert_eq!(ok("JEAN.Dupont@x.fr").local(), "jean.dupont");
    }

    #[test]
    fn domain_is_lowercased_and_kept_in_unicode() {
        let a = ok("jean@Bücher.Example");
        assert_eq!(a.domain(), "bücher.example");
        assert_eq!(a.ascii_domain(), "xn--bcher-kva.example");
        assert_eq!(a.as_str(), "jean@bücher.example");
        assert_eq!(a.matching_form(), "jean@xn--bcher-kva.example");
    }

    #[test]
    fn punycode_domain_stays_as_given_lowercased() {
        let a = ok("jean@XN--BCHER-KVA.example");
        assert_eq!(a.domain(), "xn--bcher-kva.example");
        assert_eq!(a.ascii_domain(), "xn--bcher-kva.example");
        assert_eq!(a.as_str(), "jean@xn--bcher-kva.example");
    }

    #[test]
    fn display_name_forms_are_refused() {
        assert_eq!(err("Jean <jean@x.fr>"), AddressError::DisplayName);
        assert_eq!(
            err("\"Jean Dupont\" <jean@x.fr>"),
            AddressError::DisplayName
        );
        assert_eq!(err("<jean@x.fr>"), AddressError::DisplayName);
        assert!(
            err("Jean <j@x.fr>")
                .to_string()
                .contains("display-name form is not accepted")
        );
    }

    #[test]
    fn several_addresses_are_refused() {
        assert_eq!(err("a@x.fr,b@x.fr"), AddressError::Several);
        assert_eq!(err("a@x.fr; b@x.fr"), AddressError::Several);
        assert_eq!(err("a@x.fr b@x.fr"), AddressError::Several);
        assert_eq!(err("jean dupont@x.fr"), AddressError::Whitespace);
    }

    #[test]
    fn missing_parts_are_refused() {
        assert_eq!(err(""), AddressError::Empty);
        assert_eq!(err("   "), AddressError::Empty);
        assert_eq!(err("jean.x.fr"), AddressError::MissingAt);
        assert_eq!(err("@x.fr"), AddressError::MissingLocal);
        assert_eq!(err("jean@"), AddressError::MissingDomain);
    }

    #[test]
    fn more_than_one_at_is_refused() {
        assert_eq!(err("a@b@x.fr"), AddressError::SeveralAt(2));
        assert_eq!(
            err("a@b@x.fr").to_string(),
            "2 @ signs: an address has exactly one"
        );
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(err("jean\u{0}@x.fr"), AddressError::ControlCharacter);
        assert_eq!(err("jean@x\u{7f}.fr"), AddressError::ControlCharacter);
        assert_eq!(err("je\nan@x.fr"), AddressError::ControlCharacter);
    }

    #[test]
    fn quoted_local_parts_are_refused() {
        assert_eq!(err("\"jean\"@x.fr"), AddressError::Quoted);
    }

    #[test]
    fn local_part_syntax_is_checked() {
        assert_eq!(err(".jean@x.fr"), AddressError::LocalDots);
        assert_eq!(err("jean.@x.fr"), AddressError::LocalDots);
        assert_eq!(err("je..an@x.fr"), AddressError::LocalDots);
        assert_eq!(err("je(an)@x.fr"), AddressError::LocalCharacter('('));
        assert_eq!(err("jean\\x@x.fr"), AddressError::LocalCharacter('\\'));
        assert_eq!(ok("jean+tag_x-y@x.fr").local(), "jean+tag_x-y");
        assert_eq!(ok("élodie@x.fr").local(), "élodie");
    }

    #[test]
    fn too_long_addresses_are_refused() {
        let local64 = "a".repeat(64);
        assert_eq!(ok(&format!("{local64}@x.fr")).local(), local64);
        assert_eq!(
            err(&format!("{}@x.fr", "a".repeat(65))),
            AddressError::LocalTooLong
        );
        // 64 + 1 + 189 = 254 octets is the limit.
        let domain189 = format!(
            "{}.{}.{}.fr",
            "b".repeat(61),
            "c".repeat(60),
            "d".repeat(63)
        );
        assert_eq!(domain189.len(), 189);
        assert_eq!(ok(&format!("{local64}@{domain189}")).as_str().len(), 254);
        let domain190 = format!(
            "{}.{}.{}.fr",
            "b".repeat(61),
            "c".repeat(61),
            "d".repeat(63)
        );
        assert_eq!(
            err(&format!("{local64}@{domain190}")),
            AddressError::TooLong
        );
        assert_eq!(err(&"a".repeat(5000)), AddressError::TooLong);
    }

    #[test]
    fn length_limits_apply_after_normalisation() {
        // "ß" (2 octets) folds to "ss" (2 octets) but "ﬃ" (3 octets) folds to "ffi" (3): use
        // Kelvin sign K (3 octets) which folds to "k" (1 octet): 30 of them fit once folded.
        let kelvins = "\u{212a}".repeat(30);
        assert_eq!(ok(&format!("{kelvins}@x.fr")).local(), "k".repeat(30));
        // "ŉ" (2 octets) folds to "ʼn" (3 octets): 32 of them are 96 octets once folded.
        assert_eq!(
            err(&format!("{}@x.fr", "\u{149}".repeat(32))),
            AddressError::LocalTooLong
        );
    }

    #[test]
    fn invalid_domains_are_refused() {
        assert!(matches!(err("jean@x_y.fr"), AddressError::InvalidDomain(_)));
        assert!(matches!(err("jean@-x.fr"), AddressError::InvalidDomain(_)));
        assert!(matches!(err("jean@x..fr"), AddressError::InvalidDomain(_)));
        assert!(matches!(err("jean@x.fr."), AddressError::InvalidDomain(_)));
        assert!(matches!(err("jean@.x.fr"), AddressError::InvalidDomain(_)));
        assert!(matches!(err("jean@x!.fr"), AddressError::InvalidDomain(_)));
        assert!(matches!(
            err(&format!("jean@{}.fr", "a".repeat(64))),
            AddressError::InvalidDomain(_)
        ));
        assert!(matches!(
            err("jean@xn--a.fr"),
            AddressError::InvalidDomain(_)
        ));
        assert!(matches!(
            err("jean@localhost"),
            AddressError::SingleLabel(_)
        ));
        assert!(matches!(err("jean@1.2.3.4"), AddressError::IpLiteral(_)));
        assert!(matches!(err("jean@[1.2.3.4]"), AddressError::IpLiteral(_)));
    }

    #[test]
    fn normalize_domain_gives_ascii() {
        assert_eq!(
            normalize_domain(" Finances.GOUV.fr ").unwrap(),
            "finances.gouv.fr"
        );
        assert_eq!(
            normalize_domain("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(normalize_domain("fr").unwrap(), "fr");
        assert!(normalize_domain("").is_err());
        assert_eq!(normalize_domain("*.x.fr"), Err(AddressError::Wildcard));
        assert!(normalize_domain("jean@x.fr").is_err());
        assert!(normalize_domain("x..fr").is_err());
    }

    #[test]
    fn tricky_case_mappings_are_idempotent() {
        for input in [
            "ΣΑΣ@x.fr",
            "İstanbul@x.fr",
            "STRAẞE@x.fr",
            "\u{212a}elvin@x.fr",
            "ﬃ@ｘ.ＦＲ",
            "a@İ.example",
        ] {
            let a = ok(input);
            assert_eq!(ok(a.as_str()), a, "{input}");
        }
        // Fullwidth letters stay in the stored form (as Synapse keeps them) but match as ASCII.
        let a = ok("jean@ＸＹ.example");
        assert_eq!(a.domain(), "ｘｙ.example");
        assert_eq!(a.ascii_domain(), "xy.example");
    }

    #[test]
    fn common_host_names_take_the_shortcut_and_others_do_not() {
        for d in [
            "finances.gouv.fr",
            "x.fr",
            "a-b.c9.example",
            "interieur.gouv.fr",
        ] {
            assert!(is_plain_host_name(d), "{d}");
        }
        for d in [
            "xn--bcher-kva.fr",
            "bücher.fr",
            "a.123",
            "-a.fr",
            "a-.fr",
            "a..fr",
            ".fr",
            "fr.",
            "A.fr",
            "a_b.fr",
            "",
        ] {
            assert!(!is_plain_host_name(d), "{d}");
        }
        assert!(!is_plain_host_name(&format!("{}.fr", "a".repeat(64))));
    }

    proptest! {
        #[test]
        fn normalize_email_never_panics(s in any::<String>()) {
            let _ = normalize_email(&s);
            let _ = normalize_domain(&s);
        }

        #[test]
        fn normalize_email_never_panics_near_addresses(
            s in "[ \t<>\",;@.a-zA-Z0-9ßΣİKﬃŉ\u{212a}\u{0}é_+-]{0,40}"
        ) {
            let _ = normalize_email(&s);
        }

        #[test]
        fn normalisation_is_idempotent(
            local in "[a-zA-Z0-9ßΣσςİıKkﬃŉ\u{212a}\u{1e9e}éÉ_+-]{1,10}(\\.[a-zA-Z0-9ßΣİﬃéÉ_+-]{1,10}){0,2}",
            domain in "[a-zA-Z0-9äÄéÉßİ\u{ff21}-]{1,12}\\.(fr|example|[a-zA-ZéÉ]{2,6})",
            pad in "[ \t]{0,2}",
        ) {
            let input = format!("{pad}{local}@{domain}{pad}");
            if let Ok(a) = normalize_email(&input) {
                let again = normalize_email(a.as_str()).unwrap();
                prop_assert_eq!(&again, &a);
                prop_assert_eq!(normalize_email(&a.matching_form()).unwrap().matching_form(), a.matching_form());
            }
        }

        /// The host-name shortcut agrees with UTS-46: whenever it takes a domain, UTS-46
        /// accepts that domain and gives it back unchanged.
        #[test]
        fn the_plain_host_name_shortcut_agrees_with_uts46(
            domain in "[a-z0-9.-]{1,20}|([a-z0-9-]{1,70}\\.){1,5}[a-z0-9-]{1,8}|xn--[a-z0-9-]{1,12}\\.fr|[a-z]{1,5}\\.[0-9]{1,3}",
        ) {
            if is_plain_host_name(&domain) {
                let ascii = domain_to_ascii(&domain);
                prop_assert_eq!(ascii.as_deref(), Ok(domain.as_str()));
            }
        }

        /// The ASCII shortcut of the local part is Unicode case folding.
        #[test]
        fn ascii_case_folding_is_unicode_case_folding(local in "[\\x21-\\x7e]{1,30}") {
            prop_assert_eq!(local.to_ascii_lowercase(), caseless::default_case_fold_str(&local));
        }

        #[test]
        fn normalisation_is_idempotent_on_any_accepted_string(s in any::<String>()) {
            if let Ok(a) = normalize_email(&s) {
                prop_assert_eq!(normalize_email(a.as_str()).unwrap(), a);
            }
        }
    }
}
