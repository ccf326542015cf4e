//! The [`Admin`] service: what the administration API and console do, as async methods that run
//! the blocking parts of [`super`] on the database pool.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

use super::accounts::{self, AccountSummary};
use super::console::{self, ConsoleSession, OpenedSession};
use super::login::{LoginStep, Logins};
use super::moderation::{self, EntryFilter, EntryPage, ModeratedEntry};
use super::rules::{self, Converted, RuleFilter, RulePage};
use super::stats::{self, AttemptStats, DirectoryStats, OutboxStats, Period};
use super::tokens::{IssuedToken, Session, Tokens};
use super::{AdminError, Role};
use crate::allowlist::Allowlist;
use crate::audit::{self, Actor, AuditFilter, AuditPage};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::identity::erasure::Erasure;
use crate::identity::{IdentityError, IdentityService};
use crate::policy::{Address, Explanation, Rule, RuleDiff};
use crate::store::policy::StoredRule;
use crate::store::{Db, DbConn};

/// What the administration service is built from.
pub struct AdminParts {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub db: Db,
    /// The clock every expiry decision reads.
    pub clock: SharedClock,
    /// The live allowlist (rule changes are applied to it at once).
    pub allowlist: Arc<Allowlist>,
    /// The identity service (erasure of an address).
    pub identity: Arc<IdentityService>,
}

/// Administration: accounts, tokens and logins, rules, the explainer, moderation, erasure, the
/// audit log and statistics.
pub struct Admin {
    pub(super) config: Arc<Config>,
    pub(super) db: Db,
    pub(super) clock: SharedClock,
    allowlist: Arc<Allowlist>,
    identity: Arc<IdentityService>,
    tokens: Arc<Tokens>,
    logins: Arc<Logins>,
    directory_snapshot: Arc<DirectorySnapshot>,
}

/// Organisations and homeservers the dashboard lists (and the snapshot counts).
pub const DASHBOARD_GROUPS: usize = 10;

/// How long the dashboard's directory counts are reused before they are counted again (in
/// the background: nobody waits for a count over a million entries but the very first).
pub const DIRECTORY_SNAPSHOT_MS: i64 = 60_000;

/// The directory counts last made, and whether a recount is under way.
#[derive(Default)]
struct DirectorySnapshot {
    latest: std::sync::Mutex<Option<(i64, usize, DirectoryStats)>>,
    refreshing: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("tokens", &self.tokens)
            .field("logins", &self.logins)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Reads the token signing secret (created once in the database, or from
    /// `admin.jwt_secret_file`) and the login settings.
    pub async fn open(parts: AdminParts) -> Result<Admin, AdminError> {
        let config = parts.config.clone();
        let now_ms = parts.clock.now_ms();
        let tokens = parts
            .db
            .run(move |conn| Ok(Tokens::open(conn, &config, now_ms, &mut rand::rngs::OsRng)))
            .await??;
        Ok(Admin {
            logins: Arc::new(Logins::from_config(&parts.config)?),
            tokens: Arc::new(tokens),
            config: parts.config,
            db: parts.db,
            clock: parts.clock,
            allowlist: parts.allowlist,
            identity: parts.identity,
            directory_snapshot: Arc::new(DirectorySnapshot::default()),
        })
    }

    /// Runs a blocking administration call on the database pool.
    async fn run<T, F>(&self, f: F) -> Result<T, AdminError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T, AdminError> + Send + 'static,
    {
        self.db.run(move |conn| Ok(f(conn))).await?
    }

    /// The token service (the command line issues tokens through it).
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Forgets full rate-limit buckets (call periodically).
    pub fn housekeep(&self) {
        self.logins.housekeep();
    }

    /// Rereads the admin token secrets (a rotation by another process).
    pub async fn refresh_secrets(&self) -> Result<(), AdminError> {
        let tokens = self.tokens.clone();
        self.run(move |conn| tokens.refresh(conn)).await
    }

    // ---- logins and sessions ----

    /// Takes a login attempt from the per-IP and per-username buckets.
    pub fn check_login_rate(&self, ip: Option<IpAddr>, username: &str) -> Result<(), AdminError> {
        self.logins.check_login_rate(ip, username)
    }

    /// Checks a username and password, against the local account or with LDAP (see
    /// [`Logins::login`] and [`Logins::finish_ldap_login`]); on success, a token of
    /// `admin.token_lifetime`. The caller has checked the login rate limits.
    pub async fn log_in(&self, username: &str, password: &str) -> Result<IssuedToken, AdminError> {
        let now_ms = self.clock.now_ms();
        let (user, pass) = (username.to_owned(), password.to_owned());
        let (logins, tokens) = (self.logins.clone(), self.tokens.clone());
        let step = self
            .run(move |conn| {
                logins.login(conn, &user, &pass, now_ms, &tokens, &mut rand::rngs::OsRng)
            })
            .await?;
        let username = match step {
            LoginStep::Token(token) => return Ok(token),
            LoginStep::Ldap(username) => username,
        };
        let ldap = self.logins.ldap_login().ok_or(AdminError::BadCredentials)?;
        let verdict = ldap.check(&username, password).await?;
        let (logins, tokens) = (self.logins.clone(), self.tokens.clone());
        self.run(move |conn| {
            logins.finish_ldap_login(
                conn,
                &username,
                verdict,
                &tokens,
                now_ms,
                &mut rand::rngs::OsRng,
            )
        })
        .await
    }

    /// The session of a bearer token (signature, lifetime, revocation, account).
    pub async fn authenticate(&self, token: &str) -> Result<Session, AdminError> {
        let now_ms = self.clock.now_ms();
        let (tokens, token) = (self.tokens.clone(), token.to_owned());
        self.run(move |conn| tokens.authenticate(conn, &token, now_ms))
            .await
    }

    /// Revokes the session's token on every instance.
    pub async fn logout(&self, session: Session) -> Result<(), AdminError> {
        let now_ms = self.clock.now_ms();
        let tokens = self.tokens.clone();
        self.run(move |conn| tokens.logout(conn, &session, now_ms))
            .await
    }

    // ---- accounts ----

    /// Every admin account, by name.
    pub async fn list_accounts(&self) -> Result<Vec<AccountSummary>, AdminError> {
        let now_ms = self.clock.now_ms();
        self.run(move |conn| accounts::list_accounts(conn, now_ms))
            .await
    }

    /// Creates a local account.
    pub async fn add_account(
        &self,
        username: &str,
        role: Role,
        password: &str,
        actor: &Actor,
    ) -> Result<AccountSummary, AdminError> {
        let now_ms = self.clock.now_ms();
        let (username, password, actor) = (username.to_owned(), password.to_owned(), actor.clone());
        self.run(move |conn| {
            accounts::add_account(
                conn,
                &username,
                role,
                &password,
                &actor,
                now_ms,
                &mut rand::rngs::OsRng,
            )
        })
        .await
    }

    /// Removes an account; its tokens stop working at once.
    pub async fn remove_account(
        &self,
        username: &str,
        actor: &Actor,
    ) -> Result<AccountSummary, AdminError> {
        let now_ms = self.clock.now_ms();
        let (username, actor) = (username.to_owned(), actor.clone());
        self.run(move |conn| accounts::remove_account(conn, &username, &actor, now_ms))
            .await
    }

    // ---- rules ----

    /// A page of rules matching `filter`, after the page token `from`.
    pub async fn list_rules(
        &self,
        filter: RuleFilter,
        from: Option<String>,
        limit: usize,
    ) -> Result<RulePage, AdminError> {
        self.run(move |conn| rules::list(conn, &filter, from.as_deref(), limit))
            .await
    }

    /// One rule.
    pub async fn rule(&self, id: &str) -> Result<StoredRule, AdminError> {
        let id = id.to_owned();
        self.run(move |conn| rules::get(conn, &id)).await
    }

    /// Creates an admin rule from its JSON form.
    pub async fn create_rule(&self, input: Value, actor: &Actor) -> Result<Rule, AdminError> {
        let now_ms = self.clock.now_ms();
        let (live, actor) = (self.allowlist.clone(), actor.clone());
        self.run(move |conn| rules::create(conn, &live, input, &actor, now_ms))
            .await
    }

    /// Replaces an admin rule.
    pub async fn update_rule(
        &self,
        id: &str,
        input: Value,
        actor: &Actor,
    ) -> Result<Rule, AdminError> {
        let now_ms = self.clock.now_ms();
        let (live, id, actor) = (self.allowlist.clone(), id.to_owned(), actor.clone());
        self.run(move |conn| rules::update(conn, &live, &id, input, &actor, now_ms))
            .await
    }

    /// Deletes an admin rule.
    pub async fn delete_rule(&self, id: &str, actor: &Actor) -> Result<Rule, AdminError> {
        let now_ms = self.clock.now_ms();
        let (live, id, actor) = (self.allowlist.clone(), id.to_owned(), actor.clone());
        self.run(move |conn| rules::delete(conn, &live, &id, &actor, now_ms))
            .await
    }

    /// Turns a file rule into an admin rule.
    pub async fn convert_rule(&self, id: &str, actor: &Actor) -> Result<Converted, AdminError> {
        let now_ms = self.clock.now_ms();
        let (live, id, actor) = (self.allowlist.clone(), id.to_owned(), actor.clone());
        self.run(move |conn| rules::convert(conn, &live, &id, &actor, now_ms))
            .await
    }

    /// Imports an allowlist file's rules as admin rules (or says what would change).
    pub async fn import_rules(
        &self,
        toml_text: String,
        dry_run: bool,
        actor: &Actor,
    ) -> Result<RuleDiff, AdminError> {
        let now_ms = self.clock.now_ms();
        let (live, actor) = (self.allowlist.clone(), actor.clone());
        self.run(move |conn| rules::import(conn, &live, &toml_text, dry_run, &actor, now_ms))
            .await
    }

    /// The rules matching `filter` as an allowlist file.
    pub async fn export_rules(&self, filter: RuleFilter) -> Result<String, AdminError> {
        self.run(move |conn| rules::export(conn, &filter)).await
    }

    /// The decision for an address with every rule considered.
    pub async fn explain(&self, address: &str) -> Result<(Address, Explanation), AdminError> {
        let now_ms = self.clock.now_ms();
        let (live, address) = (self.allowlist.clone(), address.to_owned());
        self.run(move |conn| rules::explain(conn, &live, &address, now_ms))
            .await
    }

    // ---- audit log and statistics ----

    /// Audit entries matching `filter`, newest first, after the page token `from`.
    pub async fn audit(
        &self,
        filter: AuditFilter,
        from: Option<String>,
        limit: usize,
    ) -> Result<AuditPage, AdminError> {
        let before_seq = match from {
            None => None,
            Some(token) => Some(token.parse::<i64>().map_err(|_| {
                AdminError::InvalidInput("`next_batch` is not a token from a previous page".into())
            })?),
        };
        self.run(move |conn| Ok(audit::list(conn, &filter, before_seq, limit)?))
            .await
    }

    /// Refused and invite-required attempts per domain over `period`.
    pub async fn attempt_stats(
        &self,
        period: Period,
        limit: usize,
    ) -> Result<AttemptStats, AdminError> {
        let now_ms = self.clock.now_ms();
        let live = self.allowlist.clone();
        self.run(move |conn| stats::attempts(conn, &live, period, now_ms, limit))
            .await
    }

    /// Directory sizes per organisation and homeserver.
    pub async fn directory_stats(&self, limit: usize) -> Result<DirectoryStats, AdminError> {
        self.run(move |conn| stats::directory(conn, limit)).await
    }

    /// Directory sizes as last counted (at most [`DIRECTORY_SNAPSHOT_MS`] old, or being
    /// recounted in the background), and when they were counted.
    pub async fn directory_stats_snapshot(
        &self,
        limit: usize,
    ) -> Result<(DirectoryStats, i64), AdminError> {
        use std::sync::atomic::Ordering;
        let now_ms = self.clock.now_ms();
        let latest = self
            .directory_snapshot
            .latest
            .lock()
            .ok()
            .and_then(|guard| guard.clone());
        if let Some((at, counted_limit, stats)) = latest
            && counted_limit == limit
        {
            if now_ms.saturating_sub(at) > DIRECTORY_SNAPSHOT_MS
                && !self
                    .directory_snapshot
                    .refreshing
                    .swap(true, Ordering::SeqCst)
            {
                let (db, snapshot, clock) = (
                    self.db.clone(),
                    self.directory_snapshot.clone(),
                    self.clock.clone(),
                );
                tokio::spawn(async move {
                    let counted = db.run(move |conn| Ok(stats::directory(conn, limit))).await;
                    match counted {
                        Ok(Ok(stats)) => {
                            if let Ok(mut guard) = snapshot.latest.lock() {
                                *guard = Some((clock.now_ms(), limit, stats));
                            }
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "directory recount failed"),
                        Err(e) => tracing::warn!(error = %e, "directory recount failed"),
                    }
                    snapshot.refreshing.store(false, Ordering::SeqCst);
                });
            }
            return Ok((stats, at));
        }
        let stats = self.directory_stats(limit).await?;
        if let Ok(mut guard) = self.directory_snapshot.latest.lock() {
            *guard = Some((now_ms, limit, stats.clone()));
        }
        Ok((stats, now_ms))
    }

    /// The outbox's health.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, AdminError> {
        let now_ms = self.clock.now_ms();
        self.run(move |conn| stats::outbox(conn, now_ms)).await
    }

    // ---- directory moderation ----

    /// Directory entries: a search when `text` is given, else a page after `from`.
    pub async fn list_directory(
        &self,
        text: Option<String>,
        filter: EntryFilter,
        from: Option<String>,
        limit: usize,
    ) -> Result<EntryPage, AdminError> {
        let config = self.config.clone();
        self.run(move |conn| match text.as_deref() {
            Some(text) => {
                let candidates = i64::from(config.directory.search_candidates)
                    .max(i64::try_from(limit).unwrap_or(i64::MAX));
                moderation::search(conn, &config, text, &filter, limit, candidates)
            }
            None => moderation::list(conn, &config, &filter, from.as_deref(), limit),
        })
        .await
    }

    /// One directory entry.
    pub async fn directory_entry(&self, user_id: &str) -> Result<ModeratedEntry, AdminError> {
        let (config, user_id) = (self.config.clone(), user_id.to_owned());
        self.run(move |conn| moderation::get(conn, &config, &user_id))
            .await
    }

    /// Hides an entry from every search, or shows it again.
    pub async fn set_directory_visibility(
        &self,
        user_id: &str,
        visibility: crate::directory::Visibility,
        actor: &Actor,
    ) -> Result<ModeratedEntry, AdminError> {
        let now_ms = self.clock.now_ms();
        let (config, user_id, actor) = (self.config.clone(), user_id.to_owned(), actor.clone());
        self.run(move |conn| {
            moderation::set_visibility(conn, &config, &user_id, visibility, &actor, now_ms)
        })
        .await
    }

    /// Overrides an entry's verified name (`None` removes the override).
    pub async fn rename_directory_entry(
        &self,
        user_id: &str,
        name: Option<String>,
        actor: &Actor,
    ) -> Result<ModeratedEntry, AdminError> {
        let now_ms = self.clock.now_ms();
        let (config, user_id, actor) = (self.config.clone(), user_id.to_owned(), actor.clone());
        self.run(move |conn| {
            moderation::rename(conn, &config, &user_id, name.as_deref(), &actor, now_ms)
        })
        .await
    }

    /// Removes an entry.
    pub async fn remove_directory_entry(
        &self,
        user_id: &str,
        actor: &Actor,
    ) -> Result<ModeratedEntry, AdminError> {
        let now_ms = self.clock.now_ms();
        let (config, user_id, actor) = (self.config.clone(), user_id.to_owned(), actor.clone());
        self.run(move |conn| moderation::remove(conn, &config, &user_id, &actor, now_ms))
            .await
    }

    /// Erases an address: association, lookup hashes, invitations, sessions, queued mails,
    /// and the directory entry published from it.
    pub async fn erase(
        &self,
        medium: &str,
        address: &str,
        actor: &Actor,
    ) -> Result<Erasure, AdminError> {
        self.identity
            .erase(medium, address, actor)
            .await
            .map_err(|e| match e {
                IdentityError::InvalidParam(m) => AdminError::InvalidInput(m),
                IdentityError::InvalidEmail(m) => AdminError::InvalidAddress(m),
                IdentityError::Store(e) => AdminError::Store(e),
                other => AdminError::Internal(other.to_string()),
            })
    }
    // ---- the console ----

    /// Logs in as [`Admin::log_in`] does (rate limits checked by the caller, lockout, LDAP) and
    /// opens a console session instead of handing out a token (the token the login issues is
    /// dropped: it never leaves the server).
    pub async fn open_console_session(
        &self,
        username: &str,
        password: &str,
    ) -> Result<OpenedSession, AdminError> {
        let issued = self.log_in(username, password).await?;
        let session = self.authenticate(&issued.access_token).await?;
        let now_ms = self.clock.now_ms();
        self.run(move |conn| console::open(conn, &session.username, now_ms, &mut rand::rngs::OsRng))
            .await
    }

    /// The console session of a cookie's token (see [`console::authenticate`]).
    pub async fn console_session(&self, token: &str) -> Result<ConsoleSession, AdminError> {
        let now_ms = self.clock.now_ms();
        let idle_ms = self.config.admin.console_idle_timeout.as_millis_i64();
        let token = token.to_owned();
        self.run(move |conn| console::authenticate(conn, &token, idle_ms, now_ms))
            .await
    }

    /// Ends a console session.
    pub async fn close_console_session(&self, session: ConsoleSession) -> Result<(), AdminError> {
        self.run(move |conn| console::close(conn, &session)).await
    }

    /// Deletes console sessions that can no longer be used (call periodically).
    pub async fn purge_console_sessions(&self) -> Result<usize, AdminError> {
        let now_ms = self.clock.now_ms();
        let idle_ms = self.config.admin.console_idle_timeout.as_millis_i64();
        self.run(move |conn| console::purge(conn, idle_ms, now_ms))
            .await
    }

    /// Changes an account's role.
    pub async fn set_account_role(
        &self,
        username: &str,
        role: Role,
        actor: &Actor,
    ) -> Result<AccountSummary, AdminError> {
        let now_ms = self.clock.now_ms();
        let (username, actor) = (username.to_owned(), actor.clone());
        self.run(move |conn| accounts::set_role(conn, &username, role, &actor, now_ms))
            .await
    }

    /// What the rule list's filters offer, and the rule counts: from the live rules (no
    /// database query).
    pub fn rule_facets(&self) -> rules::RuleFacets {
        rules::RuleFacets::of(self.allowlist.index().rules())
    }
}
