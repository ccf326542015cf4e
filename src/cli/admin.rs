//! `annuaire admin add|remove|list|token|rotate-secret`.

use super::*;

/// `annuaire admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a local admin account (argon2id password hash). The password is read from
    /// standard input (one line) unless --password-file is given; at least 12 characters.
    Add {
        /// Account name: 1 to 64 of a-z, 0-9, `.`, `_`, `-`.
        #[arg(value_name = "USER")]
        username: String,
        /// `viewer` (read only) or `editor` (read and change).
        #[arg(long, value_parser = ["viewer", "editor"])]
        role: String,
        /// Read the password from this file (its first line) instead of standard input.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Remove an admin account; its tokens stop working at once.
    Remove {
        /// Account name.
        #[arg(value_name = "USER")]
        username: String,
    },
    /// List the admin accounts (never their password hashes).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a token for automation (`Authorization: Bearer …`) on standard output.
    Token {
        /// Account name.
        #[arg(value_name = "USER")]
        username: String,
        /// Lifetime: "30m", "1h", "90days" (at most 366 days).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Make a new secret sign admin tokens. Tokens signed with the previous secret stay valid
    /// until they expire (the previous secret is accepted for --keep-previous), unless
    /// --revoke-previous. Running instances switch within 10 s (at once on SIGHUP). Audited.
    /// Not with admin.jwt_secret_file (replace that file instead).
    RotateSecret {
        /// How long tokens of the previous secret stay accepted: the longest lifetime a token
        /// of it can have (default: that of `admin token`, 366 days, plus 30 s of clock skew).
        #[arg(long, value_name = "DURATION", conflicts_with = "revoke_previous")]
        keep_previous: Option<String>,
        /// Stop accepting tokens of the previous secret at once (it leaked).
        #[arg(long)]
        revoke_previous: bool,
    },
}

/// The person running the command, for the audit log: the user who ran `sudo` (`SUDO_USER`)
/// when there is one (`sudo annuaire …` and `sudo -u annuaire annuaire …` would otherwise say
/// `root` or `annuaire`), else `USER`, `LOGNAME`, or the uid.
pub(super) fn unix_user() -> String {
    for var in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var)
            && !name.is_empty()
        {
            return name;
        }
    }
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self") {
        Ok(m) => format!("uid{}", m.uid()),
        Err(_) => "unknown".to_string(),
    }
}

/// The password: the first line of `file`, or of standard input.
fn read_password(file: Option<&std::path::Path>) -> Result<String, CliError> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::config(format!("--password-file {}: {e}", path.display())))?,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| CliError::runtime(format!("cannot read the password: {e}")))?;
            line
        }
    };
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(CliError::config(
            "no password given (one line on standard input, or --password-file)",
        ));
    }
    Ok(password)
}

pub(super) fn admin_command(config: &Config, cmd: AdminCommand) -> Result<(), CliError> {
    use crate::admin::{self, AdminError, Role};
    use crate::audit::Actor;
    let fail = |e: AdminError| match e {
        AdminError::InvalidInput(_) => CliError::config(e),
        other => CliError::runtime(other),
    };
    let actor = Actor::cli(&unix_user());
    // Read the password before touching the database, so that a bad input changes nothing.
    let password = match &cmd {
        AdminCommand::Add { password_file, .. } => Some(read_password(password_file.as_deref())?),
        _ => None,
    };
    let db = open_db(config)?;
    let mut conn = db.get().map_err(CliError::runtime)?;
    let now = now_ms();
    match cmd {
        AdminCommand::Add { username, role, .. } => {
            let role = Role::parse(&role)
                .ok_or_else(|| CliError::config("--role: expected viewer or editor"))?;
            let account = admin::accounts::add_account(
                &mut conn,
                &username,
                role,
                password.as_deref().unwrap_or(""),
                &actor,
                now,
                &mut rand::rngs::OsRng,
            )
            .map_err(fail)?;
            println!(
                "created admin account {} ({})",
                account.username, account.role
            );
        }
        AdminCommand::Remove { username } => {
            let account =
                admin::accounts::remove_account(&mut conn, &username, &actor, now).map_err(fail)?;
            println!(
                "removed admin account {} ({})",
                account.username, account.role
            );
        }
        AdminCommand::List { json } => {
            let accounts = admin::accounts::list_accounts(&mut conn, now).map_err(fail)?;
            for a in &accounts {
                if json {
                    println!("{}", serde_json::to_string(a).map_err(CliError::runtime)?);
                } else {
                    let when = |ms: Option<i64>| {
                        ms.and_then(|ms| u64::try_from(ms).ok())
                            .map(|ms| {
                                humantime::format_rfc3339_seconds(
                                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                                )
                                .to_string()
                            })
                            .unwrap_or_else(|| "-".to_string())
                    };
                    println!(
                        "{:<24} {:<7} {:<6} last login {:<21} {}",
                        a.username,
                        a.role,
                        a.source,
                        when(a.last_login_at),
                        match a.locked_until {
                            Some(_) => format!("locked until {}", when(a.locked_until)),
                            None => String::new(),
                        }
                    );
                }
            }
            if !json {
                println!("{} admin accounts", accounts.len());
            }
        }
        AdminCommand::Token { username, ttl } => {
            let ttl = humantime::parse_duration(ttl.trim())
                .map_err(|e| CliError::config(format!("--ttl {ttl}: {e}")))?;
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let service = admin::Tokens::open(&mut conn, config, now, &mut rand::rngs::OsRng)
                .map_err(fail)?;
            let token = service
                .issue_token(
                    &mut conn,
                    &username,
                    ttl_ms,
                    &actor,
                    now,
                    &mut rand::rngs::OsRng,
                )
                .map_err(fail)?;
            println!("{}", token.access_token);
            eprintln!(
                "token for {} ({}), valid for {}",
                username,
                token.role,
                humantime::format_duration(std::time::Duration::from_secs(
                    u64::try_from(token.expires_in).unwrap_or(0)
                ))
            );
        }
        AdminCommand::RotateSecret {
            keep_previous,
            revoke_previous,
        } => {
            let keep_ms = match (revoke_previous, keep_previous) {
                (true, _) => 0,
                (false, Some(text)) => {
                    let d = humantime::parse_duration(text.trim())
                        .map_err(|e| CliError::config(format!("--keep-previous {text}: {e}")))?;
                    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
                }
                (false, None) => {
                    admin::tokens::MAX_CLI_TOKEN_MS + admin::tokens::LEEWAY_SECS * 1000
                }
            };
            let rotation = admin::tokens::rotate_secret(
                &mut conn,
                config,
                keep_ms,
                &actor,
                now,
                &mut rand::rngs::OsRng,
            )
            .map_err(fail)?;
            println!(
                "admin token secret rotated: kid {} signs from now on; tokens of kid {} are {}",
                rotation.kid,
                rotation.previous_kid,
                if revoke_previous {
                    "no longer accepted".to_string()
                } else {
                    format!(
                        "accepted until {}",
                        super::keys::rfc3339(Some(rotation.previous_accepted_until))
                    )
                }
            );
            println!("running instances switch within 10 s (systemctl reload annuaire: at once)");
        }
    }
    Ok(())
}
