//! The mail outbox: messages written in the transaction that decided them, claimed and sent by
//! workers (`mail::outbox`).
//!
//! A worker claims one due row at a time by setting a lease (`claimed_by`, `claimed_until`) in a
//! single statement: on PostgreSQL the candidate is chosen with `FOR UPDATE SKIP LOCKED`, so
//! workers of several instances never pick the same row; on SQLite the database's single writer
//! makes the statement atomic. Finishing a row requires still holding its lease, and a lease
//! outlives the longest possible delivery, so a row is never sent by two workers; a worker that
//! died leaves rows whose lease expires, and they are claimed again.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text};

use super::schema::mail_outbox::dsl as o;
use super::{DbConn, StoreError};
use crate::db_dispatch;

/// Waiting to be sent (or being sent, when its lease is live).
pub const QUEUED: &str = "queued";
/// Delivered; body and recipient erased.
pub const SENT: &str = "sent";
/// Given up (permanent failure or too many attempts); body and recipient erased.
pub const FAILED: &str = "failed";
/// Replaced by a newer message before it was sent (its token is no longer valid).
pub const SUPERSEDED: &str = "superseded";

/// A message to queue.
#[derive(Clone)]
pub struct NewOutboxRow<'a> {
    /// A fresh row id.
    pub id: &'a str,
    /// What the mail is (`verification`, `invite`).
    pub kind: &'a str,
    /// Names the logical mail within its kind (a second insert is a no-op).
    pub dedupe_key: &'a str,
    /// The message's `Message-ID`.
    pub message_id: &'a str,
    /// Envelope sender.
    pub sender: &'a str,
    /// Envelope recipient.
    pub recipient: &'a str,
    /// The recipient's domain, kept after the address is erased (statistics).
    pub recipient_domain: &'a str,
    /// The raw message.
    pub body: &'a [u8],
    /// Queued at (ms); due at once.
    pub now_ms: i64,
}

/// Queues a message; `false` when a row with the same (kind, dedupe key) already exists.
pub fn insert(conn: &mut DbConn, row: &NewOutboxRow<'_>) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::insert_into(o::mail_outbox)
        .values((
            o::id.eq(row.id),
            o::kind.eq(row.kind),
            o::dedupe_key.eq(row.dedupe_key),
            o::message_id.eq(row.message_id),
            o::sender.eq(row.sender),
            o::recipient.eq(row.recipient),
            o::recipient_domain.eq(row.recipient_domain),
            o::body.eq(Some(row.body)),
            o::status.eq(QUEUED),
            o::attempts.eq(0),
            o::created_at.eq(row.now_ms),
            o::next_attempt_at.eq(row.now_ms),
        ))
        .on_conflict((o::kind, o::dedupe_key))
        .do_nothing()
        .execute(c)?);
    Ok(n > 0)
}

/// Marks a queued message as superseded (not to be sent) and erases it; whether it was queued.
/// A message a live worker is sending right now is left alone: it goes out and is recorded as
/// sent.
pub fn supersede(
    conn: &mut DbConn,
    kind: &str,
    dedupe_key: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::update(
        o::mail_outbox
            .filter(o::kind.eq(kind))
            .filter(o::dedupe_key.eq(dedupe_key))
            .filter(o::status.eq(QUEUED))
            .filter(o::claimed_until.is_null().or(o::claimed_until.lt(now_ms))),
    )
    .set((
        o::status.eq(SUPERSEDED),
        o::body.eq(None::<Vec<u8>>),
        o::recipient.eq(""),
        o::finished_at.eq(Some(now_ms)),
    ))
    .execute(c)?);
    Ok(n > 0)
}

/// A row a worker has claimed.
#[derive(Clone, QueryableByName)]
pub struct ClaimedRow {
    /// Row id.
    #[diesel(sql_type = Text)]
    pub id: String,
    /// Mail kind.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// `Message-ID`.
    #[diesel(sql_type = Text)]
    pub message_id: String,
    /// Envelope sender.
    #[diesel(sql_type = Text)]
    pub sender: String,
    /// Envelope recipient.
    #[diesel(sql_type = Text)]
    pub recipient: String,
    /// Recipient's domain.
    #[diesel(sql_type = Text)]
    pub recipient_domain: String,
    /// The raw message (absent only if the row was damaged).
    #[diesel(sql_type = Nullable<Binary>)]
    pub body: Option<Vec<u8>>,
    /// Deliveries tried before this one.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// Queued at (ms).
    #[diesel(sql_type = BigInt)]
    pub created_at: i64,
}

// The body carries a token and the recipient an address.
impl std::fmt::Debug for ClaimedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedRow")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("message_id", &self.message_id)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

const CLAIM_PG: &str = "UPDATE mail_outbox SET claimed_by = $1, claimed_until = $2 \
    WHERE id = (SELECT id FROM mail_outbox \
                WHERE status = 'queued' AND next_attempt_at <= $3 \
                  AND (claimed_until IS NULL OR claimed_until < $3) \
                ORDER BY next_attempt_at, created_at LIMIT 1 \
                FOR UPDATE SKIP LOCKED) \
      AND status = 'queued' AND (claimed_until IS NULL OR claimed_until < $3) \
    RETURNING id, kind, message_id, sender, recipient, recipient_domain, body, attempts, created_at";

const CLAIM_SQLITE: &str = "UPDATE mail_outbox SET claimed_by = ?1, claimed_until = ?2 \
    WHERE id = (SELECT id FROM mail_outbox \
                WHERE status = 'queued' AND next_attempt_at <= ?3 \
                  AND (claimed_until IS NULL OR claimed_until < ?3) \
                ORDER BY next_attempt_at, created_at LIMIT 1) \
      AND status = 'queued' AND (claimed_until IS NULL OR claimed_until < ?3) \
    RETURNING id, kind, message_id, sender, recipient, recipient_domain, body, attempts, created_at";

/// Claims the oldest due row for `worker` until `lease_until` (ms), if any.
pub fn claim(
    conn: &mut DbConn,
    worker: &str,
    now_ms: i64,
    lease_until: i64,
) -> Result<Option<ClaimedRow>, StoreError> {
    let rows: Vec<ClaimedRow> = match conn {
        DbConn::Pg(c) => diesel::sql_query(CLAIM_PG)
            .bind::<Text, _>(worker)
            .bind::<BigInt, _>(lease_until)
            .bind::<BigInt, _>(now_ms)
            .load(c)?,
        DbConn::Sqlite(c) => diesel::sql_query(CLAIM_SQLITE)
            .bind::<Text, _>(worker)
            .bind::<BigInt, _>(lease_until)
            .bind::<BigInt, _>(now_ms)
            .load(c)?,
    };
    Ok(rows.into_iter().next())
}

/// The row `id` while `worker` holds its lease and it is still queued.
macro_rules! held {
    ($id:expr, $worker:expr) => {
        o::mail_outbox
            .filter(o::id.eq($id))
            .filter(o::claimed_by.eq($worker))
            .filter(o::status.eq(QUEUED))
    };
}

/// Delivered: erases body and recipient. `false` if the lease was lost meanwhile.
pub fn mark_sent(
    conn: &mut DbConn,
    id: &str,
    worker: &str,
    attempts: i32,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::update(held!(id, worker))
        .set((
            o::status.eq(SENT),
            o::attempts.eq(attempts),
            o::body.eq(None::<Vec<u8>>),
            o::recipient.eq(""),
            o::claimed_by.eq(None::<String>),
            o::claimed_until.eq(None::<i64>),
            o::finished_at.eq(Some(now_ms)),
        ))
        .execute(c)?);
    Ok(n > 0)
}

/// A transient failure: try again at `next_attempt_at`.
pub fn mark_retry(
    conn: &mut DbConn,
    id: &str,
    worker: &str,
    attempts: i32,
    error: &str,
    next_attempt_at: i64,
) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::update(held!(id, worker))
        .set((
            o::attempts.eq(attempts),
            o::last_error.eq(Some(error)),
            o::next_attempt_at.eq(next_attempt_at),
            o::claimed_by.eq(None::<String>),
            o::claimed_until.eq(None::<i64>),
        ))
        .execute(c)?);
    Ok(n > 0)
}

/// Given up: erases body and recipient, keeps the error.
pub fn mark_failed(
    conn: &mut DbConn,
    id: &str,
    worker: &str,
    attempts: i32,
    error: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::update(held!(id, worker))
        .set((
            o::status.eq(FAILED),
            o::attempts.eq(attempts),
            o::last_error.eq(Some(error)),
            o::body.eq(None::<Vec<u8>>),
            o::recipient.eq(""),
            o::claimed_by.eq(None::<String>),
            o::claimed_until.eq(None::<i64>),
            o::finished_at.eq(Some(now_ms)),
        ))
        .execute(c)?);
    Ok(n > 0)
}

/// When the next queued row becomes claimable (due time, or the end of a live lease); `None`
/// when nothing is queued.
pub fn next_due(conn: &mut DbConn, now_ms: i64) -> Result<Option<i64>, StoreError> {
    use diesel::dsl::min;
    let unclaimed: Option<i64> = db_dispatch!(conn, c => o::mail_outbox
        .filter(o::status.eq(QUEUED))
        .filter(o::claimed_until.is_null().or(o::claimed_until.lt(now_ms)))
        .select(min(o::next_attempt_at))
        .first::<Option<i64>>(c)?);
    let leased: Option<i64> = db_dispatch!(conn, c => o::mail_outbox
        .filter(o::status.eq(QUEUED))
        .filter(o::claimed_until.ge(now_ms))
        .select(min(o::claimed_until))
        .first::<Option<i64>>(c)?);
    // A leased row becomes claimable just after its lease ends (the claim wants `< now`).
    let leased = leased.map(|t| t.saturating_add(1));
    Ok(match (unclaimed, leased) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// The number of queued rows and the creation time of the oldest one.
pub fn queued_stats(conn: &mut DbConn) -> Result<(i64, Option<i64>), StoreError> {
    use diesel::dsl::min;
    let count = db_dispatch!(conn, c => o::mail_outbox
        .filter(o::status.eq(QUEUED))
        .count()
        .get_result::<i64>(c)?);
    let oldest: Option<i64> = db_dispatch!(conn, c => o::mail_outbox
        .filter(o::status.eq(QUEUED))
        .select(min(o::created_at))
        .first::<Option<i64>>(c)?);
    Ok((count, oldest))
}

/// Deletes finished rows (sent, failed, superseded) finished before `before_ms`; how many.
pub fn purge_finished(conn: &mut DbConn, before_ms: i64) -> Result<usize, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(
        o::mail_outbox
            .filter(o::status.ne(QUEUED))
            .filter(o::finished_at.lt(before_ms)),
    )
    .execute(c)?);
    Ok(n)
}

/// A row as an operator (or a test) sees it: no body, only whether there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Row id.
    pub id: String,
    /// Mail kind.
    pub kind: String,
    /// Logical mail key.
    pub dedupe_key: String,
    /// `Message-ID`.
    pub message_id: String,
    /// Recipient's domain.
    pub recipient_domain: String,
    /// `queued`, `sent`, `failed` or `superseded`.
    pub status: String,
    /// Deliveries tried.
    pub attempts: i32,
    /// The last delivery error (redacted).
    pub last_error: Option<String>,
    /// Queued at (ms).
    pub created_at: i64,
    /// Next delivery attempt (ms).
    pub next_attempt_at: i64,
    /// Finished at (ms).
    pub finished_at: Option<i64>,
    /// Whether the body is still stored.
    pub has_body: bool,
    /// Whether the recipient address is still stored.
    pub has_recipient: bool,
}

/// Every row, oldest first.
pub fn list(conn: &mut DbConn) -> Result<Vec<OutboxEntry>, StoreError> {
    type Row = (
        String,
        String,
        String,
        String,
        String,
        String,
        i32,
        Option<String>,
        i64,
        i64,
        Option<i64>,
        Option<Vec<u8>>,
        String,
    );
    let rows: Vec<Row> = db_dispatch!(conn, c => o::mail_outbox
        .select((
            o::id,
            o::kind,
            o::dedupe_key,
            o::message_id,
            o::recipient_domain,
            o::status,
            o::attempts,
            o::last_error,
            o::created_at,
            o::next_attempt_at,
            o::finished_at,
            o::body,
            o::recipient,
        ))
        .order((o::created_at, o::id))
        .load::<Row>(c)?);
    Ok(rows
        .into_iter()
        .map(|r| OutboxEntry {
            id: r.0,
            kind: r.1,
            dedupe_key: r.2,
            message_id: r.3,
            recipient_domain: r.4,
            status: r.5,
            attempts: r.6,
            last_error: r.7,
            created_at: r.8,
            next_attempt_at: r.9,
            finished_at: r.10,
            has_body: r.11.is_some(),
            has_recipient: !r.12.is_empty(),
        })
        .collect())
}
