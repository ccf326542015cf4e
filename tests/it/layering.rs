//! The crate's layering (README "Architecture"), read from the source: every `crate::…` path
//! names the top-level module it uses. Upper layers may use lower ones, never the reverse; no
//! two modules use each other; the pure leaves use nothing of the crate; only `store` names
//! diesel; the domain and everything below it never name actix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first. A module may use modules of its own layer (without a cycle) and of
/// the layers below.
const LAYERS: &[(&str, &[&str])] = &[
    ("command line", &["main", "cli"]),
    ("runtime", &["runtime"]),
    ("http", &["http", "web"]),
    (
        "domain services",
        &[
            "admin",
            "homeserver",
            "identity",
            "directory",
            "allowlist",
            "domain_requests",
        ],
    ),
    (
        "infrastructure",
        &["mail", "federation", "ldap", "store", "audit"],
    ),
    (
        "leaves and plumbing",
        &[
            "policy",
            "matrix",
            "config",
            "clock",
            "cache",
            "secret",
            "ratelimit",
            "telemetry",
            "templates",
        ],
    ),
];

/// Modules that use nothing else of the crate.
const PURE: &[&str] = &["policy", "matrix"];
/// The one module that may name diesel.
const DIESEL: &str = "store";
/// Modules that may name actix (the web framework).
const ACTIX: &[&str] = &["main", "cli", "runtime", "http", "web"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/identity/bindings.rs` → `identity`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The code of a file without comments and without `#[cfg(test)]` modules (tests may reach
/// anything).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut skipping_tests = false;
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            skipping_tests = true;
        }
        if skipping_tests {
            continue;
        }
        let code = line.split("//").next().unwrap_or_default();
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every `crate::name` in `code`, and the names in `use crate::{a, b::c}` groups.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if after.starts_with('{') {
            let group = &after[1..after.find('}').unwrap_or(after.len())];
            for item in group.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
        rest = after;
    }
    found
}

fn names_word(code: &str, word: &str) -> bool {
    code.match_indices(word).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric())
    })
}

struct Crate {
    /// module → modules it uses.
    uses: BTreeMap<String, BTreeSet<String>>,
    /// module → files that name diesel / actix.
    diesel: BTreeMap<String, Vec<String>>,
    actix: BTreeMap<String, Vec<String>>,
}

fn read_crate() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut diesel: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut actix: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if module == "lib" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let shown = file.strip_prefix(&src).unwrap().display().to_string();
        let entry = uses.entry(module.clone()).or_default();
        for used in crate_paths(&code) {
            if used != module {
                entry.insert(used);
            }
        }
        // `main.rs` is its own crate: it reaches the library as `annuaire::…`.
        if module == "main" {
            for (i, _) in code.match_indices("annuaire::") {
                let name: String = code[i + 10..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                entry.insert(name);
            }
        }
        if names_word(&code, "diesel") {
            diesel
                .entry(module.clone())
                .or_default()
                .push(shown.clone());
        }
        if names_word(&code, "actix_web") || names_word(&code, "actix") {
            actix.entry(module).or_default().push(shown);
        }
    }
    Crate {
        uses,
        diesel,
        actix,
    }
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

#[test]
fn every_module_has_a_layer() {
    let krate = read_crate();
    let unknown: Vec<&String> = krate
        .uses
        .keys()
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "modules without a layer (add them to LAYERS and to README \"Architecture\"): {unknown:?}"
    );
}

#[test]
fn nothing_uses_a_layer_above_it() {
    let krate = read_crate();
    let mut wrong = Vec::new();
    for (module, used) in &krate.uses {
        let Some(own) = layer_of(module) else {
            continue;
        };
        for other in used {
            if let Some(theirs) = layer_of(other)
                && theirs < own
            {
                wrong.push(format!(
                    "{module} ({}) uses {other} ({})",
                    LAYERS[own].0, LAYERS[theirs].0
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "upward uses:\n{}", wrong.join("\n"));
}

#[test]
fn no_two_modules_use_each_other() {
    let krate = read_crate();
    // A cycle of any length: walk from each module; reaching it again is a cycle.
    let mut cycles = BTreeSet::new();
    for start in krate.uses.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((module, path)) = stack.pop() {
            for next in krate.uses.get(&module).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(start.clone());
                    let mut key = cycle[..cycle.len() - 1].to_vec();
                    key.sort();
                    cycles.insert((key, cycle.join(" → ")));
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    let shown: Vec<String> = cycles.into_iter().map(|(_, c)| c).collect();
    assert!(shown.is_empty(), "module cycles:\n{}", shown.join("\n"));
}

#[test]
fn the_pure_leaves_use_nothing_of_the_crate() {
    let krate = read_crate();
    for module in PURE {
        let used = krate.uses.get(*module).cloned().unwrap_or_default();
        assert!(used.is_empty(), "{module} uses {used:?}");
    }
}

#[test]
fn only_the_store_names_diesel() {
    let krate = read_crate();
    let elsewhere: Vec<_> = krate
        .diesel
        .iter()
        .filter(|(m, _)| m.as_str() != DIESEL)
        .collect();
    assert!(elsewhere.is_empty(), "diesel outside store/: {elsewhere:?}");
}

#[test]
fn the_domain_and_below_never_name_actix() {
    let krate = read_crate();
    let wrong: Vec<_> = krate
        .actix
        .iter()
        .filter(|(m, _)| !ACTIX.contains(&m.as_str()))
        .collect();
    assert!(wrong.is_empty(), "actix outside the HTTP layer: {wrong:?}");
}

#[test]
fn the_reader_sees_uses() {
    // The checks above can only fail if the reader finds what it looks for.
    let paths = crate_paths(
        "use crate::store::{Db, DbConn};\nuse crate::{http, telemetry};\nlet x = crate::matrix::a();",
    );
    assert_eq!(
        paths,
        ["http", "matrix", "store", "telemetry"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let krate = read_crate();
    assert!(krate.uses["identity"].contains("store"));
    assert!(krate.uses["cli"].contains("runtime"));
    assert!(krate.diesel.contains_key("store"));
    assert!(krate.actix.contains_key("http"));
    assert!(names_word("use diesel::prelude", "diesel"));
    assert!(names_word("use diesel_migrations", "diesel"));
    assert!(!names_word("use rediesel", "diesel"));
}
