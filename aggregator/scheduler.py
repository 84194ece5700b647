"""The long-running service: APScheduler jobs and the web app in one event loop.

- The poll job wakes every ``tick`` and polls the feeds that are due (per-feed interval,
  widened by backoff and Retry-After), most overdue first, a bounded batch at a time.
  After downtime the overdue feeds are spread over a few minutes instead of all at once.
- The digest job wakes every minute, builds the digests that are due (daily and weekly
  times in the configured time zone; a missed period yields one digest) and sends them.
- Jobs coalesce and never overlap (``max_instances=1``). A second service on the same
  database serves pages but runs no jobs: one process holds a lock file beside the
  database (released by the kernel if that process dies).
- SIGTERM and Ctrl-C: uvicorn stops taking requests, the scheduler stops starting jobs,
  the unit in flight (a feed's transaction, a message) completes, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import uvicorn
from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .clock import Clock, system_clock
from .config import Settings
from .digests.build import build_pending
from .digests.send import send_pending, send_welcomes
from .errors import ConfigError, StoreError
from .mail import open_sender
from .pipeline import Poller, open_poller, spread_catch_up
from .sources import sync_configured_feeds
from .store import JOBS_LOCK_SUFFIX, Store
from .store.entries import count_entries
from .text import escaped
from .web import create_app

log = logging.getLogger("aggregator.service")


# After downtime, the overdue feeds are spread over this long instead of polled all at once.
CATCH_UP_SPREAD = timedelta(minutes=5)
SHUTDOWN_GRACE_SECONDS = 20.0  # for the unit of work in flight


class JobLock:
    """An exclusive, non-blocking lock file: one job runner per database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> bool:
        """Whether this process holds the lock (taken now or before); False when another
        process holds it. Raises ``StoreError`` naming the file when it cannot be made
        or written (a folder in its place, a full disk)."""
        if self._handle is not None:
            return True
        try:
            handle = self.path.open("a+", encoding="utf-8")
        except OSError as error:
            raise StoreError(
                f"cannot use the jobs lock file: {error.strerror}", path=str(self.path)
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        except OSError as error:
            handle.close()
            raise StoreError(
                f"cannot use the jobs lock file: {error.strerror}", path=str(self.path)
            ) from None
        self._handle = handle
        return True

    def release(self) -> None:
        """Give the lock up (no-op when not held); the kernel also releases it when the
        process dies.
        """
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock now."""
        return self._handle is not None


class Service:
    """The ``aggregator run`` process: the web app, the poll job and the digest job in one
    event loop, on one database; ``clock`` gives the current time (timezone-aware).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = system_clock,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.timings = settings.service
        self.lock = JobLock(settings.database.with_name(settings.database.name + JOBS_LOCK_SUFFIX))
        self._poller: Poller | None = None
        self._store: Store | None = None
        self._spread_done = False
        # Welcome mails wait for the first poll, so that they can list recent posts.
        self._polled_once = False
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._running: set[str] = set()  # jobs with a run in flight
        # Set when the service stops: a digest run hands over the messages in flight,
        # records them, and starts no other (see digests.send.send_pending).
        self.stopping = threading.Event()

    @contextmanager
    def _job(self, name: str) -> Iterator[bool]:
        """Mark the current task as the job ``name`` in flight, for a graceful shutdown;
        yields False (run nothing) when that job is still running from an earlier tick or
        the service is stopping."""
        if name in self._running or self.stopping.is_set():
            yield False
            return
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        self._running.add(name)
        try:
            yield True
        finally:
            self._running.discard(name)
            if task is not None:
                self._in_flight.discard(task)

    # --- jobs -------------------------------------------------------------------------

    def _may_run_jobs(self) -> bool:
        """Jobs run in one process per database, and not on a read-only one."""
        if self._store is None or self._store.readonly:
            return False
        try:
            return self.lock.acquire()
        except StoreError as error:
            log.error("jobs not run: %s", error)
            return False

    async def poll_due(self) -> None:
        """The poll job: poll the feeds that are due, a batch at a time (spread out once
        after downtime). Does nothing in a process that does not hold the job lock; a
        database failure is logged and ends the run.
        """
        if not self._may_run_jobs() or self._poller is None:
            return
        with self._job("poll") as run:
            if not run:
                return
            try:
                await self._poll_due(self._poller)
            finally:
                if not self._polled_once:
                    self._polled_once = True
                    try:
                        await asyncio.to_thread(self._welcomes_blocking)
                    except StoreError as error:
                        log.error("welcome mails not sent: the database failed: %s", error)

    async def _poll_due(self, poller: Poller) -> None:
        if not self._spread_done:
            await poller.db(self._spread_overdue)
            self._spread_done = True
        feeds = await poller.choose(due_only=True, limit=self.timings.poll_batch)
        if not feeds:
            return
        summaries = await poller.poll_many(feeds)
        for summary in summaries:
            log.info(
                "poll feed=%d status=%s new=%d updated=%d duplicates=%d%s",
                summary.feed_id,
                summary.status,
                summary.new,
                summary.updated,
                summary.duplicates,
                f" error={summary.error!r}" if summary.error else "",
            )
        if poller.store_failure is not None:
            log.error("poll stopped: the database failed: %s", poller.store_failure)
            return
        log.info(
            "poll cycle feeds=%d new=%d updated=%d duplicates=%d failed=%d entries=%d",
            len(summaries),
            sum(s.new for s in summaries),
            sum(s.updated for s in summaries),
            sum(s.duplicates for s in summaries),
            sum(1 for s in summaries if s.status in ("error", "disabled")),
            await poller.db(lambda: count_entries(poller.store.db)),
        )

    def _spread_overdue(self) -> None:
        assert self._poller is not None
        spread = spread_catch_up(
            self._poller.store, self.clock(), batch=self.timings.poll_batch, over=CATCH_UP_SPREAD
        )
        if spread:
            log.info("catch-up feeds=%d spread_over=%s", spread, CATCH_UP_SPREAD)

    async def digests_due(self) -> None:
        """The digest job: build the digests that are due and send pending ones (and welcome
        mails after the first poll), in a worker thread. Does nothing without the job
        lock; a database failure is logged.
        """
        if not self._may_run_jobs():
            return
        with self._job("digests") as run:
            if not run:
                return
            try:
                await asyncio.to_thread(self._digests_due_blocking)
            except StoreError as error:
                log.error("digests stopped: the database failed: %s", error)

    def _digests_due_blocking(self) -> None:
        store = self._store
        assert store is not None
        sender = open_sender(self.settings.mail.smtp, self.settings.mail.outbox)
        try:
            if self._polled_once:
                for problem in send_welcomes(
                    store, sender, self.settings, self.clock(), stop=self.stopping
                ):
                    log.warning("subscriber mail not sent: %s", problem)
            built = build_pending(store, self.settings, self.clock(), due_only=True)
            if built.built:
                log.info("digests built=%d", built.built)
            report = send_pending(store, sender, self.settings, self.clock, stop=self.stopping)
            if report.handled:
                log.info(
                    "digests sent=%d failed=%d retry=%d%s",
                    report.sent,
                    report.failed,
                    report.retried,
                    f" stopped={report.stopped!r}" if report.stopped else "",
                )
        finally:
            sender.close()

    def _welcomes_blocking(self) -> None:
        store = self._store
        if store is None:
            return
        sender = open_sender(self.settings.mail.smtp, self.settings.mail.outbox)
        try:
            for problem in send_welcomes(
                store, sender, self.settings, self.clock(), stop=self.stopping
            ):
                log.warning("subscriber mail not sent: %s", problem)
        finally:
            sender.close()

    # --- the process ------------------------------------------------------------------

    async def serve(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        listener: socket.socket | None = None,
    ) -> None:
        """Open the database, add the configured feeds, then serve the web app on
        ``listener``, or on ``host``:``port`` (the settings' by default), and run the jobs
        until SIGTERM or Ctrl-C; the unit of work in flight completes first (up to
        ``SHUTDOWN_GRACE_SECONDS``). A read-only database, or another process holding the
        job lock, serves pages only.
        """
        settings = self.settings
        if listener is None:
            listener = listen(
                host or settings.web.host, settings.web.port if port is None else port
            )
        store = self._store = Store.open(settings.database)
        try:
            sync_configured_feeds(store, settings, self.clock())
        except StoreError as error:
            log.warning("configured feeds not added at start: %s", error)
        if store.readonly:
            log.warning(
                "database %s is read-only: serving pages only (no polls, digests or sign-ups)",
                settings.database,
            )
        elif not self.lock.acquire():
            log.warning(
                "jobs: another process runs the jobs for %s; serving pages only", settings.database
            )
        app = create_app(settings, clock=self.clock, store=store)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host or settings.web.host,
                port=port if port is not None else settings.web.port,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=5,
                proxy_headers=False,  # the app trusts [web] trusted_proxies only
            )
        )
        scheduler = AsyncIOScheduler(timezone=settings.digest.timezone)
        scheduler.add_listener(job_failed, EVENT_JOB_ERROR)
        job_options: dict[str, Any] = {
            # A tick that finds its job still running returns at once (see _job), so a
            # long digest run does not log APScheduler's "skipped" warning every tick.
            "max_instances": 2,
            "coalesce": True,
            "misfire_grace_time": None,
        }
        async with open_poller(settings, store, clock=self.clock) as poller:
            self._poller = poller
            scheduler.add_job(
                self.poll_due,
                IntervalTrigger(seconds=self.timings.poll_tick.total_seconds()),
                id="poll",
                next_run_time=system_clock(),  # APScheduler runs on real time
                **job_options,
            )
            scheduler.add_job(
                self.digests_due,
                IntervalTrigger(seconds=self.timings.digest_tick.total_seconds()),
                id="digests",
                next_run_time=system_clock() + timedelta(seconds=2),
                **job_options,
            )
            scheduler.start()
            keep_signals_for_graceful_exit()
            log.info(
                "service url=http://%s:%s database=%s",
                server.config.host,
                server.config.port,
                settings.database,
            )
            try:
                await server.serve(sockets=[listener])
            finally:
                # Runs in flight finish their unit of work (a poll's fetched feeds are
                # written, a digest run's messages on the wire are recorded) before the
                # scheduler, which would cancel them, shuts down.
                self.stopping.set()
                poller.stop()
                scheduler.pause()
                await self._wait_for_jobs()
                scheduler.shutdown(wait=False)
                self._poller = None
        self.lock.release()
        store.close()
        self._store = None
        log.info("service stopped")

    async def _wait_for_jobs(self) -> None:
        """Let the jobs in flight finish their unit of work, within the grace period."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=SHUTDOWN_GRACE_SECONDS)
        if self._in_flight:
            log.warning(
                "jobs still running after %g s: %s; stopping them",
                SHUTDOWN_GRACE_SECONDS,
                ", ".join(sorted(self._running)),
            )


def listen(host: str, port: int) -> socket.socket:
    """The web port, bound before any work starts: a port in use is one clear line.

    Raises ConfigError when the address cannot be bound: key ``web.host`` for a host
    name that does not resolve, else ``web.port`` (in use, not allowed)."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:  # create_server would hide it as errno -2
        raise ConfigError(
            f"cannot listen on {host}:{port}: {error.strerror or error}", key="web.host"
        ) from None
    try:
        return socket.create_server((host, port), backlog=128)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}", key="web.port") from None


def keep_signals_for_graceful_exit() -> None:
    """SIGTERM and SIGINT only ask to stop: uvicorn catches them while it serves and
    raises them again once it has stopped; by then our own shutdown must still run,
    and a requested stop is a clean exit (status 0)."""

    def requested(signum: int, frame: object) -> None:
        log.info("stop requested signal=%d", signum)

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, requested)


# Formats of the service log: one text line per event, or one JSON object per line.
LOG_FORMATS = ("text", "json")
_PAIR = re.compile(r"""(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)""")


def _cause(exc_info: Any) -> str | None:
    if not exc_info or exc_info[1] is None:
        return None
    error = exc_info[1]
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class OneLineFormatter(logging.Formatter):
    """time level logger event key=value …; an exception is its cause in one
    ``cause=`` pair, never a traceback."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z"
        )

    def format(self, record: logging.LogRecord) -> str:
        cause = _cause(record.exc_info)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        # Messages carry what servers and feeds said (an SMTP reply, a URL): nothing in
        # them may move the terminal or the log file that shows the line.
        line = escaped(" ".join(super().format(record).split("\n")))
        return f"{line} cause={cause!r}" if cause else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: time, level, logger, message, the
    message's key=value pairs as fields, and the cause of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        message = escaped(record.getMessage())
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        pairs = _PAIR.findall(message)
        if pairs:  # "poll feed=3 status=ok …": the event's name, then its fields
            event["event"] = message.split(" ", 1)[0]
        for key, value in pairs:
            if key not in event:
                event[key] = value[1:-1] if value[:1] in "'\"" and len(value) > 1 else value
        cause = _cause(record.exc_info)
        if cause:
            event["cause"] = cause
        return json.dumps(event, ensure_ascii=False)


class AccessLine(logging.Filter):
    """uvicorn's access log as one of our events: ``request client=… method=… path=…
    status=…`` (the path already stripped of capability tokens)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client, method, path, _version, status = args
            record.msg = "request client=%s method=%s path=%s status=%s"
            record.args = (client, method, path, status)
        return True


def configure_logging(level: str, log_format: str = "text") -> None:
    """One line per event (text: time, level, logger, then the event's key=value
    pairs; json: one object a line), for the service, the web server and APScheduler
    alike."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else OneLineFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessLine) for f in access.filters):
        access.addFilter(AccessLine())
    quiet = logging.NOTSET if level == "debug" else logging.WARNING
    # A line per job run, or httpx's per request beside our "poll feed=…" event,
    # drowns the events: only their warnings, unless debugging.
    for name in ("apscheduler", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
    # A failed job is our one "job failed" line (see job_failed), not APScheduler's
    # traceback.
    logging.getLogger("apscheduler.executors").setLevel(logging.CRITICAL)


def job_failed(event: JobExecutionEvent) -> None:
    """One log line for a job that raised: which job, when it was due, and why."""
    error = event.exception
    if isinstance(error, asyncio.CancelledError):  # a stop: what was written stays written
        log.info("job stopped by shutdown job=%s; what it had not written is redone", event.job_id)
        return
    cause = f"{type(error).__name__}: {' '.join(str(error).split())}" if error else "unknown"
    log.error(
        "job failed job=%s scheduled=%s cause=%r",
        event.job_id,
        event.scheduled_run_time.isoformat() if event.scheduled_run_time else "-",
        cause,
    )


def run_service(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    listener: socket.socket | None = None,
    log_format: str = "text",
) -> None:
    """Configure logging (``log_format``: one of ``LOG_FORMATS``) and run the service until
    it is stopped, serving on ``listener`` when given (see ``listen``); blocks.
    """
    configure_logging(settings.log_level, log_format)
    asyncio.run(Service(settings).serve(host, port, listener=listener))
