"""The web app in a real browser: Debian's Chromium driven by Playwright.

The app runs under uvicorn on a free loopback port, on a database filled through the
store. Every test fails on any console error or uncaught page error.
"""

from __future__ import annotations

import io
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from feedfactory import Item, rss
from feedserver import FeedServer
from webdata import NOW, add_entry, add_feed, make_settings, record

from aggregator.config import Settings
from aggregator.models import MediaItem
from aggregator.store import Store
from aggregator.store import feeds as feed_rows
from aggregator.web import create_app

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "browser secret"
HOSTILE_TITLE = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"
HOSTILE_BODY = (
    '<p onmouseover="window.pwned=3">Hover me<img src="x" onerror="window.pwned=4"></p>'
    '<p><a id="trap" href="javascript:window.pwned=5">click me</a>'
    "<script>window.pwned=6;document.title='pwned'</script>"
    '<svg onload="window.pwned=7"></svg><iframe src="javascript:parent.pwned=8"></iframe>'
    '<form action="javascript:window.pwned=9"><button>Go</button></form></p>'
)


class LiveServer:
    def __init__(self, settings: Settings) -> None:
        config = uvicorn.Config(
            create_app(settings, clock=lambda: NOW),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Problems:
    messages: list[str] = field(default_factory=list)

    def watch(self, page: playwright_api.Page) -> None:
        page.on(
            "console",
            lambda msg: (
                self.messages.append(f"console {msg.type}: {msg.text}")
                if msg.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda error: self.messages.append(f"page error: {error}"))


@pytest.fixture(scope="module")
def browser() -> Iterator[playwright_api.Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make browser)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def site(tmp_path: Path, feed_server: FeedServer) -> Iterator[tuple[str, Store, dict[str, int]]]:
    settings = make_settings(tmp_path, admin_password=PASSWORD)
    store = Store.open(settings.database)
    alpha = add_feed(store, "https://alpha.test/feed", "Alpha blog")
    beta = add_feed(store, "https://beta.test/feed", "Beta blog")
    for i in range(40):
        add_entry(
            store,
            alpha if i % 2 else beta,
            record(
                f"Post number {i}",
                published=NOW - timedelta(hours=3 * i + 1),
                link=f"https://{'alpha' if i % 2 else 'beta'}.test/{i}",
                body=f"<p>Ordinary words for post {i}.</p>",
            ),
        )
    story = add_entry(
        store,
        alpha,
        record(
            "Kubernetes tuning notes",
            published=NOW - timedelta(minutes=30),
            link="https://alpha.test/k8s",
            body="<p>About schedulers and throughput.</p>",
        ),
    )
    add_entry(
        store,
        beta,
        record(
            "Kubernetes tuning notes",
            published=NOW - timedelta(minutes=20),
            link="https://beta.test/k8s",
            body="<p>About schedulers and throughput.</p>",
        ),
        duplicate_of=story,
    )
    hostile = add_entry(
        store,
        beta,
        record(
            HOSTILE_TITLE,
            published=NOW - timedelta(minutes=10),
            link="javascript:window.pwned=10",
            body=HOSTILE_BODY,
        ),
    )
    with LiveServer(settings) as base:
        yield base, store, {"alpha": alpha, "beta": beta, "hostile": hostile, "story": story}
    store.close()


def not_pwned(page: playwright_api.Page, title: str) -> None:
    assert page.evaluate("() => typeof window.pwned") == "undefined"
    assert page.evaluate("() => typeof parent.pwned") == "undefined"
    assert page.title() == title


def test_timeline_pages_search_and_filter(browser, site) -> None:
    base, _, _ids = site
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = Problems()
    problems.watch(page)
    expect = playwright_api.expect

    page.goto(base + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Latest posts")
    expect(page.get_by_role("heading", name="Today")).to_be_visible()
    articles = page.locator("article")
    expect(articles).to_have_count(30)
    # The cross-post is one card, with "also on" the other blog.
    story = page.locator("article", has_text="Kubernetes tuning notes")
    expect(story).to_have_count(1)
    expect(story.get_by_role("link", name="Beta blog")).to_have_attribute(
        "href", "https://beta.test/k8s"
    )
    # The hostile entry's markup shows as text and runs nothing.
    expect(page.get_by_role("link", name=HOSTILE_TITLE, exact=True)).to_be_visible()
    not_pwned(page, "Blog digest")

    page.get_by_role("link", name="Older").click()
    expect(articles).to_have_count(12)
    expect(page.get_by_text("Post number 39", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Older")).to_have_count(0)
    page.get_by_role("link", name="Newer").click()
    expect(articles).to_have_count(30)
    expect(page.get_by_role("link", name="Newer")).to_have_count(0)

    page.get_by_label("Search posts").fill("throughput")
    page.get_by_label("Search posts").press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Search results")
    expect(articles).to_have_count(1)
    expect(articles.first).to_contain_text("Kubernetes tuning notes")
    page.get_by_label("Search posts").fill('"NEAR( * OR')
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_text("No posts match")).to_be_visible()

    page.get_by_label("Search posts").fill("")
    page.get_by_label("Source").select_option(label="Alpha blog")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alpha blog")
    expect(articles).to_have_count(21)
    expect(page.get_by_text("Post number 0", exact=True)).to_have_count(0)  # a Beta post
    expect(page.locator(".also-on", has_text="Beta blog")).to_have_count(1)
    assert problems.messages == []
    page.close()


def test_search_highlights_orders_and_pages(browser, site) -> None:
    base, store, ids = site
    # An old post about the word itself: first by relevance, last by date.
    add_entry(
        store,
        ids["alpha"],
        record(
            "Words about words",
            published=NOW - timedelta(days=30),
            link="https://alpha.test/words",
            body="<p>Choosing <b>words</b> carefully: words, words.</p>",
        ),
    )
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = Problems()
    problems.watch(page)
    expect = playwright_api.expect
    articles = page.locator("article")

    page.goto(base + "/")
    page.get_by_label("Search posts").fill("words")
    page.get_by_label("Search posts").press("Enter")
    expect(page.get_by_role("status")).to_contain_text("41 posts match, best match first")
    expect(articles).to_have_count(30)
    first = articles.first
    expect(first.get_by_role("heading").get_by_role("link")).to_have_text("Words about words")
    expect(first.locator("h3 mark")).to_have_text(["Words", "words"])
    expect(first.locator(".snippet mark")).to_have_text(["words", "words", "words"])
    expect(first.locator(".snippet b")).to_have_count(0)  # feed markup is text, not tags
    expect(articles.nth(1).locator(".snippet mark")).to_have_text(["words"])

    page.get_by_role("link", name="More results").click()
    expect(articles).to_have_count(11)
    expect(page.get_by_text("Words about words")).to_have_count(0)
    page.get_by_role("link", name="Previous results").click()
    expect(articles).to_have_count(30)
    expect(articles.first.get_by_role("heading").get_by_role("link")).to_have_text(
        "Words about words"
    )

    page.get_by_label("Order").select_option(label="Newest first")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("status")).to_contain_text("newest first")
    expect(articles).to_have_count(30)
    expect(articles.first.get_by_role("heading").get_by_role("link")).to_have_text("Post number 0")
    expect(articles.first.locator(".snippet mark")).to_have_text(["words"])
    page.get_by_role("link", name="Older").click()
    expect(articles).to_have_count(11)
    expect(articles.last.get_by_role("heading").get_by_role("link")).to_have_text(
        "Words about words"
    )
    assert problems.messages == []
    page.close()


def test_hostile_entry_page_runs_nothing(browser, site) -> None:
    base, _, ids = site
    page = browser.new_page()
    problems = Problems()
    problems.watch(page)
    page.goto(f"{base}/entries/{ids['hostile']}")
    heading = page.get_by_role("heading", level=1)
    playwright_api.expect(heading).to_have_text(HOSTILE_TITLE)
    page.get_by_text("Hover me").hover()
    page.get_by_text("click me").click()
    page.wait_for_timeout(100)
    not_pwned(page, f"{HOSTILE_TITLE} · Beta blog · Blog digest")
    assert page.url == f"{base}/entries/{ids['hostile']}"
    assert page.locator("script, iframe, svg, form[action^='javascript']").count() == 0
    assert problems.messages == []
    page.close()


def test_admin_adds_a_feed_by_home_page(browser, site, feed_server: FeedServer) -> None:
    base, store, _ = site
    feed_url = feed_server.add("/news/feed.xml", body=rss([Item("Hello", link="https://n/1")]))
    home = feed_server.add(
        "/news/",
        body=b'<html><head><link rel="alternate" type="application/atom+xml" '
        b'href="feed.xml"></head><body>News</body></html>',
        content_type="text/html",
    )
    context = browser.new_context(http_credentials={"username": "admin", "password": PASSWORD})
    page = context.new_page()
    problems = Problems()
    problems.watch(page)
    page.goto(base + "/admin")
    playwright_api.expect(page.get_by_role("heading", level=1)).to_have_text("Admin")
    page.get_by_label("Feed or blog address").fill(home)
    page.get_by_label("Name").fill("News blog")
    page.get_by_role("button", name="Add feed").click()
    playwright_api.expect(page.get_by_role("status")).to_contain_text("Feed added.")
    playwright_api.expect(page.get_by_role("link", name="News blog")).to_be_visible()
    assert feed_url in [feed.url for feed in feed_rows.list_feeds(store.db)]
    page.get_by_role("button", name="Disable News blog").click()
    playwright_api.expect(page.get_by_role("status")).to_contain_text("Feed disabled")
    assert problems.messages == []
    context.close()


def _silent_wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(rate)
        out.writeframes(b"\x80" * int(rate * seconds))
    return buffer.getvalue()


def test_podcast_plays_only_when_pressed_and_video_embed_is_a_link(
    browser, tmp_path: Path, feed_server: FeedServer
) -> None:
    """The entry page of a podcast episode shows an audio control that loads nothing
    until pressed; a post with an embedded YouTube player shows a link to the video and
    loads no third-party frame. No console errors on either."""
    audio_url = feed_server.add("/media/episode.wav", body=_silent_wav(), content_type="audio/wav")
    settings = make_settings(tmp_path / "media")
    store = Store.open(settings.database)
    pod = add_feed(store, "https://pod.test/feed", "Pod blog")
    episode = add_entry(
        store,
        pod,
        replace(
            record("Episode 42", published=NOW - timedelta(hours=1), link="https://pod.test/42"),
            media=(
                MediaItem(audio_url, "enclosure", "audio/wav", "audio", 8044, 2530, episode=42),
            ),
        ),
    )
    video = add_entry(
        store,
        pod,
        record(
            "A talk on video",
            published=NOW - timedelta(hours=2),
            link="https://pod.test/talk",
            body='<figure class="wp-block-embed"><div><iframe '
            'src="https://www.youtube.com/embed/aqz-KE-bpKQ"></iframe></div>'
            "<figcaption>The talk</figcaption></figure>",
        ),
    )
    try:
        with LiveServer(settings) as base:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            problems = Problems()
            problems.watch(page)
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))

            page.goto(base + "/")
            card = page.locator("article", has_text="Episode 42")
            playwright_api.expect(card.get_by_text("audio · 42 min")).to_be_visible()

            page.goto(f"{base}/entries/{episode}")
            audio = page.locator("audio")
            playwright_api.expect(audio).to_have_count(1)
            playwright_api.expect(audio).to_have_attribute("preload", "none")
            playwright_api.expect(
                page.get_by_role("link", name="Download Audio (episode 42, WAV, 8.0 KB, 42 min)")
            ).to_have_attribute("href", audio_url)
            page.wait_for_timeout(300)
            assert feed_server.requests_for("/media/episode.wav") == []
            assert audio_url not in requested
            # Pressing play: the click on the control activates the page; play() is what
            # the control's button does.
            audio.click(position={"x": 20, "y": 20})
            page.evaluate("() => document.querySelector('audio').play().catch(() => {})")
            deadline = time.monotonic() + 10
            while not feed_server.requests_for("/media/episode.wav"):
                assert time.monotonic() < deadline, "pressing play loaded nothing"
                page.wait_for_timeout(50)

            page.goto(f"{base}/entries/{video}")
            link = page.get_by_role(
                "link", name="Watch on YouTube: https://www.youtube.com/watch?v=aqz-KE-bpKQ"
            )
            playwright_api.expect(link).to_have_attribute(
                "href", "https://www.youtube.com/watch?v=aqz-KE-bpKQ"
            )
            playwright_api.expect(page.get_by_text("The talk")).to_be_visible()
            assert page.locator("iframe, object, embed, video").count() == 0
            assert not [url for url in requested if "youtube" in url]
            assert problems.messages == []
            page.close()
    finally:
        store.close()
