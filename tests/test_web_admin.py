"""Admin pages: the password, CSRF, and feed management against a loopback feed server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from feedfactory import Item, rss
from feedserver import FeedServer
from starlette.testclient import TestClient
from webdata import NOW, add_entry, add_feed, make_settings, record

from aggregator.store import Store
from aggregator.store import feeds as feed_rows
from aggregator.web import create_app
from aggregator.web.security import CSRF_COOKIE

PASSWORD = "correct horse"
AUTH = ("admin", PASSWORD)
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[Store, TestClient]]:
    settings = make_settings(tmp_path, admin_password=PASSWORD)
    store = Store.open(settings.database)
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        client.auth = AUTH
        yield store, client
    assert store.integrity_ok()
    store.close()


def token(client: TestClient) -> str:
    page = client.get("/admin")
    assert page.status_code == 200
    match = TOKEN.search(page.text)
    assert match is not None
    return match.group(1)


def urls(store: Store) -> list[str]:
    return [feed.url for feed in feed_rows.list_feeds(store.db)]


def test_admin_is_off_without_a_password(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    Store.open(settings.database).close()
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        client.auth = ("admin", "")
        page = client.get("/admin")
        assert page.status_code == 403
        assert "Administration is switched off" in page.text
        assert "AGGREGATOR_ADMIN_PASSWORD" in page.text
        post = client.post("/admin/feeds", data={"url": "https://x.test/feed"})
        assert post.status_code == 403
        assert 'href="/admin"' not in client.get("/").text  # no menu item to a refusal


def test_wrong_or_missing_password_is_401(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin_password=PASSWORD)
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        missing = client.get("/admin")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith('Basic realm="aggregator admin"')
        assert "<h1>Sign-in needed</h1>" in missing.text
        assert client.get("/admin", auth=("admin", "wrong")).status_code == 401
        assert client.get("/admin", auth=("admin", PASSWORD + "x")).status_code == 401
        assert client.get("/admin", headers={"authorization": "Basic !!!"}).status_code == 401
        assert client.get("/admin", headers={"authorization": "Bearer x"}).status_code == 401
        assert client.post("/admin/feeds", data={"url": "https://x.test/"}).status_code == 401
        assert client.get("/admin", auth=("anyone", PASSWORD)).status_code == 200


def test_admin_lists_feeds_with_health(admin) -> None:
    store, client = admin
    feed_id = add_feed(store, "https://alpha.test/feed", "Alpha <blog>")
    add_entry(store, feed_id, record("One", published=NOW))
    feed = feed_rows.get_feed(store.db, feed_id)
    assert feed is not None
    with store.write() as db:
        feed_rows.apply_feed_update(
            db,
            feed,
            feed_rows.FeedUpdate(
                polled_at=NOW, next_poll_at=NOW, succeeded=False, error="connection refused"
            ),
        )
    html = client.get("/admin").text
    assert "Alpha &lt;blog&gt;" in html
    assert "https://alpha.test/feed" in html
    assert "Failing" in html and "connection refused" in html
    assert "<h1>Admin</h1>" in html
    assert html.count('name="csrf_token"') == 4  # add, import, disable, remove
    assert CSRF_COOKIE in client.cookies


def test_forms_without_token_or_from_another_site_are_refused(admin) -> None:
    store, client = admin
    good = token(client)
    data = {"url": "https://x.test/feed"}
    no_token = client.post("/admin/feeds", data=data)
    assert no_token.status_code == 403 and "security token is missing" in no_token.text
    wrong = client.post("/admin/feeds", data={**data, "csrf_token": good + "x"})
    assert wrong.status_code == 403 and "does not match" in wrong.text
    for origin in ("https://evil.test", "null", "http://testserver.evil.test"):
        foreign = client.post(
            "/admin/feeds", data={**data, "csrf_token": good}, headers={"origin": origin}
        )
        assert foreign.status_code == 403, origin
        assert "sent from another site" in foreign.text
    referer = client.post(
        "/admin/feeds",
        data={**data, "csrf_token": good},
        headers={"referer": "https://evil.test/page"},
    )
    assert referer.status_code == 403
    # A token is bound to the browser's cookie: another browser's token fails.
    other = httpx.Client(transport=client._transport, base_url="http://testserver", auth=AUTH)
    assert other.post("/admin/feeds", data={**data, "csrf_token": good}).status_code == 403
    assert urls(store) == []


def test_add_feed_by_home_page_discovers_the_feed(admin, feed_server: FeedServer) -> None:
    store, client = admin
    feed_url = feed_server.add("/blog/feed.xml", body=rss([Item("Hello", link="https://b/1")]))
    home = feed_server.add(
        "/blog/",
        body=b'<!doctype html><html><head><title>Blog</title><link rel="alternate" '
        b'type="application/rss+xml" href="/blog/feed.xml"></head><body>Hi</body></html>',
        content_type="text/html; charset=utf-8",
    )
    response = client.post(
        "/admin/feeds",
        data={"url": home, "title": "Found blog", "csrf_token": token(client)},
        headers={"origin": "http://testserver"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/admin?done=added")
    assert urls(store) == [feed_url]
    (feed,) = feed_rows.list_feeds(store.db)
    assert feed.title == "Found blog"
    page = client.get(response.headers["location"]).text
    assert "Feed added." in page and 'role="status"' in page
    # The same feed again is reported as known, not added twice.
    again = client.post(
        "/admin/feeds", data={"url": feed_url, "csrf_token": token(client)}, follow_redirects=False
    )
    assert again.headers["location"].startswith("/admin?done=known")
    assert urls(store) == [feed_url]


def test_add_feed_errors_are_shown(admin, feed_server: FeedServer) -> None:
    store, client = admin
    page = feed_server.add(
        "/plain", body=b"<html><body>No feed</body></html>", content_type="text/html"
    )
    cases = {
        "javascript:alert(1)": "only absolute http",
        "ftp://x.test/feed": "only absolute http",
        page: "Could not add that feed",
        feed_server.url("/missing"): "404",
        "": "Enter the address",
    }
    for url, message in cases.items():
        response = client.post("/admin/feeds", data={"url": url, "csrf_token": token(client)})
        assert response.status_code == 400, url
        assert message in response.text, url
        assert 'role="alert"' in response.text
        assert "<script" not in response.text
    assert urls(store) == []


def test_disable_enable_and_remove(admin) -> None:
    store, client = admin
    feed_id = add_feed(store, "https://alpha.test/feed", "Alpha")
    add_entry(store, feed_id, record("One", published=NOW))
    disabled = client.post(
        f"/admin/feeds/{feed_id}/enabled", data={"enabled": "0", "csrf_token": token(client)}
    )
    assert disabled.status_code == 200 and "Feed disabled" in disabled.text
    feed = feed_rows.get_feed(store.db, feed_id)
    assert feed is not None and not feed.enabled
    assert "Enable<span" in disabled.text
    client.post(
        f"/admin/feeds/{feed_id}/enabled", data={"enabled": "1", "csrf_token": token(client)}
    )
    feed = feed_rows.get_feed(store.db, feed_id)
    assert feed is not None and feed.enabled

    asked = client.post(f"/admin/feeds/{feed_id}/remove", data={"csrf_token": token(client)})
    assert asked.status_code == 200 and "Remove a feed?" in asked.text
    assert "its 1 stored post leave" in asked.text and 'name="confirm" value="1"' in asked.text
    assert urls(store) == ["https://alpha.test/feed"]  # nothing removed yet
    confirm = re.search(r'name="csrf_token" value="([^"]+)"', asked.text)
    assert confirm is not None
    removed = client.post(
        f"/admin/feeds/{feed_id}/remove", data={"csrf_token": confirm[1], "confirm": "1"}
    )
    assert removed.status_code == 200 and "Feed removed" in removed.text
    assert urls(store) == []
    assert store.conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 0
    missing = client.post("/admin/feeds/999/remove", data={"csrf_token": token(client)})
    assert missing.status_code == 404
    assert client.get(f"/admin/feeds/{feed_id}/remove").status_code == 405


def test_import_opml_upload(admin) -> None:
    store, client = admin
    add_feed(store, "https://known.test/feed", "Known")
    opml = (
        b'<?xml version="1.0"?><opml version="2.0"><head/><body>'
        b'<outline text="A" xmlUrl="https://a.test/feed"/>'
        b'<outline text="Folder"><outline text="B" xmlUrl="https://b.test/rss"/></outline>'
        b'<outline text="K" xmlUrl="https://known.test/feed"/>'
        b'<outline text="Bad" xmlUrl="javascript:alert(1)"/>'
        b"</body></opml>"
    )
    response = client.post(
        "/admin/opml",
        data={"csrf_token": token(client)},
        files={"file": ("feeds.opml", opml, "text/x-opml")},
    )
    assert response.status_code == 200
    assert "OPML imported. 2 added, 1 already there, 1 skipped." in response.text
    assert sorted(urls(store)) == [
        "https://a.test/feed",
        "https://b.test/rss",
        "https://known.test/feed",
    ]
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><opml><body>&b;</body></opml>'
    )
    refused = client.post(
        "/admin/opml",
        data={"csrf_token": token(client)},
        files={"file": ("bomb.opml", bomb, "text/x-opml")},
    )
    assert refused.status_code == 400 and "Could not import" in refused.text
    nothing = client.post("/admin/opml", data={"csrf_token": token(client)})
    assert nothing.status_code == 400 and "Choose an OPML file" in nothing.text
    assert len(urls(store)) == 3


def test_admin_search_ranks_and_highlights(admin) -> None:
    store, client = admin
    feed_id = add_feed(store, "https://alpha.test/feed", "Alpha")
    add_entry(store, feed_id, record("Kubernetes tuning notes", published=NOW))
    add_entry(store, feed_id, record("Cooking <b>notes</b>", published=NOW))
    add_entry(store, feed_id, record("Other things", published=NOW))
    html = client.get("/admin", params={"q": "tuning notes"}).text
    assert "1 post matches" in html
    assert "<mark>tuning</mark> <mark>notes</mark>" in html
    assert "Cooking" not in html.split('id="feeds-heading"')[0]
    results = client.get("/admin", params={"q": "notes -kubernetes"}).text
    results = results.split('id="feeds-heading"')[0]
    assert "<mark>notes</mark>" in results and "Cooking" in results
    assert "<b>" not in results and "Kubernetes" not in results
    html = client.get("/admin", params={"q": 'NEAR( "unbalanced'}).text
    assert "No posts match" in html
    too_long = client.get("/admin", params={"q": "notes " * 100})  # as the public search
    assert too_long.status_code == 400 and "too long" in too_long.text
    assert client.get("/admin", params={"q": "notes"}, auth=("admin", "wrong")).status_code == 401


def test_a_feed_url_with_a_password_is_refused_and_not_echoed(
    admin, feed_server: FeedServer
) -> None:
    store, client = admin
    feed = feed_server.add("/a.xml", body=rss([Item("Hello", link="https://blog.test/hello")]))
    secret = feed.replace("http://", "http://ann:s3cret@")
    response = client.post("/admin/feeds", data={"url": secret, "csrf_token": token(client)})
    assert response.status_code == 400
    assert "a user name or password in a feed URL is refused" in response.text
    assert "s3cret" not in response.text and "ann:" not in response.text
    assert urls(store) == []


def test_scheme_and_host_case_make_no_second_feed(admin, feed_server: FeedServer) -> None:
    store, client = admin
    feed = feed_server.add("/Feed.xml", body=rss([Item("Hello", link="https://blog.test/hello")]))
    for url in (feed.replace("http://127.0.0.1", "HTTP://127.0.0.1"), feed):
        done = client.post("/admin/feeds", data={"url": url, "csrf_token": token(client)})
        assert done.status_code == 200, done.text  # followed the 303
    assert urls(store) == [feed]  # the path keeps its case
