//! A user's own choice to leave the directory, or come back (`POST
//! /_annuaire/account/v1/directory {visible}`). Kept by user id apart from the entry, so that
//! it survives an unbind and a later bind; searches skip those users whatever the entry's
//! moderation says, and administrators see the flag (`opted_out`). Audited as the user.

use serde::Serialize;
use utoipa::ToSchema;

use super::{DirectoryError, DirectoryService};
use crate::audit::{self, Actor, action};
use crate::store::StoreError;
use crate::store::account as account_store;

/// The caller's choice, as it now stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Listing {
    /// Whether the user is in the directory (false: left out at their request).
    pub visible: bool,
    /// Whether this request changed it.
    pub changed: bool,
}

impl DirectoryService {
    /// Leaves `user_id` out of every directory search (`visible = false`) or lets searches
    /// return them again (`visible = true`).
    pub async fn set_listed(
        &self,
        user_id: &str,
        visible: bool,
    ) -> Result<Listing, DirectoryError> {
        let now_ms = self.clock.now_ms();
        let mxid = user_id.to_owned();
        let changed = self
            .db
            .run(move |conn| {
                crate::store::transaction(conn, |conn| {
                    let changed = if visible {
                        account_store::opt_in(conn, &mxid)?
                    } else {
                        account_store::opt_out(conn, &mxid, now_ms)?
                    };
                    if changed {
                        audit::record(
                            conn,
                            &Actor::user(&mxid),
                            if visible {
                                action::DIRECTORY_OPT_IN
                            } else {
                                action::DIRECTORY_OPT_OUT
                            },
                            &audit::directory_target(&mxid),
                            Some(&serde_json::json!({"listed": !visible})),
                            Some(&serde_json::json!({"listed": visible})),
                            now_ms,
                        )?;
                    }
                    Ok::<_, StoreError>(changed)
                })
            })
            .await?;
        if changed {
            tracing::info!(user_id, visible, "directory listing changed by its user");
        }
        Ok(Listing { visible, changed })
    }
}
