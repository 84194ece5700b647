"""Mails read cleanly in more than one parser: folded Subject, parts, the shape of
excerpts (lists, headings), the confirmation's action, the welcome and the first digest.

Each message is parsed twice: by Python's ``email`` package and by ``fast-mail-parser``
(the Rust ``mailparse`` crate), which shares no code with it.
"""

from __future__ import annotations

import email
import email.policy
import re
from datetime import timedelta
from pathlib import Path

import fast_mail_parser
import pytest
from digestkit import T0, add_entry, add_feed, later, make_settings, mark_backlog

from aggregator.digests.build import build_pending
from aggregator.digests.render import text_blocks
from aggregator.digests.send import send_welcomes
from aggregator.mail import SMTP_POLICY, MaildirSender, OutgoingMessage, build_email
from aggregator.sanitize import excerpt_blocks
from aggregator.store import Store
from aggregator.subscriptions import (
    add_by_operator,
    confirmation_message,
    links_for,
)

GOLDEN = Path(__file__).parent / "data" / "digest"
LONG_LINK = (
    "https://alpha.test/2026/11/a-very-long-permalink-that-no-mail-client-should-ever-break-"
    + ("x" * 40)
)
BODY = (
    "<p>Working together across institutions is hard.</p>"
    "<h3>What helped</h3>"
    "<ul><li>participation in joint projects</li><li>new collaborations</li>"
    "<li>a shared calendar</li></ul>"
    "<p>More in the full post.</p>"
)


def both_parsers(raw: bytes) -> tuple[email.message.EmailMessage, object]:
    std = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(std, email.message.EmailMessage)
    return std, fast_mail_parser.parse_email(raw)


def raw_of(message: OutgoingMessage) -> bytes:
    return build_email(message).as_bytes(policy=SMTP_POLICY)


@pytest.mark.parametrize(
    "subject",
    [
        "3 new posts from Alpha Blog and Beta Notes",
        "12 new posts from Learning Layers project blog, Cluster Performance Blog and 3 more "
        "sources",
        "Grüße aus Ærø: 14 new posts from Learning Layers project blog and Cluster Performance",
        "x" * 120,
    ],
)
def test_subject_is_folded_only_where_needed_and_reads_the_same_in_two_parsers(
    subject: str,
) -> None:
    message = OutgoingMessage(
        message_id="<m-1@news.example.org>",
        sender="Blog digest <digest@news.example.org>",
        recipient="reader@example.org",
        subject=subject,
        text="Hello",
        html="<p>Hello</p>",
        date=T0,
        headers={},
    )
    raw = raw_of(message)
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    subject_line = next(line for line in head.split("\r\n") if line.startswith("Subject:"))
    assert subject_line != "Subject:" and subject_line.startswith("Subject: ")  # no empty fold
    if len(f"Subject: {subject}") <= 78 and subject.isascii():
        assert subject_line == f"Subject: {subject}"  # short: not folded at all
    std, other = both_parsers(raw)
    assert str(std["Subject"]) == subject
    assert other.subject == subject  # type: ignore[attr-defined]
    assert std.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in std.iter_parts()] == ["text/plain", "text/html"]
    assert [t.strip() for t in other.text_plain] == ["Hello"]  # type: ignore[attr-defined]
    assert [t.strip() for t in other.text_html] == ["<p>Hello</p>"]  # type: ignore[attr-defined]


def test_excerpt_blocks_keep_lists_headings_and_paragraphs() -> None:
    blocks = excerpt_blocks(BODY, 280)
    assert blocks == [
        ("p", "Working together across institutions is hard."),
        ("h", "What helped"),
        ("li", "participation in joint projects"),
        ("li", "new collaborations"),
        ("li", "a shared calendar"),
        ("p", "More in the full post."),
    ]
    assert text_blocks(tuple(blocks)).splitlines() == [
        "Working together across institutions is hard.",
        "",
        "What helped",
        "",
        "- participation in joint projects",
        "- new collaborations",
        "- a shared calendar",
        "",
        "More in the full post.",
    ]
    cut = excerpt_blocks(BODY, 60)
    assert cut[-1][1].endswith("…") and sum(len(t) for _, t in cut) <= 61


def _mask(text: str) -> str:
    return re.sub(r"token=[A-Za-z0-9._~%-]+", "token=TOKEN", text)


@pytest.fixture
def store_and_settings(tmp_path: Path):
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    yield store, settings
    store.close()


def test_golden_plain_text_digest_with_a_list_a_heading_and_a_long_link(
    store_and_settings, tmp_path: Path
) -> None:
    store, settings = store_and_settings
    alpha = add_feed(store, "Alpha Blog")
    add_entry(store, alpha, "Seed", published=T0 - timedelta(days=30))
    add_by_operator(store, settings, links_for(store, settings), email="reader@example.org", now=T0)
    add_entry(store, alpha, "Working together", link=LONG_LINK, body=BODY, published=later(1))
    assert build_pending(store, settings, later(2), due_only=False).built == 1
    from aggregator.digests.send import send_pending

    outbox = MaildirSender(tmp_path / "outbox")
    send_welcomes(store, outbox, settings, later(2))  # not counted below: another mail
    assert send_pending(store, outbox, settings, lambda: later(2)).sent == 1
    raws = [p.read_bytes() for p in sorted((tmp_path / "outbox" / "new").iterdir())]
    digests = [r for r in raws if b"Subject: 1 new post" in r]
    (raw,) = digests
    std, other = both_parsers(raw)
    text = std.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert other.text_plain[0].replace("\r\n", "\n").strip() == text.strip()  # type: ignore[attr-defined]
    assert LONG_LINK in text.splitlines() or f"Read: {LONG_LINK}" in text.splitlines()
    golden = GOLDEN / "list-heading-long-link.txt"
    actual = _mask(text)
    assert actual == golden.read_text(encoding="utf-8")
    html = std.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert re.search(r"<li[^>]*>participation in joint projects</li>", html)
    assert "What helped" in html
    # The web copy of the same digest keeps the list too.
    from urllib.parse import urlsplit

    from starlette.testclient import TestClient

    from aggregator.store import digests as digest_rows
    from aggregator.web import create_app

    (sent,) = digest_rows.for_subscriber(store.db, 1, limit=5)
    url = urlsplit(links_for(store, settings).digest(sent.id, later(2)))
    with TestClient(create_app(settings, store=store)) as client:
        page = client.get(f"{url.path}?{url.query}")
    assert page.status_code == 200
    assert re.search(r"<li[^>]*>participation in joint projects</li>", page.text)


def test_confirmation_mail_leads_with_its_action(store_and_settings) -> None:
    store, settings = store_and_settings
    links = links_for(store, settings)
    message = confirmation_message(settings, links, 7, "new@example.org", T0)
    std, _ = both_parsers(raw_of(message))
    text = std.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    lines = [line for line in text.splitlines() if line.strip()]
    url = next(line for line in lines if "/subscribe/confirm?token=" in line)
    assert url == url.strip() and url.startswith("https://")  # the URL alone on its line
    assert lines.index(url) <= 2  # right after the heading and one instruction
    html = std.get_body(("html",)).get_content()  # type: ignore[union-attr]
    button = re.search(r'<a class="button"[^>]*href="([^"]+)"[^>]*>Confirm the subscription', html)
    if button is None:  # css-inline may order attributes differently
        button = re.search(r'<a [^>]*class="button"[^>]*>Confirm the subscription', html)
    assert button is not None
    assert html.index("Confirm the subscription") < html.index("Someone, hopefully you")


def test_welcome_mail_for_operator_added_subscriber_lists_recent_posts_once(
    store_and_settings, tmp_path: Path
) -> None:
    store, settings = store_and_settings
    alpha = add_feed(store, "Alpha Blog")
    for n in range(8):
        add_entry(store, alpha, f"Post {n}", published=T0 - timedelta(days=n))
    _, message = add_by_operator(
        store, settings, links_for(store, settings), email="new@example.org", now=T0
    )
    assert message is None
    outbox = MaildirSender(tmp_path / "outbox")
    assert send_welcomes(store, outbox, settings, T0) == []
    send_welcomes(store, outbox, settings, T0)  # owed once: nothing more
    (path,) = (tmp_path / "outbox" / "new").iterdir()
    std, other = both_parsers(path.read_bytes())
    assert std["Subject"] == "Welcome to the Blog digest" == other.subject  # type: ignore[attr-defined]
    text = std.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "RECENT POSTS" in text and "not news" in text
    assert "Weekly, on Mondays at 07:00 UTC" in text
    assert [f"Post {n}" in text for n in range(8)] == [True] * 5 + [False] * 3
    assert "/preferences?token=" in text and "/unsubscribe?token=" in text


def _daily_subscriber(store, settings, email: str):
    """A daily subscriber the operator adds, whose first digest may come at once."""
    subscriber, _ = add_by_operator(
        store,
        settings,
        links_for(store, settings),
        email=email,
        cadence="daily",
        first_digest_now=True,
        now=T0,
    )
    return subscriber


def _welcome_text(store, settings, outbox: Path, now) -> str:
    """Send the welcomes owed (none may fail) and return the one mail's plain text."""
    assert send_welcomes(store, MaildirSender(outbox), settings, now) == []
    (path,) = (outbox / "new").iterdir()
    std, _ = both_parsers(path.read_bytes())
    return std.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def _carried_titles(store, subscriber_id: int) -> list[tuple[str]]:
    return store.db.execute(
        "SELECT e.title FROM digest_entries de JOIN entries e ON e.id = de.entry_id "
        "JOIN digests d ON d.id = de.digest_id WHERE d.subscriber_id = ?",
        [subscriber_id],
    ).fetchall()


def test_a_late_welcome_lists_nothing_the_first_digest_carries(
    store_and_settings, tmp_path: Path
) -> None:
    """Posts stored after the address was confirmed are the first digest's news: a
    welcome sent after them (its relay was down, or the poll ran first) leaves them out."""
    store, settings = store_and_settings
    alpha = add_feed(store, "Alpha Blog")
    add_entry(store, alpha, "Before joining", published=T0 - timedelta(days=2))
    subscriber = _daily_subscriber(store, settings, "late@example.org")
    add_entry(store, alpha, "After joining", published=T0 + timedelta(hours=1))
    welcome = _welcome_text(store, settings, tmp_path / "outbox", T0 + timedelta(hours=2))
    assert "Before joining" in welcome and "After joining" not in welcome
    assert build_pending(store, settings, T0 + timedelta(days=1), due_only=False).built == 1
    assert _carried_titles(store, subscriber.id) == [("After joining",)]


def test_a_welcome_owed_past_a_digest_leaves_out_what_the_digest_carried(
    store_and_settings, tmp_path: Path
) -> None:
    """The relay was down when the address was added: the welcome is owed, and a digest
    goes out before it (the digest moves the watermark). The welcome, retried then,
    does not list that digest's posts again."""
    from aggregator.store import subscribers as subscriber_rows

    store, settings = store_and_settings
    alpha = add_feed(store, "Alpha Blog")
    add_entry(store, alpha, "Before joining", published=T0 - timedelta(days=2))
    subscriber = _daily_subscriber(store, settings, "owed@example.org")
    add_entry(store, alpha, "In the digest", published=T0 + timedelta(hours=1))
    assert build_pending(store, settings, T0 + timedelta(days=1), due_only=False).built == 1
    moved = subscriber_rows.get(store.db, subscriber.id)
    assert moved is not None and moved.watermark > subscriber.watermark
    welcome = _welcome_text(store, settings, tmp_path / "outbox", T0 + timedelta(days=1))
    assert "Before joining" in welcome and "In the digest" not in welcome


def test_first_digest_on_a_fresh_install_holds_one_period_of_the_backlog(
    store_and_settings, tmp_path: Path
) -> None:
    """Someone who joined before anything was stored: of the first poll's posts, those
    of the last cadence period go in the first digest, older ones in the welcome (no
    digest carries them), none in both."""
    store, settings = store_and_settings
    subscriber = _daily_subscriber(store, settings, "early@example.org")
    assert subscriber.watermark == 0
    alpha = add_feed(store, "Alpha Blog", backlog=True)
    add_entry(store, alpha, "Archive post", published=T0 - timedelta(days=400))
    add_entry(store, alpha, "Last week", published=T0 - timedelta(days=5))
    add_entry(store, alpha, "Yesterday", published=T0 - timedelta(hours=20))
    mark_backlog(store, alpha)
    welcome = _welcome_text(store, settings, tmp_path / "outbox", T0)
    assert "Archive post" in welcome and "Last week" in welcome
    assert "Yesterday" not in welcome
    report = build_pending(store, settings, T0, due_only=False)
    assert report.built == 1
    from aggregator.store import digests as digest_rows

    (digest,) = digest_rows.for_subscriber(store.db, subscriber.id) or [None]
    assert digest is None  # not sent yet; look at what was built instead
    assert _carried_titles(store, subscriber.id) == [("Yesterday",)]


def test_first_digest_waits_for_news_when_the_backlog_is_old(store_and_settings) -> None:
    store, settings = store_and_settings
    add_by_operator(
        store,
        settings,
        links_for(store, settings),
        email="early@example.org",
        cadence="weekly",
        first_digest_now=True,
        now=T0,
    )
    alpha = add_feed(store, "Alpha Blog", backlog=True)
    add_entry(store, alpha, "Archive post", published=T0 - timedelta(days=400))
    mark_backlog(store, alpha)
    assert build_pending(store, settings, T0, due_only=False).built == 0
    add_entry(store, alpha, "News", published=T0 + timedelta(hours=1))
    assert build_pending(store, settings, later(1), due_only=False).built == 1
