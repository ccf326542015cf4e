//! The dataset of `bench/identity.sh` (bench-only; not installed): N associations of synthetic
//! people with their lookup hashes, R allowlist rules, an identity access token that accepted the
//! terms, and the request bodies the wrk scripts send.
//!
//! ```text
//! cargo run --release --example bench_identity_data -- \
//!     --database-url sqlite:///tmp/b/annuaire.db --terms terms.example.toml \
//!     --associations 1000000 --rules 10000 --out /tmp/b/data
//! ```
//!
//! Writes into `--out`: `allowlists/*.toml` (R rules: the synthetic organisations' domains,
//! then filler domain rules), `token` (the access token), `lookup-bodies.json` (one
//! `POST /v2/lookup` body per line, 1,000 sha256 hashes each, half of bound addresses),
//! `info-addresses.txt` (addresses for `/info`, half bound). The database is migrated first;
//! associations already present are left alone (running it twice is harmless).

// A bench tool stops at its first failure: unwrapping is its error handling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use annuaire::directory::synthetic::synthetic_people;
use annuaire::identity::accounts::{mint_token, token_hash};
use annuaire::identity::lookup::current_pepper;
use annuaire::identity::terms::Terms;
use annuaire::matrix::hashing::lookup_hash;
use annuaire::policy::normalize_email;
use annuaire::store::Db;
use annuaire::store::identity::{self as store, AssociationRow};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The user the bench's access token belongs to.
const BENCH_USER: &str = "@bench:agent.finances.example";
/// Hashes per lookup body, and how many of them are bound.
const LOOKUP_SIZE: usize = 1000;
const LOOKUP_BOUND: usize = 500;
/// Distinct lookup bodies (wrk takes them in turn, so the same entries are not always hot).
const LOOKUP_BODIES: usize = 64;
/// Distinct `/info` addresses.
const INFO_ADDRESSES: usize = 2000;
/// Associations per transaction.
const BATCH: usize = 10_000;

struct Args {
    database_url: String,
    terms: PathBuf,
    associations: usize,
    rules: usize,
    out: PathBuf,
    seed: u64,
}

fn args() -> Args {
    let mut database_url = None;
    let mut terms = PathBuf::from("terms.example.toml");
    let mut associations = 1_000_000;
    let mut rules = 10_000;
    let mut out = None;
    let mut seed = 1;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--database-url" => database_url = Some(value()),
            "--terms" => terms = PathBuf::from(value()),
            "--associations" => associations = value().parse().unwrap(),
            "--rules" => rules = value().parse().unwrap(),
            "--out" => out = Some(PathBuf::from(value())),
            "--seed" => seed = value().parse().unwrap(),
            other => panic!("unknown argument {other}"),
        }
    }
    Args {
        database_url: database_url.expect("--database-url"),
        terms,
        associations,
        rules,
        out: out.expect("--out"),
        seed,
    }
}

fn main() {
    let args = args();
    std::fs::create_dir_all(args.out.join("allowlists")).unwrap();
    let db = Db::connect(&args.database_url, 2, Duration::from_secs(30)).unwrap();
    db.migrate().unwrap();
    let mut conn = db.get().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let pepper = current_pepper(&mut conn, &mut rand::rngs::OsRng, now).unwrap();

    // Associations, in transactions of BATCH, keeping a sample of bound addresses.
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let mut sample: Vec<String> = Vec::new();
    let mut organisations: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut people = synthetic_people(args.associations, args.seed);
    let (mut done, mut inserted) = (0usize, 0usize);
    loop {
        let rows: Vec<(AssociationRow, String)> = people
            .by_ref()
            .take(BATCH)
            .map(|p| {
                let address = normalize_email(&p.email).unwrap().as_str().to_owned();
                let domain = address.rsplit_once('@').unwrap().1.to_owned();
                organisations
                    .entry(domain)
                    .or_insert_with(|| (p.organisation.clone(), p.homeserver.clone()));
                let hash = lookup_hash(&address, "email", &pepper.value);
                if sample.len() < 200_000 && rng.gen_ratio(1, 4) {
                    sample.push(address.clone());
                }
                let row = AssociationRow {
                    medium: "email".into(),
                    address,
                    mxid: p.mxid,
                    created_at: now,
                    not_before: now,
                    not_after: now + 100 * 365 * 24 * 3600 * 1000,
                };
                (row, hash)
            })
            .collect();
        if rows.is_empty() {
            break;
        }
        inserted += annuaire::store::transaction(&mut conn, |conn| {
            store::import_associations(conn, pepper.id, &rows)
        })
        .unwrap();
        done += rows.len();
        if done % 100_000 == 0 {
            eprintln!(
                "associations: {done}/{} ({:.0} s)",
                args.associations,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "associations: {inserted} inserted, {} already present, {:.1} s",
        done - inserted,
        started.elapsed().as_secs_f64()
    );

    // The bench account: a token, and the terms accepted in full.
    let terms = Terms::load(&args.terms).unwrap();
    let token = mint_token(&mut rand::rngs::OsRng);
    store::insert_token(
        &mut conn,
        BENCH_USER,
        &token_hash(&token),
        now,
        now + 365 * 24 * 3600 * 1000,
    )
    .unwrap();
    let urls: Vec<String> = terms
        .policies()
        .values()
        .flat_map(|p| p.translations.values().map(|t| t.url.clone()))
        .collect();
    store::add_accepted_terms(&mut conn, BENCH_USER, &urls, now).unwrap();
    store::set_consent(&mut conn, BENCH_USER, terms.fingerprint(), now).unwrap();
    std::fs::write(args.out.join("token"), &token).unwrap();

    // Rules: the organisations' domains, then filler domains up to R.
    let mut file = String::new();
    for (domain, (label, homeserver)) in &organisations {
        writeln!(
            file,
            "[[domain]]\nname = \"{domain}\"\nlabel = \"{label}\"\nhomeserver = \"{homeserver}\"\n"
        )
        .unwrap();
    }
    std::fs::write(args.out.join("allowlists/organisations.toml"), file).unwrap();
    let filler = args.rules.saturating_sub(organisations.len());
    for (n, chunk) in (0..filler).collect::<Vec<_>>().chunks(1000).enumerate() {
        let mut file = format!(
            "[organisation]\nlabel = \"Filler {n}\"\nhomeserver = \"agent.filler{n}.example\"\n\n"
        );
        for i in chunk {
            writeln!(
                file,
                "[[domain]]\nname = \"service{i}.filler{n}.example\"\nsubdomains = {}\n",
                i % 2 == 0
            )
            .unwrap();
        }
        std::fs::write(
            args.out.join(format!("allowlists/filler-{n:03}.toml")),
            file,
        )
        .unwrap();
    }
    eprintln!(
        "rules: {} organisation domains + {filler} filler domains",
        organisations.len()
    );

    // Request bodies: half bound addresses, half unknown ones, shuffled.
    let domains: Vec<&String> = organisations.keys().collect();
    let absent = |rng: &mut StdRng| {
        format!(
            "nobody.{}@{}",
            rng.r#gen::<u64>(),
            domains[rng.gen_range(0..domains.len())]
        )
    };
    let mut bodies = String::new();
    for _ in 0..LOOKUP_BODIES {
        let mut hashes: Vec<String> = (0..LOOKUP_SIZE)
            .map(|i| {
                let address = if i < LOOKUP_BOUND && !sample.is_empty() {
                    sample[rng.gen_range(0..sample.len())].clone()
                } else {
                    absent(&mut rng)
                };
                lookup_hash(&address, "email", &pepper.value)
            })
            .collect();
        hashes.shuffle(&mut rng);
        let body = serde_json::json!({
            "algorithm": "sha256",
            "pepper": pepper.value,
            "addresses": hashes,
        });
        bodies.push_str(&body.to_string());
        bodies.push('\n');
    }
    std::fs::write(args.out.join("lookup-bodies.json"), bodies).unwrap();
    let mut info = String::new();
    for i in 0..INFO_ADDRESSES {
        let address = if i % 2 == 0 && !sample.is_empty() {
            sample[rng.gen_range(0..sample.len())].clone()
        } else {
            absent(&mut rng)
        };
        info.push_str(&address);
        info.push('\n');
    }
    std::fs::write(args.out.join("info-addresses.txt"), info).unwrap();
    eprintln!("dataset written to {}", args.out.display());
}
