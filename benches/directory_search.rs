//! Directory search latency through the domain function (`directory::search`, the code the
//! HTTP handlers call: database query, exact ranking, display names), per query class.
//!
//! The database must already hold the entries (`annuaire directory import-synthetic N`):
//!
//! ```text
//! DIRECTORY_BENCH_DATABASE_URL=sqlite:///tmp/x/annuaire.db cargo bench --bench directory_search
//! ```
//!
//! Optional: `DIRECTORY_BENCH_ROUNDS` (passes over each query list, default 30),
//! `DIRECTORY_BENCH_CANDIDATES` (`directory.search_candidates`, default 200). Prints one
//! Markdown table per class and a summary line per class (p50, p99, max over every call).
//! `bench/directory-search.sh` runs it on SQLite and PostgreSQL; CI does not.

// A benchmark stops at its first failure: unwrapping is its error handling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use annuaire::Annuaire;
use annuaire::config::Config;
use annuaire::directory::Viewer;

/// Queries as people type them, from a first letter to full names, over the synthetic
/// population (French and German names, 20 organisations); the HTTP benchmark's wrk script
/// reads the same files.
const ONE_TERM: &str = include_str!("../bench/queries/1-term.txt");
const TWO_TERMS: &str = include_str!("../bench/queries/2-terms.txt");
const THREE_TERMS: &str = include_str!("../bench/queries/3-terms.txt");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Ok(url) = std::env::var("DIRECTORY_BENCH_DATABASE_URL") else {
        eprintln!("directory_search: set DIRECTORY_BENCH_DATABASE_URL (skipped)");
        return;
    };
    let rounds: usize = std::env::var("DIRECTORY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut config = Config::default();
        config.database.url = Some(url);
        if let Some(n) = std::env::var("DIRECTORY_BENCH_CANDIDATES")
            .ok()
            .and_then(|n| n.parse().ok())
        {
            config.directory.search_candidates = n;
        }
        let app = Annuaire::open(config).await.unwrap();
        let entries = app.db.run(annuaire::store::directory::count).await.unwrap();
        println!(
            "entries: {entries}, backend: {}, rounds: {rounds}, search_candidates: {}\n",
            app.db.backend().name(),
            app.config.directory.search_candidates
        );
        for (class, list) in [
            ("1 term", ONE_TERM),
            ("2 terms", TWO_TERMS),
            ("3 terms", THREE_TERMS),
        ] {
            let queries: Vec<&str> = list.lines().filter(|l| !l.trim().is_empty()).collect();
            // Warm-up: page cache, prepared statements.
            for q in &queries {
                app.directory
                    .search(q, None, None, Viewer::Operator)
                    .await
                    .unwrap();
            }
            let mut all = Vec::new();
            println!("| {class} | results | limited | p50 ms | p99 ms |");
            println!("|---|---|---|---|---|");
            for q in &queries {
                let mut times = Vec::with_capacity(rounds);
                let mut last = None;
                for _ in 0..rounds {
                    let started = Instant::now();
                    let r = app
                        .directory
                        .search(q, None, None, Viewer::Operator)
                        .await
                        .unwrap();
                    times.push(started.elapsed());
                    last = Some(r);
                }
                times.sort();
                let r = last.unwrap();
                println!(
                    "| `{q}` | {} | {} | {} | {} |",
                    r.results.len(),
                    r.limited,
                    ms(percentile(&times, 50.0)),
                    ms(percentile(&times, 99.0))
                );
                all.extend(times);
            }
            all.sort();
            println!(
                "\nSUMMARY {class}: calls {} p50 {} ms p99 {} ms max {} ms\n",
                all.len(),
                ms(percentile(&all, 50.0)),
                ms(percentile(&all, 99.0)),
                ms(*all.last().unwrap())
            );
        }
    });
}
