"""The reader pages through the ASGI app, on a real SQLite file filled by the store."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from webdata import NOW, add_entry, add_feed, make_settings, record

from aggregator.errors import StoreFull
from aggregator.store import Store
from aggregator.store import feeds as feed_rows
from aggregator.store.timeline import Cursor, fts_query
from aggregator.web import create_app
from aggregator.web.views import PAGE_SIZE

ENTRY_ID = re.compile(r'<article aria-labelledby="entry-(\d+)">')


def ids_on(html: str) -> list[int]:
    return [int(found) for found in ENTRY_ID.findall(html)]


def link(html: str, label: str) -> str | None:
    match = re.search(
        r'<a class="button" href="([^"]+)"[^>]*>(?:<span[^>]*>.</span> )?' + label, html
    )
    return match.group(1).replace("&amp;", "&") if match else None


def test_timeline_groups_by_day_newest_first(web_site) -> None:
    store, client, alpha, beta = web_site
    older = add_entry(store, alpha, record("Three days ago", published=NOW - timedelta(days=3)))
    today = add_entry(store, beta, record("This morning", published=NOW - timedelta(hours=3)))
    yesterday = add_entry(store, alpha, record("Last night", published=NOW - timedelta(hours=14)))
    html = client.get("/").text
    sections = html.split('<section class="day"')[1:]
    assert len(sections) == 3
    assert ">Today</time>" in sections[0] and ids_on(sections[0]) == [today]
    assert ">Yesterday</time>" in sections[1] and ids_on(sections[1]) == [yesterday]
    assert ">Wednesday 25 November</time>" in sections[2] and ids_on(sections[2]) == [older]
    assert html.count("<h1") == 1
    assert 'class="badge badge-' in sections[0] and "Beta blog" in sections[0]


def test_filter_by_source_shows_only_that_source(web_site) -> None:
    store, client, alpha, beta = web_site
    a = add_entry(store, alpha, record("Alpha post", published=NOW - timedelta(hours=1)))
    b = add_entry(store, beta, record("Beta post", published=NOW - timedelta(hours=2)))
    assert set(ids_on(client.get("/").text)) == {a, b}
    html = client.get(f"/?source={beta}").text
    assert ids_on(html) == [b]
    assert "<h1>Beta blog</h1>" in html
    assert f'<option value="{beta}" selected>' in html


def test_search_finds_words_and_survives_fts_syntax(web_site) -> None:
    store, client, alpha, beta = web_site
    hit = add_entry(
        store,
        alpha,
        record("Cluster tuning", published=NOW, body="<p>Measuring throughput of jobs</p>"),
    )
    add_entry(store, beta, record("Other", published=NOW, body="<p>Nothing relevant</p>"))
    assert ids_on(client.get("/?q=throughput").text) == [hit]
    assert ids_on(client.get("/?q=tuning+cluster").text) == [hit]  # all words, any order
    assert ids_on(client.get(f"/?q=jobs&source={beta}").text) == []
    hostile = [
        '"',
        'throughput"',
        "AND",
        "OR NOT",
        "NEAR(",
        "*",
        "title:x",
        "-x",
        "^x",
        "(",
        ")",
        "'",
        "\\",
        "a:b:c",
        '""""',
        "throughput OR",
        "NEAR(throughput jobs, 2)",
        "{x}",
        "%",
        "\x00",
        "🙂",
        "a" * 200,
    ]
    for query in hostile:
        response = client.get("/", params={"q": query})
        assert response.status_code == 200, query
    assert ids_on(client.get("/", params={"q": 'throughput"'}).text) == [hit]
    # Operators are words like any other: all of them must appear.
    assert ids_on(client.get("/", params={"q": "throughput OR nothing"}).text) == []
    assert client.get("/", params={"q": "x" * 201}).status_code == 400


def test_fts_query_quotes_every_word() -> None:
    assert fts_query('foo" OR bar*') == '"foo" "OR" "bar"'
    assert fts_query("NEAR(a b)") == '"NEAR" "a" "b"'
    assert fts_query("*** ()") is None


def test_keyset_pages_stay_stable_while_entries_arrive(web_site) -> None:
    store, client, alpha, beta = web_site
    original = [
        add_entry(
            store,
            alpha if i % 2 else beta,
            record(f"Post {i}", published=NOW - timedelta(hours=i), link=f"https://x.test/{i}"),
        )
        for i in range(70)
    ]
    first = client.get("/").text
    page1 = ids_on(first)
    assert page1 == original[:PAGE_SIZE]
    assert link(first, "Newer") is None
    older = link(first, "Older")
    assert older is not None and "before=" in older

    # New posts arrive between page loads, some newer than everything, one backdated
    # into the first page's range: the next pages neither repeat nor skip anything.
    for i in range(5):
        add_entry(store, beta, record(f"Fresh {i}", published=NOW + timedelta(minutes=i + 1)))
    add_entry(store, alpha, record("Backdated", published=NOW - timedelta(hours=5, minutes=30)))

    second = client.get(older).text
    page2 = ids_on(second)
    third_url = link(second, "Older")
    assert third_url is not None
    third = client.get(third_url).text
    page3 = ids_on(third)
    assert page2 == original[PAGE_SIZE : 2 * PAGE_SIZE]
    assert page3 == original[2 * PAGE_SIZE :]
    assert link(third, "Older") is None

    newer = link(third, "Newer")
    assert newer is not None and "after=" in newer
    assert ids_on(client.get(newer).text) == page2
    # Newer from the second page: the thirty just above it, the backdated post among them.
    above = client.get(link(second, "Newer") or "").text
    assert ids_on(above) == [*original[1:6], original[-1] + 6, *original[6:PAGE_SIZE]]
    # Once past the top, a full first page, fresh posts first, and no "Newer".
    top = client.get(link(above, "Newer") or "").text
    assert ids_on(top)[:6] == [75, 74, 73, 72, 71, original[0]]
    assert len(ids_on(top)) == PAGE_SIZE and link(top, "Newer") is None


def test_pages_keep_search_and_filter(web_site) -> None:
    store, client, alpha, beta = web_site
    for i in range(PAGE_SIZE + 5):
        add_entry(store, alpha, record(f"Alpha {i}", published=NOW - timedelta(hours=i)))
        add_entry(store, beta, record(f"Beta {i}", published=NOW - timedelta(hours=i)))
    older = link(client.get(f"/?source={alpha}").text, "Older")
    assert older is not None and f"source={alpha}" in older
    html = client.get(older).text
    assert len(ids_on(html)) == 5
    assert re.search(r"Alpha \d", html) and not re.search(r"Beta \d", html)


def test_cross_post_shows_once_with_also_on(web_site) -> None:
    store, client, alpha, beta = web_site
    story = add_entry(
        store,
        alpha,
        record("Shared story", published=NOW - timedelta(hours=2), link="https://alpha.test/s"),
    )
    copy = add_entry(
        store,
        beta,
        record("Shared story", published=NOW - timedelta(hours=1), link="https://beta.test/s"),
        duplicate_of=story,
    )
    html = client.get("/").text
    assert ids_on(html) == [story]
    assert html.count(">Shared story</a>") == 1
    also = html.split('class="also-on"')[1].split("</p>")[0]
    assert 'href="https://beta.test/s"' in also and "Beta blog" in also
    # The source page of the copy lists it, pointing back at the story's blog.
    beta_page = client.get(f"/?source={beta}").text
    assert ids_on(beta_page) == [copy]
    assert 'href="https://alpha.test/s">Alpha blog' in beta_page
    entry = client.get(f"/entries/{copy}").text
    assert f'href="/entries/{story}">Shared story' in entry


def test_hostile_entry_shows_as_text(web_site) -> None:
    store, client, alpha, _beta = web_site
    entry = add_entry(
        store,
        alpha,
        record(
            "<script>alert(1)</script><img src=x onerror=alert(2)>",
            published=NOW,
            link="javascript:alert(3)",
            author='"><svg onload=alert(4)>',
            body='<p onclick="alert(5)">Hi<img src="x" onerror="alert(6)">'
            '<a href="javascript:alert(7)">link</a><a href="JaVaScRiPt:alert(8)">b</a>'
            "<script>alert(9)</script><iframe src=https://evil.test></iframe></p>",
        ),
    )
    for path in ("/", f"/entries/{entry}", f"/sources/{alpha}", "/?q=script"):
        html = client.get(path).text
        assert "<script" not in html and "<svg" not in html and "<iframe" not in html, path
        assert "onerror" not in html.replace("onerror=alert(2)&gt;", ""), path
        assert "onload=" not in html.replace("onload=alert(4)&gt;", ""), path
        assert "javascript:" not in html.lower(), path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
    title = client.get(f"/entries/{entry}").text.split("<title>")[1].split("</title>")[0]
    assert title.startswith("&lt;script&gt;alert(1)&lt;/script&gt;")


def test_entry_page_shows_sanitised_content(web_site) -> None:
    store, client, alpha, _beta = web_site
    entry = add_entry(
        store,
        alpha,
        record(
            "Full post",
            published=NOW,
            link="https://alpha.test/full",
            author="Ada",
            body="<h2>Part</h2><p>Some <em>emphasis</em>.</p>",
        ),
    )
    html = client.get(f"/entries/{entry}").text
    assert '<h1 id="entry-title">Full post</h1>' in html
    assert "<p>Some <em>emphasis</em>.</p>" in html
    assert 'href="https://alpha.test/full">Read it on Alpha blog' in html
    assert "Ada" in html
    assert client.get("/entries/99999").status_code == 404


def test_source_page_shows_health(web_site) -> None:
    store, client, alpha, _beta = web_site
    add_entry(store, alpha, record("One", published=NOW))
    feed = feed_rows.get_feed(store.db, alpha)
    assert feed is not None
    with store.write() as db:
        feed_rows.record_fetch(
            db,
            feed_rows.FetchRecord(
                feed_id=alpha,
                at=NOW,
                url=feed.url,
                status=503,
                bytes=0,
                duration_ms=42,
                outcome="error",
                error_kind="status",
                error="HTTP 503 Service Unavailable",
            ),
        )
        feed_rows.apply_feed_update(
            db,
            feed,
            feed_rows.FeedUpdate(
                polled_at=NOW,
                next_poll_at=NOW + timedelta(minutes=40),
                succeeded=False,
                error="HTTP 503 Service Unavailable",
            ),
        )
    html = client.get(f"/sources/{alpha}").text
    assert "<h1>Alpha blog</h1>" in html
    assert "Failing" in html
    assert "(HTTP 503)" in html
    assert "HTTP 503 Service Unavailable" in html
    assert "28 Nov 2026 12:40" in html  # next poll
    assert "42 ms" in html
    assert len(ids_on(html)) == 1
    assert client.get("/sources/999").status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        "source=abc",
        "source=0",
        "source=-1",
        "source=1.5",
        "source=%EF%BC%91",  # a full-width digit
        "before=garbage",
        "before=2026-13-01T00:00:00.000000Z|5",
        "before=2026-11-01T00:00:00.000000Z|x",
        "after=2026-11-01T00:00:00Z|5",
        "before=2026-11-01T00:00:00.000000Z|1&after=2026-11-01T00:00:00.000000Z|2",
    ],
)
def test_bad_parameters_are_400_pages(web_site, query: str) -> None:
    _, client, _, _ = web_site
    response = client.get(f"/?{query}")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>Bad request</h1>" in response.text
    assert "parameter" in response.text or "not both" in response.text


def test_cursor_round_trip() -> None:
    cursor = Cursor("2026-11-28T12:00:00.000000Z", 42)
    assert Cursor.parse(str(cursor)) == cursor
    with pytest.raises(ValueError):
        Cursor.parse("2026-11-28T12:00:00.000000Z|")


def test_unknown_source_and_page_are_404_pages(web_site) -> None:
    _, client, _, _ = web_site
    for path in ("/?source=77", "/no/such/page", "/entries/abc"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "<h1>Not found</h1>" in response.text


def test_security_headers_on_every_answer(web_site) -> None:
    _, client, alpha, _ = web_site
    for path in (
        "/",
        "/nope",
        "/?source=x",
        "/feed.atom",
        "/opml",
        "/healthz",
        "/static/style.css",
        f"/sources/{alpha}",
    ):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, path
        assert "script-src" not in csp
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"], path


def test_healthz(web_site) -> None:
    store, client, alpha, _ = web_site
    add_entry(store, alpha, record("One", published=NOW))
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "entries": 1}


def test_unusable_database_is_a_503_page(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    settings.database.write_bytes(b"this is not a database" * 100)
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        page = client.get("/")
        assert page.status_code == 503
        assert "<h1>Unavailable</h1>" in page.text
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "error"


def test_healthz_is_503_with_the_reason_while_writes_fail_then_ok_again(tmp_path: Path) -> None:
    """A write of this process failed (here: the disk is full for it) and none has
    succeeded since: /healthz says so; after a successful write it is ok again."""
    settings = make_settings(tmp_path)
    Store.open(settings.database).close()
    probe = Store.open(settings.database)
    pages = probe.conn.execute("PRAGMA page_count").fetchone()[0]
    probe.close()
    store = Store.open(settings.database, pragmas={"max_page_count": pages})
    with TestClient(create_app(settings, clock=lambda: NOW, store=store)) as client:
        assert client.get("/healthz").status_code == 200
        with pytest.raises(StoreFull, match="disk full"), store.write() as db:
            for i in range(500):
                feed_rows.add_feed(
                    db, url=f"https://a.test/{i}" + "x" * 500, title="A", origin="cli", now=NOW
                )
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["database"].startswith("writes failing: disk full")
        assert client.get("/").status_code == 200  # reading still works
        store.conn.execute("PRAGMA max_page_count = 1073741823")
        with store.write() as db:
            feed_rows.set_interval(db, 1, None)
        assert client.get("/healthz").status_code == 200
    store.close()


def test_date_only_entry_shows_its_written_day_in_every_zone(tmp_path: Path) -> None:
    """``<dc:date>2026-11-25</dc:date>`` is stored with ``date_only``: a
    New York reader sees it under 25 November without a time (not at 19:00 on the 24th),
    while a timed entry moves to the reader's zone as before."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from aggregator.config import settings_from_mapping
    from aggregator.dedup import DATE_ONLY_HOUR

    raw = {
        "database": str(tmp_path / "db.sqlite3"),
        "fetch": {"allow_private_addresses": True},
        "poll": {"parse_workers": 1},
        "web": {"base_url": "http://testserver"},
        "digest": {"timezone": "America/New_York"},
    }
    settings = settings_from_mapping(raw, env={}, path=tmp_path / "config.toml")
    store = Store.open(settings.database)
    feed = add_feed(store, "https://days.test/feed", "Days")
    day = datetime(2026, 11, 25, tzinfo=UTC)
    # As dedup.make_record files a date-only entry: noon UTC of the day written.
    stored_day = day + DATE_ONLY_HOUR
    dated = add_entry(store, feed, replace(record("A day", published=stored_day), date_only=True))
    timed = add_entry(store, feed, record("A moment", published=day + timedelta(hours=2)))
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        html = client.get("/").text
        entry_page = client.get(f"/entries/{dated}").text
    store.close()
    days = [
        (re.search(r">(\w+ \d+ \w+)</time>", section), ids_on(section))
        for section in html.split('<section class="day"')[1:]
    ]
    found = [(label.group(1) if label else None, ids) for label, ids in days]
    assert found == [("Wednesday 25 November", [dated]), ("Tuesday 24 November", [timed])]
    assert "07:00" not in html and "12:00" not in html  # no invented time
    assert '<time datetime="2026-11-25">25 November 2026</time>' in entry_page


def test_the_menu_offers_admin_only_when_it_is_switched_on(tmp_path: Path) -> None:
    off = make_settings(tmp_path)
    Store.open(off.database).close()
    on = replace(off, web=replace(off.web, admin_password="a long admin password"))
    with TestClient(create_app(on, clock=lambda: NOW)) as client:
        assert 'href="/admin"' in client.get("/").text
    with TestClient(create_app(off, clock=lambda: NOW)) as client:
        page = client.get("/").text
    assert 'href="/admin"' not in page and 'href="/digests"' in page


def test_a_pointer_post_on_the_other_blog_is_never_shown_as_a_link_to_the_same_page(
    tmp_path: Path,
) -> None:
    """The seed's Cluster Performance Blog carries a pointer to a Learning Layers post
    (its link is the Learning Layers page). The story shows once, and its "also on"
    names the Cluster blog with a link to that copy here, never the Learning Layers URL
    a second time: on the timeline and in the digest."""
    import subprocess
    import sys

    from clikit import run_cli

    repo = Path(__file__).resolve().parent.parent
    text = (repo / "config" / "default.toml").read_text(encoding="utf-8")
    text = text.replace('"../seeds/', f'"{repo}/seeds/').replace('"../var/', f'"{tmp_path}/')
    config = tmp_path / "default.toml"
    config.write_text(text, encoding="utf-8")
    run_cli("poll", config=config)
    story = "https://project.learning-layers.eu/sample-scaling-up-innovations-in-sme-clusters/"
    from aggregator.config import load

    settings = load(config)
    with TestClient(create_app(settings)) as client:
        page = client.get("/").text
    article = next(a for a in page.split("<article")[1:] if "Scaling up innovations" in a)
    also = article.split('class="also-on"', 1)[1].split("</p>", 1)[0]
    assert "Cluster Performance Blog" in also and story not in also
    assert re.search(r'href="/entries/\d+"', also), also
    subprocess.run(
        [
            sys.executable,
            "-m",
            "aggregator",
            "--config",
            str(config),
            "subscribers",
            "add",
            "pointer@example.org",
            "--cadence",
            "daily",
            "--now",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    preview = run_cli("digest", "preview", "--subscriber", "pointer@example.org", config=config)
    also_lines = [
        line for line in preview.stdout.splitlines() if line.startswith("Also on Cluster")
    ]
    assert also_lines and f"Also on Cluster Performance Blog: {story}" not in also_lines
    assert all("/entries/" in line for line in also_lines), also_lines
