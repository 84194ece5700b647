"""Hardened edges: forwarded headers only from named proxies, admin password guessing
throttled, capability tokens out of access logs, huge path integers, XML outputs that
always parse, one Referrer-Policy."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from webdata import NOW, make_settings

from aggregator.config import settings_from_mapping
from aggregator.errors import ConfigError
from aggregator.store import Store
from aggregator.throttle import FailureThrottle, ThrottlePolicy
from aggregator.web import create_app
from aggregator.web.security import RedactTokens, redact_tokens

PASSWORD = "correct horse"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> Any:
        return self.now


# --- trusted proxies -------------------------------------------------------------------


def _settings(tmp_path: Path, **web: Any) -> Any:
    raw = {"database": str(tmp_path / "db.sqlite3"), "web": web}
    return settings_from_mapping(raw, env={}, path=tmp_path / "c.toml")


def test_trusted_proxies_default_to_none_and_are_checked(tmp_path: Path) -> None:
    assert _settings(tmp_path).web.trusted_proxies == ()
    assert _settings(
        tmp_path, trusted_proxies=["127.0.0.1", "10.0.0.0/8 ", "::1"]
    ).web.trusted_proxies == (
        "127.0.0.1",
        "10.0.0.0/8",
        "::1",
    )
    assert _settings(tmp_path, trusted_proxies=["10.1.2.3/8"]).web.trusted_proxies == (
        "10.0.0.0/8",
    )
    with pytest.raises(ConfigError, match=r"web.trusted_proxies: 'proxy.local' is not an IP"):
        _settings(tmp_path, trusted_proxies=["proxy.local"])
    with pytest.raises(ConfigError, match=r"web.trusted_proxies: must be a list"):
        _settings(tmp_path, trusted_proxies="127.0.0.1")


def _client_seen(settings: Any, client_host: str, forwarded: str | None) -> str:
    """The client address the app's limits are keyed on, via the admin throttle."""
    Store.open(settings.database).close()
    app = create_app(settings, clock=lambda: NOW)
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    with TestClient(app, client=(client_host, 4000)) as client:
        client.get("/admin", headers=headers, auth=("admin", "wrong"))
        throttle = app.state.web.admin_throttle
        (seen,) = throttle._clients
        return str(seen)


def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(tmp_path: Path) -> None:
    env = {"AGGREGATOR_ADMIN_PASSWORD": PASSWORD}
    base = {"database": str(tmp_path / "db.sqlite3")}
    untrusted = settings_from_mapping(base, env=env)
    assert _client_seen(untrusted, "127.0.0.1", "203.0.113.9") == "127.0.0.1"
    trusted = settings_from_mapping({**base, "web": {"trusted_proxies": ["127.0.0.1"]}}, env=env)
    assert _client_seen(trusted, "127.0.0.1", "203.0.113.9") == "203.0.113.9"
    # A client that is not the proxy cannot name itself someone else.
    assert _client_seen(trusted, "198.51.100.7", "203.0.113.9") == "198.51.100.7"


# --- admin password guessing -------------------------------------------------------------


def test_the_throttle_slows_then_refuses_per_client_and_overall() -> None:
    policy = ThrottlePolicy(free_failures=3, max_failures=6, max_failures_overall=10)
    throttle = FailureThrottle(policy)
    now = NOW
    for _ in range(3):
        assert throttle.wait("a", now) is None
        throttle.failed("a", now)
    assert throttle.wait("a", now) == timedelta(seconds=1)
    assert throttle.wait("b", now) is None  # another client is not slowed
    now += timedelta(seconds=1)
    throttle.failed("a", now)
    assert throttle.wait("a", now) == timedelta(seconds=2)  # doubling
    now += timedelta(seconds=2)
    throttle.failed("a", now)
    now += timedelta(seconds=4)
    throttle.failed("a", now)  # six: refused for the window
    assert throttle.wait("a", now + timedelta(minutes=10)) is not None
    # Overall: ten failures from ten addresses stop everyone for the window.
    for index in range(10):
        throttle.failed(f"c{index}", now)
    assert throttle.wait("fresh", now) is not None
    assert throttle.wait("fresh", now + policy.window) is None
    assert throttle.failures_total == 16
    assert throttle.refused_total >= 4


def test_admin_password_guessing_is_throttled_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, admin_password=PASSWORD)
    Store.open(settings.database).close()
    clock = Clock()
    with TestClient(create_app(settings, clock=clock)) as client:
        assert client.get("/admin").status_code == 401  # no password sent: not a failure
        with caplog.at_level(logging.WARNING, logger="aggregator.web.security"):
            codes = [
                client.get("/admin", auth=("admin", f"guess{n}")).status_code for n in range(100)
            ]
        assert codes[:5] == [401] * 5
        assert set(codes[5:]) == {429}
        refused = client.get("/admin", auth=("admin", PASSWORD))
        assert refused.status_code == 429  # the right one too, while the client must wait
        assert int(refused.headers["retry-after"]) >= 1
        assert "Too many wrong admin passwords" in refused.text
        assert sum("admin password refused" in r.getMessage() for r in caplog.records) == 5
        metrics = client.get("/metrics").text
        assert "aggregator_admin_auth_failures_total 5\n" in metrics
        assert "aggregator_admin_auth_throttled_total 96\n" in metrics
        clock.now += timedelta(seconds=2)
        assert client.get("/admin", auth=("admin", PASSWORD)).status_code == 200
        # Success clears the client's record.
        assert client.get("/admin", auth=("admin", "again")).status_code == 401


# --- capability tokens in logs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/subscribe/confirm?token=abc.def-1", "/subscribe/confirm?token=REDACTED"),
        ("/preferences?token=x&saved=1", "/preferences?token=REDACTED&saved=1"),
        ("/unsubscribe?a=1&token=x", "/unsubscribe?a=1&token=REDACTED"),
        ("/digests/7?token=x", "/digests/7?token=REDACTED"),
        ("/digests/feed.atom?token=x", "/digests/feed.atom?token=REDACTED"),
        ("/?q=token%3Dx", "/?q=token%3Dx"),
        ("/entries/3", "/entries/3"),
    ],
)
def test_tokens_are_redacted(path: str, expected: str) -> None:
    assert redact_tokens(path) == expected


def test_the_access_log_filter_redacts_uvicorns_record() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/unsubscribe?token=SECRET", "1.1", 200),
        None,
    )
    assert RedactTokens().filter(record)
    assert "SECRET" not in record.getMessage()
    assert "/unsubscribe?token=REDACTED" in record.getMessage()


# --- path integers beyond 64 bits --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/entries/9223372036854775808"),
        ("GET", "/entries/99999999999999999999999999"),
        ("GET", "/sources/9223372036854775808"),
        ("GET", "/sources/9223372036854775808/feed.atom"),
        ("GET", "/digests/9223372036854775808"),
        ("POST", "/admin/feeds/9223372036854775808/remove"),
        ("POST", "/admin/feeds/9223372036854775808/enabled"),
    ],
)
def test_path_integers_beyond_64_bits_are_404(tmp_path: Path, method: str, path: str) -> None:
    settings = make_settings(tmp_path, admin_password=PASSWORD)
    Store.open(settings.database).close()
    app = create_app(settings, clock=lambda: NOW)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.request(method, path, auth=("admin", PASSWORD))
        assert answer.status_code == 404
        assert client.get("/entries/999999999999999999").status_code == 404  # 18 digits: looked up


# --- control characters and XML outputs ------------------------------------------------

HOSTILE = "Bad\x00\x01\x08\x0b\x0c\x1b\ufffe title \u202eevil"


def test_every_xml_output_parses_with_control_characters_in_stored_text(tmp_path: Path) -> None:
    """Text stored before cleaning (or by another tool) still makes well-formed XML."""
    from xml.etree import ElementTree as ET

    from webdata import add_entry, record

    from aggregator.store import feeds as feed_rows

    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    with store.write() as db:
        feed, _ = feed_rows.add_feed(
            db, url="https://bad.test/feed", title=HOSTILE, origin="admin", now=NOW
        )
    add_entry(
        store,
        feed.id,
        record(
            HOSTILE,
            published=NOW,
            link="https://bad.test/p?x=1\x07",
            author=f"Author{HOSTILE}",
            body=f"<p>{HOSTILE} &#x202E;&#1;</p>",
        ),
    )
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        for path in ("/feed.atom", f"/sources/{feed.id}/feed.atom", "/opml"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            root = ET.fromstring(answer.content)  # raises on ill-formed XML
            assert "Bad title" in "".join(root.itertext()) + answer.text, path
    store.close()


def test_titles_entered_by_an_operator_are_cleaned(tmp_path: Path) -> None:
    from aggregator.models import FeedSource
    from aggregator.sources import add_source

    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    feed, _ = add_source(
        store, FeedSource(url="https://x.test/feed", title=HOSTILE), origin="admin", now=NOW
    )
    assert feed.title == "Bad title evil"
    store.close()


def test_bidi_overrides_in_entry_html_are_neutralised() -> None:
    from aggregator.sanitize import sanitize_html

    for html in (
        "<p>abc\u202edef\u2066x\u2069</p>",
        "<p>abc&#x202E;def&#8238;<a href='https://a.test/' title='t\u202ex'>l</a></p>",
    ):
        cleaned = sanitize_html(html)
        assert not any(
            ch in cleaned for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
        )
        assert "&#" not in cleaned.replace("&amp;", "")
        assert sanitize_html(cleaned) == cleaned
    assert sanitize_html("<p>a\x00b\x01c\x0cd</p>") == "<p>abc d</p>"
