"""Building and sending digests to a real SMTP server on loopback, from a real SQLite file."""

from __future__ import annotations

import os
import re
from collections import Counter
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from digestkit import T0, add_entry, add_feed, later, make_settings, mark_backlog, rows
from smtpserver import SmtpServer

from aggregator.digests.build import build_pending
from aggregator.digests.preview import preview
from aggregator.digests.send import MAX_CONSECUTIVE_TEMPORARY, send_pending
from aggregator.mail import SmtpSender, SmtpSettings
from aggregator.store import Store
from aggregator.subscriptions import (
    PURPOSE_DIGEST,
    PURPOSE_PREFERENCES,
    PURPOSE_UNSUBSCRIBE,
    add_by_operator,
    links_for,
    unsubscribe_id,
)


@pytest.fixture
def env(tmp_path: Path, smtp_server: SmtpServer):
    settings = make_settings(tmp_path, smtp_port=smtp_server.port, max_entries_per_source=5)
    store = Store.open(settings.database)
    sender = SmtpSender(SmtpSettings(host="127.0.0.1", port=smtp_server.port, security="none"))
    yield settings, store, sender
    sender.close()
    assert store.integrity_ok()
    store.close()


def subscribe(store: Store, settings, email: str, **kwargs):
    subscriber, _ = add_by_operator(
        store, settings, links_for(store, settings), email=email, now=T0, **kwargs
    )
    return subscriber


def parts(message: EmailMessage) -> tuple[str, str]:
    assert message.get_content_type() == "multipart/alternative"
    text_part, html_part = message.iter_parts()
    assert text_part.get_content_type() == "text/plain"
    assert html_part.get_content_type() == "text/html"
    return text_part.get_content(), html_part.get_content()


def two_blogs(store: Store) -> tuple[int, int]:
    return add_feed(store, "Alpha Blog"), add_feed(store, "Beta Notes")


def test_a_digest_arrives_with_both_parts_headers_and_working_links(env, smtp_server) -> None:
    settings, store, sender = env
    alpha, beta = two_blogs(store)
    reader = subscribe(store, settings, "Reader@Example.org")
    first = add_entry(store, alpha, "Layers meets Agder", link="https://alpha.test/agder")
    add_entry(store, alpha, "Second thoughts", link="https://alpha.test/second", published=later(1))
    add_entry(store, beta, "Layers meets Agder", link="https://beta.test/agder", duplicate_of=first)
    add_entry(store, beta, "Cluster tuning", link="https://beta.test/tuning", published=later(2))

    report = build_pending(store, settings, later(3), due_only=False)
    assert report.built == 1
    sent = send_pending(store, sender, settings, lambda: later(3))
    assert (sent.sent, sent.retried, sent.bounced) == (1, 0, 0)

    (received,) = smtp_server.received()
    assert received.rcpt_tos == ("Reader@example.org",)
    message = received.parse()
    assert message["Subject"] == "3 new posts from Alpha Blog and Beta Notes"
    assert message["To"] == "Reader@example.org"
    assert message["From"] == "Blog digest <digest@news.example.org>"
    assert message["Precedence"] == "bulk"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"] == "Blog digest <digest.news.example.org>"
    ((digest_id, message_id),) = rows(store, "SELECT id, message_id FROM digests")
    assert message["Message-ID"] == message_id
    assert re.fullmatch(rf"<digest-{digest_id}\.[0-9a-f]{{16}}@news\.example\.org>", message_id)

    unsubscribe_https, unsubscribe_mailto = re.findall(r"<([^>]+)>", message["List-Unsubscribe"])
    assert unsubscribe_https.startswith("https://news.example.org/unsubscribe?token=")
    assert unsubscribe_mailto.startswith("mailto:digest@news.example.org?subject=unsubscribe")
    links = links_for(store, settings)

    def token_of(url: str) -> str:
        return parse_qs(urlsplit(url).query)["token"][0]

    assert links.verify(PURPOSE_UNSUBSCRIBE, token_of(unsubscribe_https), now=later(4)) == reader.id

    text, html = parts(message)
    # Headline index, then a section per source; the cross-post once, with "also on".
    assert text.index("In this digest") < text.index("ALPHA BLOG") < text.index("BETA NOTES")
    assert text.count("Layers meets Agder") == 2  # index + section, never the copy again
    assert "Also on Beta Notes: https://beta.test/agder" in text
    assert 'href="https://beta.test/agder"' in html and "Also on" in html
    assert html.count(">Layers meets Agder</a>") == 2
    hrefs = re.findall(r'href="([^"]+)"', html)
    web_copy = next(h for h in hrefs if "/digests/" in h).replace("&amp;", "&")
    prefs = next(h for h in hrefs if "/preferences" in h).replace("&amp;", "&")
    assert links.verify(PURPOSE_DIGEST, token_of(web_copy), now=later(4)) == digest_id
    assert links.verify(PURPOSE_PREFERENCES, token_of(prefs), now=later(4)) == reader.id
    assert f"View in your browser: {web_copy}" in text
    assert 'style="' in html and "<style>" not in html  # CSS inlined; dark mode kept
    assert "prefers-color-scheme: dark" in html

    # Nothing new: no second digest, and nothing goes out again.
    assert build_pending(store, settings, later(5), due_only=False).built == 0
    assert send_pending(store, sender, settings, lambda: later(5)).sent == 0
    assert len(smtp_server.received()) == 1


def test_backlog_pending_addresses_and_other_sources_are_left_out(env, smtp_server) -> None:
    settings, store, sender = env
    alpha = add_feed(store, "Alpha Blog", backlog=True)
    for i in range(3):
        add_entry(store, alpha, f"Old post {i}")
    mark_backlog(store, alpha)  # the feed's first poll: all of that is backlog
    beta = add_feed(store, "Beta Notes")
    subscribe(store, settings, "pending@example.org", pending=True)
    only_beta = subscribe(store, settings, "beta@example.org")
    with store.write() as db:
        db.execute(
            "UPDATE subscribers SET watermark = 1, all_feeds = 0 WHERE id = ?", [only_beta.id]
        )
        db.execute("INSERT INTO subscriber_feeds VALUES (?, ?)", [only_beta.id, beta])
    everything = subscribe(store, settings, "all@example.org")
    with store.write() as db:
        # Subscribed after the first old post, before the feed's first poll ended.
        db.execute("UPDATE subscribers SET watermark = 1 WHERE id = ?", [everything.id])
    add_entry(store, alpha, "New on alpha")
    add_entry(store, beta, "New on beta")

    assert build_pending(store, settings, later(1), due_only=False).built == 2
    send_pending(store, sender, settings, lambda: later(1))
    by_rcpt = {r.rcpt_tos[0]: r.parse() for r in smtp_server.received()}
    assert set(by_rcpt) == {"beta@example.org", "all@example.org"}  # pending gets nothing
    beta_text, _ = parts(by_rcpt["beta@example.org"])
    all_text, _ = parts(by_rcpt["all@example.org"])
    assert "New on beta" in beta_text and "alpha" not in beta_text.lower()
    assert "New on alpha" in all_text and "Old post" not in all_text


def test_first_digest_on_a_fresh_installation_shows_what_the_feeds_hold(env, smtp_server) -> None:
    settings, store, sender = env
    early = subscribe(store, settings, "early@example.org")  # before anything was stored
    assert early.watermark == 0
    alpha = add_feed(store, "Alpha Blog", backlog=True)
    for i in range(3):
        add_entry(store, alpha, f"Old post {i}")
    mark_backlog(store, alpha)
    late = subscribe(store, settings, "late@example.org")  # after the first poll
    assert build_pending(store, settings, later(1), due_only=False).built == 1
    send_pending(store, sender, settings, lambda: later(1))
    (received,) = smtp_server.received()
    assert received.rcpt_tos == ("early@example.org",)
    text, _ = parts(received.parse())
    assert all(f"Old post {i}" in text for i in range(3))
    assert late.watermark == 3


def test_flooding_source_is_capped_with_and_n_more(env, smtp_server) -> None:
    settings, store, sender = env
    alpha, beta = two_blogs(store)
    subscribe(store, settings, "reader@example.org")
    for i in range(30):
        add_entry(
            store,
            alpha,
            f"Re-emitted old post {i}",
            published=T0.replace(year=2019, day=1 + i % 28),
        )
    add_entry(store, alpha, "Actually new", published=later(1))
    add_entry(store, beta, "Quiet blog post", published=later(1))
    build_pending(store, settings, later(2), due_only=False)
    send_pending(store, sender, settings, lambda: later(2))
    (message,) = smtp_server.messages()
    text, html = parts(message)
    assert message["Subject"] == "32 new posts from Alpha Blog and Beta Notes"
    alpha_section = text[text.index("ALPHA BLOG") : text.index("BETA NOTES")]
    assert alpha_section.index("Actually new") < alpha_section.index("Re-emitted")
    assert "and 26 more from Alpha Blog: https://news.example.org/?source=" in text
    assert "Quiet blog post" in text
    assert "and 26 more from Alpha Blog" in html


def test_permanent_refusal_marks_the_address_not_the_run(env, smtp_server) -> None:
    settings, store, sender = env
    alpha, _ = two_blogs(store)
    for name in ("a", "gone", "c"):
        subscribe(store, settings, f"{name}@example.org")
    add_entry(store, alpha, "Post")
    smtp_server.perm_fail.add("gone@example.org")
    build_pending(store, settings, later(1), due_only=False)
    report = send_pending(store, sender, settings, lambda: later(1))
    assert (report.sent, report.bounced) == (2, 1)
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received()) == [
        "a@example.org",
        "c@example.org",
    ]
    assert rows(store, "SELECT status FROM subscribers WHERE email = 'gone@example.org'") == [
        ("bounced",)
    ]
    assert rows(
        store,
        "SELECT d.status FROM digests d JOIN subscribers s ON s.id = d.subscriber_id WHERE s.email = 'gone@example.org'",
    ) == [("failed",)]
    # A bounced address gets no further digests.
    add_entry(store, alpha, "Another post")
    build_pending(store, settings, later(2), due_only=False)
    send_pending(store, sender, settings, lambda: later(2))
    assert Counter(r.rcpt_tos[0] for r in smtp_server.received()) == {
        "a@example.org": 2,
        "c@example.org": 2,
    }


def test_temporary_refusal_is_retried_with_backoff_and_delivered_once(env, smtp_server) -> None:
    settings, store, sender = env
    alpha, _ = two_blogs(store)
    subscribe(store, settings, "busy@example.org")
    subscribe(store, settings, "ok@example.org")
    add_entry(store, alpha, "Post")
    smtp_server.temp_fail.add("busy@example.org")
    build_pending(store, settings, later(1), due_only=False)
    report = send_pending(store, sender, settings, lambda: later(1))
    assert (report.sent, report.retried) == (1, 1)
    ((attempts, next_at, error),) = rows(
        store, "SELECT attempts, next_attempt_at, last_error FROM digests WHERE status = 'pending'"
    )
    assert attempts == 1 and "450" in error and next_at > "2026-11-02T09:00"
    # Before the backoff has passed nothing is tried again.
    assert send_pending(store, sender, settings, lambda: later(1.01)).handled == 0
    smtp_server.temp_fail.clear()
    assert send_pending(store, sender, settings, lambda: later(2)).sent == 1
    assert Counter(r.rcpt_tos[0] for r in smtp_server.received()) == {
        "busy@example.org": 1,
        "ok@example.org": 1,
    }


def test_server_down_for_a_whole_run_then_back_loses_nothing(env, smtp_server) -> None:
    settings, store, sender = env
    alpha, _ = two_blogs(store)
    for i in range(12):
        subscribe(store, settings, f"r{i}@example.org")
    add_entry(store, alpha, "Post")
    build_pending(store, settings, later(1), due_only=False)
    smtp_server.stop()
    report = send_pending(store, sender, settings, lambda: later(1))
    assert report.sent == 0 and report.retried == MAX_CONSECUTIVE_TEMPORARY
    assert report.stopped is not None and "unavailable" in report.stopped
    assert rows(store, "SELECT count(*) FROM digests WHERE status = 'pending'") == [(12,)]
    smtp_server.start()
    report = send_pending(store, sender, settings, lambda: later(3))
    assert report.sent == 12
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received()) == sorted(
        f"r{i}@example.org" for i in range(12)
    )


def test_dropped_connections_repeat_at_most_the_message_in_flight(env, smtp_server) -> None:
    settings, store, sender = env
    alpha, _ = two_blogs(store)
    for i in range(10):
        subscribe(store, settings, f"r{i}@example.org")
    add_entry(store, alpha, "Post")
    build_pending(store, settings, later(1), due_only=False)
    smtp_server.drop_every = 3
    smtp_server.drop_before_reply = True  # accepted, but the client never hears so
    now = later(1)
    for _ in range(6):
        send_pending(store, sender, settings, lambda at=now: at)
        now = now.replace(hour=now.hour + 1)
    counts = Counter(r.rcpt_tos[0] for r in smtp_server.received())
    assert set(counts) == {f"r{i}@example.org" for i in range(10)}
    drops = len(smtp_server.received()) // 3
    assert sum(counts.values()) - 10 <= drops
    assert rows(store, "SELECT count(*) FROM digests WHERE status = 'sent'") == [(10,)]
    # The repeated message is the same message: same Message-ID.
    by_rcpt: dict[str, set[str]] = {}
    for r in smtp_server.received():
        by_rcpt.setdefault(r.rcpt_tos[0], set()).add(r.parse()["Message-ID"])
    assert all(len(ids) == 1 for ids in by_rcpt.values())


def test_hostile_titles_and_bodies_are_inert_in_both_parts(env, smtp_server) -> None:
    settings, store, sender = env
    evil = add_feed(store, "Evil <script>alert(1)</script> Blog\r\nBcc: victim@example.org")
    subscribe(store, settings, "reader@example.org")
    add_entry(
        store,
        evil,
        "Hi\r\nBcc: victim@example.org\r\n\r\n<script>alert('x')</script>\u202egnp.exe\u2028X-Evil: 1",
        link="https://evil.test/post",
        body="<script>alert(2)</script><img src=https://tracker.test/p.gif onerror=alert(3)>"
        + "<p>"
        + "long words " * 200_000
        + "</p>",
        author="Mallory\r\nX-Injected: yes",
    )
    build_pending(store, settings, later(1), due_only=False)
    assert send_pending(store, sender, settings, lambda: later(1)).sent == 1
    (received,) = smtp_server.received()
    assert received.rcpt_tos == ("reader@example.org",)
    assert smtp_server.rcpt_seen == ["reader@example.org"]
    message = received.parse()
    assert "\n" not in message["Subject"] and message.get("Bcc") is None
    assert message.get("X-Evil") is None and message.get("X-Injected") is None
    text, html = parts(message)
    assert "<script" not in html and "onerror" not in html and "<img" not in html
    assert "&lt;script&gt;" in html  # shown as text
    assert "tracker.test" not in html + text  # no remote images in digests
    for part in (text, html, message["Subject"]):
        assert "\u202e" not in part and "\u2028" not in part
    assert len(received.data) < 200_000  # a huge entry is an excerpt, not the whole body
    assert "\nBcc:" not in text and "\nX-Evil" not in text


def test_due_only_builds_for_those_whose_time_has_come(env, smtp_server) -> None:
    settings, store, _sender = env
    alpha, _ = two_blogs(store)
    daily = subscribe(store, settings, "daily@example.org", cadence="daily")
    weekly = subscribe(store, settings, "weekly@example.org", cadence="weekly")
    add_entry(store, alpha, "Post")
    # Confirmed at T0 (Monday 08:00): the next daily slot is Tuesday 07:00, weekly next Monday.
    assert build_pending(store, settings, later(20), due_only=True).built == 0
    report = build_pending(store, settings, later(24), due_only=True)
    assert report.built == 1 and report.not_due == 1
    assert rows(store, "SELECT subscriber_id FROM digests") == [(daily.id,)]
    # Three days of downtime: one catch-up digest for the daily reader, none in between.
    add_entry(store, alpha, "Another")
    assert build_pending(store, settings, later(24 * 4), due_only=True).built == 1
    assert build_pending(store, settings, later(24 * 4 + 1), due_only=True).built == 0
    # Without --due everyone confirmed gets what is new, whatever the cadence.
    assert build_pending(store, settings, later(24 * 4 + 2), due_only=False).built == 1
    assert rows(store, "SELECT count(*) FROM digests WHERE subscriber_id = ?", weekly.id) == [(1,)]


def test_preview_moves_no_watermark_and_stores_no_digest(env) -> None:
    settings, store, _ = env
    alpha, _ = two_blogs(store)
    subscribe(store, settings, "reader@example.org")
    add_entry(store, alpha, "Post to preview")
    before = rows(store, "SELECT watermark, last_digest_at FROM subscribers")
    message = preview(store, settings, later(1), email="READER@example.org")
    assert message is not None and "Post to preview" in message.text
    assert message.html is not None and "Post to preview" in message.html
    assert rows(store, "SELECT watermark, last_digest_at FROM subscribers") == before
    assert rows(store, "SELECT count(*) FROM digests") == [(0,)]
    everything = preview(store, settings, later(1))
    assert everything is not None and "Post to preview" in everything.text


def test_unsubscribing_cancels_pending_digests(env, smtp_server) -> None:
    settings, store, sender = env
    alpha, _ = two_blogs(store)
    reader = subscribe(store, settings, "reader@example.org")
    add_entry(store, alpha, "Post")
    build_pending(store, settings, later(1), due_only=False)
    unsubscribe_id(store, reader.id, later(1))
    assert send_pending(store, sender, settings, lambda: later(1)).sent == 0
    assert smtp_server.received() == []
    assert rows(store, "SELECT status FROM digests") == [("cancelled",)]


# --- the HTML part in a real browser ------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]


def seed_digest(tmp_path: Path):
    """A digest of the bundled seed feeds (both blogs, a cross-post among them)."""
    import asyncio
    from dataclasses import replace

    from aggregator.config import DEFAULT_CONFIG, load_settings
    from aggregator.pipeline import poll_feeds
    from aggregator.sources import sync_configured_feeds

    settings = load_settings(DEFAULT_CONFIG, env={})
    settings = replace(
        settings,
        database=tmp_path / "seed.sqlite3",
        web=replace(settings.web, base_url="https://digest.example.org"),
        digest=replace(settings.digest, max_entries_per_source=4),
    )
    store = Store.open(settings.database)
    sync_configured_feeds(store, settings, T0)
    asyncio.run(poll_feeds(settings, store, clock=lambda: T0))
    # Pretend the last six posts of each blog arrived since the reader's last digest.
    with store.write() as db:
        db.execute(
            "UPDATE feeds SET backlog_seq = (SELECT max(id) - 6 FROM entries e WHERE e.feed_id = feeds.id)"
        )
    subscribe(store, settings, "reader@example.org")
    with store.write() as db:
        db.execute("UPDATE subscribers SET watermark = 0")
    message = preview(store, settings, T0, email="reader@example.org")
    store.close()
    assert message is not None and message.html is not None
    return message


@pytest.mark.browser
def test_digest_html_reads_well_in_chromium(tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make browser)")
    message = seed_digest(tmp_path)
    html = message.html or ""
    assert "Also on" in html and "more from" in html  # a cross-post and a capped source
    page_file = tmp_path / "digest.html"
    page_file.write_text(html, encoding="utf-8")
    shots = {}
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for name, width, scheme in (
                ("digest", 760, "light"),
                ("digest-dark", 760, "dark"),
                ("digest-phone", 375, "light"),
            ):
                context = browser.new_context(
                    viewport={"width": width, "height": 900},
                    color_scheme=scheme,
                    java_script_enabled=False,  # as in a mail client
                )
                page = context.new_page()
                requests: list[str] = []
                page.on("request", lambda request, seen=requests: seen.append(request.url))
                page.goto(page_file.as_uri())
                box = page.locator(".card").bounding_box()
                assert box is not None and box["width"] <= width
                assert all(url.startswith("file:") for url in requests)  # nothing remote loads
                shots[name] = tmp_path / f"{name}.png"
                png = page.screenshot(path=str(shots[name]), full_page=True)
                # A full-page shot as wide as the window: nothing scrolls sideways.
                assert int.from_bytes(png[16:20], "big") == width
                context.close()
        finally:
            browser.close()
    if os.environ.get("AGGREGATOR_WRITE_DOCS"):
        (DOCS / "screenshots").mkdir(parents=True, exist_ok=True)
        for name, shot in shots.items():
            (DOCS / "screenshots" / f"{name}.png").write_bytes(shot.read_bytes())
        (DOCS / "digest-example.txt").write_text(
            f"Subject: {message.subject}\n\n{message.text}", encoding="utf-8"
        )


def test_readers_of_the_same_stories_each_get_their_own_links(env, smtp_server) -> None:
    settings, store, sender = env
    alpha, _ = two_blogs(store)
    first = subscribe(store, settings, "first@example.org")
    second = subscribe(store, settings, "second@example.org")
    add_entry(store, alpha, "Shared story", link="https://alpha.test/shared")
    build_pending(store, settings, later(1), due_only=False)
    assert send_pending(store, sender, settings, lambda: later(1)).sent == 2
    links = links_for(store, settings)
    by_rcpt = {r.rcpt_tos[0]: r.parse() for r in smtp_server.received()}
    for subscriber in (first, second):
        message = by_rcpt[subscriber.email]
        text, html = parts(message)
        assert "Shared story" in text and "Shared story" in html
        urls = re.findall(r"https://news\.example\.org/\S+", text)
        assert urls and ".invalid" not in text + html
        for url in urls:
            query = parse_qs(urlsplit(url).query)
            if "/unsubscribe" in url:
                token = query["token"][0]
                assert links.verify(PURPOSE_UNSUBSCRIBE, token, now=later(2)) == subscriber.id
                assert url.replace("&", "&amp;") in html or url in html
        header_url = re.findall(r"<([^>]+)>", message["List-Unsubscribe"])[0]
        assert header_url in text


UNSUBSCRIBE_ELSEWHERE = """
import sys
from datetime import UTC, datetime
from aggregator.store import Store
from aggregator.subscriptions import unsubscribe_id
store = Store.open(sys.argv[1])
unsubscribe_id(store, int(sys.argv[2]), datetime.now(UTC))
store.close()
"""


def test_a_digest_cancelled_while_the_run_sends_others_is_not_sent(env, smtp_server) -> None:
    """Another process unsubscribes B while the run is handing A's digest to the relay
    (the run read both digests before): B's is not sent; the run reads each digest
    again just before sending it."""
    import subprocess
    import sys

    settings, store, sender = env
    alpha, _ = two_blogs(store)
    subscribe(store, settings, "a@example.org", cadence="daily")
    leaving = subscribe(store, settings, "b@example.org", cadence="daily")
    add_entry(store, alpha, "News", published=later(1))
    assert build_pending(store, settings, later(2), due_only=False).built == 2

    def unsubscribe_b(item):
        if item.rcpt_tos == ("a@example.org",):
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    UNSUBSCRIBE_ELSEWHERE,
                    str(settings.database),
                    str(leaving.id),
                ],
                check=True,
                timeout=60,
            )
        return None  # accept the message

    smtp_server.reject_data = unsubscribe_b
    report = send_pending(store, sender, settings, lambda: later(2))
    assert [r.rcpt_tos for r in smtp_server.received()] == [("a@example.org",)]
    assert report.sent == 1
    assert rows(store, "SELECT status FROM digests ORDER BY id") == [("sent",), ("cancelled",)]


def test_a_message_the_relay_took_is_recorded_once_the_lock_goes(tmp_path, smtp_server) -> None:
    """Another process holds the write lock past the busy wait right after the relay took
    a digest: the run waits to record it instead of failing, so the next run does not
    send it again (it used to: the digest stayed pending)."""
    import subprocess
    import sys
    import threading

    from lockkit import HOLD_WRITE_LOCK

    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    store = Store.open(settings.database, pragmas={"busy_timeout": 200})
    sender = SmtpSender(SmtpSettings(host="127.0.0.1", port=smtp_server.port, security="none"))
    alpha, _ = two_blogs(store)
    subscribe(store, settings, "v1@example.org", cadence="daily")
    add_entry(store, alpha, "News", published=later(1))
    assert build_pending(store, settings, later(2), due_only=False).built == 1
    holders = []

    def lock_after_delivery(item):
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_WRITE_LOCK, str(settings.database)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        holders.append(holder)
        threading.Timer(1.0, holder.communicate, kwargs={"input": b""}).start()
        return None

    smtp_server.reject_data = lock_after_delivery
    try:
        assert send_pending(store, sender, settings, lambda: later(2)).sent == 1
        smtp_server.reject_data = None
        assert send_pending(store, sender, settings, lambda: later(3)).sent == 0
    finally:
        for holder in holders:
            holder.wait(timeout=30)
        sender.close()
    assert len(smtp_server.received()) == 1
    assert rows(store, "SELECT status FROM digests") == [("sent",)]
    store.close()
