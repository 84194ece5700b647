"""Rich content on every surface: enclosures, Media RSS, podcast tags, embedded players,
images and figures. Golden parse cases per format, the embed-to-link rule
per host, hostile variants, and one podcast feed polled end to end into the entry page,
the card, both Atom feeds and both parts of a digest."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest
from feedserver import FeedServer
from starlette.testclient import TestClient
from webdata import make_settings

from aggregator.digests.preview import preview
from aggregator.limits import ParseLimits
from aggregator.media import (
    MAX_MEDIA_PER_ENTRY,
    EmbedLink,
    embed_link,
    format_size,
    media_label,
    media_marker,
    parse_duration,
    parse_length,
)
from aggregator.models import FeedSource, MediaItem
from aggregator.parse import parse_feed
from aggregator.pipeline import poll_feeds
from aggregator.prepare import prepare_feed
from aggregator.sanitize import sanitize_html
from aggregator.sources import add_source
from aggregator.store import Store
from aggregator.web import create_app

URL = "https://pod.example/feed.xml"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ITUNES = 'xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"'
MEDIA = 'xmlns:media="http://search.yahoo.com/mrss/"'


def rss_doc(item_xml: str, *, namespaces: str = f"{ITUNES} {MEDIA}") -> bytes:
    return (
        f'<?xml version="1.0"?><rss version="2.0" {namespaces}><channel><title>Pod</title>'
        f"<link>https://pod.example/</link><item><title>Episode</title>"
        f"<link>https://pod.example/ep</link><guid>ep</guid>"
        f"<pubDate>Fri, 27 Nov 2026 10:00:00 GMT</pubDate>{item_xml}</item></channel></rss>"
    ).encode()


def media_of(document: bytes, url: str = URL) -> tuple[MediaItem, ...]:
    (entry,) = parse_feed(document, url=url).entries
    return entry.media


# --- golden parse cases, one per format ---------------------------------------------------


def test_rss_enclosure() -> None:
    """RSS 2.0 <enclosure url length type>."""
    assert media_of(
        rss_doc(
            '<enclosure url="https://cdn.example/042.mp3" length="40632320" type="audio/mpeg"/>'
        )
    ) == (
        MediaItem(
            "https://cdn.example/042.mp3", "enclosure", "audio/mpeg", "audio", 40632320, None
        ),
    )


def test_rss_enclosure_relative_url_resolves_against_the_entry_link() -> None:
    (item,) = media_of(rss_doc('<enclosure url="/media/042.mp3" type="audio/mpeg"/>'))
    assert item.url == "https://pod.example/media/042.mp3"


def test_atom_enclosure_link() -> None:
    """RFC 4287 §4.2.7.2: <link rel="enclosure" href type length>."""
    document = (
        b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>A</title>'
        b"<id>urn:a</id><updated>2026-11-27T10:00:00Z</updated><entry><id>urn:e</id>"
        b"<title>Clip</title><updated>2026-11-27T10:00:00Z</updated>"
        b'<link rel="alternate" href="https://a.example/clip"/>'
        b'<link rel="enclosure" type="video/mp4" length="1234567" href="https://a.example/clip.mp4"/>'
        b"</entry></feed>"
    )
    assert media_of(document) == (
        MediaItem("https://a.example/clip.mp4", "enclosure", "video/mp4", "video", 1234567, None),
    )


def test_media_rss_group_with_thumbnail_and_duplicate_enclosure() -> None:
    """Media RSS: media:group of media:content renditions and a media:thumbnail; the
    enclosure repeated as media:content is one item that takes both sources' fields."""
    items = media_of(
        rss_doc(
            '<enclosure url="https://cdn.example/042.mp3" type="audio/mpeg" length="0"/>'
            "<media:group>"
            '<media:content url="https://cdn.example/042.mp3" fileSize="40632320" duration="2530"/>'
            '<media:content url="https://cdn.example/042.ogg" type="audio/ogg" medium="audio"/>'
            '<media:thumbnail url="https://cdn.example/042.jpg" width="300" height="300"/>'
            "</media:group>"
        )
    )
    assert items == (
        MediaItem(
            "https://cdn.example/042.mp3", "enclosure", "audio/mpeg", "audio", 40632320, 2530
        ),
        MediaItem("https://cdn.example/042.ogg", "enclosure", "audio/ogg", "audio", None, None),
        MediaItem("https://cdn.example/042.jpg", "thumbnail", "image/jpeg", "image", None, None),
    )


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("01:02:03", 3723), ("42:10", 2530), ("2530", 2530), (" 0:00:59 ", 59), ("7.5", 7)],
)
def test_itunes_duration_in_its_three_spellings(written: str, seconds: int) -> None:
    """Apple: HH:MM:SS, MM:SS or seconds; with itunes:image and itunes:episode."""
    (episode, image) = media_of(
        rss_doc(
            '<enclosure url="https://cdn.example/1.mp3" type="audio/mpeg"/>'
            f"<itunes:duration>{written}</itunes:duration><itunes:episode>12</itunes:episode>"
            '<itunes:image href="https://cdn.example/cover.png"/>'
        )
    )
    assert (episode.duration, episode.episode) == (seconds, 12)
    assert (image.role, image.url, image.medium) == (
        "thumbnail",
        "https://cdn.example/cover.png",
        "image",
    )


def test_json_feed_attachments() -> None:
    document = (
        b'{"version": "https://jsonfeed.org/version/1.1", "title": "J", "items": [{"id": "1",'
        b' "url": "https://j.example/1", "content_text": "hi", "attachments": [{"url":'
        b' "https://j.example/1.m4a", "mime_type": "audio/x-m4a", "size_in_bytes": 900,'
        b' "duration_in_seconds": 61}]}]}'
    )
    assert media_of(document) == (
        MediaItem("https://j.example/1.m4a", "enclosure", "audio/x-m4a", "audio", 900, 61),
    )


def test_a_blog_post_without_media_has_none() -> None:
    assert media_of(rss_doc("<description>Just words.</description>")) == ()


# --- hostile variants ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "java\tscript:alert(1)",
        "data:audio/mpeg;base64,AAAA",
        "vbscript:x",
        "file:///etc/passwd",
        "ftp://cdn.example/a.mp3",
        "https://" + "a" * 3000 + ".example/a.mp3",
    ],
)
def test_media_urls_other_than_http_are_dropped(url: str) -> None:
    escaped = url.replace("&", "&amp;").replace("\t", "&#9;")
    document = rss_doc(
        f'<enclosure url="{escaped}" type="audio/mpeg"/>'
        f'<media:content url="{escaped}"/><media:thumbnail url="{escaped}"/>'
        f'<itunes:image href="{escaped}"/>'
    )
    assert media_of(document) == ()


@pytest.mark.parametrize(
    ("length", "duration"),
    [
        ("-5", "-1"),
        ("99999999999999999999999", "99999999:00:00"),
        ("1e9", "forever"),
        ("0x10", "1:2:3:4"),
        ("", ""),
        ("12 MB", "NaN"),
        ("\u0663\u0663", "99:99:99"),  # Arabic-Indic digits; no clock reads 99 minutes
        ("\uff11\uff12", "1:75"),  # full-width digits; 75 seconds is no clock reading
    ],
)
def test_absurd_sizes_and_durations_are_unknown(length: str, duration: str) -> None:
    (item,) = media_of(
        rss_doc(
            f'<enclosure url="https://cdn.example/a.mp3" length="{length}" type="audio/mpeg"/>'
            f"<itunes:duration>{duration}</itunes:duration>"
        )
    )
    assert (item.length, item.duration) == (None, None)
    assert parse_length(10**13) is None and parse_duration(10**9) is None


def test_bad_mime_type_falls_back_to_the_file_name() -> None:
    (item,) = media_of(rss_doc('<enclosure url="https://cdn.example/a.mp3" type="<b>evil"/>'))
    assert (item.mime_type, item.medium) == ("audio/mpeg", "audio")


def test_thousands_of_media_items_are_capped_with_a_warning() -> None:
    contents = "".join(f'<media:content url="https://cdn.example/{n}.mp4"/>' for n in range(5000))
    started = time.perf_counter()
    feed = parse_feed(rss_doc(contents), url=URL)
    elapsed = time.perf_counter() - started
    (entry,) = feed.entries
    assert len(entry.media) == MAX_MEDIA_PER_ENTRY
    assert entry.media[0].url == "https://cdn.example/0.mp4"
    assert any("5000 media items, over the cap of 20" in w for w in feed.warnings)
    assert elapsed < 5


def test_media_count_in_the_content_hash_only_when_present() -> None:
    """An entry without media keeps the digest it had; gaining an enclosure updates it."""
    plain = prepare_feed(rss_doc(""), url=URL, headers={}, limits=_limits(), now=NOW)
    with_audio = prepare_feed(
        rss_doc('<enclosure url="https://cdn.example/a.mp3"/>'),
        url=URL,
        headers={},
        limits=_limits(),
        now=NOW,
    )
    assert plain.records[0].content_hash != with_audio.records[0].content_hash
    assert plain.records[0].key == with_audio.records[0].key


def _limits() -> ParseLimits:
    return ParseLimits()


# --- embedded players become links ----------------------------------------------------------

EMBEDS = [
    (
        "https://www.youtube.com/embed/dQw4w9WgXcQ?feature=oembed",
        EmbedLink(
            "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
            "Watch on YouTube: https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        ),
    ),
    (
        "https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ",
        EmbedLink(
            "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
            "Watch on YouTube: https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        ),
    ),
    (
        "https://www.youtube.com/embed/videoseries?list=PL590L5WQmH8fJ54F369BLDSqIwcs-TCfs",
        EmbedLink(
            "https://www.youtube.com/playlist?list=PL590L5WQmH8fJ54F369BLDSqIwcs-TCfs",
            "Watch on YouTube: "
            "https://www.youtube.com/playlist?list=PL590L5WQmH8fJ54F369BLDSqIwcs-TCfs",
        ),
    ),
    (
        "https://player.vimeo.com/video/76979871?h=8272103f6e",
        EmbedLink("https://vimeo.com/76979871", "Watch on Vimeo: https://vimeo.com/76979871"),
    ),
    (
        "https://framatube.org/videos/embed/9c9de5e8-0a1e-484a-b099-e80766180a6d",
        EmbedLink(
            "https://framatube.org/videos/watch/9c9de5e8-0a1e-484a-b099-e80766180a6d",
            "Watch on framatube.org: "
            "https://framatube.org/videos/watch/9c9de5e8-0a1e-484a-b099-e80766180a6d",
        ),
    ),
    (
        "https://www.dailymotion.com/embed/video/x7tgad0",
        EmbedLink(
            "https://www.dailymotion.com/video/x7tgad0",
            "Watch on Dailymotion: https://www.dailymotion.com/video/x7tgad0",
        ),
    ),
    (
        "https://geo.dailymotion.com/player.html?video=x7tgad0",
        EmbedLink(
            "https://www.dailymotion.com/video/x7tgad0",
            "Watch on Dailymotion: https://www.dailymotion.com/video/x7tgad0",
        ),
    ),
    (  # a user part must not lend the label another site's name
        "https://www.youtube.com@evil.example/videos/embed/abc",
        EmbedLink(
            "https://www.youtube.com@evil.example/videos/embed/abc",
            "Embedded content: https://www.youtube.com@evil.example/videos/embed/abc",
        ),
    ),
    (
        "https://maps.example/embed?pb=1",
        EmbedLink(
            "https://maps.example/embed?pb=1", "Embedded content: https://maps.example/embed?pb=1"
        ),
    ),
]


@pytest.mark.parametrize(("src", "expected"), EMBEDS, ids=[e[1].label[:20] for e in EMBEDS])
def test_embed_link_for_each_host_and_the_generic_case(src: str, expected: EmbedLink) -> None:
    assert embed_link(src) == expected
    html = f'<iframe src="{src.replace("&", "&amp;")}"></iframe>'
    escaped = expected.url.replace("&", "&amp;")
    assert sanitize_html(html, base_url=URL) == (
        f'<p><a href="{escaped}" rel="nofollow noopener noreferrer">'
        f"{expected.label.replace('&', '&amp;')}</a></p>"
    )


def test_wordpress_embed_figure_keeps_its_caption_and_gains_the_link() -> None:
    html = (
        '<figure class="wp-block-embed is-type-video"><div class="wp-block-embed__wrapper">'
        '<iframe title="Talk" width="560" height="315" src="https://www.youtube.com/embed/ID_12345'
        '?feature=oembed" allowfullscreen></iframe></div><figcaption>The talk</figcaption></figure>'
    )
    assert sanitize_html(html, base_url=URL) == (
        '<figure><div><p><a href="https://www.youtube.com/watch?v=ID_12345" '
        'rel="nofollow noopener noreferrer">Watch on YouTube: '
        "https://www.youtube.com/watch?v=ID_12345</a></p></div>"
        "<figcaption>The talk</figcaption></figure>"
    )


@pytest.mark.parametrize(
    ("html", "expected_link"),
    [
        ('<video controls src="/v/clip.mp4">No video</video>', "Video: https://pod.example/v/clip.mp4"),
        ('<video><source src="https://v.example/c.webm" type="video/webm"></video>',
         "Video: https://v.example/c.webm"),
        ('<audio controls><source src="https://a.example/s.ogg"></audio>',
         "Audio: https://a.example/s.ogg"),
        ('<object data="https://o.example/movie.swf"></object>',
         "Embedded content: https://o.example/movie.swf"),
        ('<object><param name="movie" value="https://www.youtube.com/v/ID_12345"></object>',
         "Watch on YouTube: https://www.youtube.com/watch?v=ID_12345"),
        ('<embed src="//player.vimeo.com/video/123">', "Watch on Vimeo: https://vimeo.com/123"),
    ],
)  # fmt: skip
def test_every_kind_of_embed_leaves_a_link(html: str, expected_link: str) -> None:
    cleaned = sanitize_html(html, base_url=URL)
    assert expected_link in cleaned
    assert not re.search(r"<(?:video|audio|iframe|object|embed|source)\b", cleaned)
    assert sanitize_html(cleaned, base_url=URL) == cleaned


@pytest.mark.parametrize(
    "src",
    [
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:x",
        " jav&#x09;ascript:alert(1)",
        "about:blank",
    ],
)
def test_embeds_of_unsafe_urls_leave_nothing(src: str) -> None:
    cleaned = sanitize_html(f'<iframe src="{src}"></iframe><p>after</p>', base_url=URL)
    assert cleaned == "<p>after</p>"


def test_embed_scan_is_linear_on_hostile_input() -> None:
    hostile = [
        ('<iframe "' + "a" * 10) * 40_000,
        "<video>" * 70_000,
        '<iframe src="https://a.example/">' * 30_000,
    ]
    for html in hostile:
        started = time.perf_counter()
        sanitize_html(html)
        assert time.perf_counter() - started < 5


# --- images and figures --------------------------------------------------------------------


def test_images_keep_alt_load_lazily_and_keep_an_http_srcset() -> None:
    html = (
        '<figure><img src="a.jpg" alt="A cat" srcset="a.jpg 1x, /b.jpg 2x" loading="eager">'
        "<figcaption>Cat</figcaption></figure>"
    )
    assert sanitize_html(html, base_url="https://i.example/p/") == (
        '<figure><img src="https://i.example/p/a.jpg" alt="A cat" '
        'srcset="https://i.example/p/a.jpg 1x, https://i.example/b.jpg 2x" loading="lazy">'
        "<figcaption>Cat</figcaption></figure>"
    )


@pytest.mark.parametrize(
    "srcset",
    ["javascript:alert(1) 1x", "a.jpg 1x, data:image/png;base64,AA 2x", "a.jpg 1x 2x", "a.jpg w"],
)
def test_a_srcset_with_any_unsafe_candidate_goes(srcset: str) -> None:
    cleaned = sanitize_html(f'<img src="a.jpg" srcset="{srcset}">', base_url="https://i.example/")
    assert cleaned == '<img src="https://i.example/a.jpg" loading="lazy">'


# --- labels --------------------------------------------------------------------------------


def test_labels_and_marker() -> None:
    audio = MediaItem("https://c.example/a.mp3", "enclosure", "audio/mpeg", "audio", 40632320, 2530)
    assert media_label(audio) == "Audio (MP3, 40.6 MB, 42 min)"
    assert media_marker([audio]) == "audio · 42 min"
    assert media_marker([MediaItem("https://c.example/t.jpg", "thumbnail")]) == ""
    assert format_size(999) == "999 bytes" and format_size(1_500_000_000) == "1.5 GB"
    assert format_size(1) == "1 byte"


# --- end to end: poll, entry page, card, Atom, digest --------------------------------------

PODCAST = rss_doc(
    "<description>&lt;p&gt;Show notes.&lt;/p&gt;</description>"
    '<enclosure url="https://cdn.example/042.mp3" length="40632320" type="audio/mpeg"/>'
    "<itunes:duration>42:10</itunes:duration>"
    '<media:content url="https://cdn.example/042.mp3" type="audio/mpeg"/>'
    '<media:thumbnail url="https://cdn.example/042.jpg"/>'
)


def test_podcast_reaches_every_surface(tmp_path: Path, feed_server: FeedServer) -> None:
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    try:
        url = feed_server.add("/pod.xml", body=PODCAST)
        feed, _ = add_source(store, FeedSource(url=url), origin="cli", now=NOW)
        (summary,) = asyncio.run(poll_feeds(settings, store, clock=lambda: NOW))
        assert summary.status == "ok" and summary.new == 1
        rows = store.conn.execute(
            "SELECT role, url, mime_type, length, duration FROM enclosures ORDER BY position"
        ).fetchall()
        assert rows == [
            ("enclosure", "https://cdn.example/042.mp3", "audio/mpeg", 40632320, 2530),
            ("thumbnail", "https://cdn.example/042.jpg", "image/jpeg", None, None),
        ]
        # Polling the same document again rewrites nothing; media stay once.
        asyncio.run(poll_feeds(settings, store, clock=lambda: NOW + timedelta(hours=1)))
        assert store.conn.execute("SELECT count(*) FROM enclosures").fetchone()[0] == 2
        entry_id = store.conn.execute("SELECT id FROM entries").fetchone()[0]

        with TestClient(create_app(settings, clock=lambda: NOW)) as client:
            page = client.get(f"/entries/{entry_id}").text
            assert '<audio controls preload="none" src="https://cdn.example/042.mp3">' in page
            assert 'href="https://cdn.example/042.mp3" type="audio/mpeg"' in page
            assert "Download Audio (MP3, 40.6 MB, 42 min)" in page
            assert "media-src https: http:" in client.get("/").headers["content-security-policy"]
            assert "audio · 42 min" in client.get("/").text
            for path in ("/feed.atom", f"/sources/{feed.id}/feed.atom"):
                parsed = feedparser.parse(client.get(path).content)
                assert not parsed.bozo, parsed.bozo_exception
                (atom_entry,) = parsed.entries
                assert atom_entry.enclosures == [
                    {
                        "href": "https://cdn.example/042.mp3",
                        "type": "audio/mpeg",
                        "length": "40632320",
                    }
                ]

        message = preview(store, settings, NOW)
        assert message is not None and message.html is not None
        assert "Audio (MP3, 40.6 MB, 42 min): https://cdn.example/042.mp3" in message.text
        assert "audio · 42 min" in message.text
        assert re.search(
            r'<a href="https://cdn\.example/042\.mp3"[^>]*>Audio \(MP3, 40\.6 MB, 42 min\)</a>',
            message.html,
        )
    finally:
        store.close()


def test_an_entry_that_gains_an_enclosure_is_updated(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    try:
        url = feed_server.add("/pod.xml", body=rss_doc(""))
        add_source(store, FeedSource(url=url), origin="cli", now=NOW)
        asyncio.run(poll_feeds(settings, store, clock=lambda: NOW))
        feed_server.add("/pod.xml", body=PODCAST)
        (summary,) = asyncio.run(poll_feeds(settings, store, clock=lambda: NOW))
        assert (summary.new, summary.updated) == (0, 1)
        assert store.conn.execute("SELECT count(*) FROM enclosures").fetchone()[0] == 2
        feed_server.add("/pod.xml", body=rss_doc(""))
        asyncio.run(poll_feeds(settings, store, clock=lambda: NOW))
        assert store.conn.execute("SELECT count(*) FROM enclosures").fetchone()[0] == 0
        assert store.integrity_ok()
    finally:
        store.close()


def test_seeds_show_a_podcast_and_an_embedded_video() -> None:
    root = Path(__file__).resolve().parent.parent / "seeds"
    ll = prepare_feed(
        (root / "learning-layers.xml").read_bytes(),
        url="file:///ll.xml",
        headers={},
        limits=_limits(),
        now=NOW,
    )
    podcast = [r for r in ll.records if r.media]
    assert len(podcast) == 1 and podcast[0].media[0].medium == "audio"
    assert podcast[0].media[0].duration == 2530
    cp = prepare_feed(
        (root / "cluster-performance.xml").read_bytes(),
        url="file:///cp.xml",
        headers={},
        limits=_limits(),
        now=NOW,
    )
    video = [r for r in cp.records if "Watch on YouTube" in r.content_html]
    assert len(video) == 1 and "<figcaption>" in video[0].content_html
