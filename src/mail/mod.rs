//! Outgoing email: templates, message building and transports.
//!
//! The pipeline is split so that the outbox can persist a message between rendering and sending:
//! [`Templates`] renders a [`RenderedMail`] (subject, text, HTML) in a [`Language`];
//! [`build_message`] turns it into an [`OutgoingMessage`] whose `raw` bytes are the complete
//! RFC 5322 message (store them as they are); [`MailTransport::send`] delivers such a message
//! later, through SMTP or into a folder of `.eml` files.
//!
//! Addresses, tokens and message bodies are never logged: logs carry the transport, the outcome
//! and a redacted error summary.

pub mod domain_request;
mod language;
mod links;
mod message;
pub mod outbox;
mod templates;
mod transport;

pub use language::{Language, negotiate_language};
pub use links::{percent_encode_unreserved, submit_token_link};
pub use message::{OutgoingMessage, build_message};
pub use templates::{InviteMail, RenderedMail, Templates, VerificationMail, template_file_names};
pub use transport::{MailTransport, SendError, SendErrorKind, SmtpSecurity, SmtpSettings};

use std::path::PathBuf;

/// Everything that can go wrong while loading templates, rendering or building a message, or
/// setting up a transport. None of the messages carries an address, a token or a password.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// A template (embedded or operator override) failed to parse or to render with sample data.
    #[error("email template {file}: {reason}")]
    Template {
        /// The file: its name for embedded defaults, its full path for overrides.
        file: String,
        /// What is wrong, with the line when known.
        reason: String,
    },
    /// The override folder (`mail.templates_dir`) or one of its files cannot be read.
    #[error("email templates folder {}: {reason}", path.display())]
    TemplatesDir {
        /// The folder or file that failed.
        path: PathBuf,
        /// The I/O error or why the file is unusable.
        reason: String,
    },
    /// Rendering failed at run time (should not happen once `load` has succeeded).
    #[error("rendering email template {template} failed: {reason}")]
    Render {
        /// The template being rendered.
        template: String,
        /// The rendering error.
        reason: String,
    },
    /// A link that would go into a mail is not a plain http(s) URL (the link itself is not
    /// repeated here: it may carry a token).
    #[error("unusable link for an email: {0}")]
    Link(&'static str),
    /// An address (sender or recipient) cannot be used in a message.
    #[error("invalid {role} address: {reason}")]
    Address {
        /// `from` or `to`.
        role: &'static str,
        /// Why (never the address itself).
        reason: String,
    },
    /// The message cannot be assembled.
    #[error("building the email message failed: {0}")]
    Message(String),
    /// `mail.default_language` names a language the templates do not exist in.
    #[error(
        "mail.default_language = {wanted:?}: no templates in that language (available: {available})"
    )]
    Language {
        /// The configured language.
        wanted: String,
        /// The languages the templates exist in.
        available: String,
    },
    /// The SMTP settings are unusable (bad TLS parameters, unreadable CA file, ...).
    #[error("SMTP settings: {0}")]
    Smtp(String),
    /// The file transport's folder cannot be created or written.
    #[error("mail folder {}: {reason}", path.display())]
    FileDir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
}
