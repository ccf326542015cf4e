//! The mails of a domain request ("my administration is not listed"): the link that confirms the
//! request, then the decision (accepted, or declined with the administrator's message).
//!
//! One kind, `domain_request`, in the same files as the other mails
//! (`templates/email/domain_request/domain_request.<lang>.{subject.txt,txt,html}`, sharing `_layout.html`),
//! which an operator overrides from `mail.templates_dir` in the same way. Kept apart from
//! [`super::Templates`] so that the two can be merged without touching each other's logic.
//!
//! Variables: `lang`, `stage` (`confirm`, `accepted` or `declined`), `name` (the requester's),
//! `domain`, `organisation` (as the requester typed it), `service_name`, `link` (`confirm`: the
//! confirmation link), `client_link` (`accepted`: where to register, or none), `message`
//! (`declined`: the administrator's words, or none), `subject` (the text and HTML parts).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior, Value, context};

use super::{Language, MailError, RenderedMail};
use crate::templates::{OverrideFile, describe_error, describe_origin, html_formatter};

/// The embedded templates, by file name.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "_layout.html",
        include_str!("../../templates/email/_layout.html"),
    ),
    (
        "domain_request.fr.subject.txt",
        include_str!("../../templates/email/domain_request/domain_request.fr.subject.txt"),
    ),
    (
        "domain_request.fr.txt",
        include_str!("../../templates/email/domain_request/domain_request.fr.txt"),
    ),
    (
        "domain_request.fr.html",
        include_str!("../../templates/email/domain_request/domain_request.fr.html"),
    ),
    (
        "domain_request.en.subject.txt",
        include_str!("../../templates/email/domain_request/domain_request.en.subject.txt"),
    ),
    (
        "domain_request.en.txt",
        include_str!("../../templates/email/domain_request/domain_request.en.txt"),
    ),
    (
        "domain_request.en.html",
        include_str!("../../templates/email/domain_request/domain_request.en.html"),
    ),
    (
        "domain_request.de.subject.txt",
        include_str!("../../templates/email/domain_request/domain_request.de.subject.txt"),
    ),
    (
        "domain_request.de.txt",
        include_str!("../../templates/email/domain_request/domain_request.de.txt"),
    ),
    (
        "domain_request.de.html",
        include_str!("../../templates/email/domain_request/domain_request.de.html"),
    ),
];

/// What a domain-request mail says.
#[derive(Clone, PartialEq, Eq)]
pub enum DomainRequestStage {
    /// "Confirm your request": the link that puts it in the administrators' queue.
    Confirm {
        /// The confirmation link (a plain http(s) URL).
        link: String,
    },
    /// The administration was added.
    Accepted {
        /// Where to register, if the service has a web client.
        client_link: Option<String>,
    },
    /// The request was declined.
    Declined {
        /// The administrator's message, if any.
        message: Option<String>,
    },
}

impl DomainRequestStage {
    /// `confirm`, `accepted` or `declined`.
    pub fn code(&self) -> &'static str {
        match self {
            DomainRequestStage::Confirm { .. } => "confirm",
            DomainRequestStage::Accepted { .. } => "accepted",
            DomainRequestStage::Declined { .. } => "declined",
        }
    }
}

/// The content of a domain-request mail.
#[derive(Clone)]
pub struct DomainRequestMail {
    /// What it says.
    pub stage: DomainRequestStage,
    /// The requester's name.
    pub name: String,
    /// The requested domain.
    pub domain: String,
    /// The administration, as the requester named it.
    pub organisation: String,
    /// The service's name.
    pub service_name: String,
}

// The link carries a token: debug output must not show it.
impl fmt::Debug for DomainRequestMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainRequestMail")
            .field("stage", &self.stage.code())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// The loaded domain-request templates.
pub struct DomainRequestTemplates {
    env: Environment<'static>,
    origins: BTreeMap<String, Option<std::path::PathBuf>>,
    languages: Vec<Language>,
}

impl fmt::Debug for DomainRequestTemplates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainRequestTemplates")
            .field("languages", &self.languages)
            .finish_non_exhaustive()
    }
}

impl DomainRequestTemplates {
    /// Loads the embedded templates, replaced by the operator's files of the same name (and
    /// partials `_*.html`, `_*.txt`) in `override_dir`; renders each language with sample
    /// values, so that a broken template stops the start naming its file.
    pub fn load(override_dir: Option<&Path>) -> Result<DomainRequestTemplates, MailError> {
        let mut sources: BTreeMap<String, (String, Option<std::path::PathBuf>)> = EMBEDDED
            .iter()
            .map(|(name, src)| (name.to_string(), (src.to_string(), None)))
            .collect();
        if let Some(dir) = override_dir {
            let files = read_quietly(dir)?;
            for f in files {
                sources.insert(f.name, (f.source, Some(f.path)));
            }
        }
        let mut env = Environment::new();
        env.set_debug(false);
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_formatter(html_formatter);
        let mut origins = BTreeMap::new();
        for (name, (source, origin)) in sources {
            env.add_template_owned(name.clone(), source)
                .map_err(|e| MailError::Template {
                    file: describe_origin(&name, origin.as_deref()),
                    reason: describe_error(&e),
                })?;
            origins.insert(name, origin);
        }
        let languages = available(origins.keys().map(String::as_str));
        let templates = DomainRequestTemplates {
            env,
            origins,
            languages,
        };
        templates.check_with_samples()?;
        Ok(templates)
    }

    /// The languages these mails exist in.
    pub fn languages(&self) -> &[Language] {
        &self.languages
    }

    /// Renders a mail in `lang` (or, if these mails do not exist in it, in `fallback`).
    pub fn render(
        &self,
        lang: Language,
        fallback: Language,
        mail: &DomainRequestMail,
    ) -> Result<RenderedMail, MailError> {
        let lang = if self.languages.contains(&lang) {
            lang
        } else if self.languages.contains(&fallback) {
            fallback
        } else {
            self.languages.first().copied().unwrap_or(Language::EN)
        };
        let (link, client_link, message) = match &mail.stage {
            DomainRequestStage::Confirm { link } => {
                check_link(link)?;
                (Some(link.clone()), None, None)
            }
            DomainRequestStage::Accepted { client_link } => {
                let client_link = client_link.clone().filter(|l| check_link(l).is_ok());
                (None, client_link, None)
            }
            DomainRequestStage::Declined { message } => (
                None,
                None,
                message
                    .as_deref()
                    .map(clean_text)
                    .filter(|m| !m.trim().is_empty()),
            ),
        };
        let ctx = context! {
            lang => lang.code(),
            stage => mail.stage.code(),
            name => clean_inline(&mail.name),
            domain => clean_inline(&mail.domain),
            organisation => clean_inline(&mail.organisation),
            service_name => clean_inline(&mail.service_name),
            link => link,
            client_link => client_link,
            message => message,
        };
        let subject =
            clean_inline(&self.render_one(&format!("domain_request.{lang}.subject.txt"), &ctx)?);
        let ctx = context! { subject => subject.as_str(), ..ctx };
        let mut text = self.render_one(&format!("domain_request.{lang}.txt"), &ctx)?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let mut html = self.render_one(&format!("domain_request.{lang}.html"), &ctx)?;
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

    fn render_one(&self, name: &str, ctx: &Value) -> Result<String, MailError> {
        let render_error = |e: minijinja::Error| MailError::Render {
            template: e.name().unwrap_or(name).to_string(),
            reason: describe_error(&e),
        };
        self.env
            .get_template(name)
            .map_err(render_error)?
            .render(ctx)
            .map_err(render_error)
    }

    fn check_with_samples(&self) -> Result<(), MailError> {
        let base = DomainRequestMail {
            stage: DomainRequestStage::Confirm {
                link: "https://id.example.org/request/confirm?id=1&token=2".into(),
            },
            name: "Jeanne Martin".into(),
            domain: "mairie-exemple.fr".into(),
            organisation: "Mairie d'Exemple".into(),
            service_name: "annuaire".into(),
        };
        let stages = [
            base.stage.clone(),
            DomainRequestStage::Accepted {
                client_link: Some("https://app.example.org/".into()),
            },
            DomainRequestStage::Accepted { client_link: None },
            DomainRequestStage::Declined {
                message: Some("Merci".into()),
            },
            DomainRequestStage::Declined { message: None },
        ];
        for lang in self.languages.iter().copied() {
            for stage in &stages {
                let mail = DomainRequestMail {
                    stage: stage.clone(),
                    ..base.clone()
                };
                if let Err(MailError::Render { template, reason }) = self.render(lang, lang, &mail)
                {
                    let file = match self.origins.get(&template) {
                        Some(origin) => describe_origin(&template, origin.as_deref()),
                        None => template,
                    };
                    return Err(MailError::Template { file, reason });
                }
            }
        }
        Ok(())
    }
}

/// The operator's files that concern these mails (`domain_request.*` and the partials). Read
/// here rather than through [`crate::templates::read_override_folder`], which would warn about
/// every other mail's file as "not used".
fn read_quietly(dir: &Path) -> Result<Vec<OverrideFile>, MailError> {
    let unreadable = |path: &Path, e: std::io::Error| MailError::TemplatesDir {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))? {
        let entry = entry.map_err(|e| unreadable(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let wanted = name.starts_with("domain_request.")
            || (name.starts_with('_') && (name.ends_with(".html") || name.ends_with(".txt")));
        if !wanted {
            continue;
        }
        let path = entry.path();
        let metadata = std::fs::metadata(&path).map_err(|e| unreadable(&path, e))?;
        if !metadata.is_file() {
            return Err(MailError::TemplatesDir {
                path,
                reason: "not a regular file".into(),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| unreadable(&path, e))?;
        let Ok(source) = String::from_utf8(bytes) else {
            return Err(MailError::Template {
                file: path.display().to_string(),
                reason: "not valid UTF-8".into(),
            });
        };
        files.push(OverrideFile { name, path, source });
    }
    Ok(files)
}

/// The languages whose three files exist.
fn available<'a>(names: impl Iterator<Item = &'a str>) -> Vec<Language> {
    let names: Vec<&str> = names.collect();
    let mut languages: Vec<Language> = names
        .iter()
        .filter_map(|n| {
            n.strip_prefix("domain_request.")?
                .strip_suffix(".subject.txt")
        })
        .filter_map(|code| Language::new(code).ok())
        .filter(|lang| {
            ["txt", "html"]
                .iter()
                .all(|part| names.contains(&format!("domain_request.{lang}.{part}").as_str()))
        })
        .collect();
    languages.sort();
    languages.dedup();
    languages
}

fn check_link(url: &str) -> Result<(), MailError> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"'<>\\^`{|}".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(MailError::Link("not a plain http(s) URL"))
    }
}

/// One line: control characters become spaces, runs of whitespace collapse.
fn clean_inline(s: &str) -> String {
    s.split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Several lines: line breaks kept, other control characters dropped.
fn clean_text(s: &str) -> String {
    s.replace("\r\n", "\n")
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(stage: DomainRequestStage) -> DomainRequestMail {
        DomainRequestMail {
            stage,
            name: "Jeanne <Martin>".into(),
            domain: "mairie.example".into(),
            organisation: "Mairie\nd'Exemple".into(),
            service_name: "Tchap".into(),
        }
    }

    #[test]
    fn every_stage_renders_in_every_language_and_escapes() {
        let t = DomainRequestTemplates::load(None).unwrap();
        assert_eq!(t.languages(), &[Language::DE, Language::EN, Language::FR]);
        let confirm = DomainRequestStage::Confirm {
            link: "https://id.example/request/confirm?id=a&token=b".into(),
        };
        for lang in [Language::FR, Language::EN, Language::DE] {
            let m = t
                .render(lang, Language::FR, &mail(confirm.clone()))
                .unwrap();
            assert!(
                m.text
                    .contains("https://id.example/request/confirm?id=a&token=b")
            );
            assert!(
                m.html
                    .contains("https://id.example/request/confirm?id=a&amp;token=b")
            );
            assert!(m.html.contains("Jeanne &lt;Martin&gt;"), "{}", m.html);
            assert!(!m.subject.contains('\n'));
            let d = t
                .render(
                    lang,
                    Language::FR,
                    &mail(DomainRequestStage::Declined {
                        message: Some("<b>non</b>".into()),
                    }),
                )
                .unwrap();
            assert!(d.html.contains("&lt;b&gt;non&lt;/b&gt;"), "{}", d.html);
            assert!(d.text.contains("<b>non</b>"));
        }
        let de = t
            .render(
                Language::DE,
                Language::FR,
                &mail(DomainRequestStage::Accepted { client_link: None }),
            )
            .unwrap();
        assert_eq!(de.language, Language::DE);
        let it = t
            .render(Language::new("it").unwrap(), Language::FR, &mail(confirm))
            .unwrap();
        assert_eq!(it.language, Language::FR, "falls back");
    }

    #[test]
    fn overrides_replace_files_and_broken_ones_name_their_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("domain_request.en.subject.txt"),
            "Hello {{ name }}",
        )
        .unwrap();
        std::fs::write(dir.path().join("verification.en.txt"), "not ours").unwrap();
        let t = DomainRequestTemplates::load(Some(dir.path())).unwrap();
        let m = t
            .render(
                Language::EN,
                Language::EN,
                &mail(DomainRequestStage::Accepted { client_link: None }),
            )
            .unwrap();
        assert_eq!(m.subject, "Hello Jeanne <Martin>");
        let broken = dir.path().join("domain_request.en.txt");
        std::fs::write(&broken, "{{ nothing.here }}").unwrap();
        let e = DomainRequestTemplates::load(Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&broken.display().to_string()), "{e}");
    }
}
