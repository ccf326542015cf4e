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

mod accounts;
mod associations;
mod conf;
mod invites;

use accounts::{import_accepted_terms, import_accounts, import_tokens};
use associations::import_associations;
use conf::peer_public_key;
pub use conf::{SydentConf, parse_sydent_conf};
use invites::import_invites;

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine as _;
use rand::{CryptoRng, RngCore};
use serde::Serialize;
use serde_json::Value;

use crate::identity::accounts::token_hash;
use crate::identity::keys::SIGNING_KEY_STATE;
use crate::identity::lookup::{self, PepperAdoption};
use crate::matrix::hashing::lookup_hash;
use crate::matrix::keys::canonical_public_key;
use crate::matrix::signing::{LENIENT_BASE64, SigningKey, canonical_json};
use crate::policy::{Outcome, PolicyIndex, normalize_email};
use crate::store::changes::ChangeKind;
use crate::store::identity::{self as store, AssociationRow};
use crate::store::invites::{self as invite_store, InviteRow};
use crate::store::keys::{self as key_store, RetiredKeyRow};
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
         replaces it: under the same key id, signatures annuaire made with it (invitations it \
         stored) stop verifying; under another, it stays published as a retired key. Run \
         again with --replace-signing-key to do so"
    )]
    SigningKeyConflict {
        /// annuaire's current public key.
        current: String,
    },
    /// annuaire published a retired key under the key id of Sydent's key.
    #[error(
        "annuaire has retired another key under Sydent's key id {key_id} (public key \
         {retired}); it stays published, so Sydent's key cannot take that id"
    )]
    SigningKeyIdRetired {
        /// The key id of Sydent's key.
        key_id: String,
        /// The public key annuaire retired under it.
        retired: String,
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
    let key_plan = plan_signing_key(conn, conf, options, now_ms)?;
    let pepper = db.pepper()?;
    if pepper.is_some() && lookup::rotation_in_progress(conn)? {
        return Err(ImportError::RotationInProgress);
    }

    summary.signing_key = key_plan.outcome.clone();
    if !options.dry_run
        && let Some(text) = &key_plan.store
    {
        crate::store::transaction(conn, |conn| {
            if let Some(retired) = &key_plan.retire {
                key_store::insert_retired_key(conn, retired)?;
            }
            state::set(conn, SIGNING_KEY_STATE, text, now_ms)
        })?;
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
    /// annuaire's key that Sydent's replaces, kept published as a retired key (as `keys
    /// rotate-signing` does) when its key id differs from Sydent's.
    retire: Option<RetiredKeyRow>,
}

fn plan_signing_key(
    conn: &mut DbConn,
    conf: &SydentConf,
    options: &ImportOptions,
    now_ms: i64,
) -> Result<KeyPlan, ImportError> {
    let Some(key) = &conf.signing_key else {
        return Ok(KeyPlan {
            outcome: KeyOutcome::NotGiven,
            store: None,
            retire: None,
        });
    };
    let text = key.to_sydent_string();
    if let Some(file_key) = &options.key_from_file {
        if file_key.to_sydent_string() == text {
            return Ok(KeyPlan {
                outcome: KeyOutcome::InFile,
                store: None,
                retire: None,
            });
        }
        return Err(ImportError::SigningKeyFileDiffers {
            file: file_key.public_key_base64(),
            sydent: key.public_key_base64(),
        });
    }
    // A key id names one key: one that annuaire retired stays published under its id.
    if let Some(retired) = key_store::retired_key(conn, key.key_id())?
        && retired.public_key != key.public_key_base64()
    {
        return Err(ImportError::SigningKeyIdRetired {
            key_id: retired.key_id,
            retired: retired.public_key,
        });
    }
    match state::get(conn, SIGNING_KEY_STATE)? {
        None => Ok(KeyPlan {
            outcome: KeyOutcome::Imported,
            store: Some(text),
            retire: None,
        }),
        Some(current) if current.trim() == text => Ok(KeyPlan {
            outcome: KeyOutcome::Unchanged,
            store: None,
            retire: None,
        }),
        Some(current) => {
            let current = SigningKey::parse_sydent(&current).ok();
            if options.replace_signing_key {
                let retire =
                    current
                        .filter(|c| c.key_id() != key.key_id())
                        .map(|c| RetiredKeyRow {
                            key_id: c.key_id().to_owned(),
                            public_key: c.public_key_base64(),
                            retired_at: now_ms,
                        });
                return Ok(KeyPlan {
                    outcome: KeyOutcome::Replaced,
                    store: Some(text),
                    retire,
                });
            }
            let current = current
                .map(|k| k.public_key_base64())
                .unwrap_or_else(|| "unreadable".into());
            Err(ImportError::SigningKeyConflict { current })
        }
    }
}

/// The page size for reading Sydent's tables.
const READ_PAGE: i64 = 5000;

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
