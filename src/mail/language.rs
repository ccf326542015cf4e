//! The choice of a language among those available (the languages the templates exist in) from
//! an HTTP `Accept-Language` header. Shared by the mails and the web pages.

pub use crate::config::Language;

/// Chooses a language among `available` from an HTTP `Accept-Language` value.
///
/// Quality values are honoured (`q=0` means "not this one"), a region is ignored (`fr-FR` is
/// French), `*` stands for any language not named, ties go to the language named first, and
/// anything unusable (absent, malformed, only unknown languages) gives `default`.
pub fn negotiate_language(
    accept_language: Option<&str>,
    available: &[Language],
    default: Language,
) -> Language {
    let Some(header) = accept_language else {
        return default;
    };
    // Per available language: (quality in thousandths, position of its first mention).
    let mut named: Vec<Option<(u16, usize)>> = vec![None; available.len()];
    let mut wildcard: Option<(u16, usize)> = None;
    for (position, item) in header.split(',').enumerate() {
        let mut pieces = item.split(';');
        let tag = pieces.next().unwrap_or("").trim();
        if tag.is_empty() {
            continue;
        }
        let mut quality = Some(1000);
        for param in pieces {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("q") {
                quality = parse_quality(value.trim());
            }
        }
        // RFC 9110: a malformed weight makes the whole item unusable.
        let Some(quality) = quality else { continue };
        if tag == "*" {
            wildcard.get_or_insert((quality, position));
            continue;
        }
        if let Some(slot) = Language::from_tag(tag)
            .and_then(|language| available.iter().position(|a| *a == language))
            .and_then(|i| named.get_mut(i))
        {
            *slot = Some(match *slot {
                // The most favourable mention wins (`fr-FR;q=0.2, fr` is French at 1).
                Some((q, first)) => (q.max(quality), first),
                None => (quality, position),
            });
        }
    }
    let mut best: Option<(Language, u16, usize)> = None;
    for (language, mention) in available.iter().copied().zip(named.iter().copied()) {
        let Some((quality, position)) = mention.or(wildcard) else {
            continue;
        };
        if quality == 0 {
            continue;
        }
        // Languages only reached through `*` rank after every named one at the same weight,
        // and among themselves the configured default comes first.
        let rank = if mention.is_some() {
            position
        } else if language == default {
            usize::MAX - 1
        } else {
            usize::MAX
        };
        let better = match best {
            None => true,
            Some((_, q, r)) => quality > q || (quality == q && rank < r),
        };
        if better {
            best = Some((language, quality, rank));
        }
    }
    best.map(|(language, _, _)| language).unwrap_or(default)
}

/// Parses an RFC 9110 weight (`0`, `0.5`, `1.000`) into thousandths.
fn parse_quality(value: &str) -> Option<u16> {
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for i in 0..3 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| u16::from(b - b'0'));
        thousandths = thousandths * 10 + digit;
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const FR: Language = Language::FR;
    const EN: Language = Language::EN;
    #[allow(non_upper_case_globals)]
    const Fr: Language = FR;
    #[allow(non_upper_case_globals)]
    const En: Language = EN;

    /// The negotiation over the two embedded languages, as before `de` existed.
    fn negotiate(header: Option<&str>, default: Language) -> Language {
        negotiate_language(header, &[FR, EN], default)
    }

    #[test]
    fn absent_or_empty_header_gives_the_default() {
        assert_eq!(negotiate(None, Fr), Fr);
        assert_eq!(negotiate(None, En), En);
        assert_eq!(negotiate(Some(""), En), En);
        assert_eq!(negotiate(Some(" , ;"), Fr), Fr);
    }

    #[test]
    fn region_subtags_are_ignored() {
        assert_eq!(negotiate(Some("fr-FR"), En), Fr);
        assert_eq!(negotiate(Some("FR-be"), En), Fr);
        assert_eq!(negotiate(Some("en-GB"), Fr), En);
        assert_eq!(negotiate(Some("en_US"), Fr), En);
    }

    #[test]
    fn unknown_languages_give_the_default() {
        assert_eq!(negotiate(Some("de-DE, it;q=0.8"), Fr), Fr);
        assert_eq!(negotiate(Some("de-DE, it;q=0.8"), En), En);
        // `french` is not the `fr` primary subtag.
        assert_eq!(negotiate(Some("french"), En), En);
    }

    #[test]
    fn quality_values_are_honoured() {
        assert_eq!(negotiate(Some("fr;q=0.3, en;q=0.9"), Fr), En);
        assert_eq!(negotiate(Some("en;q=0.1, de, fr;q=0.5"), En), Fr);
        assert_eq!(
            negotiate(Some("de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7"), Fr),
            En
        );
        assert_eq!(negotiate(Some("fr-FR,fr;q=0.9,en;q=0.8"), En), Fr);
    }

    #[test]
    fn ties_go_to_the_first_named() {
        assert_eq!(negotiate(Some("en, fr"), Fr), En);
        assert_eq!(negotiate(Some("fr, en"), En), Fr);
        assert_eq!(negotiate(Some("en;q=0.5, fr;q=0.5"), Fr), En);
    }

    #[test]
    fn zero_quality_excludes_a_language() {
        assert_eq!(negotiate(Some("fr;q=0"), Fr), Fr, "nothing left");
        assert_eq!(negotiate(Some("fr;q=0, en;q=0.1"), Fr), En);
        // `*` means every language not named: French is excluded, so English.
        assert_eq!(negotiate(Some("fr;q=0, *"), Fr), En);
        assert_eq!(negotiate(Some("fr;q=0.000, *;q=0.5"), Fr), En);
    }

    #[test]
    fn the_most_favourable_mention_of_a_language_counts() {
        assert_eq!(negotiate(Some("fr-CA;q=0.1, en;q=0.5, fr"), En), Fr);
    }

    #[test]
    fn wildcard_ranks_after_named_languages_and_prefers_the_default() {
        assert_eq!(negotiate(Some("*"), En), En);
        assert_eq!(negotiate(Some("*"), Fr), Fr);
        assert_eq!(negotiate(Some("*, en"), Fr), En);
        assert_eq!(negotiate(Some("de, *;q=0.5, en;q=0.5"), Fr), En);
    }

    #[test]
    fn malformed_weights_discard_the_item() {
        assert_eq!(negotiate(Some("en;q=2, fr;q=0.1"), En), Fr);
        assert_eq!(negotiate(Some("en;q=0.12345"), Fr), Fr);
        assert_eq!(negotiate(Some("en;q=abc"), Fr), Fr);
        assert_eq!(negotiate(Some("en;q=1.5"), Fr), Fr);
        // Parameters other than q are ignored.
        assert_eq!(negotiate(Some("en;level=1"), Fr), En);
        assert_eq!(negotiate(Some("en ; Q=1.0"), Fr), En);
    }

    #[test]
    fn quality_parser() {
        assert_eq!(parse_quality("1"), Some(1000));
        assert_eq!(parse_quality("1.000"), Some(1000));
        assert_eq!(parse_quality("1.001"), None);
        assert_eq!(parse_quality("0"), Some(0));
        assert_eq!(parse_quality("0.5"), Some(500));
        assert_eq!(parse_quality("0.05"), Some(50));
        assert_eq!(parse_quality("0.123"), Some(123));
        assert_eq!(parse_quality(".5"), None);
        assert_eq!(parse_quality("0.-1"), None);
    }

    #[test]
    fn parses_and_prints_codes() {
        assert_eq!("fr".parse::<Language>(), Ok(Fr));
        assert_eq!("EN".parse::<Language>(), Ok(En));
        assert_eq!("fr-FR".parse::<Language>(), Ok(Fr));
        assert_eq!("de".parse::<Language>(), Ok(Language::DE));
        assert!("german".parse::<Language>().is_err());
        assert!("f".parse::<Language>().is_err());
        assert!("f1".parse::<Language>().is_err());
        assert_eq!(Fr.to_string(), "fr");
        assert_eq!(serde_json::to_string(&En).unwrap(), "\"en\"");
        assert_eq!(serde_json::from_str::<Language>("\"fr\"").unwrap(), Fr);
    }
}
