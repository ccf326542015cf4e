//! Accounts, their access tokens and their accepted terms.

use super::*;

/// Imports the accounts; returns every Sydent user ID that has an account (their tokens and
/// terms may follow).
pub(super) fn import_accounts(
    conn: &mut DbConn,
    db: &mut SydentDb,
    options: &ImportOptions,
    now_ms: i64,
    summary: &mut ImportSummary,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<HashSet<String>, ImportError> {
    let total = u64::try_from(db.count("accounts")?).unwrap_or(0);
    let counts = &mut summary.accounts;
    let mut known = HashSet::new();
    let mut statistics = Statistics::default();
    let mut after = String::new();
    loop {
        let page = db.accounts(&after, options.batch_size.max(1) as i64)?;
        let Some(last) = page.last() else { break };
        after = last.user_id.clone();
        counts.read += page.len() as u64;
        let ids: Vec<String> = page.iter().map(|a| a.user_id.clone()).collect();
        let existing: HashSet<String> =
            source::existing_accounts(conn, &ids)?.into_iter().collect();
        let mut rows = Vec::new();
        for account in page {
            if existing.contains(&account.user_id) {
                counts.unchanged += 1;
            } else {
                counts.new += 1;
                let created = if account.created_ts > 0 {
                    account.created_ts
                } else {
                    now_ms
                };
                rows.push((account.user_id.clone(), created));
            }
            known.insert(account.user_id);
        }
        if !options.dry_run && !rows.is_empty() {
            crate::store::transaction(conn, |conn| source::insert_accounts(conn, &rows))?;
            statistics.wrote(conn)?;
        }
        progress(ImportProgress {
            phase: "accounts",
            done: counts.read,
            total,
        });
    }
    Ok(known)
}

pub(super) fn import_tokens(
    conn: &mut DbConn,
    db: &mut SydentDb,
    options: &ImportOptions,
    known_users: &HashSet<String>,
    now_ms: i64,
    summary: &mut ImportSummary,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<(), ImportError> {
    let total = u64::try_from(db.count("tokens")?).unwrap_or(0);
    let counts = &mut summary.tokens;
    let expires_at = now_ms.saturating_add(options.token_lifetime_ms);
    let mut statistics = Statistics::default();
    let mut after = String::new();
    loop {
        let page = db.tokens(&after, options.batch_size.max(1) as i64)?;
        let Some(last) = page.last() else { break };
        after = last.token.clone();
        counts.read += page.len() as u64;
        let hashed: Vec<(String, String)> = page
            .into_iter()
            .filter_map(|t| {
                if t.token.is_empty() || !known_users.contains(&t.user_id) {
                    counts.skipped += 1;
                    None
                } else {
                    Some((token_hash(&t.token), t.user_id))
                }
            })
            .collect();
        let hashes: Vec<String> = hashed.iter().map(|(h, _)| h.clone()).collect();
        let existing: HashSet<String> = source::existing_token_hashes(conn, &hashes)?
            .into_iter()
            .collect();
        let mut rows = Vec::new();
        for (hash, user_id) in hashed {
            if existing.contains(&hash) {
                counts.unchanged += 1;
            } else {
                counts.new += 1;
                rows.push((hash, user_id, now_ms, expires_at));
            }
        }
        if !options.dry_run && !rows.is_empty() {
            crate::store::transaction(conn, |conn| source::insert_tokens(conn, &rows))?;
            statistics.wrote(conn)?;
        }
        progress(ImportProgress {
            phase: "tokens",
            done: counts.read,
            total,
        });
    }
    Ok(())
}

pub(super) fn import_accepted_terms(
    conn: &mut DbConn,
    db: &mut SydentDb,
    options: &ImportOptions,
    known_users: &HashSet<String>,
    now_ms: i64,
    summary: &mut ImportSummary,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<(), ImportError> {
    let total = u64::try_from(db.count("accepted_terms_urls")?).unwrap_or(0);
    let counts = &mut summary.accepted_terms;
    let mut statistics = Statistics::default();
    let mut after = 0;
    loop {
        let page = db.accepted_terms(after, options.batch_size.max(1) as i64)?;
        let Some(last) = page.last() else { break };
        after = last.rowid;
        counts.read += page.len() as u64;
        let users: Vec<String> = page
            .iter()
            .map(|t| t.user_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let existing: HashSet<(String, String)> = source::accepted_terms_of(conn, &users)?
            .into_iter()
            .collect();
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for t in page {
            if !known_users.contains(&t.user_id) || t.url.is_empty() {
                counts.skipped += 1;
            } else if existing.contains(&(t.user_id.clone(), t.url.clone()))
                || !seen.insert((t.user_id.clone(), t.url.clone()))
            {
                counts.unchanged += 1;
            } else {
                counts.new += 1;
                rows.push((t.user_id, t.url, now_ms));
            }
        }
        if !options.dry_run && !rows.is_empty() {
            crate::store::transaction(conn, |conn| source::insert_accepted_terms(conn, &rows))?;
            statistics.wrote(conn)?;
        }
        progress(ImportProgress {
            phase: "accepted terms",
            done: counts.read,
            total,
        });
    }
    Ok(())
}
