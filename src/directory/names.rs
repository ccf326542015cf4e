//! Verified display names: derived from an address's local part, taken from LDAP, and published
//! through `directory.display_name_format`.
//!
//! # Local-part derivation ([`name_from_local_part`])
//!
//! The local part is what the agency's mail system chose, so it is the least authoritative source
//! and the rules are deliberately predictable rather than clever:
//!
//! - A `+tag` (everything from the first `+`) is dropped: `jean.dupont+tchap` → `Jean Dupont`.
//! - Letters (any script, accents and combining marks kept) form words; hyphens join the segments
//!   of a compound word (`jean-pierre` → `Jean-Pierre`) and apostrophes stay inside a word with
//!   both sides capitalised (`o'neil` → `O'Neil`, `d'artagnan` → `D'Artagnan`).
//! - Everything else separates words: `.`, `_`, spaces, other punctuation, and digits, which are
//!   always noise in a name (`dupont.jean2` → `Dupont Jean`, `jdupont42` → `Jdupont`). An
//!   underscore is a space, not a hyphen: `marie_claire.durand` → `Marie Claire Durand`.
//! - Each word is lower-cased, then its first letter (and the first letter after each hyphen or
//!   apostrophe) is upper-cased, so `JEAN.DUPONT` and `jean.dupont` give the same name.
//! - A one-letter segment is an initial and gets a full stop: `j.dupont` → `J. Dupont`,
//!   `j-p.dupont` → `J.-P. Dupont` (the French way of abbreviating Jean-Pierre).
//! - Particles `de`, `du`, `des`, `van`, `von`, `der`, `den`, `vom`, `zu`, `zum`, `zur`, `ten`,
//!   `ter` stay lower-case when they stand between two other words (`charles.de.gaulle` →
//!   `Charles de Gaulle`, `ursula.von.der.leyen` → `Ursula von der Leyen`); first or last, they
//!   are capitalised like any word (`de.villepin` → `De Villepin`). The elided `d'` is lower-case
//!   except at the very start (`jean.d'ormesson` → `Jean d'Ormesson`). The articles `le` and
//!   `la` are *not* particles: in French surnames they keep their capital (`Le Goff`,
//!   `Jean de La Fontaine`).
//! - `Mc`/`Mac` prefixes are not recognised (`mcdonald` → `Mcdonald`): the local part cannot say
//!   where the capital was, and guessing wrong is worse than a plain form.
//! - When nothing is left (empty, all digits, only punctuation), the local part itself is the
//!   name, cleaned of control characters; an empty local part gives [`UNNAMED`].
//!
//! Every name is at most [`MAX_NAME_CHARS`] characters.

use crate::config::{DEFAULT_DISPLAY_NAME_FORMAT, NamePiece, parse_display_name_format};

/// The longest verified name kept, in characters (longer inputs are cut).
pub const MAX_NAME_CHARS: usize = 256;

/// The name given when nothing usable is left, not even the local part itself.
pub const UNNAMED: &str = "Agent";

/// Particles kept lower-case between two words (see the module documentation).
const PARTICLES: &[&str] = &[
    "de", "du", "des", "van", "von", "der", "den", "vom", "zu", "zum", "zur", "ten", "ter",
];

fn is_hyphen(c: char) -> bool {
    matches!(c, '-' | '\u{2010}' | '\u{2011}')
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '\u{2019}' | '\u{02BC}')
}

/// Combining marks, so that a decomposed `e` + U+0301 stays one letter instead of splitting a word.
fn is_combining_mark(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE20}'..='\u{FE2F}')
}

/// Characters that are invisible or reorder text: dropped so a name cannot hide or spoof content.
/// ZWJ and ZWNJ (U+200C, U+200D) are kept because some scripts need them.
fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'
            | '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}')
}

/// Whitespace becomes single spaces, invisible characters go, the ends are trimmed, the length is
/// capped.
fn clean_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_NAME_CHARS * 4));
    let mut pending_space = false;
    let mut count = 0usize;
    for c in s.chars() {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if is_invisible(c) {
            continue;
        }
        if pending_space && !out.is_empty() {
            if count + 1 >= MAX_NAME_CHARS {
                break;
            }
            out.push(' ');
            count += 1;
        }
        pending_space = false;
        if count >= MAX_NAME_CHARS {
            break;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// Upper-cases the first letter of an already lower-cased part; a letter whose upper case is
/// several characters (`ß` → `SS`) keeps only the first one upper-case (title case: `Ss`).
fn capitalise(part: &str) -> String {
    let mut chars = part.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let mut out = String::with_capacity(part.len() + 2);
    let mut upper = first.to_uppercase();
    if let Some(u) = upper.next() {
        out.push(u);
    }
    for rest in upper {
        out.extend(rest.to_lowercase());
    }
    out.push_str(chars.as_str());
    out
}

/// One hyphen-separated segment of a word: its apostrophe-separated parts, and the apostrophe used.
struct Segment {
    parts: Vec<String>,
    apostrophe: char,
}

impl Segment {
    fn is_initial(&self) -> bool {
        self.parts.len() == 1 && self.parts[0].chars().filter(|c| c.is_alphabetic()).count() == 1
    }
}

/// Splits a token of letters, hyphens and apostrophes into lower-cased segments, dropping empty
/// pieces (a stray `-` or `'`) and pieces without any letter.
fn segments_of(token: &str) -> Vec<Segment> {
    token
        .split(is_hyphen)
        .filter_map(|segment| {
            let apostrophe = segment.chars().find(|&c| is_apostrophe(c)).unwrap_or('\'');
            let parts: Vec<String> = segment
                .split(is_apostrophe)
                .filter(|p| p.chars().any(char::is_alphabetic))
                .map(str::to_lowercase)
                .collect();
            (!parts.is_empty()).then_some(Segment { parts, apostrophe })
        })
        .collect()
}

fn words_of(local: &str) -> Vec<Vec<Segment>> {
    local
        .split(|c: char| {
            !(c.is_alphabetic() || is_combining_mark(c) || is_hyphen(c) || is_apostrophe(c))
        })
        .map(segments_of)
        .filter(|w| !w.is_empty())
        .collect()
}

fn render_segment(segment: &Segment, at_start: bool) -> String {
    if segment.is_initial() {
        return format!("{}.", capitalise(&segment.parts[0]));
    }
    let mut out = String::new();
    let last = segment.parts.len() - 1;
    for (i, part) in segment.parts.iter().enumerate() {
        if i > 0 {
            out.push(segment.apostrophe);
        }
        // The elided particle d' (d'Ormesson) is lower-case unless it opens the name.
        if i == 0 && i < last && part == "d" && !at_start {
            out.push_str(part);
        } else {
            out.push_str(&capitalise(part));
        }
    }
    out
}

/// The verified display name derived from an address's local part, when no authoritative source
/// knows the person (rules in the module documentation).
pub fn name_from_local_part(local: &str) -> String {
    let before_tag = local.split('+').next().unwrap_or_default();
    let words = words_of(before_tag);
    if words.is_empty() {
        let fallback = clean_text(local);
        return if fallback.is_empty() {
            UNNAMED.to_owned()
        } else {
            fallback
        };
    }
    let last_word = words.len() - 1;
    let rendered: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(w, segments)| {
            let is_particle = w > 0
                && w < last_word
                && segments.len() == 1
                && segments[0].parts.len() == 1
                && PARTICLES.contains(&segments[0].parts[0].as_str());
            if is_particle {
                return segments[0].parts[0].clone();
            }
            segments
                .iter()
                .enumerate()
                .map(|(s, segment)| render_segment(segment, w == 0 && s == 0))
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect();
    clean_text(&rendered.join(" "))
}

/// A verified name from the agency directory: `displayName` when it has content, else `givenName`
/// and `sn` (whichever are present); trimmed, whitespace collapsed, control and invisible
/// characters removed, at most [`MAX_NAME_CHARS`] characters. The directory is authoritative, so
/// its capitalisation is kept as is.
pub fn name_from_ldap(
    display_name: Option<&str>,
    given_name: Option<&str>,
    surname: Option<&str>,
) -> Option<String> {
    if let Some(name) = display_name.map(clean_text).filter(|n| !n.is_empty()) {
        return Some(name);
    }
    let parts: Vec<String> = [given_name, surname]
        .into_iter()
        .flatten()
        .map(clean_text)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(clean_text(&parts.join(" ")))
    }
}

fn closing_bracket(open: char) -> Option<char> {
    match open {
        '[' => Some(']'),
        '(' => Some(')'),
        '<' => Some('>'),
        '«' => Some('»'),
        _ => None,
    }
}

/// Punctuation that only separates the organisation from the name, and dangles once it is gone.
fn is_separator(c: char) -> bool {
    matches!(
        c,
        '-' | '–' | '—' | ':' | ';' | ',' | '/' | '|' | '·' | '•' | '@'
    )
}

/// The literal text left when an absent organisation is removed from between `before` and
/// `after`: brackets that enclosed it go, separators that now dangle at either end of the name go,
/// and two separators meeting in the middle become one.
fn join_around_hole(before: &str, after: &str, at_start: bool, at_end: bool) -> String {
    let (mut before, mut after) = (before, after);
    loop {
        let (b, a) = (before.trim_end(), after.trim_start());
        match (b.chars().next_back(), a.chars().next()) {
            (Some(open), Some(close)) if closing_bracket(open) == Some(close) => {
                before = &b[..b.len() - open.len_utf8()];
                after = &a[close.len_utf8()..];
            }
            _ => break,
        }
    }
    let (b, a) = (before.trim_end(), after.trim_start());
    let gap = b.len() != before.len() || a.len() != after.len();
    let mut joined = String::with_capacity(before.len() + after.len());
    joined.push_str(b);
    if gap {
        joined.push(' ');
    }
    let b_ends_with_separator = b.chars().next_back().is_some_and(is_separator);
    if b_ends_with_separator && a.starts_with(is_separator) {
        joined.push_str(a.trim_start_matches(|c: char| is_separator(c) || c.is_whitespace()));
    } else {
        joined.push_str(a);
    }
    let trimmable = |c: char| is_separator(c) || c.is_whitespace();
    let mut result = joined.as_str();
    if at_start {
        result = result.trim_start_matches(trimmable);
    }
    if at_end {
        result = result.trim_end_matches(trimmable);
    }
    result.to_owned()
}

/// The published display name: `format` (`directory.display_name_format`) with `{name}` and
/// `{organisation}` replaced. Without an organisation (or with a blank one) the placeholder goes
/// together with the brackets around it and any separator left dangling: `Jean Dupont`, never
/// `Jean Dupont []`. An invalid format (which configuration validation rejects) falls back to
/// [`DEFAULT_DISPLAY_NAME_FORMAT`].
pub fn format_display_name(format: &str, name: &str, organisation: Option<&str>) -> String {
    let pieces = parse_display_name_format(format)
        .or_else(|_| parse_display_name_format(DEFAULT_DISPLAY_NAME_FORMAT))
        .unwrap_or_else(|_| vec![NamePiece::Name]);
    let name = name.trim();
    let organisation = organisation.map(str::trim).filter(|o| !o.is_empty());

    let mut out = String::new();
    match organisation {
        Some(org) => {
            for piece in &pieces {
                out.push_str(match piece {
                    NamePiece::Literal(text) => text,
                    NamePiece::Name => name,
                    NamePiece::Organisation => org,
                });
            }
        }
        None => {
            // Literal runs between names are merged; each absent organisation is removed from the
            // run it sits in, knowing whether a name comes before and after it.
            let mut run = String::new();
            let mut seen_name = false;
            let mut i = 0;
            while i < pieces.len() {
                match pieces[i] {
                    NamePiece::Name => {
                        out.push_str(&run);
                        run.clear();
                        out.push_str(name);
                        seen_name = true;
                    }
                    NamePiece::Literal(text) => run.push_str(text),
                    NamePiece::Organisation => {
                        let after = match pieces.get(i + 1) {
                            Some(NamePiece::Literal(text)) => {
                                i += 1;
                                *text
                            }
                            _ => "",
                        };
                        let name_follows = pieces[i + 1..].contains(&NamePiece::Name);
                        run = join_around_hole(&run, after, !seen_name, !name_follows);
                    }
                }
                i += 1;
            }
            out.push_str(&run);
        }
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate_display_name_format;
    use proptest::prelude::*;

    #[test]
    fn local_part_table() {
        let cases: &[(&str, &str)] = &[
            // The examples.
            ("jean-pierre.dupont", "Jean-Pierre Dupont"),
            ("j.dupont", "J. Dupont"),
            ("dupont.jean2", "Dupont Jean"),
            // Separators.
            ("jean.dupont", "Jean Dupont"),
            ("jean_dupont", "Jean Dupont"),
            ("marie_claire.durand", "Marie Claire Durand"),
            ("jean..dupont", "Jean Dupont"),
            (".jean.dupont.", "Jean Dupont"),
            ("jean dupont", "Jean Dupont"),
            // Tags.
            ("jean.dupont+tchap", "Jean Dupont"),
            ("jean.dupont+a+b", "Jean Dupont"),
            // Digits.
            ("jdupont42", "Jdupont"),
            ("jean.dupont.2", "Jean Dupont"),
            ("2jean.dupont", "Jean Dupont"),
            ("jean2pierre", "Jean Pierre"),
            // Case.
            ("JEAN.DUPONT", "Jean Dupont"),
            ("Jean.DuPont", "Jean Dupont"),
            // Accents, in composed and decomposed form.
            ("élodie.dupré", "Élodie Dupré"),
            ("hélène.müller", "Hélène Müller"),
            ("jérôme.lefèvre", "Jérôme Lefèvre"),
            ("e\u{301}lodie.dupre\u{301}", "E\u{301}lodie Dupre\u{301}"),
            ("oeuvre.œil", "Oeuvre Œil"),
            ("jiří.ševčík", "Jiří Ševčík"),
            ("иван.петров", "Иван Петров"),
            // Hyphens.
            ("marie-claire.durand-leroy", "Marie-Claire Durand-Leroy"),
            ("jean--pierre.dupont", "Jean-Pierre Dupont"),
            ("-jean-.dupont", "Jean Dupont"),
            // Initials.
            ("j.p.dupont", "J. P. Dupont"),
            ("j-p.dupont", "J.-P. Dupont"),
            ("dupont.j", "Dupont J."),
            // Apostrophes.
            ("d'artagnan", "D'Artagnan"),
            ("o'neil", "O'Neil"),
            ("sean.o'neil", "Sean O'Neil"),
            ("jean.d'ormesson", "Jean d'Ormesson"),
            ("n'guessan.kouassi", "N'Guessan Kouassi"),
            ("d’artagnan", "D’Artagnan"),
            ("o''neil", "O'Neil"),
            // Particles.
            ("charles.de.gaulle", "Charles de Gaulle"),
            ("jean.de.la.fontaine", "Jean de La Fontaine"),
            ("ursula.von.der.leyen", "Ursula von der Leyen"),
            ("vincent.van.gogh", "Vincent van Gogh"),
            ("joachim.du.bellay", "Joachim du Bellay"),
            ("de.villepin", "De Villepin"),
            ("jean.le.goff", "Jean Le Goff"),
            ("marie.la", "Marie La"),
            ("nguyen.van", "Nguyen Van"),
            // No Mc/Mac guessing.
            ("ronald.mcdonald", "Ronald Mcdonald"),
            // Title case of a multi-character upper case.
            ("ßtraße", "Sstraße"),
            // Fallbacks: the local part itself, or UNNAMED.
            ("12345", "12345"),
            ("...", "..."),
            ("+tchap", "+tchap"),
            ("42+x", "42+x"),
            ("", UNNAMED),
            ("\u{7}", UNNAMED),
        ];
        assert!(cases.len() >= 30);
        let mut failures = Vec::new();
        for (local, expected) in cases {
            let got = name_from_local_part(local);
            if got != *expected {
                failures.push(format!("{local:?}: got {got:?}, expected {expected:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn local_part_names_are_capped() {
        let long = "a".repeat(1000) + ".b";
        assert_eq!(name_from_local_part(&long).chars().count(), MAX_NAME_CHARS);
        let digits = "1".repeat(1000);
        assert_eq!(
            name_from_local_part(&digits).chars().count(),
            MAX_NAME_CHARS
        );
    }

    #[test]
    fn ldap_names() {
        assert_eq!(
            name_from_ldap(Some("  Jean   Dupont "), Some("X"), Some("Y")),
            Some("Jean Dupont".to_owned())
        );
        // The directory's own capitalisation is authoritative.
        assert_eq!(
            name_from_ldap(Some("DUPONT Jean"), None, None),
            Some("DUPONT Jean".to_owned())
        );
        assert_eq!(
            name_from_ldap(Some(" \t "), Some("Jean"), Some("Dupont")),
            Some("Jean Dupont".to_owned())
        );
        assert_eq!(
            name_from_ldap(None, Some(" Jean\n"), Some("\tDupont")),
            Some("Jean Dupont".to_owned())
        );
        assert_eq!(
            name_from_ldap(None, None, Some("Accueil")),
            Some("Accueil".to_owned())
        );
        assert_eq!(
            name_from_ldap(None, Some("Jean"), None),
            Some("Jean".to_owned())
        );
        assert_eq!(name_from_ldap(None, None, None), None);
        assert_eq!(name_from_ldap(Some(""), Some(" "), Some("\u{0}")), None);
        // Tabs and newlines separate words; other controls and bidi overrides vanish.
        assert_eq!(
            name_from_ldap(Some("Jean\tPierre\r\nDupont"), None, None),
            Some("Jean Pierre Dupont".to_owned())
        );
        assert_eq!(
            name_from_ldap(Some("Jean\u{0}\u{202E}\u{200B} Dupont\u{7f}"), None, None),
            Some("Jean Dupont".to_owned())
        );
        let long = "é".repeat(300);
        let name = name_from_ldap(Some(&long), None, None).unwrap();
        assert_eq!(name.chars().count(), MAX_NAME_CHARS);
        // A cut never leaves a trailing space.
        let spaced = "ab ".repeat(200);
        let name = name_from_ldap(Some(&spaced), None, None).unwrap();
        assert!(name.chars().count() <= MAX_NAME_CHARS);
        assert!(!name.ends_with(' '));
    }

    #[test]
    fn display_name_formats() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            (
                DEFAULT_DISPLAY_NAME_FORMAT,
                Some("Finances"),
                "Jean Dupont [Finances]",
            ),
            (DEFAULT_DISPLAY_NAME_FORMAT, None, "Jean Dupont"),
            (DEFAULT_DISPLAY_NAME_FORMAT, Some(""), "Jean Dupont"),
            (DEFAULT_DISPLAY_NAME_FORMAT, Some("  "), "Jean Dupont"),
            (
                DEFAULT_DISPLAY_NAME_FORMAT,
                Some(" Justice "),
                "Jean Dupont [Justice]",
            ),
            ("{name} ({organisation})", None, "Jean Dupont"),
            (
                "{name} ({organisation})",
                Some("Intérieur"),
                "Jean Dupont (Intérieur)",
            ),
            ("{name} - {organisation}", None, "Jean Dupont"),
            ("{name}, {organisation}", None, "Jean Dupont"),
            ("{organisation} - {name}", None, "Jean Dupont"),
            ("{organisation}: {name}", Some("BMI"), "BMI: Jean Dupont"),
            ("[{organisation}] {name}", None, "Jean Dupont"),
            ("{name} [ {organisation} ]", None, "Jean Dupont"),
            ("{name} ([{organisation}])", None, "Jean Dupont"),
            ("{name}", Some("Finances"), "Jean Dupont"),
            ("{name} {organisation}", None, "Jean Dupont"),
            (
                "{name} ({organisation}) - agent",
                None,
                "Jean Dupont - agent",
            ),
            ("{name}, {organisation}, agent", None, "Jean Dupont, agent"),
            ("Agent {name} [{organisation}]", None, "Agent Jean Dupont"),
            (
                "{name} [{organisation}] / {name}",
                None,
                "Jean Dupont / Jean Dupont",
            ),
            (
                "{name} [{organisation}]",
                Some("Finances"),
                "Jean Dupont [Finances]",
            ),
            // An invalid format falls back to the default.
            ("{nom}", Some("Finances"), "Jean Dupont [Finances]"),
            ("{organisation}", None, "Jean Dupont"),
        ];
        let mut failures = Vec::new();
        for (format, organisation, expected) in cases {
            let got = format_display_name(format, "Jean Dupont", *organisation);
            if got != *expected {
                failures.push(format!(
                    "{format:?} {organisation:?}: got {got:?}, expected {expected:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn values_are_not_reinterpreted_as_placeholders() {
        assert_eq!(
            format_display_name(
                DEFAULT_DISPLAY_NAME_FORMAT,
                "{organisation}",
                Some("{name}")
            ),
            "{organisation} [{name}]"
        );
        // A name that ends like a separator keeps it: only the format's text is trimmed.
        assert_eq!(
            format_display_name("{name} - {organisation}", "J.-", None),
            "J.-"
        );
    }

    #[test]
    fn format_validation() {
        assert!(validate_display_name_format(DEFAULT_DISPLAY_NAME_FORMAT).is_ok());
        assert!(validate_display_name_format("{name}").is_ok());
        assert!(validate_display_name_format("{organisation} - {name}").is_ok());
        assert!(validate_display_name_format("« {name} » {name}").is_ok());
        for bad in [
            "",
            "Jean",
            "{organisation}",
            "{nom} [{organisation}]",
            "{name} [{org}]",
            "{name} [{organization}]",
            "{name",
            "{name} }",
            "{name} {",
            "{{name}}",
            "{ name }",
        ] {
            let err = validate_display_name_format(bad);
            assert!(err.is_err(), "{bad:?} should be rejected");
        }
        let err = validate_display_name_format("{name} [{org}]").unwrap_err();
        assert!(err.contains("{org}"), "{err}");
        let err = validate_display_name_format("[{organisation}]").unwrap_err();
        assert!(err.contains("{name}"), "{err}");
    }

    proptest! {
        #[test]
        fn local_part_never_panics_and_is_never_empty(local in any::<String>()) {
            let name = name_from_local_part(&local);
            prop_assert!(!name.is_empty());
            prop_assert!(name.chars().count() <= MAX_NAME_CHARS);
            prop_assert!(!name.chars().any(is_invisible));
            prop_assert_eq!(name.trim(), name.as_str());
        }

        #[test]
        fn local_part_from_email_like_input(local in "[a-zA-Z0-9._'+-]{0,40}") {
            let name = name_from_local_part(&local);
            prop_assert!(!name.is_empty());
            prop_assert!(!name.contains("  "));
        }

        #[test]
        fn formatting_never_panics(
            format in any::<String>(),
            name in "[A-Za-zé .'-]{1,20}",
            organisation in proptest::option::of(any::<String>()),
        ) {
            let shown = format_display_name(&format, &name, organisation.as_deref());
            prop_assert!(shown.contains(name.trim()));
        }
    }
}
