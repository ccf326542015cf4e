//! Operator template folders (`mail.templates_dir`, `web.templates_dir`): files that replace the
//! embedded templates of the same name, read once at start. Shared by the mail and the web pages.

use std::path::{Path, PathBuf};

/// One file of the folder that the caller wants.
#[derive(Debug)]
pub struct OverrideFile {
    /// Its file name (the template name).
    pub name: String,
    /// Its full path (error messages name it).
    pub path: PathBuf,
    /// Its text.
    pub source: String,
}

/// Why the folder could not be read.
#[derive(Debug)]
pub enum FolderError {
    /// The folder or a file cannot be read, or a name is not a regular file.
    Unreadable {
        /// The folder or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A wanted file is not UTF-8.
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
}

/// Reads the files of `dir` that `wanted` accepts (by file name); other files are ignored with
/// a warning naming `what` ("email templates"). Symlinks are followed, as operators deploy
/// templates through them.
pub fn read_override_folder(
    dir: &Path,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<OverrideFile>, FolderError> {
    let unreadable = |path: &Path, e: std::io::Error| FolderError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))? {
        let entry = entry.map_err(|e| unreadable(dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(file = %path.display(), folder = what, "ignored in the templates folder: name is not UTF-8");
            continue;
        };
        if !wanted(&name) {
            if !name.starts_with('.') {
                tracing::warn!(file = %path.display(), folder = what, "ignored in the templates folder: not a template annuaire uses");
            }
            continue;
        }
        let metadata = std::fs::metadata(&path).map_err(|e| unreadable(&path, e))?;
        if !metadata.is_file() {
            return Err(FolderError::Unreadable {
                path,
                reason: "not a regular file".into(),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| unreadable(&path, e))?;
        let Ok(source) = String::from_utf8(bytes) else {
            return Err(FolderError::NotUtf8 { path });
        };
        files.push(OverrideFile { name, path, source });
    }
    Ok(files)
}

/// How a template is named in error messages: the operator's file, or the embedded default.
pub fn describe_origin(name: &str, override_path: Option<&Path>) -> String {
    match override_path {
        None => format!("{name} (embedded default)"),
        Some(path) => path.display().to_string(),
    }
}

/// A template error's own message, its line, and its causes (an `{% include %}` wraps the real
/// one).
pub fn describe_error(e: &minijinja::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Escapes the characters that matter in HTML text and quoted attribute values (not `/`, unlike
/// minijinja's default: links stay readable and need no `|safe`).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// A minijinja formatter that escapes HTML with [`escape_html`] in `.html` templates (values
/// marked safe pass through, as do non-string values, formatted by minijinja).
pub fn html_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &minijinja::Value,
) -> Result<(), minijinja::Error> {
    if matches!(state.auto_escape(), minijinja::AutoEscape::Html)
        && !value.is_safe()
        && let Some(s) = value.as_str()
    {
        return out
            .write_str(&escape_html(s))
            .map_err(minijinja::Error::from);
    }
    minijinja::escape_formatter(out, state, value)
}
