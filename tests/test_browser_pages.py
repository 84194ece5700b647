"""Every page template in Chromium at desktop and phone widths, light and dark.

On each: no horizontal scroll, no console error, and axe-core (vendored under
tests/vendor/axe-core, from the npm registry) finds no WCAG 2.1 A/AA violation. Every
menu item answers 200. No axe rule is disabled.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from test_browser_web import CHROMIUM, PASSWORD, LiveServer, Problems
from webdata import NOW, add_entry, add_feed, make_settings, record

from aggregator.digests.build import build_pending
from aggregator.store import Store
from aggregator.store import digests as digest_rows
from aggregator.subscriptions import add_by_operator, links_for

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
SCHEMES = ("light", "dark")


def _local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


@pytest.fixture(scope="module")
def browser() -> Iterator[playwright_api.Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make browser)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    tmp_path = tmp_path_factory.mktemp("pages")
    settings = make_settings(tmp_path, admin_password=PASSWORD)
    store = Store.open(settings.database)
    alpha = add_feed(store, "https://alpha.test/feed", "Alpha blog")
    beta = add_feed(store, "https://beta.test/feed", "Beta blog")
    links = links_for(store, settings)
    reader, _ = add_by_operator(
        store, settings, links, email="reader@example.org", cadence="daily", now=NOW
    )
    first = 0
    for i in range(12):
        entry = add_entry(
            store,
            alpha if i % 2 else beta,
            record(
                f"Post number {i}",
                published=NOW - timedelta(hours=3 * i + 1),
                link=f"https://{'alpha' if i % 2 else 'beta'}.test/{i}",
                body=(
                    f"<p>Ordinary words for post {i}.</p>"
                    "<ul><li>one point</li><li>another point</li></ul>"
                ),
                author="Alpha blog" if i % 2 else "Jane Writer",
            ),
        )
        first = first or entry
    build_pending(store, settings, NOW + timedelta(days=1), due_only=False)
    (digest,) = digest_rows.due_batch(store.db, NOW + timedelta(days=2), after_id=0, limit=5)
    with store.write() as db:
        digest_rows.mark_sent(db, digest.id, "<d@x>", NOW + timedelta(days=1))
    _, pending = add_by_operator(
        store, settings, links, email="pending@example.org", pending=True, now=NOW
    )
    assert pending is not None
    confirm_url = next(w for w in pending.text.split() if "/subscribe/confirm?" in w)
    edition_day = (NOW + timedelta(days=1)).astimezone(settings.digest.timezone).date()
    urls = {
        "timeline": "/",
        "search": "/?q=ordinary",
        "source": f"/sources/{alpha}",
        "entry": f"/entries/{first}",
        "subscribe": "/subscribe",
        "digests": "/digests",
        "edition": f"/digests/editions/{edition_day.isoformat()}",
        "lost link": "/digests/lost-link",
        "preferences bare": "/preferences",
        "unsubscribe bare": "/unsubscribe",
        "preferences": _local(links.preferences(reader.id, NOW)),
        "unsubscribe": _local(links.unsubscribe(reader.id, NOW)),
        "archive": _local(links.archive(reader.id, NOW)),
        "digest copy": _local(links.digest(digest.id, NOW)),
        "confirm": _local(confirm_url),
        "refused link": "/preferences?token=broken",
        "not found": "/no/such/page",
        "admin": "/admin",
    }
    with LiveServer(settings) as base:
        yield base, urls
    store.close()


def test_every_menu_item_and_bare_address_answers_200(pages) -> None:
    base, urls = pages
    home = httpx.get(base + "/")
    hrefs = {
        part.split('"', 1)[0]
        for part in home.text.split('<nav class="site-nav"', 1)[1]
        .split("</nav>")[0]
        .split('href="')[1:]
    }
    assert {"/", "/subscribe", "/digests", "/feed.atom"} <= hrefs
    auth = ("admin", PASSWORD)
    for href in sorted(hrefs | {"/preferences", "/unsubscribe", "/digests/lost-link"}):
        answer = httpx.get(base + href, auth=auth if href == "/admin" else None)
        assert answer.status_code == 200, href
    for name in ("edition", "preferences", "unsubscribe", "archive", "digest copy", "confirm"):
        assert httpx.get(base + urls[name]).status_code == 200, name


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("size", list(SIZES))
def test_every_page_fits_has_no_console_error_and_no_axe_violation(
    browser, pages, size: str, scheme: str
) -> None:
    base, urls = pages
    width, height = SIZES[size]
    context = browser.new_context(
        viewport={"width": width, "height": height},
        color_scheme=scheme,
        http_credentials={"username": "admin", "password": PASSWORD},
    )
    axe = AXE.read_text(encoding="utf-8")
    failures: list[str] = []
    try:
        for name, path in urls.items():
            page = context.new_page()
            problems = Problems()
            problems.watch(page)
            answer = page.goto(base + path)
            assert answer is not None
            expected = {"refused link": 400, "not found": 404}.get(name, 200)
            if answer.status != expected:
                failures.append(f"{name}: HTTP {answer.status}")
            # The digest copy and the archive say no-referrer and no-store; all fine.
            overflow = page.evaluate(
                "() => document.documentElement.scrollWidth - window.innerWidth"
            )
            if overflow > 0:
                failures.append(f"{name}: scrolls sideways by {overflow}px")
            # Open the operator's disclosure so its table is checked too.
            page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = true)")
            overflow = page.evaluate(
                "() => document.documentElement.scrollWidth - window.innerWidth"
            )
            if overflow > 0:
                failures.append(f"{name} (details open): scrolls sideways by {overflow}px")
            # Evaluated through the DevTools protocol: the page's CSP (no inline scripts)
            # stays in force and is not bypassed for the page itself.
            page.evaluate(axe + "\n;void 0")
            result = page.evaluate(
                "async (tags) => { const r = await axe.run(document, "
                "{runOnly: {type: 'tag', values: tags}}); return {passes: r.passes.length, "
                "violations: r.violations.map(v => v.id + ': ' + v.help + ' @ ' + "
                "v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | '))}; }",
                AXE_TAGS,
            )
            assert result["passes"] > 5, f"{name}: axe did not run its rules"
            failures.extend(f"{name}: axe {line}" for line in result["violations"])
            failures.extend(
                f"{name}: {message}"
                for message in problems.messages
                if not (name in ("refused link", "not found") and "status of 40" in message)
            )
            page.close()
    finally:
        context.close()
    assert failures == []
