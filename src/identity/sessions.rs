//! Email validation sessions (Matrix Identity Service API v2): `requestToken` opens or reuses a
//! session and queues a mail carrying a token, `submitToken` checks the token, and
//! `getValidated3pid` (and binds) read the validated address.
//!
//! A session is keyed by (normalised address, client secret). Secrets are stored as SHA-256
//! hashes and compared in constant time; session ids and tokens come from the OS CSPRNG. The
//! session and its mail are written in one transaction (the mail goes through the outbox), so a
//! mail server outage loses nothing. Logs carry the address's domain and a short hash of the
//! session id, never the address, the sid, the client secret or the token.

use super::IdentityService;
use std::net::IpAddr;
use std::sync::Arc;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::mail::outbox::{self as outbox, Mailer};
use crate::mail::{Language, MailError, VerificationMail, submit_token_link};
use crate::policy::{Address, Outcome, ReasonCode, normalize_email};
use crate::store::sessions::{self as store, SessionRow};
use crate::store::{DbConn, StoreError};

/// The only medium validated here.
pub const MEDIUM_EMAIL: &str = "email";
/// Wrong tokens after which a session is locked.
pub const MAX_WRONG_TOKENS: i32 = 5;
/// The outbox kind of confirmation mails.
pub const MAIL_KIND: &str = "verification";
/// Length of a token (alphanumeric: about 190 bits).
pub const TOKEN_LENGTH: usize = 32;
/// Length of a session id (alphanumeric: about 142 bits).
pub const SID_LENGTH: usize = 24;
/// Longest `next_link` accepted.
const NEXT_LINK_MAX: usize = 2048;
/// Longest sid or token accepted as input.
const PARAM_MAX: usize = 255;

/// The validated 3PID of a session, for getValidated3pid, bind and unbind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedThreepid {
    /// `email`.
    pub medium: String,
    /// The normalised address.
    pub address: String,
    /// When it was validated (ms since the epoch).
    pub validated_at: i64,
}

/// Why a session operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No session with this sid, or the client secret does not match.
    #[error("no validation session with this sid and client secret")]
    NoValidSession,
    /// The address has not been validated yet.
    #[error("the validation session has not been validated")]
    NotValidated,
    /// The token, or the validated session, has expired.
    #[error("the validation session has expired")]
    Expired,
    /// The token is wrong; `locked` once too many wrong tokens were submitted.
    #[error("incorrect token (locked: {locked})")]
    TokenIncorrect {
        /// The session accepts no token any more.
        locked: bool,
    },
    /// A parameter is malformed.
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    /// The email address is not a plain address.
    #[error("invalid email address: {0}")]
    InvalidEmail(String),
    /// The policy refuses this address.
    #[error("address refused by the policy")]
    Denied {
        /// Why, for people (no rule file or line).
        reason: String,
        /// Why, as the policy's stable code.
        reason_code: ReasonCode,
    },
    /// Too many requests (per client IP or per address).
    #[error("rate limited for {retry_after_ms} ms")]
    LimitExceeded {
        /// When to try again.
        retry_after_ms: u64,
    },
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The mail could not be rendered or built.
    #[error("{0}")]
    Mail(#[from] MailError),
}

/// A requestToken call whose `send_attempt` has been read (the HTTP layer checks its JSON type).
#[derive(Clone)]
pub struct TokenRequest {
    /// The client's secret, `[0-9a-zA-Z.=_-]{1,255}`.
    pub client_secret: String,
    /// The address as given.
    pub email: String,
    /// The client's attempt counter (≥ 0): a mail is sent only when it grows.
    pub send_attempt: i64,
    /// Where the browser goes after a successful validation through the link.
    pub next_link: Option<String>,
    /// The mail's language.
    pub language: Language,
    /// The caller's address, for the per-IP limit.
    pub client_ip: Option<IpAddr>,
}

// The client secret is a credential and the address personal data.
impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("send_attempt", &self.send_attempt)
            .field("language", &self.language)
            .finish_non_exhaustive()
    }
}

/// What requestToken did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedToken {
    /// The session id to answer.
    pub sid: String,
    /// Whether a mail was queued.
    pub mail_queued: bool,
}

/// A successful submitToken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The session's `next_link` (checked at requestToken), for the browser's redirect.
    pub next_link: Option<String>,
}

/// Checks a client secret against the spec's grammar `[0-9a-zA-Z.=_-]{1,255}`.
pub fn check_client_secret(secret: &str) -> Result<(), SessionError> {
    let valid = !secret.is_empty()
        && secret.len() <= 255
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'=' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(SessionError::InvalidParam(
            "client_secret must be 1 to 255 characters among 0-9 a-z A-Z . = _ -".into(),
        ))
    }
}

/// Checks that a sid or token is a plausible value (what we mint is alphanumeric).
fn check_opaque(name: &str, value: &str) -> Result<(), SessionError> {
    let valid = !value.is_empty()
        && value.len() <= PARAM_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'=' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(SessionError::InvalidParam(format!(
            "{name} must be 1 to {PARAM_MAX} characters among 0-9 a-z A-Z . = _ -"
        )))
    }
}

/// Checks a `next_link`: an absolute `https://` URL, or `http://` to one of `http_hosts`;
/// never another scheme (`javascript:`, `file:`, ...), credentials in the URL, or characters
/// that could be read differently by a browser.
pub fn check_next_link(link: &str, http_hosts: &[String]) -> Result<(), SessionError> {
    let invalid = |why: &str| SessionError::InvalidParam(format!("next_link: {why}"));
    if link.len() > NEXT_LINK_MAX {
        return Err(invalid("too long"));
    }
    if link
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b"\"'<>\\^`{|}".contains(&b))
    {
        return Err(invalid(
            "must be a plain URL (no spaces, quotes or non-ASCII characters)",
        ));
    }
    let lower = link.to_ascii_lowercase();
    let (https, rest) = if let Some(rest) = lower.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = lower.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(invalid("must be an https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(invalid("must not contain credentials"));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((inner, after)) if after.is_empty() || after.starts_with(':') => {
                &authority[..inner.len() + 2]
            }
            _ => return Err(invalid("malformed host")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return Err(invalid("malformed port")),
            None => authority,
        }
    };
    let port_ok = authority[host.len()..]
        .strip_prefix(':')
        .is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    if host.is_empty() || !port_ok {
        return Err(invalid("the URL has no usable host"));
    }
    if !https && !http_hosts.iter().any(|h| h == host) {
        return Err(invalid(
            "must be an https:// URL (http:// only to the hosts in validation.next_link_hosts)",
        ));
    }
    Ok(())
}

/// Normalises the address (400 `M_INVALID_EMAIL` when it is not one plain address).
fn email_param(email: &str) -> Result<Address, SessionError> {
    normalize_email(email).map_err(|e| SessionError::InvalidEmail(e.to_string()))
}

/// A new token: [`TOKEN_LENGTH`] alphanumeric characters.
pub fn new_token(rng: &mut impl RngCore) -> String {
    crate::secret::random_token(rng, TOKEN_LENGTH)
}

/// A new session id: [`SID_LENGTH`] alphanumeric characters (URL-safe, unguessable).
pub fn new_sid(rng: &mut impl RngCore) -> String {
    crate::secret::random_token(rng, SID_LENGTH)
}

/// The stored form of a secret: SHA-256, hex.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `candidate` hashes to `stored_hash`, in constant time.
pub fn secret_matches(stored_hash: &str, candidate: &str) -> bool {
    let computed = hash_secret(candidate);
    computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// A short, stable pseudonym of a session id for logs.
fn log_id(sid: &str) -> String {
    hash_secret(sid)[..12].to_string()
}

/// The outbox key of a session's mail for one send attempt.
fn dedupe_key(sid: &str, send_attempt: i64) -> String {
    format!("{sid}:{send_attempt}")
}

/// What requestToken does with the stored session of its (address, client secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No usable session: create one (replacing the expired one, if any).
    Create {
        /// The expired session to delete and its last send attempt.
        replace: Option<(String, i64)>,
    },
    /// A greater send attempt: a new token and a mail.
    NewToken,
    /// The same or a smaller send attempt, or a locked session: the same sid, no mail.
    Unchanged,
}

/// Decides what requestToken does (pure).
pub fn plan(existing: Option<&SessionRow>, send_attempt: i64, now_ms: i64) -> Plan {
    match existing {
        None => Plan::Create { replace: None },
        Some(s) if s.expires_at <= now_ms => Plan::Create {
            replace: Some((s.sid.clone(), s.send_attempt)),
        },
        // A new attempt does not unlock a session (a new client secret starts afresh), and a
        // mail whose token cannot be used would only confuse.
        Some(s) if send_attempt > s.send_attempt && s.wrong_tokens < MAX_WRONG_TOKENS => {
            Plan::NewToken
        }
        Some(_) => Plan::Unchanged,
    }
}

/// The reason given to a refused address (the rule's file and line stay internal).
fn denied_reason(rule_matched: bool) -> String {
    if rule_matched {
        "This address is not allowed on the service".into()
    } else {
        "This address's administration is not on the service yet".into()
    }
}

/// Everything the requestToken transaction needs, drawn before it starts.
struct RequestContext {
    config: Arc<Config>,
    mailer: Arc<Mailer>,
    address: Address,
    client_secret: String,
    client_secret_hash: String,
    send_attempt: i64,
    next_link: Option<String>,
    language: Language,
    fresh_sid: String,
    token: String,
    now: i64,
}

impl IdentityService {
    /// `POST /_matrix/identity/v2/validate/email/requestToken`, after authentication: checks the
    /// parameters, the rate limits and the policy, then opens or reuses the session and queues its
    /// mail in one transaction, and wakes the outbox worker.
    pub async fn request_token(
        &self,
        request: TokenRequest,
    ) -> Result<RequestedToken, SessionError> {
        check_client_secret(&request.client_secret)?;
        if request.send_attempt < 0 {
            return Err(SessionError::InvalidParam(
                "send_attempt must be a non-negative integer".into(),
            ));
        }
        let address = email_param(&request.email)?;
        if let Some(link) = &request.next_link {
            check_next_link(link, &self.config.validation.next_link_hosts)?;
        }

        if let Some(ip) = request.client_ip {
            self.request_token_per_ip
                .check(&ip)
                .map_err(|retry_after_ms| SessionError::LimitExceeded { retry_after_ms })?;
        }
        let now = self.clock.now_ms();
        let limit = self.config.rate_limits.request_token_per_address;
        let key = format!("request_token:{}", hash_secret(address.as_str()));
        self.db
            .run(move |conn| crate::store::ratelimits::take(conn, &key, &limit, now))
            .await?
            .map_err(|retry_after_ms| {
                tracing::info!(domain = %address.domain(), "requestToken: per-address limit reached");
                SessionError::LimitExceeded { retry_after_ms }
            })?;

        let decision = self.allowlist.decide(&address, now);
        self.allowlist.record_attempt(&address, &decision, now);
        if decision.outcome == Outcome::Denied && self.config.validation.require_allowed {
            tracing::info!(domain = %address.domain(), "requestToken: address refused by the policy");
            return Err(SessionError::Denied {
                reason: denied_reason(decision.rule.is_some()),
                reason_code: decision.reason_code,
            });
        }

        let mut rng = rand::rngs::OsRng;
        let ctx = Arc::new(RequestContext {
            config: self.config.clone(),
            mailer: self.mailer.clone(),
            client_secret_hash: hash_secret(&request.client_secret),
            client_secret: request.client_secret,
            address,
            send_attempt: request.send_attempt,
            next_link: request.next_link,
            language: request.language,
            fresh_sid: new_sid(&mut rng),
            token: new_token(&mut rng),
            now,
        });
        let mut tries = 0;
        let requested = loop {
            tries += 1;
            let job = ctx.clone();
            match self
                .db
                .run(move |conn| Ok(open_session(conn, &job)))
                .await?
            {
                // Two identical requests raced and both tried to create the session: the loser
                // finds the winner's session on its second try.
                Err(SessionError::Store(e)) if tries < 3 && e.is_unique_violation() => continue,
                other => break other?,
            }
        };
        if requested.mail_queued {
            self.mailer.wake();
        }
        tracing::info!(
            session = %log_id(&requested.sid),
            domain = %ctx.address.domain(),
            mail_queued = requested.mail_queued,
            "requestToken"
        );
        Ok(requested)
    }

    /// `submitToken` (POST or GET): checks the token of (sid, client secret). A wrong token counts
    /// towards the lock, and the count is kept even though the call fails.
    pub async fn submit_token(
        &self,
        sid: &str,
        client_secret: &str,
        token: &str,
    ) -> Result<Validated, SessionError> {
        check_opaque("sid", sid)?;
        check_client_secret(client_secret)?;
        check_opaque("token", token)?;
        let now = self.clock.now_ms();
        let session_lifetime = self.config.validation.session_lifetime.as_millis_i64();
        let (sid, client_secret, token) = (
            sid.to_string(),
            client_secret.to_string(),
            token.to_string(),
        );
        let log = log_id(&sid);
        let outcome = self
            .db
            .run(move |conn| {
                crate::store::transaction(conn, |conn| {
                    check_token(conn, &sid, &client_secret, &token, now, session_lifetime)
                })
            })
            .await?;
        match &outcome {
            Ok(_) => tracing::info!(session = %log, "submitToken: address validated"),
            Err(e) => tracing::info!(session = %log, outcome = %e, "submitToken refused"),
        }
        outcome
    }

    /// For getValidated3pid, bind and unbind-by-session: the validated 3PID of (sid, client
    /// secret).
    pub async fn validated_threepid(
        &self,
        sid: &str,
        client_secret: &str,
    ) -> Result<ValidatedThreepid, SessionError> {
        check_opaque("sid", sid)?;
        check_client_secret(client_secret)?;
        let now = self.clock.now_ms();
        let (sid, client_secret) = (sid.to_string(), client_secret.to_string());
        let session = self.db.run(move |conn| store::find(conn, &sid)).await?;
        let Some(session) = session else {
            return Err(SessionError::NoValidSession);
        };
        if !secret_matches(&session.client_secret_hash, &client_secret) {
            return Err(SessionError::NoValidSession);
        }
        if session.expires_at <= now {
            return Err(SessionError::Expired);
        }
        match session.validated_at {
            Some(validated_at) => Ok(ValidatedThreepid {
                medium: session.medium,
                address: session.address,
                validated_at,
            }),
            None => Err(SessionError::NotValidated),
        }
    }
}

/// The requestToken transaction: the session and its mail, together.
fn open_session(conn: &mut DbConn, ctx: &RequestContext) -> Result<RequestedToken, SessionError> {
    crate::store::transaction(conn, |conn| {
        let address = ctx.address.as_str();
        store::lock_pair(conn, MEDIUM_EMAIL, address, &ctx.client_secret_hash)?;
        let existing = store::find_by_pair(conn, MEDIUM_EMAIL, address, &ctx.client_secret_hash)?;
        let token_expires_at = ctx
            .now
            .saturating_add(ctx.config.validation.token_lifetime.as_millis_i64());
        match plan(existing.as_ref(), ctx.send_attempt, ctx.now) {
            Plan::Create { replace } => {
                if let Some((old_sid, old_attempt)) = replace {
                    store::delete(conn, &old_sid)?;
                    outbox::supersede(
                        conn,
                        MAIL_KIND,
                        &dedupe_key(&old_sid, old_attempt),
                        ctx.now,
                    )?;
                }
                store::insert(
                    conn,
                    &SessionRow {
                        sid: ctx.fresh_sid.clone(),
                        medium: MEDIUM_EMAIL.into(),
                        address: address.to_string(),
                        client_secret_hash: ctx.client_secret_hash.clone(),
                        token_hash: hash_secret(&ctx.token),
                        next_link: ctx.next_link.clone(),
                        send_attempt: ctx.send_attempt,
                        wrong_tokens: 0,
                        created_at: ctx.now,
                        token_issued_at: ctx.now,
                        validated_at: None,
                        expires_at: token_expires_at,
                    },
                )?;
                queue_mail(conn, ctx, &ctx.fresh_sid)?;
                Ok(RequestedToken {
                    sid: ctx.fresh_sid.clone(),
                    mail_queued: true,
                })
            }
            Plan::NewToken => {
                let Some(session) = existing else {
                    return Err(SessionError::NoValidSession);
                };
                // A validated session stays validated until its own expiry; otherwise the new
                // token restarts the clock.
                let expires_at = match session.validated_at {
                    Some(_) => session.expires_at,
                    None => token_expires_at,
                };
                store::set_token(
                    conn,
                    &session.sid,
                    &hash_secret(&ctx.token),
                    ctx.send_attempt,
                    ctx.next_link.as_deref(),
                    ctx.now,
                    expires_at,
                )?;
                // The previous mail, if still waiting, carries a token that no longer works.
                outbox::supersede(
                    conn,
                    MAIL_KIND,
                    &dedupe_key(&session.sid, session.send_attempt),
                    ctx.now,
                )?;
                queue_mail(conn, ctx, &session.sid)?;
                Ok(RequestedToken {
                    sid: session.sid,
                    mail_queued: true,
                })
            }
            Plan::Unchanged => {
                let sid = existing
                    .map(|s| s.sid)
                    .ok_or(SessionError::NoValidSession)?;
                Ok(RequestedToken {
                    sid,
                    mail_queued: false,
                })
            }
        }
    })
}

/// Renders, builds and queues the confirmation mail of `sid` (inside the transaction).
fn queue_mail(conn: &mut DbConn, ctx: &RequestContext, sid: &str) -> Result<(), SessionError> {
    let link = submit_token_link(
        &ctx.config.public_base_url(),
        sid,
        &ctx.client_secret,
        &ctx.token,
    )?;
    let rendered = ctx.mailer.templates().render_verification(
        ctx.language,
        &VerificationMail {
            link,
            token: ctx.token.clone(),
            address: ctx.address.as_str().to_string(),
            server_name: ctx.config.server.name.clone(),
            valid_for: ctx.config.validation.token_lifetime.0,
        },
    )?;
    let msg = ctx.mailer.compose(
        ctx.address.as_str(),
        &rendered,
        ctx.now,
        &mut rand::rngs::OsRng,
    )?;
    outbox::enqueue(
        conn,
        &msg,
        MAIL_KIND,
        &dedupe_key(sid, ctx.send_attempt),
        ctx.now,
    )?;
    Ok(())
}

/// The submitToken transaction. Refusals are `Ok(Err(..))` so that the wrong-token count is
/// committed.
fn check_token(
    conn: &mut DbConn,
    sid: &str,
    client_secret: &str,
    token: &str,
    now: i64,
    session_lifetime: i64,
) -> Result<Result<Validated, SessionError>, StoreError> {
    store::lock(conn, sid)?;
    let Some(session) = store::find(conn, sid)? else {
        return Ok(Err(SessionError::NoValidSession));
    };
    if !secret_matches(&session.client_secret_hash, client_secret) {
        return Ok(Err(SessionError::NoValidSession));
    }
    if session.expires_at <= now {
        return Ok(Err(SessionError::Expired));
    }
    if session.wrong_tokens >= MAX_WRONG_TOKENS {
        return Ok(Err(SessionError::TokenIncorrect { locked: true }));
    }
    if !secret_matches(&session.token_hash, token) {
        let wrong = store::add_wrong_token(conn, sid)?;
        return Ok(Err(SessionError::TokenIncorrect {
            locked: wrong >= MAX_WRONG_TOKENS,
        }));
    }
    if session.validated_at.is_none() {
        store::set_validated(conn, sid, now, now.saturating_add(session_lifetime))?;
    }
    Ok(Ok(Validated {
        next_link: session.next_link,
    }))
}

/// What one purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Expired sessions.
    pub sessions: usize,
    /// Finished outbox rows past their retention.
    pub outbox_rows: usize,
    /// Idle per-address limits.
    pub rate_limits: usize,
}

/// Deletes expired sessions, old finished outbox rows and idle rate-limit rows at `now_ms`.
/// Several instances may run it at once: each delete is idempotent.
pub fn purge(conn: &mut DbConn, config: &Config, now_ms: i64) -> Result<Purged, StoreError> {
    Ok(Purged {
        sessions: store::purge_expired(conn, now_ms)?,
        outbox_rows: outbox::purge(conn, &config.mail.outbox, now_ms)?,
        rate_limits: crate::store::ratelimits::purge(conn, now_ms)?,
    })
}

/// Starts the periodic purge (every `validation.purge_interval`) on the current runtime.
pub fn start_purge_job(identity: &Arc<IdentityService>) {
    let identity = identity.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(identity.config.validation.purge_interval.0);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = identity.clock.now_ms();
            let config = identity.config.clone();
            match identity.db.run(move |conn| purge(conn, &config, now)).await {
                Ok(p) if p != Purged::default() => tracing::info!(
                    sessions = p.sessions,
                    outbox_rows = p.outbox_rows,
                    rate_limits = p.rate_limits,
                    "purged expired validation data"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "validation purge failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn session(send_attempt: i64, wrong_tokens: i32, expires_at: i64) -> SessionRow {
        SessionRow {
            sid: "sid".into(),
            medium: MEDIUM_EMAIL.into(),
            address: "a@b.example".into(),
            client_secret_hash: hash_secret("secret"),
            token_hash: hash_secret("token"),
            next_link: None,
            send_attempt,
            wrong_tokens,
            created_at: 0,
            token_issued_at: 0,
            validated_at: None,
            expires_at,
        }
    }

    #[test]
    fn client_secrets_follow_the_spec_grammar() {
        for ok in ["a", "Ab0.=_-", &"x".repeat(255)] {
            assert!(check_client_secret(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "é", "a/b", "a+b", &"x".repeat(256)] {
            assert!(
                matches!(check_client_secret(bad), Err(SessionError::InvalidParam(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn next_links_are_https_or_listed_http_hosts() {
        let hosts = vec!["localhost".to_string(), "[::1]".to_string()];
        for ok in [
            "https://app.example/#/register?x=1",
            "HTTPS://App.Example",
            "https://app.example:8443/done",
            "http://localhost:8080/welcome",
            "http://localhost/",
            "http://[::1]:3000/x",
        ] {
            assert!(check_next_link(ok, &hosts).is_ok(), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "JavaScript://%0aalert(1)",
            "file:///etc/passwd",
            "data:text/html,x",
            "//evil.example",
            "http://evil.example/",
            "http://localhost.evil.example/",
            "http://localhost@evil.example/",
            "https://user:pw@app.example/",
            "https://",
            "https:///path",
            "https://app.example:99999/",
            "https://app.example:x/",
            "https://app.example/a b",
            "https://app.example/\"onload",
            "https://app.exämple/",
            "https://[::1/",
            "",
        ] {
            assert!(check_next_link(bad, &hosts).is_err(), "{bad}");
        }
        assert!(
            check_next_link(&format!("https://a.example/{}", "x".repeat(3000)), &hosts).is_err()
        );
        assert!(check_next_link("http://localhost/", &[]).is_err());
    }

    #[test]
    fn tokens_and_sids_are_long_alphanumeric_and_distinct() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = new_token(&mut rng);
        let b = new_token(&mut rng);
        assert_eq!(a.len(), TOKEN_LENGTH);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        let sid = new_sid(&mut rng);
        assert_eq!(sid.len(), SID_LENGTH);
        assert!(sid.bytes().all(|c| c.is_ascii_alphanumeric()));
        // 62^24 > 2^128.
        assert!((SID_LENGTH as f64) * 62f64.log2() >= 128.0);
    }

    #[test]
    fn secrets_are_stored_hashed_and_compared_by_hash() {
        let h = hash_secret("Tok3n");
        assert_eq!(h.len(), 64);
        assert!(!h.contains("Tok3n"));
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(secret_matches(&h, "Tok3n"));
        assert!(!secret_matches(&h, "tok3n"));
        assert!(!secret_matches(&h, ""));
        assert!(!secret_matches("", "Tok3n"));
    }

    #[test]
    fn plan_follows_send_attempt_expiry_and_lock() {
        let now = 1000;
        assert_eq!(plan(None, 0, now), Plan::Create { replace: None });
        let live = session(1, 0, 2000);
        assert_eq!(plan(Some(&live), 1, now), Plan::Unchanged);
        assert_eq!(plan(Some(&live), 0, now), Plan::Unchanged);
        assert_eq!(plan(Some(&live), 2, now), Plan::NewToken);
        let locked = session(1, MAX_WRONG_TOKENS, 2000);
        assert_eq!(plan(Some(&locked), 2, now), Plan::Unchanged);
        let expired = session(3, MAX_WRONG_TOKENS, 1000);
        assert_eq!(
            plan(Some(&expired), 0, now),
            Plan::Create {
                replace: Some(("sid".into(), 3))
            }
        );
    }

    #[test]
    fn opaque_parameters_are_bounded() {
        assert!(check_opaque("sid", "abcDEF123").is_ok());
        assert!(check_opaque("sid", "").is_err());
        assert!(check_opaque("sid", "a b").is_err());
        assert!(check_opaque("token", &"x".repeat(256)).is_err());
    }

    #[test]
    fn debug_output_hides_the_client_secret_and_address() {
        let r = TokenRequest {
            client_secret: "SuperSecret".into(),
            email: "jean@finances.example".into(),
            send_attempt: 1,
            next_link: None,
            language: Language::FR,
            client_ip: None,
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("SuperSecret"));
        assert!(!shown.contains("jean@"));
    }
}
