"""Counts for monitoring (/metrics) and `aggregator status`: queries, nothing more."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlite_utils import Database

from .codec import from_db


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counts at one moment, for /metrics (Prometheus text format) and ``aggregator
    status``: polls by outcome, failed polls by error kind, feeds by health, entries and
    stories, subscribers and digests by status, and the times of the last and next events
    (UTC; None: never or none due).
    """

    polls: dict[str, int] = field(default_factory=dict)  # outcome -> count
    fetch_errors: dict[str, int] = field(default_factory=dict)  # error kind -> count
    feeds: dict[str, int] = field(default_factory=dict)  # enabled, disabled, failing
    entries: int = 0
    stories: int = 0
    subscribers: dict[str, int] = field(default_factory=dict)  # status -> count
    digests: dict[str, int] = field(default_factory=dict)  # status -> count
    last_successful_poll: datetime | None = None
    last_digest_sent: datetime | None = None
    next_poll: datetime | None = None
    next_digest_attempt: datetime | None = None


def _counts(db: Database, sql: str) -> dict[str, int]:
    return {str(key): int(count) for key, count in db.execute(sql).fetchall()}


def snapshot(db: Database) -> Snapshot:
    """Read every count of a ``Snapshot`` (queries only, a handful of aggregate scans)."""

    def one(sql: str) -> object:
        row = db.execute(sql).fetchone()
        return row[0] if row else None

    return Snapshot(
        polls=_counts(db, "SELECT outcome, count(*) FROM fetches GROUP BY outcome"),
        fetch_errors=_counts(
            db,
            "SELECT coalesce(error_kind, 'error'), count(*) FROM fetches "
            "WHERE outcome = 'error' GROUP BY 1",
        ),
        feeds=_counts(
            db,
            "SELECT CASE WHEN enabled = 0 THEN 'disabled' WHEN error_count > 0 THEN 'failing' "
            "ELSE 'ok' END, count(*) FROM feeds GROUP BY 1",
        ),
        entries=int(str(one("SELECT count(*) FROM entries"))),
        stories=int(str(one("SELECT count(*) FROM entries WHERE duplicate_of IS NULL"))),
        subscribers=_counts(db, "SELECT status, count(*) FROM subscribers GROUP BY status"),
        digests=_counts(db, "SELECT status, count(*) FROM digests GROUP BY status"),
        last_successful_poll=from_db(_text(one("SELECT max(last_success_at) FROM feeds"))),
        last_digest_sent=from_db(_text(one("SELECT max(sent_at) FROM digests"))),
        next_poll=from_db(_text(one("SELECT min(next_poll_at) FROM feeds WHERE enabled = 1"))),
        next_digest_attempt=from_db(
            _text(one("SELECT min(next_attempt_at) FROM digests WHERE status = 'pending'"))
        ),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
