//! Pending invitations and the ephemeral keys.

use super::*;

/// Pairs invitations with the ephemeral key store-invite made for them: Sydent stores the key,
/// then the invitation, in the same second (`persistence_ts`, `received_ts`), and ids grow in
/// that order. Per origin (dinsic replicates both), walking both lists by id, an invitation
/// takes the next unpaired key stored in its second or the second before; keys that fit no
/// invitation stay unpaired. Returns invitation id → index in `keys`.
fn pair_invites_with_keys(
    invites: &[SydentInvite],
    keys: &[SydentEphemeralKey],
) -> HashMap<i64, usize> {
    let mut by_origin: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        by_origin
            .entry(k.origin_server.as_deref())
            .or_default()
            .push(i);
    }
    let mut next: HashMap<Option<&str>, usize> = HashMap::new();
    let mut pairs = HashMap::new();
    for invite in invites {
        let origin = invite.origin_server.as_deref();
        let (Some(candidates), Some(received)) = (by_origin.get(&origin), invite.received_ts)
        else {
            continue;
        };
        let cursor = next.entry(origin).or_insert(0);
        let mut probe = *cursor;
        while let Some(&k) = candidates.get(probe) {
            match keys.get(k).and_then(|key| key.persistence_ts) {
                Some(t) if t == received || t + 1 == received => {
                    pairs.insert(invite.id, k);
                    *cursor = probe + 1;
                    break;
                }
                // Made after this invitation: it belongs to a later one.
                Some(t) if t > received => break,
                // Older than this invitation's second: no later invitation can pair with it.
                _ => {
                    probe += 1;
                    *cursor = probe;
                }
            }
        }
    }
    pairs
}

pub(super) fn import_invites(
    conn: &mut DbConn,
    db: &mut SydentDb,
    options: &ImportOptions,
    rng: &mut (impl RngCore + CryptoRng),
    now_ms: i64,
    summary: &mut ImportSummary,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<(), ImportError> {
    let keys = db.ephemeral_keys()?;
    let invites = db.invites()?;
    let pairs = pair_invites_with_keys(&invites, &keys);

    // Every ephemeral key stays valid, as in Sydent.
    let key_counts = &mut summary.ephemeral_keys;
    key_counts.read = keys.len() as u64;
    let canonical: Vec<Option<String>> = keys
        .iter()
        .map(|k| canonical_public_key(&k.public_key))
        .collect();
    for (chunk_keys, chunk_canonical) in keys
        .chunks(options.batch_size.max(1))
        .zip(canonical.chunks(options.batch_size.max(1)))
    {
        let valid: Vec<String> = chunk_canonical.iter().flatten().cloned().collect();
        let existing: HashSet<String> = source::existing_imported_keys(conn, &valid)?
            .into_iter()
            .collect();
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for (key, canon) in chunk_keys.iter().zip(chunk_canonical) {
            match canon {
                None => key_counts.skipped += 1,
                Some(c) if existing.contains(c) || !seen.insert(c.clone()) => {
                    key_counts.unchanged += 1
                }
                Some(c) => {
                    key_counts.new += 1;
                    let created = key
                        .persistence_ts
                        .map_or(now_ms, |s| s.saturating_mul(1000));
                    rows.push((c.clone(), created, now_ms));
                }
            }
        }
        if !options.dry_run && !rows.is_empty() {
            crate::store::transaction(conn, |conn| source::insert_imported_keys(conn, &rows))?;
        }
    }

    let counts = &mut summary.invites;
    counts.read = invites.len() as u64;
    // A token met twice (dinsic replication) is one invitation.
    let mut taken: HashSet<String> = HashSet::new();
    let total = counts.read;
    for page in invites.chunks(options.batch_size.max(1)) {
        let tokens: Vec<String> = page.iter().map(|i| i.token.clone()).collect();
        let existing: HashSet<String> = source::existing_invite_tokens(conn, &tokens)?
            .into_iter()
            .collect();
        let paired_keys: Vec<String> = page
            .iter()
            .filter_map(|i| {
                pairs
                    .get(&i.id)
                    .and_then(|&k| canonical.get(k).cloned().flatten())
            })
            .collect();
        let mut keys_in_use: HashSet<String> =
            source::invite_ephemeral_keys_in_use(conn, &paired_keys)?
                .into_iter()
                .collect();
        let mut rows = Vec::new();
        for invite in page {
            if invite.sent_ts.is_some() {
                counts.delivered += 1;
                continue;
            }
            let address = match normalize_email(&invite.address) {
                Ok(a) if invite.medium == "email" && !invite.token.is_empty() => a,
                _ => {
                    counts.invalid += 1;
                    continue;
                }
            };
            let created_at = invite
                .received_ts
                .map_or(now_ms, |s| s.saturating_mul(1000));
            let expires_at = created_at.saturating_add(options.invite_validity_ms);
            if expires_at <= now_ms {
                counts.expired += 1;
                continue;
            }
            if existing.contains(&invite.token) || !taken.insert(invite.token.clone()) {
                counts.unchanged += 1;
                continue;
            }
            counts.new += 1;
            let paired = pairs
                .get(&invite.id)
                .and_then(|&k| canonical.get(k).cloned().flatten())
                .filter(|k| !keys_in_use.contains(k));
            let ephemeral_public_key = match paired {
                Some(k) => {
                    counts.with_ephemeral_key += 1;
                    keys_in_use.insert(k.clone());
                    k
                }
                None => SigningKey::generate(rng).public_key_base64(),
            };
            rows.push(InviteRow {
                token: invite.token.clone(),
                medium: "email".into(),
                address: address.as_str().to_string(),
                room_id: invite.room_id.clone(),
                sender: invite.sender.clone(),
                details_json: "{}".into(),
                ephemeral_public_key,
                created_at,
                expires_at,
                delivery_mxid: None,
                delivery_attempts: 0,
                next_delivery_at: None,
                last_error: None,
                delivered_at: None,
                delivery_failed_at: None,
            });
        }
        if !options.dry_run && !rows.is_empty() {
            crate::store::transaction(conn, |conn| {
                for row in &rows {
                    invite_store::insert_invite(conn, row)?;
                }
                Ok::<_, StoreError>(())
            })?;
        }
        progress(ImportProgress {
            phase: "invitations",
            done: (counts.new
                + counts.unchanged
                + counts.delivered
                + counts.expired
                + counts.invalid)
                .min(total),
            total,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(id: i64, received: i64, origin: Option<&str>) -> SydentInvite {
        SydentInvite {
            id,
            medium: "email".into(),
            address: format!("i{id}@x.example"),
            room_id: "!r:hs".into(),
            sender: "@s:hs".into(),
            token: format!("t{id}"),
            received_ts: Some(received),
            sent_ts: None,
            origin_server: origin.map(String::from),
        }
    }

    fn key(id: i64, ts: i64, origin: Option<&str>) -> SydentEphemeralKey {
        SydentEphemeralKey {
            id,
            public_key: format!("k{id}"),
            persistence_ts: Some(ts),
            origin_server: origin.map(String::from),
        }
    }

    #[test]
    fn invites_pair_with_the_key_stored_just_before() {
        // Invite 1 and key 1 in the same second; key 2's invite failed to store; invite 2
        // crossed a second boundary after its key 3; invite 3 has no key left; a replicated
        // pair (dinsic) pairs within its origin.
        let invites = [
            invite(1, 100, None),
            invite(2, 201, None),
            invite(3, 300, None),
            invite(4, 50, Some("peer")),
        ];
        let keys = [
            key(1, 100, None),
            key(2, 150, None),
            key(3, 200, None),
            key(4, 50, Some("peer")),
        ];
        let pairs = pair_invites_with_keys(&invites, &keys);
        assert_eq!(pairs.get(&1), Some(&0));
        assert_eq!(pairs.get(&2), Some(&2));
        assert_eq!(pairs.get(&3), None);
        assert_eq!(pairs.get(&4), Some(&3));
    }
}
