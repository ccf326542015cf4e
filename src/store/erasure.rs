//! The erasure of an address: its invitations, validation sessions and queued mails.

use diesel::prelude::*;

use super::schema::{invites, mail_outbox, validation_sessions};
use super::{DbConn, StoreError};
use crate::db_dispatch;

// ---- erasure of a 3PID ----

/// Deletes every invitation to an address (waiting, delivered or given up); how many.
pub fn delete_invites_to(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
) -> Result<usize, StoreError> {
    use invites::dsl as i;
    Ok(db_dispatch!(conn, c => diesel::delete(
        i::invites.filter(i::medium.eq(medium)).filter(i::address.eq(address)),
    )
    .execute(c)?))
}

/// Deletes every validation session of an address; how many.
pub fn delete_sessions_for(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
) -> Result<usize, StoreError> {
    use validation_sessions::dsl as v;
    Ok(db_dispatch!(conn, c => diesel::delete(
        v::validation_sessions.filter(v::medium.eq(medium)).filter(v::address.eq(address)),
    )
    .execute(c)?))
}

/// Cancels the queued mails to `recipient` (superseded, body and recipient erased), except one a
/// live worker is sending right now (it goes out, then is erased as sent); how many.
pub fn cancel_queued_mail_to(
    conn: &mut DbConn,
    recipient: &str,
    now_ms: i64,
) -> Result<usize, StoreError> {
    use mail_outbox::dsl as o;
    Ok(db_dispatch!(conn, c => diesel::update(
        o::mail_outbox
            .filter(o::recipient.eq(recipient))
            .filter(o::status.eq(super::outbox::QUEUED))
            .filter(o::claimed_until.is_null().or(o::claimed_until.lt(now_ms))),
    )
    .set((
        o::status.eq(super::outbox::SUPERSEDED),
        o::body.eq(None::<Vec<u8>>),
        o::recipient.eq(""),
        o::finished_at.eq(Some(now_ms)),
    ))
    .execute(c)?))
}
