//! Agents' requests for their administration to be added ("my administration is not listed").

use diesel::prelude::*;

use super::schema::domain_requests::dsl as d;
use super::{DbConn, StoreError};
use crate::db_dispatch;

/// A request as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct DomainRequestRow {
    /// Random id.
    pub id: String,
    /// The requested domain (IDNA ASCII).
    pub domain: String,
    /// The requester's address (normalised).
    pub address: String,
    /// The requester's name, as typed.
    pub name: String,
    /// Their administration, as typed.
    pub organisation: String,
    /// Their optional message.
    pub message: Option<String>,
    /// The language of their mails.
    pub language: String,
    /// `unconfirmed`, `pending`, `accepted` or `declined`.
    pub status: String,
    /// SHA-256 (hex) of the confirmation token while unconfirmed.
    pub token_hash: Option<String>,
    /// When it was made (ms).
    pub created_at: i64,
    /// When the mail's link was followed (ms).
    pub confirmed_at: Option<i64>,
    /// When it was accepted or declined (ms).
    pub decided_at: Option<i64>,
    /// Who decided (an admin's username).
    pub decided_by: Option<String>,
    /// The message sent with a refusal.
    pub decision_message: Option<String>,
}

type Columns = (
    d::id,
    d::domain,
    d::address,
    d::name,
    d::organisation,
    d::message,
    d::language,
    d::status,
    d::token_hash,
    d::created_at,
    d::confirmed_at,
    d::decided_at,
    d::decided_by,
    d::decision_message,
);

const COLUMNS: Columns = (
    d::id,
    d::domain,
    d::address,
    d::name,
    d::organisation,
    d::message,
    d::language,
    d::status,
    d::token_hash,
    d::created_at,
    d::confirmed_at,
    d::decided_at,
    d::decided_by,
    d::decision_message,
);

/// Stores a new request.
pub fn insert(conn: &mut DbConn, row: &DomainRequestRow) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::insert_into(d::domain_requests)
        .values((
            d::id.eq(&row.id),
            d::domain.eq(&row.domain),
            d::address.eq(&row.address),
            d::name.eq(&row.name),
            d::organisation.eq(&row.organisation),
            d::message.eq(&row.message),
            d::language.eq(&row.language),
            d::status.eq(&row.status),
            d::token_hash.eq(&row.token_hash),
            d::created_at.eq(row.created_at),
            d::confirmed_at.eq(row.confirmed_at),
            d::decided_at.eq(row.decided_at),
            d::decided_by.eq(&row.decided_by),
            d::decision_message.eq(&row.decision_message),
        ))
        .execute(c)?);
    Ok(())
}

/// One request by id.
pub fn get(conn: &mut DbConn, id: &str) -> Result<Option<DomainRequestRow>, StoreError> {
    Ok(db_dispatch!(conn, c => d::domain_requests
        .filter(d::id.eq(id))
        .select(COLUMNS)
        .first::<DomainRequestRow>(c)
        .optional()?))
}

/// The open (unconfirmed or pending) requests of an address.
pub fn open_for_address(
    conn: &mut DbConn,
    address: &str,
) -> Result<Vec<DomainRequestRow>, StoreError> {
    Ok(db_dispatch!(conn, c => d::domain_requests
        .filter(d::address.eq(address))
        .filter(d::status.eq_any(["unconfirmed", "pending"]))
        .select(COLUMNS)
        .order(d::created_at.asc())
        .load::<DomainRequestRow>(c)?))
}

/// Replaces an unconfirmed request's fields and token (the agent asked again).
pub fn renew(conn: &mut DbConn, row: &DomainRequestRow) -> Result<(), StoreError> {
    db_dispatch!(conn, c => diesel::update(d::domain_requests.filter(d::id.eq(&row.id)))
        .set((
            d::name.eq(&row.name),
            d::organisation.eq(&row.organisation),
            d::message.eq(&row.message),
            d::language.eq(&row.language),
            d::token_hash.eq(&row.token_hash),
            d::created_at.eq(row.created_at),
        ))
        .execute(c)?);
    Ok(())
}

/// Marks an unconfirmed request confirmed (pending); whether it was unconfirmed.
pub fn confirm(conn: &mut DbConn, id: &str, now_ms: i64) -> Result<bool, StoreError> {
    let n = db_dispatch!(conn, c => diesel::update(
        d::domain_requests.filter(d::id.eq(id)).filter(d::status.eq("unconfirmed")),
    )
    .set((
        d::status.eq("pending"),
        d::token_hash.eq(None::<String>),
        d::confirmed_at.eq(Some(now_ms)),
    ))
    .execute(c)?);
    Ok(n > 0)
}

/// Every request of `status` (all statuses with `None`), by domain then age; at most `limit`.
pub fn list(
    conn: &mut DbConn,
    status: Option<&str>,
    domain: Option<&str>,
    limit: i64,
) -> Result<Vec<DomainRequestRow>, StoreError> {
    Ok(db_dispatch!(conn, c => {
        let mut q = d::domain_requests.select(COLUMNS).into_boxed();
        match status {
            Some(status) => q = q.filter(d::status.eq(status.to_owned())),
            // Unconfirmed requests are nobody's business until confirmed.
            None => q = q.filter(d::status.ne("unconfirmed")),
        }
        if let Some(domain) = domain {
            q = q.filter(d::domain.eq(domain.to_owned()));
        }
        q.order((d::domain.asc(), d::created_at.asc()))
            .limit(limit)
            .load::<DomainRequestRow>(c)?
    }))
}

/// Pending requests counted per domain: (domain, count, first, last), most requested first.
pub fn pending_per_domain(
    conn: &mut DbConn,
    limit: i64,
) -> Result<Vec<(String, i64, i64, i64)>, StoreError> {
    use diesel::dsl::{count_star, max, min};
    let rows: Vec<(String, i64, Option<i64>, Option<i64>)> = db_dispatch!(conn, c => d::domain_requests
        .filter(d::status.eq("pending"))
        .group_by(d::domain)
        .select((d::domain, count_star(), min(d::created_at), max(d::created_at)))
        .order((count_star().desc(), d::domain.asc()))
        .limit(limit)
        .load(c)?);
    Ok(rows
        .into_iter()
        .map(|(domain, n, first, last)| (domain, n, first.unwrap_or(0), last.unwrap_or(0)))
        .collect())
}

/// Marks the pending requests of a domain decided; returns them as they were.
pub fn decide_pending(
    conn: &mut DbConn,
    domain: &str,
    status: &str,
    actor: &str,
    message: Option<&str>,
    now_ms: i64,
) -> Result<Vec<DomainRequestRow>, StoreError> {
    let rows = list(conn, Some("pending"), Some(domain), i64::MAX)?;
    db_dispatch!(conn, c => diesel::update(
        d::domain_requests.filter(d::domain.eq(domain)).filter(d::status.eq("pending")),
    )
    .set((
        d::status.eq(status),
        d::decided_at.eq(Some(now_ms)),
        d::decided_by.eq(Some(actor)),
        d::decision_message.eq(message),
    ))
    .execute(c)?);
    Ok(rows)
}

/// Deletes requests made before `before_ms`, and unconfirmed ones made before
/// `unconfirmed_before_ms`; how many.
pub fn purge(
    conn: &mut DbConn,
    before_ms: i64,
    unconfirmed_before_ms: i64,
) -> Result<usize, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(d::domain_requests.filter(
        d::created_at.lt(before_ms)
            .or(d::status.eq("unconfirmed").and(d::created_at.lt(unconfirmed_before_ms))),
    ))
    .execute(c)?);
    Ok(n)
}

/// Deletes every request of an address (its erasure); how many.
pub fn delete_for_address(conn: &mut DbConn, address: &str) -> Result<usize, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(d::domain_requests.filter(d::address.eq(address)))
        .execute(c)?);
    Ok(n)
}
