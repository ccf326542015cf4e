//! `annuaire import sydent`: moves an existing Sydent deployment into annuaire.
//!
//! # What a Sydent deployment holds
//!
//! Sydent keeps everything in one SQLite file (`[db] db.file`) and its key in `sydent.conf`
//! (an INI file). Learnt from matrix-org/sydent v2.6.1 (`sydent/db/*.sql` and the migrations in
//! `sydent/db/sqlitedb.py`) and from Tchap's fork, the `dinsic` branch of the same repository:
//!
//! - `sydent.conf`: `[crypto] ed25519.signingkey = ed25519 <version> <base64 seed>` (or, before
//!   Sydent 1.0, one hex seed), `[general] server.name`: Sydent signs as that name with key
//!   `ed25519:<version>` and publishes the key as `/pubkey/ed25519:0`.
//! - `local_threepid_associations (id, medium, address, mxid, ts, notBefore, notAfter,
//!   lookup_hash)`: the binds made on this server, one row per (medium, address); an unbind
//!   keeps the row with `mxid`, `notBefore`, `notAfter` NULL (a tombstone).
//! - `global_threepid_associations (…, originServer, originId, sgAssoc)`: what lookups answer
//!   from: this server's binds (copied from the local table with `originServer` = its own
//!   name, deleted on unbind) and those replicated from peers. `sgAssoc` is the signed JSON
//!   (`{medium, address, mxid, ts, not_before, not_after, signatures}`) as its origin signed
//!   it. A lookup takes the row with the latest `ts` among those valid now. Times are ms;
//!   addresses are case-folded (since 2.0).
//! - `peers`, `peer_pubkeys (peername, alg, key)`: replication peers and their public keys
//!   (base64, or hex in old configurations); their signatures use key id `ed25519:0`.
//! - `hashing_metadata (id, lookup_pepper)`: the pepper of `/v2/hash_details` (schema v3+;
//!   Sydent makes it 5 characters long).
//! - `accounts (user_id, created_ts, consent_version)`, `tokens (token, user_id)` (in clear,
//!   no expiry), `accepted_terms_urls (user_id, url)` (schema v4+). `consent_version` is the
//!   terms' `master_version`, not annuaire's terms fingerprint: it is not imported; the
//!   accepted URLs are, and annuaire's terms check accepts them.
//! - `invite_tokens (id, medium, address, room_id, sender, token, received_ts, sent_ts)`:
//!   times in **seconds**; `sent_ts` is set once handed to the invitee's homeserver. The
//!   optional request fields (room name, …) are not kept.
//! - `ephemeral_public_keys (id, public_key, verify_count, persistence_ts)`: URL-safe base64,
//!   seconds. Nothing links a key to its invitation: store-invite stores the key, then the
//!   invitation, in the same second. Sydent never expires either.
//!
//! Tchap's `dinsic` schema differs: `PRAGMA user_version` counts to 10 with other meanings
//! (mainline stops at 5); `invite_tokens` and `ephemeral_public_keys` carry `origin_server`
//! and `origin_id` (invitations and keys are replicated between Tchap's identity servers),
//! `invite_tokens` has an unused `valid_until_ts` (expiry is `invites.validity_period` in the
//! configuration), `peers` has `shadow` and per-table replication positions, and there are
//! `profiles` (Tchap's replicated directory) and `updated_invites` tables.
//!
//! # What is imported, and how
//!
//! - The signing key, so that signatures Sydent made (associations, invitations already in
//!   rooms) verify with annuaire's published key. Stored in the database, unless
//!   `server.signing_key_file` is configured (then it must already hold the same key).
//! - The pepper, adopted as annuaire's current one (a rotation rehashes what is already
//!   bound), so clients' cached `hash_details` stay valid.
//! - Associations, stored as annuaire's own binds store them: the address normalised
//!   ([`normalize_email`]), the same `ts`/`not_before`/`not_after`, lookup hashes under the
//!   current pepper. Local ones always (they are Sydent's own record); global ones when their
//!   `sgAssoc` names the same association as the row and its signature verifies, with
//!   `sydent.conf`'s key for Sydent's own name, or the peer's key in `peer_pubkeys`. Nothing
//!   else can be checked offline: a global row of a peer without a key in the database is
//!   skipped. Signatures are not stored: annuaire signs associations when it gives them out,
//!   and with the imported key and the same `server.name` its signature is byte for byte
//!   Sydent's (ed25519 is deterministic). Per address the winner is, as in Sydent's lookups,
//!   the latest one valid now; an association annuaire already holds that is newer is kept;
//!   an address Sydent unbound (local tombstone, no other association) is unbound here too.
//! - Accounts, their tokens (hashed as annuaire hashes its own, with annuaire's token lifetime
//!   from the import on) and accepted terms URLs.
//! - Pending invitations (not yet handed over, not expired under annuaire's
//!   `invites.validity` counted from when Sydent received them), each with its ephemeral key
//!   when the pairing by order and second finds it; every ephemeral key is kept valid.
//!
//! Idempotent: each batch is compared with what annuaire holds and only differences are
//! written, so a second run writes nothing. A dry run reads and compares only.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine as _;
use rand::{CryptoRng, RngCore};
use serde::Serialize;
use serde_json::Value;

use super::accounts::token_hash;
use super::hashing::lookup_hash;
use super::keys::{SIGNING_KEY_STATE, canonical_public_key};
use super::lookup::{self, PepperAdoption};
use super::signing::{LENIENT_BASE64, SigningKey, canonical_json};
use crate::policy::{Outcome, PolicyIndex, normalize_email};
use crate::store::identity::{self as store, AssociationRow, InviteRow};
use crate::store::sydent::{
    self as source, SydentDb, SydentDbError, SydentEphemeralKey, SydentGlobalAssociation,
    SydentInvite,
};
use crate::store::{DbConn, StoreError, state};

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The Sydent database cannot be used.
    #[error(transparent)]
    Source(#[from] SydentDbError),
    /// `sydent.conf` cannot be used.
    #[error("sydent.conf: {0}")]
    Conf(String),
    /// annuaire already has another signing key.
    #[error(
        "annuaire already has another signing key (public key {current}). Importing Sydent's \
         replaces it: signatures annuaire made with it (invitations it stored) stop \
         verifying. Run again with --replace-signing-key to do so"
    )]
    SigningKeyConflict {
        /// annuaire's current public key.
        current: String,
    },
    /// `server.signing_key_file` holds another key.
    #[error(
        "server.signing_key_file holds another key than sydent.conf (public keys {file} and \
         {sydent}): copy `ed25519.signingkey` of sydent.conf into that file, or remove \
         server.signing_key_file to keep the key in the database, and run again"
    )]
    SigningKeyFileDiffers {
        /// The file's public key.
        file: String,
        /// Sydent's public key.
        sydent: String,
    },
    /// A pepper rotation has not finished.
    #[error(
        "a lookup pepper rotation is under way: finish it (annuaire keys rotate-pepper) and \
         run the import again"
    )]
    RotationInProgress,
    /// annuaire's database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `sydent.conf` gives the import.
#[derive(Debug, Default)]
pub struct SydentConf {
    /// `[general] server.name`: the name Sydent signed as.
    pub server_name: Option<String>,
    /// `[crypto] ed25519.signingkey`.
    pub signing_key: Option<SigningKey>,
}

/// Reads the parts of `sydent.conf` the import needs (an INI file, Python's `configparser`
/// syntax: `[section]`, `key = value` or `key: value`, `#`/`;` comments, `%%` for `%`).
pub fn parse_sydent_conf(text: &str) -> Result<SydentConf, ImportError> {
    let mut section = String::new();
    let mut values: BTreeMap<(String, String), String> = BTreeMap::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        let Some(split) = line.find(['=', ':']) else {
            return Err(ImportError::Conf(format!(
                "line {}: expected `key = value` or `[section]`",
                number + 1
            )));
        };
        let key = line[..split].trim().to_lowercase();
        let value = line[split + 1..].trim().replace("%%", "%");
        values.insert((section.clone(), key), value);
    }
    let get = |s: &str, k: &str| {
        values
            .get(&(s.to_string(), k.to_string()))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let signing_key = get("crypto", "ed25519.signingkey")
        .map(|v| parse_signing_key(&v))
        .transpose()
        .map_err(|e| ImportError::Conf(format!("[crypto] ed25519.signingkey: {e}")))?;
    Ok(SydentConf {
        server_name: get("general", "server.name"),
        signing_key,
    })
}

/// Sydent's key: `ed25519 <version> <base64 seed>`, or the pre-1.0 form, one hex seed.
fn parse_signing_key(value: &str) -> Result<SigningKey, String> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    match parts.as_slice() {
        [hex] => {
            let seed = decode_hex(hex).ok_or("a one-part key must be 64 hex digits")?;
            SigningKey::from_seed_base64("ed25519:0", &std_b64(&seed)).map_err(|e| e.to_string())
        }
        _ => SigningKey::parse_sydent(value).map_err(|e| e.to_string()),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn std_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// A peer's public key as Sydent stores it (hex first, as Sydent tries, then base64), in the
/// canonical form.
fn peer_public_key(text: &str) -> Option<String> {
    match decode_hex(text.trim()) {
        Some(bytes) => Some(std_b64(&bytes)),
        None => canonical_public_key(text),
    }
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Read and compare only.
    pub dry_run: bool,
    /// Replace a different signing key annuaire already has.
    pub replace_signing_key: bool,
    /// annuaire's `server.name` (compared with Sydent's).
    pub server_name: String,
    /// The key of `server.signing_key_file`, when that is configured.
    pub key_from_file: Option<SigningKey>,
    /// `identity.token_lifetime` (ms): imported tokens are valid that long from the import.
    pub token_lifetime_ms: i64,
    /// `invites.validity` (ms), counted from when Sydent received the invitation.
    pub invite_validity_ms: i64,
    /// Rows per batch (one transaction each).
    pub batch_size: usize,
    /// How many allowlist rules the policy given to [`import`] holds (none: a warning, since
    /// directory entries then get the default policy's decision).
    pub policy_rules: usize,
}

/// Where an import is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportProgress {
    /// `associations`, `accounts`, …
    pub phase: &'static str,
    /// Rows done in this phase.
    pub done: u64,
    /// Rows in this phase.
    pub total: u64,
}

/// Rows of one kind: read from Sydent, and what became of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Rows read from Sydent.
    pub read: u64,
    /// Written (or, in a dry run, to be written).
    pub new: u64,
    /// Already in annuaire as they are.
    pub unchanged: u64,
    /// Not imported (see the kind's own counters).
    pub skipped: u64,
}

/// What became of the associations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AssociationCounts {
    /// Rows of `local_threepid_associations` (tombstones included).
    pub read_local: u64,
    /// Rows of `global_threepid_associations`.
    pub read_global: u64,
    /// Global rows whose signature verified (Sydent's own, and peers').
    pub verified: u64,
    /// Sydent's own global rows whose signature does not verify with sydent.conf's key
    /// (signed by an earlier key): their local rows are imported all the same.
    pub own_unverified: u64,
    /// Peers' global rows not imported: no key for the peer, a bad signature, or a signed
    /// JSON that does not say what the row says.
    pub unverified: u64,
    /// Addresses that are not valid email addresses.
    pub invalid_address: u64,
    /// Other media than `email` (annuaire serves email only).
    pub other_medium: u64,
    /// Distinct addresses to import.
    pub addresses: u64,
    /// New in annuaire.
    pub new: u64,
    /// Bound to someone else, or with other dates, in annuaire: replaced.
    pub updated: u64,
    /// Already in annuaire as they are.
    pub unchanged: u64,
    /// annuaire holds a newer association for the address: kept.
    pub kept_newer: u64,
    /// Unbound in Sydent since annuaire got them: removed.
    pub removed: u64,
}

/// What became of the invitations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InviteCounts {
    /// Rows of `invite_tokens`.
    pub read: u64,
    /// Stored as pending invitations.
    pub new: u64,
    /// Already in annuaire.
    pub unchanged: u64,
    /// Already handed to the invitee's homeserver by Sydent.
    pub delivered: u64,
    /// Older than `invites.validity`.
    pub expired: u64,
    /// Not a valid email address, or another medium.
    pub invalid: u64,
    /// Of the new ones, those whose ephemeral key was found (the others get a fresh key that
    /// no one holds; every Sydent key stays valid anyway).
    pub with_ephemeral_key: u64,
}

/// What became of the directory entries of imported binds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirectoryCounts {
    /// Users given an entry, as a bind in annuaire gives them one.
    pub new: u64,
    /// Users who already had one (kept as it is).
    pub unchanged: u64,
    /// Users whose address the allowlists deny: no entry.
    pub denied: u64,
    /// Matrix IDs that are not valid user IDs: no entry.
    pub invalid_user_id: u64,
}

/// What happened to the signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOutcome {
    /// No sydent.conf (or no key in it): nothing imported.
    NotGiven,
    /// annuaire had no key: Sydent's is its key now.
    Imported,
    /// annuaire already had this key.
    Unchanged,
    /// annuaire's other key was replaced (`--replace-signing-key`).
    Replaced,
    /// `server.signing_key_file` already holds this key.
    InFile,
}

/// What happened to the pepper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PepperOutcome {
    /// The Sydent database has none: annuaire keeps its own.
    Absent,
    /// annuaire had none: Sydent's is the pepper.
    Created,
    /// annuaire already serves it.
    Unchanged,
    /// annuaire's pepper was replaced by Sydent's; this many associations were rehashed.
    Rotated {
        /// Associations rehashed.
        rehashed: u64,
    },
}

/// The summary of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// Nothing was written.
    pub dry_run: bool,
    /// `mainline` or `dinsic`.
    pub schema: &'static str,
    /// `PRAGMA user_version`.
    pub user_version: i64,
    /// The name Sydent signed as (sydent.conf).
    pub sydent_server_name: Option<String>,
    /// The signing key.
    pub signing_key: KeyOutcome,
    /// Its public key, when given.
    pub public_key: Option<String>,
    /// The pepper.
    pub pepper: PepperOutcome,
    /// Associations.
    pub associations: AssociationCounts,
    /// Identity-service accounts.
    pub accounts: Counts,
    /// Their access tokens.
    pub tokens: Counts,
    /// Accepted terms URLs.
    pub accepted_terms: Counts,
    /// Directory entries of the imported binds' users.
    pub directory: DirectoryCounts,
    /// Pending invitations.
    pub invites: InviteCounts,
    /// Ephemeral invitation keys.
    pub ephemeral_keys: Counts,
    /// Data of Sydent's that annuaire does not take over, with their counts.
    pub not_imported: Vec<String>,
    /// Things the operator should know.
    pub warnings: Vec<String>,
}

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
    let same = signed["medium"] == row.medium.as_str()
        && signed["address"] == row.address.as_str()
        && signed["mxid"] == row.mxid.as_str()
        && signed["ts"].as_i64() == Some(row.ts)
        && signed["not_before"].as_i64() == Some(row.not_before)
        && signed["not_after"].as_i64() == Some(row.not_after);
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

/// A Sydent deployment to import: its database and what its `sydent.conf` says.
#[derive(Debug)]
pub struct SydentDeployment {
    /// The database, opened read-only.
    pub db: SydentDb,
    /// The configuration ([`SydentConf::default`] when not given).
    pub conf: SydentConf,
}

/// Imports a Sydent deployment into annuaire's database (blocking). `policy` (the live
/// allowlist rules) decides the directory entries of the imported binds, as it does for binds.
pub fn import(
    conn: &mut DbConn,
    sydent: &mut SydentDeployment,
    policy: &PolicyIndex,
    options: &ImportOptions,
    rng: &mut (impl RngCore + CryptoRng),
    now_ms: i64,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<ImportSummary, ImportError> {
    let SydentDeployment { db, conf } = sydent;
    let conf = &*conf;
    let schema = db.schema().clone();
    let batch = options.batch_size.max(1);
    let mut summary = ImportSummary {
        dry_run: options.dry_run,
        schema: if schema.dinsic { "dinsic" } else { "mainline" },
        user_version: schema.user_version,
        sydent_server_name: conf.server_name.clone(),
        signing_key: KeyOutcome::NotGiven,
        public_key: conf.signing_key.as_ref().map(SigningKey::public_key_base64),
        pepper: PepperOutcome::Absent,
        associations: AssociationCounts::default(),
        directory: DirectoryCounts::default(),
        accounts: Counts::default(),
        tokens: Counts::default(),
        accepted_terms: Counts::default(),
        invites: InviteCounts::default(),
        ephemeral_keys: Counts::default(),
        not_imported: Vec::new(),
        warnings: Vec::new(),
    };

    source::prepare_bulk_import(conn)?;
    // Checks that may refuse the import come before any write.
    let key_plan = plan_signing_key(conn, conf, options)?;
    let pepper = db.pepper()?;
    if pepper.is_some() && lookup::rotation_in_progress(conn)? {
        return Err(ImportError::RotationInProgress);
    }

    summary.signing_key = key_plan.outcome.clone();
    if !options.dry_run
        && let Some(text) = &key_plan.store
    {
        state::set(conn, SIGNING_KEY_STATE, text, now_ms)?;
    }
    if let Some(name) = &conf.server_name
        && *name != options.server_name
    {
        summary.warnings.push(format!(
            "annuaire's server.name is {:?} but Sydent signed as {name:?}: associations annuaire \
             signs from now on name {:?}; set server.name = {name:?} to sign exactly as Sydent did",
            options.server_name, options.server_name
        ));
    }
    if conf.server_name.is_none() || conf.signing_key.is_none() {
        summary.warnings.push(
            "no sydent.conf (--config), or no server.name or key in it: the signing key was not \
             imported, and Sydent's own global associations could not be checked (its local \
             ones are imported)"
                .into(),
        );
    }

    summary.pepper = match &pepper {
        None => {
            summary.warnings.push(
                "the Sydent database has no lookup pepper (Sydent older than 2.0): annuaire keeps \
                 its own; clients fetch it again"
                    .into(),
            );
            PepperOutcome::Absent
        }
        Some(value) if options.dry_run => match state::get(conn, lookup::PEPPER_STATE)? {
            None => PepperOutcome::Created,
            Some(text)
                if serde_json::from_str::<lookup::Pepper>(&text)
                    .is_ok_and(|p| p.value == *value) =>
            {
                PepperOutcome::Unchanged
            }
            Some(_) => PepperOutcome::Rotated {
                rehashed: u64::try_from(store::count_associations(conn)?).unwrap_or(0),
            },
        },
        Some(value) => {
            match lookup::adopt_pepper(conn, value, batch as i64, now_ms, &mut |_, _| {})? {
                PepperAdoption::Unchanged(_) => PepperOutcome::Unchanged,
                PepperAdoption::Created(_) => PepperOutcome::Created,
                PepperAdoption::Rotated(r) => PepperOutcome::Rotated {
                    rehashed: r.rehashed as u64 + r.swept as u64,
                },
            }
        }
    };

    if options.policy_rules == 0 {
        summary.warnings.push(
            "the database holds no allowlist rules: directory entries got the default policy's \
             decision (no organisation); import the allowlists first (annuaire allowlist import, \
             or start annuaire once) and run the import again for the users still missing"
                .into(),
        );
    }
    import_associations(
        conn,
        db,
        conf,
        policy,
        options,
        now_ms,
        &mut summary,
        progress,
    )?;
    let known_users = import_accounts(conn, db, options, now_ms, &mut summary, progress)?;
    import_tokens(
        conn,
        db,
        options,
        &known_users,
        now_ms,
        &mut summary,
        progress,
    )?;
    import_accepted_terms(
        conn,
        db,
        options,
        &known_users,
        now_ms,
        &mut summary,
        progress,
    )?;
    import_invites(conn, db, options, rng, now_ms, &mut summary, progress)?;

    for (table, what) in [
        (
            "threepid_validation_sessions",
            "validation sessions (short-lived: users validate again)",
        ),
        (
            "peers",
            "replication peers (annuaire instances share one database instead)",
        ),
        (
            "profiles",
            "Tchap profiles (the directory fills itself from homeservers)",
        ),
    ] {
        let n = db.count(table)?;
        if n > 0 {
            summary.not_imported.push(format!("{n} {what}"));
        }
    }
    Ok(summary)
}

struct KeyPlan {
    outcome: KeyOutcome,
    /// The key to store in the database (Sydent's format), if any.
    store: Option<String>,
}

fn plan_signing_key(
    conn: &mut DbConn,
    conf: &SydentConf,
    options: &ImportOptions,
) -> Result<KeyPlan, ImportError> {
    let Some(key) = &conf.signing_key else {
        return Ok(KeyPlan {
            outcome: KeyOutcome::NotGiven,
            store: None,
        });
    };
    let text = key.to_sydent_string();
    if let Some(file_key) = &options.key_from_file {
        if file_key.to_sydent_string() == text {
            return Ok(KeyPlan {
                outcome: KeyOutcome::InFile,
                store: None,
            });
        }
        return Err(ImportError::SigningKeyFileDiffers {
            file: file_key.public_key_base64(),
            sydent: key.public_key_base64(),
        });
    }
    match state::get(conn, SIGNING_KEY_STATE)? {
        None => Ok(KeyPlan {
            outcome: KeyOutcome::Imported,
            store: Some(text),
        }),
        Some(current) if current.trim() == text => Ok(KeyPlan {
            outcome: KeyOutcome::Unchanged,
            store: None,
        }),
        Some(current) => {
            if options.replace_signing_key {
                return Ok(KeyPlan {
                    outcome: KeyOutcome::Replaced,
                    store: Some(text),
                });
            }
            let current = SigningKey::parse_sydent(&current)
                .map(|k| k.public_key_base64())
                .unwrap_or_else(|_| "unreadable".into());
            Err(ImportError::SigningKeyConflict { current })
        }
    }
}

/// The page size for reading Sydent's tables.
const READ_PAGE: i64 = 5000;

#[allow(clippy::too_many_arguments)]
fn import_associations(
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
                    store::delete_association(conn, "email", address)?;
                }
                crate::directory::entries::add_imported_binds(conn, &binds, now_ms)?;
                Ok::<_, StoreError>(())
            })?;
            statistics.wrote(conn)?;
        }
        done += page.len() as u64;
        progress(ImportProgress {
            phase: "writing associations",
            done,
            total,
        });
    }
    Ok(())
}

/// Keeps the database's statistics of the growing tables fresh (see
/// [`source::refresh_statistics`]).
#[derive(Default)]
struct Statistics {
    batches: u32,
}

impl Statistics {
    /// After a written batch.
    fn wrote(&mut self, conn: &mut DbConn) -> Result<(), StoreError> {
        self.batches += 1;
        // After the first batches, then every 16: the planner's view follows the growth.
        if self.batches.is_power_of_two() || self.batches.is_multiple_of(16) {
            source::refresh_statistics(conn)?;
        }
        Ok(())
    }
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

/// Imports the accounts; returns every Sydent user ID that has an account (their tokens and
/// terms may follow).
fn import_accounts(
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

fn import_tokens(
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

fn import_accepted_terms(
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
            let key = &keys[k];
            match key.persistence_ts {
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

fn import_invites(
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
            .filter_map(|i| pairs.get(&i.id).and_then(|&k| canonical[k].clone()))
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
                .and_then(|&k| canonical[k].clone())
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
                    store::insert_invite(conn, row)?;
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
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn reads_sydent_conf() {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(1));
        let text = format!(
            "[general]\nserver.name = id.example\n# a comment\n; another\nlog.path =\n\n\
             [db]\ndb.file: /var/lib/sydent/sydent.db\n[crypto]\ned25519.signingkey = {}\n",
            key.to_sydent_string()
        );
        let conf = parse_sydent_conf(&text).unwrap();
        assert_eq!(conf.server_name.as_deref(), Some("id.example"));
        let got = conf.signing_key.unwrap();
        assert_eq!(got.public_key_base64(), key.public_key_base64());
        assert_eq!(got.key_id(), "ed25519:0");
    }

    #[test]
    fn reads_the_old_hex_key_and_refuses_junk() {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(2));
        use base64::Engine as _;
        let seed = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(key.to_seed_base64())
            .unwrap();
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let conf = parse_sydent_conf(&format!("[crypto]\ned25519.signingkey = {hex}\n")).unwrap();
        assert_eq!(
            conf.signing_key.unwrap().public_key_base64(),
            key.public_key_base64()
        );
        let err = parse_sydent_conf("[crypto]\ned25519.signingkey = nonsense\n").unwrap_err();
        assert!(err.to_string().contains("ed25519.signingkey"), "{err}");
        let err = parse_sydent_conf("[general]\njust words\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        // No key yet (Sydent creates one at its first start): nothing to import.
        let conf = parse_sydent_conf("[crypto]\ned25519.signingkey =\n").unwrap();
        assert!(conf.signing_key.is_none());
    }

    #[test]
    fn peer_keys_in_hex_or_base64() {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(3)).public_key_base64();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(&key)
            .unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(peer_public_key(&hex).as_deref(), Some(key.as_str()));
        assert_eq!(peer_public_key(&key).as_deref(), Some(key.as_str()));
        assert_eq!(peer_public_key("short"), None);
    }

    fn global(origin: &str, key: &SigningKey, mxid: &str) -> SydentGlobalAssociation {
        let mut signed = serde_json::json!({
            "medium": "email", "address": "a@b.example", "mxid": mxid,
            "ts": 10, "not_before": 10, "not_after": 100,
        });
        crate::identity::signing::sign_json(&mut signed, origin, key).unwrap();
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
