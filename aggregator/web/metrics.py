"""``/metrics`` in the Prometheus text format (version 0.0.4)."""

from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ..store.metrics import Snapshot, snapshot
from ..throttle import FailureThrottle
from .context import web_context

# Media type of the Prometheus text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exposition(data: Snapshot) -> str:
    """The counts of ``data`` as Prometheus text exposition (version 0.0.4): one family per
    count, prefixed ``aggregator_``, label values escaped; times as Unix seconds.
    """
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: dict[str, float], label: str) -> None:
        lines.append(f"# HELP aggregator_{name} {help_text}")
        lines.append(f"# TYPE aggregator_{name} {kind}")
        for key, value in sorted(samples.items()):
            escaped = key.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
            lines.append(f'aggregator_{name}{{{label}="{escaped}"}} {_number(value)}')

    def single(name: str, kind: str, help_text: str, value: float | None) -> None:
        if value is None:
            return
        lines.append(f"# HELP aggregator_{name} {help_text}")
        lines.append(f"# TYPE aggregator_{name} {kind}")
        lines.append(f"aggregator_{name} {_number(value)}")

    def stamp(moment: datetime | None) -> float | None:
        return moment.timestamp() if moment else None

    family("polls_total", "counter", "Feed polls by outcome.", {**data.polls}, "outcome")
    family(
        "fetch_errors_total",
        "counter",
        "Failed polls by kind of error.",
        {**data.fetch_errors},
        "kind",
    )
    family("feeds", "gauge", "Feeds by state.", {**data.feeds}, "state")
    single("entries", "gauge", "Entries stored.", data.entries)
    single("stories", "gauge", "Stories stored (cross-posts counted once).", data.stories)
    family("subscribers", "gauge", "Subscribers by status.", {**data.subscribers}, "status")
    family("digests_total", "counter", "Digests by status.", {**data.digests}, "status")
    single(
        "last_successful_poll_timestamp_seconds",
        "gauge",
        "When a feed was last polled successfully.",
        stamp(data.last_successful_poll),
    )
    single(
        "last_digest_sent_timestamp_seconds",
        "gauge",
        "When a digest was last sent.",
        stamp(data.last_digest_sent),
    )
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def process_exposition(throttle: FailureThrottle) -> str:
    """Counters this process keeps in memory (they restart from 0 with it)."""
    return (
        "\n".join(
            [
                "# HELP aggregator_admin_auth_failures_total Wrong admin passwords (this process).",
                "# TYPE aggregator_admin_auth_failures_total counter",
                f"aggregator_admin_auth_failures_total {throttle.failures_total}",
                "# HELP aggregator_admin_auth_throttled_total Admin attempts refused unchecked "
                "after repeated failures (this process).",
                "# TYPE aggregator_admin_auth_throttled_total counter",
                f"aggregator_admin_auth_throttled_total {throttle.refused_total}",
            ]
        )
        + "\n"
    )


def metrics(request: Request) -> Response:
    """GET /metrics: the database's counts and this process's admin-throttle counters, for
    Prometheus to scrape.
    """
    web = web_context(request)
    body = exposition(snapshot(web.store().db)) + process_exposition(web.admin_throttle)
    return PlainTextResponse(body, media_type=CONTENT_TYPE)


routes = [Route("/metrics", metrics, name="metrics")]
