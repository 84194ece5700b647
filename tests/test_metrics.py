"""/metrics: Prometheus text over a real database after real polls and sends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedfactory import Item, rss
from feedserver import FeedServer
from starlette.testclient import TestClient

from aggregator.config import settings_from_mapping
from aggregator.models import FeedSource
from aggregator.pipeline import poll_feeds
from aggregator.sources import add_source
from aggregator.store import Store
from aggregator.web import create_app

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def parse_exposition(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_metrics_count_polls_errors_entries(tmp_path: Path, feed_server: FeedServer) -> None:
    raw: dict[str, Any] = {
        "database": str(tmp_path / "db.sqlite3"),
        "fetch": {"allow_private_addresses": True},
        "poll": {"parse_workers": 1},
    }
    settings = settings_from_mapping(raw, env={}, path=tmp_path / "c.toml")
    store = Store.open(settings.database)
    good = feed_server.add("/a.xml", body=rss([Item("One", link="https://b.test/1")]))
    bad = feed_server.add("/b.xml", status=500, body=b"no")
    for url in (good, bad):
        add_source(store, FeedSource(url=url), origin="cli", now=NOW)
    asyncio.run(poll_feeds(settings, store, clock=lambda: NOW))
    store.close()
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_exposition(response.text)
    assert samples['aggregator_polls_total{outcome="ok"}'] == 1
    assert samples['aggregator_polls_total{outcome="error"}'] == 1
    assert samples['aggregator_fetch_errors_total{kind="status"}'] == 1
    assert samples["aggregator_entries"] == 1
    assert samples['aggregator_feeds{state="failing"}'] == 1
    assert samples["aggregator_last_successful_poll_timestamp_seconds"] == NOW.timestamp()
    assert "# TYPE aggregator_polls_total counter" in response.text
    assert "\naggregator_entries 1\n" in response.text  # whole numbers print as such
