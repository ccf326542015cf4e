"""annuaire's pages in a real headless Chromium: the administrators' console and the agents'
pages, each test keeping a screenshot under target/browser-screenshots/ and running axe-core on
the pages it visits (no serious or critical violation)."""

import re
import time

from conftest import (
    BASE,
    EDITOR,
    EXPIRY_BASE,
    VIEWER,
    axe,
    internal_info,
    login,
    shot,
    wait_for_mail,
)


def test_log_in_and_add_a_domain_rule_changes_internal_info(page):
    assert internal_info("marie@culture.gouv.example")["decision"] == "denied"
    page.goto(f"{BASE}/_annuaire/console/")
    assert "/_annuaire/console/login" in page.url
    axe(page)
    login(page)
    page.goto(f"{BASE}/_annuaire/console/")
    axe(page)
    assert page.locator("svg.chart, p:has-text('Aucune tentative')").count() >= 1
    page.click("nav.sections a[href='/_annuaire/console/rules']")
    axe(page)
    page.click("a.button[href='/_annuaire/console/rules/new']")
    axe(page)
    # The importer's message beside the field first: no homeserver.
    page.select_option("#kind", "domain")
    page.fill("#name", "culture.gouv.example")
    page.click("form.card button[type=submit]")
    error = page.locator("#homeserver-error")
    assert "homeserver" in error.inner_text()
    assert page.get_attribute("#homeserver", "aria-invalid") == "true"
    axe(page)
    shot(page, "rule_form_with_error")
    page.check("#subdomains")
    page.fill("#label", "Culture")
    page.fill("#homeserver", "agent.culture.tchap.example")
    page.click("form.card button[type=submit]")
    page.wait_for_url(re.compile(r".*/rules/r[0-9a-f]+\?done=created"))
    assert "La règle est créée" in page.content()
    axe(page)
    # Every instance follows within policy.reload_interval; this one at once.
    deadline = time.time() + 10
    while (
        internal_info("marie@culture.gouv.example").get("hs")
        != "agent.culture.tchap.example"
    ):
        assert time.time() < deadline, internal_info("marie@culture.gouv.example")
        time.sleep(0.2)


def test_import_a_file_with_its_diff_before_confirming(page):
    login(page)
    page.goto(f"{BASE}/_annuaire/console/rules/import")
    axe(page)
    page.fill(
        "#toml",
        '[organisation]\nlabel = "Agriculture"\nhomeserver = "agent.agriculture.tchap.example"\n\n'
        '[[domain]]\nname = "agriculture.gouv.example"\nsubdomains = true\n\n'
        '[[address]]\nemail = "consultant@partenaire.example"\n',
    )
    page.click("button:has-text('Voir les changements')")
    table = page.locator("table:has(caption:has-text('ajout'))")
    assert "agriculture.gouv.example" in table.inner_text()
    assert "consultant@partenaire.example" in table.inner_text()
    assert (
        internal_info("paul@agriculture.gouv.example")["decision"] == "denied"
    ), "dry run only"
    axe(page)
    shot(page, "import_diff")
    page.click("button:has-text('Appliquer ces changements')")
    assert "Import effectué : 2 règle(s) ajoutée(s)" in page.content()
    axe(page)
    deadline = time.time() + 10
    while internal_info("paul@agriculture.gouv.example")["decision"] != "allowed":
        assert time.time() < deadline
        time.sleep(0.2)


def test_explain_an_address(page):
    login(page)
    page.goto(f"{BASE}/_annuaire/console/explain")
    page.fill("#address", "jean@webmail.finances.gouv.example")
    page.press("#address", "Enter")
    page.wait_for_selector("#decision-title")
    assert "refusée" in page.locator("section:has(#decision-title)").inner_text()
    winner = page.locator("tr.winner")
    assert winner.count() == 1
    assert "webmail.finances.gouv.example" in winner.inner_text()
    assert (
        page.locator("section:has(#considered-title) tbody tr").count() >= 2
    ), "the rules it beat"
    axe(page)


def test_read_the_audit_log(page):
    login(page)
    page.goto(f"{BASE}/_annuaire/console/audit")
    axe(page)
    page.select_option("#action", "rule.file_import")
    page.click("form.filters button[type=submit]")
    rows = page.locator("table tbody tr")
    assert rows.count() >= 1
    assert "rule.file_import" in rows.first.inner_text()
    rows.first.locator("summary").click()
    assert "finances.gouv.example" in page.content() or "gouv.example" in page.content()
    axe(page)


def test_hide_a_directory_entry(page):
    login(page)
    page.goto(f"{BASE}/_annuaire/console/directory")
    axe(page)
    first = page.locator("table tbody tr a").first
    name = first.inner_text()
    first.click()
    page.wait_for_selector("h1")
    assert page.locator("h1").inner_text() == name
    axe(page)
    page.click("button:has-text('Masquer')")
    assert "L’entrée est masquée." in page.content()
    assert page.locator(".tag.hidden").count() == 1
    axe(page)
    shot(page, "directory_entry_hidden")
    page.click("button:has-text('Rendre visible')")
    assert "de nouveau visible" in page.content()


def test_a_viewer_cannot_edit(page):
    login(page, VIEWER)
    page.goto(f"{BASE}/_annuaire/console/rules")
    assert page.locator("a[href='/_annuaire/console/rules/new']").count() == 0
    page.goto(f"{BASE}/_annuaire/console/accounts")
    assert page.locator("#new_password").count() == 0
    axe(page)
    # The server refuses anyway: a form posted with the session's own token (built in the
    # page: the CSP forbids fetch).
    csrf = page.get_attribute("input[name=csrf]", "value")
    with page.expect_navigation() as navigation:
        page.evaluate(
            """(csrf) => {
                const f = document.createElement('form');
                f.method = 'post';
                f.action = '/_annuaire/console/rules/new';
                const fields = {csrf, kind: 'domain', name: 'viewer.example',
                    homeserver: 'agent.finances.tchap.example'};
                for (const [k, v] of Object.entries(fields)) {
                    const i = document.createElement('input');
                    i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i);
                }
                document.body.appendChild(f);
                f.submit();
            }""",
            csrf,
        )
    assert navigation.value.status == 403
    assert "Action non permise" in page.content()
    page.goto(f"{BASE}/_annuaire/console/rules/new")
    assert "Action non permise" in page.content()
    axe(page)


def test_a_form_without_its_csrf_token_is_refused(page):
    login(page)
    page.goto(f"{BASE}/_annuaire/console/rules/new")
    page.evaluate(
        "document.querySelector('form.card input[name=csrf]').value = 'forged'"
    )
    page.fill("#name", "forged.example")
    page.fill("#homeserver", "agent.finances.tchap.example")
    page.click("form.card button[type=submit]")
    assert "Formulaire refusé" in page.content()
    axe(page)
    page.goto(f"{BASE}/_annuaire/console/rules?domain=forged.example")
    assert "Aucune règle ne correspond" in page.content()


def test_the_session_expires_after_the_idle_timeout(page):
    # A second instance of the same service whose admin.console_idle_timeout is 3 seconds.
    login(page, EDITOR, base=EXPIRY_BASE)
    page.goto(f"{EXPIRY_BASE}/_annuaire/console/rules")
    assert "Connecté" in page.content()
    time.sleep(4.5)
    page.goto(f"{EXPIRY_BASE}/_annuaire/console/rules")
    assert "/_annuaire/console/login" in page.url
    assert "Votre session a expiré" in page.content()
    axe(page)


def test_which_homeserver_is_mine(page):
    page.goto(f"{BASE}/")
    axe(page)
    page.fill("#address", "Jean.Dupont@Finances.Gouv.Example")
    page.click("button:has-text('Vérifier')")
    answer = page.locator("#answer").inner_text()
    assert "public.finances.tchap.example" in answer, answer
    assert "Organisation : Finances" in answer
    axe(page)
    shot(page, "home_answer_fr")
    page.click("nav.langs a[hreflang=de]")
    assert page.get_attribute("html", "lang") == "de"
    page.fill("#address", "someone@gmail.com")
    page.click("button:has-text('Prüfen')")
    assert "öffentlicher E-Mail-Anbieter" in page.content(), page.content()
    axe(page)
    shot(page, "home_answer_de")
    # The validation page in its new look.
    page.goto(f"{BASE}/_matrix/identity/v2/validate/email/submitToken?sid=x")
    assert "Unvollständiger Link" in page.content()
    axe(page)


def test_a_domain_request_from_form_to_mail_to_console_to_acceptance(page):
    address = "claire.martin@mairie-exemple.example"
    page.goto(f"{BASE}/")
    page.fill("#address", address)
    page.click("button:has-text('Vérifier')")
    assert "n’est pas encore sur le service" in page.content()
    axe(page)
    page.fill("#name", "Claire Martin")
    page.fill("#organisation", "Mairie d'Exemple")
    page.fill("#message", "Nous serions une quarantaine d'agents.")
    page.click("button:has-text('Envoyer la demande')")
    assert "Consultez votre messagerie" in page.content()
    axe(page)
    subject, text = wait_for_mail(address, 1)[0]
    assert "mairie-exemple.example" in subject
    link = re.search(r"https?://\S+/request/confirm\?\S+", text).group(0)
    page.goto(link)
    assert "Demande confirmée" in page.content()
    axe(page)
    shot(page, "request_confirmed")
    login(page)
    page.goto(f"{BASE}/_annuaire/console/requests")
    row = page.locator("tr:has-text('mairie-exemple.example')")
    assert "1" in row.locator("td.num").inner_text()
    axe(page)
    shot(page, "requests_queue")
    row.locator("a").click()
    assert "Nous serions une quarantaine" in page.content()
    axe(page)
    page.click("a:has-text('Créer la règle')")
    assert page.input_value("#name") == "mairie-exemple.example"
    assert page.input_value("#label") == "Mairie d'Exemple"
    axe(page)
    page.fill("#homeserver", "agent.collectivites.tchap.example")
    page.click("form.card button[type=submit]")
    assert "les demandeurs ont été prévenus" in page.content()
    assert "1 demandeur(s) prévenu(s)" in page.content()
    subject, text = wait_for_mail(address, 2)[1]
    assert "maintenant sur" in subject
    assert "mairie-exemple.example" in text


def test_keyboard_only_login_and_rule_form(page):
    page.goto(f"{BASE}/_annuaire/console/login")

    def tab_to(selector, limit=30):
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate(
                "(s) => document.activeElement && document.activeElement.matches(s)",
                selector,
            ):
                return
        raise AssertionError(f"Tab never reached {selector}")

    # The skip link comes first.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    tab_to("#username")
    page.keyboard.type(EDITOR[0])
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "password"
    page.keyboard.type(EDITOR[1])
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/_annuaire/console/$"))
    page.goto(f"{BASE}/_annuaire/console/rules/new")
    tab_to("#kind")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "name"
    page.keyboard.type("keyboard.gouv.example")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "subdomains"
    page.keyboard.press("Space")
    tab_to("#homeserver")
    page.keyboard.type("agent.keyboard.tchap.example")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*done=created"))
    assert "keyboard.gouv.example" in page.content()
    assert "et ses sous-domaines" in page.content()


def test_axe_on_every_page(page):
    for path in [
        "/",
        "/request",
        "/request/confirm?id=x&token=y",
        "/?lang=en",
        "/?lang=de",
    ]:
        page.goto(f"{BASE}{path}")
        axe(page)
        name = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_") or "home"
        shot(page, f"agents_{name}")
    login(page)
    page.goto(f"{BASE}/_annuaire/console/rules?source=finances.toml")
    first_rule = page.locator("table tbody tr a").first.get_attribute("href")
    pages = [
        "/_annuaire/console/",
        "/_annuaire/console/rules",
        first_rule,
        "/_annuaire/console/rules/new",
        "/_annuaire/console/rules/import",
        "/_annuaire/console/rules/export",
        "/_annuaire/console/explain?address=jean%40finances.gouv.example",
        "/_annuaire/console/audit",
        "/_annuaire/console/directory",
        "/_annuaire/console/directory?q=a",
        "/_annuaire/console/erase",
        "/_annuaire/console/accounts",
        "/_annuaire/console/homeservers",
        "/_annuaire/console/requests",
        "/_annuaire/console/rules?lang=de",
        "/_annuaire/console/?lang=en",
    ]
    for path in pages:
        page.goto(f"{BASE}{path}")
        axe(page)
        name = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_") or "root"
        shot(page, f"page_{name}")
