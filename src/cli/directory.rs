//! `annuaire directory …` and `annuaire ldap …`.

use super::*;

/// `annuaire directory …`.
#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Search the directory as its users see it: hidden, deactivated and (unless
    /// directory.show_externals) external entries are not shown.
    Search {
        /// Every word must begin a word of the name, the organisation or the user id
        /// (accents and case do not matter).
        term: String,
        /// Only entries of this organisation.
        #[arg(long)]
        organisation: Option<String>,
        /// At most this many results (1 to 50).
        #[arg(long, default_value_t = crate::directory::service::DEFAULT_LIMIT)]
        limit: u32,
        /// Print the results as JSON (the client API's shape).
        #[arg(long)]
        json: bool,
    },
    /// Add N fake but realistic people (French and German names, 20 organisations over 5
    /// homeservers) for demos and benchmarks; the same seed gives the same people.
    ImportSynthetic {
        /// How many people.
        n: usize,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// `annuaire ldap …`.
#[derive(Debug, Subcommand)]
pub enum LdapCommand {
    /// Read the agency directory (ldap.*) and update verified names of directory entries;
    /// prints progress on stderr and a summary.
    Sync {
        /// Read and compare, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the agency directory says about one address (the name it would verify).
    Lookup {
        /// The email address.
        address: String,
    },
}

pub(super) async fn directory_command(
    config: Config,
    command: DirectoryCommand,
) -> Result<(), CliError> {
    let app = Annuaire::open(config).await.map_err(CliError::runtime)?;
    match command {
        DirectoryCommand::Search {
            term,
            organisation,
            limit,
            json,
        } => {
            let results = app
                .directory
                .search(
                    &term,
                    organisation.as_deref(),
                    Some(limit),
                    crate::directory::Viewer::Operator,
                )
                .await
                .map_err(|e| match e {
                    crate::directory::DirectoryError::Query(_) => CliError::config(e),
                    other => CliError::runtime(other),
                })?;
            if json {
                let text = serde_json::to_string_pretty(&results).map_err(CliError::runtime)?;
                println!("{text}");
                return Ok(());
            }
            if results.results.is_empty() {
                println!("no match");
            }
            for r in &results.results {
                println!("{}\t{}", r.display_name, r.user_id);
            }
            if results.limited {
                println!("(more entries match: refine the search or raise --limit)");
            }
            Ok(())
        }
        DirectoryCommand::ImportSynthetic { n, seed } => {
            let started = std::time::Instant::now();
            let mut bar = Progress::new("import");
            let summary = app
                .directory
                .import_synthetic(n, seed, move |done, total| {
                    bar.show(&format!("{done}/{total} people"), done == total);
                })
                .await
                .map_err(CliError::runtime)?;
            println!(
                "imported {} synthetic entries ({} already present) in {:.1}s",
                summary.inserted,
                summary.existing,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

pub(super) async fn ldap_command(config: Config, command: LdapCommand) -> Result<(), CliError> {
    let settings = crate::ldap::LdapSettings::from_config(&config.ldap)
        .map_err(CliError::config)?
        .ok_or_else(|| CliError::config(crate::ldap::LdapError::NotConfigured))?;
    match command {
        LdapCommand::Sync { dry_run, json } => {
            let app = Annuaire::open(config).await.map_err(CliError::runtime)?;
            let mut bar = Progress::new("ldap sync");
            let summary = app
                .directory
                .sync_ldap(&settings, dry_run, |s| {
                    bar.show(
                        &format!(
                            "{} read · {} matched · {} updated · {} skipped",
                            s.read,
                            s.matched,
                            s.updated,
                            s.skipped()
                        ),
                        false,
                    );
                })
                .await
                .map_err(CliError::runtime)?;
            bar.done();
            if json {
                let text = serde_json::to_string_pretty(&summary).map_err(CliError::runtime)?;
                println!("{text}");
            } else {
                print_sync_summary(&summary);
            }
            Ok(())
        }
        LdapCommand::Lookup { address } => {
            let mut ldap = crate::ldap::connect(&settings)
                .await
                .map_err(CliError::runtime)?;
            let people = crate::ldap::find_by_mail(&mut ldap, &settings, address.trim())
                .await
                .map_err(CliError::runtime)?;
            if people.is_empty() {
                println!("no entry has this address");
            }
            for p in &people {
                let name = crate::directory::names::name_from_ldap(
                    p.display_name.as_deref(),
                    p.given_name.as_deref(),
                    p.surname.as_deref(),
                );
                println!("{}", p.dn);
                println!("  verified name: {}", name.as_deref().unwrap_or("(none)"));
                println!(
                    "  organisation:  {}",
                    p.organisation.as_deref().unwrap_or("(none)")
                );
            }
            Ok(())
        }
    }
}

fn print_sync_summary(s: &crate::directory::ldap_sync::SyncSummary) {
    if s.dry_run {
        println!("LDAP sync, dry run: nothing was written");
    } else {
        println!("LDAP sync done");
    }
    println!("  read      {:>8}  LDAP entries", s.read);
    println!("  records   {:>8}  names by address", s.records);
    println!("  matched   {:>8}  directory entries", s.matched);
    println!(
        "  updated   {:>8}  names or organisations changed",
        s.updated
    );
    println!("  removed   {:>8}  records of people who left", s.removed);
    println!(
        "  reverted  {:>8}  entries back to their address's name",
        s.reverted
    );
    println!("  skipped   {:>8}", s.skipped());
    println!("    no mail        {:>8}", s.skipped_no_mail);
    println!("    no name        {:>8}", s.skipped_no_name);
    println!("    invalid mail   {:>8}", s.skipped_invalid_mail);
    println!("    duplicate mail {:>8}", s.skipped_duplicate_mail);
}

/// Progress on stderr: a redrawn line with a moving bar on a terminal; otherwise plain lines,
/// at most one every few seconds (logs and CI output stay short).
pub(super) struct Progress {
    label: &'static str,
    tty: bool,
    frame: usize,
    last_line: Option<std::time::Instant>,
    drawn: bool,
}

impl Progress {
    pub(super) fn new(label: &'static str) -> Progress {
        use std::io::IsTerminal;
        Progress {
            label,
            tty: std::io::stderr().is_terminal(),
            frame: 0,
            last_line: None,
            drawn: false,
        }
    }

    fn show(&mut self, text: &str, last: bool) {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        if self.tty {
            // The total is unknown while reading (paged LDAP search): a bar that moves.
            const WIDTH: usize = 12;
            let pos = self.frame % (2 * WIDTH - 2);
            let pos = if pos < WIDTH {
                pos
            } else {
                2 * WIDTH - 2 - pos
            };
            let bar: String = (0..WIDTH)
                .map(|i| if i == pos { '#' } else { '-' })
                .collect();
            self.frame += 1;
            let _ = write!(err, "\r\x1b[2K{} [{bar}] {text}", self.label);
            if last {
                let _ = writeln!(err);
            }
            let _ = err.flush();
            self.drawn = !last;
        } else {
            let due = self
                .last_line
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(2));
            if due || last {
                let _ = writeln!(err, "{}: {text}", self.label);
                self.last_line = Some(std::time::Instant::now());
            }
        }
    }

    /// Progress of a phase whose total is known: a filling bar on a terminal.
    pub(super) fn ratio(&mut self, phase: &str, done: u64, total: u64) {
        use std::io::Write;
        let percent = (done.saturating_mul(100))
            .checked_div(total)
            .unwrap_or(100)
            .min(100);
        let text = format!("{phase}: {done}/{total} ({percent}%)");
        let finished = done >= total;
        if self.tty {
            const WIDTH: u64 = 24;
            let filled = (percent * WIDTH / 100) as usize;
            let bar = format!(
                "{}{}",
                "#".repeat(filled),
                "-".repeat(WIDTH as usize - filled)
            );
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{} [{bar}] {text}", self.label);
            let _ = err.flush();
            self.drawn = true;
        } else {
            let due = self
                .last_line
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(2));
            if due || finished {
                eprintln!("{}: {text}", self.label);
                self.last_line = Some(std::time::Instant::now());
            }
        }
    }

    pub(super) fn done(&mut self) {
        if self.tty && self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}
