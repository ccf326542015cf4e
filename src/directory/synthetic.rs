//! Fake but realistic directory entries, for demos (`annuaire directory import-synthetic N`) and
//! search benchmarks.
//!
//! People get French or German first names and surnames (with accents, compound first names,
//! double-barrelled surnames and particles), one of 20 organisations spread over 5 homeservers,
//! and a unique address built the way agencies build them (`jean-pierre.dupont12@finances.example`,
//! German umlauts written `ae`/`oe`/`ue`). The same seed always gives the same people.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::search::fold;

/// One generated directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SyntheticPerson {
    /// The Matrix user id, `@jean.dupont12:agent.finances.example`.
    pub mxid: String,
    /// The work address, `jean.dupont12@finances.example`.
    pub email: String,
    /// The verified name, `Jean Dupont`.
    pub name: String,
    /// The organisation label, `Finances`.
    pub organisation: String,
    /// The homeserver (shard) the person is on, `agent.finances.example`.
    pub homeserver: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locale {
    French,
    German,
}

/// The shards.
const HOMESERVERS: [&str; 5] = [
    "agent.finances.example",
    "agent.interieur.example",
    "agent.education.example",
    "agent.social.example",
    "agent.bund.example",
];

/// Organisation label, mail domain, index in [`HOMESERVERS`], usual locale of its agents.
const ORGANISATIONS: [(&str, &str, usize, Locale); 20] = [
    ("Finances", "finances.example", 0, Locale::French),
    ("Douanes", "douane.finances.example", 0, Locale::French),
    (
        "Finances publiques",
        "dgfip.finances.example",
        0,
        Locale::French,
    ),
    ("INSEE", "insee.example", 0, Locale::French),
    ("Intérieur", "interieur.example", 1, Locale::French),
    (
        "Gendarmerie",
        "gendarmerie.interieur.example",
        1,
        Locale::French,
    ),
    ("Justice", "justice.example", 1, Locale::French),
    ("Outre-mer", "outre-mer.example", 1, Locale::French),
    (
        "Éducation nationale",
        "education.example",
        2,
        Locale::French,
    ),
    (
        "Enseignement supérieur",
        "recherche.example",
        2,
        Locale::French,
    ),
    ("Culture", "culture.example", 2, Locale::French),
    (
        "Affaires étrangères",
        "diplomatie.example",
        2,
        Locale::French,
    ),
    ("Santé", "sante.example", 3, Locale::French),
    ("Travail", "travail.example", 3, Locale::French),
    (
        "Transition écologique",
        "ecologie.example",
        3,
        Locale::French,
    ),
    ("Agriculture", "agriculture.example", 3, Locale::French),
    (
        "Bundesministerium des Innern",
        "bmi.bund.example",
        4,
        Locale::German,
    ),
    (
        "Bundesministerium der Finanzen",
        "bmf.bund.example",
        4,
        Locale::German,
    ),
    (
        "Auswärtiges Amt",
        "auswaertiges-amt.example",
        4,
        Locale::German,
    ),
    (
        "Bundesamt für Sicherheit in der Informationstechnik",
        "bsi.bund.example",
        4,
        Locale::German,
    ),
];

/// Roughly most frequent first, which the skewed pick turns into realistic repetition.
const FRENCH_FIRST_NAMES: &[&str] = &[
    "Jean",
    "Marie",
    "Pierre",
    "Nathalie",
    "Michel",
    "Isabelle",
    "Philippe",
    "Sylvie",
    "Alain",
    "Catherine",
    "Nicolas",
    "Françoise",
    "Christophe",
    "Sandrine",
    "Patrick",
    "Valérie",
    "Laurent",
    "Christine",
    "Frédéric",
    "Stéphanie",
    "Julien",
    "Céline",
    "Sébastien",
    "Aurélie",
    "Thomas",
    "Émilie",
    "Stéphane",
    "Hélène",
    "David",
    "Élodie",
    "Jérôme",
    "Cécile",
    "Olivier",
    "Anne",
    "François",
    "Sophie",
    "Éric",
    "Julie",
    "Thierry",
    "Camille",
    "Benoît",
    "Chloé",
    "Jean-Pierre",
    "Marie-Claire",
    "Jean-Marc",
    "Anne-Sophie",
    "Pierre-Yves",
    "Marie-Hélène",
    "Jean-François",
    "Marie-Christine",
    "Jean-Luc",
    "Anne-Laure",
    "Loïc",
    "Gaël",
    "Anaïs",
    "Zoé",
    "Maëlle",
    "Noémie",
    "Océane",
    "Mélanie",
    "Agnès",
    "Bérénice",
    "Clément",
    "Léa",
    "Inès",
    "Théo",
    "Raphaël",
    "Joël",
    "Régis",
    "Gérard",
    "Hervé",
    "Josée",
    "Maxime",
    "Antoine",
    "Mathilde",
    "Guillaume",
    "Pauline",
    "Romain",
    "Claire",
    "Vincent",
    "Caroline",
    "Arnaud",
    "Virginie",
    "Damien",
    "Laure",
    "Yann",
    "Gwenaëlle",
    "Ronan",
    "Soizic",
    "Mohamed",
    "Fatima",
    "Karim",
    "Nadia",
    "Mamadou",
    "Aminata",
];

const GERMAN_FIRST_NAMES: &[&str] = &[
    "Thomas",
    "Sabine",
    "Michael",
    "Andrea",
    "Andreas",
    "Petra",
    "Stefan",
    "Claudia",
    "Jürgen",
    "Susanne",
    "Frank",
    "Monika",
    "Uwe",
    "Birgit",
    "Klaus",
    "Katrin",
    "Jörg",
    "Ursula",
    "Matthias",
    "Bärbel",
    "Günter",
    "Käthe",
    "Björn",
    "Sören",
    "Jörn",
    "Dörte",
    "Hans-Jürgen",
    "Karl-Heinz",
    "Anna-Lena",
    "Hans-Peter",
    "Eva-Maria",
    "Lukas",
    "Lena",
    "Maximilian",
    "Johanna",
    "Felix",
    "Hannah",
    "Tobias",
    "Julia",
    "Florian",
    "Katharina",
    "Sebastian",
    "Franziska",
    "Wolfgang",
    "Renate",
    "Dieter",
    "Helga",
    "Manfred",
    "Gisela",
    "Horst",
    "Ingrid",
    "Tomáš",
    "Jiří",
    "Zuzana",
    "Petr",
    "Agnieszka",
    "Łukasz",
    "Małgorzata",
    "Zoë",
];

const FRENCH_SURNAMES: &[&str] = &[
    "Martin",
    "Bernard",
    "Thomas",
    "Petit",
    "Robert",
    "Richard",
    "Durand",
    "Dubois",
    "Moreau",
    "Laurent",
    "Simon",
    "Michel",
    "Lefèvre",
    "Leroy",
    "Roux",
    "David",
    "Bertrand",
    "Morel",
    "Fournier",
    "Girard",
    "Bonnet",
    "Dupont",
    "Lambert",
    "Fontaine",
    "Rousseau",
    "Vincent",
    "Muller",
    "Lefebvre",
    "Faure",
    "André",
    "Mercier",
    "Blanc",
    "Guérin",
    "Boyer",
    "Garnier",
    "Chevalier",
    "François",
    "Legrand",
    "Gauthier",
    "Garcia",
    "Perrin",
    "Robin",
    "Clément",
    "Morin",
    "Nicolas",
    "Henry",
    "Roussel",
    "Mathieu",
    "Gautier",
    "Masson",
    "Marchand",
    "Duval",
    "Denis",
    "Dumont",
    "Lemaire",
    "Noël",
    "Dufour",
    "Meunier",
    "Brun",
    "Blanchard",
    "Giraud",
    "Joly",
    "Rivière",
    "Lucas",
    "Brunet",
    "Gaillard",
    "Barbier",
    "Arnaud",
    "Martinez",
    "Gérard",
    "Roche",
    "Renard",
    "Roy",
    "Leroux",
    "Colin",
    "Vidal",
    "Caron",
    "Picard",
    "Fabre",
    "Aubert",
    "Lemoine",
    "Renaud",
    "Dumas",
    "Lacroix",
    "Olivier",
    "Bourgeois",
    "Benoît",
    "Leclerc",
    "Payet",
    "Rolland",
    "Lecomte",
    "Dupuy",
    "Guillot",
    "Hubert",
    "Carpentier",
    "Dupuis",
    "Moulin",
    "Deschamps",
    "Huet",
    "Vasseur",
    "Boucher",
    "Fleury",
    "Royer",
    "Jacquet",
    "Poirier",
    "Marty",
    "Aubry",
    "Guyot",
    "Carré",
    "Renault",
    "Charpentier",
    "Ménard",
    "Maillard",
    "Bailly",
    "Hervé",
    "Le Gall",
    "Le Goff",
    "Le Roux",
    "Le Floch",
    "Léger",
    "Prévost",
    "Lévêque",
    "Lemaître",
    "Bénard",
    "Maréchal",
    "Barthélemy",
    "Étienne",
    "Hoarau",
    "Grondin",
    "Da Silva",
    "N'Diaye",
    "Diallo",
    "Traoré",
    "Benali",
    "de Villiers",
    "du Pont",
    "de La Fontaine",
    "de Lattre",
    "d'Ormesson",
    "Saint-Martin",
    "Delacroix",
    "Dubois-Lefèvre",
];

const GERMAN_SURNAMES: &[&str] = &[
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Schäfer",
    "Koch",
    "Bauer",
    "Richter",
    "Klein",
    "Wolf",
    "Schröder",
    "Neumann",
    "Schwarz",
    "Zimmermann",
    "Braun",
    "Krüger",
    "Hartmann",
    "Lange",
    "Werner",
    "Schmitz",
    "Krause",
    "Meier",
    "Lehmann",
    "Köhler",
    "Herrmann",
    "König",
    "Walter",
    "Huber",
    "Kaiser",
    "Fuchs",
    "Peters",
    "Scholz",
    "Möller",
    "Weiß",
    "Jung",
    "Hahn",
    "Vogel",
    "Keller",
    "Günther",
    "Berger",
    "Winkler",
    "Lorenz",
    "Baumann",
    "Albrecht",
    "Böhm",
    "Krämer",
    "Jäger",
    "Groß",
    "Seidel",
    "Brandt",
    "Dietrich",
    "Kühn",
    "Pfeiffer",
    "Weißmann",
    "Ševčík",
    "Dvořák",
    "Novák",
    "Nowak",
    "Wójcik",
    "Kowalski",
    "von Bergen",
    "von der Heide",
    "van den Berg",
    "zu Salm",
    "Müller-Lüdenscheidt",
    "Schulze-Delitzsch",
];

/// Picks from a list ordered roughly by frequency: the smaller of two uniform indices, so the
/// first entries come up about twice as often as the average and the last ones rarely.
fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    let i = rng
        .gen_range(0..list.len())
        .min(rng.gen_range(0..list.len()));
    list[i]
}

/// A name as an address writes it: folded words joined by hyphens, German umlauts spelt out.
fn address_piece(name: &str, locale: Locale) -> String {
    let spelt = match locale {
        Locale::German => name
            .replace('ä', "ae")
            .replace('ö', "oe")
            .replace('ü', "ue")
            .replace('Ä', "Ae")
            .replace('Ö', "Oe")
            .replace('Ü', "Ue")
            .replace('ß', "ss"),
        Locale::French => name.to_owned(),
    };
    fold(&spelt).replace(' ', "-")
}

/// The generator behind [`synthetic_people`].
struct People {
    rng: StdRng,
    remaining: usize,
    /// How many people already have each address base (`jean.dupont`), for the numeric suffix.
    taken: HashMap<String, u32>,
}

impl People {
    fn person(&mut self) -> SyntheticPerson {
        let (label, domain, homeserver, usual) =
            ORGANISATIONS[self.rng.gen_range(0..ORGANISATIONS.len())];
        // A few agents come from the other country.
        let locale = if self.rng.gen_ratio(1, 12) {
            match usual {
                Locale::French => Locale::German,
                Locale::German => Locale::French,
            }
        } else {
            usual
        };
        let (first_names, surnames) = match locale {
            Locale::French => (FRENCH_FIRST_NAMES, FRENCH_SURNAMES),
            Locale::German => (GERMAN_FIRST_NAMES, GERMAN_SURNAMES),
        };
        let first = pick(&mut self.rng, first_names);
        let mut surname = pick(&mut self.rng, surnames).to_owned();
        // Some double-barrelled surnames, built from two plain ones.
        if self.rng.gen_ratio(1, 15) {
            let second = pick(&mut self.rng, surnames);
            let plain = |s: &str| !s.contains([' ', '-', '\'']);
            if plain(&surname) && plain(second) && surname != second {
                surname = format!("{surname}-{second}");
            }
        }

        let base = format!(
            "{}.{}",
            address_piece(first, locale),
            address_piece(&surname, locale)
        );
        let count = self.taken.entry(base.clone()).or_insert(0);
        *count += 1;
        // Bases end with a letter, so `base` + a number >= 2 can never equal another base.
        let local = if *count == 1 {
            base
        } else {
            format!("{base}{count}")
        };
        let homeserver = HOMESERVERS[homeserver];
        SyntheticPerson {
            mxid: format!("@{local}:{homeserver}"),
            email: format!("{local}@{domain}"),
            name: format!("{first} {surname}"),
            organisation: label.to_owned(),
            homeserver: homeserver.to_owned(),
        }
    }
}

impl Iterator for People {
    type Item = SyntheticPerson;

    fn next(&mut self) -> Option<SyntheticPerson> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        Some(self.person())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

/// `n` synthetic people, the same ones for the same seed, with unique mxids and emails.
pub fn synthetic_people(n: usize, seed: u64) -> impl Iterator<Item = SyntheticPerson> {
    People {
        rng: StdRng::seed_from_u64(seed),
        remaining: n,
        taken: HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::directory::names::name_from_local_part;
    use crate::directory::search::{parse_query, rank, search_key};

    #[test]
    fn lists_are_large_and_without_duplicates() {
        let first: HashSet<_> = FRENCH_FIRST_NAMES
            .iter()
            .chain(GERMAN_FIRST_NAMES)
            .collect();
        assert!(first.len() >= 150, "{} first names", first.len());
        let surnames: HashSet<_> = FRENCH_SURNAMES.iter().chain(GERMAN_SURNAMES).collect();
        assert!(surnames.len() >= 200, "{} surnames", surnames.len());
        for list in [
            FRENCH_FIRST_NAMES,
            GERMAN_FIRST_NAMES,
            FRENCH_SURNAMES,
            GERMAN_SURNAMES,
        ] {
            let unique: HashSet<_> = list.iter().collect();
            assert_eq!(unique.len(), list.len(), "duplicate in {list:?}");
            for name in list {
                assert!(!address_piece(name, Locale::German).is_empty(), "{name}");
                assert!(
                    name.chars().last().is_some_and(char::is_alphabetic),
                    "{name}"
                );
            }
        }
        let domains: HashSet<_> = ORGANISATIONS.iter().map(|o| o.1).collect();
        assert_eq!(domains.len(), ORGANISATIONS.len());
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a: Vec<_> = synthetic_people(2_000, 7).collect();
        let b: Vec<_> = synthetic_people(2_000, 7).collect();
        assert_eq!(a, b);
        let c: Vec<_> = synthetic_people(2_000, 8).collect();
        assert_ne!(a, c);
        // A shorter run is a prefix of a longer one.
        let short: Vec<_> = synthetic_people(100, 7).collect();
        assert_eq!(short[..], a[..100]);
        assert_eq!(synthetic_people(0, 7).count(), 0);
        assert_eq!(synthetic_people(5, 7).size_hint(), (5, Some(5)));
    }

    #[test]
    fn hundred_thousand_unique_and_realistic() {
        let n = 100_000;
        let people: Vec<_> = synthetic_people(n, 42).collect();
        assert_eq!(people.len(), n);

        let mxids: HashSet<_> = people.iter().map(|p| p.mxid.as_str()).collect();
        assert_eq!(mxids.len(), n, "mxids are unique");
        let emails: HashSet<_> = people.iter().map(|p| p.email.as_str()).collect();
        assert_eq!(emails.len(), n, "emails are unique");

        let mut per_org: HashMap<&str, usize> = HashMap::new();
        let mut per_hs: HashMap<&str, usize> = HashMap::new();
        for p in &people {
            *per_org.entry(p.organisation.as_str()).or_default() += 1;
            *per_hs.entry(p.homeserver.as_str()).or_default() += 1;
            let (local, server) = p.mxid[1..].split_once(':').unwrap();
            assert_eq!(server, p.homeserver);
            assert!(
                local.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'.'
                    || b == b'-'),
                "{}",
                p.mxid
            );
            let (email_local, domain) = p.email.split_once('@').unwrap();
            assert_eq!(email_local, local);
            assert!(domain.ends_with(".example"));
            assert!(!p.name.trim().is_empty());
        }
        assert_eq!(per_org.len(), ORGANISATIONS.len());
        assert_eq!(per_hs.len(), HOMESERVERS.len());
        for (org, count) in &per_org {
            assert!(*count > n / 40, "{org}: {count}");
        }

        let has = |pred: &dyn Fn(&SyntheticPerson) -> bool| people.iter().any(pred);
        assert!(has(&|p| p.name.contains("Hélène")));
        assert!(has(&|p| p.name.contains("Jérôme")));
        assert!(has(&|p| p.name.contains("Müller")));
        assert!(has(&|p| p.name.contains("Jürgen")));
        assert!(has(&|p| p.name.contains("Ševčík")));
        assert!(has(&|p| p.name.contains(" de ") || p.name.contains(" von ")));
        assert!(has(&|p| p
            .name
            .split(' ')
            .next_back()
            .unwrap()
            .contains('-')));
        assert!(has(&|p| p.name.split(' ').next().unwrap().contains('-')));
        assert!(has(&|p| p.email.starts_with("juergen.")));
        assert!(people.iter().filter(|p| p.mxid.contains("dupont")).count() > 10);
        assert!(has(&|p| p.mxid.starts_with("@jean.dupont")
            && p.mxid.contains(|c: char| c.is_ascii_digit())));
    }

    #[test]
    fn synthetic_people_are_findable() {
        for p in synthetic_people(2_000, 3) {
            let local = p.mxid[1..].split_once(':').unwrap().0;
            let key = search_key(&p.name, Some(&p.organisation), local);
            let query: String = key
                .name
                .split(' ')
                .take(2)
                .map(|w| &w[..w.len().min(3)])
                .collect::<Vec<_>>()
                .join(" ");
            let q = parse_query(&query).unwrap();
            assert!(
                rank(&q, &key).is_some(),
                "{} not found by {query:?}",
                p.name
            );
            assert!(!name_from_local_part(local).is_empty());
        }
    }
}
