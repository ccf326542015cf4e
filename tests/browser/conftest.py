"""Fixtures of the browser tests: a fresh Chromium profile per test (Debian's chromium, driven
by Playwright), axe-core, screenshots, the SMTP sink's mails. The servers are started by
scripts/browser/run, which passes their addresses in the environment."""

import email
import email.policy
import json
import os
import pathlib
import re
import tempfile
import time
import urllib.request

import pytest
from playwright.sync_api import sync_playwright

BASE = os.environ["BROWSER_BASE_URL"]
EXPIRY_BASE = os.environ["BROWSER_EXPIRY_URL"]
MAIL_DIR = pathlib.Path(os.environ["BROWSER_MAIL_DIR"])
SHOTS = pathlib.Path(os.environ["BROWSER_SCREENSHOTS"])
AXE_JS = pathlib.Path(os.environ["BROWSER_AXE_JS"]).read_text()
CHROMIUM = os.environ.get("BROWSER_CHROMIUM", "/usr/bin/chromium")
EDITOR = ("ed", "editor password 1")
VIEWER = ("vi", "viewer password 1")

# The flags this machine needs (closed network: no background connections).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def playwright():
    with sync_playwright() as p:
        yield p


@pytest.fixture
def page(playwright, request):
    """A page in a new browser with a fresh profile, in French; screenshot kept at the end."""
    with tempfile.TemporaryDirectory(prefix="annuaire-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            locale="fr-FR",
            extra_http_headers={"Accept-Language": "fr-FR,fr;q=0.9"},
            viewport={"width": 1280, "height": 900},
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(15_000)
        yield page
        shot(page, request.node.name)
        context.close()


def shot(page, name):
    """Keeps a full-page screenshot under target/browser-screenshots/ for a person to look at."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def axe(page):
    """Runs axe-core (WCAG 2.0/2.1 A and AA rules) on the page; fails on a serious or critical
    violation. Injected through the DevTools protocol: the page's CSP stays strict."""
    page.evaluate(AXE_JS)
    violations = page.evaluate(
        """async () => {
            const r = await axe.run(document, {
                runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']},
                resultTypes: ['violations'],
            });
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}));
        }"""
    )
    bad = [v for v in violations if v["impact"] in ("serious", "critical")]
    assert (
        not bad
    ), f"axe on {page.url}: {json.dumps(bad, indent=1, ensure_ascii=False)}"
    return violations


def login(page, who=EDITOR, base=BASE):
    page.goto(f"{base}/_annuaire/console/login")
    page.fill("#username", who[0])
    page.fill("#password", who[1])
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/_annuaire/console/.*"))
    assert page.locator(".who").count() == 1, page.content()


def internal_info(address):
    url = f"{BASE}/_matrix/identity/api/v1/internal-info?medium=email&address={urllib.request.quote(address)}"
    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


def mails_to(address):
    """The text parts of every mail the sink received for `address`, oldest first."""
    found = []
    for path in sorted(MAIL_DIR.glob("*.eml"), key=lambda p: int(p.stem)):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if address.lower() not in str(msg["To"]).lower():
            continue
        body = msg.get_body(preferencelist=("plain",))
        found.append((str(msg["Subject"]), body.get_content() if body else ""))
    return found


def wait_for_mail(address, count, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        mails = mails_to(address)
        if len(mails) >= count:
            return mails
        time.sleep(0.2)
    raise AssertionError(f"no mail number {count} for {address} within {timeout}s")
