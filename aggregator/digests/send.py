"""Send pending digests and mark them sent: each digest exactly once (DESIGN §7).

Sending renders each pending digest from what was stored, hands it to the mailer,
then marks it sent in its own transaction. A crash between the hand-over and the mark
re-sends that one message on the next run, with the same Message-ID; nothing else
repeats and nothing is skipped. Temporary failures are retried with backoff; a
permanent refusal marks the address bounced and ends only that subscriber's digests.
One run sends at a time (``lease.SendLease``). Welcome mails go out here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from ..backoff import exponential_backoff
from ..clock import Clock
from ..config import Settings
from ..errors import MailError, MailPermanentError, MailTemporaryError
from ..mail import Sender
from ..store import Store
from ..store import digests as digest_rows
from ..store import subscribers as subscriber_rows
from ..store.digests import DigestRow
from ..subscriptions import links_for
from .lease import SendLease
from .render import Renderer, welcome_message

BACKOFF_BASE = timedelta(minutes=5)
"""Wait before the second attempt at a digest; each further one doubles it."""
BACKOFF_CAP = timedelta(hours=6)
"""Longest wait between two attempts at a digest."""
MAX_ATTEMPTS = 12
"""Attempts at one digest (about two and a half days of retries), then it is failed."""
MAX_CONSECUTIVE_TEMPORARY = 5
"""This many temporary failures in a row means the mail server is away: the run stops
(what is left stays pending for the next one) instead of knocking on every digest."""
_BATCH = 200

Outcome = Literal["sent", "retry", "failed", "bounced", "empty"]


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


def send_pending(
    store: Store,
    sender: Sender,
    settings: Settings,
    now: datetime,
    on_progress: Callable[[SendProgress], None] | None = None,
    *,
    clock: Clock | None = None,
    limit: int | None = None,
) -> SendReport:
    """Send every pending digest whose time has come (``now``), oldest first; at most
    ``limit`` when given.

    ``clock`` stamps sends and retries as the run goes (``now`` throughout if omitted).
    Returns at once (``stopped`` set) when another run holds the sending lease.
    """
    tick: Clock = clock or (lambda: now)
    report = SendReport()
    links = links_for(store, settings)
    renderer = Renderer(store, settings, links)
    lease = SendLease(store, tick)
    if not lease.take():
        report.stopped = "another run is sending digests"
        return report
    try:
        total = count_due(store, now)
        if limit is not None:
            total = min(total, limit)
        consecutive = 0
        after = 0
        while report.stopped is None:
            batch = digest_rows.due_batch(store.db, now, after_id=after, limit=_BATCH)
            if not batch:
                break
            for digest in batch:
                after = digest.id
                if limit is not None and report.handled >= limit:
                    report.stopped = "limit reached"
                    break
                if not lease.keep():
                    report.stopped = "lost the sending lease to another run"
                    break
                outcome = _send_one(store, sender, renderer, digest, tick, report)
                consecutive = consecutive + 1 if outcome == "retry" else 0
                if on_progress is not None:
                    on_progress(
                        SendProgress(report.handled, total, outcome, digest.id, digest.email)
                    )
                if consecutive >= MAX_CONSECUTIVE_TEMPORARY:
                    report.stopped = f"mail server unavailable: {report.errors[-1]}"
                    break
    finally:
        lease.release()
    return report


def _send_one(
    store: Store,
    sender: Sender,
    renderer: Renderer,
    digest: DigestRow,
    tick: Clock,
    report: SendReport,
) -> Outcome:
    if digest.subscriber_status != "confirmed":
        with store.write() as db:
            digest_rows.close_pending(db, digest.subscriber_id, "cancelled", "not subscribed")
        report.empty += 1
        return "empty"
    message = renderer.message(digest, date=tick())
    if message is None:  # every entry of it was deleted with its feed
        with store.write() as db:
            digest_rows.mark_failed(db, digest.id, "nothing left to send")
        report.empty += 1
        return "empty"
    try:
        sender.send(message)
    except MailPermanentError as error:
        reason = str(error)
        with store.write() as db:
            digest_rows.mark_failed(db, digest.id, reason)
            digest_rows.close_pending(db, digest.subscriber_id, "failed", "address bounced")
            subscriber_rows.set_status(db, digest.subscriber_id, "bounced", tick(), reason=reason)
        report.bounced += 1
        report.errors.append(reason)
        return "bounced"
    except MailTemporaryError as error:
        reason = str(error)
        with store.write() as db:
            if digest.attempts + 1 >= MAX_ATTEMPTS:
                digest_rows.mark_failed(db, digest.id, f"gave up: {reason}")
                outcome: Outcome = "failed"
                report.failed += 1
            else:
                digest_rows.mark_retry(db, digest.id, reason, tick() + backoff(digest.attempts + 1))
                outcome = "retry"
                report.retried += 1
        report.errors.append(reason)
        return outcome
    with store.write() as db:
        digest_rows.mark_sent(db, digest.id, message.message_id, tick())
    report.sent += 1
    return "sent"


def send_welcomes(
    store: Store,
    sender: Sender,
    settings: Settings,
    now: datetime,
    *,
    subscriber_ids: list[int] | None = None,
) -> list[str]:
    """Send the welcome mails owed (to ``subscriber_ids``, or to anyone); each goes once.

    A mail that fails is not retried (the first digest follows anyway); the failures
    come back as one line each.
    """
    with store.write() as db:
        claimed = subscriber_rows.claim_welcomes(db, subscriber_ids)
    if not claimed:
        return []
    links = links_for(store, settings)
    problems = []
    for subscriber_id in claimed:
        subscriber = subscriber_rows.get(store.db, subscriber_id)
        if subscriber is None or subscriber.status != "confirmed":
            continue
        try:
            sender.send(welcome_message(store, settings, links, subscriber, now))
        except MailError as error:
            problems.append(f"{subscriber.email}: {error}")
    return problems
