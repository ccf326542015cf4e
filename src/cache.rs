//! One bounded time-to-live cache for what this instance remembers for a while (homeservers'
//! delegations and keys, whoami answers). Entries expire at an instant read from the injected
//! clock; when the cache is full, expired entries go first, then the one closest to expiry.

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::clock::SharedClock;

/// A bounded map whose entries expire.
pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
    capacity: usize,
    clock: SharedClock,
}

struct Entry<V> {
    value: V,
    expires_at_ms: i64,
}

impl<K, V> std::fmt::Debug for TtlCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("len", &self.lock().len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize, clock: SharedClock) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            clock,
        }
    }

    /// The value of `key`, unless it is absent or expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = self.clock.now_ms();
        self.lock()
            .get(key)
            .filter(|e| e.expires_at_ms > now)
            .map(|e| e.value.clone())
    }

    /// Keeps `value` for `ttl_ms` from now (nothing is kept for a zero or negative TTL).
    pub fn insert_for(&self, key: K, value: V, ttl_ms: i64) {
        if ttl_ms > 0 {
            let until = self.clock.now_ms().saturating_add(ttl_ms);
            self.insert_until(key, value, until);
        }
    }

    /// Keeps `value` until the instant `expires_at_ms`.
    pub fn insert_until(&self, key: K, value: V, expires_at_ms: i64) {
        let now = self.clock.now_ms();
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| e.expires_at_ms > now);
            if entries.len() >= self.capacity
                && let Some(soonest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires_at_ms)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&soonest);
            }
        }
        entries.insert(
            key,
            Entry {
                value,
                expires_at_ms,
            },
        );
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Entries held, expired ones included until they are evicted.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl<K, V> TtlCache<K, V> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Entry<V>>> {
        // A panic while holding the lock leaves a usable map; keep going.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;

    fn cache(capacity: usize) -> (TtlCache<String, u32>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000));
        (TtlCache::new(capacity, clock.clone()), clock)
    }

    #[test]
    fn entries_expire_at_their_instant() {
        let (c, clock) = cache(10);
        c.insert_for("a".into(), 1, 100);
        c.insert_until("b".into(), 2, 1_050);
        assert_eq!(c.get(&"a".into()), Some(1));
        assert_eq!(c.get(&"b".into()), Some(2));
        clock.advance(50);
        assert_eq!(c.get(&"b".into()), None, "expired at 1050");
        assert_eq!(c.get(&"a".into()), Some(1));
        clock.advance(50);
        assert_eq!(c.get(&"a".into()), None);
    }

    #[test]
    fn zero_ttl_keeps_nothing() {
        let (c, _) = cache(10);
        c.insert_for("a".into(), 1, 0);
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_cache_drops_expired_entries_then_the_soonest_to_expire() {
        let (c, clock) = cache(3);
        c.insert_for("short".into(), 1, 10);
        c.insert_for("long".into(), 2, 1_000);
        c.insert_for("mid".into(), 3, 500);
        c.insert_for("new".into(), 4, 800);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&"short".into()), None, "closest to expiry went");
        assert_eq!(c.get(&"long".into()), Some(2));
        clock.advance(600); // "mid" has expired
        c.insert_for("newer".into(), 5, 800);
        assert_eq!(c.get(&"mid".into()), None);
        assert_eq!(c.get(&"long".into()), Some(2));
        assert_eq!(c.get(&"new".into()), Some(4));
        assert_eq!(c.get(&"newer".into()), Some(5));
        // Replacing a key never evicts another.
        c.insert_for("long".into(), 6, 1_000);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&"long".into()), Some(6));
    }

    #[test]
    fn remove_and_clear() {
        let (c, _) = cache(3);
        c.insert_for("a".into(), 1, 100);
        c.insert_for("b".into(), 2, 100);
        c.remove(&"a".into());
        assert_eq!(c.get(&"a".into()), None);
        c.clear();
        assert!(c.is_empty());
    }
}
