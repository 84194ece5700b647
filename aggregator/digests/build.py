"""Build pending digests: which new entries go in whose digest.

For each subscriber, in one transaction with up to ``BUILD_BATCH - 1`` others: select
what is new since their watermark, insert a pending digest with its entries, move the
watermark. Subscribers
with the same watermark and sources share one plan (``PlanCache``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..config import Settings
from ..selection import DigestPlan, Subscriber, first_digest_since, is_due, select_digest
from ..store import Database, Store
from ..store import digests as digest_rows
from ..store import subscribers as subscriber_rows

PLAN_CACHE_SIZE = 64
"""How many distinct plans a ``PlanCache`` keeps (least recently used go first)."""
BUILD_BATCH = 50
"""Subscribers built in one transaction: fewer commits, while the write lock is held
for tens of milliseconds at most (sign-ups and unsubscribes wait that long at worst)."""


@dataclass(slots=True)
class BuildReport:
    """What ``build_pending`` did: subscribers considered (due and confirmed), digests
    built (their ids in ``digest_ids``), subscribers with nothing new (``empty``), and
    those skipped as not due yet."""

    considered: int = 0
    built: int = 0
    empty: int = 0
    not_due: int = 0
    digest_ids: list[int] = field(default_factory=list)


class PlanCache:
    """Subscribers with the same watermark and sources get the same plan: compute it once.

    Bounded to ``size`` plans, so memory does not grow with the number of subscribers.
    """

    def __init__(self, size: int = PLAN_CACHE_SIZE) -> None:
        self._plans: OrderedDict[tuple[Any, ...], DigestPlan | None] = OrderedDict()
        self._size = size

    def plan(
        self,
        db: Database,
        subscriber: Subscriber,
        upto: int,
        max_per_source: int,
        now: datetime | None,
    ) -> DigestPlan | None:
        """The digest ``subscriber`` gets from entries up to id ``upto``; None when
        nothing is new. ``now`` None: no first-digest limit (a preview of everything
        stored)."""
        feeds = None if subscriber.feed_ids is None else tuple(sorted(subscriber.feed_ids))
        since = None if now is None else first_digest_since(subscriber, now)
        key = (subscriber.watermark, feeds, upto, max_per_source, since)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        candidates = digest_rows.candidates(db, subscriber, upto)
        members = digest_rows.story_members(db, {c.story_id for c in candidates})
        plan = select_digest(
            subscriber,
            candidates,
            members,
            upto=upto,
            max_per_source=max_per_source,
            published_since=since,
        )
        self._plans[key] = plan
        if len(self._plans) > self._size:
            self._plans.popitem(last=False)
        return plan


def _due(subscriber: Subscriber, settings: Settings, now: datetime) -> bool:
    digest = settings.digest
    return is_due(
        subscriber.cadence,
        subscriber.last_digest_at,
        now,
        digest.timezone,
        digest.daily_at,
        digest.weekly_day,
    )


def build_pending(
    store: Store,
    settings: Settings,
    now: datetime,
    *,
    due_only: bool,
    subscriber_ids: list[int] | None = None,
) -> BuildReport:
    """Build the digests of confirmed subscribers (only those due, with ``due_only``;
    only those in ``subscriber_ids`` when given).

    Subscribers are built ``BUILD_BATCH`` to a transaction (each one whole: digest,
    entries and watermark together); each is read again inside it, so two builders
    running at once never build the same entries twice.
    """
    report = BuildReport()
    cache = PlanCache()
    upto = subscriber_rows.high_water(store.db)
    wanted = set(subscriber_ids) if subscriber_ids is not None else None
    batch: list[int] = []
    for listed in subscriber_rows.iter_confirmed(store.db):
        if wanted is not None and listed.id not in wanted:
            continue
        if due_only and not _due(listed, settings, now):
            report.not_due += 1
            continue
        report.considered += 1
        batch.append(listed.id)
        if len(batch) >= BUILD_BATCH:
            _build_batch(store, settings, now, batch, upto, cache, report, due_only=due_only)
            batch = []
    if batch:
        _build_batch(store, settings, now, batch, upto, cache, report, due_only=due_only)
    return report


def _build_batch(
    store: Store,
    settings: Settings,
    now: datetime,
    subscriber_ids: list[int],
    upto: int,
    cache: PlanCache,
    report: BuildReport,
    *,
    due_only: bool,
) -> None:
    with store.write() as db:
        for subscriber_id in subscriber_ids:
            subscriber = subscriber_rows.get(db, subscriber_id)
            if subscriber is None or subscriber.status != "confirmed":
                continue
            if due_only and not _due(subscriber, settings, now):
                continue
            plan = cache.plan(db, subscriber, upto, settings.digest.max_entries_per_source, now)
            if plan is None:
                # Nothing new: not a digest, so the period is not served yet; the
                # next run that finds something sends it.
                report.empty += 1
                subscriber_rows.raise_watermark(db, subscriber.id, upto)
            else:
                report.digest_ids.append(digest_rows.insert_digest(db, subscriber.id, plan, now))
                report.built += 1
                subscriber_rows.advance(db, subscriber.id, max(upto, subscriber.watermark), now)


def plan_all(
    store: Store, settings: Settings, now: datetime, *, due_only: bool
) -> Iterator[tuple[Subscriber, DigestPlan | None]]:
    """What a build would produce for each confirmed subscriber (None: nothing new),
    writing nothing."""
    cache = PlanCache()
    upto = subscriber_rows.high_water(store.db)
    for subscriber in subscriber_rows.iter_confirmed(store.db):
        if due_only and not _due(subscriber, settings, now):
            continue
        yield (
            subscriber,
            cache.plan(store.db, subscriber, upto, settings.digest.max_entries_per_source, now),
        )
