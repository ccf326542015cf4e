//! Associations: reading both tables, checking signatures, choosing one per address, writing
//! them (with their lookup hashes and directory entries) in batches.

use super::*;

/// One candidate association for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    mxid: String,
    ts: i64,
    not_before: i64,
    not_after: i64,
}

impl Candidate {
    /// Sydent's order: valid now first, then the latest.
    fn rank(&self, now_ms: i64) -> (bool, i64) {
        (
            self.not_before <= now_ms && now_ms < self.not_after,
            self.ts,
        )
    }
}

/// What Sydent says about one address.
#[derive(Debug, Clone, Default)]
struct AddressState {
    best: Option<Candidate>,
    /// The latest local unbind.
    unbound_at: Option<i64>,
}

impl AddressState {
    fn offer(&mut self, candidate: Candidate, now_ms: i64) {
        let better = match &self.best {
            None => true,
            Some(best) => candidate.rank(now_ms) > best.rank(now_ms),
        };
        if better {
            self.best = Some(candidate);
        }
    }
}

/// How a global row's signature fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Verified,
    OwnUnverified,
    Unverified,
}

/// A key global rows are checked with: its key id and the decoded public key (decoded once:
/// with 300,000 rows, decoding it for each would cost seconds).
struct OriginKey {
    key_id: String,
    key: ed25519_dalek::VerifyingKey,
}

impl OriginKey {
    /// From a key id and an unpadded base64 public key; `None` if it is not a valid key.
    fn new(key_id: &str, public_key: &str) -> Option<OriginKey> {
        let bytes: [u8; 32] = LENIENT_BASE64.decode(public_key).ok()?.try_into().ok()?;
        Some(OriginKey {
            key_id: key_id.to_string(),
            key: ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?,
        })
    }

    /// Whether `signed` carries a valid signature of `server` by this key (the spec's
    /// "Checking for a signature": canonical JSON without `signatures` and `unsigned`).
    fn verifies(&self, mut signed: serde_json::Map<String, Value>, server: &str) -> bool {
        use ed25519_dalek::Verifier as _;
        let Some(signature) = signed
            .remove("signatures")
            .as_ref()
            .and_then(|s| s.get(server))
            .and_then(|s| s.get(&self.key_id))
            .and_then(Value::as_str)
            .and_then(|s| LENIENT_BASE64.decode(s).ok())
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
        else {
            return false;
        };
        signed.remove("unsigned");
        let Ok(canonical) = canonical_json(&Value::Object(signed)) else {
            return false;
        };
        self.key
            .verify(
                canonical.as_bytes(),
                &ed25519_dalek::Signature::from_bytes(&signature),
            )
            .is_ok()
    }
}

/// The keys global rows are checked with, by origin server.
type OriginKeys = HashMap<String, OriginKey>;

fn verify_global(row: &SydentGlobalAssociation, keys: &OriginKeys, own: Option<&str>) -> Verdict {
    let failed = if own == Some(row.origin_server.as_str()) {
        Verdict::OwnUnverified
    } else {
        Verdict::Unverified
    };
    let Some(key) = keys.get(&row.origin_server) else {
        return failed;
    };
    let Ok(Value::Object(signed)) = serde_json::from_str::<Value>(&row.sg_assoc) else {
        return failed;
    };
    // The signed JSON must say what the row says, or the row is not what was signed.
    let text = |field: &str| signed.get(field).and_then(Value::as_str);
    let number = |field: &str| signed.get(field).and_then(Value::as_i64);
    let same = text("medium") == Some(row.medium.as_str())
        && text("address") == Some(row.address.as_str())
        && text("mxid") == Some(row.mxid.as_str())
        && number("ts") == Some(row.ts)
        && number("not_before") == Some(row.not_before)
        && number("not_after") == Some(row.not_after);
    if same && key.verifies(signed, &row.origin_server) {
        Verdict::Verified
    } else {
        failed
    }
}

/// Verifies a page of global rows on every core (signature checks dominate the import).
fn verify_page(
    rows: &[SydentGlobalAssociation],
    keys: &OriginKeys,
    own: Option<&str>,
) -> Vec<Verdict> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    if threads == 1 || rows.len() < 64 {
        return rows.iter().map(|r| verify_global(r, keys, own)).collect();
    }
    let chunk = rows.len().div_ceil(threads);
    let parts: Vec<&[SydentGlobalAssociation]> = rows.chunks(chunk).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|r| verify_global(r, keys, own))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&parts)
            .flat_map(|(handle, part)| {
                // A verifier that panicked is a bug; its rows count as unverified.
                handle
                    .join()
                    .unwrap_or_else(|_| vec![Verdict::Unverified; part.len()])
            })
            .collect()
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn import_associations(
    conn: &mut DbConn,
    db: &mut SydentDb,
    conf: &SydentConf,
    policy: &PolicyIndex,
    options: &ImportOptions,
    now_ms: i64,
    summary: &mut ImportSummary,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<(), ImportError> {
    let directory = &mut summary.directory;
    let counts = &mut summary.associations;
    let mut keys: OriginKeys = HashMap::new();
    for peer in db.peer_keys()? {
        if peer.alg != "ed25519" {
            continue;
        }
        if let Some(key) = peer_public_key(&peer.key).and_then(|k| OriginKey::new("ed25519:0", &k))
        {
            keys.insert(peer.peer, key);
        }
    }
    let own = conf.server_name.as_deref();
    if let (Some(name), Some(key)) = (own, &conf.signing_key)
        && let Some(key) = OriginKey::new(key.key_id(), &key.public_key_base64())
    {
        keys.insert(name.to_string(), key);
    }

    let total = u64::try_from(
        db.count("global_threepid_associations")? + db.count("local_threepid_associations")?,
    )
    .unwrap_or(0);
    let mut read = 0u64;
    let mut addresses: HashMap<String, AddressState> = HashMap::new();
    let address_of = |medium: &str, address: &str, counts: &mut AssociationCounts| {
        if medium != "email" {
            counts.other_medium += 1;
            return None;
        }
        match normalize_email(address) {
            Ok(a) => Some(a.as_str().to_string()),
            Err(_) => {
                counts.invalid_address += 1;
                None
            }
        }
    };

    let mut after = 0;
    loop {
        let page = db.global_associations(after, READ_PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let verdicts = verify_page(&page, &keys, own);
        for (row, verdict) in page.into_iter().zip(verdicts) {
            counts.read_global += 1;
            match verdict {
                Verdict::Verified => counts.verified += 1,
                Verdict::OwnUnverified => {
                    counts.own_unverified += 1;
                    continue;
                }
                Verdict::Unverified => {
                    counts.unverified += 1;
                    continue;
                }
            }
            let Some(address) = address_of(&row.medium, &row.address, counts) else {
                continue;
            };
            addresses.entry(address).or_default().offer(
                Candidate {
                    mxid: row.mxid,
                    ts: row.ts,
                    not_before: row.not_before,
                    not_after: row.not_after,
                },
                now_ms,
            );
        }
        read = counts.read_global;
        progress(ImportProgress {
            phase: "reading associations",
            done: read,
            total,
        });
    }

    let mut after = 0;
    loop {
        let page = db.local_associations(after, READ_PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for row in page {
            counts.read_local += 1;
            let Some(address) = address_of(&row.medium, &row.address, counts) else {
                continue;
            };
            let state = addresses.entry(address).or_default();
            match (row.mxid, row.ts, row.not_before, row.not_after) {
                (Some(mxid), Some(ts), Some(not_before), Some(not_after)) => state.offer(
                    Candidate {
                        mxid,
                        ts,
                        not_before,
                        not_after,
                    },
                    now_ms,
                ),
                (None, ts, _, _) => {
                    let ts = ts.unwrap_or(0);
                    state.unbound_at = Some(state.unbound_at.map_or(ts, |t| t.max(ts)));
                }
                // A bind without its dates (a broken row): the global table decides.
                _ => {}
            }
        }
        progress(ImportProgress {
            phase: "reading associations",
            done: read + counts.read_local,
            total,
        });
    }

    let mut sorted: Vec<(String, AddressState)> = addresses
        .into_iter()
        .filter(|(_, s)| s.best.is_some() || s.unbound_at.is_some())
        .collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    counts.addresses = sorted.iter().filter(|(_, s)| s.best.is_some()).count() as u64;
    // A user's directory entry follows their latest bind, as binds in annuaire make it.
    let mut latest: HashMap<&str, (i64, &str)> = HashMap::new();
    for (address, state) in &sorted {
        if let Some(c) = &state.best {
            let slot = latest
                .entry(c.mxid.as_str())
                .or_insert((c.ts, address.as_str()));
            if c.ts > slot.0 {
                *slot = (c.ts, address.as_str());
            }
        }
    }
    let total = sorted.len() as u64;
    let mut done = 0u64;
    let mut wrote = false;
    let mut statistics = Statistics::default();
    for page in sorted.chunks(options.batch_size.max(1)) {
        let wanted: Vec<String> = page.iter().map(|(a, _)| a.clone()).collect();
        let existing: HashMap<String, AssociationRow> =
            source::associations_of_addresses(conn, "email", &wanted)?
                .into_iter()
                .map(|r| (r.address.clone(), r))
                .collect();
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        let mut entries = Vec::new();
        for (address, state) in page {
            let held = existing.get(address);
            if let Some(c) = &state.best
                && latest
                    .get(c.mxid.as_str())
                    .is_some_and(|(_, a)| *a == address.as_str())
                && !held.is_some_and(|h| h.created_at > c.ts && *h != row_of(address, c))
            {
                entries.push((address.as_str(), c.mxid.as_str()));
            }
            match (&state.best, held) {
                (Some(c), None) => {
                    counts.new += 1;
                    upserts.push(row_of(address, c));
                }
                (Some(c), Some(h)) => {
                    if h.mxid == c.mxid
                        && h.created_at == c.ts
                        && h.not_before == c.not_before
                        && h.not_after == c.not_after
                    {
                        counts.unchanged += 1;
                    } else if h.created_at > c.ts {
                        counts.kept_newer += 1;
                    } else {
                        counts.updated += 1;
                        upserts.push(row_of(address, c));
                    }
                }
                (None, Some(h)) => {
                    if state.unbound_at.is_some_and(|t| t >= h.created_at) {
                        counts.removed += 1;
                        removals.push(address.clone());
                    }
                }
                (None, None) => {}
            }
        }
        let binds = directory_binds(conn, policy, &entries, now_ms, directory)?;
        if !options.dry_run && (!upserts.is_empty() || !removals.is_empty() || !binds.is_empty()) {
            crate::store::transaction(conn, |conn| {
                // The write first, as annuaire's own binds (see `store::identity`).
                source::upsert_associations(conn, &upserts)?;
                let peppers = lookup::peppers_for_new_hashes(conn)?;
                let hashes: Vec<(i64, String, String, String)> = peppers
                    .iter()
                    .flat_map(|p| {
                        upserts.iter().map(move |r| {
                            (
                                p.id,
                                lookup_hash(&r.address, &r.medium, &p.value),
                                r.medium.clone(),
                                r.address.clone(),
                            )
                        })
                    })
                    .collect();
                source::insert_hashes_batch(conn, &hashes)?;
                for address in &removals {
                    store::delete_association(conn, "email", address, now_ms)?;
                }
                crate::directory::entries::add_imported_binds(conn, &binds, now_ms)?;
                Ok::<_, StoreError>(())
            })?;
            statistics.wrote(conn)?;
            wrote = true;
        }
        done += page.len() as u64;
        progress(ImportProgress {
            phase: "writing associations",
            done,
            total,
        });
    }
    if wrote {
        // Running instances keep a lookup index in memory (`identity::live`): one change tells
        // them to read every association again, rather than one per imported address.
        crate::store::changes::record(conn, &[(ChangeKind::AllAssociations, "")], now_ms)?;
    }
    Ok(())
}

/// The binds `(address, mxid)` of a batch whose users get a directory entry: those without
/// one yet, whose address the allowlists do not deny, with a valid user ID.
fn directory_binds(
    conn: &mut DbConn,
    policy: &PolicyIndex,
    binds: &[(&str, &str)],
    now_ms: i64,
    counts: &mut DirectoryCounts,
) -> Result<Vec<(String, crate::policy::Address, crate::policy::Decision)>, StoreError> {
    let mxids: Vec<String> = binds.iter().map(|(_, m)| (*m).to_string()).collect();
    let existing: HashSet<String> = crate::store::directory::existing_mxids(conn, &mxids)?
        .into_iter()
        .collect();
    let mut out = Vec::new();
    for (address, mxid) in binds {
        if existing.contains(*mxid) {
            counts.unchanged += 1;
            continue;
        }
        if crate::directory::entries::split_user_id(mxid).is_err() {
            counts.invalid_user_id += 1;
            continue;
        }
        let Ok(address) = normalize_email(address) else {
            counts.invalid_user_id += 1;
            continue;
        };
        let decision = policy.decide(&address, now_ms);
        if decision.outcome == Outcome::Denied {
            counts.denied += 1;
            continue;
        }
        counts.new += 1;
        out.push(((*mxid).to_string(), address, decision));
    }
    Ok(out)
}

fn row_of(address: &str, c: &Candidate) -> AssociationRow {
    AssociationRow {
        medium: "email".into(),
        address: address.to_string(),
        mxid: c.mxid.clone(),
        created_at: c.ts,
        not_before: c.not_before,
        not_after: c.not_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn global(origin: &str, key: &SigningKey, mxid: &str) -> SydentGlobalAssociation {
        let mut signed = serde_json::json!({
            "medium": "email", "address": "a@b.example", "mxid": mxid,
            "ts": 10, "not_before": 10, "not_after": 100,
        });
        crate::matrix::signing::sign_json(&mut signed, origin, key).unwrap();
        SydentGlobalAssociation {
            id: 1,
            medium: "email".into(),
            address: "a@b.example".into(),
            mxid: mxid.into(),
            ts: 10,
            not_before: 10,
            not_after: 100,
            origin_server: origin.into(),
            origin_id: 1,
            sg_assoc: signed.to_string(),
        }
    }

    #[test]
    fn global_rows_verify_with_their_origin_key_only() {
        let own = SigningKey::generate(&mut StdRng::seed_from_u64(4));
        let peer = SigningKey::generate(&mut StdRng::seed_from_u64(5));
        let mut keys = OriginKeys::new();
        keys.insert(
            "own.example".into(),
            OriginKey::new("ed25519:0", &own.public_key_base64()).unwrap(),
        );
        keys.insert(
            "peer.example".into(),
            OriginKey::new("ed25519:0", &peer.public_key_base64()).unwrap(),
        );
        let mine = global("own.example", &own, "@a:hs");
        assert_eq!(
            verify_global(&mine, &keys, Some("own.example")),
            Verdict::Verified
        );
        let theirs = global("peer.example", &peer, "@a:hs");
        assert_eq!(
            verify_global(&theirs, &keys, Some("own.example")),
            Verdict::Verified
        );
        // Signed by someone else than the origin it claims.
        let forged = global("peer.example", &own, "@a:hs");
        assert_eq!(
            verify_global(&forged, &keys, Some("own.example")),
            Verdict::Unverified
        );
        let old_key = global("own.example", &peer, "@a:hs");
        assert_eq!(
            verify_global(&old_key, &keys, Some("own.example")),
            Verdict::OwnUnverified
        );
        // A row that says something else than what was signed.
        let mut changed = global("peer.example", &peer, "@a:hs");
        changed.mxid = "@mallory:hs".into();
        assert_eq!(
            verify_global(&changed, &keys, Some("own.example")),
            Verdict::Unverified
        );
        // Unknown peer, or broken JSON.
        let stranger = global("stranger.example", &peer, "@a:hs");
        assert_eq!(
            verify_global(&stranger, &keys, Some("own.example")),
            Verdict::Unverified
        );
        let mut broken = global("peer.example", &peer, "@a:hs");
        broken.sg_assoc = "{".into();
        assert_eq!(
            verify_global(&broken, &keys, Some("own.example")),
            Verdict::Unverified
        );
        // In parallel, in order.
        let page: Vec<_> = (0..200)
            .map(|i| {
                if i % 2 == 0 {
                    mine.clone()
                } else {
                    forged.clone()
                }
            })
            .collect();
        let verdicts = verify_page(&page, &keys, Some("own.example"));
        assert_eq!(verdicts.len(), 200);
        for (i, v) in verdicts.iter().enumerate() {
            let want = if i % 2 == 0 {
                Verdict::Verified
            } else {
                Verdict::Unverified
            };
            assert_eq!(*v, want, "row {i}");
        }
    }

    #[test]
    fn the_latest_valid_association_wins() {
        let now = 1_000;
        let c = |mxid: &str, ts, nb, na| Candidate {
            mxid: mxid.into(),
            ts,
            not_before: nb,
            not_after: na,
        };
        let mut s = AddressState::default();
        s.offer(c("@old:hs", 10, 10, 10_000), now);
        s.offer(c("@new:hs", 20, 20, 10_000), now);
        s.offer(c("@older:hs", 5, 5, 10_000), now);
        assert_eq!(s.best.as_ref().unwrap().mxid, "@new:hs");
        // Later but expired: Sydent's lookups do not answer it.
        s.offer(c("@expired:hs", 30, 30, 500), now);
        assert_eq!(s.best.as_ref().unwrap().mxid, "@new:hs");
    }
}
