//! Mail templates: embedded defaults from `templates/email/`, operator overrides, rendering.
//!
//! File names are `<kind>.<lang>.subject.txt`, `<kind>.<lang>.txt` and `<kind>.<lang>.html`;
//! names starting with `_` are partials (`_layout.html`, `_valid_for.<lang>.txt`). See
//! `templates/email/README.md` for the variables each template receives.

use crate::templates::describe_error;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use minijinja::{Environment, Output, State, UndefinedBehavior, Value, context};

use super::links::{check_http_url, percent_encode, sign_ed25519_link};
use super::{Language, MailError};
use crate::templates::{FolderError, read_override_folder};

/// The embedded defaults, by file name. Every name here is also a name an operator can override.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "_layout.html",
        include_str!("../../templates/email/_layout.html"),
    ),
    (
        "_valid_for.fr.txt",
        include_str!("../../templates/email/_valid_for.fr.txt"),
    ),
    (
        "_valid_for.en.txt",
        include_str!("../../templates/email/_valid_for.en.txt"),
    ),
    (
        "verification.fr.subject.txt",
        include_str!("../../templates/email/verification.fr.subject.txt"),
    ),
    (
        "verification.fr.txt",
        include_str!("../../templates/email/verification.fr.txt"),
    ),
    (
        "verification.fr.html",
        include_str!("../../templates/email/verification.fr.html"),
    ),
    (
        "verification.en.subject.txt",
        include_str!("../../templates/email/verification.en.subject.txt"),
    ),
    (
        "verification.en.txt",
        include_str!("../../templates/email/verification.en.txt"),
    ),
    (
        "verification.en.html",
        include_str!("../../templates/email/verification.en.html"),
    ),
    (
        "invite.fr.subject.txt",
        include_str!("../../templates/email/invite.fr.subject.txt"),
    ),
    (
        "invite.fr.txt",
        include_str!("../../templates/email/invite.fr.txt"),
    ),
    (
        "invite.fr.html",
        include_str!("../../templates/email/invite.fr.html"),
    ),
    (
        "invite.en.subject.txt",
        include_str!("../../templates/email/invite.en.subject.txt"),
    ),
    (
        "invite.en.txt",
        include_str!("../../templates/email/invite.en.txt"),
    ),
    (
        "invite.en.html",
        include_str!("../../templates/email/invite.en.html"),
    ),
    (
        "_valid_for.de.txt",
        include_str!("../../templates/email/_valid_for.de.txt"),
    ),
    (
        "verification.de.subject.txt",
        include_str!("../../templates/email/verification.de.subject.txt"),
    ),
    (
        "verification.de.txt",
        include_str!("../../templates/email/verification.de.txt"),
    ),
    (
        "verification.de.html",
        include_str!("../../templates/email/verification.de.html"),
    ),
    (
        "invite.de.subject.txt",
        include_str!("../../templates/email/invite.de.subject.txt"),
    ),
    (
        "invite.de.txt",
        include_str!("../../templates/email/invite.de.txt"),
    ),
    (
        "invite.de.html",
        include_str!("../../templates/email/invite.de.html"),
    ),
];

/// Longest room name shown in an invite, in characters (longer ones end with an ellipsis).
const ROOM_NAME_MAX_CHARS: usize = 80;
/// Longest sender name shown in an invite, in characters.
const SENDER_NAME_MAX_CHARS: usize = 60;

/// The names of the template files annuaire uses: what an override folder may contain.
pub fn template_file_names() -> impl Iterator<Item = &'static str> {
    EMBEDDED.iter().map(|(name, _)| *name)
}

/// The content of an email-confirmation mail.
#[derive(Clone)]
pub struct VerificationMail {
    /// The `submitToken` link (see [`submit_token_link`]); must be a plain http(s) URL.
    pub link: String,
    /// The token itself, for clients that ask the user to type it.
    pub token: String,
    /// The address being confirmed (normalised form).
    pub address: String,
    /// The name of the service, as users know it.
    pub server_name: String,
    /// How long the token stays valid; the template words it ("24 heures", "24 hours").
    pub valid_for: Duration,
}

/// The content of a 3PID room invitation mail: every field of the `store-invite` request (as a
/// homeserver sent them; empty strings count as absent), and what this server adds (the
/// invitation token, the ephemeral private key, where to sign with it).
#[derive(Clone)]
pub struct InviteMail {
    /// The inviter's display name, if any.
    pub sender_display_name: Option<String>,
    /// The inviter's Matrix ID.
    pub sender: String,
    /// The inviter's avatar (`mxc://…`), if any.
    pub sender_avatar_url: Option<String>,
    /// The room's ID, used in the client link.
    pub room_id: String,
    /// The room's canonical alias, if any.
    pub room_alias: Option<String>,
    /// The room's name, if any.
    pub room_name: Option<String>,
    /// The room's avatar (`mxc://…`), if any.
    pub room_avatar_url: Option<String>,
    /// The room's join rule (`invite`, `public`, …), if known.
    pub room_join_rules: Option<String>,
    /// The room's type (`m.space` for a space).
    pub room_type: Option<String>,
    /// The web client invitees should use (`https://…`), already checked against the
    /// configuration; dropped unless a plain http(s) URL.
    pub web_client_location: Option<String>,
    /// The invitation token (the state key of the room's `m.room.third_party_invite`).
    pub token: String,
    /// The invitation's ephemeral private key (unpadded URL-safe base64): whoever holds it can
    /// accept the invitation with the account of their choice, through `sign-ed25519`.
    pub ephemeral_private_key: String,
    /// This identity server's public base URL (`https://…`), where `sign-ed25519` is served.
    pub identity_server_url: String,
    /// The invited address (normalised form).
    pub address: String,
    /// The Matrix server the invitation comes from.
    pub server_name: String,
}

/// A rendered mail: what goes into a message, in one language.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedMail {
    /// The language it is written in.
    pub language: Language,
    /// One line, without control characters.
    pub subject: String,
    /// The text/plain part.
    pub text: String,
    /// The text/html part.
    pub html: String,
}

// Mails carry tokens and addresses: debug output must not show them.
impl fmt::Debug for VerificationMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationMail")
            .field("server_name", &self.server_name)
            .field("valid_for", &self.valid_for)
            .finish_non_exhaustive()
    }
}

// The token and the private key accept the invitation: never in debug output.
impl fmt::Debug for InviteMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InviteMail")
            .field("sender", &self.sender)
            .field("room_id", &self.room_id)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RenderedMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedMail")
            .field("language", &self.language)
            .field("text_len", &self.text.len())
            .field("html_len", &self.html.len())
            .finish_non_exhaustive()
    }
}

/// Where a template came from, for error messages.
#[derive(Debug, Clone)]
enum Origin {
    Embedded,
    Override(std::path::PathBuf),
}

/// The loaded templates, ready to render. Load once at start; rendering is `&self`.
pub struct Templates {
    env: Environment<'static>,
    origins: BTreeMap<String, Origin>,
    languages: Vec<Language>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let overridden: Vec<&str> = self
            .origins
            .iter()
            .filter(|(_, o)| matches!(o, Origin::Override(_)))
            .map(|(n, _)| n.as_str())
            .collect();
        f.debug_struct("Templates")
            .field("overridden", &overridden)
            .finish()
    }
}

impl Templates {
    /// Loads the embedded templates, replaced by the files of the same name in `override_dir`.
    ///
    /// The folder is read once. Extra files whose name starts with `_` are loaded as partials
    /// (for `{% include %}`/`{% extends %}`); other unknown files are ignored with a warning.
    /// Every kind is rendered once in every language with sample values, so a template that
    /// does not parse or cannot render is an error here, naming its file, not at the first mail.
    pub fn load(override_dir: Option<&Path>) -> Result<Templates, MailError> {
        let mut sources: BTreeMap<String, (String, Origin)> = EMBEDDED
            .iter()
            .map(|(name, src)| (name.to_string(), (src.to_string(), Origin::Embedded)))
            .collect();
        if let Some(dir) = override_dir {
            read_overrides(dir, &mut sources)?;
        }

        let mut env = Environment::new();
        // Debug info would copy the context (tokens, addresses) into errors.
        env.set_debug(false);
        // Printing an undefined variable is an error (caught by the sample render at load);
        // testing one in `{% if %}` is allowed.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_formatter(html_formatter);
        let mut origins = BTreeMap::new();
        for (name, (source, origin)) in sources {
            if let Err(e) = env.add_template_owned(name.clone(), source) {
                return Err(MailError::Template {
                    file: describe_origin(&name, &origin),
                    reason: describe_error(&e),
                });
            }
            origins.insert(name, origin);
        }
        let names: Vec<&str> = origins.keys().map(String::as_str).collect();
        let languages = available_languages(names.iter().copied());
        warn_incomplete_languages(&names, &languages);
        let templates = Templates {
            env,
            origins,
            languages,
        };
        templates.check_with_samples()?;
        let overridden: Vec<&str> = templates
            .origins
            .iter()
            .filter(|(_, o)| matches!(o, Origin::Override(_)))
            .map(|(n, _)| n.as_str())
            .collect();
        if !overridden.is_empty() {
            tracing::info!(templates = ?overridden, "email templates overridden by the operator");
        }
        Ok(templates)
    }

    /// The languages mails can be written in: those whose templates all exist.
    pub fn languages(&self) -> &[Language] {
        &self.languages
    }

    /// Checks that `language` (the configured default) has templates.
    pub fn check_default_language(&self, language: Language) -> Result<(), MailError> {
        if self.languages.contains(&language) {
            return Ok(());
        }
        Err(MailError::Language {
            wanted: language.to_string(),
            available: self
                .languages
                .iter()
                .map(Language::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Renders the email-confirmation mail.
    pub fn render_verification(
        &self,
        lang: Language,
        v: &VerificationMail,
    ) -> Result<RenderedMail, MailError> {
        check_http_url(&v.link).map_err(MailError::Link)?;
        let minutes = v.valid_for.as_secs().div_ceil(60);
        let ctx = context! {
            lang => lang.code(),
            link => v.link.as_str(),
            token => v.token.as_str(),
            address => clean_inline(&v.address),
            server_name => clean_inline(&v.server_name),
            valid_for_minutes => minutes,
        };
        self.render("verification", lang, ctx)
    }

    /// Renders a 3PID room invitation mail.
    ///
    /// `client_link` is the link Element-compatible web clients understand:
    /// `<web client>/#/room/<room id>?email=…&signurl=…&room_name=…&room_avatar_url=…&inviter_name=…&room_type=…`,
    /// where `signurl` is this server's unauthenticated `sign-ed25519` with the token and the
    /// private key: the client signs the invitation for the account the invitee is using and
    /// joins with it. Without a web client there is no link.
    pub fn render_invite(&self, lang: Language, v: &InviteMail) -> Result<RenderedMail, MailError> {
        let sender = clean_inline(&v.sender);
        let sender_name = present(v.sender_display_name.as_deref())
            .map(|n| cap(&clean_inline(n), SENDER_NAME_MAX_CHARS))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| cap(&sender, SENDER_NAME_MAX_CHARS));
        let room_name = present(v.room_name.as_deref())
            .map(|n| cap(&clean_inline(n), ROOM_NAME_MAX_CHARS))
            .filter(|n| !n.is_empty());
        let is_space = present(v.room_type.as_deref()) == Some("m.space");
        // One line each, no control characters (the values come from a homeserver's request).
        let inline = |value: Option<&str>| {
            present(value)
                .map(clean_inline)
                .filter(|value| !value.is_empty())
        };
        let room_id = clean_inline(&v.room_id);
        let token = clean_inline(&v.token);
        let private_key = clean_inline(&v.ephemeral_private_key);
        let sign_url = sign_ed25519_link(&v.identity_server_url, &token, &private_key)?;
        let web_client_location = present(v.web_client_location.as_deref()).and_then(|base| {
            let base = base.trim_end_matches('/');
            match check_http_url(base) {
                Ok(()) => Some(base.to_string()),
                Err(reason) => {
                    // The configuration is wrong, not the user's input: say so.
                    tracing::warn!(reason, "web client location ignored in an invite mail");
                    None
                }
            }
        });
        let room_avatar_url = inline(v.room_avatar_url.as_deref());
        let room_type = inline(v.room_type.as_deref());
        let client_link = web_client_location.as_deref().map(|base| {
            let enc = |value: &str| percent_encode(value, b"-._~");
            let mut link = format!(
                "{base}/#/room/{}?email={}&signurl={}",
                percent_encode(&room_id, b"!:._~-"),
                enc(&clean_inline(&v.address)),
                enc(&sign_url),
            );
            let optional = [
                ("room_name", room_name.as_deref()),
                ("room_avatar_url", room_avatar_url.as_deref()),
                ("inviter_name", Some(sender_name.as_str())),
                ("room_type", room_type.as_deref()),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    link.push_str(&format!("&{name}={}", enc(value)));
                }
            }
            link
        });
        let ctx = context! {
            lang => lang.code(),
            sender_name => sender_name,
            sender => sender,
            sender_display_name => inline(v.sender_display_name.as_deref()),
            sender_avatar_url => inline(v.sender_avatar_url.as_deref()),
            room_id => room_id,
            room_alias => inline(v.room_alias.as_deref()),
            room_name => room_name,
            room_avatar_url => room_avatar_url,
            room_join_rules => inline(v.room_join_rules.as_deref()),
            room_type => room_type,
            is_space => is_space,
            token => token,
            ephemeral_private_key => private_key,
            sign_url => sign_url,
            web_client_location => web_client_location,
            client_link => client_link,
            address => clean_inline(&v.address),
            server_name => clean_inline(&v.server_name),
        };
        self.render("invite", lang, ctx)
    }

    fn render(&self, kind: &str, lang: Language, ctx: Value) -> Result<RenderedMail, MailError> {
        render_mail(&self.env, kind, lang, ctx)
    }

    /// Renders every kind in every language with sample values (both branches of the optional
    /// parts of an invite), turning failures into errors that name the operator's file.
    fn check_with_samples(&self) -> Result<(), MailError> {
        let verification = VerificationMail {
            link: "https://matrix.example.org/_matrix/identity/v2/validate/email/submitToken?sid=1&client_secret=2&token=3".into(),
            token: "SampleToken0123456789SampleToken".into(),
            address: "agent@example.gouv.fr".into(),
            server_name: "example.org".into(),
            valid_for: Duration::from_secs(90 * 60),
        };
        let full_invite = InviteMail {
            sender_display_name: Some("Jean Dupont".into()),
            sender: "@jean.dupont:example.org".into(),
            sender_avatar_url: Some("mxc://example.org/jean".into()),
            room_id: "!room:example.org".into(),
            room_alias: Some("#salon:example.org".into()),
            room_name: Some("Salon".into()),
            room_avatar_url: Some("mxc://example.org/salon".into()),
            room_join_rules: Some("invite".into()),
            room_type: Some("m.space".into()),
            web_client_location: Some("https://app.example.org".into()),
            token: "SampleInviteToken0123456789abcde".into(),
            ephemeral_private_key: "c2FtcGxlLXByaXZhdGUta2V5LTAxMjM0NTY3ODlhYmM".into(),
            identity_server_url: "https://id.example.org".into(),
            address: "agent@example.gouv.fr".into(),
            server_name: "example.org".into(),
        };
        let bare_invite = InviteMail {
            sender_display_name: None,
            sender_avatar_url: None,
            room_alias: None,
            room_name: None,
            room_avatar_url: None,
            room_join_rules: None,
            room_type: None,
            web_client_location: None,
            ..full_invite.clone()
        };
        for lang in self.languages.iter().copied() {
            let results = [
                self.render_verification(lang, &verification),
                self.render_invite(lang, &full_invite),
                self.render_invite(lang, &bare_invite),
            ];
            for result in results {
                if let Err(MailError::Render { template, reason }) = result {
                    let file = match self.origins.get(&template) {
                        Some(origin) => describe_origin(&template, origin),
                        None => template,
                    };
                    return Err(MailError::Template { file, reason });
                }
                result?;
            }
        }
        Ok(())
    }
}

/// The parts of a mail, as they end template file names (`<kind>.<lang>.<part>`).
const PARTS: [&str; 3] = ["subject.txt", "txt", "html"];

/// The kinds of mail, as they start template file names. Adding a kind: its files in
/// `EMBEDDED` (every language), its name here, its `render_…` function and its samples in
/// `check_with_samples`.
const KINDS: [&str; 2] = ["verification", "invite"];

/// The language of a template file name `<kind>.<lang>.<part>` of a known kind and part.
fn template_language(name: &str) -> Option<Language> {
    let (kind, rest) = name.split_once('.')?;
    if !KINDS.contains(&kind) {
        return None;
    }
    let (code, part) = rest.split_once('.')?;
    if !PARTS.contains(&part) || code.len() > 3 {
        return None;
    }
    Language::new(code).ok().filter(|l| l.code() == code)
}

/// The languages every kind of mail has all its templates in (embedded or the operator's),
/// in code order.
fn available_languages<'a>(names: impl Iterator<Item = &'a str>) -> Vec<Language> {
    let names: Vec<&str> = names.collect();
    let mut languages: Vec<Language> = names
        .iter()
        .filter_map(|n| template_language(n))
        .filter(|lang| missing_files(&names, *lang).is_empty())
        .collect();
    languages.sort();
    languages.dedup();
    languages
}

/// The template files `lang` lacks among `names`.
fn missing_files(names: &[&str], lang: Language) -> Vec<String> {
    KINDS
        .iter()
        .flat_map(|kind| {
            PARTS
                .iter()
                .map(move |part| format!("{kind}.{lang}.{part}"))
        })
        .filter(|file| !names.contains(&file.as_str()))
        .collect()
}

/// Languages some templates exist in but not all: unusable, and the operator should know.
fn warn_incomplete_languages(names: &[&str], available: &[Language]) {
    let mut partial: Vec<Language> = names
        .iter()
        .filter_map(|n| template_language(n))
        .filter(|lang| !available.contains(lang))
        .collect();
    partial.sort();
    partial.dedup();
    for lang in partial {
        tracing::warn!(
            language = lang.code(),
            missing = ?missing_files(names, lang),
            "email templates: this language lacks some templates, mails are not written in it"
        );
    }
}

/// Reads the operator's folder into `sources`, replacing embedded files of the same name;
/// `_*.txt` and `_*.html` are partials.
fn read_overrides(
    dir: &Path,
    sources: &mut BTreeMap<String, (String, Origin)>,
) -> Result<(), MailError> {
    // Replacements of embedded files, new languages of the known kinds (`invite.it.txt`), and
    // partials (`_valid_for.it.txt`, `_footer.html`).
    let files = read_override_folder(dir, "email templates", |name| {
        sources.contains_key(name)
            || template_language(name).is_some()
            || (name.starts_with('_') && (name.ends_with(".txt") || name.ends_with(".html")))
    })
    .map_err(|e| match e {
        FolderError::Unreadable { path, reason } => MailError::TemplatesDir { path, reason },
        FolderError::NotUtf8 { path } => MailError::Template {
            file: path.display().to_string(),
            reason: "not valid UTF-8".into(),
        },
    })?;
    for f in files {
        sources.insert(f.name, (f.source, Origin::Override(f.path)));
    }
    Ok(())
}

fn describe_origin(name: &str, origin: &Origin) -> String {
    match origin {
        Origin::Embedded => crate::templates::describe_origin(name, None),
        Origin::Override(path) => crate::templates::describe_origin(name, Some(path)),
    }
}

/// Escapes text for HTML as the web pages do ([`crate::templates::html_formatter`]: like
/// minijinja, except `/`, so links need no `|safe`), and an absent optional value (none) prints
/// as nothing, as Sydent's templates expect, not as `None`.
fn html_formatter(
    out: &mut Output,
    state: &mut State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    if value.is_none() {
        return Ok(());
    }
    crate::templates::html_formatter(out, state, value)
}

/// `None` for absent, empty or blank values (Synapse sends empty strings for unset fields).
fn present(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// Bidirectional controls: they can make a name read backwards (a spoofing trick).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Renders mail `kind` in `lang` from `env`'s templates `{kind}.{lang}.subject.txt`, `.txt` and
/// `.html`: the subject made one clean line (and given to the bodies as `subject`), each body
/// ending with a newline. Every kind of mail goes through here.
pub(super) fn render_mail(
    env: &Environment<'static>,
    kind: &str,
    lang: Language,
    ctx: Value,
) -> Result<RenderedMail, MailError> {
    let subject = sanitize_subject(&render_template(
        env,
        &format!("{kind}.{lang}.subject.txt"),
        &ctx,
    )?);
    let ctx = context! { subject => subject.as_str(), ..ctx };
    let mut text = render_template(env, &format!("{kind}.{lang}.txt"), &ctx)?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let mut html = render_template(env, &format!("{kind}.{lang}.html"), &ctx)?;
    if !html.ends_with('\n') {
        html.push('\n');
    }
    Ok(RenderedMail {
        language: lang,
        subject,
        text,
        html,
    })
}

/// Renders one template, a failure naming the template (the operator's file) and what is wrong.
fn render_template(
    env: &Environment<'static>,
    name: &str,
    ctx: &Value,
) -> Result<String, MailError> {
    let render_error = |e: minijinja::Error| MailError::Render {
        template: e.name().unwrap_or(name).to_string(),
        reason: describe_error(&e),
    };
    env.get_template(name)
        .map_err(render_error)?
        .render(ctx)
        .map_err(render_error)
}

/// One line of display text: control characters become spaces, bidi controls go, runs of
/// whitespace collapse, ends are trimmed.
pub(super) fn clean_inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars() {
        if is_bidi_control(c) {
            continue;
        }
        if c.is_control() || c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

/// A subject is one line: whatever a template or a value put in, no CR, LF or other control.
fn sanitize_subject(s: &str) -> String {
    clean_inline(s)
}

/// At most `max` characters, the last one an ellipsis when something was cut.
fn cap(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let kept: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", kept.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::submit_token_link;

    fn verification() -> VerificationMail {
        VerificationMail {
            link: submit_token_link(
                "https://id.example.gouv.fr/",
                "sid123",
                "s3cr=t.x",
                "TokenABCdef0123456789xyzTokenABCdef",
            )
            .unwrap(),
            token: "TokenABCdef0123456789xyzTokenABCdef".into(),
            address: "jean.dupont@finances.gouv.fr".into(),
            server_name: "tchap.gouv.fr".into(),
            valid_for: Duration::from_secs(24 * 3600),
        }
    }

    fn invite() -> InviteMail {
        InviteMail {
            sender_display_name: Some("Jeanne Martin".into()),
            sender: "@jeanne.martin:agent.finances.tchap.gouv.fr".into(),
            sender_avatar_url: None,
            room_id: "!abcDEF:agent.finances.tchap.gouv.fr".into(),
            room_alias: None,
            room_name: Some("Budget 2026".into()),
            room_avatar_url: None,
            room_join_rules: None,
            room_type: None,
            web_client_location: Some("https://www.tchap.gouv.fr/".into()),
            token: "InviteTok3n".into(),
            ephemeral_private_key: "Priv-Key_0".into(),
            identity_server_url: "https://id.tchap.gouv.fr".into(),
            address: "paul@interieur.gouv.fr".into(),
            server_name: "agent.finances.tchap.gouv.fr".into(),
        }
    }

    /// The link of [`invite`]'s mail.
    const INVITE_LINK: &str = "https://www.tchap.gouv.fr/#/room/!abcDEF:agent.finances.tchap.gouv.fr?email=paul%40interieur.gouv.fr&signurl=https%3A%2F%2Fid.tchap.gouv.fr%2F_matrix%2Fidentity%2Fapi%2Fv1%2Fsign-ed25519%3Ftoken%3DInviteTok3n%26private_key%3DPriv-Key_0&room_name=Budget%202026&inviter_name=Jeanne%20Martin";

    const LINK: &str = "https://id.example.gouv.fr/_matrix/identity/v2/validate/email/submitToken?sid=sid123&client_secret=s3cr%3Dt.x&token=TokenABCdef0123456789xyzTokenABCdef";

    #[test]
    fn link_is_built_with_encoded_values() {
        assert_eq!(verification().link, LINK);
        let link = submit_token_link("http://localhost:8090", "a b", "c&d", "é").unwrap();
        assert_eq!(
            link,
            "http://localhost:8090/_matrix/identity/v2/validate/email/submitToken?sid=a%20b&client_secret=c%26d&token=%C3%A9"
        );
        assert!(submit_token_link("javascript:alert(1)", "a", "b", "c").is_err());
        assert!(submit_token_link("https://x.example/?a=b", "a", "b", "c").is_err());
        assert!(submit_token_link("https://", "a", "b", "c").is_err());
        assert!(submit_token_link("ftp://x.example", "a", "b", "c").is_err());
    }

    #[test]
    fn verification_in_both_languages_carries_link_and_token() {
        let t = Templates::load(None).unwrap();
        for lang in [Language::FR, Language::EN] {
            let m = t.render_verification(lang, &verification()).unwrap();
            assert_eq!(m.language, lang);
            assert!(!m.subject.contains(['\n', '\r']), "{lang}: {}", m.subject);
            assert!(m.text.contains(LINK), "{lang} text lacks the link");
            assert!(m.text.contains("TokenABCdef0123456789xyzTokenABCdef"));
            // In HTML, the link is escaped once (`&` → `&amp;`) and `/` is left alone.
            let html_link = LINK.replace('&', "&amp;");
            assert!(
                m.html.contains(&format!("href=\"{html_link}\"")),
                "{lang} html lacks the href"
            );
            assert!(m.html.contains("TokenABCdef0123456789xyzTokenABCdef"));
            assert!(m.html.contains(&format!("lang=\"{lang}\"")));
            assert!(!m.html.contains("&#x2f;"));
            assert!(m.text.contains("jean.dupont@finances.gouv.fr"));
        }
        let fr = t
            .render_verification(Language::FR, &verification())
            .unwrap();
        assert_eq!(fr.subject, "Confirmez votre adresse e-mail");
        assert!(fr.text.contains("24\u{a0}heures"), "{}", fr.text);
        assert!(
            fr.html
                .contains("<title>Confirmez votre adresse e-mail</title>")
        );
        let en = t
            .render_verification(Language::EN, &verification())
            .unwrap();
        assert_eq!(en.subject, "Confirm your email address");
        assert!(en.text.contains("24 hours"), "{}", en.text);
    }

    #[test]
    fn validity_is_worded_by_the_templates() {
        let t = Templates::load(None).unwrap();
        let cases = [
            (60, "1\u{a0}heure", "1 hour"),
            (
                90,
                "1\u{a0}heure et 30\u{a0}minutes",
                "1 hour and 30 minutes",
            ),
            (1, "1\u{a0}minute", "1 minute"),
            (45, "45\u{a0}minutes", "45 minutes"),
            (48 * 60, "48\u{a0}heures", "48 hours"),
        ];
        for (minutes, fr, en) in cases {
            let v = VerificationMail {
                valid_for: Duration::from_secs(minutes * 60),
                ..verification()
            };
            let text_fr = t.render_verification(Language::FR, &v).unwrap().text;
            assert!(
                text_fr.contains(&format!("valables {fr}.")),
                "{minutes}: {text_fr}"
            );
            let text_en = t.render_verification(Language::EN, &v).unwrap().text;
            assert!(
                text_en.contains(&format!("valid for {en}.")),
                "{minutes}: {text_en}"
            );
        }
    }

    #[test]
    fn an_unsafe_verification_link_is_refused() {
        let t = Templates::load(None).unwrap();
        for link in [
            "javascript:alert(1)",
            "https://x.example/\"><script>",
            "https://x.example/a b",
        ] {
            let v = VerificationMail {
                link: link.into(),
                ..verification()
            };
            let err = t.render_verification(Language::FR, &v).unwrap_err();
            assert!(matches!(err, MailError::Link(_)), "{link}: {err}");
            assert!(!err.to_string().contains("x.example"));
        }
    }

    #[test]
    fn invite_in_both_languages() {
        let t = Templates::load(None).unwrap();
        let fr = t.render_invite(Language::FR, &invite()).unwrap();
        assert_eq!(
            fr.subject,
            "Jeanne Martin vous invite à rejoindre Budget 2026"
        );
        let html_link = INVITE_LINK.replace('&', "&amp;");
        for m in [&fr, &t.render_invite(Language::EN, &invite()).unwrap()] {
            assert!(m.text.contains(INVITE_LINK), "{}", m.text);
            assert!(
                m.html.contains(&format!("href=\"{html_link}\"")),
                "{}",
                m.html
            );
            assert!(
                m.text
                    .contains("@jeanne.martin:agent.finances.tchap.gouv.fr")
            );
            assert!(m.text.contains("agent.finances.tchap.gouv.fr"));
            assert!(m.html.contains("Budget 2026"));
        }
        let en = t.render_invite(Language::EN, &invite()).unwrap();
        assert_eq!(en.subject, "Jeanne Martin invited you to join Budget 2026");
    }

    #[test]
    fn invite_without_optional_values() {
        let t = Templates::load(None).unwrap();
        // Synapse sends empty strings for unset fields.
        let v = InviteMail {
            sender_display_name: Some(String::new()),
            room_name: Some("  ".into()),
            room_type: Some(String::new()),
            web_client_location: Some(String::new()),
            ..invite()
        };
        let fr = t.render_invite(Language::FR, &v).unwrap();
        assert_eq!(
            fr.subject,
            "@jeanne.martin:agent.finances.tchap.gouv.fr vous invite à rejoindre un salon"
        );
        assert!(!fr.text.contains("/#/room/"));
        assert!(!fr.html.contains("/#/room/"));
        let en = t.render_invite(Language::EN, &v).unwrap();
        assert_eq!(
            en.subject,
            "@jeanne.martin:agent.finances.tchap.gouv.fr invited you to join a room"
        );
    }

    #[test]
    fn invite_to_a_space_says_so() {
        let t = Templates::load(None).unwrap();
        let v = InviteMail {
            room_type: Some("m.space".into()),
            room_name: None,
            ..invite()
        };
        assert_eq!(
            t.render_invite(Language::FR, &v).unwrap().subject,
            "Jeanne Martin vous invite à rejoindre un espace"
        );
        assert_eq!(
            t.render_invite(Language::EN, &v).unwrap().subject,
            "Jeanne Martin invited you to join a space"
        );
        let named = InviteMail {
            room_type: Some("m.space".into()),
            ..invite()
        };
        let text = t.render_invite(Language::FR, &named).unwrap().text;
        assert!(
            text.contains("l'espace «\u{a0}Budget 2026\u{a0}»"),
            "{text}"
        );
    }

    #[test]
    fn invite_values_are_escaped_in_html_and_kept_in_text() {
        let t = Templates::load(None).unwrap();
        let v = InviteMail {
            room_name: Some("<script>alert('x')</script> & co".into()),
            sender_display_name: Some("\"Eve\" <eve@evil.example>".into()),
            ..invite()
        };
        for lang in [Language::FR, Language::EN] {
            let m = t.render_invite(lang, &v).unwrap();
            assert!(!m.html.contains("<script>"), "{}", m.html);
            assert!(
                m.html
                    .contains("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co")
            );
            assert!(m.html.contains("&quot;Eve&quot; &lt;eve@evil.example&gt;"));
            assert!(m.text.contains("<script>alert('x')</script> & co"));
            assert!(m.subject.contains("<script>"), "subjects are not HTML");
        }
    }

    #[test]
    fn invite_names_are_capped_with_an_ellipsis() {
        let t = Templates::load(None).unwrap();
        let v = InviteMail {
            room_name: Some("R".repeat(200)),
            sender_display_name: Some("S".repeat(200)),
            ..invite()
        };
        let m = t.render_invite(Language::EN, &v).unwrap();
        let room = format!("{}…", "R".repeat(79));
        let sender = format!("{}…", "S".repeat(59));
        assert_eq!(m.subject, format!("{sender} invited you to join {room}"));
        assert!(!m.text.contains(&"R".repeat(80)));
        assert!(m.html.contains(&room));
        assert_eq!(cap("abc", 3), "abc");
        assert_eq!(cap("abcd", 3), "ab…");
        assert_eq!(cap("ab  cd", 4), "ab…");
        assert_eq!(cap("éééé", 3), "éé…");
    }

    #[test]
    fn unsafe_client_locations_are_dropped() {
        let t = Templates::load(None).unwrap();
        for location in [
            "javascript:alert(1)",
            "https://x.example/\"onmouseover=\"x",
            "data:text/html,hi",
            "https://exa mple.org",
        ] {
            let v = InviteMail {
                web_client_location: Some(location.into()),
                ..invite()
            };
            let m = t.render_invite(Language::FR, &v).unwrap();
            assert!(!m.html.contains("/#/room/"), "{location}");
            assert!(!m.html.contains("onmouseover"), "{location}");
            assert!(!m.text.contains("javascript"), "{location}");
        }
    }

    #[test]
    fn subjects_are_a_single_line_without_controls() {
        let t = Templates::load(None).unwrap();
        let v = InviteMail {
            room_name: Some("Salon\r\nBcc: victim@example.org\u{7}".into()),
            sender_display_name: Some("Jean\u{202E}tnod\u{2028}Dupont\t".into()),
            ..invite()
        };
        for lang in [Language::FR, Language::EN] {
            let m = t.render_invite(lang, &v).unwrap();
            assert!(!m.subject.chars().any(char::is_control), "{:?}", m.subject);
            assert!(!m.subject.contains('\u{202E}'));
            assert!(
                m.subject.contains("Salon Bcc: victim@example.org"),
                "{}",
                m.subject
            );
            assert!(m.subject.contains("Jeantnod Dupont"), "{}", m.subject);
        }
        assert_eq!(sanitize_subject("  a\r\n\r\n b\u{0}c \u{85} "), "a b c");
    }

    #[test]
    fn overrides_from_a_folder_win_and_others_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("verification.fr.subject.txt"),
            "Votre code pour {{ server_name }}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("_layout.html"),
            "<html lang=\"{{ lang }}\"><body class=\"custom\">{% block content %}{% endblock %}</body></html>",
        )
        .unwrap();
        std::fs::write(dir.path().join("README.txt"), "unrelated").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let fr = t
            .render_verification(Language::FR, &verification())
            .unwrap();
        assert_eq!(fr.subject, "Votre code pour tchap.gouv.fr");
        assert!(fr.html.contains("class=\"custom\""));
        assert!(fr.html.contains("TokenABCdef0123456789xyzTokenABCdef"));
        // Not overridden: the embedded defaults.
        assert!(fr.text.contains(LINK));
        let en = t
            .render_verification(Language::EN, &verification())
            .unwrap();
        assert_eq!(en.subject, "Confirm your email address");
        assert!(format!("{t:?}").contains("verification.fr.subject.txt"));
    }

    #[test]
    fn an_operator_partial_can_be_included() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("_signature.txt"), "Le ministère").unwrap();
        std::fs::write(
            dir.path().join("invite.fr.txt"),
            "{{ sender_name }} — {% include \"_signature.txt\" %}",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let m = t.render_invite(Language::FR, &invite()).unwrap();
        assert_eq!(m.text, "Jeanne Martin — Le ministère\n");
    }

    #[test]
    fn a_broken_override_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invite.en.html");
        std::fs::write(&path, "<p>{% if room_name %}unclosed</p>\n").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, MailError::Template { .. }), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn an_override_that_fails_to_render_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verification.en.txt");
        // Parses, but prints a variable that does not exist.
        std::fs::write(&path, "{{ tokne }}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("undefined"), "{message}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invite.fr.html");
        std::fs::write(&path, "{% include \"_missing.html\" %}").unwrap();
        let message = Templates::load(Some(dir.path())).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn a_missing_override_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = Templates::load(Some(&missing)).unwrap_err();
        assert!(matches!(err, MailError::TemplatesDir { .. }));
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn non_utf8_override_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invite.en.txt");
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        let message = Templates::load(Some(dir.path())).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn debug_output_hides_tokens_and_addresses() {
        let v = verification();
        let t = Templates::load(None).unwrap();
        let m = t.render_verification(Language::FR, &v).unwrap();
        for shown in [
            format!("{v:?}"),
            format!("{m:?}"),
            format!("{:?}", invite()),
        ] {
            assert!(!shown.contains("TokenABC"), "{shown}");
            assert!(!shown.contains("@finances.gouv.fr"), "{shown}");
            assert!(!shown.contains("paul@"), "{shown}");
        }
    }

    #[test]
    fn every_embedded_file_is_used_and_the_list_is_complete() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/email");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".txt") || n.ends_with(".html"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = template_file_names().map(str::to_owned).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn languages_come_from_the_templates() {
        let t = Templates::load(None).unwrap();
        assert_eq!(t.languages(), [Language::DE, Language::EN, Language::FR]);
        // An operator's folder adds a language when every kind has all its parts.
        let dir = tempfile::tempdir().unwrap();
        let it = Language::new("it").unwrap();
        for kind in KINDS {
            for part in PARTS {
                let text = if part == "html" {
                    "<p>{{ lang }}</p>"
                } else {
                    "{{ lang }}"
                };
                std::fs::write(dir.path().join(format!("{kind}.it.{part}")), text).unwrap();
            }
        }
        let t = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(
            t.languages(),
            [Language::DE, Language::EN, Language::FR, it]
        );
        assert!(t.check_default_language(it).is_ok());
        assert_eq!(t.render_invite(it, &invite()).unwrap().subject, "it");
        // One part missing: Italian is not available, and cannot be the default.
        std::fs::remove_file(dir.path().join("invite.it.html")).unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(t.languages(), [Language::DE, Language::EN, Language::FR]);
        let e = t.check_default_language(it).unwrap_err().to_string();
        assert!(e.contains("available: de, en, fr"), "{e}");
    }

    #[test]
    fn template_file_names_name_their_language() {
        assert_eq!(template_language("invite.de.txt"), Some(Language::DE));
        assert_eq!(
            template_language("verification.it.subject.txt"),
            Language::new("it").ok()
        );
        assert_eq!(
            template_language("verification.fra.html"),
            Language::new("fra").ok()
        );
        for name in [
            "invite.DE.txt",
            "invite.de.pdf",
            "other.de.txt",
            "_valid_for.de.txt",
            "invite.d1.txt",
            "invite.deutsch.txt",
            "invite..txt",
            "invite",
        ] {
            assert_eq!(template_language(name), None, "{name}");
        }
    }

    #[test]
    fn german_mails_are_written_for_public_servants() {
        let t = Templates::load(None).unwrap();
        let v = t
            .render_verification(Language::DE, &verification())
            .unwrap();
        assert_eq!(v.subject, "Bestätigen Sie Ihre E-Mail-Adresse");
        assert!(v.text.contains(LINK));
        assert!(
            v.text
                .contains("Der Link und der Code sind 24\u{a0}Stunden lang gültig."),
            "{}",
            v.text
        );
        assert!(v.html.contains("lang=\"de\""));
        let cases = [
            (60, "1\u{a0}Stunde"),
            (90, "1\u{a0}Stunde und 30\u{a0}Minuten"),
            (1, "1\u{a0}Minute"),
            (45, "45\u{a0}Minuten"),
        ];
        for (minutes, words) in cases {
            let v = VerificationMail {
                valid_for: Duration::from_secs(minutes * 60),
                ..verification()
            };
            let text = t.render_verification(Language::DE, &v).unwrap().text;
            assert!(
                text.contains(&format!("sind {words} lang")),
                "{minutes}: {text}"
            );
        }
        let i = t.render_invite(Language::DE, &invite()).unwrap();
        assert_eq!(i.subject, "Jeanne Martin lädt Sie in „Budget 2026“ ein");
        assert!(i.text.contains(INVITE_LINK), "{}", i.text);
        assert!(i.text.contains("den Raum „Budget 2026“"), "{}", i.text);
        let space = InviteMail {
            room_type: Some("m.space".into()),
            room_name: None,
            web_client_location: None,
            ..invite()
        };
        let i = t.render_invite(Language::DE, &space).unwrap();
        assert_eq!(i.subject, "Jeanne Martin lädt Sie in einen Space ein");
        assert!(i.text.contains("registrieren Sie sich bitte"), "{}", i.text);
        assert!(!i.text.contains("/#/room/"));
    }

    #[test]
    fn the_invite_link_is_what_element_reads() {
        let t = Templates::load(None).unwrap();
        let v = InviteMail {
            room_name: Some("R&D: 100% «budget»".into()),
            sender_display_name: Some("Zoé + Éric".into()),
            room_avatar_url: Some("mxc://hs.example/abc".into()),
            room_type: Some("m.space".into()),
            ..invite()
        };
        let m = t.render_invite(Language::EN, &v).unwrap();
        let link = m
            .text
            .lines()
            .find(|l| l.starts_with("https://www.tchap.gouv.fr/#/room/"))
            .unwrap();
        // Element splits the fragment at its first `?` and reads the rest as URLSearchParams.
        let (_, query) = link.split_once('?').unwrap();
        let params: std::collections::HashMap<String, String> =
            reqwest::Url::parse(&format!("https://x.example/?{query}"))
                .unwrap()
                .query_pairs()
                .into_owned()
                .collect();
        assert_eq!(params["email"], "paul@interieur.gouv.fr");
        assert_eq!(params["room_name"], "R&D: 100% «budget»");
        assert_eq!(params["inviter_name"], "Zoé + Éric");
        assert_eq!(params["room_avatar_url"], "mxc://hs.example/abc");
        assert_eq!(params["room_type"], "m.space");
        assert_eq!(
            params["signurl"],
            "https://id.tchap.gouv.fr/_matrix/identity/api/v1/sign-ed25519?token=InviteTok3n&private_key=Priv-Key_0"
        );
        assert!(check_http_url(link).is_ok(), "{link}");
        // An unusable identity server URL is an error, not a broken link.
        let bad = InviteMail {
            identity_server_url: "javascript:alert(1)".into(),
            ..invite()
        };
        assert!(matches!(
            t.render_invite(Language::EN, &bad),
            Err(MailError::Link(_))
        ));
    }

    #[test]
    fn url_checks() {
        assert!(check_http_url("https://a.example/x?y=z&w=%20").is_ok());
        assert!(check_http_url("HTTP://a.example").is_ok());
        assert!(check_http_url("https://a.example/é").is_err());
        assert!(check_http_url("https:///path").is_err());
        assert!(check_http_url("https://a.example/<").is_err());
        assert!(check_http_url("https://a.example/\\").is_err());
        assert!(check_http_url("mailto:x@y").is_err());
        assert!(check_http_url("").is_err());
        assert!(check_http_url("https:").is_err());
    }

    #[test]
    fn clean_inline_collapses_and_trims() {
        assert_eq!(clean_inline("  a \n\t b  "), "a b");
        assert_eq!(clean_inline("\u{202E}abc\u{2066}"), "abc");
        assert_eq!(clean_inline("a\u{0}b"), "a b");
        assert_eq!(clean_inline(""), "");
    }
}
