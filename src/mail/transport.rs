//! Delivering built messages: SMTP (lettre) or a folder of `.eml` files.

pub use crate::config::SmtpSecurity;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::{AsyncSmtpTransport, AsyncSmtpTransportBuilder};
use lettre::{Address, AsyncTransport, Tokio1Executor, address::Envelope};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::{MailError, OutgoingMessage};

/// What [`MailTransport::smtp`] needs.
#[derive(Clone)]
pub struct SmtpSettings {
    /// Server host name or IP address (also the name its certificate must carry).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Connection protection.
    pub security: SmtpSecurity,
    /// Login, if the server requires authentication.
    pub username: Option<String>,
    /// Password, with `username`.
    pub password: Option<String>,
    /// A PEM file of extra trust anchors (a private CA); the system roots stay trusted.
    pub ca_file: Option<PathBuf>,
    /// Limit for delivering one message (connection, TLS and the whole SMTP dialogue).
    pub timeout: Duration,
    /// Name announced in EHLO; the machine's host name when absent.
    pub hello_name: Option<String>,
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("hello_name", &self.hello_name)
            .finish()
    }
}

/// An SMTP relay, ready to send (see [`MailTransport::smtp`]).
pub struct SmtpTransport {
    builder: AsyncSmtpTransportBuilder,
    // Built on first use: lettre's connection pool spawns a task, which needs a Tokio runtime,
    // while settings are checked at start-up, possibly outside one.
    client: OnceLock<AsyncSmtpTransport<Tokio1Executor>>,
    timeout: Duration,
    endpoint: String,
}

impl fmt::Debug for SmtpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpTransport")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Where mails go.
#[derive(Debug)]
pub enum MailTransport {
    /// An SMTP relay.
    Smtp(Box<SmtpTransport>),
    /// A folder receiving one `<message-id>.eml` per message (the zero-configuration default).
    File {
        /// The folder, created if missing.
        dir: PathBuf,
    },
}

/// What kind of failure a send met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendErrorKind {
    /// The server could not be reached (refused, unreachable, name not resolved).
    Connection,
    /// The delivery took longer than the configured timeout.
    Timeout,
    /// The TLS handshake failed (including an untrusted or mismatched certificate).
    Tls,
    /// The server answered with an SMTP error (see [`SendError::code`]).
    Rejected,
    /// The dialogue went wrong otherwise (unparseable reply, no usable AUTH mechanism, ...).
    Protocol,
    /// The file transport could not write the message.
    Io,
    /// The stored message itself is unusable (bad envelope address); retrying cannot help.
    InvalidMessage,
}

/// A failed delivery. Its text carries no address, token or body: servers' replies are
/// redacted, since they often quote the recipient.
#[derive(Debug, Clone)]
pub struct SendError {
    transport: &'static str,
    kind: SendErrorKind,
    permanent: bool,
    code: Option<u16>,
    summary: String,
}

impl SendError {
    fn new(transport: &'static str, kind: SendErrorKind, summary: String) -> Self {
        Self {
            transport,
            kind,
            permanent: kind == SendErrorKind::InvalidMessage,
            code: None,
            summary,
        }
    }

    /// Retrying this message is pointless: the server refused it with a 5xx reply, or the
    /// message is malformed.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The message may go through later (connection, timeout, TLS, 4xx, disk): retry with
    /// backoff.
    pub fn is_transient(&self) -> bool {
        !self.permanent
    }

    /// The kind of failure.
    pub fn kind(&self) -> SendErrorKind {
        self.kind
    }

    /// The SMTP reply code, for [`SendErrorKind::Rejected`].
    pub fn code(&self) -> Option<u16> {
        self.code
    }

    /// A short, redacted description, fit for logs and for the outbox's `last_error`.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    fn from_smtp(e: &lettre::transport::smtp::Error) -> Self {
        let summary = redact(&e.to_string());
        let code = e.status().and_then(|c| c.to_string().parse::<u16>().ok());
        let kind = if code.is_some() {
            SendErrorKind::Rejected
        } else if e.is_timeout() {
            SendErrorKind::Timeout
        } else if e.is_tls() || caused_by_tls(e) {
            SendErrorKind::Tls
        } else if e.is_response() || e.is_client() {
            SendErrorKind::Protocol
        } else {
            SendErrorKind::Connection
        };
        Self {
            transport: "smtp",
            kind,
            permanent: e.is_permanent(),
            code,
            summary,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nature = if self.permanent {
            "permanent"
        } else {
            "transient"
        };
        write!(
            f,
            "{} delivery failed ({nature}): {}",
            self.transport, self.summary
        )
    }
}

impl std::error::Error for SendError {}

/// lettre reports a failed handshake (untrusted certificate, ...) as a connection error whose
/// cause, somewhere down the chain, is a rustls error.
fn caused_by_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        current = err.source();
    }
    false
}

/// Longest error summary kept (server replies can be long).
const SUMMARY_MAX_CHARS: usize = 300;

/// Replaces every word containing `@` (addresses, `<user@host>`) and shortens the text.
fn redact(text: &str) -> String {
    let words: Vec<&str> = text
        .split_whitespace()
        .map(|w| if w.contains('@') { "[address]" } else { w })
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() <= SUMMARY_MAX_CHARS {
        joined
    } else {
        let mut cut: String = joined.chars().take(SUMMARY_MAX_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reads the PEM trust anchors of `mail.smtp.ca_file`.
fn read_ca_file(path: &Path) -> Result<Vec<Certificate>, MailError> {
    let bytes = std::fs::read(path)
        .map_err(|e| MailError::Smtp(format!("cannot read CA file {}: {e}", path.display())))?;
    let ders = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MailError::Smtp(format!("CA file {}: {e}", path.display())))?;
    if ders.is_empty() {
        return Err(MailError::Smtp(format!(
            "CA file {} contains no PEM certificate",
            path.display()
        )));
    }
    ders.into_iter()
        .map(|der| {
            Certificate::from_der(der.to_vec())
                .map_err(|e| MailError::Smtp(format!("CA file {}: {e}", path.display())))
        })
        .collect()
}

impl MailTransport {
    /// An SMTP transport. Certificate verification is always on (system roots, plus the
    /// certificates of `ca_file`); STARTTLS is required, never opportunistic. Checks the
    /// settings at once: an unreadable CA file or a password that would travel in clear to a
    /// non-loopback host is an error here, at start-up.
    pub fn smtp(s: &SmtpSettings) -> Result<Self, MailError> {
        let host = s.host.trim();
        if host.is_empty() {
            return Err(MailError::Smtp("the host is empty".into()));
        }
        if s.port == 0 {
            return Err(MailError::Smtp("the port is 0".into()));
        }
        if s.timeout.is_zero() {
            return Err(MailError::Smtp("the timeout is 0".into()));
        }
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(s.port)
            .timeout(Some(s.timeout));
        let tls_parameters = || -> Result<TlsParameters, MailError> {
            let mut params = TlsParameters::builder(host.to_string());
            if let Some(path) = &s.ca_file {
                for cert in read_ca_file(path)? {
                    params = params.add_root_certificate(cert);
                }
            }
            params
                .build_rustls()
                .map_err(|e| MailError::Smtp(format!("TLS parameters: {e}")))
        };
        builder = builder.tls(match s.security {
            SmtpSecurity::None => {
                if s.ca_file.is_some() {
                    tracing::warn!("mail.smtp.ca_file is ignored: mail.smtp.security is none");
                }
                Tls::None
            }
            SmtpSecurity::StartTls => Tls::Required(tls_parameters()?),
            SmtpSecurity::Tls => Tls::Wrapper(tls_parameters()?),
        });
        match (&s.username, &s.password) {
            (Some(user), Some(password)) => {
                if s.security == SmtpSecurity::None && !is_loopback(host) {
                    return Err(MailError::Smtp(
                        "refusing to send the SMTP password unencrypted to a remote host: \
                         set the security to starttls or tls"
                            .into(),
                    ));
                }
                builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
            }
            (None, None) => {}
            _ => {
                return Err(MailError::Smtp(
                    "username and password go together: set both or neither".into(),
                ));
            }
        }
        if let Some(name) = s.hello_name.as_deref().map(str::trim) {
            let id = match name.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => ClientId::Ipv4(ip),
                Ok(IpAddr::V6(ip)) => ClientId::Ipv6(ip),
                Err(_) if !name.is_empty() && !name.contains(char::is_whitespace) => {
                    ClientId::Domain(name.to_string())
                }
                Err(_) => return Err(MailError::Smtp("the EHLO name is not a host name".into())),
            };
            builder = builder.hello_name(id);
        }
        let security = match s.security {
            SmtpSecurity::None => "plain",
            SmtpSecurity::StartTls => "starttls",
            SmtpSecurity::Tls => "tls",
        };
        Ok(MailTransport::Smtp(Box::new(SmtpTransport {
            builder,
            client: OnceLock::new(),
            timeout: s.timeout,
            endpoint: format!("{host}:{} ({security})", s.port),
        })))
    }

    /// A file transport writing into `dir` (created if missing, files readable by the owner
    /// only: they carry tokens).
    pub fn file(dir: PathBuf) -> Result<Self, MailError> {
        std::fs::create_dir_all(&dir).map_err(|e| MailError::FileDir {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        Ok(MailTransport::File { dir })
    }

    /// `smtp` or `file`, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            MailTransport::Smtp(_) => "smtp",
            MailTransport::File { .. } => "file",
        }
    }

    /// Delivers one message. Logs the transport, the outcome and a redacted error, never the
    /// address or the body.
    pub async fn send(&self, msg: &OutgoingMessage) -> Result<(), SendError> {
        let result = match self {
            MailTransport::Smtp(smtp) => smtp.send(msg).await,
            MailTransport::File { dir } => send_to_file(dir, msg).await,
        };
        match &result {
            Ok(()) => tracing::debug!(
                transport = self.name(),
                message_id = %msg.message_id,
                "mail delivered"
            ),
            Err(e) => tracing::warn!(
                transport = self.name(),
                message_id = %msg.message_id,
                permanent = e.is_permanent(),
                error = %e.summary(),
                "mail delivery failed"
            ),
        }
        result
    }
}

impl SmtpTransport {
    async fn send(&self, msg: &OutgoingMessage) -> Result<(), SendError> {
        let envelope = envelope(msg).map_err(|summary| {
            SendError::new("smtp", SendErrorKind::InvalidMessage, summary.into())
        })?;
        let client = self.client.get_or_init(|| self.builder.clone().build());
        // lettre bounds only the connection with its timeout; a server that stalls later
        // would hold the worker forever.
        match tokio::time::timeout(self.timeout, client.send_raw(&envelope, &msg.raw)).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(e)) => Err(SendError::from_smtp(&e)),
            Err(_) => Err(SendError::new(
                "smtp",
                SendErrorKind::Timeout,
                format!(
                    "no complete answer from {} within {:?}",
                    self.endpoint, self.timeout
                ),
            )),
        }
    }
}

fn envelope(msg: &OutgoingMessage) -> Result<Envelope, &'static str> {
    let from = msg
        .from
        .parse::<Address>()
        .map_err(|_| "the stored sender address is invalid")?;
    let to = msg
        .to
        .parse::<Address>()
        .map_err(|_| "the stored recipient address is invalid")?;
    Envelope::new(Some(from), vec![to]).map_err(|_| "the envelope is invalid")
}

/// The file name for a message: its Message-ID with anything unusual replaced.
fn eml_file_name(message_id: &str) -> Option<String> {
    let name: String = message_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = name.trim_start_matches('.');
    (!name.is_empty()).then(|| format!("{name}.eml"))
}

async fn send_to_file(dir: &Path, msg: &OutgoingMessage) -> Result<(), SendError> {
    let io_error = |what: &str, e: std::io::Error| {
        SendError::new("file", SendErrorKind::Io, format!("{what}: {e}"))
    };
    let name = eml_file_name(&msg.message_id).ok_or_else(|| {
        SendError::new(
            "file",
            SendErrorKind::InvalidMessage,
            "the message has no Message-ID".into(),
        )
    })?;
    let dir = dir.to_path_buf();
    let raw = msg.raw.clone();
    tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &raw))
        .await
        .map_err(|e| io_error("writer task", std::io::Error::other(e.to_string())))?
        .map_err(|e| io_error("writing the message", e))
}

/// Writes `dir/name` through a hidden temporary file and a rename, so a reader never sees a
/// partial message, and a message sent twice replaces itself.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dir.join(name))?;
    // Makes the rename itself durable; not every platform can open a folder, hence best effort.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> OutgoingMessage {
        OutgoingMessage {
            from: "noreply@id.example".into(),
            to: "agent@example.gouv.fr".into(),
            message_id: id.into(),
            raw: b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
        }
    }

    fn settings() -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port: 2525,
            security: SmtpSecurity::None,
            username: None,
            password: None,
            ca_file: None,
            timeout: Duration::from_secs(5),
            hello_name: None,
        }
    }

    #[tokio::test]
    async fn file_transport_writes_one_eml_per_message_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("var/mail");
        let t = MailTransport::file(target.clone()).unwrap();
        assert_eq!(t.name(), "file");
        t.send(&msg("abc@id.example")).await.unwrap();
        t.send(&msg("def@id.example")).await.unwrap();
        // The same message again replaces its file: no duplicate.
        t.send(&msg("abc@id.example")).await.unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["abc@id.example.eml", "def@id.example.eml"]);
        let content = std::fs::read(target.join("abc@id.example.eml")).unwrap();
        assert_eq!(content, msg("x").raw);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(target.join("abc@id.example.eml"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "mails carry tokens: owner only");
        }
    }

    #[tokio::test]
    async fn file_transport_sanitises_the_name_and_reports_io_errors() {
        let dir = tempfile::tempdir().unwrap();
        let t = MailTransport::file(dir.path().to_path_buf()).unwrap();
        t.send(&msg("../../etc/passwd")).await.unwrap();
        assert!(dir.path().join("_.._etc_passwd.eml").exists());
        let err = t.send(&msg("")).await.unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(err.kind(), SendErrorKind::InvalidMessage);

        // A file where the folder should be: a transient I/O error.
        let blocked = dir.path().join("blocked");
        let t = MailTransport::file(blocked.clone()).unwrap();
        std::fs::remove_dir(&blocked).unwrap();
        std::fs::write(&blocked, b"").unwrap();
        let err = t.send(&msg("x@y")).await.unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.kind(), SendErrorKind::Io);
    }

    #[test]
    fn file_transport_folder_must_be_creatable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = MailTransport::file(file.join("sub")).unwrap_err();
        assert!(matches!(err, MailError::FileDir { .. }));
    }

    #[test]
    fn smtp_settings_are_checked_at_start() {
        // Works outside a Tokio runtime (no task is spawned yet).
        let t = MailTransport::smtp(&settings()).unwrap();
        assert_eq!(t.name(), "smtp");
        assert!(format!("{t:?}").contains("127.0.0.1:2525 (plain)"));

        let only_user = SmtpSettings {
            username: Some("u".into()),
            ..settings()
        };
        assert!(MailTransport::smtp(&only_user).is_err());

        let cleartext_remote = SmtpSettings {
            host: "smtp.example.org".into(),
            username: Some("u".into()),
            password: Some("hunter2".into()),
            ..settings()
        };
        let err = MailTransport::smtp(&cleartext_remote).unwrap_err();
        assert!(err.to_string().contains("unencrypted"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        let cleartext_local = SmtpSettings {
            host: "localhost".into(),
            ..cleartext_remote.clone()
        };
        assert!(MailTransport::smtp(&cleartext_local).is_ok());
        let encrypted_remote = SmtpSettings {
            security: SmtpSecurity::StartTls,
            ..cleartext_remote
        };
        assert!(MailTransport::smtp(&encrypted_remote).is_ok());

        assert!(
            MailTransport::smtp(&SmtpSettings {
                host: " ".into(),
                ..settings()
            })
            .is_err()
        );
        assert!(
            MailTransport::smtp(&SmtpSettings {
                port: 0,
                ..settings()
            })
            .is_err()
        );
        let bad_hello = SmtpSettings {
            hello_name: Some("two words".into()),
            ..settings()
        };
        assert!(MailTransport::smtp(&bad_hello).is_err());
        let ip_hello = SmtpSettings {
            hello_name: Some("::1".into()),
            ..settings()
        };
        assert!(MailTransport::smtp(&ip_hello).is_ok());
    }

    #[test]
    fn ca_file_problems_are_start_up_errors() {
        let dir = tempfile::tempdir().unwrap();
        let with_ca = |path: PathBuf| SmtpSettings {
            security: SmtpSecurity::StartTls,
            ca_file: Some(path),
            ..settings()
        };
        let missing = dir.path().join("missing.pem");
        let err = MailTransport::smtp(&with_ca(missing)).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = MailTransport::smtp(&with_ca(empty)).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(MailTransport::smtp(&with_ca(garbage)).is_err());
    }

    #[test]
    fn settings_debug_hides_the_password() {
        let s = SmtpSettings {
            username: Some("u".into()),
            password: Some("hunter2".into()),
            ..settings()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn redaction_removes_addresses_and_caps_length() {
        assert_eq!(
            redact("permanent error (550): 5.1.1 <bob@example.org>: Recipient address rejected"),
            "permanent error (550): 5.1.1 [address] Recipient address rejected"
        );
        let long = "x ".repeat(400);
        assert_eq!(redact(&long).chars().count(), SUMMARY_MAX_CHARS);
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("localhost"));
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("127.1.2.3"));
        assert!(is_loopback("::1"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("smtp.example.org"));
        assert!(!is_loopback("10.0.0.1"));
    }

    #[test]
    fn security_names_in_configuration() {
        for (text, value) in [
            ("\"none\"", SmtpSecurity::None),
            ("\"starttls\"", SmtpSecurity::StartTls),
            ("\"tls\"", SmtpSecurity::Tls),
        ] {
            assert_eq!(serde_json::from_str::<SmtpSecurity>(text).unwrap(), value);
        }
    }
}
