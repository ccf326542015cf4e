//! What this instance keeps of the identity data in memory, so that authenticated calls,
//! lookups and `/info` need no database round trip: access tokens and their accounts' consent,
//! the lookup pepper, and the lookup index ([`super::index`]) of the current pepper's hashes.
//!
//! # Staying true
//!
//! Every change to these is written to the change feed (`store::changes`) in its own
//! transaction, whichever instance or command makes it: a deleted token, an account's consent,
//! the pepper's switch, an address bound, rebound, unbound or erased. Each instance reads the
//! feed every [`SYNC_INTERVAL`] ([`start_sync`]) and applies it: tokens and consents are
//! forgotten, the pepper re-read, an address's entry in the index re-read from the database.
//! The caches are used only while the last complete read of the feed started less than
//! [`FRESH_FOR`] ago; otherwise (database unreachable, job not running, an instance that does
//! not run the job such as the command line) every answer comes from the database as before.
//! So a change made anywhere is seen everywhere within about a second. Entries also expire
//! ([`CACHE_TTL`]), a safety net.
//!
//! A value read from the database is remembered only if no invalidation was applied while it
//! was being read (a generation counter), so a read racing with a logout cannot put the
//! logged-out token back.
//!
//! # The lookup index
//!
//! Built in the background at start and after each pepper switch (from the associations, in
//! pages); until it is ready lookups use the database. Changes that arrive during the build are
//! kept and re-read once it is done.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::IdentityService;
use super::index::{Binding, IndexBuilder, LookupIndex, key_of_address, key_of_hash};
use super::lookup::Pepper;
use crate::cache::TtlCache;
use crate::clock::SharedClock;
use crate::store::changes::{self, ChangeKind, split_association_key};
use crate::store::identity as store;
use crate::store::{DbConn, StoreError};

/// How often the feed is read.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);
/// How long after the start of the last complete feed read the caches may be used.
pub const FRESH_FOR: Duration = Duration::from_millis(800);
/// How long a cached token or consent is kept at most.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// After this long without a complete feed read, everything is dropped and read again (the
/// feed keeps [`FEED_RETENTION`]).
const RESET_AFTER: Duration = Duration::from_secs(15 * 60);
/// How long changes stay in the feed.
pub const FEED_RETENTION: Duration = Duration::from_secs(3600);
/// The most tokens and consents kept.
const MAX_CACHED: usize = 200_000;
/// Rows per feed page and per index build page.
const FEED_PAGE: i64 = 1000;
const BUILD_PAGE: i64 = 20_000;

/// A cached access token.
#[derive(Debug, Clone)]
struct CachedToken {
    user_id: Arc<str>,
    expires_at: i64,
}

/// Where the lookup index stands.
#[derive(Debug)]
enum IndexState {
    /// Not built (yet), or dropped after a pepper switch.
    Missing,
    /// Being built for this pepper; the association keys changed meanwhile.
    Building {
        pepper_id: i64,
        pending: Vec<String>,
    },
    /// Ready for this pepper.
    Ready(LookupIndex),
    /// Cannot be built (see the log); lookups use the database.
    Disabled,
}

/// The in-memory identity state of this instance (see the module documentation).
pub struct Live {
    tokens: TtlCache<[u8; 32], CachedToken>,
    consents: TtlCache<Arc<str>, Option<Arc<str>>>,
    pepper: ArcSwapOption<Pepper>,
    index: RwLock<IndexState>,
    /// Feed position (the last id applied).
    position: Mutex<i64>,
    /// Nanoseconds after `origin` at which the last complete feed read started (0: never).
    synced_at: AtomicU64,
    origin: Instant,
    /// Bumped by every applied invalidation of tokens, consents or the pepper.
    generation: AtomicU64,
    /// One feed read at a time (the background job, or a request that just wrote).
    sync_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("tokens", &self.tokens.len())
            .field("fresh", &self.is_fresh())
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Empty caches that go on from feed position `position`, with `pepper` the current one
    /// (both read at start, position first).
    pub fn new(clock: SharedClock, position: i64, pepper: Pepper) -> Live {
        Live {
            tokens: TtlCache::new(MAX_CACHED, clock.clone()),
            consents: TtlCache::new(MAX_CACHED, clock),
            pepper: ArcSwapOption::from_pointee(pepper),
            index: RwLock::new(IndexState::Missing),
            position: Mutex::new(position),
            synced_at: AtomicU64::new(0),
            origin: Instant::now(),
            generation: AtomicU64::new(0),
            sync_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether the caches may be used now.
    pub fn is_fresh(&self) -> bool {
        let synced = self.synced_at.load(Ordering::Acquire);
        if synced == 0 {
            return false;
        }
        let now = self.nanos();
        now.saturating_sub(synced) < FRESH_FOR.as_nanos() as u64
    }

    fn nanos(&self) -> u64 {
        // At least 1: 0 means "never".
        (self.origin.elapsed().as_nanos() as u64).max(1)
    }

    /// The generation to pass to the `remember_…` calls of a value about to be read.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn invalidated(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The cached account of a token hash: (user ID, consent), if known, fresh and unexpired.
    pub fn account(
        &self,
        token_digest: &[u8; 32],
        now_ms: i64,
    ) -> Option<(Arc<str>, Option<Arc<str>>)> {
        if !self.is_fresh() {
            return None;
        }
        let token = self.tokens.get(token_digest)?;
        if token.expires_at <= now_ms {
            return None;
        }
        let consent = self.consents.get(&token.user_id)?;
        Some((token.user_id, consent))
    }

    /// Remembers a token's account, read from the database under `generation`.
    pub fn remember_account(
        &self,
        token_digest: [u8; 32],
        user_id: &str,
        consent: Option<&str>,
        expires_at: i64,
        generation: u64,
    ) {
        let user_id: Arc<str> = Arc::from(user_id);
        let ttl = CACHE_TTL.as_millis() as i64;
        // Checked after the read, before and after the insert: an invalidation applied in
        // between removes what the insert adds, or makes us remove it.
        if self.generation() != generation {
            return;
        }
        self.tokens.insert_for(
            token_digest,
            CachedToken {
                user_id: user_id.clone(),
                expires_at,
            },
            ttl,
        );
        self.consents
            .insert_for(user_id.clone(), consent.map(Arc::from), ttl);
        if self.generation() != generation {
            self.tokens.remove(&token_digest);
            self.consents.remove(&user_id);
        }
    }

    /// Forgets a token at once (this instance logged it out).
    pub fn forget_token(&self, token_digest: &[u8; 32]) {
        self.invalidated();
        self.tokens.remove(token_digest);
    }

    /// Forgets an account's consent at once (this instance changed it).
    pub fn forget_consent(&self, user_id: &str) {
        self.invalidated();
        self.consents.remove(&Arc::from(user_id));
    }

    /// The current pepper, if fresh.
    pub fn pepper(&self) -> Option<Arc<Pepper>> {
        if !self.is_fresh() {
            return None;
        }
        self.pepper.load_full()
    }

    /// Answers a lookup from the index: `None` when it cannot (not fresh, not ready, another
    /// pepper, outside its validity bounds), and the caller asks the database.
    pub fn lookup(
        &self,
        pepper: &Pepper,
        algorithm: &str,
        addresses: &mut [String],
        now_ms: i64,
    ) -> Option<BTreeMap<String, String>> {
        if !self.is_fresh() {
            return None;
        }
        let state = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let IndexState::Ready(index) = &*state else {
            return None;
        };
        if index.pepper_id() != pepper.id || !index.answers_at(now_ms) {
            return None;
        }
        let keys: Vec<Option<super::index::Key>> = addresses
            .iter()
            .map(|asked| {
                if algorithm == "sha256" {
                    key_of_hash(asked)
                } else {
                    asked
                        .rsplit_once(' ')
                        .map(|(address, medium)| key_of_address(address, medium, &pepper.value))
                }
            })
            .collect();
        // The asked strings are moved, not copied, into the answer; collecting the pairs and
        // building the map at once (a sort, then a bulk build) costs less than inserting
        // hundreds of keys one by one. A key asked twice keeps one entry, as inserts would.
        let mut found = Vec::new();
        index.get_many(&keys, now_ms, |i, mxid| {
            if let Some(asked) = addresses.get_mut(i) {
                found.push((std::mem::take(asked), mxid));
            }
        });
        Some(found.into_iter().collect())
    }

    /// Who an address is bound to, from the index: `None` when the index cannot answer.
    pub fn bound_mxid(&self, medium: &str, address: &str, now_ms: i64) -> Option<Option<String>> {
        let pepper = self.pepper()?;
        let state = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let IndexState::Ready(index) = &*state else {
            return None;
        };
        if index.pepper_id() != pepper.id || !index.answers_at(now_ms) {
            return None;
        }
        Some(index.get(&key_of_address(address, medium, &pepper.value), now_ms))
    }

    /// Associations in the ready index (`None` while it is not ready).
    pub fn indexed(&self) -> Option<usize> {
        match &*self.index.read().unwrap_or_else(PoisonError::into_inner) {
            IndexState::Ready(index) => Some(index.len()),
            _ => None,
        }
    }
}

/// What one read of the feed found, to apply outside the blocking task.
#[derive(Debug, Default)]
struct FeedRead {
    position: i64,
    tokens: Vec<[u8; 32]>,
    accounts: Vec<String>,
    pepper: Option<Pepper>,
    /// Association keys changed, with their current state when `bindings_read`.
    associations: Vec<(String, Option<Binding>)>,
    /// Whether the associations' current state was read (the index is ready and not about to
    /// be rebuilt).
    bindings_read: bool,
    /// Many associations changed: the index is built again.
    rebuild: bool,
}

/// Reads the feed after `position` to its end, with the current state of what it names
/// (blocking). `read_bindings`: whether changed associations are re-read (index ready).
fn read_feed(
    conn: &mut DbConn,
    mut position: i64,
    read_bindings: bool,
) -> Result<FeedRead, StoreError> {
    let mut read = FeedRead::default();
    let mut pepper_changed = false;
    let mut keys: Vec<String> = Vec::new();
    loop {
        let page = changes::after(conn, position, FEED_PAGE)?;
        for change in page.changes {
            match change.kind {
                ChangeKind::Token => {
                    if let Some(digest) = token_digest_of_hash(&change.key) {
                        read.tokens.push(digest);
                    }
                }
                ChangeKind::Account => read.accounts.push(change.key),
                ChangeKind::Pepper => pepper_changed = true,
                ChangeKind::Association => keys.push(change.key),
                ChangeKind::AllAssociations => read.rebuild = true,
            }
        }
        position = page.last;
        if !page.full {
            break;
        }
    }
    read.position = position;
    if pepper_changed {
        read.pepper = Some(super::lookup::pepper(conn)?);
    }
    keys.sort();
    keys.dedup();
    let read_bindings = read_bindings && !read.rebuild;
    read.bindings_read = read_bindings;
    for key in keys {
        let binding = match (read_bindings, split_association_key(&key)) {
            (true, Some((medium, address))) => {
                store::association(conn, medium, address)?.map(|row| Binding {
                    mxid: row.mxid,
                    not_before: row.not_before,
                    not_after: row.not_after,
                })
            }
            _ => None,
        };
        read.associations.push((key, binding));
    }
    Ok(read)
}

/// A token's digest from the hash the database keeps (URL-safe base64 of SHA-256).
fn token_digest_of_hash(hash: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let mut digest = [0u8; 32];
    match base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(hash.as_bytes(), &mut digest)
    {
        Ok(32) => Some(digest),
        _ => None,
    }
}

/// Builds the index of `pepper` from every association (blocking; pages in key order).
fn build_index(
    conn: &mut DbConn,
    pepper: &Pepper,
    now_ms: i64,
) -> Result<IndexBuilder, StoreError> {
    let count = usize::try_from(store::count_associations(conn)?).unwrap_or(0);
    let mut builder = LookupIndex::builder(pepper.id, count + count / 64 + 16, now_ms);
    let mut cursor: Option<(String, String)> = None;
    loop {
        let rows = store::associations_after(
            conn,
            cursor.as_ref().map(|(m, a)| (m.as_str(), a.as_str())),
            BUILD_PAGE,
        )?;
        let Some(last) = rows.last() else {
            break;
        };
        cursor = Some((last.medium.clone(), last.address.clone()));
        for row in &rows {
            builder.add(
                key_of_address(&row.address, &row.medium, &pepper.value),
                &Binding {
                    mxid: row.mxid.clone(),
                    not_before: row.not_before,
                    not_after: row.not_after,
                },
            );
        }
    }
    Ok(builder)
}

impl IdentityService {
    /// Reads the change feed now and applies it (after this instance wrote something, so that
    /// it sees its own change at once; tests, after writing behind the service's back).
    pub async fn sync_now(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.live.sync_lock.lock().await;
        let started = self.live.nanos();
        self.sync_feed().await?;
        self.live.synced_at.store(started, Ordering::Release);
        Ok(())
    }

    /// [`IdentityService::sync_now`], logging a failure (the background job retries).
    pub(crate) async fn sync_after_write(&self) {
        if let Err(e) = self.sync_now().await {
            tracing::warn!(error = %e, "cannot read the identity change feed after a write");
        }
    }

    /// Associations in the lookup index, once it is ready (`None` while lookups use the
    /// database).
    pub fn lookup_index_size(&self) -> Option<usize> {
        self.live.indexed()
    }

    /// Reads the feed once and applies it (the caller holds `sync_lock`).
    async fn sync_feed(&self) -> Result<(), StoreError> {
        let live = self.live.clone();
        let position = *live.position.lock().unwrap_or_else(PoisonError::into_inner);
        let read_bindings = matches!(
            &*live.index.read().unwrap_or_else(PoisonError::into_inner),
            IndexState::Ready(_)
        );
        let read = self
            .db
            .run(move |conn| read_feed(conn, position, read_bindings))
            .await?;
        let now = self.clock.now_ms();
        let live = &self.live;
        if !read.tokens.is_empty() || !read.accounts.is_empty() || read.pepper.is_some() {
            live.invalidated();
        }
        for digest in &read.tokens {
            live.tokens.remove(digest);
        }
        for user in &read.accounts {
            live.consents.remove(&Arc::from(user.as_str()));
        }
        let mut state = live.index.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(pepper) = read.pepper {
            let changed = live
                .pepper
                .load()
                .as_ref()
                .is_none_or(|p| p.id != pepper.id);
            live.pepper.store(Some(Arc::new(pepper)));
            if changed && !matches!(*state, IndexState::Disabled) {
                // The old index is useless now: drop it before building the next one.
                *state = IndexState::Missing;
            }
        }
        if read.rebuild && !matches!(*state, IndexState::Disabled) {
            *state = IndexState::Missing;
        }
        match &mut *state {
            IndexState::Ready(index) if read.bindings_read => {
                if let Some(pepper) = live.pepper.load_full() {
                    for (key, binding) in &read.associations {
                        if let Some((medium, address)) = split_association_key(key) {
                            index.set(
                                key_of_address(address, medium, &pepper.value),
                                binding.as_ref(),
                                now,
                            );
                        }
                    }
                }
            }
            IndexState::Building { pending, .. } => {
                pending.extend(read.associations.into_iter().map(|(k, _)| k));
            }
            // Associations read without their state (the index became ready since, which it
            // cannot while this task holds the feed): nothing to apply.
            IndexState::Ready(_) | IndexState::Missing | IndexState::Disabled => {}
        }
        drop(state);
        *live.position.lock().unwrap_or_else(PoisonError::into_inner) = read.position;
        Ok(())
    }

    /// Drops every cache and goes on from the feed's current end (after a long outage, when
    /// the feed may have lost changes this instance never read).
    async fn reset_live(&self) -> Result<(), StoreError> {
        let (position, pepper) = self
            .db
            .run(|conn| Ok((changes::last_id(conn)?, super::lookup::pepper(conn)?)))
            .await?;
        let live = &self.live;
        live.invalidated();
        live.tokens.clear();
        live.consents.clear();
        live.pepper.store(Some(Arc::new(pepper)));
        let mut state = live.index.write().unwrap_or_else(PoisonError::into_inner);
        if !matches!(*state, IndexState::Disabled) {
            *state = IndexState::Missing;
        }
        drop(state);
        *live.position.lock().unwrap_or_else(PoisonError::into_inner) = position;
        Ok(())
    }

    /// Starts building the index when it is missing; returns the build's task.
    fn start_index_build(
        &self,
    ) -> Option<tokio::task::JoinHandle<Result<IndexBuilder, StoreError>>> {
        let pepper = self.live.pepper.load_full()?;
        let mut state = self
            .live
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !matches!(*state, IndexState::Missing) {
            return None;
        }
        *state = IndexState::Building {
            pepper_id: pepper.id,
            pending: Vec::new(),
        };
        drop(state);
        let now = self.clock.now_ms();
        let db = self.db.clone();
        tracing::info!(pepper = pepper.id, "building the lookup index");
        Some(tokio::task::spawn_blocking(move || {
            let mut conn = db.get()?;
            build_index(&mut conn, &pepper, now)
        }))
    }

    /// Finishes a build: re-reads what changed meanwhile, then makes the index ready.
    async fn finish_index_build(&self, built: Result<IndexBuilder, StoreError>, started: Instant) {
        let pending = {
            let mut state = self
                .live
                .index
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match &mut *state {
                IndexState::Building { pending, .. } => std::mem::take(pending),
                // The pepper switched during the build: it is started again.
                _ => return,
            }
        };
        let index = built.and_then(|builder| {
            builder
                .finish()
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        });
        let mut index = match index {
            Ok(index) => index,
            Err(StoreError::Corrupt(reason)) => {
                tracing::error!(%reason, "the lookup index cannot be built; lookups use the database");
                *self
                    .live
                    .index
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = IndexState::Disabled;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "building the lookup index failed; trying again");
                *self
                    .live
                    .index
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = IndexState::Missing;
                return;
            }
        };
        let Some(pepper) = self.live.pepper.load_full() else {
            return;
        };
        if index.pepper_id() != pepper.id {
            *self
                .live
                .index
                .write()
                .unwrap_or_else(PoisonError::into_inner) = IndexState::Missing;
            return;
        }
        let keys = pending.clone();
        let bindings = self
            .db
            .run(move |conn| {
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    if let Some((medium, address)) = split_association_key(&key) {
                        let row = store::association(conn, medium, address)?;
                        out.push((key.clone(), row));
                    }
                }
                Ok(out)
            })
            .await;
        let bindings = match bindings {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "building the lookup index failed; trying again");
                *self
                    .live
                    .index
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = IndexState::Missing;
                return;
            }
        };
        let now = self.clock.now_ms();
        for (key, row) in bindings {
            if let Some((medium, address)) = split_association_key(&key) {
                let binding = row.map(|r| Binding {
                    mxid: r.mxid,
                    not_before: r.not_before,
                    not_after: r.not_after,
                });
                index.set(
                    key_of_address(address, medium, &pepper.value),
                    binding.as_ref(),
                    now,
                );
            }
        }
        // The feed reader is this task: nothing was added to `pending` since it was taken.
        let mut state = self
            .live
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if matches!(&*state, IndexState::Building { pepper_id, .. } if *pepper_id == pepper.id) {
            tracing::info!(
                pepper = pepper.id,
                associations = index.len(),
                heap_mib = index.heap_bytes() / (1024 * 1024),
                seconds = started.elapsed().as_secs_f64(),
                "lookup index loaded"
            );
            *state = IndexState::Ready(index);
        }
    }
}

/// Starts this instance's feed reader on the current runtime; it ends with it.
pub fn start_sync(identity: &Arc<IdentityService>) {
    let identity = identity.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(SYNC_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ok = Instant::now();
        let mut failing = false;
        let mut build: Option<(
            tokio::task::JoinHandle<Result<IndexBuilder, StoreError>>,
            Instant,
        )> = None;
        loop {
            ticker.tick().await;
            let _one_at_a_time = identity.live.sync_lock.lock().await;
            if last_ok.elapsed() > RESET_AFTER {
                match identity.reset_live().await {
                    Ok(()) => last_ok = Instant::now(),
                    Err(e) => tracing::debug!(error = %e, "identity cache reset failed"),
                }
                continue;
            }
            let started = identity.live.nanos();
            match identity.sync_feed().await {
                Ok(()) => {
                    identity.live.synced_at.store(started, Ordering::Release);
                    last_ok = Instant::now();
                    if failing {
                        tracing::info!("identity change feed readable again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read the identity change feed; \
                            answering from the database meanwhile");
                        failing = true;
                    }
                    continue;
                }
            }
            if build.as_ref().is_some_and(|(task, _)| task.is_finished())
                && let Some((task, started)) = build.take()
            {
                let built = task.await.unwrap_or_else(|e| {
                    Err(StoreError::Unavailable(format!(
                        "index build task failed: {e}"
                    )))
                });
                identity.finish_index_build(built, started).await;
            }
            if build.is_none() {
                build = identity
                    .start_index_build()
                    .map(|task| (task, Instant::now()));
            }
        }
    });
}
