//! In-process rate limits (governor token buckets keyed by IP address, sender, …).
//!
//! These limits are per instance. Limits that must hold across instances (per email address)
//! are kept in the database by the modules that need them.

use std::hash::Hash;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimit;

/// A keyed token bucket.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for KeyedLimit<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimit")
            .field("keys", &self.limiter.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// A limiter for `limit` (validated by the configuration: burst ≥ 1, every > 0).
    pub fn new(limit: &RateLimit) -> Self {
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(limit.every.0)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one token for `key`; `Err(retry_after_ms)` when the bucket is empty.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)
        })
    }

    /// Forgets keys whose buckets are full again (call periodically to bound memory).
    pub fn housekeep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use std::time::Duration;

    #[test]
    fn bucket_empties_and_says_when_to_retry() {
        let l = KeyedLimit::new(&RateLimit {
            burst: 2,
            every: HumanDuration(Duration::from_secs(60)),
        });
        assert!(l.check(&"a").is_ok());
        assert!(l.check(&"a").is_ok());
        let retry = l.check(&"a").unwrap_err();
        assert!(retry > 50_000 && retry <= 60_000, "{retry}");
        assert!(l.check(&"b").is_ok(), "keys are independent");
    }
}
