//! 3PID invitations and their delivery to homeservers (`onbind`).

use diesel::dsl::{count_star, exists, min};
use diesel::prelude::*;

use super::schema::{imported_ephemeral_keys, invites};
use super::{DbConn, StoreError};
use crate::db_dispatch;

// ---- invites ----

/// A stored invitation.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = invites)]
pub struct InviteRow {
    /// The invitation token (public: the invite's state key in the room).
    pub token: String,
    /// `email`.
    pub medium: String,
    /// The normalised invited address.
    pub address: String,
    /// The room.
    pub room_id: String,
    /// The inviter.
    pub sender: String,
    /// The optional request fields (room name, sender display name, …) as JSON.
    pub details_json: String,
    /// The ephemeral public key (standard unpadded base64).
    pub ephemeral_public_key: String,
    /// When it was stored (ms).
    pub created_at: i64,
    /// When it stops waiting for a bind (ms).
    pub expires_at: i64,
    /// The Matrix ID it is being delivered to, once the address is bound.
    pub delivery_mxid: Option<String>,
    /// Delivery attempts so far.
    pub delivery_attempts: i32,
    /// When to try delivering next.
    pub next_delivery_at: Option<i64>,
    /// The last delivery error (no address in it).
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<i64>,
    /// When delivery was given up.
    pub delivery_failed_at: Option<i64>,
}

/// Stores a new invitation.
pub fn insert_invite(conn: &mut DbConn, row: &InviteRow) -> Result<(), StoreError> {
    use invites::dsl as i;
    db_dispatch!(conn, c => diesel::insert_into(i::invites)
        .values((
            i::token.eq(&row.token),
            i::medium.eq(&row.medium),
            i::address.eq(&row.address),
            i::room_id.eq(&row.room_id),
            i::sender.eq(&row.sender),
            i::details_json.eq(&row.details_json),
            i::ephemeral_public_key.eq(&row.ephemeral_public_key),
            i::created_at.eq(row.created_at),
            i::expires_at.eq(row.expires_at),
            i::delivery_attempts.eq(row.delivery_attempts),
        ))
        .execute(c)?);
    Ok(())
}

/// The invitation with this token.
pub fn invite_by_token(conn: &mut DbConn, token: &str) -> Result<Option<InviteRow>, StoreError> {
    use invites::dsl as i;
    let row = db_dispatch!(conn, c => i::invites
        .filter(i::token.eq(token))
        .select(InviteRow::as_select())
        .first::<InviteRow>(c)
        .optional()?);
    Ok(row)
}

/// Invitations `sender` stored since `since_ms`: (count, oldest creation time).
pub fn invites_by_sender_since(
    conn: &mut DbConn,
    sender: &str,
    since_ms: i64,
) -> Result<(i64, Option<i64>), StoreError> {
    use invites::dsl as i;
    let row = db_dispatch!(conn, c => i::invites
        .filter(i::sender.eq(sender))
        .filter(i::created_at.gt(since_ms))
        .select((count_star(), min(i::created_at)))
        .first::<(i64, Option<i64>)>(c)?);
    Ok(row)
}

/// Invitations to an address stored since `since_ms`: (count, oldest creation time).
pub fn invites_to_address_since(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
    since_ms: i64,
) -> Result<(i64, Option<i64>), StoreError> {
    use invites::dsl as i;
    let row = db_dispatch!(conn, c => i::invites
        .filter(i::medium.eq(medium))
        .filter(i::address.eq(address))
        .filter(i::created_at.gt(since_ms))
        .select((count_star(), min(i::created_at)))
        .first::<(i64, Option<i64>)>(c)?);
    Ok(row)
}

/// Whether an unexpired invitation to the address waits for a bind.
pub fn pending_invite_exists(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    use invites::dsl as i;
    let found = db_dispatch!(conn, c => diesel::select(exists(
        i::invites
            .filter(i::medium.eq(medium))
            .filter(i::address.eq(address))
            .filter(i::expires_at.gt(now_ms))
            .filter(i::delivery_mxid.is_null()),
    ))
    .get_result::<bool>(c)?);
    Ok(found)
}

/// Whether `public_key` (canonical form) is the ephemeral key of an invitation that is still
/// waiting, or that was delivered (the invitee's homeserver checks it when they join), or one
/// imported from Sydent (which never expired them).
pub fn ephemeral_key_is_valid(
    conn: &mut DbConn,
    public_key: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    use imported_ephemeral_keys::dsl as k;
    use invites::dsl as i;
    let found = db_dispatch!(conn, c => diesel::select(exists(
        i::invites
            .filter(i::ephemeral_public_key.eq(public_key))
            .filter(i::expires_at.gt(now_ms).or(i::delivered_at.is_not_null())),
    ))
    .get_result::<bool>(c)?);
    if found {
        return Ok(true);
    }
    let imported = db_dispatch!(conn, c => diesel::select(exists(
        k::imported_ephemeral_keys.filter(k::public_key.eq(public_key)),
    ))
    .get_result::<bool>(c)?);
    Ok(imported)
}

/// Hands the unexpired invitations waiting for the address over to delivery to `mxid`,
/// due at `now_ms`; how many.
pub fn schedule_invite_delivery(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
    mxid: &str,
    now_ms: i64,
) -> Result<usize, StoreError> {
    use invites::dsl as i;
    let n = db_dispatch!(conn, c => diesel::update(
        i::invites
            .filter(i::medium.eq(medium))
            .filter(i::address.eq(address))
            .filter(i::expires_at.gt(now_ms))
            .filter(i::delivery_mxid.is_null()),
    )
    .set((i::delivery_mxid.eq(mxid), i::next_delivery_at.eq(now_ms)))
    .execute(c)?);
    Ok(n)
}

/// The invitation whose delivery is due first at `now_ms`, if any.
pub fn next_due_invite(conn: &mut DbConn, now_ms: i64) -> Result<Option<InviteRow>, StoreError> {
    use invites::dsl as i;
    let row = db_dispatch!(conn, c => i::invites
        .filter(i::delivery_mxid.is_not_null())
        .filter(i::delivered_at.is_null())
        .filter(i::delivery_failed_at.is_null())
        .filter(i::next_delivery_at.le(now_ms))
        .order(i::next_delivery_at)
        .select(InviteRow::as_select())
        .first::<InviteRow>(c)
        .optional()?);
    Ok(row)
}

/// When the next pending delivery is due (claimed ones included: their lease end).
pub fn next_invite_delivery_at(conn: &mut DbConn) -> Result<Option<i64>, StoreError> {
    use invites::dsl as i;
    let due = db_dispatch!(conn, c => i::invites
        .filter(i::delivery_mxid.is_not_null())
        .filter(i::delivered_at.is_null())
        .filter(i::delivery_failed_at.is_null())
        .select(min(i::next_delivery_at))
        .first::<Option<i64>>(c)?);
    Ok(due)
}

/// Claims a due delivery: moves its `next_delivery_at` from `seen` (what the caller read) to
/// `lease_until`. Only one of several instances racing for the row succeeds; a claim whose
/// worker died ends with its lease.
pub fn claim_invite_delivery(
    conn: &mut DbConn,
    token: &str,
    seen: i64,
    lease_until: i64,
) -> Result<bool, StoreError> {
    use invites::dsl as i;
    let n = db_dispatch!(conn, c => diesel::update(
        i::invites
            .filter(i::token.eq(token))
            .filter(i::next_delivery_at.eq(seen))
            .filter(i::delivered_at.is_null())
            .filter(i::delivery_failed_at.is_null()),
    )
    .set(i::next_delivery_at.eq(lease_until))
    .execute(c)?);
    Ok(n == 1)
}

/// What became of a claimed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteDeliveryOutcome {
    /// The homeserver took it.
    Delivered,
    /// It failed; try again at this time.
    Retry {
        /// The error, without personal data.
        error: String,
        /// When to try again (ms).
        next_at: i64,
    },
    /// It failed for the last time.
    Failed {
        /// The error, without personal data.
        error: String,
    },
}

/// Records the end of a claimed delivery (`lease_until` is the claim's): whether the claim
/// was still ours (a lease that ended meanwhile may have been taken over).
pub fn finish_invite_delivery(
    conn: &mut DbConn,
    token: &str,
    lease_until: i64,
    attempts: i32,
    outcome: &InviteDeliveryOutcome,
    now_ms: i64,
) -> Result<bool, StoreError> {
    use invites::dsl as i;
    let target = i::invites
        .filter(i::token.eq(token))
        .filter(i::next_delivery_at.eq(lease_until))
        .filter(i::delivered_at.is_null())
        .filter(i::delivery_failed_at.is_null());
    let n = match outcome {
        InviteDeliveryOutcome::Delivered => {
            db_dispatch!(conn, c => diesel::update(target)
                .set((
                    i::delivery_attempts.eq(attempts),
                    i::delivered_at.eq(Some(now_ms)),
                    i::next_delivery_at.eq(None::<i64>),
                    i::last_error.eq(None::<String>),
                ))
                .execute(c)?)
        }
        InviteDeliveryOutcome::Retry { error, next_at } => {
            db_dispatch!(conn, c => diesel::update(target)
                .set((
                    i::delivery_attempts.eq(attempts),
                    i::next_delivery_at.eq(Some(*next_at)),
                    i::last_error.eq(Some(error.as_str())),
                ))
                .execute(c)?)
        }
        InviteDeliveryOutcome::Failed { error } => {
            db_dispatch!(conn, c => diesel::update(target)
                .set((
                    i::delivery_attempts.eq(attempts),
                    i::delivery_failed_at.eq(Some(now_ms)),
                    i::next_delivery_at.eq(None::<i64>),
                    i::last_error.eq(Some(error.as_str())),
                ))
                .execute(c)?)
        }
    };
    Ok(n == 1)
}

/// The invitations to an address, oldest first (tests and administration).
pub fn invites_to_address(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
) -> Result<Vec<InviteRow>, StoreError> {
    use invites::dsl as i;
    let rows = db_dispatch!(conn, c => i::invites
        .filter(i::medium.eq(medium))
        .filter(i::address.eq(address))
        .order((i::created_at, i::token))
        .select(InviteRow::as_select())
        .load::<InviteRow>(c)?);
    Ok(rows)
}

/// Deletes invitations that expired before `before_ms` without being bound; how many.
pub fn purge_expired_invites(conn: &mut DbConn, before_ms: i64) -> Result<usize, StoreError> {
    use invites::dsl as i;
    let n = db_dispatch!(conn, c => diesel::delete(
        i::invites
            .filter(i::expires_at.lt(before_ms))
            .filter(i::delivery_mxid.is_null()),
    )
    .execute(c)?);
    Ok(n)
}
