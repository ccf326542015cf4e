//! Mail delivery against a real SMTP server: `tests/support/smtp_sink.py` (aiosmtpd), run with
//! the Python named by `TEST_PYTHON`, and read back with Python's own `email` parser.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use annuaire::mail::{
    InviteMail, Language, MailTransport, OutgoingMessage, SendErrorKind, SmtpSecurity,
    SmtpSettings, Templates, VerificationMail, build_message, submit_token_link,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;

const FROM: &str = "Annuaire <noreply@id.example.gouv.fr>";
const TO: &str = "jean.dupont@finances.gouv.fr";
const TOKEN: &str = "Tok3nTok3nTok3nTok3nTok3nTok3n42";

fn python() -> String {
    std::env::var("TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "TEST_PYTHON is not set: it must name a Python with the packages of \
             tests/support/requirements.txt (e.g. python3 -m venv .venv-test && \
             .venv-test/bin/pip install -r tests/support/requirements.txt, then \
             TEST_PYTHON=$PWD/.venv-test/bin/python cargo test --test it)"
        )
    })
}

fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A running `smtp_sink.py`, stopped with SIGTERM when dropped (also used by the validation
/// and outbox tests).
pub(crate) struct Sink {
    child: Child,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
}

impl Sink {
    pub(crate) fn start(extra: &[&str]) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(["--host", "127.0.0.1", "--port", "0", "--dir"])
            .arg(dir.path().join("mail"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the SMTP sink with TEST_PYTHON");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("the SMTP sink did not print READY (is aiosmtpd installed?)");
            }
        };
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the sink: {line:?}"));
        Sink { child, port, dir }
    }

    fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// The delivered `<n>.eml` files, in order.
    pub(crate) fn messages(&self) -> Vec<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(self.mail_dir())
            .unwrap()
            .filter_map(|e| {
                let path = e.unwrap().path();
                let n = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".eml")?
                    .parse()
                    .ok()?;
                Some((n, path))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, p)| p).collect()
    }

    fn settings(&self, security: SmtpSecurity) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            security,
            username: None,
            password: None,
            ca_file: None,
            timeout: Duration::from_secs(10),
            hello_name: Some("annuaire.test".into()),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A delivered message as Python's `email` package (policy `default`) reads it.
pub(crate) struct Parsed(pub(crate) Value);

impl Parsed {
    pub(crate) fn read(path: &Path) -> Parsed {
        const SCRIPT: &str = r#"
import email, email.policy, json, sys
with open(sys.argv[1], "rb") as f:
    msg = email.message_from_binary_file(f, policy=email.policy.default)
print(json.dumps({
    "headers": [[k.lower(), str(v)] for k, v in msg.items()],
    "content_type": msg.get_content_type(),
    "parts": [
        {"content_type": p.get_content_type(), "charset": p.get_content_charset(),
         "text": p.get_content()}
        for p in (msg.iter_parts() if msg.is_multipart() else [])
    ],
}))
"#;
        let out = Command::new(python())
            .args(["-c", SCRIPT])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Parsed(serde_json::from_slice(&out.stdout).unwrap())
    }

    pub(crate) fn header(&self, name: &str) -> String {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .unwrap_or_else(|| panic!("no {name} header"))[1]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub(crate) fn part(&self, content_type: &str) -> String {
        let part = self.0["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["content_type"] == content_type)
            .unwrap_or_else(|| panic!("no {content_type} part"));
        assert_eq!(part["charset"], "utf-8");
        part["text"].as_str().unwrap().to_string()
    }
}

fn verification_message(seed: u64) -> (OutgoingMessage, String) {
    let link = submit_token_link("https://id.example.gouv.fr", "sid-1", "secret=1", TOKEN).unwrap();
    let templates = Templates::load(None).unwrap();
    let mail = templates
        .render_verification(
            Language::FR,
            &VerificationMail {
                link: link.clone(),
                token: TOKEN.into(),
                address: TO.into(),
                server_name: "id.example.gouv.fr".into(),
                valid_for: Duration::from_secs(24 * 3600),
            },
        )
        .unwrap();
    let msg = build_message(
        FROM,
        TO,
        &mail,
        "id.example.gouv.fr",
        1_767_225_600_000,
        &mut StdRng::seed_from_u64(seed),
    )
    .unwrap();
    (msg, link)
}

/// A throwaway CA and a leaf for 127.0.0.1 and localhost signed by it (rustls refuses a
/// self-signed certificate used as its own CA). Returns (ca.pem, leaf.pem, leaf.key).
pub(crate) fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "annuaire test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    let paths = (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn plain_smtp_delivers_both_parts_headers_and_link() {
    install_crypto_provider();
    let sink = Sink::start(&[]);
    let transport = MailTransport::smtp(&sink.settings(SmtpSecurity::None)).unwrap();
    let (msg, link) = verification_message(1);
    transport.send(&msg).await.unwrap();

    let files = sink.messages();
    assert_eq!(files.len(), 1);
    let eml = Parsed::read(&files[0]);
    assert_eq!(eml.header("x-sink-mail-from"), "noreply@id.example.gouv.fr");
    assert_eq!(eml.header("x-sink-rcpt-to"), TO);
    assert_eq!(eml.header("x-sink-tls"), "no");
    assert_eq!(eml.header("from"), FROM);
    assert_eq!(eml.header("to"), TO);
    assert_eq!(eml.header("subject"), "Confirmez votre adresse e-mail");
    assert_eq!(eml.header("message-id"), format!("<{}>", msg.message_id));
    assert_eq!(eml.header("date"), "Thu, 01 Jan 2026 00:00:00 +0000");
    assert_eq!(eml.header("auto-submitted"), "auto-generated");
    assert_eq!(eml.0["content_type"], "multipart/alternative");

    let text = eml.part("text/plain");
    assert!(text.contains(&link), "{text}");
    assert!(text.contains(TOKEN));
    assert!(link.contains("client_secret=secret%3D1"));
    let html = eml.part("text/html");
    assert!(
        html.contains(&format!("href=\"{}\"", link.replace('&', "&amp;"))),
        "{html}"
    );
    assert!(html.contains(TOKEN));
    assert!(html.contains("<html lang=\"fr\">"));
}

#[tokio::test]
async fn one_transport_sends_several_messages_with_utf8_subjects() {
    install_crypto_provider();
    let sink = Sink::start(&[]);
    let transport = MailTransport::smtp(&sink.settings(SmtpSecurity::None)).unwrap();
    let templates = Templates::load(None).unwrap();
    let invite = InviteMail {
        sender_display_name: Some("Hélène Lefèvre".into()),
        sender: "@helene.lefevre:agent.culture.example".into(),
        sender_avatar_url: None,
        room_id: "!xyz:agent.culture.example".into(),
        room_alias: None,
        room_name: Some("Équipe <projet> « été »".into()),
        room_avatar_url: None,
        room_join_rules: None,
        room_type: None,
        web_client_location: Some("https://app.example".into()),
        token: "InviteToken".into(),
        ephemeral_private_key: "PrivateKey".into(),
        identity_server_url: "https://id.example.gouv.fr".into(),
        address: "invitee@préfecture.example".into(),
        server_name: "agent.culture.example".into(),
    };
    for (seed, lang) in [(1, Language::FR), (2, Language::EN)] {
        let mail = templates.render_invite(lang, &invite).unwrap();
        let msg = build_message(
            FROM,
            &invite.address,
            &mail,
            "id.example.gouv.fr",
            1_767_225_600_000,
            &mut StdRng::seed_from_u64(seed),
        )
        .unwrap();
        transport.send(&msg).await.unwrap();
    }
    let files = sink.messages();
    assert_eq!(files.len(), 2);
    let fr = Parsed::read(&files[0]);
    assert_eq!(
        fr.header("subject"),
        "Hélène Lefèvre vous invite à rejoindre Équipe <projet> « été »"
    );
    assert_eq!(
        fr.header("x-sink-rcpt-to"),
        "invitee@xn--prfecture-c4a.example"
    );
    assert!(fr.part("text/html").contains("Équipe &lt;projet&gt;"));
    assert!(
        fr.part("text/plain")
            .contains("https://app.example/#/room/!xyz:agent.culture.example")
    );
    let en = Parsed::read(&files[1]);
    assert_eq!(
        en.header("subject"),
        "Hélène Lefèvre invited you to join Équipe <projet> « été »"
    );
}

#[tokio::test]
async fn starttls_with_the_ca_file_delivers_and_without_it_fails() {
    install_crypto_provider();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(certs.path());
    let sink = Sink::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);

    for host in ["127.0.0.1", "localhost"] {
        let settings = SmtpSettings {
            host: host.into(),
            ca_file: Some(ca.clone()),
            ..sink.settings(SmtpSecurity::StartTls)
        };
        let transport = MailTransport::smtp(&settings).unwrap();
        let (msg, link) = verification_message(3);
        transport.send(&msg).await.unwrap();
        let files = sink.messages();
        let eml = Parsed::read(files.last().unwrap());
        assert_eq!(eml.header("x-sink-tls"), "yes", "{host}");
        assert!(eml.part("text/plain").contains(&link));
    }
    assert_eq!(sink.messages().len(), 2);

    // Verification is always on: the sink's certificate is not trusted without the CA.
    let transport = MailTransport::smtp(&sink.settings(SmtpSecurity::StartTls)).unwrap();
    let (msg, _) = verification_message(4);
    let err = transport.send(&msg).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Tls, "{err}");
    assert!(err.is_transient(), "{err}");
    assert_eq!(sink.messages().len(), 2, "nothing delivered");
}

#[tokio::test]
async fn starttls_is_required_not_opportunistic() {
    install_crypto_provider();
    let certs = tempfile::tempdir().unwrap();
    let (ca, _, _) = make_certificates(certs.path());
    // This sink offers no STARTTLS: the transport must refuse to continue in clear.
    let sink = Sink::start(&[]);
    let settings = SmtpSettings {
        ca_file: Some(ca),
        ..sink.settings(SmtpSecurity::StartTls)
    };
    let transport = MailTransport::smtp(&settings).unwrap();
    let (msg, _) = verification_message(5);
    let err = transport.send(&msg).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn implicit_tls_with_the_ca_file_delivers() {
    install_crypto_provider();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(certs.path());
    let sink = Sink::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--implicit-tls",
    ]);
    let settings = SmtpSettings {
        ca_file: Some(ca),
        ..sink.settings(SmtpSecurity::Tls)
    };
    let transport = MailTransport::smtp(&settings).unwrap();
    let (msg, _) = verification_message(6);
    transport.send(&msg).await.unwrap();
    let eml = Parsed::read(&sink.messages()[0]);
    assert_eq!(eml.header("x-sink-tls"), "yes");
}

#[tokio::test]
async fn authentication_is_used_and_a_wrong_password_is_permanent() {
    install_crypto_provider();
    let sink = Sink::start(&["--require-auth", "annuaire:s3cret"]);
    let with = |password: &str| SmtpSettings {
        username: Some("annuaire".into()),
        password: Some(password.into()),
        ..sink.settings(SmtpSecurity::None)
    };
    let (msg, _) = verification_message(7);

    let transport = MailTransport::smtp(&with("s3cret")).unwrap();
    transport.send(&msg).await.unwrap();
    let eml = Parsed::read(&sink.messages()[0]);
    assert_eq!(eml.header("x-sink-auth"), "annuaire");

    let transport = MailTransport::smtp(&with("wrong")).unwrap();
    let err = transport.send(&msg).await.unwrap_err();
    assert_eq!(err.code(), Some(535), "{err}");
    assert!(err.is_permanent());
    assert!(!err.to_string().contains("wrong"));

    // Without credentials the server refuses the mail.
    let transport = MailTransport::smtp(&sink.settings(SmtpSecurity::None)).unwrap();
    assert!(transport.send(&msg).await.is_err());
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn recipient_refusals_are_classified_and_redacted() {
    install_crypto_provider();
    let sink = Sink::start(&[
        "--reject-rcpt",
        "gone@finances.gouv.fr",
        "--defer-rcpt",
        "busy@finances.gouv.fr",
    ]);
    let transport = MailTransport::smtp(&sink.settings(SmtpSecurity::None)).unwrap();
    let (msg, _) = verification_message(8);
    let to = |address: &str| OutgoingMessage {
        to: address.into(),
        ..msg.clone()
    };

    let err = transport
        .send(&to("gone@finances.gouv.fr"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Rejected);
    assert_eq!(err.code(), Some(550));
    assert!(err.is_permanent());
    assert!(!err.to_string().contains("gone@"), "{err}");

    let err = transport
        .send(&to("busy@finances.gouv.fr"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::Rejected);
    assert_eq!(err.code(), Some(451));
    assert!(err.is_transient());

    let err = transport.send(&to("not an address")).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::InvalidMessage);
    assert!(err.is_permanent());

    assert!(sink.messages().is_empty());
    transport.send(&msg).await.unwrap();
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn no_server_listening_is_a_transient_error() {
    install_crypto_provider();
    // A port that was free a moment ago and has no listener now.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        username: None,
        password: None,
        ca_file: None,
        timeout: Duration::from_secs(5),
        hello_name: None,
    };
    let transport = MailTransport::smtp(&settings).unwrap();
    let (msg, _) = verification_message(9);
    let err = transport.send(&msg).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.kind(), SendErrorKind::Connection, "{err}");
    assert_eq!(err.code(), None);
}

#[tokio::test]
async fn a_silent_server_is_a_transient_timeout() {
    install_crypto_provider();
    // Accepts connections and never says a word (lettre alone would wait forever).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let settings = SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        username: None,
        password: None,
        ca_file: None,
        timeout: Duration::from_millis(500),
        hello_name: None,
    };
    let transport = MailTransport::smtp(&settings).unwrap();
    let (msg, _) = verification_message(10);
    let started = Instant::now();
    let err = transport.send(&msg).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.kind(), SendErrorKind::Timeout, "{err}");
    assert!(err.is_transient());
}
