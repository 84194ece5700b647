"""Send pending digests and mark them sent: each digest exactly once (DESIGN §7).

Sending renders each pending digest from what was stored, hands it to the mailer,
then marks it sent in its own transaction. A crash between the hand-over and the mark
re-sends that one message on the next run, with the same Message-ID; nothing else
repeats and nothing is skipped. The next digest is rendered while the current one is on
the wire; with ``[mail] connections`` above 1 that many go out at once, each connection
marking its message before it takes the next (so a crash re-sends at most one message
per connection). Temporary failures are retried with backoff; a
permanent refusal marks the address bounced and ends only that subscriber's digests.
One run sends at a time (``lease.SendLease``). Welcome mails go out here too, and the
confirmation and welcome mails that failed are retried here (``send_welcomes``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from ..backoff import exponential_backoff
from ..clock import Clock
from ..config import Settings
from ..errors import MailDeferredError, MailPermanentError, MailTemporaryError, StoreLocked
from ..mail import OutgoingMessage, Sender
from ..store import Store
from ..store import digests as digest_rows
from ..store import subscribers as subscriber_rows
from ..store.digests import DigestRow
from ..subscriptions import (
    confirmation_message,
    deliver_owed,
    links_for,
    mail_retry_delay,
    owe_first_attempt,
)
from .lease import SendLease
from .render import Renderer, welcome_message

BACKOFF_BASE = timedelta(minutes=5)
"""Wait before the second attempt at a digest; each further one doubles it."""
BACKOFF_CAP = timedelta(hours=6)
"""Longest wait between two attempts at a digest."""
MAX_ATTEMPTS = 12
"""Attempts at one digest (about two and a half days of retries), then it is failed."""
MAX_CONSECUTIVE_TEMPORARY = 5
"""This many temporary failures of the server in a row (no connection, a refused
greeting, EHLO or MAIL, 421, a lost connection) means the mail server is away: the run
stops (what is left stays pending for the next one) instead of knocking on every
digest. A 4xx to RCPT or DATA (``MailDeferredError``) concerns one recipient: that
digest is retried later (the attempt counts), but it neither counts towards the stop
nor breaks a run of server failures."""
_BATCH = 200

log = logging.getLogger(__name__)

Outcome = Literal["sent", "retry", "failed", "bounced", "empty"]
"""How one digest went: delivered, to be retried, given up, address bounced, or
nothing to send (unsubscribed, or every entry deleted)."""


@dataclass(frozen=True, slots=True)
class SendProgress:
    """After each digest handled: ``done`` of ``total``, how it went, and to whom."""

    done: int
    total: int
    outcome: Outcome
    digest_id: int
    address: str


@dataclass(slots=True)
class SendReport:
    """What ``send_pending`` did, by outcome; ``stopped`` says why a run ended early,
    ``errors`` the mail server's answers (one line each)."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    bounced: int = 0
    empty: int = 0
    stopped: str | None = None  # why the run ended early, if it did
    errors: list[str] = field(default_factory=list)

    @property
    def handled(self) -> int:
        """Digests handled in any way."""
        return self.sent + self.retried + self.failed + self.bounced + self.empty


def backoff(attempts: int) -> timedelta:
    """Wait before attempt ``attempts + 1`` at a digest: doubling from ``BACKOFF_BASE``,
    at most ``BACKOFF_CAP``."""
    return exponential_backoff(max(attempts, 1), base=BACKOFF_BASE, cap=BACKOFF_CAP)


def count_due(store: Store, now: datetime) -> int:
    """Pending digests whose time has come at ``now``."""
    return digest_rows.count_due(store.db, now)


STOPPED_BY_SIGNAL = "stopped by a signal; the digests not sent yet wait for the next run"
"""``SendReport.stopped`` of a run ended by its ``stop`` event."""
ANOTHER_SENDER = "another run is sending digests"
"""``SendReport.stopped`` of a run that found the sending lease held (it sends nothing:
the other run sends what is due)."""


def send_pending(
    store: Store,
    sender: Sender,
    settings: Settings,
    clock: Clock,
    on_progress: Callable[[SendProgress], None] | None = None,
    *,
    limit: int | None = None,
    stop: threading.Event | None = None,
) -> SendReport:
    """Send every pending digest whose time had come when the run started (``clock()``
    then), oldest first; at most ``limit`` when given.

    ``clock`` also stamps sends and retries as the run goes.
    Returns at once (``stopped`` set) when another run holds the sending lease.
    ``stop`` set (by a signal handler) ends the run early: the messages being handed
    over finish and are recorded, the rest wait for the next run (``stopped`` says so).
    This thread renders; ``sender.connections`` threads hand the messages over, each
    marking its message's outcome (in a transaction of its own) before it takes the
    next, so a crash re-sends at most one message per connection. Raises what a
    sending thread raised (a ``StoreError``), once the others have finished.
    """
    now = clock()
    tick = clock
    report = SendReport()
    links = links_for(store, settings)
    renderer = Renderer(store, settings, links)
    lease = SendLease(store, tick)
    if not lease.take():
        report.stopped = ANOTHER_SENDER
        return report
    total = count_due(store, now)
    if limit is not None:
        total = min(total, limit)
    run = _SendRun(store, sender, tick, report, total, on_progress, stop)
    try:
        run.start(max(1, sender.connections))
        submitted = 0
        after = 0
        while not run.stopping:
            batch = digest_rows.due_batch(store.db, now, after_id=after, limit=_BATCH)
            if not batch:
                break
            for digest in batch:
                after = digest.id
                if stop is not None and stop.is_set():
                    run.stop(STOPPED_BY_SIGNAL)
                if run.stopping:
                    break
                if limit is not None and submitted >= limit:
                    run.stop("limit reached")
                    break
                if not lease.keep():
                    run.stop("lost the sending lease to another run")
                    break
                submitted += 1
                message = _message_or_close(store, renderer, digest, tick)
                if message is None:
                    run.finish(digest, "empty")
                else:
                    run.submit(digest, message)
    except BaseException:  # Ctrl-C, SIGTERM, a database failure: finish what is in flight
        run.stop("interrupted")
        raise
    finally:
        try:
            run.join()
        finally:
            lease.release()
    return report


def _message_or_close(
    store: Store, renderer: Renderer, digest: DigestRow, tick: Clock
) -> OutgoingMessage | None:
    """The digest's message, or None after closing a digest that has nothing to send."""
    if digest.subscriber_status != "confirmed":
        with store.write() as db:
            digest_rows.close_pending(db, digest.subscriber_id, "cancelled", "not subscribed")
        return None
    message = renderer.message(digest, date=tick())
    if message is None:  # every entry of it was deleted with its feed
        with store.write() as db:
            digest_rows.mark_failed(db, digest.id, "nothing left to send")
    return message


class _SendRun:
    """The sending threads of one run: rendered messages in through a bounded queue,
    each outcome recorded by the thread that sent it before it takes the next one."""

    def __init__(
        self,
        store: Store,
        sender: Sender,
        tick: Clock,
        report: SendReport,
        total: int,
        on_progress: Callable[[SendProgress], None] | None,
        stop: threading.Event | None = None,
    ) -> None:
        self.stop_event = stop
        self.store = store
        self.sender = sender
        self.tick = tick
        self.report = report
        self.total = total
        self.on_progress = on_progress
        self._lock = threading.Lock()
        self._consecutive = 0  # temporary failures of the server in a row
        self._server_error: str | None = None  # the last of them
        self._failure: BaseException | None = None
        self._queue: queue.Queue[tuple[DigestRow, OutgoingMessage] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._slots = threading.Semaphore(1)  # rendered messages waiting, at most

    @property
    def stopping(self) -> bool:
        if self.stop_event is not None and self.stop_event.is_set():
            self.stop(STOPPED_BY_SIGNAL)
        return self.report.stopped is not None or self._failure is not None

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.report.stopped is None:
                self.report.stopped = reason

    def start(self, connections: int) -> None:
        # One message rendered ahead per connection: memory stays flat in the run's size.
        self._slots = threading.Semaphore(connections)
        for number in range(connections):
            thread = threading.Thread(target=self._work, name=f"digest-send-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, digest: DigestRow, message: OutgoingMessage) -> None:
        while not self._slots.acquire(timeout=0.5):
            if self.stopping:
                return  # left pending for the next run
        self._queue.put((digest, message))

    def join(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        if self._failure is not None:
            raise self._failure

    def _work(self) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                self._slots.release()
                if self.stopping:
                    continue  # left pending for the next run
                digest, message = job
                try:
                    outcome, error, server_failed = _deliver(
                        self.store, self.sender, digest, message, self.tick
                    )
                    self.finish(digest, outcome, error, server_failed=server_failed)
                except BaseException as failure:  # a database failure: stop, re-raise
                    with self._lock:
                        if self._failure is None:
                            self._failure = failure
        finally:
            self.store.close_thread()

    def finish(
        self,
        digest: DigestRow,
        outcome: Outcome,
        error: str | None = None,
        *,
        server_failed: bool = False,
    ) -> None:
        report = self.report
        with self._lock:
            if outcome == "sent":
                report.sent += 1
            elif outcome == "retry":
                report.retried += 1
            elif outcome == "failed":
                report.failed += 1
            elif outcome == "bounced":
                report.bounced += 1
            else:
                report.empty += 1
            if error is not None:
                report.errors.append(error)
            if server_failed:
                self._consecutive += 1
                self._server_error = error
            elif outcome not in ("retry", "failed"):
                self._consecutive = 0
            # else a recipient's deferral: the count stays as it is
            if self.on_progress is not None:
                self.on_progress(
                    SendProgress(report.handled, self.total, outcome, digest.id, digest.email)
                )
            if self._consecutive >= MAX_CONSECUTIVE_TEMPORARY and report.stopped is None:
                report.stopped = f"mail server unavailable: {self._server_error}"


def _deliver(
    store: Store, sender: Sender, digest: DigestRow, message: OutgoingMessage, tick: Clock
) -> tuple[Outcome, str | None, bool]:
    """Hand one message over and record what became of it: (outcome, error or None,
    whether the failure was the server's rather than this recipient's).

    The digest is read again first: one cancelled since the run read it (an unsubscribe,
    perhaps kept in the spool while the database was locked) is not sent ("empty")."""
    if not digest_rows.still_pending(store.db, digest.id) or store.unsubscribe_waits(
        digest.subscriber_id
    ):
        return "empty", None, False
    try:
        sender.send(message)
    except MailPermanentError as error:
        reason = str(error)
        with store.write() as db:
            digest_rows.mark_failed(db, digest.id, reason)
            digest_rows.close_pending(db, digest.subscriber_id, "failed", "address bounced")
            subscriber_rows.set_status(db, digest.subscriber_id, "bounced", tick(), reason=reason)
        return "bounced", reason, False
    except MailTemporaryError as error:
        reason = str(error)
        server_failed = not isinstance(error, MailDeferredError)
        with store.write() as db:
            if digest.attempts + 1 >= MAX_ATTEMPTS:
                digest_rows.mark_failed(db, digest.id, f"gave up: {reason}")
                return "failed", reason, server_failed
            digest_rows.mark_retry(db, digest.id, reason, tick() + backoff(digest.attempts + 1))
        return "retry", reason, server_failed
    _record_sent(store, digest, message, tick)
    return "sent", None, False


RECORD_SENT_SECONDS = 600.0
"""How long a run keeps trying to record a message the relay took while another process
holds the database's lock (a sqlite3 shell in a transaction): given up, the message is
sent again by the next run."""
RECORD_SENT_PAUSE_SECONDS = 1.0
"""The pause between two tries (each also waits the busy timeout)."""


def _record_sent(store: Store, digest: DigestRow, message: OutgoingMessage, tick: Clock) -> None:
    """Record a delivered message, waiting out a lock held elsewhere (each try waits the
    busy timeout) up to ``RECORD_SENT_SECONDS``: a digest the relay took and this run did
    not record would go out twice. Raises the ``StoreError`` after that."""
    deadline = time.monotonic() + RECORD_SENT_SECONDS
    while True:
        try:
            with store.write() as db:
                digest_rows.mark_sent(db, digest.id, message.message_id, tick())
            return
        except StoreLocked:
            if time.monotonic() >= deadline:
                raise
            log.warning(
                "digest %d was sent, the database is locked: recording it when the lock goes",
                digest.id,
            )
            time.sleep(RECORD_SENT_PAUSE_SECONDS)  # a lock error that came at once, too


def send_welcomes(
    store: Store,
    sender: Sender,
    settings: Settings,
    now: datetime,
    *,
    subscriber_ids: list[int] | None = None,
    stop: threading.Event | None = None,
) -> list[str]:
    """Send the welcome mails owed (to ``subscriber_ids``, or to anyone) and, when no
    ``subscriber_ids`` are named (the service's jobs), retry the confirmation and welcome
    mails that failed and whose time has come.

    Each mail is taken once (two processes never both send it) and stays owed until it
    is delivered: a failure is retried with backoff (``subscriptions.mail_retry_delay``)
    up to ``subscriptions.MAX_MAIL_ATTEMPTS`` attempts, a permanent refusal (5xx) is
    given up at once; ``subscribers list`` shows both. A confirmation is re-sent only
    while the address is still pending (with a fresh link), a welcome only while it is
    confirmed. The failures come back as one line each. ``stop`` set ends the run after
    the mail being handed over; the others stay owed and go out with the next try.
    """
    with store.write() as db:
        work: list[tuple[int, subscriber_rows.MailKind]] = []
        for subscriber_id in subscriber_rows.claim_welcomes(db, subscriber_ids):
            owe_first_attempt(db, subscriber_id, "welcome", now)
            work.append((subscriber_id, "welcome"))
        if subscriber_ids is None:
            for subscriber_id, kind, attempts in subscriber_rows.due_mail(db, now):
                subscriber_rows.retry_later(
                    db,
                    subscriber_id,
                    kind,
                    attempts=attempts + 1,
                    retry_at=now + mail_retry_delay(attempts + 1),
                )
                work.append((subscriber_id, kind))
    if not work:
        return []
    links = links_for(store, settings)
    problems = []
    for subscriber_id, kind in work:
        if stop is not None and stop.is_set():
            break
        subscriber = subscriber_rows.get(store.db, subscriber_id)
        wanted = "confirmed" if kind == "welcome" else "pending"
        if subscriber is None or subscriber.status != wanted:
            with store.write() as db:
                subscriber_rows.mail_delivered(db, subscriber_id, kind)
            continue
        if kind == "welcome":
            message = welcome_message(store, settings, links, subscriber, now)
        else:
            message = confirmation_message(settings, links, subscriber.id, subscriber.email, now)
        problem = deliver_owed(store, sender, message, subscriber_id, kind)
        if problem:
            what = "welcome" if kind == "welcome" else "confirmation"
            problems.append(f"{subscriber.email}: {what}: {problem}")
    return problems
