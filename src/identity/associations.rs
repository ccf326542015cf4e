//! Associations between a 3PID and a Matrix user ID: the signed form the spec gives out, how
//! one is recorded with its lookup hashes, and who an address is bound to.

use super::IdentityService;
use serde_json::{Value, json};

use super::lookup::peppers_for_new_hashes;
use crate::matrix::hashing::lookup_hash;
use crate::matrix::signing::{SignError, SigningKey, sign_json};
use crate::store::identity::{self as store, AssociationRow};
use crate::store::{DbConn, StoreError};

/// How long an association is valid for: Sydent's hundred years, i.e. until unbound.
const VALIDITY_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

/// A 3PID bound to a Matrix user ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Association {
    /// `email`.
    pub medium: String,
    /// The normalised address.
    pub address: String,
    /// The Matrix user ID.
    pub mxid: String,
    /// When it was made (ms).
    pub ts: i64,
    /// Start of validity (ms).
    pub not_before: i64,
    /// End of validity (ms).
    pub not_after: i64,
}

impl Association {
    /// A new association made at `now_ms`.
    pub fn new(medium: &str, address: &str, mxid: &str, now_ms: i64) -> Association {
        Association {
            medium: medium.to_string(),
            address: address.to_string(),
            mxid: mxid.to_string(),
            ts: now_ms,
            not_before: now_ms,
            not_after: now_ms.saturating_add(VALIDITY_MS),
        }
    }

    /// The spec's signed association: `{address, medium, mxid, not_before, not_after, ts,
    /// signatures}` signed by `server_name`.
    pub fn to_signed_json(&self, server_name: &str, key: &SigningKey) -> Result<Value, SignError> {
        let mut value = json!({
            "address": self.address,
            "medium": self.medium,
            "mxid": self.mxid,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "ts": self.ts,
        });
        sign_json(&mut value, server_name, key)?;
        Ok(value)
    }

    fn row(&self) -> AssociationRow {
        AssociationRow {
            medium: self.medium.clone(),
            address: self.address.clone(),
            mxid: self.mxid.clone(),
            created_at: self.ts,
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// Records `association` (replacing the address's previous one) with its lookup hashes for the
/// current pepper and, during a rotation, the next one (blocking; one transaction). The write
/// comes first, so a concurrent rotation's switch cannot miss it (see `store::identity`).
pub fn record(conn: &mut DbConn, association: &Association) -> Result<(), StoreError> {
    crate::store::transaction(conn, |conn| {
        store::upsert_association(conn, &association.row())?;
        let rows: Vec<(i64, String, String, String)> = peppers_for_new_hashes(conn)?
            .into_iter()
            .map(|p| {
                (
                    p.id,
                    lookup_hash(&association.address, &association.medium, &p.value),
                    association.medium.clone(),
                    association.address.clone(),
                )
            })
            .collect();
        store::insert_hashes(conn, &rows)
    })
}

/// Deletes the association of an address; whether there was one (blocking).
pub fn remove(
    conn: &mut DbConn,
    medium: &str,
    address: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    store::delete_association(conn, medium, address, now_ms)
}

impl IdentityService {
    /// The Matrix user ID an address is bound to at `now_ms`, if any: from the lookup index
    /// when this instance has it ready (see `identity::live`), else from the database.
    pub async fn bound_mxid(
        &self,
        medium: &str,
        address: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        if let Some(answer) = self.live.bound_mxid(medium, address, now_ms) {
            return Ok(answer);
        }
        Ok(self.bound(medium, address, now_ms).await?.map(|a| a.mxid))
    }

    /// The association of an address, if it is bound and valid at `now_ms`.
    pub async fn bound(
        &self,
        medium: &str,
        address: &str,
        now_ms: i64,
    ) -> Result<Option<Association>, StoreError> {
        let medium = medium.to_string();
        let address = address.to_string();
        let row = self
            .db
            .run(move |conn| store::association(conn, &medium, &address))
            .await?;
        Ok(row
            .filter(|r| r.not_before <= now_ms && now_ms < r.not_after)
            .map(|r| Association {
                medium: r.medium,
                address: r.address,
                mxid: r.mxid,
                ts: r.created_at,
                not_before: r.not_before,
                not_after: r.not_after,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::signing::verify_json;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn signed_association_has_the_spec_fields_and_verifies() {
        let key = SigningKey::generate(&mut StdRng::seed_from_u64(5));
        let a = Association::new("email", "alice@example.org", "@alice:hs.example", 1_000);
        let v = a.to_signed_json("is.example", &key).unwrap();
        let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "address",
                "medium",
                "mxid",
                "not_after",
                "not_before",
                "signatures",
                "ts"
            ]
        );
        assert_eq!(v["not_before"], 1_000);
        assert!(v["not_after"].as_i64().unwrap() > 1_000 + 99 * 365 * 24 * 3600 * 1000);
        verify_json(&v, "is.example", "ed25519:0", &key.public_key_base64()).unwrap();
    }
}
