//! Rate limits shared by every instance, kept in the database.
//!
//! The algorithm is GCRA (a token bucket described by one timestamp, the bucket's "theoretical
//! arrival time"): one row per key, updated in a transaction that locks the row, so that
//! instances sharing a PostgreSQL database (or processes sharing an SQLite file) count together.

use diesel::prelude::*;

use super::schema::rate_limits::dsl as r;
use super::{DbConn, StoreError};
use crate::config::RateLimit;
use crate::db_dispatch;

/// GCRA: given the stored theoretical arrival time (`None` for a new key), `Ok(new tat)` when a
/// request at `now_ms` is allowed, `Err(retry_after_ms)` otherwise. `burst` requests fit at
/// once; then one more every `every_ms`.
pub fn gcra(stored_tat: Option<i64>, now_ms: i64, burst: u32, every_ms: i64) -> Result<i64, u64> {
    let every = every_ms.max(1);
    let window = every.saturating_mul(i64::from(burst.max(1)));
    let tat = stored_tat.map_or(now_ms, |t| t.max(now_ms));
    let new_tat = tat.saturating_add(every);
    let ahead = new_tat.saturating_sub(now_ms);
    if ahead > window {
        Err(u64::try_from(ahead - window).unwrap_or(u64::MAX).max(1))
    } else {
        Ok(new_tat)
    }
}

/// Takes one request from the bucket `key`: `Ok(Ok(()))` when allowed, `Ok(Err(retry_after_ms))`
/// when the bucket is empty.
pub fn take(
    conn: &mut DbConn,
    key: &str,
    limit: &RateLimit,
    now_ms: i64,
) -> Result<Result<(), u64>, StoreError> {
    let every_ms = limit.every.as_millis_i64();
    super::transaction(conn, |conn| {
        // A write first: on SQLite it takes the write lock before anything is read (a read
        // transaction cannot always be upgraded); on PostgreSQL it makes sure the row exists,
        // and the no-op update below locks it until the end of the transaction.
        db_dispatch!(conn, c => diesel::insert_into(r::rate_limits)
            .values((r::key.eq(key), r::tat.eq(now_ms)))
            .on_conflict(r::key)
            .do_nothing()
            .execute(c)?);
        db_dispatch!(conn, c => diesel::update(r::rate_limits.filter(r::key.eq(key)))
            .set(r::tat.eq(r::tat))
            .execute(c)?);
        let stored: i64 = db_dispatch!(conn, c => r::rate_limits
            .filter(r::key.eq(key))
            .select(r::tat)
            .first::<i64>(c)?);
        match gcra(Some(stored), now_ms, limit.burst, every_ms) {
            Ok(new_tat) => {
                db_dispatch!(conn, c => diesel::update(r::rate_limits.filter(r::key.eq(key)))
                    .set(r::tat.eq(new_tat))
                    .execute(c)?);
                Ok(Ok(()))
            }
            Err(retry_after_ms) => Ok(Err(retry_after_ms)),
        }
    })
}

/// Deletes the rows whose bucket is full again (they mean the same as no row).
pub fn purge(conn: &mut DbConn, now_ms: i64) -> Result<usize, StoreError> {
    let n = db_dispatch!(conn, c => diesel::delete(r::rate_limits.filter(r::tat.lt(now_ms)))
        .execute(c)?);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::gcra;

    #[test]
    fn a_new_key_has_a_full_bucket() {
        let mut tat = None;
        for _ in 0..5 {
            tat = Some(gcra(tat, 1000, 5, 300).unwrap());
        }
        assert_eq!(gcra(tat, 1000, 5, 300), Err(300));
        // 100 ms later, 200 ms to wait.
        assert_eq!(gcra(tat, 1100, 5, 300), Err(200));
        // One interval later, exactly one more.
        let tat = Some(gcra(tat, 1300, 5, 300).unwrap());
        assert_eq!(gcra(tat, 1300, 5, 300), Err(300));
    }

    #[test]
    fn an_idle_key_refills_but_not_beyond_the_burst() {
        let mut tat = None;
        for _ in 0..2 {
            tat = Some(gcra(tat, 0, 2, 1000).unwrap());
        }
        assert!(gcra(tat, 0, 2, 1000).is_err());
        // A long time later: two at once, not more.
        let mut tat2 = tat;
        for _ in 0..2 {
            tat2 = Some(gcra(tat2, 1_000_000, 2, 1000).unwrap());
        }
        assert_eq!(gcra(tat2, 1_000_000, 2, 1000), Err(1000));
    }

    #[test]
    fn burst_of_one_is_a_plain_interval() {
        let tat = Some(gcra(None, 0, 1, 5000).unwrap());
        assert_eq!(gcra(tat, 0, 1, 5000), Err(5000));
        assert_eq!(gcra(tat, 4999, 1, 5000), Err(1));
        assert!(gcra(tat, 5000, 1, 5000).is_ok());
    }
}
