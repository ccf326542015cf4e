//! Hashed lookups (`/v2/hash_details`, `/v2/lookup`) and the lookup pepper.
//!
//! The pepper lives in the database (`instance_state`), so every instance serves the same one.
//! Lookup hashes are precomputed when an address is bound and indexed (`association_hashes`,
//! one row per association and pepper). A rotation ([`rotate_pepper`]) never leaves lookups
//! without answers: it fills the hashes for the next pepper in batches while the current one
//! is served, switches in one short transaction that first sweeps up associations bound
//! meanwhile, then deletes the old hashes in batches.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::{IdentityError, IdentityService};
use crate::matrix::hashing::lookup_hash;
use crate::store::changes::{self, ChangeKind};
use crate::store::identity as store;
use crate::store::{DbConn, StoreError, state};

/// The `instance_state` key of the current pepper.
pub const PEPPER_STATE: &str = "lookup_pepper";
/// The `instance_state` key of the pepper a rotation is preparing.
pub const NEXT_PEPPER_STATE: &str = "lookup_pepper_next";
/// The algorithms `/hash_details` announces.
pub const ALGORITHMS: [&str; 2] = ["none", "sha256"];

/// A lookup pepper and its sequence number (hash rows are keyed by the number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pepper {
    /// Increases with each rotation.
    pub id: i64,
    /// The pepper clients hash with.
    pub value: String,
}

fn read_pepper(conn: &mut DbConn, key: &str) -> Result<Option<Pepper>, StoreError> {
    match state::get(conn, key)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("state `{key}`: {e}"))),
    }
}

fn encode(pepper: &Pepper) -> Result<String, StoreError> {
    serde_json::to_string(pepper).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Length of a generated pepper: 43 alphanumeric characters carry about 256 bits.
pub const PEPPER_LEN: usize = 43;

/// A fresh lookup pepper: ASCII letters and digits only, so it is safe in URLs and JSON.
pub fn generate_pepper(rng: &mut impl RngCore) -> String {
    crate::secret::random_token(rng, PEPPER_LEN)
}

/// The current pepper, created the first time (instances racing at start agree on one).
pub fn current_pepper(
    conn: &mut DbConn,
    rng: &mut impl RngCore,
    now_ms: i64,
) -> Result<Pepper, StoreError> {
    if let Some(p) = read_pepper(conn, PEPPER_STATE)? {
        return Ok(p);
    }
    let candidate = encode(&Pepper {
        id: 1,
        value: generate_pepper(rng),
    })?;
    let stored = state::get_or_insert(conn, PEPPER_STATE, &candidate, now_ms)?;
    serde_json::from_str(&stored)
        .map_err(|e| StoreError::Corrupt(format!("state `{PEPPER_STATE}`: {e}")))
}

/// The current pepper (created at start by [`crate::identity::IdentityService::open`]).
pub fn pepper(conn: &mut DbConn) -> Result<Pepper, StoreError> {
    read_pepper(conn, PEPPER_STATE)?
        .ok_or_else(|| StoreError::Corrupt("no lookup pepper in the database".into()))
}

/// The peppers a newly bound address must be hashed with: the current one, and the next one
/// while a rotation prepares it.
pub fn peppers_for_new_hashes(conn: &mut DbConn) -> Result<Vec<Pepper>, StoreError> {
    let current = pepper(conn)?;
    let mut peppers = vec![current.clone()];
    if let Some(next) = read_pepper(conn, NEXT_PEPPER_STATE)?
        && next.id > current.id
    {
        peppers.push(next);
    }
    Ok(peppers)
}

impl IdentityService {
    /// The current pepper: from memory while this instance follows the change feed, else from
    /// the database.
    pub async fn current_pepper(&self) -> Result<Arc<Pepper>, IdentityError> {
        if let Some(pepper) = self.live.pepper() {
            return Ok(pepper);
        }
        Ok(Arc::new(self.db.run(pepper).await?))
    }

    /// `GET /v2/hash_details`: the current pepper.
    pub async fn hash_details(&self) -> Result<Arc<Pepper>, IdentityError> {
        self.current_pepper().await
    }

    /// `POST /v2/lookup`: the Matrix IDs bound to the given addresses, keyed as asked.
    ///
    /// `sha256`: each entry is a lookup hash made with the current pepper. `none`: each entry is
    /// `"<address> <medium>"` in clear, matched exactly (clients normalise, as for hashing).
    pub async fn lookup(
        &self,
        algorithm: &str,
        pepper_given: &str,
        mut addresses: Vec<String>,
        now_ms: i64,
    ) -> Result<BTreeMap<String, String>, IdentityError> {
        if !ALGORITHMS.contains(&algorithm) {
            return Err(IdentityError::InvalidParam(format!(
                "Unsupported algorithm {algorithm:?}; use one of {}",
                ALGORITHMS.join(", ")
            )));
        }
        let max = self.config.identity.max_lookup_addresses;
        if addresses.len() > max {
            return Err(IdentityError::TooLarge(format!(
                "At most {max} addresses per lookup"
            )));
        }
        let current = self.current_pepper().await?;
        if pepper_given != current.value {
            return Err(IdentityError::InvalidPepper {
                current: current.value.clone(),
            });
        }
        if let Some(mappings) = self
            .live
            .lookup(&current, algorithm, &mut addresses, now_ms)
        {
            return Ok(mappings);
        }
        let algorithm = algorithm.to_string();
        let given = pepper_given.to_string();
        self.db
            .run(move |conn| {
                let current = pepper(conn)?;
                if given != current.value {
                    return Ok(Err(IdentityError::InvalidPepper {
                        current: current.value,
                    }));
                }
                let mappings = if algorithm == "sha256" {
                    let unique: Vec<String> = addresses
                        .into_iter()
                        .collect::<HashSet<_>>()
                        .into_iter()
                        .collect();
                    store::lookup_hashed(conn, current.id, &unique, now_ms)?
                        .into_iter()
                        .collect()
                } else {
                    lookup_plain(conn, &addresses, now_ms)?
                };
                Ok(Ok(mappings))
            })
            .await?
    }
}

fn lookup_plain(
    conn: &mut DbConn,
    queries: &[String],
    now_ms: i64,
) -> Result<BTreeMap<String, String>, StoreError> {
    let asked: HashSet<&str> = queries.iter().map(String::as_str).collect();
    let addresses: Vec<String> = queries
        .iter()
        .filter_map(|q| q.rsplit_once(' ').map(|(address, _)| address.to_string()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut mappings = BTreeMap::new();
    for (medium, address, mxid) in store::lookup_plain(conn, &addresses, now_ms)? {
        let key = format!("{address} {medium}");
        if asked.contains(key.as_str()) {
            mappings.insert(key, mxid);
        }
    }
    Ok(mappings)
}

/// What a pepper rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The pepper served before.
    pub previous_id: i64,
    /// The pepper served now.
    pub pepper: Pepper,
    /// Associations hashed during the walk.
    pub rehashed: usize,
    /// Associations bound during the walk, hashed at the switch.
    pub swept: usize,
    /// Old hash rows deleted.
    pub deleted: usize,
}

/// Rotates the lookup pepper (blocking; `annuaire keys rotate-pepper`). Resumes an interrupted
/// rotation; two rotations running at once share the same next pepper.
pub fn rotate_pepper(
    conn: &mut DbConn,
    rng: &mut impl RngCore,
    batch_size: i64,
    now_ms: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<Rotation, StoreError> {
    let current = current_pepper(conn, rng, now_ms)?;
    let value = generate_pepper(rng);
    rotate_to(conn, current, value, batch_size, now_ms, progress)
}

/// A rotation from `current` to a pepper of `value` (unless a rotation is already under way:
/// then that one is resumed).
fn rotate_to(
    conn: &mut DbConn,
    current: Pepper,
    value: String,
    batch_size: i64,
    now_ms: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<Rotation, StoreError> {
    let batch_size = batch_size.max(1);
    if read_pepper(conn, NEXT_PEPPER_STATE)?.is_some_and(|n| n.id <= current.id) {
        // Left over from a rotation that switched but was interrupted before cleaning up.
        store::delete_state(conn, NEXT_PEPPER_STATE)?;
    }
    let candidate = encode(&Pepper {
        id: current.id + 1,
        value,
    })?;
    let next: Pepper = serde_json::from_str(&state::get_or_insert(
        conn,
        NEXT_PEPPER_STATE,
        &candidate,
        now_ms,
    )?)
    .map_err(|e| StoreError::Corrupt(format!("state `{NEXT_PEPPER_STATE}`: {e}")))?;

    // Walk every association once, in key order, hashing with the next pepper.
    let mut rehashed = 0;
    let mut cursor: Option<(String, String)> = None;
    loop {
        let keys = store::association_keys_after(
            conn,
            cursor.as_ref().map(|(m, a)| (m.as_str(), a.as_str())),
            batch_size,
        )?;
        let Some(last) = keys.last().cloned() else {
            break;
        };
        let rows = hash_rows(&next, &keys);
        crate::store::transaction(conn, |conn| store::insert_hashes(conn, &rows))?;
        rehashed += keys.len();
        progress("rehashed", rehashed);
        cursor = Some(last);
    }

    // Switch: first a write (SQLite: take the write lock), then block association writes
    // (PostgreSQL), hash whatever was bound meanwhile, and make the next pepper current.
    let encoded_next = encode(&next)?;
    let swept = crate::store::transaction(conn, |conn| {
        state::set(conn, NEXT_PEPPER_STATE, &encoded_next, now_ms)?;
        store::lock_associations(conn)?;
        let mut swept = 0;
        loop {
            let keys = store::associations_without_hash(conn, next.id, batch_size)?;
            if keys.is_empty() {
                break;
            }
            store::insert_hashes(conn, &hash_rows(&next, &keys))?;
            swept += keys.len();
        }
        state::set(conn, PEPPER_STATE, &encoded_next, now_ms)?;
        store::delete_state(conn, NEXT_PEPPER_STATE)?;
        // Last: every instance switches its lookups and `/hash_details` to the new pepper.
        changes::record(conn, &[(ChangeKind::Pepper, &next.id.to_string())], now_ms)?;
        Ok::<_, StoreError>(swept)
    })?;
    progress("switched", swept);

    let mut deleted = 0;
    loop {
        let n = store::delete_old_hashes(conn, next.id, batch_size)?;
        if n == 0 {
            break;
        }
        deleted += n;
        progress("deleted", deleted);
    }
    Ok(Rotation {
        previous_id: current.id,
        pepper: next,
        rehashed,
        swept,
        deleted,
    })
}

/// What [`adopt_pepper`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PepperAdoption {
    /// The pepper was already the current one.
    Unchanged(Pepper),
    /// There was no pepper yet: this one is the first.
    Created(Pepper),
    /// Another pepper was current: every association was rehashed with this one.
    Rotated(Rotation),
}

/// A pepper rotation that has not switched yet (`keys rotate-pepper` interrupted, or running).
pub fn rotation_in_progress(conn: &mut DbConn) -> Result<bool, StoreError> {
    let next = read_pepper(conn, NEXT_PEPPER_STATE)?;
    let current = read_pepper(conn, PEPPER_STATE)?;
    Ok(match (next, current) {
        (Some(next), Some(current)) => next.id > current.id,
        (Some(_), None) => true,
        (None, _) => false,
    })
}

/// Makes `value` the current lookup pepper (blocking; `annuaire import sydent`, so that the
/// clients' cached `hash_details` stay valid): stored as is when there is none yet, else a
/// rotation to it, which rehashes the associations already bound. The caller makes sure that
/// no other rotation is under way ([`rotation_in_progress`]): it would be resumed instead.
pub fn adopt_pepper(
    conn: &mut DbConn,
    value: &str,
    batch_size: i64,
    now_ms: i64,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<PepperAdoption, StoreError> {
    let current = match read_pepper(conn, PEPPER_STATE)? {
        Some(p) if p.value == value => return Ok(PepperAdoption::Unchanged(p)),
        Some(p) => p,
        None => {
            let candidate = encode(&Pepper {
                id: 1,
                value: value.to_string(),
            })?;
            let stored: Pepper = serde_json::from_str(&state::get_or_insert(
                conn,
                PEPPER_STATE,
                &candidate,
                now_ms,
            )?)
            .map_err(|e| StoreError::Corrupt(format!("state `{PEPPER_STATE}`: {e}")))?;
            if stored.value == value {
                return Ok(PepperAdoption::Created(stored));
            }
            // An instance starting meanwhile created another one.
            stored
        }
    };
    let rotation = rotate_to(
        conn,
        current,
        value.to_string(),
        batch_size,
        now_ms,
        progress,
    )?;
    if rotation.pepper.value != value {
        return Err(StoreError::Corrupt(
            "another pepper rotation was under way; the pepper was not adopted".into(),
        ));
    }
    Ok(PepperAdoption::Rotated(rotation))
}

fn hash_rows(pepper: &Pepper, keys: &[(String, String)]) -> Vec<(i64, String, String, String)> {
    keys.iter()
        .map(|(medium, address)| {
            (
                pepper.id,
                lookup_hash(address, medium, &pepper.value),
                medium.clone(),
                address.clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn peppers_are_long_alphanumeric_and_random() {
        let mut rng = StdRng::seed_from_u64(3);
        let a = generate_pepper(&mut rng);
        let b = generate_pepper(&mut rng);
        assert_eq!(a.len(), PEPPER_LEN);
        assert!(a.len() >= 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        // Deterministic for a given RNG state, so tests can pin it.
        assert_eq!(a, generate_pepper(&mut StdRng::seed_from_u64(3)));
    }
}
