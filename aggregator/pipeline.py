"""Poll feeds end to end: fetch, prepare (in worker processes), decide, write.

The one place where the fetcher, the parser and the store meet. Decisions are made by
pure functions (``dedup.plan_entries``, ``polling.next_poll_at``); this module only
does the IO around them, in order:

- fetching is concurrent (bounded by the fetcher's global and per-host limits);
- parsing and sanitising run in a process pool, so the event loop never blocks on them;
- every write goes through one database thread, one transaction per feed per poll.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from .clock import Clock, system_clock
from .config import Settings
from .decide import Parsed, ParseOutcome, PollDecision, decide_poll
from .errors import ParseError, StoreError
from .fetch import FeedFetcher
from .models import EntryRecord, Feed, FetchResult, PollPlan, PollSummary
from .polling import spread_overdue
from .store import Database, Store
from .store import entries as entry_rows
from .store import feeds as feed_rows
from .urls import is_placeholder_title
from .workers import ParseWorkers, WorkerDied, WorkTimedOut, stop_on_signals

if TYPE_CHECKING:
    from .prepare import PreparedFeed

BOOKKEEPING_BATCH = 256
"""At most this many polls that store no entries (304s, failures) share a transaction."""
BOOKKEEPING_WAIT_SECONDS = 0.05
"""How long such a poll's record waits for others to join its transaction: a killed poll
loses at most this much bookkeeping (never entries, which are written at once)."""

log = logging.getLogger("aggregator.poll")

PARSE_DEADLINE_SECONDS = 60.0
"""How long one document may take to parse in a worker before it is stopped and its feed
fails with a ParseError (a document built to be slow to parse: 1.8 MB of unclosed tags
took 105 s; the largest legitimate feeds take a few seconds)."""

PARSER_MODULE = "aggregator.prepare"
"""What the parse processes import once, before the first document (see workers)."""

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")


def snapshot_urls(settings: Settings) -> dict[str, str]:
    """Feed URL -> local file URL, when the configuration says to read snapshots."""
    if not settings.poll.use_snapshots:
        return {}
    return {
        feed.url: feed.snapshot.resolve().as_uri()
        for feed in settings.feeds
        if feed.snapshot is not None
    }


@dataclass
class Poller:
    """Everything one polling process shares: settings, store, fetcher, pools, clock."""

    settings: Settings
    store: Store
    fetcher: FeedFetcher
    parse_workers: ParseWorkers
    db_executor: ThreadPoolExecutor
    clock: Clock = system_clock
    rand: Callable[[], float] = field(default_factory=lambda: random.Random().random)

    def __post_init__(self) -> None:
        self._snapshots = snapshot_urls(self.settings)
        self._configured = {feed.url for feed in self.settings.feeds}
        self._intervals = {  # configured intervals; a feed's own (CLI, admin) comes first
            feed.url: feed.interval for feed in self.settings.feeds if feed.interval is not None
        }
        self.stopping = False
        self.store_failure: StoreError | None = None
        self._deciding = 0  # polls started that have not decided yet
        self._book: list[_Pending] = []  # decisions waiting for their shared transaction
        self._book_timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._fetching: set[asyncio.Future[FetchResult]] = set()

    def stop(self) -> None:
        """Start no new feed and drop the fetches still waiting for their server (those
        feeds are polled again next time); those already fetched are still written."""
        self.stopping = True
        for fetching in list(self._fetching):
            fetching.cancel()

    async def db(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the database thread (the poller's single writer); its result."""
        return await asyncio.get_running_loop().run_in_executor(self.db_executor, work)

    async def choose(
        self, *, feed_ids: Sequence[int] | None = None, due_only: bool = False, limit: int = 0
    ) -> list[Feed]:
        """Enabled feeds, or only those due now, most overdue first; at most ``limit``."""
        now = self.clock()
        if due_only:
            feeds = await self.db(lambda: feed_rows.due_feeds(self.store.db, now))
        else:
            feeds = [
                f for f in await self.db(lambda: feed_rows.list_feeds(self.store.db)) if f.enabled
            ]
        if feed_ids is not None:
            wanted = set(feed_ids)
            feeds = [f for f in feeds if f.id in wanted]
        return feeds[:limit] if limit else feeds

    async def poll_many(
        self,
        feeds: Sequence[Feed],
        on_result: Callable[[PollSummary], None] | None = None,
    ) -> list[PollSummary]:
        """Poll ``feeds`` concurrently; their summaries, in the order given.
        ``on_result`` is called with each summary as it comes (progress). A database
        failure stops the rest (see ``poll`` and ``store_failure``)."""
        self.store_failure = None

        async def one(feed: Feed) -> PollSummary:
            summary = await self.poll(feed)
            if on_result is not None:
                on_result(summary)
            return summary

        return list(await asyncio.gather(*(one(feed) for feed in feeds)))

    def _guarded(self, work: Callable[[], T]) -> Callable[[], T]:
        """``work`` as the database thread runs it: not tried once the database has failed
        in this poll (it would wait out the busy timeout again), and its own failure is
        kept at once, before the next queued write starts (see ``store_failure``)."""

        def run() -> T:
            if self.store_failure is not None:
                raise self.store_failure
            try:
                return work()
            except StoreError as error:
                if self.store_failure is None:
                    self.store_failure = error
                raise

        return run

    async def _write(self, feed: Feed, work: Callable[[], PollSummary]) -> PollSummary:
        """Run a feed's write; a database failure ends the poll (see ``store_failure``):
        the writes still queued are not tried (each would wait out the busy timeout),
        which is checked when the database thread comes to them."""
        try:
            return await self.db(self._guarded(work))
        except StoreError as error:
            if self.store_failure is None:
                self.store_failure = error
            return _not_stored(feed, error)

    async def poll(self, feed: Feed) -> PollSummary:
        """Poll one feed. Never raises for a problem of the feed: it is in the summary.

        When the database fails (full, locked, damaged), the feeds in flight report it
        in their summary, no other feed is started, and ``store_failure`` keeps it.
        A poll that stores no entries (304, failure) shares its transaction with the
        others of its moment (see ``BOOKKEEPING_BATCH``); its summary comes once that
        transaction is committed.
        """
        self._deciding += 1
        decided = False

        def done_deciding() -> None:
            nonlocal decided
            if not decided:
                decided = True
                self._deciding -= 1
                if self._book and self._deciding == 0:
                    self._flush_book()  # nobody else is coming: do not wait

        try:
            return await self._poll(feed, done_deciding)
        finally:
            done_deciding()

    async def _poll(self, feed: Feed, done_deciding: Callable[[], None]) -> PollSummary:
        if self.stopping or self.store_failure:
            failure = self.store_failure
            return PollSummary(
                feed_id=feed.id,
                url=feed.url,
                title=feed.title or feed.url,
                status="skipped",
                error=f"not polled: {failure}" if failure else None,
                store_error=str(failure) if failure else None,
            )
        fetch_url = self._snapshots.get(feed.url, feed.url)
        fetching = asyncio.ensure_future(
            self.fetcher.fetch(fetch_url, etag=feed.etag, last_modified=feed.last_modified)
        )
        self._fetching.add(fetching)
        try:
            result = await fetching
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this poll itself is cancelled, not only its fetch
            # stop() dropped the fetch: nothing of this feed is written; next poll.
            return PollSummary(
                feed_id=feed.id, url=feed.url, title=feed.title or feed.url, status="skipped"
            )
        finally:
            self._fetching.discard(fetching)
        now = self.clock()
        parsed: ParseOutcome = None
        prepared: PreparedFeed | None = None
        if result.error is None and not result.not_modified and result.content is not None:
            from .prepare import prepare_feed  # only a poll that parses needs the parser

            try:
                prepared = await self.parse_workers.run(
                    partial(
                        prepare_feed,
                        result.content,
                        url=result.final_url if fetch_url == feed.url else feed.url,
                        headers=dict(result.headers),
                        limits=self.settings.parse,
                        now=now,
                    ),
                    size=len(result.content),
                )
                parsed = Parsed(title=prepared.title, site_url=prepared.site_url)
            except ParseError as error:
                parsed = error
            except WorkTimedOut as error:
                parsed = ParseError(
                    f"parsing this document took too long ({error}); it is tried again at "
                    "the next poll",
                    url=feed.url,
                )
            except WorkerDied:
                if self.stopping:  # the workers went with a stop signal to the whole group
                    return PollSummary(
                        feed_id=feed.id,
                        url=feed.url,
                        title=feed.title or feed.url,
                        status="skipped",
                    )
                parsed = ParseError(
                    "the parsing process died while reading this document (killed or out of "
                    "memory); it is tried again at the next poll",
                    url=feed.url,
                )
        decision = decide_poll(
            feed,
            result,
            parsed,
            now=now,
            rand=self.rand(),
            policy=self.settings.poll.policy,
            interval=self._intervals.get(feed.url),
            follow_moves=feed.url not in self._snapshots,
            configured=feed.url in self._configured,
        )
        if prepared is not None and decision.store_entries:
            done_deciding()
            return await self._write(feed, partial(self._write_success, feed, decision, prepared))
        pending = _Pending(feed, decision, asyncio.get_running_loop().create_future())
        self._book.append(pending)
        done_deciding()
        if len(self._book) >= BOOKKEEPING_BATCH:
            self._flush_book()
        elif self._book_timer is None and self._book:
            self._book_timer = asyncio.get_running_loop().call_later(
                BOOKKEEPING_WAIT_SECONDS, self._flush_book
            )
        return await pending.summary

    # --- carrying out decisions ----------------------------------------------------

    def _flush_book(self) -> None:
        """Write the decisions waiting in the book, in one transaction, now."""
        if self._book_timer is not None:
            self._book_timer.cancel()
            self._book_timer = None
        items, self._book = self._book, []
        if items:
            task = asyncio.get_running_loop().create_task(self._write_book(items))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _write_book(self, items: list[_Pending]) -> None:
        try:
            gone, blocked = await self.db(
                self._guarded(
                    partial(self._write_bookkeeping, [(i.feed, i.decision) for i in items])
                )
            )
        except StoreError as error:
            if self.store_failure is None:
                self.store_failure = error
            for item in items:
                _settle(item.summary, _not_stored(item.feed, error))
        except BaseException as error:  # a bug or a cancellation: every waiting poll sees it
            for item in items:
                if not item.summary.done():
                    item.summary.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
        else:
            for item in items:
                summary = (
                    _removed(item.feed)
                    if item.feed.id in gone
                    else _summary(item.feed, item.decision)
                )
                if item.feed.id in blocked:
                    summary = _move_not_made(summary, item.decision, blocked[item.feed.id])
                _settle(item.summary, summary)

    def _write_bookkeeping(
        self, decided: Sequence[tuple[Feed, PollDecision]]
    ) -> tuple[set[int], dict[int, int]]:
        """Polls that store no entries: their feed rows and fetch records, in one
        transaction (run on the database thread). A feed removed since it was chosen is
        left out (its row is gone). Returns the ids of those, and feed id -> the other
        feed that already has the URL it was permanently moved to (not moved)."""
        blocked: dict[int, int] = {}
        with self.store.write() as db:
            present = feed_rows.existing_feed_ids(db, (feed.id for feed, _ in decided))
            kept = [(feed, decision) for feed, decision in decided if feed.id in present]
            for feed, decision in kept:
                holder = feed_rows.apply_feed_update(db, feed, decision.update)
                if holder is not None:
                    blocked[feed.id] = holder
            feed_rows.record_fetches(db, [decision.fetch for _, decision in kept])
        return {feed.id for feed, _ in decided} - present, blocked

    def _write_success(
        self, feed: Feed, decision: PollDecision, prepared: PreparedFeed
    ) -> PollSummary:
        now = decision.update.polled_at
        with self.store.write() as db:
            if not feed_rows.existing_feed_ids(db, [feed.id]):
                return _removed(feed)  # removed since it was chosen: nothing to write
            # The feed's row first: a new title re-indexes the feed's stored entries for
            # search (their source), so new entries are indexed once, with it.
            holder = feed_rows.apply_feed_update(db, feed, decision.update)
            plan = plan_poll(
                db, feed.id, prepared.records, window=self.settings.poll.cross_post_window
            )
            entry_rows.apply_plan(db, feed.id, plan, now)
            if feed.backlog_seq is None:
                feed_rows.mark_backlog(db, feed.id)
            feed_rows.record_fetch(
                db, replace(decision.fetch, new=len(plan.inserts), updated=len(plan.updates))
            )
        summary = PollSummary(
            feed_id=feed.id,
            url=feed.url,
            title=(
                prepared.title or feed.url
                if is_placeholder_title(feed.title, feed.url)
                else feed.title
            ),
            status="ok",
            new=len(plan.inserts) - plan.duplicates,
            updated=len(plan.updates),
            duplicates=plan.duplicates,
            warnings=(*prepared.warnings, *_logged(feed, decision.warnings)),
        )
        return summary if holder is None else _move_not_made(summary, decision, holder)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A decision waiting for its shared transaction; ``summary`` resolves once written."""

    feed: Feed
    decision: PollDecision
    summary: asyncio.Future[PollSummary]


def _settle(future: asyncio.Future[PollSummary], summary: PollSummary) -> None:
    if not future.done():  # the poll may have been cancelled meanwhile
        future.set_result(summary)


def _not_stored(feed: Feed, error: StoreError) -> PollSummary:
    """The summary of a feed whose write the database refused."""
    return PollSummary(
        feed_id=feed.id,
        url=feed.url,
        title=feed.title or feed.url,
        status="error",
        error=f"not stored: {error}",
        store_error=str(error),
    )


REMOVED_DURING_POLL = "removed during the poll: nothing of it was stored"
"""The note of a feed whose row was deleted (CLI, admin) while it was being polled."""


def _removed(feed: Feed) -> PollSummary:
    """The summary of a feed removed while it was polled: skipped, nothing written."""
    return PollSummary(
        feed_id=feed.id,
        url=feed.url,
        title=feed.title or feed.url,
        status="skipped",
        warnings=(REMOVED_DURING_POLL,),
    )


def _move_not_made(summary: PollSummary, decision: PollDecision, holder: int) -> PollSummary:
    """``summary`` with a warning (also logged) that the feed's permanent move was not
    made because feed ``holder`` already has that URL (the two are not merged)."""
    note = (
        f"permanently moved to {decision.update.url}, which feed {holder} already has: "
        f"not moved (the two feeds are not merged; remove one of them)"
    )
    log.warning("feed %d (%s): %s", summary.feed_id, summary.url, note)
    return replace(summary, warnings=(*summary.warnings, note))


def _summary(feed: Feed, decision: PollDecision) -> PollSummary:
    """The summary of a poll that stored no entries."""
    return PollSummary(
        feed_id=feed.id,
        url=feed.url,
        title=feed.title or feed.url,
        status=decision.status,
        error=decision.error,
        warnings=_logged(feed, decision.warnings),
    )


def _logged(feed: Feed, warnings: tuple[str, ...]) -> tuple[str, ...]:
    """``warnings`` of a poll's decision, each logged once with its feed."""
    for warning in warnings:
        log.warning("feed %d (%s): %s", feed.id, feed.url, warning)
    return warnings


def plan_poll(
    db: Database,
    feed_id: int,
    records: Sequence[EntryRecord],
    *,
    window: timedelta,
) -> PollPlan:
    """What storing ``records`` in feed ``feed_id`` does (inside the feed's write):
    the stored entries and cross-feed candidates they may match, looked up here, then
    decided by ``dedup.plan_entries``. ``window`` is the cross-post time window."""
    existing = entry_rows.existing_for(
        db,
        feed_id,
        keys=(r.key for r in records),
        link_keys=(r.link_key for r in records if r.link_key),
        aliases=(r.alias for r in records),
    )
    candidates = entry_rows.cross_candidates(
        db,
        feed_id,
        canonical_urls=(r.canonical_url for r in records if r.canonical_url),
        norm_titles=(r.norm_title for r in records if r.norm_title),
    )
    from .dedup import plan_entries  # only a poll that stores entries needs it

    return plan_entries(
        records, existing=existing, candidates=candidates, window=window, feed_id=feed_id
    )


@asynccontextmanager
async def open_poller(
    settings: Settings,
    store: Store,
    *,
    clock: Clock = system_clock,
    transport: httpx.AsyncBaseTransport | None = None,
    parse_in_process_bytes: int = 0,
) -> AsyncIterator[Poller]:
    """A Poller with its fetcher, parse processes and database thread, closed on exit.

    The parse processes (one per core unless configured) start when the first document
    that is not parsed in this process needs parsing: the first
    ``parse_in_process_bytes`` bytes of documents are (see ParseWorkers; 0, the default
    for a long-lived poller, parses every document in the processes). On exit the write
    in flight finishes (the database thread is drained) before the store can be closed.
    ``transport`` replaces the fetcher's network (see ``FeedFetcher``), as
    ``httpx.MockTransport`` does in tests.
    """
    db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aggregator-db")
    workers = ParseWorkers(
        settings.poll.parse_workers or os.cpu_count() or 1,
        preload=[PARSER_MODULE],
        inline_bytes=parse_in_process_bytes,
        deadline=PARSE_DEADLINE_SECONDS,
    )
    try:
        async with FeedFetcher(settings.fetch, transport=transport) as fetcher:
            yield Poller(settings, store, fetcher, workers, db_executor, clock=clock)
    finally:
        workers.close()
        db_executor.shutdown(wait=True)


def spread_catch_up(store: Store, now: datetime, *, batch: int, over: timedelta) -> int:
    """After downtime, more feeds are overdue than one batch: give them next-poll times
    spread evenly over ``over``, most overdue first, instead of polling all at once.
    Returns how many feeds were spread (0 when a batch can take them all)."""
    overdue = [f for f in feed_rows.due_feeds(store.db, now) if f.next_poll_at is not None]
    if len(overdue) <= batch:
        return 0
    times = spread_overdue([f.id for f in overdue], now=now, over=over)
    with store.write() as db:
        for feed_id, moment in times.items():
            feed_rows.set_next_poll(db, feed_id, moment)
    return len(times)


async def poll_feeds(
    settings: Settings,
    store: Store,
    *,
    feed_ids: Sequence[int] | None = None,
    due_only: bool = False,
    clock: Clock = system_clock,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[PollSummary], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[PollSummary]:
    """Poll the chosen feeds (all enabled ones by default) once, concurrently.

    Small polls parse in this process; parse processes start only when the documents
    outgrow ``[poll] parse_in_process_kb`` (see ``ParseWorkers``).

    SIGTERM or SIGINT during the poll stops it gracefully: the feeds being written are
    committed, the others are left for the next poll (see ``workers.stop_on_signals``).
    ``transport``: see ``open_poller``.
    """
    async with open_poller(
        settings,
        store,
        clock=clock,
        transport=transport,
        parse_in_process_bytes=settings.poll.parse_in_process_bytes,
    ) as poller:
        with stop_on_signals(poller.stop):
            feeds = await poller.choose(feed_ids=feed_ids, due_only=due_only)
            if on_start is not None:
                on_start(len(feeds))
            return await poller.poll_many(feeds, on_result)
