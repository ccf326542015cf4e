//! Pages served to browsers: the agents' pages (`/`, the domain request form, the confirmation
//! link's page) and the administrators' console. Templates are embedded from `templates/web/`;
//! an operator can override any of them, and add languages, from `web.templates_dir` (read once
//! at start; a broken override stops the start, naming its file). See `templates/web/README.md`.
//!
//! A language is available when its strings file `strings.<lang>.toml` exists (embedded: `fr`,
//! `en`, `de`; or in the operator's folder) and has every key the French one has. Pages are
//! chosen among them from `?lang=`, the `annuaire_lang` cookie the language switch sets, then
//! `Accept-Language`.

// Input from strangers passes through here: no index may panic.
#![deny(clippy::indexing_slicing)]

pub mod chart;
mod filters;
pub mod i18n;
mod samples;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior, Value, context};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Language;
use crate::templates::{
    FolderError, describe_error, describe_origin, html_formatter, read_override_folder,
};
pub use filters::{encode_query_value, format_datetime};
pub use i18n::Strings;

/// The embedded templates, by file name.
const EMBEDDED: &[(&str, &str)] = &[
    ("_base.html", include_str!("../../templates/web/_base.html")),
    (
        "_console.html",
        include_str!("../../templates/web/_console.html"),
    ),
    (
        "_forms.html",
        include_str!("../../templates/web/_forms.html"),
    ),
    ("home.html", include_str!("../../templates/web/home.html")),
    (
        "request.html",
        include_str!("../../templates/web/request.html"),
    ),
    (
        "request_done.html",
        include_str!("../../templates/web/request_done.html"),
    ),
    (
        "submit_token.html",
        include_str!("../../templates/web/submit_token.html"),
    ),
    (
        "console_login.html",
        include_str!("../../templates/web/console_login.html"),
    ),
    (
        "console_dashboard.html",
        include_str!("../../templates/web/console_dashboard.html"),
    ),
    (
        "console_rules.html",
        include_str!("../../templates/web/console_rules.html"),
    ),
    (
        "console_rule.html",
        include_str!("../../templates/web/console_rule.html"),
    ),
    (
        "console_rule_form.html",
        include_str!("../../templates/web/console_rule_form.html"),
    ),
    (
        "console_import.html",
        include_str!("../../templates/web/console_import.html"),
    ),
    (
        "console_export.html",
        include_str!("../../templates/web/console_export.html"),
    ),
    (
        "console_explain.html",
        include_str!("../../templates/web/console_explain.html"),
    ),
    (
        "console_audit.html",
        include_str!("../../templates/web/console_audit.html"),
    ),
    (
        "console_directory.html",
        include_str!("../../templates/web/console_directory.html"),
    ),
    (
        "console_entry.html",
        include_str!("../../templates/web/console_entry.html"),
    ),
    (
        "console_erase.html",
        include_str!("../../templates/web/console_erase.html"),
    ),
    (
        "console_accounts.html",
        include_str!("../../templates/web/console_accounts.html"),
    ),
    (
        "console_homeservers.html",
        include_str!("../../templates/web/console_homeservers.html"),
    ),
    (
        "console_requests.html",
        include_str!("../../templates/web/console_requests.html"),
    ),
    (
        "console_request_domain.html",
        include_str!("../../templates/web/console_request_domain.html"),
    ),
    (
        "console_error.html",
        include_str!("../../templates/web/console_error.html"),
    ),
    (
        "strings.fr.toml",
        include_str!("../../templates/web/strings.fr.toml"),
    ),
    (
        "strings.en.toml",
        include_str!("../../templates/web/strings.en.toml"),
    ),
    (
        "strings.de.toml",
        include_str!("../../templates/web/strings.de.toml"),
    ),
    (
        "annuaire.css",
        include_str!("../../templates/web/annuaire.css"),
    ),
    (
        "annuaire.js",
        include_str!("../../templates/web/annuaire.js"),
    ),
];

/// The static files (served as they are), with their content type.
const ASSETS: &[(&str, &str)] = &[
    ("annuaire.css", "text/css; charset=utf-8"),
    ("annuaire.js", "text/javascript; charset=utf-8"),
];

/// The pages, by template name (what [`WebTemplates::render`] accepts).
pub const PAGES: &[&str] = &[
    "home.html",
    "request.html",
    "request_done.html",
    "submit_token.html",
    "console_login.html",
    "console_dashboard.html",
    "console_rules.html",
    "console_rule.html",
    "console_rule_form.html",
    "console_import.html",
    "console_export.html",
    "console_explain.html",
    "console_audit.html",
    "console_directory.html",
    "console_entry.html",
    "console_erase.html",
    "console_accounts.html",
    "console_homeservers.html",
    "console_requests.html",
    "console_request_domain.html",
    "console_error.html",
];

/// Why the page templates could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// A template failed to parse or to render with sample values.
    #[error("web page template {file}: {reason}")]
    Template {
        /// The file: its name for embedded defaults, its full path for overrides.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The override folder or one of its files cannot be read.
    #[error("web templates folder {}: {reason}", path.display())]
    TemplatesDir {
        /// The folder or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Rendering failed at run time.
    #[error("rendering web page {template} failed: {reason}")]
    Render {
        /// The page.
        template: String,
        /// The error.
        reason: String,
    },
}

/// What the confirmation link's page says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitTokenPage {
    /// The address is confirmed.
    Success,
    /// The token does not match.
    TokenIncorrect,
    /// Too many wrong tokens.
    Locked,
    /// The token or session expired.
    Expired,
    /// No such session.
    NoSession,
    /// The link lacks or garbles a parameter.
    Invalid,
    /// The server failed.
    Error,
}

impl SubmitTokenPage {
    /// Every outcome (sample rendering at load).
    pub const ALL: [SubmitTokenPage; 7] = [
        SubmitTokenPage::Success,
        SubmitTokenPage::TokenIncorrect,
        SubmitTokenPage::Locked,
        SubmitTokenPage::Expired,
        SubmitTokenPage::NoSession,
        SubmitTokenPage::Invalid,
        SubmitTokenPage::Error,
    ];

    /// The value of `outcome` in the template.
    pub fn code(self) -> &'static str {
        match self {
            SubmitTokenPage::Success => "success",
            SubmitTokenPage::TokenIncorrect => "token_incorrect",
            SubmitTokenPage::Locked => "locked",
            SubmitTokenPage::Expired => "expired",
            SubmitTokenPage::NoSession => "no_session",
            SubmitTokenPage::Invalid => "invalid",
            SubmitTokenPage::Error => "error",
        }
    }
}

/// A static file.
#[derive(Debug, Clone)]
pub struct Asset {
    /// Its bytes.
    pub body: String,
    /// Its content type.
    pub content_type: &'static str,
    /// A short hash of its content (the `?v=` of its links, so that a new version is fetched).
    pub version: String,
}

/// One entry of the language switch.
#[derive(Debug, Clone, Serialize)]
pub struct LanguageLink {
    /// The code (`fr`).
    pub code: String,
    /// The language's own name (`Français`).
    pub name: String,
    /// This page in that language.
    pub href: String,
    /// Whether it is the page's language.
    pub current: bool,
}

/// What every page shows around its content.
#[derive(Debug, Clone, Serialize)]
pub struct Chrome {
    /// The page's language.
    pub lang: String,
    /// The service's name (`web.service_name`).
    pub service_name: String,
    /// Where the static files are (`/assets` or `/_annuaire/console/assets`).
    pub assets: String,
    /// The language switch.
    pub languages: Vec<LanguageLink>,
    /// The form token (console, and the agents' forms).
    pub csrf: String,
    /// The logged-in administrator, on console pages.
    pub user: Option<ChromeUser>,
    /// The console section the page belongs to (`rules`, `audit`…), for the navigation.
    pub section: String,
}

/// The administrator a console page is shown to.
#[derive(Debug, Clone, Serialize)]
pub struct ChromeUser {
    /// Their account.
    pub username: String,
    /// `viewer` or `editor`.
    pub role: String,
    /// Whether they may change things (editing controls are shown).
    pub editor: bool,
}

/// The loaded page templates, strings and static files.
pub struct WebTemplates {
    env: Environment<'static>,
    strings: Strings,
    assets: BTreeMap<String, Asset>,
    overridden: Vec<String>,
}

impl std::fmt::Debug for WebTemplates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebTemplates")
            .field("languages", &self.strings.languages())
            .field("overridden", &self.overridden)
            .finish()
    }
}

impl WebTemplates {
    /// Loads the embedded pages, strings and static files, replaced by the files of the same
    /// name in `override_dir` (plus its `strings.<lang>.toml` languages and `_*.html`
    /// partials), and renders every page in every language with sample values.
    pub fn load(override_dir: Option<&Path>) -> Result<WebTemplates, WebError> {
        let mut sources: BTreeMap<String, (String, Option<PathBuf>)> = EMBEDDED
            .iter()
            .map(|(name, src)| (name.to_string(), (src.to_string(), None)))
            .collect();
        if let Some(dir) = override_dir {
            read_overrides(dir, &mut sources)?;
        }
        let overridden: Vec<String> = sources
            .iter()
            .filter(|(_, (_, origin))| origin.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        let origin_of = |name: &str| -> String {
            describe_origin(name, sources.get(name).and_then(|(_, o)| o.as_deref()))
        };
        let strings = Strings::load(
            sources
                .iter()
                .filter(|(name, _)| name.starts_with("strings.") && name.ends_with(".toml"))
                .map(|(name, (text, _))| (name.as_str(), text.as_str())),
        )
        .map_err(|(file, reason)| WebError::Template {
            file: origin_of(&file),
            reason,
        })?;
        let mut assets = BTreeMap::new();
        for (name, content_type) in ASSETS {
            if let Some((body, _)) = sources.get(*name) {
                let digest = Sha256::digest(body.as_bytes());
                let version: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
                assets.insert(
                    (*name).to_owned(),
                    Asset {
                        body: body.clone(),
                        content_type,
                        version,
                    },
                );
            }
        }
        let mut env = Environment::new();
        env.set_debug(false);
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_formatter(html_formatter);
        filters::register(&mut env);
        for (name, (source, origin)) in &sources {
            if !name.ends_with(".html") {
                continue;
            }
            env.add_template_owned(name.clone(), source.clone())
                .map_err(|e| WebError::Template {
                    file: describe_origin(name, origin.as_deref()),
                    reason: describe_error(&e),
                })?;
        }
        let templates = WebTemplates {
            env,
            strings,
            assets,
            overridden,
        };
        templates.check_with_samples(&origin_of)?;
        if !templates.overridden.is_empty() {
            tracing::info!(templates = ?templates.overridden, "web page templates overridden by the operator");
        }
        Ok(templates)
    }

    fn check_with_samples(&self, origin_of: &dyn Fn(&str) -> String) -> Result<(), WebError> {
        for lang in self.strings.languages().iter().copied() {
            for (page, data) in samples::all() {
                let chrome = samples::chrome(lang, page.starts_with("console_"));
                if let Err(WebError::Render { template, reason }) =
                    self.render(page, &chrome, &data)
                {
                    return Err(WebError::Template {
                        file: origin_of(&template),
                        reason: format!("{reason} (language {lang})"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The languages pages are available in.
    pub fn languages(&self) -> &[Language] {
        self.strings.languages()
    }

    /// The strings of the pages (the language names for the switch).
    pub fn strings(&self) -> &Strings {
        &self.strings
    }

    /// A static file by name.
    pub fn asset(&self, name: &str) -> Option<&Asset> {
        self.assets.get(name)
    }

    /// Renders `page` with the chrome and the page's own values (`data`, a serialisable
    /// struct or map whose fields become top-level variables).
    pub fn render(
        &self,
        page: &str,
        chrome: &Chrome,
        data: &impl Serialize,
    ) -> Result<String, WebError> {
        let render_error = |e: minijinja::Error| WebError::Render {
            template: e.name().unwrap_or(page).to_string(),
            reason: describe_error(&e),
        };
        let lang = Language::new(&chrome.lang).unwrap_or(Language::FR);
        let strings = self.strings.get(lang).unwrap_or_default();
        let versions: BTreeMap<String, String> = self
            .assets
            .iter()
            .map(|(name, asset)| (name.clone(), asset.version.clone()))
            .collect();
        let ctx = minijinja::value::merge_maps([
            context! { t => strings, versions => versions },
            Value::from(minijinja::value::Serde(chrome)),
            Value::from(minijinja::value::Serde(data)),
        ]);
        self.env
            .get_template(page)
            .map_err(render_error)?
            .render(ctx)
            .map_err(render_error)
    }

    /// The confirmation link's page (see `templates/web/submit_token.html`).
    pub fn render_submit_token(
        &self,
        chrome: &Chrome,
        page: SubmitTokenPage,
        server_name: &str,
    ) -> Result<String, WebError> {
        self.render(
            "submit_token.html",
            chrome,
            &context! { outcome => page.code(), server_name => server_name },
        )
    }
}

/// Reads the operator's folder: known names replace the defaults, `strings.<lang>.toml` add or
/// replace a language, `_*.html` are partials; anything else is ignored with a warning.
fn read_overrides(
    dir: &Path,
    sources: &mut BTreeMap<String, (String, Option<PathBuf>)>,
) -> Result<(), WebError> {
    let files = read_override_folder(dir, "web templates", |name| {
        sources.contains_key(name)
            || (name.starts_with('_') && name.ends_with(".html"))
            || (name.starts_with("strings.") && name.ends_with(".toml"))
    })
    .map_err(|e| match e {
        FolderError::Unreadable { path, reason } => WebError::TemplatesDir { path, reason },
        FolderError::NotUtf8 { path } => WebError::Template {
            file: path.display().to_string(),
            reason: "not valid UTF-8".into(),
        },
    })?;
    for f in files {
        sources.insert(f.name, (f.source, Some(f.path)));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
