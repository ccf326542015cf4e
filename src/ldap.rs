//! The agency LDAP directory: connection settings (shared with the admin login), a bound
//! connection, and people read with a paged search.
//!
//! - TLS: `ldaps://` or StartTLS (`ldap.starttls`), with rustls (ring provider), the platform's
//!   trust store plus `ldap.ca_file`; certificates are always verified.
//! - Every value that comes from a user and goes into a filter is escaped with
//!   [`escape_filter_value`] (RFC 4515: `*`, `(`, `)`, `\` and NUL become `\2a`, `\28`, …);
//!   `ldap.filter` itself is the operator's and is used as written.
//! - The service account's password is read from `ldap.bind_password_file` (never from the
//!   configuration file itself, and never logged).
//!
//! What the directory does with the people read here is `directory::ldap_sync`'s business.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchStream};

pub use ldap3::Ldap;
/// Escapes a value for use inside an LDAP filter (RFC 4515).
pub use ldap3::ldap_escape as escape_filter_value;

use crate::config::LdapConfig;

/// Attribute names of the agency directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapAttributes {
    /// Email addresses.
    pub mail: String,
    /// Full name.
    pub display_name: String,
    /// First name.
    pub given_name: String,
    /// Last name.
    pub surname: String,
    /// Organisation (`None`: not read).
    pub organisation: Option<String>,
}

/// How to reach and read the agency directory.
#[derive(Clone)]
pub struct LdapSettings {
    /// `ldap://…` or `ldaps://…`.
    pub url: String,
    /// The service account (`None`: anonymous).
    pub bind_dn: Option<String>,
    /// Its password, read from `ldap.bind_password_file`.
    pub bind_password: Option<String>,
    /// Search base (subtree).
    pub base_dn: String,
    /// Which entries are people.
    pub filter: String,
    /// Upgrade `ldap://` with StartTLS.
    pub starttls: bool,
    /// Extra trust anchors (PEM).
    pub ca_file: Option<std::path::PathBuf>,
    /// Connection and per-operation timeout.
    pub timeout: Duration,
    /// Entries per page.
    pub page_size: u32,
    /// Attribute names.
    pub attributes: LdapAttributes,
}

impl std::fmt::Debug for LdapSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapSettings")
            .field("url", &self.url)
            .field("bind_dn", &self.bind_dn)
            .field("bind_password", &self.bind_password.as_ref().map(|_| "***"))
            .field("base_dn", &self.base_dn)
            .field("filter", &self.filter)
            .field("starttls", &self.starttls)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What went wrong with the agency directory.
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    /// `ldap.url` is not set.
    #[error("LDAP is not configured (set ldap.url)")]
    NotConfigured,
    /// The settings cannot be used (password file, CA file).
    #[error("{0}")]
    Config(String),
    /// The server cannot be reached.
    #[error("cannot connect to the LDAP server: {0}")]
    Connect(String),
    /// TLS with the server failed (its certificate is not trusted, or the handshake failed).
    #[error("TLS with the LDAP server failed: {0}")]
    Tls(String),
    /// The server refused the bind.
    #[error("LDAP bind as {dn} failed: {reason}")]
    Bind {
        /// Who tried to bind.
        dn: String,
        /// The server's answer.
        reason: String,
    },
    /// A search failed.
    #[error("LDAP search failed: {0}")]
    Search(String),
}

impl LdapSettings {
    /// The settings of `[ldap]`, with the password read from its file; `None` when `ldap.url`
    /// is not set.
    pub fn from_config(config: &LdapConfig) -> Result<Option<LdapSettings>, LdapError> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let bind_password = match &config.bind_password_file {
            Some(path) => Some(read_password_file(path)?),
            None => None,
        };
        let a = &config.attributes;
        Ok(Some(LdapSettings {
            url: url.clone(),
            bind_dn: config.bind_dn.clone(),
            bind_password,
            base_dn: config.base_dn.clone(),
            filter: config.filter.trim().to_owned(),
            starttls: config.starttls,
            ca_file: config.ca_file.clone(),
            timeout: config.timeout.0,
            page_size: config.page_size,
            attributes: LdapAttributes {
                mail: a.mail.clone(),
                display_name: a.display_name.clone(),
                given_name: a.given_name.clone(),
                surname: a.surname.clone(),
                organisation: Some(a.organisation.trim().to_owned()).filter(|o| !o.is_empty()),
            },
        }))
    }

    /// The attributes a people search asks for.
    fn requested_attributes(&self) -> Vec<String> {
        let a = &self.attributes;
        let mut attrs = vec![
            a.mail.clone(),
            a.display_name.clone(),
            a.given_name.clone(),
            a.surname.clone(),
        ];
        attrs.extend(a.organisation.clone());
        attrs
    }
}

/// The first line of the password file (a trailing newline is not part of the password).
fn read_password_file(path: &Path) -> Result<String, LdapError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        LdapError::Config(format!("ldap.bind_password_file ({}): {e}", path.display()))
    })?;
    let password = text.lines().next().unwrap_or_default().to_owned();
    if password.is_empty() {
        return Err(LdapError::Config(format!(
            "ldap.bind_password_file ({}) is empty",
            path.display()
        )));
    }
    Ok(password)
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, LdapError> {
    use rustls_pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra_roots = match ca_file {
        Some(path) => {
            let bad =
                |e: String| LdapError::Config(format!("ldap.ca_file ({}): {e}", path.display()));
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate found".into()));
            }
            certs
        }
        None => Vec::new(),
    };
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
        extra_roots,
        Arc::clone(&provider),
    )
    .map_err(|e| LdapError::Config(format!("no usable TLS trust anchors: {e}")))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::Config(format!("TLS: {e}")))?
        .dangerous() // rustls's name for "bring your own verifier"; this one verifies fully
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Opens a connection and binds as the service account (or anonymously). The connection is
/// driven by a task of the current runtime and closes when the last handle is dropped.
pub async fn connect(settings: &LdapSettings) -> Result<Ldap, LdapError> {
    let mut ldap = open(settings).await?;
    if let Some(dn) = &settings.bind_dn {
        let password = settings.bind_password.as_deref().unwrap_or_default();
        bind(&mut ldap, settings, dn, password).await?;
    }
    Ok(ldap)
}

/// Opens a connection without binding (the admin login binds as the person logging in).
pub async fn open(settings: &LdapSettings) -> Result<Ldap, LdapError> {
    let tls = tls_config(settings.ca_file.as_deref())?;
    let conn_settings = LdapConnSettings::new()
        .set_conn_timeout(settings.timeout)
        .set_starttls(settings.starttls)
        .set_config(Arc::new(tls));
    let (conn, ldap) = LdapConnAsync::with_settings(conn_settings, &settings.url)
        .await
        .map_err(|e| connect_error(settings, &e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            tracing::warn!(error = %e, "LDAP connection ended with an error");
        }
    });
    Ok(ldap)
}

/// Says what failed while connecting: an untrusted certificate names the CA setting to fix.
fn connect_error(settings: &LdapSettings, e: &ldap3::LdapError) -> LdapError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate") {
        let fix = match &settings.ca_file {
            Some(path) => format!(
                "ldap.ca_file ({}) is not the CA that signed it",
                path.display()
            ),
            None => "set ldap.ca_file to the CA that signed it".to_owned(),
        };
        return LdapError::Tls(format!(
            "the server's certificate is not trusted ({text}); {fix}"
        ));
    }
    if lower.contains("tls") || lower.contains("handshake") {
        return LdapError::Tls(text);
    }
    LdapError::Connect(text)
}

/// A simple bind as `dn`.
pub async fn bind(
    ldap: &mut Ldap,
    settings: &LdapSettings,
    dn: &str,
    password: &str,
) -> Result<(), LdapError> {
    ldap.with_timeout(settings.timeout)
        .simple_bind(dn, password)
        .await
        .and_then(ldap3::LdapResult::success)
        .map(|_| ())
        .map_err(|e| LdapError::Bind {
            dn: dn.to_owned(),
            reason: e.to_string(),
        })
}

/// One person as the agency directory describes them (attribute values as stored).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LdapPerson {
    /// The entry's DN.
    pub dn: String,
    /// Every value of the mail attribute.
    pub mails: Vec<String>,
    /// The display name attribute.
    pub display_name: Option<String>,
    /// The given name attribute.
    pub given_name: Option<String>,
    /// The surname attribute.
    pub surname: Option<String>,
    /// The organisation attribute (when mapped).
    pub organisation: Option<String>,
}

impl LdapPerson {
    fn from_entry(entry: SearchEntry, attributes: &LdapAttributes) -> LdapPerson {
        // Servers answer with the attribute names as stored, whatever case was asked for.
        let values = |name: &str| -> Vec<String> {
            entry
                .attrs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.iter().cloned())
                .collect()
        };
        let first = |name: &str| values(name).into_iter().next();
        LdapPerson {
            dn: entry.dn.clone(),
            mails: values(&attributes.mail),
            display_name: first(&attributes.display_name),
            given_name: first(&attributes.given_name),
            surname: first(&attributes.surname),
            organisation: attributes.organisation.as_deref().and_then(first),
        }
    }
}

type Stream = SearchStream<'static, String, Vec<String>>;

/// People read one at a time from a paged search (pages are fetched as they are consumed).
pub struct People {
    stream: Stream,
    attributes: LdapAttributes,
    timeout: Duration,
}

impl std::fmt::Debug for People {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("People").finish_non_exhaustive()
    }
}

impl People {
    /// The next person; `None` at the end of the search.
    pub async fn next(&mut self) -> Result<Option<LdapPerson>, LdapError> {
        let entry = tokio::time::timeout(self.timeout, self.stream.next())
            .await
            .map_err(|_| LdapError::Search("timed out waiting for the server".into()))?
            .map_err(|e| LdapError::Search(e.to_string()))?;
        Ok(entry.map(|e| LdapPerson::from_entry(SearchEntry::construct(e), &self.attributes)))
    }

    /// Ends the search; an error when the server reports one (a sync must then not treat what
    /// it read as complete).
    pub async fn finish(mut self) -> Result<(), LdapError> {
        self.stream
            .finish()
            .await
            .success()
            .map(|_| ())
            .map_err(|e| LdapError::Search(e.to_string()))
    }
}

/// Starts the paged search of everyone `ldap.filter` selects under `ldap.base_dn`.
pub async fn people(ldap: &mut Ldap, settings: &LdapSettings) -> Result<People, LdapError> {
    search(ldap, settings, settings.filter.clone()).await
}

/// The people whose mail attribute equals `mail` (escaped: the value cannot change the
/// filter), among those `ldap.filter` selects.
pub async fn find_by_mail(
    ldap: &mut Ldap,
    settings: &LdapSettings,
    mail: &str,
) -> Result<Vec<LdapPerson>, LdapError> {
    let filter = format!(
        "(&{}({}={}))",
        settings.filter,
        settings.attributes.mail,
        escape_filter_value(mail)
    );
    let mut found = search(ldap, settings, filter).await?;
    let mut people = Vec::new();
    while let Some(person) = found.next().await? {
        people.push(person);
    }
    found.finish().await?;
    Ok(people)
}

async fn search(
    ldap: &mut Ldap,
    settings: &LdapSettings,
    filter: String,
) -> Result<People, LdapError> {
    let page_size = i32::try_from(settings.page_size).unwrap_or(500);
    let adapters: Vec<Box<dyn Adapter<'static, String, Vec<String>>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(page_size)),
    ];
    let stream = ldap
        .with_timeout(settings.timeout)
        .streaming_search_with(
            adapters,
            &settings.base_dn,
            Scope::Subtree,
            &filter,
            settings.requested_attributes(),
        )
        .await
        .map_err(|e| LdapError::Search(e.to_string()))?;
    Ok(People {
        stream,
        attributes: settings.attributes.clone(),
        timeout: settings.timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(
            escape_filter_value("Ève *)(uid=*) Piège"),
            "Ève \\2a\\29\\28uid=\\2a\\29 Piège"
        );
        assert_eq!(escape_filter_value("a\\b\0"), "a\\5cb\\00");
        assert_eq!(escape_filter_value("plain@x.fr"), "plain@x.fr");
    }

    #[test]
    fn settings_read_the_password_file_and_hide_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let mut config = LdapConfig {
            url: Some("ldap://127.0.0.1:389".into()),
            bind_dn: Some("cn=svc".into()),
            bind_password_file: Some(file.clone()),
            base_dn: "dc=x".into(),
            ..LdapConfig::default()
        };
        let settings = LdapSettings::from_config(&config).unwrap().unwrap();
        assert_eq!(settings.bind_password.as_deref(), Some("s3cret"));
        assert!(!format!("{settings:?}").contains("s3cret"));
        assert_eq!(
            settings.requested_attributes(),
            ["mail", "displayName", "givenName", "sn", "o"]
        );

        config.attributes.organisation = String::new();
        let settings = LdapSettings::from_config(&config).unwrap().unwrap();
        assert_eq!(settings.attributes.organisation, None);

        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            LdapSettings::from_config(&config),
            Err(LdapError::Config(_))
        ));
        config.bind_password_file = Some(dir.path().join("missing"));
        let e = LdapSettings::from_config(&config).unwrap_err();
        assert!(e.to_string().contains("ldap.bind_password_file"), "{e}");

        config.url = None;
        assert!(LdapSettings::from_config(&config).unwrap().is_none());
    }

    #[test]
    fn attributes_are_read_whatever_their_case() {
        let attributes = LdapAttributes {
            mail: "mail".into(),
            display_name: "displayname".into(),
            given_name: "givenName".into(),
            surname: "sn".into(),
            organisation: Some("o".into()),
        };
        let mut attrs = std::collections::HashMap::new();
        attrs.insert("displayName".to_string(), vec!["Jean Dupont".to_string()]);
        attrs.insert(
            "MAIL".to_string(),
            vec!["a@x.fr".to_string(), "b@x.fr".to_string()],
        );
        attrs.insert("o".to_string(), vec!["Finances".to_string()]);
        let entry = SearchEntry {
            dn: "uid=j,dc=x".into(),
            attrs,
            bin_attrs: std::collections::HashMap::new(),
        };
        let person = LdapPerson::from_entry(entry, &attributes);
        assert_eq!(person.mails, ["a@x.fr", "b@x.fr"]);
        assert_eq!(person.display_name.as_deref(), Some("Jean Dupont"));
        assert_eq!(person.given_name, None);
        assert_eq!(person.organisation.as_deref(), Some("Finances"));
    }
}
