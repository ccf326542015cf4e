//! Admin login with an LDAP bind (`admin.ldap_user_filter`, `admin.ldap_group`,
//! `admin.ldap_viewer_group`, over the `[ldap]` connection).
//!
//! One connection per login: bind as the service account, find the person's DN with the user
//! filter (the username escaped: it cannot change the filter), check that the DN is a `member`
//! of a group (read as the service account, whatever the person may read), then bind as that DN
//! with the given password. The bind is made even for someone who is in no group, so that the
//! time taken does not tell who is an administrator. An empty password is never sent: LDAP would
//! take it for an anonymous bind and succeed.
//!
//! This answers only what LDAP says ([`LdapVerdict`]); `auth` turns it into an account, a token,
//! a counted failure or a lock.

use ldap3::{Scope, SearchEntry, SearchOptions};

use super::{AdminError, Role};
use crate::config::Config;
use crate::ldap::{self, Ldap, LdapError, LdapSettings, escape_filter_value};

/// LDAP result code: the credentials are wrong (RFC 4511).
const INVALID_CREDENTIALS: u32 = 49;
/// LDAP result code: the base object does not exist.
const NO_SUCH_OBJECT: u32 = 32;
/// LDAP result code: more entries matched than the size limit.
const SIZE_LIMIT_EXCEEDED: u32 = 4;

/// How administrators log in with LDAP.
#[derive(Debug, Clone)]
pub struct LdapLogin {
    settings: LdapSettings,
    user_filter: String,
    editor_group: Option<String>,
    viewer_group: Option<String>,
}

/// What LDAP says of a username and password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdapVerdict {
    /// The password is right and the person is in an admin group: this role.
    Granted(Role),
    /// The person is in an admin group (this role) but the password is wrong: a failure that
    /// counts toward the account's lock.
    WrongPassword(Role),
    /// Nobody by that name, several people, or someone in no admin group.
    Refused,
}

impl LdapLogin {
    /// The LDAP login of `config`, or `None` when `admin.ldap_user_filter` is not set. Reads the
    /// service account's password file.
    pub fn from_config(config: &Config) -> Result<Option<LdapLogin>, AdminError> {
        let Some(filter) = &config.admin.ldap_user_filter else {
            return Ok(None);
        };
        let settings = LdapSettings::from_config(&config.ldap)
            .map_err(|e| AdminError::Internal(format!("LDAP login: {e}")))?
            .ok_or_else(|| {
                AdminError::Internal("admin.ldap_user_filter needs ldap.url".to_owned())
            })?;
        let group = |g: &Option<String>| g.as_deref().map(str::trim).map(str::to_owned);
        Ok(Some(LdapLogin {
            settings,
            user_filter: filter.trim().to_owned(),
            editor_group: group(&config.admin.ldap_group),
            viewer_group: group(&config.admin.ldap_viewer_group),
        }))
    }

    /// The filter that finds `username` (escaped, RFC 4515).
    pub fn user_filter(&self, username: &str) -> String {
        user_filter(&self.user_filter, username)
    }

    /// Asks LDAP about `username` and `password`. Fails only when LDAP cannot be used (down,
    /// the service account refused, a search error): that is not the person's failure.
    pub async fn check(&self, username: &str, password: &str) -> Result<LdapVerdict, AdminError> {
        if password.is_empty() {
            return Ok(LdapVerdict::Refused);
        }
        let mut conn = ldap::connect(&self.settings).await.map_err(unavailable)?;
        let verdict = self.check_on(&mut conn, username, password).await;
        // Best effort: the connection closes when dropped anyway.
        let _ = conn.unbind().await;
        verdict
    }

    async fn check_on(
        &self,
        conn: &mut Ldap,
        username: &str,
        password: &str,
    ) -> Result<LdapVerdict, AdminError> {
        let Some(dn) = self.find_dn(conn, username).await? else {
            return Ok(LdapVerdict::Refused);
        };
        let role = self.role_of(conn, &dn).await?;
        let bound = self.bind_as(conn, &dn, password).await?;
        Ok(match (role, bound) {
            (Some(role), true) => LdapVerdict::Granted(role),
            (Some(role), false) => LdapVerdict::WrongPassword(role),
            (None, _) => {
                tracing::info!(
                    bound,
                    "LDAP admin login refused: the person is in no admin group"
                );
                LdapVerdict::Refused
            }
        })
    }

    /// The DN of the one person the user filter finds, if exactly one.
    pub async fn find_dn(
        &self,
        conn: &mut Ldap,
        username: &str,
    ) -> Result<Option<String>, AdminError> {
        let filter = self.user_filter(username);
        let ldap3::SearchResult(entries, result) = conn
            .with_timeout(self.settings.timeout)
            .with_search_options(SearchOptions::new().sizelimit(2))
            .search(&self.settings.base_dn, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .map_err(|e| unavailable(LdapError::Search(e.to_string())))?;
        match result.rc {
            0 if entries.len() <= 1 => Ok(entries
                .into_iter()
                .next()
                .map(|e| SearchEntry::construct(e).dn)),
            0 | SIZE_LIMIT_EXCEEDED => {
                tracing::warn!(
                    "LDAP admin login refused: admin.ldap_user_filter matches several entries"
                );
                Ok(None)
            }
            _ => Err(unavailable(LdapError::Search(result.to_string()))),
        }
    }

    /// The role `dn`'s group membership gives: editor before viewer.
    async fn role_of(&self, conn: &mut Ldap, dn: &str) -> Result<Option<Role>, AdminError> {
        let groups = [
            (&self.editor_group, Role::Editor),
            (&self.viewer_group, Role::Viewer),
        ];
        for (group, role) in groups {
            if let Some(group) = group
                && self.is_member(conn, group, dn).await?
            {
                return Ok(Some(role));
            }
        }
        Ok(None)
    }

    /// Whether the group entry `group` lists `dn` as a `member`.
    async fn is_member(&self, conn: &mut Ldap, group: &str, dn: &str) -> Result<bool, AdminError> {
        let filter = format!("(member={})", escape_filter_value(dn));
        let ldap3::SearchResult(entries, result) = conn
            .with_timeout(self.settings.timeout)
            .search(group, Scope::Base, &filter, vec!["1.1"])
            .await
            .map_err(|e| unavailable(LdapError::Search(e.to_string())))?;
        match result.rc {
            0 => Ok(!entries.is_empty()),
            NO_SUCH_OBJECT => {
                tracing::warn!(group, "the admin LDAP group does not exist");
                Ok(false)
            }
            _ => Err(unavailable(LdapError::Search(result.to_string()))),
        }
    }

    /// Binds as `dn`: whether the password is right. Any refusal of the server counts as a wrong
    /// password; only a failure to talk to it is an error.
    async fn bind_as(&self, conn: &mut Ldap, dn: &str, password: &str) -> Result<bool, AdminError> {
        if password.is_empty() {
            return Ok(false);
        }
        let result = conn
            .with_timeout(self.settings.timeout)
            .simple_bind(dn, password)
            .await
            .map_err(|e| {
                unavailable(LdapError::Bind {
                    dn: dn.to_owned(),
                    reason: e.to_string(),
                })
            })?;
        match result.rc {
            0 => Ok(true),
            INVALID_CREDENTIALS => Ok(false),
            rc => {
                tracing::info!(rc, "LDAP admin bind refused");
                Ok(false)
            }
        }
    }
}

/// `template` with every `{username}` replaced by the escaped `username`.
pub fn user_filter(template: &str, username: &str) -> String {
    template.replace("{username}", &escape_filter_value(username))
}

fn unavailable(e: LdapError) -> AdminError {
    AdminError::LdapUnavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_escaped_in_the_filter() {
        let t = "(&(objectClass=inetOrgPerson)(uid={username}))";
        assert_eq!(
            user_filter(t, "admin.alice"),
            "(&(objectClass=inetOrgPerson)(uid=admin.alice))"
        );
        assert_eq!(
            user_filter(t, "*)(uid=*"),
            "(&(objectClass=inetOrgPerson)(uid=\\2a\\29\\28uid=\\2a))"
        );
        assert_eq!(
            user_filter("(|(uid={username})(mail={username}))", "a\\b"),
            "(|(uid=a\\5cb)(mail=a\\5cb))"
        );
    }
}
