//! `annuaire keys generate|rotate-pepper|rotate-signing|list`.

use super::*;

/// `annuaire keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new ed25519 signing key in Sydent's format (`ed25519 0 <base64 seed>`), for
    /// `server.signing_key_file`. Without that key, annuaire creates its key once and keeps it
    /// in the database; this command does not change the key in use.
    Generate {
        /// The key's version: its id is `ed25519:VERSION`.
        #[arg(long, default_value_t = 0, value_name = "N")]
        version: u64,
        /// Write the key to FILE (mode 0600) instead of printing it.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Overwrite FILE if it exists (the old key is lost: signatures made with it stop
        /// verifying).
        #[arg(long, requires = "output")]
        force: bool,
    },
    /// Replace the lookup pepper: every bound address is rehashed in batches while lookups go
    /// on with the current pepper, then the new one is served. Clients holding the old pepper
    /// get M_INVALID_PEPPER with the new one. An interrupted rotation resumes when run again.
    RotatePepper {
        /// Associations hashed per transaction.
        #[arg(long, default_value_t = 1000, value_name = "N")]
        batch_size: i64,
    },
    /// Make a new signing key `ed25519:N` (N = one more than any version used so far) sign from
    /// now on. The previous key stays published at /_matrix/identity/v2/pubkey/ed25519:K and
    /// valid for /pubkey/isvalid, so what it signed stays verifiable; its private half is
    /// forgotten. Running instances switch within 10 s (at once on SIGHUP). Audited. Not with
    /// server.signing_key_file (replace that file instead).
    RotateSigning,
    /// List the signing keys (current and retired), the lookup pepper and the admin token
    /// secrets' ids (never a secret).
    List {
        /// One JSON object on standard output.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn keys_command(config: &Config, cmd: KeysCommand) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Generate {
            version,
            output,
            force,
        } => {
            let key = crate::matrix::signing::SigningKey::generate(&mut rand::rngs::OsRng)
                .with_key_id(&format!("ed25519:{version}"))
                .map_err(CliError::config)?;
            let line = format!("{}\n", key.to_sydent_string());
            match output {
                None => print!("{line}"),
                Some(path) => {
                    write_secret_file(&path, &line, force)?;
                    println!(
                        "wrote {} (key id {}, public key {})",
                        path.display(),
                        key.key_id(),
                        key.public_key_base64()
                    );
                }
            }
            Ok(())
        }
        KeysCommand::RotatePepper { batch_size } => {
            if batch_size < 1 {
                return Err(CliError::config("--batch-size: must be at least 1"));
            }
            let db = open_db(config)?;
            let mut conn = db.get().map_err(CliError::runtime)?;
            let mut last_report = std::time::Instant::now();
            let rotation = crate::identity::lookup::rotate_pepper(
                &mut conn,
                &mut rand::rngs::OsRng,
                batch_size,
                now_ms(),
                &mut |step, n| {
                    if last_report.elapsed() >= std::time::Duration::from_secs(5) {
                        println!("{step}: {n}");
                        last_report = std::time::Instant::now();
                    }
                },
            )
            .map_err(CliError::runtime)?;
            println!(
                "lookup pepper rotated: pepper #{} replaces #{} ({} associations rehashed, {} \
                 bound during the rotation, {} old hashes deleted)",
                rotation.pepper.id,
                rotation.previous_id,
                rotation.rehashed,
                rotation.swept,
                rotation.deleted
            );
            Ok(())
        }
        KeysCommand::RotateSigning => {
            let db = open_db(config)?;
            let mut conn = db.get().map_err(CliError::runtime)?;
            let rotation = crate::identity::keys::rotate_signing_key(
                &mut conn,
                config.server.signing_key_file.as_deref(),
                &crate::audit::Actor::cli(&unix_user()),
                &mut rand::rngs::OsRng,
                now_ms(),
            )
            .map_err(|e| match e {
                crate::identity::keys::RotationError::KeyInFile => CliError::config(e),
                other => CliError::runtime(other),
            })?;
            println!(
                "signing key rotated: {} ({}) signs from now on; {} ({}) stays published",
                rotation.key_id,
                rotation.public_key,
                rotation.previous_key_id,
                rotation.previous_public_key
            );
            println!("running instances switch within 10 s (systemctl reload annuaire: at once)");
            Ok(())
        }
        KeysCommand::List { json } => list_keys(config, json),
    }
}

/// `keys list`.
fn list_keys(config: &Config, json: bool) -> Result<(), CliError> {
    let db = open_db(config)?;
    let mut conn = db.get().map_err(CliError::runtime)?;
    let now = now_ms();
    let ring = crate::identity::keys::load_key_ring(
        &mut conn,
        config.server.signing_key_file.as_deref(),
        &mut rand::rngs::OsRng,
        now,
    )
    .map_err(CliError::runtime)?;
    let pepper = crate::identity::lookup::current_pepper(&mut conn, &mut rand::rngs::OsRng, now)
        .map_err(CliError::runtime)?;
    let secrets =
        crate::admin::tokens::list_secrets(&mut conn, config).map_err(CliError::runtime)?;
    let source = match &config.server.signing_key_file {
        Some(path) => format!("server.signing_key_file {}", path.display()),
        None => "database".to_string(),
    };
    if json {
        let value = serde_json::json!({
            "signing_keys": std::iter::once(serde_json::json!({
                "key_id": ring.current.key_id(),
                "public_key": ring.current.public_key_base64(),
                "status": "current",
                "source": source,
            }))
            .chain(ring.retired.iter().map(|k| serde_json::json!({
                "key_id": k.key_id,
                "public_key": k.public_key,
                "status": "retired",
                "retired_at": k.retired_at,
            })))
            .collect::<Vec<_>>(),
            "lookup_pepper": {"id": pepper.id},
            "admin_token_secrets": secrets,
        });
        println!("{value}");
        return Ok(());
    }
    println!("signing keys (published at /_matrix/identity/v2/pubkey/{{key_id}}):");
    println!(
        "  {:<12} {:<44} current, signs ({source})",
        ring.current.key_id(),
        ring.current.public_key_base64()
    );
    for k in &ring.retired {
        println!(
            "  {:<12} {:<44} retired {}, still published and valid",
            k.key_id,
            k.public_key,
            rfc3339(Some(k.retired_at))
        );
    }
    println!(
        "lookup pepper: #{} (annuaire keys rotate-pepper)",
        pepper.id
    );
    println!("admin token secrets (kid):");
    for s in &secrets {
        match (s.retired_at, s.accepted_until) {
            (None, _) => println!("  {:<12} current, signs", s.kid),
            (Some(retired), until) => println!(
                "  {:<12} retired {}, its tokens accepted until {}",
                s.kid,
                rfc3339(Some(retired)),
                rfc3339(until)
            ),
        }
    }
    Ok(())
}

/// An instant (ms) as RFC 3339, or `-`.
pub(super) fn rfc3339(ms: Option<i64>) -> String {
    ms.and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        })
        .unwrap_or_else(|| "-".to_string())
}

/// Writes a secret to a new file readable by its owner only (`force`: replace an existing one).
fn write_secret_file(path: &std::path::Path, content: &str, force: bool) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::config(format!(
                "{} exists; use --force to replace it (its key is then lost)",
                path.display()
            ))
        } else {
            CliError::runtime(format!("cannot write {}: {e}", path.display()))
        }
    })?;
    file.write_all(content.as_bytes())
        .map_err(|e| CliError::runtime(format!("cannot write {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        // A replaced file keeps its old mode otherwise.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| CliError::runtime(format!("cannot protect {}: {e}", path.display())))?;
    }
    Ok(())
}
