//! `annuaire homeserver add|list|revoke`: the homeserver API's tokens.

use super::*;

/// `annuaire homeserver …`
#[derive(Debug, Subcommand)]
pub enum HomeserverCommand {
    /// Make the token of a homeserver and print it once on standard output (only its hash is
    /// kept). Its holder may call the homeserver API (/_annuaire/homeserver/v1) for that
    /// server's users and for the addresses the policy sends there. Refused while the server
    /// has an unrevoked token: revoke it first.
    Add {
        /// The homeserver's server_name, as in its Matrix IDs (@user:SERVER_NAME).
        #[arg(value_name = "SERVER_NAME")]
        server_name: String,
    },
    /// List the homeservers that have or had a token (never the tokens).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke the token of a homeserver: its next call is refused (401). The module of
    /// contrib/synapse keeps what it could not deliver and sends it once given a new token.
    Revoke {
        /// The homeserver's server_name.
        #[arg(value_name = "SERVER_NAME")]
        server_name: String,
    },
}

fn when(ms: Option<i64>) -> String {
    ms.and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        })
        .unwrap_or_else(|| "-".to_string())
}

pub(super) fn homeserver_command(config: &Config, cmd: HomeserverCommand) -> Result<(), CliError> {
    use crate::audit::Actor;
    use crate::homeserver::{HomeserverError, tokens};
    let fail = |e: HomeserverError| match e {
        HomeserverError::InvalidServerName(_)
        | HomeserverError::TokenExists(_)
        | HomeserverError::NoToken(_) => CliError::config(e),
        other => CliError::runtime(other),
    };
    let actor = Actor::cli(&unix_user());
    let db = open_db(config)?;
    let mut conn = db.get().map_err(CliError::runtime)?;
    let now = now_ms();
    match cmd {
        HomeserverCommand::Add { server_name } => {
            let new = tokens::add_homeserver(
                &mut conn,
                &server_name,
                &actor,
                now,
                &mut rand::rngs::OsRng,
            )
            .map_err(fail)?;
            // The live rules, and the allowlist files `serve` will import at start.
            let mut rules: Vec<crate::policy::Rule> = crate::store::policy::load_rules(&mut conn)
                .map_err(CliError::runtime)?
                .into_iter()
                .map(|stored| stored.rule)
                .collect();
            let dir = &config.policy.allowlists_dir;
            if !dir.as_os_str().is_empty()
                && dir.is_dir()
                && let Ok(files) = crate::allowlist::parse_allowlist_dir(dir)
            {
                rules.extend(files);
            }
            let named = rules.iter().any(|rule| {
                [&rule.homeserver, &rule.shadow_homeserver]
                    .into_iter()
                    .flatten()
                    .any(|hs| hs.eq_ignore_ascii_case(&new.server_name))
            }) || config
                .policy
                .external_homeserver
                .as_deref()
                .is_some_and(|hs| hs.eq_ignore_ascii_case(&new.server_name));
            println!("{}", new.token);
            eprintln!(
                "token for {} (shown once; put it in the file of the module's token_file)",
                new.server_name
            );
            if !named {
                eprintln!(
                    "note: no allowlist rule names {} as homeserver: the token can act for its \
                     users, but on no address until a rule sends addresses there",
                    new.server_name
                );
            }
        }
        HomeserverCommand::List { json } => {
            let list = tokens::list_homeservers(&mut conn).map_err(CliError::runtime)?;
            for hs in &list {
                if json {
                    println!("{}", serde_json::to_string(hs).map_err(CliError::runtime)?);
                } else {
                    println!(
                        "{:<40} {:<7} made {} by {:<16} last used {}{}",
                        hs.server_name,
                        hs.status,
                        when(Some(hs.created_at)),
                        hs.created_by,
                        when(hs.last_used_at),
                        match hs.revoked_at {
                            Some(at) => format!(", revoked {}", when(Some(at))),
                            None => String::new(),
                        }
                    );
                }
            }
            if !json {
                let active = list.iter().filter(|hs| hs.status == "active").count();
                println!("{} homeservers, {active} with an active token", list.len());
            }
        }
        HomeserverCommand::Revoke { server_name } => {
            let revoked =
                tokens::revoke_homeserver(&mut conn, &server_name, &actor, now).map_err(fail)?;
            println!("revoked the token of {}", revoked.server_name);
        }
    }
    Ok(())
}
