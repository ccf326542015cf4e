//! Pages served to browsers: templates embedded from `templates/web/`, which an operator can
//! override from `web.templates_dir` (read once at start; a broken override stops the start,
//! naming its file). See `templates/web/README.md` for each page's variables.

use crate::templates::{describe_error, describe_origin};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior, context};

use crate::mail::Language;
use crate::templates::{FolderError, read_override_folder};

/// The embedded pages, by file name.
const EMBEDDED: &[(&str, &str)] = &[(
    "submit_token.html",
    include_str!("../templates/web/submit_token.html"),
)];

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

/// The languages the embedded pages are written in.
pub const PAGE_LANGUAGES: [Language; 2] = [Language::FR, Language::EN];

/// The loaded page templates.
pub struct WebTemplates {
    env: Environment<'static>,
    overridden: Vec<String>,
}

impl std::fmt::Debug for WebTemplates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebTemplates")
            .field("overridden", &self.overridden)
            .finish()
    }
}

impl WebTemplates {
    /// Loads the embedded pages, replaced by the files of the same name in `override_dir`, and
    /// renders each one with sample values.
    pub fn load(override_dir: Option<&Path>) -> Result<WebTemplates, WebError> {
        let mut sources: BTreeMap<String, (String, Option<PathBuf>)> = EMBEDDED
            .iter()
            .map(|(name, src)| (name.to_string(), (src.to_string(), None)))
            .collect();
        if let Some(dir) = override_dir {
            read_overrides(dir, &mut sources)?;
        }
        let mut env = Environment::new();
        env.set_debug(false);
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        let mut origins = BTreeMap::new();
        for (name, (source, origin)) in sources {
            let file = describe_origin(&name, origin.as_deref());
            env.add_template_owned(name.clone(), source)
                .map_err(|e| WebError::Template {
                    file: file.clone(),
                    reason: describe_error(&e),
                })?;
            origins.insert(name, file);
        }
        let overridden: Vec<String> = origins
            .iter()
            .filter(|(_, file)| !file.ends_with("(embedded default)"))
            .map(|(name, _)| name.clone())
            .collect();
        let templates = WebTemplates { env, overridden };
        for lang in PAGE_LANGUAGES {
            for page in SubmitTokenPage::ALL {
                if let Err(WebError::Render { template, reason }) =
                    templates.render_submit_token(lang, page, "id.example.org")
                {
                    let file = origins.get(&template).cloned().unwrap_or(template);
                    return Err(WebError::Template { file, reason });
                }
            }
        }
        if !templates.overridden.is_empty() {
            tracing::info!(templates = ?templates.overridden, "web page templates overridden by the operator");
        }
        Ok(templates)
    }

    /// The confirmation link's page.
    pub fn render_submit_token(
        &self,
        lang: Language,
        page: SubmitTokenPage,
        server_name: &str,
    ) -> Result<String, WebError> {
        let name = "submit_token.html";
        let render_error = |e: minijinja::Error| WebError::Render {
            template: e.name().unwrap_or(name).to_string(),
            reason: describe_error(&e),
        };
        self.env
            .get_template(name)
            .map_err(render_error)?
            .render(context! {
                lang => lang.code(),
                outcome => page.code(),
                server_name => server_name,
            })
            .map_err(render_error)
    }
}

/// Reads the operator's folder: known names replace the defaults, `_*.html` are partials,
/// anything else is ignored with a warning.
fn read_overrides(
    dir: &Path,
    sources: &mut BTreeMap<String, (String, Option<PathBuf>)>,
) -> Result<(), WebError> {
    let files = read_override_folder(dir, "web templates", |name| {
        sources.contains_key(name) || (name.starts_with('_') && name.ends_with(".html"))
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
mod tests {
    use super::*;

    #[test]
    fn every_outcome_renders_in_both_languages() {
        let t = WebTemplates::load(None).unwrap();
        let fr = t
            .render_submit_token(Language::FR, SubmitTokenPage::Success, "id.example")
            .unwrap();
        assert!(fr.contains("<html lang=\"fr\">"), "{fr}");
        assert!(fr.contains("Adresse confirmée"), "{fr}");
        let en = t
            .render_submit_token(Language::EN, SubmitTokenPage::Locked, "id.example")
            .unwrap();
        assert!(en.contains("<html lang=\"en\">"));
        assert!(en.contains("Link locked"));
        assert!(en.contains("Too many incorrect codes"));
        let mut seen = std::collections::BTreeSet::new();
        for page in SubmitTokenPage::ALL {
            let html = t
                .render_submit_token(Language::EN, page, "id.example")
                .unwrap();
            assert!(seen.insert(html), "{page:?} has its own text");
        }
    }

    #[test]
    fn values_are_escaped() {
        let t = WebTemplates::load(None).unwrap();
        let html = t
            .render_submit_token(Language::EN, SubmitTokenPage::Success, "<b>x</b>")
            .unwrap();
        assert!(html.contains("&lt;b&gt;x&lt;&#x2f;b&gt;"), "{html}");
        assert!(!html.contains("<b>x</b>"));
    }

    #[test]
    fn overrides_replace_pages_and_broken_ones_name_their_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("submit_token.html"),
            "{% include \"_frame.html\" %} {{ outcome }} {{ lang }}",
        )
        .unwrap();
        std::fs::write(dir.path().join("_frame.html"), "FRAME").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let t = WebTemplates::load(Some(dir.path())).unwrap();
        assert_eq!(
            t.render_submit_token(Language::FR, SubmitTokenPage::Expired, "x")
                .unwrap(),
            "FRAME expired fr"
        );

        let path = dir.path().join("submit_token.html");
        std::fs::write(&path, "{% if %}").unwrap();
        let e = WebTemplates::load(Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");

        std::fs::write(&path, "{{ nothing.here }}").unwrap();
        let e = WebTemplates::load(Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");

        let missing = dir.path().join("missing");
        assert!(matches!(
            WebTemplates::load(Some(&missing)),
            Err(WebError::TemplatesDir { .. })
        ));
    }
}
