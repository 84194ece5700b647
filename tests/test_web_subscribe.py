"""The subscription pages through the web app, with mail going to a real SMTP server."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from digestkit import T0, add_entry, add_feed, make_settings, rows
from lockkit import write_lock_held
from smtpserver import SmtpServer
from starlette.testclient import TestClient

from aggregator.digests.build import build_pending
from aggregator.digests.send import send_pending
from aggregator.mail import SmtpSender, SmtpSettings
from aggregator.store import Store
from aggregator.store import feeds as feed_rows
from aggregator.web import create_app
from aggregator.web import subscribe as subscribe_pages

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def site(tmp_path: Path, smtp_server: SmtpServer):
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    store = Store.open(settings.database)
    alpha = add_feed(store, "Alpha Blog")
    beta = add_feed(store, "Beta Notes")
    clock = Clock()
    app = create_app(settings, clock=clock)
    paths = {getattr(route, "path", None) for route in app.routes}
    if "/unsubscribe" not in paths:  # until the app mounts them itself
        app.router.routes.extend(subscribe_pages.routes)
    with TestClient(app, base_url="https://news.example.org") as client:
        yield client, settings, store, clock, (alpha, beta)
    assert store.integrity_ok()
    store.close()


def local(url: str) -> str:
    parts = urlsplit(url)
    assert parts.netloc == "news.example.org" and parts.scheme == "https"
    return f"{parts.path}?{parts.query}"


def csrf(client: TestClient, path: str = "/subscribe") -> str:
    page = client.get(path)
    assert page.status_code == 200
    match = CSRF.search(page.text)
    assert match, page.text
    return match[1]


def sign_up(client: TestClient, email: str, cadence: str = "daily", sources=(), **headers):
    data = {"csrf_token": csrf(client), "email": email, "cadence": cadence}
    if sources:
        data["source"] = [str(s) for s in sources]
    return client.post("/subscribe", data=data, headers=headers)


def links_in(text: str) -> list[str]:
    return re.findall(r"https://news\.example\.org/[^\s<>\"]+", text)


def main(page: str) -> str:
    """The page's own content, without the navigation (which marks the current page)."""
    return page[page.index("<main") : page.index("</main>")]


def status_of(store: Store, email: str) -> str | None:
    found = rows(store, "SELECT status FROM subscribers WHERE email_key = ?", email.lower())
    return found[0][0] if found else None


def test_a_new_reader_subscribes_confirms_reads_changes_and_leaves(site, smtp_server) -> None:
    client, settings, store, clock, (alpha, beta) = site
    form = client.get("/subscribe")
    assert "Alpha Blog" in form.text and "Beta Notes" in form.text

    answer = sign_up(client, "New.Reader@Example.ORG", sources=[alpha, beta])
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    (mail,) = smtp_server.messages()
    assert mail["To"] == "New.Reader@example.org"
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert "New.Reader" not in text + html  # nothing from the form in the body (C6)
    (confirm_url,) = [u for u in links_in(text) if "/subscribe/confirm" in u]
    assert confirm_url in html.replace("&amp;", "&")

    # A link scanner fetching the link changes nothing (S3).
    page = client.get(local(confirm_url))
    assert page.status_code == 200 and "Confirm subscription" in page.text
    assert client.head(local(confirm_url)).status_code in (200, 405)
    assert status_of(store, "new.reader@example.org") == "pending"

    token = re.search(r'name="token" value="([^"]+)"', page.text)[1]
    done = client.post(
        "/subscribe/confirm", data={"csrf_token": CSRF.search(page.text)[1], "token": token}
    )
    assert done.status_code == 200 and "You are subscribed" in done.text
    assert status_of(store, "new.reader@example.org") == "confirmed"
    # The confirmation link works once (S2).
    again = client.post("/subscribe/confirm", data={"csrf_token": csrf(client), "token": token})
    assert again.status_code == 400

    # A digest arrives; its links lead to the web copy, the archive and preferences.
    add_entry(store, alpha, "Fresh post", link="https://alpha.test/fresh")
    clock.now += timedelta(days=1)
    build_pending(store, settings, clock.now, due_only=False)
    with SmtpSender(SmtpSettings("127.0.0.1", smtp_server.port, security="none")) as sender:
        assert send_pending(store, sender, settings, lambda: clock.now).sent == 1
    digest = smtp_server.messages()[-1]
    digest_text = digest.get_body(("plain",)).get_content()
    urls = links_in(digest_text)
    web_copy = next(u for u in urls if "/digests/" in u)
    archive = next(u for u in urls if "/digests?" in u)
    prefs = next(u for u in urls if "/preferences" in u)
    copy_page = client.get(local(web_copy))
    assert copy_page.status_code == 200 and "Fresh post" in copy_page.text
    assert 'href="https://alpha.test/fresh"' in copy_page.text
    # One Referrer-Policy: the page's own replaces the default.
    assert copy_page.headers.get_list("referrer-policy") == ["no-referrer"]
    archive_page = client.get(local(archive))
    assert archive_page.status_code == 200 and "1 new post from Alpha Blog" in archive_page.text
    assert archive_page.headers.get_list("referrer-policy") == ["no-referrer"]
    feed_url = re.search(
        r'href="(https://news\.example\.org/digests/feed\.atom[^"]+)"', archive_page.text
    )[1]
    atom = client.get(local(feed_url.replace("&amp;", "&")))
    assert atom.headers["content-type"].startswith("application/atom+xml")
    ns = {"a": "http://www.w3.org/2005/Atom"}
    (entry,) = ET.fromstring(atom.content).findall("a:entry", ns)
    assert entry.find("a:title", ns).text == "1 new post from Alpha Blog"
    assert "Fresh post" in entry.find("a:content", ns).text

    prefs_page = client.get(local(prefs))
    assert prefs_page.status_code == 200
    saved = client.post(
        "/preferences",
        data={
            "csrf_token": CSRF.search(prefs_page.text)[1],
            "token": re.search(r'name="token" value="([^"]+)"', prefs_page.text)[1],
            "cadence": "weekly",
            "source": [str(beta)],
        },
    )
    assert saved.status_code == 200 and "Preferences saved" in saved.text
    assert rows(store, "SELECT cadence, all_feeds FROM subscribers") == [("weekly", 0)]
    assert rows(store, "SELECT feed_id FROM subscriber_feeds") == [(beta,)]

    # One-click unsubscribe (RFC 8058): a POST from the mail provider, no cookie, no CSRF.
    one_click = re.findall(r"<([^>]+)>", digest["List-Unsubscribe"])[0]
    assert client.get(local(one_click)).status_code == 200
    assert status_of(store, "new.reader@example.org") == "confirmed"
    with TestClient(client.app, base_url="https://news.example.org") as provider:
        gone = provider.post(local(one_click), data={"List-Unsubscribe": "One-Click"})
    assert gone.status_code == 200
    assert status_of(store, "new.reader@example.org") == "unsubscribed"

    # Its source removed, the web copy says where the post went instead of showing nothing.
    from aggregator.sources import remove_source

    remove_source(store, str(alpha))
    emptied = client.get(local(web_copy))
    assert emptied.status_code == 200 and "Fresh post" not in emptied.text
    assert "1 post of this digest came from a source removed since" in emptied.text


def test_signup_answer_is_the_same_whatever_the_address_state(site, smtp_server) -> None:
    client, _settings, store, clock, _ = site
    sign_up(client, "pending@example.org")
    sign_up(client, "confirmed@example.org")
    sign_up(client, "left@example.org")
    with store.write() as db:
        db.execute(
            "UPDATE subscribers SET status = 'confirmed' WHERE email = 'confirmed@example.org'"
        )
        db.execute(
            "UPDATE subscribers SET status = 'unsubscribed' WHERE email = 'left@example.org'"
        )
    clock.now += timedelta(hours=2)  # past the per-address mail window
    smtp_server.clear()
    answers = {
        email: sign_up(client, email)
        for email in (
            "fresh@example.org",
            "pending@example.org",
            "confirmed@example.org",
            "left@example.org",
        )
    }
    bodies = {a.text for a in answers.values()}
    assert len(bodies) == 1 and all(a.status_code == 200 for a in answers.values())
    subjects = {m["To"]: m["Subject"] for m in smtp_server.messages()}
    assert subjects["confirmed@example.org"].startswith("You are already subscribed")
    assert all(
        subjects[e].startswith("Confirm")
        for e in ("fresh@example.org", "pending@example.org", "left@example.org")
    )
    # The confirmed address was not changed by an unauthenticated form.
    assert status_of(store, "confirmed@example.org") == "confirmed"


def test_signup_floods_are_limited_per_client_and_per_address(site, smtp_server) -> None:
    client, *_ = site
    statuses = [sign_up(client, "target@example.org").status_code for _ in range(10)]
    assert statuses == [200] * 10
    assert len(smtp_server.messages()) == 1  # one confirmation per address per window
    limited = sign_up(client, "other@example.org")
    assert limited.status_code == 429 and limited.headers["retry-after"]
    assert len(smtp_server.messages()) == 1


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "x" * 5000,
        "MTc5MzYxNzIwMDox.9eoUTszw1JrjKKhZvlx0WlhN_KtTQpSlPjsZccD5TtA",
    ],
)
def test_forged_tokens_get_one_refusal_and_change_nothing(site, token) -> None:
    client, _settings, store, *_ = site
    sign_up(client, "victim@example.org")
    before = rows(store, "SELECT * FROM subscribers")
    answers = [
        client.get("/subscribe/confirm", params={"token": token}),
        client.post("/subscribe/confirm", data={"csrf_token": csrf(client), "token": token}),
        client.get("/preferences", params={"token": token}),
        client.get("/unsubscribe", params={"token": token}),
        client.get("/digests", params={"token": token}),
        client.get("/digests/1", params={"token": token}),
    ]
    assert {a.status_code for a in answers} == {400}
    assert len({main(a.text) for a in answers}) == 1
    one_click = client.post(
        "/unsubscribe", params={"token": token}, data={"List-Unsubscribe": "One-Click"}
    )
    assert one_click.status_code == 400
    assert rows(store, "SELECT * FROM subscribers") == before


def test_a_token_for_another_purpose_is_refused(site, smtp_server) -> None:
    client, *_ = site
    sign_up(client, "reader@example.org")
    text = smtp_server.messages()[0].get_body(("plain",)).get_content()
    confirm_token = re.search(r"token=([^\s&]+)", text)[1]
    for path in ("/unsubscribe", "/preferences", "/digests"):
        assert client.get(path, params={"token": confirm_token}).status_code == 400


def test_forms_need_the_csrf_token_and_our_origin(site) -> None:
    client, _, store, *_ = site
    no_token = client.post("/subscribe", data={"email": "a@example.org", "cadence": "daily"})
    assert no_token.status_code == 403
    foreign = sign_up(client, "a@example.org", origin="https://evil.example")
    assert foreign.status_code == 403
    assert rows(store, "SELECT count(*) FROM subscribers") == [(0,)]


@pytest.mark.parametrize(
    ("email", "ok"),
    [
        ("a" * 1001 + "@example.org", False),
        ("reader@example.org\r\nBcc: victim@example.org", False),
        ("no-at-sign", False),
        ('"quoted local"@example.org', False),
        ("reader@bücher.example", True),
        ("  Spaced@Example.org  ", True),
    ],
)
def test_odd_addresses(site, smtp_server, email, ok) -> None:
    client, _, store, *_ = site
    answer = sign_up(client, email)
    if ok:
        assert answer.status_code == 200
        (message,) = smtp_server.messages()
        assert smtp_server.rcpt_seen == [message["To"]]
        assert "\n" not in message["To"] and message["To"].isascii()
    else:
        assert answer.status_code == 400 and "valid email address" in answer.text
        assert smtp_server.received() == [] and rows(store, "SELECT count(*) FROM subscribers") == [
            (0,)
        ]


def test_confirmation_links_expire_and_pending_addresses_are_forgotten(site, smtp_server) -> None:
    client, _, store, clock, _ = site
    sign_up(client, "slow@example.org")
    text = smtp_server.messages()[0].get_body(("plain",)).get_content()
    confirm_url = next(u for u in links_in(text) if "/subscribe/confirm" in u)
    clock.now += timedelta(days=3)
    assert client.get(local(confirm_url)).status_code == 400
    clock.now += timedelta(days=5)
    sign_up(client, "someone-else@example.org")  # any sign-up sweeps expired ones
    assert status_of(store, "slow@example.org") is None


def test_pages_answer_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    """Reading pages never take a write lock: the form (its CSRF token), the timeline
    and /healthz answer at once while another process holds a write transaction; a
    sign-up then waits for the lock instead of failing."""
    import time

    settings = make_settings(tmp_path)
    Store.open(settings.database).close()
    app = create_app(settings, clock=Clock())
    with (
        TestClient(app, base_url="https://news.example.org") as client,
        write_lock_held(settings.database),
    ):
        started = time.monotonic()
        form = client.get("/subscribe")
        assert form.status_code == 200 and CSRF.search(form.text)
        assert client.get("/").status_code == 200
        assert client.get("/healthz").json()["database"] == "ok"
        assert time.monotonic() - started < 3  # the busy timeout is 15 s


# --- the sources a form chooses -------------------------------------------------------


def form_fields(page: str) -> tuple[str, str, list[int]]:
    """(CSRF token, the hidden list of offered sources, the ticked boxes) of a form."""
    offered = re.search(r'name="offered" value="([^"]*)"', page)
    assert offered, page
    ticked = [int(x) for x in re.findall(r'name="source" value="(\d+)" checked', page)]
    return CSRF.search(page)[1], offered[1], ticked


def subscriber_sources(store: Store) -> list[tuple[str, int, list[int]]]:
    found = rows(store, "SELECT id, email, all_feeds FROM subscribers ORDER BY id")
    return [
        (
            email,
            all_feeds,
            [
                f
                for (f,) in rows(
                    store, "SELECT feed_id FROM subscriber_feeds WHERE subscriber_id = ?", ident
                )
            ],
        )
        for ident, email, all_feeds in found
    ]


def preferences_link(store: Store, settings, email: str, now: datetime) -> str:
    from aggregator.subscriptions import add_by_operator, links_for

    links = links_for(store, settings)
    subscriber, _ = add_by_operator(store, settings, links, email=email, cadence="daily", now=now)
    return local(links.preferences(subscriber.id, now))


def test_every_box_left_ticked_is_all_sources_though_one_is_disabled(site) -> None:
    """The form offers the enabled sources only; leaving each ticked means all of them,
    those added later included, whether or not the post carries the offered list."""
    client, _settings, store, _clock, (alpha, beta) = site
    gamma = add_feed(store, "Gamma Gone")
    with store.write() as db:
        feed_rows.set_enabled(db, gamma, False, "410 Gone")
    page = client.get("/subscribe").text
    token, offered, ticked = form_fields(page)
    assert ticked == [alpha, beta] and offered == f"{alpha},{beta}" and "Gamma Gone" not in page
    base = {"csrf_token": token, "cadence": "weekly", "source": [str(i) for i in ticked]}
    assert (
        client.post(
            "/subscribe", data={**base, "email": "a@example.org", "offered": offered}
        ).status_code
        == 200
    )
    assert client.post("/subscribe", data={**base, "email": "b@example.org"}).status_code == 200
    # A source added after the form was loaded: the boxes shown were all ticked.
    add_feed(store, "Delta Later")
    assert (
        client.post(
            "/subscribe", data={**base, "email": "c@example.org", "offered": offered}
        ).status_code
        == 200
    )
    # One box cleared: a fixed list.
    one = {**base, "source": [str(alpha)], "offered": offered, "email": "d@example.org"}
    assert client.post("/subscribe", data=one).status_code == 200
    assert subscriber_sources(store) == [
        ("a@example.org", 1, []),
        ("b@example.org", 1, []),
        ("c@example.org", 1, []),
        ("d@example.org", 0, [alpha]),
    ]


@pytest.mark.parametrize("posted", [["999"], ["1", "999"], ["x"], []])
def test_a_source_that_is_not_offered_or_none_at_all_is_refused_and_nothing_is_saved(
    site, smtp_server, posted
) -> None:
    client, _settings, store, _clock, (_alpha, _beta) = site
    token, offered, _ = form_fields(client.get("/subscribe").text)
    answer = client.post(
        "/subscribe",
        data={
            "csrf_token": token,
            "email": "picky@example.org",
            "cadence": "daily",
            "offered": offered,
            "source": posted,
        },
    )
    assert answer.status_code == 400
    page = main(answer.text)
    wanted = "tick at least one source" if not posted else "no longer offered"
    assert wanted in page
    assert 'value="picky@example.org"' in page  # the form again, with what was entered
    assert rows(store, "SELECT count(*) FROM subscribers") == [(0,)]
    assert smtp_server.messages() == []


def test_a_source_removed_after_the_form_loaded_is_named_a_400(site) -> None:
    client, _settings, store, _clock, (_alpha, beta) = site
    token, offered, ticked = form_fields(client.get("/subscribe").text)
    with store.write() as db:
        feed_rows.remove_feed(db, beta)
    answer = client.post(
        "/subscribe",
        data={
            "csrf_token": token,
            "email": "late@example.org",
            "cadence": "daily",
            "offered": offered,
            "source": [str(i) for i in ticked],
        },
    )
    assert answer.status_code == 400 and "no longer offered" in answer.text
    assert "Beta Notes" not in main(answer.text)  # the current list
    assert rows(store, "SELECT count(*) FROM subscribers") == [(0,)]


def test_preferences_keep_all_sources_when_only_the_cadence_changes(site) -> None:
    client, settings, store, clock, (alpha, beta) = site
    gamma = add_feed(store, "Gamma Gone")
    with store.write() as db:
        feed_rows.set_enabled(db, gamma, False, "410 Gone")
    link = preferences_link(store, settings, "all@example.org", clock.now)
    page = client.get(link).text
    token, offered, ticked = form_fields(page)
    assert ticked == [alpha, beta]
    prefs_token = re.search(r'name="token" value="([^"]+)"', page)[1]
    data = {"csrf_token": token, "token": prefs_token, "cadence": "weekly", "offered": offered}
    saved = client.post("/preferences", data={**data, "source": [str(i) for i in ticked]})
    assert saved.status_code == 200 and "Preferences saved" in saved.text
    assert rows(store, "SELECT cadence, all_feeds FROM subscribers") == [("weekly", 1)]
    # An unknown source: a 400 with what was entered, and nothing changes.
    refused = client.post("/preferences", data={**data, "cadence": "daily", "source": ["999"]})
    assert refused.status_code == 400 and "no longer offered" in refused.text
    assert re.search(r'value="daily" checked', refused.text)
    none = client.post("/preferences", data={**data, "cadence": "daily"})
    assert none.status_code == 400 and "tick at least one source" in none.text
    assert rows(store, "SELECT cadence, all_feeds FROM subscribers") == [("weekly", 1)]
    assert rows(store, "SELECT count(*) FROM subscriber_feeds") == [(0,)]


def test_a_password_in_a_feed_url_never_reaches_a_page(site) -> None:
    """Feeds stored before credentials in feed URLs were refused: shown without them."""
    client, _settings, store, clock, (_alpha, _beta) = site
    with store.write() as db:
        feed, _ = feed_rows.add_feed(
            db, url="http://ann:s3cret@private.test/feed", title="", origin="cli", now=clock.now
        )
    secret = feed.id
    entry = add_entry(store, secret, "Private post", link="https://private.test/post")
    pages = [
        client.get(path).text
        for path in (
            "/subscribe",
            f"/sources/{secret}",
            "/opml",
            "/digests",
            "/",
            f"/entries/{entry}",
        )
    ]
    for page in pages:
        assert "s3cret" not in page and "ann:" not in page, page
    assert "Private post" in pages[4] and "Private post" in pages[5]
    for shown in (0, 2, 4, 5):  # named by its URL, without the password
        assert "http://private.test/feed" in pages[shown]


def test_a_one_click_unsubscribe_while_the_database_is_locked_is_kept_and_honoured(
    tmp_path: Path,
) -> None:
    """RFC 8058 one-click POSTs are sent once. While another process holds the write lock
    past the wait, the unsubscribe is kept in the spool beside the database and answered
    as done; the next write of any process (here `aggregator digest send` in a process of
    its own) applies it before building digests, so no digest goes to that address."""

    from clikit import run_cli

    from aggregator.clock import system_clock
    from aggregator.store.spool import spool_path
    from aggregator.subscriptions import add_by_operator, links_for

    now = system_clock()
    settings = make_settings(tmp_path)
    store = Store.open(settings.database, pragmas={"busy_timeout": 300})
    alpha = add_feed(store, "Alpha Blog")
    add_entry(store, alpha, "Old news", published=now - timedelta(days=3))
    links = links_for(store, settings)
    leaving, _ = add_by_operator(
        store, settings, links, email="leaving@example.org", cadence="daily", now=now
    )
    add_by_operator(store, settings, links, email="staying@example.org", cadence="daily", now=now)
    add_entry(store, alpha, "Fresh news", published=now)
    config = tmp_path / "config.toml"
    config.write_text(
        f'database = "{settings.database}"\n[web]\nbase_url = "https://news.example.org"\n'
        f'[mail]\nfrom = "Blog digest <digest@news.example.org>"\noutbox = "{tmp_path / "outbox"}"\n'
        '[digest]\ntimezone = "UTC"\n'
    )
    app = create_app(settings, store=store)
    with (
        TestClient(app, base_url="https://news.example.org") as client,
        write_lock_held(settings.database),
    ):
        answer = client.post(
            local(links.unsubscribe(leaving.id, now)),
            data={"List-Unsubscribe": "One-Click"},
        )
        assert answer.status_code == 200 and answer.text.startswith("Unsubscribed")
        assert spool_path(settings.database).exists()
        assert rows(store, "SELECT status FROM subscribers WHERE id = ?", leaving.id) == [
            ("confirmed",)
        ]
        told = run_cli("status", config=config, check=False).stdout
        assert "locked by another process" in told
        assert "Unsubscribes kept for the next write: 1" in told, told
    store.close()
    sent = run_cli("digest", "send", config=config)
    assert "Sent 1 to" in sent.stdout, sent.stdout
    recipients = [
        message.read_text(errors="replace").split("\nTo: ", 1)[1].split("\n", 1)[0]
        for message in (tmp_path / "outbox" / "new").iterdir()
        if "Fresh news" in message.read_text(errors="replace")
    ]
    assert recipients == ["staying@example.org"]
    listed = run_cli("subscribers", "list", config=config).stdout
    assert "leaving@example.org" in listed and "unsubscribed" in listed
    again = Store.open(settings.database)
    assert rows(again, "SELECT status FROM subscribers WHERE id = ?", leaving.id) == [
        ("unsubscribed",)
    ]
    again.close()
    import sqlite3

    with sqlite3.connect(spool_path(settings.database)) as spool:
        assert spool.execute("SELECT count(*) FROM unsubscribes").fetchone() == (0,)
