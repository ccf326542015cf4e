//! The in-memory lookup index: which Matrix user each lookup hash of the current pepper is bound
//! to, so that `/v2/lookup` and `/info` answer without the database.
//!
//! Compact, because a national deployment binds millions of addresses (about 40 bytes per
//! association): an open-addressing table of 16-byte slots (the first 96 bits of the hash, a
//! record reference), 70 to 80% full, found from the hash's own first bits (the hash is
//! uniform: no hashing needed) with linear probing; the records hold the mxid's localpart in an
//! arena of 1 MiB chunks, its server name interned. A lookup touches one or two cache lines of
//! the table and one of the arena, and asks for many keys at once so that their memory reads
//! overlap. The few associations whose validity is not "since before they were recorded, for
//! decades", or whose mxid does not have the `@localpart:server` shape, are kept whole beside
//! the table and checked exactly.
//!
//! 96 bits of SHA-256 identify an address as well as the whole hash does for this purpose:
//! telling two bound addresses apart would take a collision on 96 bits (about 2^-52 for five
//! million addresses; the build refuses to finish if it ever met one), and making a stranger's
//! query match someone else's entry a second preimage on 96 bits of a peppered hash. Queries
//! are decoded strictly (43 characters of canonical URL-safe base64), so one hash string maps
//! to one key and back, as with the database's exact string comparison.
//!
//! The index knows nothing of the database: `identity::live` builds it, applies the changes
//! every instance writes, and decides when it may be used.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

/// The part of a lookup hash the index keeps.
pub type Key = [u8; 16];

/// An association as the index needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Matrix user ID.
    pub mxid: String,
    /// Start of validity (ms).
    pub not_before: i64,
    /// End of validity (ms).
    pub not_after: i64,
}

/// The key of a lookup hash as clients send it (43 characters of canonical URL-safe unpadded
/// base64); `None` for anything else, which cannot be a lookup hash.
pub fn key_of_hash(hash: &str) -> Option<Key> {
    if hash.len() != 43 {
        return None;
    }
    let mut digest = [0u8; 32];
    match URL_SAFE_NO_PAD.decode_slice(hash.as_bytes(), &mut digest) {
        Ok(32) => {}
        _ => return None,
    }
    let mut key = [0u8; 16];
    key.copy_from_slice(digest.get(..16)?);
    Some(key)
}

/// The key of an address's lookup hash under `pepper` (as `matrix::hashing::lookup_hash`,
/// without the base64 round trip).
pub fn key_of_address(address: &str, medium: &str, pepper: &str) -> Key {
    let mut hasher = Sha256::new();
    hasher.update(address.as_bytes());
    hasher.update(b" ");
    hasher.update(medium.as_bytes());
    hasher.update(b" ");
    hasher.update(pepper.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    let mut key = [0u8; 16];
    for (k, d) in key.iter_mut().zip(digest) {
        *k = d;
    }
    key
}

/// Associations already valid when recorded and for at least this long after are "usual": the
/// index keeps only the latest start and the earliest end of them all (binds make associations
/// valid for a century).
const USUAL_VALIDITY_MS: i64 = 10 * 365 * 24 * 3600 * 1000;

/// Bytes per arena chunk (records never straddle two chunks, so chunks never move).
const CHUNK: usize = 1 << 20;

/// The part of a key the table keeps.
type Short = [u8; 12];

fn short(key: &Key) -> Short {
    let mut s = [0u8; 12];
    s.copy_from_slice(&key[..12]);
    s
}

/// A table slot: the key's first 96 bits and where the mxid is ([`EMPTY`] or [`UNUSUAL`]
/// otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    key: Short,
    record: u32,
}

/// A free slot.
const EMPTY: u32 = u32::MAX;
/// A slot whose binding is in `unusual`.
const UNUSUAL: u32 = u32::MAX - 1;
/// Arena offsets stay below the markers.
const MAX_CHUNKS: usize = (UNUSUAL as usize) / CHUNK;
/// The table grows past 80% full, to 70% full.
const MAX_LOAD: (usize, usize) = (4, 5);
const TARGET_LOAD: (usize, usize) = (7, 10);
/// Keys looked up together (their memory reads overlap).
const BATCH: usize = 16;

const FREE: Slot = Slot {
    key: [0; 12],
    record: EMPTY,
};

/// Where a key's probe sequence starts in a table of `capacity` slots (its first 64 bits,
/// scaled: the hash is uniform).
fn home(key: &Short, capacity: usize) -> usize {
    let top = u64::from_be_bytes([
        key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
    ]);
    ((u128::from(top) * capacity as u128) >> 64) as usize
}

/// Slots for `n` keys at the target load.
fn capacity_for(n: usize) -> usize {
    (n.saturating_mul(TARGET_LOAD.1) / TARGET_LOAD.0).max(16)
}

/// Localparts, each `[length][bytes][server id (2 bytes)]`, in chunks that never move.
#[derive(Debug, Default)]
struct Arena {
    chunks: Vec<Vec<u8>>,
}

impl Arena {
    /// Stores a record; `None` when the localpart is too long for one.
    fn push(&mut self, localpart: &[u8], server: u16) -> Option<u32> {
        let len = u8::try_from(localpart.len()).ok()?;
        let size = 1 + localpart.len() + 2;
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.len() + size <= c.capacity());
        if !fits {
            if self.chunks.len() >= MAX_CHUNKS {
                return None;
            }
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let index = self.chunks.len() - 1;
        let chunk = self.chunks.last_mut()?;
        let offset = u32::try_from(index * CHUNK + chunk.len()).ok()?;
        chunk.push(len);
        chunk.extend_from_slice(localpart);
        chunk.extend_from_slice(&server.to_le_bytes());
        Some(offset)
    }

    fn get(&self, offset: u32) -> Option<(&[u8], u16)> {
        let offset = offset as usize;
        let chunk = self.chunks.get(offset / CHUNK)?;
        let at = offset % CHUNK;
        let len = usize::from(*chunk.get(at)?);
        let localpart = chunk.get(at + 1..at + 1 + len)?;
        let server = chunk.get(at + 1 + len..at + 3 + len)?;
        Some((
            localpart,
            u16::from_le_bytes([*server.first()?, *server.get(1)?]),
        ))
    }

    fn bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

/// Why an index could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// Two addresses share a hash prefix (never expected; lookups then use the database).
    #[error("two bound addresses share the first 96 bits of their lookup hash")]
    Collision,
}

/// The lookup index of one pepper (see the module documentation).
#[derive(Debug)]
pub struct LookupIndex {
    pepper_id: i64,
    slots: Vec<Slot>,
    len: usize,
    arena: Arena,
    servers: Vec<String>,
    server_ids: HashMap<String, u16>,
    unusual: HashMap<Key, Binding>,
    /// Usual records are valid from at most this instant...
    usual_from_ms: i64,
    /// ...to at least this one; outside, the index must not answer.
    usual_until_ms: i64,
    /// The instant the builder was told (usual records are valid then).
    now_ms: i64,
    /// Two bound addresses with the same key were met: the index must not be used.
    collision: bool,
}

/// Collects the associations of an index being built.
#[derive(Debug)]
pub struct IndexBuilder {
    index: LookupIndex,
}

impl IndexBuilder {
    /// Adds a bound address's key (the bindings of one build must have distinct keys).
    pub fn add(&mut self, key: Key, binding: &Binding) {
        let now = self.index.now_ms;
        if self.index.find(&key).is_some() {
            self.index.collision = true;
            return;
        }
        self.index.set(key, Some(binding), now);
    }

    /// The index, unless two addresses shared a key.
    pub fn finish(self) -> Result<LookupIndex, IndexError> {
        if self.index.collision {
            return Err(IndexError::Collision);
        }
        Ok(self.index)
    }
}

impl LookupIndex {
    /// Starts an index of the hashes of pepper `pepper_id`, built at `now_ms`, with room for
    /// `capacity` associations.
    pub fn builder(pepper_id: i64, capacity: usize, now_ms: i64) -> IndexBuilder {
        IndexBuilder {
            index: LookupIndex {
                pepper_id,
                slots: vec![FREE; capacity_for(capacity)],
                len: 0,
                arena: Arena::default(),
                servers: Vec::new(),
                server_ids: HashMap::new(),
                unusual: HashMap::new(),
                usual_from_ms: i64::MIN,
                usual_until_ms: i64::MAX,
                now_ms,
                collision: false,
            },
        }
    }

    /// The pepper whose hashes this index holds.
    pub fn pepper_id(&self) -> i64 {
        self.pepper_id
    }

    /// Whether the index may answer at `now_ms`: every usual record is valid then.
    pub fn answers_at(&self, now_ms: i64) -> bool {
        self.usual_from_ms <= now_ms && now_ms < self.usual_until_ms
    }

    /// Associations held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is bound.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Approximate heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.arena.bytes()
            + self.unusual.capacity() * (std::mem::size_of::<(Key, Binding)>() + 1)
    }

    /// The Matrix user ID bound to `key` at `now_ms` (the caller checked [`Self::answers_at`]).
    pub fn get(&self, key: &Key, now_ms: i64) -> Option<String> {
        let slot = self.slots.get(self.find(key)?)?;
        self.resolve(key, slot.record, now_ms)
    }

    /// [`Self::get`] for many keys at once (`None` keys are not hashes: never bound), calling
    /// `found(i, mxid)` for each bound one, in order.
    pub fn get_many(
        &self,
        keys: &[Option<Key>],
        now_ms: i64,
        mut found: impl FnMut(usize, String),
    ) {
        let capacity = self.slots.len();
        for (batch_no, batch) in keys.chunks(BATCH).enumerate() {
            // First the home slots of the whole batch: independent reads, which the processor
            // overlaps, where one key after the other would wait for each in turn.
            let mut first = [FREE; BATCH];
            for (i, key) in batch.iter().enumerate() {
                if let (Some(key), Some(out)) = (key, first.get_mut(i)) {
                    *out = self
                        .slots
                        .get(home(&short(key), capacity))
                        .copied()
                        .unwrap_or(FREE);
                }
            }
            let mut records = [EMPTY; BATCH];
            for (i, key) in batch.iter().enumerate() {
                let (Some(key), Some(head)) = (key, first.get(i)) else {
                    continue;
                };
                let record = if head.record == EMPTY {
                    EMPTY
                } else if head.key == short(key) {
                    head.record
                } else {
                    self.find(key)
                        .and_then(|at| self.slots.get(at))
                        .map_or(EMPTY, |s| s.record)
                };
                if let Some(out) = records.get_mut(i) {
                    *out = record;
                }
            }
            // Then the records of the hits, again together.
            let mut parts: [Option<(&[u8], u16)>; BATCH] = [None; BATCH];
            for (i, record) in records.iter().enumerate() {
                if *record < UNUSUAL
                    && let Some(out) = parts.get_mut(i)
                {
                    *out = self.arena.get(*record);
                }
            }
            for (i, (key, record)) in batch.iter().zip(records).enumerate() {
                let mxid = match (record, parts.get(i).copied().flatten()) {
                    (EMPTY, _) => None,
                    (UNUSUAL, _) => key.as_ref().and_then(|k| self.resolve(k, record, now_ms)),
                    (_, Some((localpart, server))) => self.format_mxid(localpart, server),
                    (_, None) => None,
                };
                if let Some(mxid) = mxid {
                    found(batch_no * BATCH + i, mxid);
                }
            }
        }
    }

    /// Records the current state of one address at `now_ms`: bound as `binding`, or unbound
    /// (`None`).
    pub fn set(&mut self, key: Key, binding: Option<&Binding>, now_ms: i64) {
        let record = match binding {
            None => None,
            Some(b) => Some(match self.record(b, now_ms) {
                Some(record) => {
                    self.unusual.remove(&key);
                    record
                }
                None => {
                    self.unusual.insert(key, b.clone());
                    UNUSUAL
                }
            }),
        };
        match (self.find(&key), record) {
            (Some(at), Some(record)) => {
                if let Some(slot) = self.slots.get_mut(at) {
                    slot.record = record;
                }
            }
            (Some(at), None) => {
                self.unusual.remove(&key);
                self.remove_at(at);
            }
            (None, Some(record)) => {
                if (self.len + 1) * MAX_LOAD.1 > self.slots.len() * MAX_LOAD.0 {
                    self.grow();
                }
                self.insert_new(short(&key), record);
            }
            (None, None) => {}
        }
    }

    fn resolve(&self, key: &Key, record: u32, now_ms: i64) -> Option<String> {
        if record == UNUSUAL {
            let b = self.unusual.get(key)?;
            return (b.not_before <= now_ms && now_ms < b.not_after).then(|| b.mxid.clone());
        }
        self.mxid(record)
    }

    /// The slot holding `key`.
    fn find(&self, key: &Key) -> Option<usize> {
        let key = short(key);
        let capacity = self.slots.len();
        let mut at = home(&key, capacity);
        for _ in 0..capacity {
            let slot = self.slots.get(at)?;
            if slot.record == EMPTY {
                return None;
            }
            if slot.key == key {
                return Some(at);
            }
            at = if at + 1 == capacity { 0 } else { at + 1 };
        }
        None
    }

    /// Places a key that is not in the table (there is room).
    fn insert_new(&mut self, key: Short, record: u32) {
        let capacity = self.slots.len();
        let mut at = home(&key, capacity);
        for _ in 0..capacity {
            if let Some(slot) = self.slots.get_mut(at)
                && slot.record == EMPTY
            {
                *slot = Slot { key, record };
                self.len += 1;
                return;
            }
            at = if at + 1 == capacity { 0 } else { at + 1 };
        }
    }

    /// Empties slot `at`, moving back the keys after it that would no longer be found (linear
    /// probing's deletion: no tombstones).
    fn remove_at(&mut self, mut at: usize) {
        let capacity = self.slots.len();
        if let Some(slot) = self.slots.get_mut(at) {
            *slot = FREE;
            self.len -= 1;
        }
        let mut next = at;
        for _ in 0..capacity {
            next = if next + 1 == capacity { 0 } else { next + 1 };
            let Some(slot) = self.slots.get(next).copied() else {
                return;
            };
            if slot.record == EMPTY {
                return;
            }
            let h = home(&slot.key, capacity);
            // The slot may move to `at` when its home is not in the cyclic range (at, next].
            let stays = if at <= next {
                at < h && h <= next
            } else {
                at < h || h <= next
            };
            if !stays {
                if let Some(hole) = self.slots.get_mut(at) {
                    *hole = slot;
                }
                if let Some(moved) = self.slots.get_mut(next) {
                    *moved = FREE;
                }
                at = next;
            }
        }
    }

    /// Rebuilds the table a quarter larger than the target load needs.
    fn grow(&mut self) {
        let capacity = capacity_for(self.len + self.len / 4 + 16);
        let old = std::mem::replace(&mut self.slots, vec![FREE; capacity]);
        self.len = 0;
        for slot in old {
            if slot.record != EMPTY {
                self.insert_new(slot.key, slot.record);
            }
        }
    }

    /// An arena record for a usual binding (valid at `now_ms` and for decades); `None` when it
    /// must be kept whole.
    fn record(&mut self, b: &Binding, now_ms: i64) -> Option<u32> {
        if b.not_before > now_ms || b.not_after < now_ms.saturating_add(USUAL_VALIDITY_MS) {
            return None;
        }
        let rest = b.mxid.strip_prefix('@')?;
        let (localpart, server) = rest.split_once(':')?;
        let server_id = match self.server_ids.get(server) {
            Some(id) => *id,
            None => {
                let id = u16::try_from(self.servers.len()).ok()?;
                self.servers.push(server.to_owned());
                self.server_ids.insert(server.to_owned(), id);
                id
            }
        };
        let record = self.arena.push(localpart.as_bytes(), server_id)?;
        self.usual_from_ms = self.usual_from_ms.max(b.not_before);
        self.usual_until_ms = self.usual_until_ms.min(b.not_after);
        Some(record)
    }

    fn mxid(&self, record: u32) -> Option<String> {
        let (localpart, server) = self.arena.get(record)?;
        self.format_mxid(localpart, server)
    }

    fn format_mxid(&self, localpart: &[u8], server: u16) -> Option<String> {
        let server = self.servers.get(usize::from(server))?;
        let localpart = std::str::from_utf8(localpart).ok()?;
        let mut mxid = String::with_capacity(2 + localpart.len() + server.len());
        mxid.push('@');
        mxid.push_str(localpart);
        mxid.push(':');
        mxid.push_str(server);
        Some(mxid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::hashing::lookup_hash;

    const NOW: i64 = 1_700_000_000_000;

    fn usual(mxid: &str) -> Binding {
        Binding {
            mxid: mxid.into(),
            not_before: NOW - 1000,
            not_after: NOW + 100 * 365 * 24 * 3600 * 1000,
        }
    }

    fn build(n: usize) -> LookupIndex {
        let mut b = LookupIndex::builder(1, n, NOW);
        for i in 0..n {
            b.add(
                key_of_address(&format!("user{i}@example.org"), "email", "pep"),
                &usual(&format!("@user{i}:hs{}.example", i % 7)),
            );
        }
        b.finish().unwrap()
    }

    #[test]
    fn keys_of_hashes_and_addresses_agree() {
        let hash = lookup_hash("alice@example.com", "email", "matrixrocks");
        assert_eq!(hash, "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc");
        assert_eq!(
            key_of_hash(&hash),
            Some(key_of_address("alice@example.com", "email", "matrixrocks"))
        );
        // Not a hash: wrong length, padding, other alphabet, non-canonical last character.
        assert_eq!(key_of_hash(""), None);
        assert_eq!(key_of_hash(&format!("{hash}=")), None);
        assert_eq!(key_of_hash(&hash.replace('r', "+")), None);
        let mut loose = hash[..42].to_string();
        loose.push('d'); // 'c' and 'd' decode alike but for the last, unused bits
        assert_eq!(key_of_hash(&loose), None);
    }

    #[test]
    fn finds_every_bound_key_and_nothing_else() {
        for n in [0, 1, 5, 1000, 20_000] {
            let index = build(n);
            assert_eq!(index.len(), n);
            for i in 0..n {
                let key = key_of_address(&format!("user{i}@example.org"), "email", "pep");
                assert_eq!(
                    index.get(&key, NOW).as_deref(),
                    Some(format!("@user{i}:hs{}.example", i % 7).as_str())
                );
            }
            for i in 0..100 {
                let key = key_of_address(&format!("nobody{i}@example.org"), "email", "pep");
                assert_eq!(index.get(&key, NOW), None);
            }
        }
    }

    #[test]
    fn changes_apply_and_survive_merges() {
        let mut index = build(10_000);
        let key = |i: usize| key_of_address(&format!("user{i}@example.org"), "email", "pep");
        // Rebind, unbind, bind new ones: enough to make the table grow.
        for i in 0..6000 {
            index.set(
                key(i),
                Some(&usual(&format!("@moved{i}:other.example"))),
                NOW,
            );
        }
        for i in 6000..7000 {
            index.set(key(i), None, NOW);
        }
        for i in 10_000..16_000 {
            index.set(key(i), Some(&usual(&format!("@new{i}:hs.example"))), NOW);
        }
        // An unbind of something never bound changes nothing.
        index.set(key(99_999), None, NOW);
        assert_eq!(index.len(), 15_000);
        for i in 0..16_000 {
            let expected = match i {
                0..6000 => Some(format!("@moved{i}:other.example")),
                6000..7000 => None,
                7000..10_000 => Some(format!("@user{i}:hs{}.example", i % 7)),
                _ => Some(format!("@new{i}:hs.example")),
            };
            assert_eq!(index.get(&key(i), NOW), expected, "{i}");
        }
    }

    #[test]
    fn many_keys_at_once_agree_with_one_at_a_time() {
        let index = build(5000);
        let keys: Vec<Option<Key>> = (0..3000)
            .map(|i| {
                (i % 7 != 3).then(|| {
                    let who = if i % 2 == 0 { "user" } else { "nobody" };
                    key_of_address(&format!("{who}{i}@example.org"), "email", "pep")
                })
            })
            .collect();
        let mut found = Vec::new();
        index.get_many(&keys, NOW, |i, mxid| found.push((i, mxid)));
        let expected: Vec<(usize, String)> = keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.and_then(|k| index.get(&k, NOW)).map(|m| (i, m)))
            .collect();
        assert_eq!(found, expected);
        assert_eq!(
            found.len(),
            (0..3000).filter(|i| i % 2 == 0 && i % 7 != 3).count()
        );
    }

    #[test]
    fn removals_keep_the_other_keys_reachable() {
        // A small table, so that probe runs wrap around its end.
        let mut b = LookupIndex::builder(1, 10, NOW);
        let keys: Vec<Key> = (0u8..11)
            .map(|i| {
                let mut k = [0u8; 16];
                // Crowd the end of the table, and some wrap to the start.
                k[0] = 0xF0 | (i % 3);
                k[11] = i;
                k
            })
            .collect();
        for (i, k) in keys.iter().enumerate() {
            b.add(*k, &usual(&format!("@u{i}:hs.example")));
        }
        let mut index = b.finish().unwrap();
        for (n, gone) in [3usize, 0, 7, 10, 5].into_iter().enumerate() {
            index.set(keys[gone], None, NOW);
            assert_eq!(index.len(), 10 - n);
            for (i, k) in keys.iter().enumerate() {
                let removed = [3usize, 0, 7, 10, 5][..=n].contains(&i);
                assert_eq!(
                    index.get(k, NOW).is_some(),
                    !removed,
                    "key {i} after removing {gone}"
                );
            }
        }
    }

    #[test]
    fn unusual_bindings_are_checked_exactly() {
        let mut b = LookupIndex::builder(3, 4, NOW);
        let soon = Binding {
            mxid: "@soon:hs.example".into(),
            not_before: NOW + 10_000,
            not_after: NOW + 20_000,
        };
        let odd = usual("no-at-sign:hs.example");
        let long = usual(&format!("@{}:hs.example", "x".repeat(300)));
        b.add([1; 16], &soon);
        b.add([2; 16], &odd);
        b.add([3; 16], &long);
        let mut index = b.finish().unwrap();
        assert_eq!(index.pepper_id(), 3);
        assert_eq!(index.get(&[1; 16], NOW), None, "not valid yet");
        assert_eq!(
            index.get(&[1; 16], NOW + 10_000).as_deref(),
            Some("@soon:hs.example")
        );
        assert_eq!(index.get(&[1; 16], NOW + 20_000), None, "expired");
        assert_eq!(
            index.get(&[2; 16], NOW).as_deref(),
            Some("no-at-sign:hs.example")
        );
        assert_eq!(index.get(&[3; 16], NOW), Some(long.mxid.clone()));
        // A usual rebind replaces an unusual one, and the other way round.
        index.set([1; 16], Some(&usual("@now:hs.example")), NOW);
        assert_eq!(index.get(&[1; 16], NOW).as_deref(), Some("@now:hs.example"));
        index.set([1; 16], Some(&soon), NOW);
        assert_eq!(index.get(&[1; 16], NOW), None);
        index.set([1; 16], None, NOW);
        assert_eq!(index.get(&[1; 16], NOW + 10_000), None);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn the_index_answers_only_while_usual_bounds_hold() {
        let mut index = build(3);
        assert!(index.answers_at(NOW));
        assert!(index.answers_at(NOW - 1000));
        assert!(!index.answers_at(NOW - 1001), "before a record's start");
        let end = NOW + 100 * 365 * 24 * 3600 * 1000;
        assert!(!index.answers_at(end), "at the records' end");
        // A later bind moves the start.
        let later = Binding {
            mxid: "@late:hs.example".into(),
            not_before: NOW + 5000,
            not_after: NOW + 5000 + 100 * 365 * 24 * 3600 * 1000,
        };
        index.set([9; 16], Some(&later), NOW + 5000);
        assert!(!index.answers_at(NOW));
        assert!(index.answers_at(NOW + 5000));
        assert_eq!(
            index.get(&[9; 16], NOW + 5000).as_deref(),
            Some("@late:hs.example")
        );
    }

    #[test]
    fn collisions_refuse_the_build() {
        let mut b = LookupIndex::builder(1, 2, NOW);
        b.add([7; 16], &usual("@a:hs.example"));
        b.add([7; 16], &usual("@b:hs.example"));
        assert_eq!(b.finish().unwrap_err(), IndexError::Collision);
    }

    #[test]
    fn compact_enough() {
        let index = build(100_000);
        // 20-byte slots at 70% load and ~15-byte records, arena chunks of 1 MiB.
        assert!(index.heap_bytes() < 100_000 * 60, "{}", index.heap_bytes());
    }
}
