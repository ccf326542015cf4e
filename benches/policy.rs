//! Policy engine throughput: decisions per second with 10, 1,000 and 100,000 rules (domains,
//! subdomain rules, denies, addresses and a few patterns), one probe address per decision level,
//! and index build time. Run: `cargo bench --bench policy`. Target: < 2 µs per decision at
//! 100,000 rules, flat from 1,000 to 100,000.

// A benchmark stops at its first failure: panicking is its error handling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use annuaire::policy::{
    Address, DefaultPolicy, Outcome, PolicyIndex, Rule, RuleKind, RuleSource, RuleTarget,
    normalize_email, parse_allowlist_file, render_allowlist_file,
};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 3] = [10, 1_000, 100_000];
const PATTERNS: usize = 4;

fn rule(kind: RuleKind, target: RuleTarget, line: usize) -> Rule {
    let mut r = Rule::new(
        kind,
        target,
        RuleSource::File {
            path: format!("bench-{}.toml", line % 17),
            line: u32::try_from(line).unwrap_or(u32::MAX),
        },
    );
    if kind.is_allow() {
        r.homeserver = Some(format!("agent.shard{}.tchap.example", line % 17));
        r.shadow_homeserver = Some(format!("public.shard{}.tchap.example", line % 17));
        r.label = Some(format!("Agency {}", line % 17));
    }
    r
}

/// How `n` rules split: 4 patterns, then 60 % domains (a third with subdomains), 15 % denies
/// (at least one), the rest addresses.
fn mix(n: usize) -> (usize, usize, usize) {
    let rest = n - PATTERNS;
    let domains = rest * 60 / 100;
    let denies = (rest * 15 / 100).max(1);
    (domains, denies, rest - domains - denies)
}

/// `n` rules, as `mix` says.
fn rules(n: usize) -> Vec<Rule> {
    let (domains, denies, addresses) = mix(n);
    let mut out = Vec::with_capacity(n);
    for k in 0..PATTERNS {
        out.push(rule(
            RuleKind::Pattern,
            RuleTarget::Regex(format!(r"[a-z]+\.[a-z]+@region-{k}-[0-9]+\.example")),
            out.len(),
        ));
    }
    for i in 0..domains {
        let target = RuleTarget::Domain {
            name: format!("agency{i}.gouv.example"),
            subdomains: i % 3 == 0,
        };
        out.push(rule(RuleKind::Domain, target, out.len()));
    }
    for i in 0..denies {
        let target = RuleTarget::Domain {
            name: format!("blocked{i}.example"),
            subdomains: i % 2 == 0,
        };
        out.push(rule(RuleKind::Deny, target, out.len()));
    }
    for i in 0..addresses {
        let target = RuleTarget::Email(format!("agent{i}@partner{}.example", i % 100));
        out.push(rule(RuleKind::Address, target, out.len()));
    }
    out
}

/// One address per decision level, each hitting the rule it names (checked before measuring).
fn probes(n: usize) -> Vec<(&'static str, String, Outcome)> {
    let (domains, _, addresses) = mix(n);
    let last_sub = (domains - 1) / 3 * 3;
    vec![
        (
            "address",
            format!(
                "Agent{}@Partner{}.example",
                addresses - 1,
                (addresses - 1) % 100
            ),
            Outcome::Allowed,
        ),
        (
            "domain",
            format!("jean.dupont@agency{}.gouv.example", domains - 1),
            Outcome::Allowed,
        ),
        (
            "subdomain",
            format!("jean.dupont@bureau.direction.agency{last_sub}.gouv.example"),
            Outcome::Allowed,
        ),
        ("deny", "x@blocked0.example".to_owned(), Outcome::Denied),
        (
            "pattern",
            format!("jean.dupont@region-{}-17.example", PATTERNS - 1),
            Outcome::Allowed,
        ),
        (
            "default",
            "someone@unknown.elsewhere.example".to_owned(),
            Outcome::Denied,
        ),
    ]
}

fn checked_probes(index: &PolicyIndex, n: usize) -> Vec<(&'static str, Address)> {
    probes(n)
        .into_iter()
        .map(|(level, text, outcome)| {
            let address = normalize_email(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let d = index.decide(&address, 0);
            assert_eq!(d.outcome, outcome, "{level} probe {text}: {}", d.reason);
            assert_eq!(
                d.rule.is_none(),
                level == "default",
                "{level}: {}",
                d.reason
            );
            (level, address)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut decide = c.benchmark_group("decide");
    decide
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in SIZES {
        let index =
            PolicyIndex::build(rules(n), DefaultPolicy::Deny).unwrap_or_else(|e| panic!("{e:?}"));
        let probes = checked_probes(&index, n);
        decide.throughput(Throughput::Elements(1));
        for (level, address) in &probes {
            decide.bench_with_input(BenchmarkId::new(*level, n), address, |b, a| {
                b.iter(|| index.decide(black_box(a), black_box(0)))
            });
        }
        decide.throughput(Throughput::Elements(probes.len() as u64));
        decide.bench_function(BenchmarkId::new("mix", n), |b| {
            b.iter(|| {
                for (_, a) in &probes {
                    black_box(index.decide(black_box(a), 0));
                }
            })
        });
    }
    decide.finish();

    let mut build = c.benchmark_group("build");
    build
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));
    for n in SIZES {
        let rules = rules(n);
        build.throughput(Throughput::Elements(n as u64));
        build.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || rules.clone(),
                |r| PolicyIndex::build(r, DefaultPolicy::Deny),
                BatchSize::PerIteration,
            )
        });
    }
    build.finish();
}

/// A plain summary table, so the figures can be copied without reading criterion's output.
fn summary() {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut table = String::new();
    let mut line = |text: String| {
        println!("{text}");
        table.push_str(&text);
        table.push('\n');
    };
    println!("\npolicy summary (this machine, {profile} build)");
    line(format!(
        "{:>8} {:>12} {:>12} {:>14} {:>16} {:>16}",
        "rules", "parse (ms)", "build (ms)", "decide (ns)", "decisions/s", "+normalise (ns)"
    ));
    for n in SIZES {
        let rules = rules(n);
        let toml = render_allowlist_file(&rules);
        let started = Instant::now();
        let parsed = parse_allowlist_file("all.toml", &toml).unwrap_or_else(|e| panic!("{e:?}"));
        let parse_ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(parsed.len(), n);
        let started = Instant::now();
        let index =
            PolicyIndex::build(rules, DefaultPolicy::Deny).unwrap_or_else(|e| panic!("{e:?}"));
        let build_ms = started.elapsed().as_secs_f64() * 1e3;
        let probes = checked_probes(&index, n);
        let texts: Vec<String> = probes.iter().map(|(_, a)| a.as_str().to_owned()).collect();
        let rounds = 200_000;
        let started = Instant::now();
        for _ in 0..rounds {
            for (_, a) in &probes {
                black_box(index.decide(black_box(a), 0));
            }
        }
        let per_decision = started.elapsed().as_secs_f64() * 1e9 / (rounds * probes.len()) as f64;
        let started = Instant::now();
        for _ in 0..rounds / 4 {
            for t in &texts {
                if let Ok(a) = normalize_email(black_box(t)) {
                    black_box(index.decide(&a, 0));
                }
            }
        }
        let with_parse = started.elapsed().as_secs_f64() * 1e9 / (rounds / 4 * texts.len()) as f64;
        line(format!(
            "{n:>8} {parse_ms:>12.1} {build_ms:>12.1} {per_decision:>14.0} {:>16.0} {with_parse:>16.0}",
            1e9 / per_decision
        ));
    }
    // A real benchmark run (not `cargo test --benches`) records its figures.
    if profile == "release" {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let report = format!(
            "# Policy engine benchmark\n\n`cargo bench --bench policy`, {}, {cores} CPU cores, release build.\n\n```\n{table}```\n\n\
             decide = one decision (mean over the probe addresses: exact address, domain, subdomain,\n\
             deny, pattern, default); +normalise = normalising the address text, then deciding.\n",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        );
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/policy.md");
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::write(&path, report) {
            Ok(()) => println!("figures written to {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    summary();
}
