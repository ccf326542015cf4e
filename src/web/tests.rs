use super::*;

#[test]
fn every_page_renders_in_every_language() {
    let t = WebTemplates::load(None).unwrap();
    assert_eq!(t.languages(), &[Language::DE, Language::EN, Language::FR]);
    for page in PAGES {
        assert!(
            samples::all().iter().any(|(p, _)| p == page),
            "{page} has no sample"
        );
    }
    for lang in t.languages().iter().copied() {
        for (page, data) in samples::all() {
            let html = t
                .render(
                    page,
                    &samples::chrome(lang, page.starts_with("console_")),
                    &data,
                )
                .unwrap_or_else(|e| panic!("{page} in {lang}: {e}"));
            assert!(html.contains(&format!("<html lang=\"{lang}\">")), "{page}");
            assert!(!html.contains("<script>"), "no inline script in {page}");
            assert!(!html.contains(" style="), "no inline style in {page}");
        }
    }
}

#[test]
fn submit_token_outcomes_have_their_own_words_in_each_language() {
    let t = WebTemplates::load(None).unwrap();
    let render = |lang, page| {
        t.render_submit_token(&samples::chrome(lang, false), page, "id.example")
            .unwrap()
    };
    assert!(render(Language::FR, SubmitTokenPage::Success).contains("Adresse confirmée"));
    assert!(render(Language::EN, SubmitTokenPage::Locked).contains("Link locked"));
    assert!(render(Language::DE, SubmitTokenPage::Expired).contains("Link abgelaufen"));
    let mut seen = std::collections::BTreeSet::new();
    for page in SubmitTokenPage::ALL {
        assert!(seen.insert(render(Language::DE, page)), "{page:?}");
    }
}

#[test]
fn values_are_escaped() {
    let t = WebTemplates::load(None).unwrap();
    let html = t
        .render_submit_token(
            &samples::chrome(Language::EN, false),
            SubmitTokenPage::Success,
            "<b>x</b>",
        )
        .unwrap();
    assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"), "{html}");
    assert!(!html.contains("<b>x</b>"));
}

#[test]
fn overrides_replace_pages_add_languages_and_broken_ones_name_their_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("submit_token.html"),
        "{% include \"_frame.html\" %} {{ outcome }} {{ lang }}",
    )
    .unwrap();
    std::fs::write(dir.path().join("_frame.html"), "FRAME").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    // A new language: every key of the French strings, in Italian (here: copied).
    std::fs::write(
        dir.path().join("strings.it.toml"),
        include_str!("../../templates/web/strings.fr.toml").replace("Français", "Italiano"),
    )
    .unwrap();
    let t = WebTemplates::load(Some(dir.path())).unwrap();
    assert!(t.languages().contains(&Language::new("it").unwrap()));
    assert_eq!(t.strings().name(Language::new("it").unwrap()), "Italiano");
    assert_eq!(
        t.render_submit_token(
            &samples::chrome(Language::FR, false),
            SubmitTokenPage::Expired,
            "x"
        )
        .unwrap(),
        "FRAME expired fr"
    );

    std::fs::write(
        dir.path().join("strings.it.toml"),
        "[meta]\nname = \"Italiano\"\n",
    )
    .unwrap();
    let e = WebTemplates::load(Some(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("strings.it.toml") && e.contains("missing"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("strings.it.toml")).unwrap();

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

#[test]
fn assets_carry_a_version() {
    let t = WebTemplates::load(None).unwrap();
    let css = t.asset("annuaire.css").unwrap();
    assert_eq!(css.version.len(), 12);
    assert!(css.content_type.starts_with("text/css"));
    assert!(t.asset("nothing.css").is_none());
}

/// Every `t.x.y` a template prints exists in the French strings (the others are checked
/// against them at load).
#[test]
fn templates_use_only_existing_strings() {
    let strings: toml::Table =
        toml::from_str(include_str!("../../templates/web/strings.fr.toml")).unwrap();
    for (name, source) in EMBEDDED.iter().filter(|(n, _)| n.ends_with(".html")) {
        let mut rest = *source;
        while let Some(i) = rest.find("t.") {
            let before = rest[..i].chars().next_back();
            rest = &rest[i + 2..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
                continue;
            }
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            let mut node = toml::Value::Table(strings.clone());
            for part in path.split('.').filter(|p| !p.is_empty()) {
                match node.get(part) {
                    Some(next) => node = next.clone(),
                    None => panic!("{name}: t.{path} is not in strings.fr.toml"),
                }
            }
        }
    }
}
