//! `annuaire keys generate|rotate-pepper`.

use super::*;

/// `annuaire keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new ed25519 signing key in Sydent's format (`ed25519 0 <base64 seed>`), for
    /// `server.signing_key_file`. Without that key, annuaire creates its key once and keeps it
    /// in the database; this command does not change the key in use.
    Generate {
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
}

pub(super) fn keys_command(config: &Config, cmd: KeysCommand) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Generate { output, force } => {
            let key = crate::matrix::signing::SigningKey::generate(&mut rand::rngs::OsRng);
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
    }
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
