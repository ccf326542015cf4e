//! `annuaire import sydent`.

use super::*;
use crate::identity::import_sydent::{
    self, ImportOptions, ImportSummary, KeyOutcome, PepperOutcome, SydentConf,
};

/// `annuaire import …`
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Move an existing Sydent identity server (matrix-sydent 2.x, or Tchap's `dinsic` fork) into
    /// annuaire.
    ///
    /// Reads Sydent's SQLite database (read-only) and brings over: the signing key of
    /// sydent.conf (so that signatures Sydent made, on associations and on invitations already
    /// in rooms, verify with annuaire's published key), the lookup pepper (so that clients'
    /// cached hash_details stay valid), the associations (Sydent's own, and those replicated
    /// from peers whose signature verifies with the peer's key in the database) with their
    /// users' directory entries (organisations come from the allowlist rules in the database:
    /// import the allowlists first), the accounts with their access tokens (hashed on the way
    /// in: logged-in clients stay logged in, for identity.token_lifetime from the import) and
    /// accepted terms, and the pending invitations with their ephemeral keys (invitations older
    /// than invites.validity are left out: raise it first to keep them).
    ///
    /// Stop Sydent first (or import a copy of its database). Running the import again changes
    /// nothing, or only what changed in Sydent since. Running annuaire instances read the
    /// signing key at start: restart them after an import that changed it. Progress goes to
    /// stderr, the summary to stdout.
    Sydent {
        /// Sydent's SQLite database (`db.file` of sydent.conf).
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        /// Sydent's configuration file, for its signing key (`[crypto] ed25519.signingkey`)
        /// and the name it signed as (`[general] server.name`). Without it the key is not
        /// imported. (`--config` is annuaire's own configuration file.)
        #[arg(long = "sydent-config", value_name = "FILE")]
        sydent_config: Option<PathBuf>,
        /// Read and compare, write nothing; the summary says what would change.
        #[arg(long)]
        dry_run: bool,
        /// Replace the different signing key annuaire already has. Under another key id than
        /// Sydent's (after `keys rotate-signing`) it stays published as a retired key, as a
        /// rotation leaves it; under the same id, signatures annuaire made with it stop
        /// verifying.
        #[arg(long)]
        replace_signing_key: bool,
        /// Rows written per transaction. Larger batches are faster (on SQLite the directory's
        /// full-text index is merged once per transaction) but hold the database's write lock
        /// longer while annuaire serves.
        #[arg(long, default_value_t = 10_000, value_name = "N")]
        batch_size: usize,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn import_command(config: &Config, command: ImportCommand) -> Result<(), CliError> {
    match command {
        ImportCommand::Sydent {
            db,
            sydent_config,
            dry_run,
            replace_signing_key,
            batch_size,
            json,
        } => {
            if batch_size == 0 {
                return Err(CliError::config("--batch-size: must be at least 1"));
            }
            let started = std::time::Instant::now();
            // The Sydent side first: a file that is not Sydent's is refused before annuaire's
            // database is touched.
            let source = crate::store::sydent::SydentDb::open(&db).map_err(CliError::config)?;
            let conf = match &sydent_config {
                None => SydentConf::default(),
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        CliError::config(format!("cannot read {}: {e}", path.display()))
                    })?;
                    import_sydent::parse_sydent_conf(&text)
                        .map_err(|e| CliError::config(format!("{}: {e}", path.display())))?
                }
            };
            let key_from_file = match &config.server.signing_key_file {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        CliError::config(format!(
                            "server.signing_key_file: cannot read {}: {e}",
                            path.display()
                        ))
                    })?;
                    Some(
                        crate::matrix::signing::SigningKey::parse_sydent(&text).map_err(|e| {
                            CliError::config(format!(
                                "server.signing_key_file ({}): {e}",
                                path.display()
                            ))
                        })?,
                    )
                }
            };
            let options = ImportOptions {
                dry_run,
                replace_signing_key,
                server_name: config.server.name.clone(),
                key_from_file,
                token_lifetime_ms: config.identity.token_lifetime.as_millis_i64(),
                invite_validity_ms: config.invites.validity.as_millis_i64(),
                batch_size,
                policy_rules: 0,
            };
            let annuaire_db = open_db(config)?;
            let mut conn = annuaire_db.get().map_err(CliError::runtime)?;
            // Directory entries take the organisation of the live allowlist rules, as binds do.
            let rules: Vec<crate::policy::Rule> = crate::store::policy::load_rules(&mut conn)
                .map_err(CliError::runtime)?
                .into_iter()
                .map(|s| s.rule)
                .collect();
            let options = ImportOptions {
                policy_rules: rules.len(),
                ..options
            };
            let policy =
                crate::policy::PolicyIndex::build(rules, config.policy.default_policy())
                    .map_err(|e| CliError::config(crate::allowlist::AllowlistError::Rules(e)))?;
            let mut bar = super::directory::Progress::new("import sydent");
            let mut sydent = import_sydent::SydentDeployment { db: source, conf };
            let summary = import_sydent::import(
                &mut conn,
                &mut sydent,
                &policy,
                &options,
                &mut rand::rngs::OsRng,
                now_ms(),
                &mut |p| bar.ratio(p.phase, p.done, p.total),
            )
            .map_err(|e| match e {
                import_sydent::ImportError::Store(_) => CliError::runtime(e),
                other => CliError::config(other),
            })?;
            bar.done();
            if json {
                let text = serde_json::to_string_pretty(&summary).map_err(CliError::runtime)?;
                println!("{text}");
            } else {
                print_summary(&db, &summary, started.elapsed());
            }
            Ok(())
        }
    }
}

fn print_summary(db: &std::path::Path, s: &ImportSummary, took: std::time::Duration) {
    if s.dry_run {
        println!("Sydent import, dry run: nothing was written");
    } else {
        println!("Sydent import done");
    }
    println!(
        "  source          {} ({} schema, user_version {}){}",
        db.display(),
        s.schema,
        s.user_version,
        s.sydent_server_name
            .as_ref()
            .map(|n| format!(", signed as {n}"))
            .unwrap_or_default()
    );
    let public = s.public_key.as_deref().unwrap_or("-");
    let key = match s.signing_key {
        KeyOutcome::NotGiven => "not imported (no --sydent-config)".to_string(),
        KeyOutcome::Imported => format!("imported (public key {public})"),
        KeyOutcome::Unchanged => format!("unchanged (public key {public})"),
        KeyOutcome::Replaced => format!("replaced annuaire's by Sydent's (public key {public})"),
        KeyOutcome::InFile => format!("already in server.signing_key_file (public key {public})"),
    };
    println!("  signing key     {key}");
    let pepper = match &s.pepper {
        PepperOutcome::Absent => "none in Sydent's database: annuaire keeps its own".to_string(),
        PepperOutcome::Created => "imported".to_string(),
        PepperOutcome::Unchanged => "unchanged".to_string(),
        PepperOutcome::Rotated { rehashed } => {
            format!("imported, replacing annuaire's ({rehashed} associations rehashed)")
        }
    };
    println!("  lookup pepper   {pepper}");
    let a = &s.associations;
    println!(
        "  associations    {} addresses: {} new, {} updated, {} unchanged, {} kept (annuaire's \
         is newer), {} removed (unbound in Sydent)",
        a.addresses, a.new, a.updated, a.unchanged, a.kept_newer, a.removed
    );
    println!(
        "                  read {} local and {} global rows, {} signatures verified; skipped: \
         {} not verified, {} signed by another key of Sydent's (local row used), {} invalid \
         addresses, {} other media",
        a.read_local,
        a.read_global,
        a.verified,
        a.unverified,
        a.own_unverified,
        a.invalid_address,
        a.other_medium
    );
    let d = &s.directory;
    println!(
        "  directory       {} users given an entry, {} had one; none for {} denied by the \
         allowlists, {} invalid user IDs",
        d.new, d.unchanged, d.denied, d.invalid_user_id
    );
    for (label, c) in [
        ("accounts", &s.accounts),
        ("tokens", &s.tokens),
        ("accepted terms", &s.accepted_terms),
        ("ephemeral keys", &s.ephemeral_keys),
    ] {
        println!(
            "  {label:<15} read {}: {} new, {} unchanged, {} skipped",
            c.read, c.new, c.unchanged, c.skipped
        );
    }
    let i = &s.invites;
    println!(
        "  invitations     read {}: {} new ({} with their ephemeral key), {} unchanged; \
         skipped: {} already delivered, {} expired (invites.validity), {} invalid",
        i.read, i.new, i.with_ephemeral_key, i.unchanged, i.delivered, i.expired, i.invalid
    );
    for n in &s.not_imported {
        println!("  not imported    {n}");
    }
    for w in &s.warnings {
        println!("  warning         {w}");
    }
    if !s.dry_run && matches!(s.signing_key, KeyOutcome::Imported | KeyOutcome::Replaced) {
        println!(
            "  note            restart running annuaire instances: they read the signing key at start"
        );
    }
    println!("  took            {:.1} s", took.as_secs_f64());
}
