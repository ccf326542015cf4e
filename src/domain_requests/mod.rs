//! "My administration is not listed": an agent whose address the policy does not know asks for
//! their administration (their address's domain) to be added. The request is confirmed by a
//! mail to that address (through the outbox), lands in the administrators' queue grouped by
//! domain, and is accepted (once a rule lets the domain in) or declined with a message; the
//! requesters are told by mail. Requests are rate limited per client IP (each instance) and per
//! domain (in the database), and deleted after `web.domain_requests_retention`.
//!
//! Also here: the agents' "which homeserver is mine?" answer ([`DomainRequests::check`]), which
//! decides whether the request form is offered.

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::allowlist::{Allowlist, shard_answer};
use crate::audit::{self, Actor};
use crate::clock::SharedClock;
use crate::config::{Config, Language};
use crate::mail::domain_request::{DomainRequestMail, DomainRequestStage, DomainRequestTemplates};
use crate::mail::outbox::{self, Mailer};
use crate::mail::percent_encode_unreserved;
use crate::policy::{Outcome, ReasonCode, normalize_domain, normalize_email, public_provider};
use crate::ratelimit::KeyedLimit;
use crate::store::domain_requests::{self as store, DomainRequestRow};
use crate::store::{Db, DbConn};

mod types;
pub use types::*;

/// How long the confirmation link of a request works (unconfirmed requests are then deleted).
pub const CONFIRM_WITHIN_MS: i64 = 48 * 3600 * 1000;
/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest organisation, in characters.
pub const MAX_ORGANISATION_CHARS: usize = 200;
/// Longest message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;
/// Longest decline message, in characters.
pub const MAX_DECLINE_CHARS: usize = 2000;

/// The mail kind of these mails in the outbox.
pub const MAIL_KIND: &str = "domain_request";

/// What the service is built from.
pub struct DomainRequestsParts {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub db: Db,
    /// The clock.
    pub clock: SharedClock,
    /// The live allowlist.
    pub allowlist: Arc<Allowlist>,
    /// The mail service (composing and waking the outbox).
    pub mailer: Arc<Mailer>,
    /// The request mails' templates.
    pub templates: DomainRequestTemplates,
}

/// Agents' requests for their administration, and the "which homeserver is mine?" answer.
pub struct DomainRequests {
    config: Arc<Config>,
    db: Db,
    clock: SharedClock,
    allowlist: Arc<Allowlist>,
    mailer: Arc<Mailer>,
    templates: Arc<DomainRequestTemplates>,
    per_ip: KeyedLimit<IpAddr>,
}

impl std::fmt::Debug for DomainRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainRequests").finish_non_exhaustive()
    }
}

fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A single-line text field, trimmed and checked.
fn line_field(field: &'static str, value: &str, max: usize) -> Result<String, DomainRequestError> {
    let value = value.trim();
    let invalid = |problem| DomainRequestError::InvalidField { field, problem };
    if value.is_empty() {
        return Err(invalid(FieldProblem::Missing));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(FieldProblem::ControlCharacters));
    }
    if value.chars().count() > max {
        return Err(invalid(FieldProblem::TooLong(max)));
    }
    Ok(value.to_owned())
}

/// A multi-line text field (line breaks allowed), trimmed; `None` when empty.
fn text_field(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>, DomainRequestError> {
    let Some(value) = value.map(|v| v.replace("\r\n", "\n")) else {
        return Ok(None);
    };
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let invalid = |problem| DomainRequestError::InvalidField { field, problem };
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(invalid(FieldProblem::ControlCharacters));
    }
    if value.chars().count() > max {
        return Err(invalid(FieldProblem::TooLong(max)));
    }
    Ok(Some(value.to_owned()))
}

impl DomainRequests {
    /// The service.
    pub fn new(parts: DomainRequestsParts) -> DomainRequests {
        DomainRequests {
            per_ip: KeyedLimit::new(&parts.config.web.domain_requests_per_ip),
            config: parts.config,
            db: parts.db,
            clock: parts.clock,
            allowlist: parts.allowlist,
            mailer: parts.mailer,
            templates: Arc::new(parts.templates),
        }
    }

    /// Whether agents may send requests (`web.domain_requests`).
    pub fn enabled(&self) -> bool {
        self.config.web.domain_requests
    }

    /// Forgets full rate-limit buckets (call periodically).
    pub fn housekeep(&self) {
        self.per_ip.housekeep();
    }

    /// `web.client_url` for a homeserver.
    fn client_link(&self, homeserver: Option<&str>) -> Option<String> {
        let url = self.config.web.client_url.as_ref()?;
        let hs = homeserver?;
        Some(url.replace("{homeserver}", &percent_encode_unreserved(hs)))
    }

    /// Runs a blocking part on the database pool.
    async fn run<T, F>(&self, f: F) -> Result<T, DomainRequestError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T, DomainRequestError> + Send + 'static,
    {
        self.db.run(move |conn| Ok(f(conn))).await?
    }

    /// "Which homeserver is mine?": the live policy's decision for `address`, as an agent
    /// should read it (the public name of the homeserver).
    pub fn check(&self, address: &str) -> Result<AddressCheck, DomainRequestError> {
        let address = normalize_email(address)
            .map_err(|e| DomainRequestError::InvalidAddress(e.to_string()))?;
        let now = self.clock.now_ms();
        let index = self.allowlist.index();
        let decision = index.decide(&address, now);
        let unknown_domain = decision.rule_id.is_none();
        let verdict = match decision.outcome {
            Outcome::Allowed => ReasonCode::Allowed,
            Outcome::InviteRequired => ReasonCode::InviteRequired,
            // A deny rule on a public provider's domain (gmail.com): the policy's stable code says
            // `denied_domain` (a deny rule first, as /info answers); an agent is told why the
            // address can never do, so that they use their work address instead.
            Outcome::Denied
                if decision.reason_code == ReasonCode::DeniedDomain
                    && public_provider(address.ascii_domain()).is_some() =>
            {
                ReasonCode::PublicMailProvider
            }
            Outcome::Denied => decision.reason_code,
        };
        let may_request =
            self.enabled() && unknown_domain && verdict != ReasonCode::PublicMailProvider;
        let organisation = decision.organisation.clone();
        let answer = shard_answer(decision, false);
        let client_link = self.client_link(answer.hs.as_deref());
        Ok(AddressCheck {
            domain: address.domain().to_owned(),
            address: address.as_str().to_owned(),
            verdict,
            homeserver: answer.hs,
            organisation,
            unknown_domain,
            may_request,
            client_link,
        })
    }

    /// Takes a request: checked, rate limited, stored unconfirmed, and a mail with the
    /// confirmation link queued in the same transaction. `ip` is the client's.
    pub async fn submit(
        &self,
        request: NewDomainRequest,
        ip: Option<IpAddr>,
    ) -> Result<Submitted, DomainRequestError> {
        if !self.enabled() {
            return Err(DomainRequestError::Disabled);
        }
        let check = self.check(&request.address)?;
        if !check.may_request {
            return Err(DomainRequestError::NotNeeded);
        }
        let name = line_field("name", &request.name, MAX_NAME_CHARS)?;
        let organisation = line_field(
            "organisation",
            &request.organisation,
            MAX_ORGANISATION_CHARS,
        )?;
        let message = text_field("message", request.message.as_deref(), MAX_MESSAGE_CHARS)?;
        if let Some(ip) = ip {
            self.per_ip
                .check(&ip)
                .map_err(|retry_after_ms| DomainRequestError::RateLimited { retry_after_ms })?;
        }
        let domain = normalize_domain(&check.domain)
            .map_err(|e| DomainRequestError::InvalidAddress(e.to_string()))?;
        let now = self.clock.now_ms();
        let token = crate::secret::random_token(&mut rand::rngs::OsRng, 32);
        let mut row = DomainRequestRow {
            id: crate::secret::random_id(),
            domain: domain.clone(),
            address: check.address.clone(),
            name,
            organisation,
            message,
            language: request.language.code().to_owned(),
            status: "unconfirmed".into(),
            token_hash: Some(token_hash(&token)),
            created_at: now,
            confirmed_at: None,
            decided_at: None,
            decided_by: None,
            decision_message: None,
        };
        let base = self.config.public_base_url();
        let limit = self.config.web.domain_requests_per_domain;
        let (mailer, templates, config) = (
            self.mailer.clone(),
            self.templates.clone(),
            self.config.clone(),
        );
        let language = request.language;
        let outcome = self
            .run(move |conn| {
                crate::store::transaction(conn, |conn| {
                    let open = store::open_for_address(conn, &row.address)?;
                    if open
                        .iter()
                        .any(|r| r.status == "pending" && r.domain == row.domain)
                    {
                        return Ok(Ok(Submitted::AlreadyPending));
                    }
                    if let Err(retry_after_ms) = crate::store::ratelimits::take(
                        conn,
                        &format!("domain_request:{}", row.domain),
                        &limit,
                        now,
                    )? {
                        return Ok(Err(retry_after_ms));
                    }
                    let renewed = open.iter().find(|r| r.status == "unconfirmed");
                    if let Some(old) = renewed {
                        row.id = old.id.clone();
                        // The previous link stops working; its queued mail is obsolete.
                        outbox::supersede(conn, MAIL_KIND, &format!("{}:confirm", row.id), now)?;
                        store::renew(conn, &row)?;
                    } else {
                        store::insert(conn, &row)?;
                    }
                    let link = format!(
                        "{base}/request/confirm?id={}&token={}",
                        percent_encode_unreserved(&row.id),
                        percent_encode_unreserved(&token)
                    );
                    let mail = DomainRequestMail {
                        stage: DomainRequestStage::Confirm { link },
                        name: row.name.clone(),
                        domain: idna::domain_to_unicode(&row.domain).0,
                        organisation: row.organisation.clone(),
                        service_name: config.web.service_name.clone(),
                    };
                    queue_mail(
                        conn, &mailer, &templates, language, &row, &mail, "confirm", now,
                    )?;
                    Ok::<_, DomainRequestError>(Ok(Submitted::MailSent))
                })
            })
            .await?;
        match outcome {
            Ok(submitted) => {
                if submitted == Submitted::MailSent {
                    self.mailer.wake();
                    tracing::info!(domain = %domain, "domain request received, confirmation mail queued");
                }
                Ok(submitted)
            }
            Err(retry_after_ms) => Err(DomainRequestError::RateLimited { retry_after_ms }),
        }
    }

    /// Follows a confirmation link: the request joins the administrators' queue. Returns the
    /// domain.
    pub async fn confirm(&self, id: &str, token: &str) -> Result<String, DomainRequestError> {
        let now = self.clock.now_ms();
        let (id, hash) = (id.to_owned(), token_hash(token));
        self.db
            .run(move |conn| {
                let Some(row) = store::get(conn, &id)? else {
                    return Ok(Err(DomainRequestError::InvalidLink));
                };
                if row.status == "pending" {
                    // The link followed twice: already done.
                    return Ok(Ok(row.domain));
                }
                let matches = row
                    .token_hash
                    .as_deref()
                    .is_some_and(|stored| bool::from(stored.as_bytes().ct_eq(hash.as_bytes())));
                if row.status != "unconfirmed"
                    || !matches
                    || now.saturating_sub(row.created_at) > CONFIRM_WITHIN_MS
                {
                    return Ok(Err(DomainRequestError::InvalidLink));
                }
                store::confirm(conn, &id, now)?;
                Ok(Ok(row.domain))
            })
            .await?
    }

    /// The pending requests, grouped by domain, most requested first.
    pub async fn queue(&self) -> Result<Vec<QueuedDomain>, DomainRequestError> {
        let rows = self
            .db
            .run(|conn| store::list(conn, Some("pending"), None, 100_000))
            .await?;
        let mut by_domain: BTreeMap<String, Vec<DomainRequestRow>> = BTreeMap::new();
        for row in rows {
            by_domain.entry(row.domain.clone()).or_default().push(row);
        }
        let mut queue: Vec<QueuedDomain> = by_domain
            .into_iter()
            .map(|(domain, rows)| {
                let mut named: BTreeMap<String, usize> = BTreeMap::new();
                for r in &rows {
                    *named.entry(r.organisation.clone()).or_default() += 1;
                }
                let mut organisations: Vec<(String, usize)> = named.into_iter().collect();
                organisations.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                QueuedDomain {
                    domain,
                    requesters: rows.len(),
                    organisations: organisations.into_iter().map(|(o, _)| o).collect(),
                    first_requested_at: rows.iter().map(|r| r.created_at).min().unwrap_or(0),
                    last_requested_at: rows.iter().map(|r| r.created_at).max().unwrap_or(0),
                }
            })
            .collect();
        queue.sort_by(|a, b| {
            b.requesters
                .cmp(&a.requesters)
                .then_with(|| a.domain.cmp(&b.domain))
        });
        Ok(queue)
    }

    /// The number of domains waiting in the queue.
    pub async fn pending_domains(&self) -> Result<usize, DomainRequestError> {
        let rows = self
            .db
            .run(|conn| store::pending_per_domain(conn, 100_000))
            .await?;
        Ok(rows.len())
    }

    /// The (confirmed) requests for a domain; all statuses with `status = None`.
    pub async fn requests(
        &self,
        domain: &str,
        status: Option<&str>,
    ) -> Result<Vec<DomainRequestView>, DomainRequestError> {
        let domain = normalize_domain(domain)
            .map_err(|e| DomainRequestError::InvalidAddress(e.to_string()))?;
        let status = status.map(str::to_owned);
        let rows = self
            .db
            .run(move |conn| store::list(conn, status.as_deref(), Some(&domain), 10_000))
            .await?;
        Ok(rows.into_iter().map(DomainRequestView::of).collect())
    }

    /// Accepts the pending requests of `domain`, once a rule lets its addresses in; the
    /// requesters are told by mail.
    pub async fn accept(&self, domain: &str, actor: &Actor) -> Result<Decided, DomainRequestError> {
        let domain = normalize_domain(domain)
            .map_err(|e| DomainRequestError::InvalidAddress(e.to_string()))?;
        let probe = normalize_email(&format!("agent@{domain}"))
            .map_err(|e| DomainRequestError::InvalidAddress(e.to_string()))?;
        let decision = self.allowlist.decide(&probe, self.clock.now_ms());
        if decision.rule_id.is_none() || decision.outcome == Outcome::Denied {
            return Err(DomainRequestError::DomainNotAllowed(domain));
        }
        let hs = shard_answer(decision, false).hs;
        let client_link = self.client_link(hs.as_deref());
        self.decide(
            domain,
            "accepted",
            DomainRequestStage::Accepted { client_link },
            None,
            actor,
        )
        .await
    }

    /// Declines the pending requests of `domain` with an optional message; the requesters are
    /// told by mail.
    pub async fn decline(
        &self,
        domain: &str,
        message: Option<&str>,
        actor: &Actor,
    ) -> Result<Decided, DomainRequestError> {
        let domain = normalize_domain(domain)
            .map_err(|e| DomainRequestError::InvalidAddress(e.to_string()))?;
        let message = text_field("message", message, MAX_DECLINE_CHARS)?;
        self.decide(
            domain,
            "declined",
            DomainRequestStage::Declined {
                message: message.clone(),
            },
            message,
            actor,
        )
        .await
    }

    async fn decide(
        &self,
        domain: String,
        status: &'static str,
        stage: DomainRequestStage,
        message: Option<String>,
        actor: &Actor,
    ) -> Result<Decided, DomainRequestError> {
        let now = self.clock.now_ms();
        let (mailer, templates, config, actor) = (
            self.mailer.clone(),
            self.templates.clone(),
            self.config.clone(),
            actor.clone(),
        );
        let default_language = self.mailer.default_language();
        let target_domain = domain.clone();
        let told = self
            .run(move |conn| {
                crate::store::transaction(conn, |conn| {
                    let rows = store::decide_pending(
                        conn,
                        &domain,
                        status,
                        actor.as_str(),
                        message.as_deref(),
                        now,
                    )?;
                    if rows.is_empty() {
                        return Ok(None);
                    }
                    for row in &rows {
                        let mail = DomainRequestMail {
                            stage: stage.clone(),
                            name: row.name.clone(),
                            domain: idna::domain_to_unicode(&row.domain).0,
                            organisation: row.organisation.clone(),
                            service_name: config.web.service_name.clone(),
                        };
                        let language = Language::new(&row.language).unwrap_or(default_language);
                        queue_mail(conn, &mailer, &templates, language, row, &mail, status, now)?;
                    }
                    audit::record(
                        conn,
                        &actor,
                        if status == "accepted" {
                            audit::action::DOMAIN_REQUEST_ACCEPT
                        } else {
                            audit::action::DOMAIN_REQUEST_DECLINE
                        },
                        &format!("domain:{domain}"),
                        None,
                        Some(&serde_json::json!({
                            "status": status,
                            "requesters": rows.len(),
                            "message": message,
                        })),
                        now,
                    )?;
                    Ok::<_, DomainRequestError>(Some(rows.len()))
                })
            })
            .await?;
        let Some(told) = told else {
            return Err(DomainRequestError::NotFound(target_domain));
        };
        self.mailer.wake();
        Ok(Decided {
            domain: target_domain,
            status: status.to_owned(),
            requesters_told: told,
        })
    }

    /// Deletes requests older than `web.domain_requests_retention`, and unconfirmed ones whose
    /// link has expired; how many.
    pub async fn purge(&self) -> Result<usize, DomainRequestError> {
        let now = self.clock.now_ms();
        let retention = self.config.web.domain_requests_retention.as_millis_i64();
        Ok(self
            .db
            .run(move |conn| {
                store::purge(
                    conn,
                    now.saturating_sub(retention),
                    now.saturating_sub(CONFIRM_WITHIN_MS),
                )
            })
            .await?)
    }
}

/// Renders, builds and queues one request mail inside the caller's transaction.
#[allow(clippy::too_many_arguments)]
fn queue_mail(
    conn: &mut DbConn,
    mailer: &Mailer,
    templates: &DomainRequestTemplates,
    language: Language,
    row: &DomainRequestRow,
    mail: &DomainRequestMail,
    stage: &str,
    now: i64,
) -> Result<(), DomainRequestError> {
    let rendered = templates.render(language, mailer.default_language(), mail)?;
    let message = mailer.compose(&row.address, &rendered, now, &mut rand::rngs::OsRng)?;
    outbox::enqueue(
        conn,
        &message,
        MAIL_KIND,
        &format!("{}:{stage}", row.id),
        now,
    )?;
    Ok(())
}

/// Starts the hourly purge of old requests on the current runtime.
pub fn start_purge_job(service: &Arc<DomainRequests>) {
    let service = service.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(3600));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match service.purge().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "old domain requests deleted"),
                Err(e) => tracing::warn!(error = %e, "domain request purge failed"),
            }
            service.housekeep();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_trimmed_and_checked() {
        assert_eq!(line_field("name", "  Jeanne ", 10).unwrap(), "Jeanne");
        assert!(matches!(
            line_field("name", "  ", 10),
            Err(DomainRequestError::InvalidField {
                field: "name",
                problem: FieldProblem::Missing
            })
        ));
        assert!(matches!(
            line_field("name", "a\u{7}b", 10),
            Err(DomainRequestError::InvalidField {
                problem: FieldProblem::ControlCharacters,
                ..
            })
        ));
        assert!(matches!(
            line_field("name", &"é".repeat(11), 10),
            Err(DomainRequestError::InvalidField {
                problem: FieldProblem::TooLong(10),
                ..
            })
        ));
        assert_eq!(text_field("message", Some(" \r\n "), 10).unwrap(), None);
        assert_eq!(
            text_field("message", Some("a\r\nb"), 10)
                .unwrap()
                .as_deref(),
            Some("a\nb")
        );
        assert!(text_field("message", Some("a\u{0}"), 10).is_err());
    }

    #[test]
    fn links_are_percent_encoded() {
        assert_eq!(percent_encode_unreserved("a b/c~"), "a%20b%2Fc~");
    }
}
