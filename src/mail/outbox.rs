//! The mail service and its outbox: messages are queued in the database inside the
//! transaction that decided them ([`enqueue`]), then delivered by a worker that is woken at once
//! ([`wake`]) and retries failed deliveries with exponential backoff. Nothing is lost when the
//! mail server is down, and a row is never sent by two workers (see `store::outbox`).

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::sync::Notify;

use super::{
    Language, MailError, MailTransport, OutgoingMessage, RenderedMail, SendError, SmtpSettings,
    Templates, build_message,
};
use crate::clock::SharedClock;
use crate::config::{Config, MailTransportKind, OutboxConfig};
use crate::store::outbox::{self as store, ClaimedRow, NewOutboxRow};
use crate::store::{Db, DbConn, StoreError};

/// What an instance needs to send mail: the templates (loaded once), the transport, and the
/// outbox worker's wake-up channel.
pub struct Mailer {
    db: Db,
    clock: SharedClock,
    templates: arc_swap::ArcSwap<Templates>,
    templates_dir: Option<std::path::PathBuf>,
    transport: MailTransport,
    from: String,
    message_id_domain: String,
    default_language: Language,
    outbox: OutboxConfig,
    lease: Duration,
    worker_id: String,
    wake: Notify,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("transport", &self.transport.name())
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Loads the templates (a broken override is an error naming its file) and sets up the
    /// transport (creates the mail folder; reads the SMTP password file and CA file).
    pub fn from_config(config: &Config, db: Db, clock: SharedClock) -> Result<Mailer, MailError> {
        let templates = Templates::load(config.mail.templates_dir.as_deref())?;
        templates.check_default_language(config.mail.default_language)?;
        let transport = match config.mail.transport {
            MailTransportKind::File => MailTransport::file(config.mail_file_dir())?,
            MailTransportKind::Smtp => {
                let s = &config.mail.smtp;
                let password = s.read_password().map_err(|e| MailError::Smtp(e.0))?;
                MailTransport::smtp(&SmtpSettings {
                    host: s.host.clone(),
                    port: s.port,
                    security: s.security,
                    username: s.username.clone(),
                    password,
                    ca_file: s.ca_file.clone(),
                    timeout: s.timeout.0,
                    hello_name: s.hello_name.clone(),
                })?
            }
        };
        let from = config.mail.from.trim().to_string();
        let mailbox: lettre::message::Mailbox = from.parse().map_err(|e| MailError::Address {
            role: "from",
            reason: format!("{e}"),
        })?;
        let message_id_domain = idna::domain_to_ascii(mailbox.email.domain())
            .ok()
            .filter(|d| !d.is_empty() && !d.starts_with('['))
            .unwrap_or_else(|| "localhost".to_string());
        // A lease outlives the longest delivery (bounded by the SMTP timeout), so a row is
        // claimed again only when its worker is gone.
        let lease = config.mail.smtp.timeout.0 * 2 + Duration::from_secs(30);
        Ok(Mailer {
            db,
            clock,
            templates: arc_swap::ArcSwap::from_pointee(templates),
            templates_dir: config.mail.templates_dir.clone(),
            transport,
            from,
            message_id_domain,
            default_language: config.mail.default_language,
            outbox: config.mail.outbox.clone(),
            lease,
            worker_id: crate::secret::random_id(),
            wake: Notify::new(),
        })
    }

    /// The loaded mail templates.
    pub fn templates(&self) -> std::sync::Arc<Templates> {
        self.templates.load_full()
    }

    /// Reads the templates again (SIGHUP); a broken override leaves the current ones in use.
    pub fn reload_templates(&self) -> Result<(), MailError> {
        let templates = Templates::load(self.templates_dir.as_deref())?;
        templates.check_default_language(self.default_language)?;
        self.templates.store(std::sync::Arc::new(templates));
        Ok(())
    }

    /// The languages mails can be written in.
    pub fn languages(&self) -> Vec<Language> {
        self.templates.load().languages().to_vec()
    }

    /// Chooses a mail's language from an HTTP `Accept-Language` value.
    pub fn negotiate_language(&self, accept_language: Option<&str>) -> Language {
        let templates = self.templates.load();
        super::negotiate_language(
            accept_language,
            templates.languages(),
            self.default_language,
        )
    }

    /// The configured default language.
    pub fn default_language(&self) -> Language {
        self.default_language
    }

    /// The transport's name (`smtp`, `file`).
    pub fn transport_name(&self) -> &'static str {
        self.transport.name()
    }

    /// Builds the message of `mail` to `to`, from the configured sender.
    pub fn compose(
        &self,
        to: &str,
        mail: &RenderedMail,
        now_ms: i64,
        rng: &mut impl RngCore,
    ) -> Result<OutgoingMessage, MailError> {
        build_message(&self.from, to, mail, &self.message_id_domain, now_ms, rng)
    }

    /// Wakes this instance's outbox worker (call after the enqueuing transaction committed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Queues a built message inside the caller's transaction. `kind` says what the mail is
/// (`verification`, `invite`); `dedupe_key` names the logical mail within its kind, so that a
/// second enqueue of the same mail is a no-op (`false`).
pub fn enqueue(
    conn: &mut DbConn,
    msg: &OutgoingMessage,
    kind: &str,
    dedupe_key: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let domain = msg.to.rsplit_once('@').map_or("", |(_, d)| d);
    let id = crate::secret::random_id();
    store::insert(
        conn,
        &NewOutboxRow {
            id: &id,
            kind,
            dedupe_key,
            message_id: &msg.message_id,
            sender: &msg.from,
            recipient: &msg.to,
            recipient_domain: domain,
            body: &msg.raw,
            now_ms,
        },
    )
}

/// Cancels a queued, not yet sent mail (its content is obsolete: a newer token replaced the
/// one it carries); whether there was one.
pub fn supersede(
    conn: &mut DbConn,
    kind: &str,
    dedupe_key: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    store::supersede(conn, kind, dedupe_key, now_ms)
}

impl Mailer {
    /// Delivers every due row this worker can claim; returns how many rows were handled.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        let mut handled = 0;
        while self.deliver_one().await?.is_some() {
            handled += 1;
        }
        Ok(handled)
    }

    /// Claims and delivers one due row, if there is one.
    pub async fn deliver_one(&self) -> Result<Option<Delivery>, StoreError> {
        let mailer = self;
        let now = self.clock.now_ms();
        let lease_until = now.saturating_add(i64::try_from(mailer.lease.as_millis()).unwrap_or(0));
        let worker = mailer.worker_id.clone();
        let Some(row) = self
            .db
            .run(move |conn| store::claim(conn, &worker, now, lease_until))
            .await?
        else {
            return Ok(None);
        };
        let attempts = row.attempts.saturating_add(1);
        // Ok, or (permanent?, redacted summary).
        let result: Result<(), (bool, String)> = match &row.body {
            Some(raw) => {
                let msg = OutgoingMessage {
                    from: row.sender.clone(),
                    to: row.recipient.clone(),
                    message_id: row.message_id.clone(),
                    raw: raw.clone(),
                };
                mailer
                    .transport
                    .send(&msg)
                    .await
                    .map_err(|e: SendError| (e.is_permanent(), e.summary().to_string()))
            }
            None => Err((true, "the stored message has no body".to_string())),
        };
        let delivery = match &result {
            Ok(()) => Delivery::Sent,
            Err((true, _)) => Delivery::Failed,
            Err(_) if u32::try_from(attempts).unwrap_or(u32::MAX) >= mailer.outbox.max_attempts => {
                Delivery::Failed
            }
            Err(_) => Delivery::Retry,
        };
        let finished_at = self.clock.now_ms();
        let error = result.as_ref().err().map(|(_, summary)| summary.clone());
        let next_attempt_at = finished_at.saturating_add(
            i64::try_from(
                backoff(&mailer.outbox, u32::try_from(attempts).unwrap_or(u32::MAX)).as_millis(),
            )
            .unwrap_or(i64::MAX),
        );
        let record = || {
            let (worker, id, error) = (mailer.worker_id.clone(), row.id.clone(), error.clone());
            self.db.run(move |conn| {
                let error = error.as_deref().unwrap_or("");
                match delivery {
                    Delivery::Sent => store::mark_sent(conn, &id, &worker, attempts, finished_at),
                    Delivery::Retry => {
                        store::mark_retry(conn, &id, &worker, attempts, error, next_attempt_at)
                    }
                    Delivery::Failed => {
                        store::mark_failed(conn, &id, &worker, attempts, error, finished_at)
                    }
                }
            })
        };
        // A mail handed to the server but not recorded as sent would go out again when the
        // lease ends: while the database is briefly away (a restart), keep trying to record it
        // for half the lease.
        let mut recorded = record().await;
        let give_up = std::time::Instant::now() + mailer.lease / 2;
        while let Err(e) = &recorded {
            if !e.is_unavailable() || std::time::Instant::now() >= give_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            recorded = record().await;
        }
        report(&row, attempts, delivery, &result);
        match recorded {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                outbox_id = %row.id,
                "outbox row changed hands while it was being delivered (its lease had ended)"
            ),
            // The row stays claimed; it is tried again when the lease ends.
            Err(e) => return Err(e),
        }
        Ok(Some(delivery))
    }

    /// Updates the queue gauges (`annuaire_outbox_queued`, `annuaire_outbox_oldest_unsent_seconds`).
    async fn update_gauges(&self) {
        let now = self.clock.now_ms();
        match self.db.run(store::queued_stats).await {
            Ok((count, oldest)) => {
                #[allow(clippy::cast_precision_loss)]
                let age = oldest.map_or(0.0, |t| (now.saturating_sub(t)).max(0) as f64 / 1000.0);
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("annuaire_outbox_queued").set(count as f64);
                metrics::gauge!("annuaire_outbox_oldest_unsent_seconds").set(age);
            }
            Err(e) => tracing::warn!(error = %e, "could not read the outbox statistics"),
        }
    }

    /// How long the worker may sleep: until the next row is due, at most `poll_interval`.
    async fn idle_time(&self) -> Duration {
        let poll = self.outbox.poll_interval.0;
        let now = self.clock.now_ms();
        match self.db.run(move |conn| store::next_due(conn, now)).await {
            Ok(Some(due)) => {
                let wait = u64::try_from(due.saturating_sub(now)).unwrap_or(0);
                // Never spin: a row due now that could not be claimed is someone else's.
                Duration::from_millis(wait).clamp(Duration::from_millis(50), poll)
            }
            Ok(None) => poll,
            Err(e) => {
                tracing::warn!(error = %e, "outbox: cannot read the queue");
                poll.min(Duration::from_secs(5))
            }
        }
    }
}

/// Wait before retry number `attempts` (1 = after the first failure): the initial backoff,
/// doubled each time, capped.
pub fn backoff(config: &OutboxConfig, attempts: u32) -> Duration {
    crate::clock::backoff(config.initial_backoff.0, config.max_backoff.0, attempts)
}

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sent.
    Sent,
    /// Failed for now; will be retried.
    Retry,
    /// Given up.
    Failed,
}

/// Logs and counts one delivery (the domain only, never the address).
fn report(
    row: &ClaimedRow,
    attempts: i32,
    delivery: Delivery,
    result: &Result<(), (bool, String)>,
) {
    let kind = row.kind.clone();
    match delivery {
        Delivery::Sent => {
            metrics::counter!("annuaire_outbox_sent_total", "kind" => kind).increment(1);
            tracing::info!(
                outbox_id = %row.id,
                kind = %row.kind,
                domain = %row.recipient_domain,
                attempts,
                "mail sent"
            );
        }
        Delivery::Retry => {
            metrics::counter!("annuaire_outbox_retries_total", "kind" => kind).increment(1);
            tracing::warn!(
                outbox_id = %row.id,
                kind = %row.kind,
                domain = %row.recipient_domain,
                attempts,
                error = result.as_ref().err().map_or("", |(_, summary)| summary.as_str()),
                "mail delivery failed; will retry"
            );
        }
        Delivery::Failed => {
            metrics::counter!("annuaire_outbox_failed_total", "kind" => kind).increment(1);
            tracing::error!(
                outbox_id = %row.id,
                kind = %row.kind,
                domain = %row.recipient_domain,
                attempts,
                error = result.as_ref().err().map_or("", |(_, summary)| summary.as_str()),
                "mail delivery given up"
            );
        }
    }
}

/// Starts this instance's outbox worker on the current runtime; it ends with the runtime.
/// Rows queued before a restart are delivered by the first pass.
pub fn start_worker(mailer: &Arc<Mailer>) {
    let mailer = mailer.clone();
    tokio::spawn(async move {
        tracing::info!(transport = mailer.transport_name(), "outbox worker started");
        loop {
            if let Err(e) = mailer.deliver_due().await {
                tracing::warn!(error = %e, "outbox: delivery pass failed");
            }
            mailer.update_gauges().await;
            let wait = mailer.idle_time().await;
            tokio::select! {
                () = mailer.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// Deletes the rows finished longer than `mail.outbox.retention` ago; how many.
pub fn purge(conn: &mut DbConn, config: &OutboxConfig, now_ms: i64) -> Result<usize, StoreError> {
    store::purge_finished(
        conn,
        now_ms.saturating_sub(config.retention.as_millis_i64()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    #[test]
    fn backoff_doubles_from_the_initial_wait_up_to_the_cap() {
        let c = OutboxConfig {
            initial_backoff: HumanDuration(Duration::from_secs(5)),
            max_backoff: HumanDuration(Duration::from_secs(600)),
            ..OutboxConfig::default()
        };
        let waits: Vec<u64> = (1..=9).map(|n| backoff(&c, n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff(&c, 0).as_secs(), 5);
        assert_eq!(backoff(&c, u32::MAX).as_secs(), 600);
    }
}
