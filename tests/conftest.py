"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from feedserver import FeedServer
from smtpserver import SmtpServer
from starlette.testclient import TestClient
from webdata import NOW, add_feed, make_settings

from aggregator.store import Store
from aggregator.web import create_app


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    """A scriptable HTTP server on 127.0.0.1 (see tests/feedserver.py), stopped afterwards."""
    server = FeedServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A scriptable SMTP server on 127.0.0.1 (see tests/smtpserver.py), stopped afterwards."""
    server = SmtpServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def alpha_title() -> str:
    """The first feed's title in ``web_site``; a module overrides this fixture to change it."""
    return "Alpha blog"


@pytest.fixture
def web_site(tmp_path: Path, alpha_title: str) -> Iterator[tuple[Store, TestClient, int, int]]:
    """The web app on a fresh database with two feeds, its clock at ``webdata.NOW``:
    (store, client, alpha feed id, beta feed id). The database must be whole afterwards."""
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    alpha = add_feed(store, "https://alpha.test/feed", alpha_title)
    beta = add_feed(store, "https://beta.test/feed", "Beta blog")
    try:
        with TestClient(create_app(settings, clock=lambda: NOW)) as client:
            yield store, client, alpha, beta
        assert store.integrity_ok()
    finally:
        store.close()
