//! Well-known public mail providers: anyone can open an account there, so they are never an
//! agency domain. Allow rules naming them are refused unless they say `force = true`.

/// Provider domains, exact (their subdomains are covered too).
const PUBLIC_DOMAINS: &[&str] = &[
    // International
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "outlook.fr",
    "msn.com",
    "ymail.com",
    "rocketmail.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "aol.com",
    "aol.fr",
    "aim.com",
    "proton.me",
    "pm.me",
    "protonmail.com",
    "protonmail.ch",
    "tutanota.com",
    "tutanota.de",
    "tutamail.com",
    "tuta.io",
    "tuta.com",
    "zoho.com",
    "zohomail.com",
    "mail.com",
    "email.com",
    "fastmail.com",
    "fastmail.fm",
    "hey.com",
    "mail.ru",
    "inbox.ru",
    "list.ru",
    "bk.ru",
    "rambler.ru",
    "qq.com",
    "163.com",
    "126.com",
    "naver.com",
    // France
    "orange.fr",
    "wanadoo.fr",
    "free.fr",
    "sfr.fr",
    "neuf.fr",
    "cegetel.net",
    "club-internet.fr",
    "numericable.fr",
    "noos.fr",
    "laposte.net",
    "bbox.fr",
    "aliceadsl.fr",
    "alice.fr",
    "libertysurf.fr",
    "tiscali.fr",
    "voila.fr",
    "mailo.com",
    "netcourrier.com",
    "gmx.fr",
    // Germany, Austria, Switzerland
    "web.de",
    "t-online.de",
    "freenet.de",
    "arcor.de",
    "posteo.de",
    "posteo.net",
    "mailbox.org",
    "bluewin.ch",
    "gmx.at",
    // Elsewhere in Europe
    "libero.it",
    "virgilio.it",
    "tiscali.it",
    "seznam.cz",
    "wp.pl",
    "o2.pl",
    "interia.pl",
    "onet.pl",
    "telenet.be",
    "skynet.be",
    "ziggo.nl",
    "btinternet.com",
    "sky.com",
];

/// Providers present under many top-level domains: `yahoo.*` means `yahoo.` followed by a
/// top-level domain (`yahoo.fr`) or a two-label country suffix (`yahoo.co.uk`, `yahoo.com.br`).
const PUBLIC_PREFIXES: &[&str] = &["hotmail", "live", "yahoo", "gmx", "yandex", "windowslive"];

/// Second-level labels used by country suffixes such as `co.uk`, `com.br`, `ne.jp`.
const COUNTRY_SECOND_LEVELS: &[&str] = &["co", "com", "net", "org", "ne", "or", "ac"];

/// Domains on which patterns are probed: the concrete list plus common instances of the prefixes.
pub(crate) fn probe_domains() -> impl Iterator<Item = String> {
    const TLDS: [&str; 6] = ["com", "fr", "de", "net", "co.uk", "ru"];
    PUBLIC_DOMAINS.iter().map(|d| (*d).to_owned()).chain(
        PUBLIC_PREFIXES
            .iter()
            .flat_map(|p| TLDS.iter().map(move |t| format!("{p}.{t}"))),
    )
}

/// Local parts tried on each probe domain: a pattern matching any of them admits the provider.
pub(crate) const PROBE_LOCALS: &[&str] = &["a", "jean.dupont", "x1", "jean-pierre.martin", "j_doe"];

/// The public provider domain that `ascii_domain` is, or is a subdomain of, if any.
pub fn public_provider(ascii_domain: &str) -> Option<String> {
    let mut suffix = ascii_domain;
    loop {
        if is_public_exact(suffix) {
            return Some(suffix.to_owned());
        }
        match suffix.split_once('.') {
            Some((_, rest)) => suffix = rest,
            None => return None,
        }
    }
}

fn is_public_exact(domain: &str) -> bool {
    if PUBLIC_DOMAINS.contains(&domain) {
        return true;
    }
    let Some((first, rest)) = domain.split_once('.') else {
        return false;
    };
    if !PUBLIC_PREFIXES.contains(&first) {
        return false;
    }
    match rest.split_once('.') {
        None => true,
        Some((second, tld)) => COUNTRY_SECOND_LEVELS.contains(&second) && !tld.contains('.'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_providers_and_their_subdomains_are_public() {
        assert_eq!(public_provider("gmail.com").as_deref(), Some("gmail.com"));
        assert_eq!(
            public_provider("mail.orange.fr").as_deref(),
            Some("orange.fr")
        );
        assert_eq!(
            public_provider("t-online.de").as_deref(),
            Some("t-online.de")
        );
    }

    #[test]
    fn wildcard_providers_cover_any_tld() {
        for d in [
            "yahoo.fr",
            "yahoo.com",
            "yahoo.co.uk",
            "yahoo.com.br",
            "hotmail.fr",
            "live.be",
            "gmx.de",
            "gmx.net",
            "yandex.ru",
            "mail.yahoo.fr",
        ] {
            assert!(public_provider(d).is_some(), "{d}");
        }
    }

    #[test]
    fn agency_domains_are_not_public() {
        for d in [
            "finances.gouv.fr",
            "live.culture.gouv.fr",
            "live.gouv.fr",
            "notgmail.com",
            "gmail.com.example",
            "yahoo.interieur.gouv.fr",
            "fr",
            "example",
        ] {
            assert_eq!(public_provider(d), None, "{d}");
        }
    }
}
