"""Build pending digests, send them, mark them sent: each digest exactly once (DESIGN §7).

Building runs one transaction per subscriber: select what is new since their
watermark, insert a pending digest with its entries, move the watermark. Sending
renders each pending digest from what was stored, hands it to the mailer, then marks
it sent in its own transaction. A crash between the hand-over and the mark re-sends
that one message on the next run, with the same Message-ID; nothing else repeats and
nothing is skipped. Temporary failures are retried with backoff; a permanent refusal
marks the address bounced and ends only that subscriber's digests.
"""

from __future__ import annotations

import os
import queue
import secrets as random_source
import socket
import textwrap
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from markupsafe import escape
from sqlite_utils import Database

from .config import Settings
from .errors import MailError, MailPermanentError, MailTemporaryError
from .mail import OutgoingMessage, Sender, parse_address
from .media import media_label, media_marker
from .sanitize import clean_text, excerpt_blocks
from .selection import DigestPlan, Subscriber, first_digest_since, is_due, select_digest
from .store import Store
from .store import digests as digest_rows
from .store import subscribers as subscriber_rows
from .store.digests import DigestLine, DigestRow, EntryView
from .subscriptions import Links, environment, inline_css, links_for

BACKOFF_BASE = timedelta(minutes=5)
BACKOFF_CAP = timedelta(hours=6)
MAX_ATTEMPTS = 12  # about two and a half days of retries, then the digest is failed
# This many temporary failures in a row means the mail server is away: stop the run
# (what is left stays pending for the next one) instead of knocking on every digest.
MAX_CONSECUTIVE_TEMPORARY = 5
LEASE_NAME = "digest-send"
LEASE_LENGTH = timedelta(minutes=2)
LEASE_RENEW_SECONDS = 20.0
EXCERPT_CHARS = 280
TEXT_WIDTH = 72
_PERSONAL_LINKS = ("web_url", "archive_url", "preferences_url", "unsubscribe_url")
MAX_TITLE_CHARS = 300
MAX_SOURCE_CHARS = 80
_BATCH = 200
_CACHE_SIZE = 64
_VIEW_CACHE_SIZE = 20_000

Clock = Callable[[], datetime]


# --- building -----------------------------------------------------------------------


@dataclass(slots=True)
class BuildReport:
    considered: int = 0
    built: int = 0
    empty: int = 0
    not_due: int = 0
    digest_ids: list[int] = field(default_factory=list)


class _PlanCache:
    """Subscribers with the same watermark and sources get the same plan: compute it once.

    Bounded, so memory does not grow with the number of subscribers.
    """

    def __init__(self, size: int = _CACHE_SIZE) -> None:
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
        """``now`` None: no first-digest limit (a preview of everything stored)."""
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
    """Build the digests of confirmed subscribers (only those due, with ``due_only``).

    One transaction per subscriber; the subscriber is read again inside it, so two
    builders running at once never build the same entries twice.
    """
    report = BuildReport()
    cache = _PlanCache()
    upto = subscriber_rows.high_water(store.db)
    wanted = set(subscriber_ids) if subscriber_ids is not None else None
    for listed in subscriber_rows.iter_confirmed(store.db):
        if wanted is not None and listed.id not in wanted:
            continue
        if due_only and not _due(listed, settings, now):
            report.not_due += 1
            continue
        report.considered += 1
        with store.write() as db:
            subscriber = subscriber_rows.get(db, listed.id)
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
    return report


def plan_all(
    store: Store, settings: Settings, now: datetime, *, due_only: bool
) -> Iterator[tuple[Subscriber, DigestPlan | None]]:
    """What a build would produce for each confirmed subscriber, writing nothing."""
    cache = _PlanCache()
    upto = subscriber_rows.high_water(store.db)
    for subscriber in subscriber_rows.iter_confirmed(store.db):
        if due_only and not _due(subscriber, settings, now):
            continue
        yield (
            subscriber,
            cache.plan(store.db, subscriber, upto, settings.digest.max_entries_per_source, now),
        )


# --- rendering ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoryView:
    title: str
    url: str | None
    source: str
    published: datetime
    author: str | None
    excerpt: str
    excerpt_lines: str  # the excerpt wrapped for the plain-text part
    also_on: tuple[tuple[str, str | None], ...]  # (source name, link)
    # The entry's enclosures as (absolute http(s) URL, "Audio (MP3, 38.2 MB, 42 min)"),
    # and the card's marker ("audio · 42 min"), empty without media.
    media: tuple[tuple[str, str], ...] = ()
    marker: str = ""
    blocks: tuple[tuple[str, str], ...] = ()  # the excerpt's paragraphs, list items, headings


@dataclass(frozen=True, slots=True)
class SectionView:
    feed_id: int
    title: str
    url: str | None
    anchor: str
    stories: tuple[StoryView, ...]
    more: int
    more_url: str


def line(text: str | None, limit: int = MAX_TITLE_CHARS) -> str:
    """One line of plain text, no controls or bidi overrides, at most ``limit`` chars."""
    cleaned = clean_text(text or "")
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


def text_blocks(blocks: tuple[tuple[str, str], ...]) -> str:
    """An excerpt's blocks as plain text: paragraphs wrapped, "- item" lines, headings
    on their own line; a blank line between a paragraph and what follows it."""
    out: list[str] = []
    previous = ""
    for kind, text in blocks:
        if out and not (kind == "li" and previous == "li"):
            out.append("")
        if kind == "li":
            out.append(
                textwrap.fill(
                    text,
                    TEXT_WIDTH,
                    initial_indent="- ",
                    subsequent_indent="  ",
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
        else:
            out.append(
                textwrap.fill(text, TEXT_WIDTH, break_on_hyphens=False, break_long_words=False)
            )
        previous = kind
    return "\n".join(out)


def _source_name(entry: EntryView) -> str:
    return line(entry.feed_title or entry.site_url or entry.feed_url, MAX_SOURCE_CHARS)


class Renderer:
    """Renders stored digests; remembers per-entry views so a run cleans each entry once."""

    def __init__(self, store: Store, settings: Settings, links: Links) -> None:
        self.store = store
        self.settings = settings
        self.links = links
        self._env = environment()
        self._html = self._env.get_template("email/digest.html")
        self._text = self._env.get_template("email/digest.txt")
        self._views: OrderedDict[int, StoryView] = OrderedDict()
        # Subscribers with the same stories get the same text: render it once, with
        # markers where each reader's own links go. The nonce keeps feed text from
        # spelling a marker.
        nonce = random_source.token_hex(8)
        self._markers = {name: f"https://{name}-{nonce}.invalid/" for name in _PERSONAL_LINKS}
        self._rendered: OrderedDict[tuple[Any, ...], tuple[str, str, str]] = OrderedDict()
        self._sections: OrderedDict[tuple[Any, ...], list[SectionView]] = OrderedDict()
        self.product = _product_name(settings)
        self.list_id = f"{self.product} <digest.{links.host}>"

    def _story(self, line_: DigestLine) -> StoryView:
        entry = line_.entry
        cached = self._views.get(entry.id)
        if cached is not None:
            self._views.move_to_end(entry.id)
            return cached
        blocks = tuple(excerpt_blocks(entry.content_html or entry.summary_html, EXCERPT_CHARS))
        summary = " ".join(text for _, text in blocks)
        enclosures = [item for item in entry.media if item.role == "enclosure"]
        view = StoryView(
            title=line(entry.title) or "(untitled)",
            # An entry without a link of its own (a bare podcast item) links to its page
            # here, where its media play.
            url=entry.link or (self.links.entry(entry.id) if entry.media else None),
            source=_source_name(entry),
            published=entry.published,
            author=line(entry.author, MAX_SOURCE_CHARS) or None,
            excerpt=summary,
            excerpt_lines=text_blocks(blocks),
            also_on=tuple((_source_name(copy), copy.link) for copy in line_.also_on),
            media=tuple((item.url, media_label(item)) for item in enclosures),
            marker=media_marker(enclosures),
            blocks=blocks,
        )
        self._views[entry.id] = view
        if len(self._views) > _VIEW_CACHE_SIZE:
            self._views.popitem(last=False)
        return view

    def sections(self, lines: list[DigestLine], more: dict[int, int]) -> list[SectionView]:
        grouped: dict[int, list[DigestLine]] = {}
        for item in lines:
            grouped.setdefault(item.section_feed_id, []).append(item)
        names = digest_rows.feed_titles(self.store.db, [*grouped, *more])
        sections = []
        for feed_id in sorted(set(grouped) | {k for k, v in more.items() if v}):
            title, feed_url, site_url = names.get(feed_id, ("", "", None))
            items = grouped.get(feed_id, [])
            stories = tuple(self._story(item) for item in items)
            name = stories[0].source if stories else line(title or site_url or feed_url, 80)
            sections.append(
                SectionView(
                    feed_id=feed_id,
                    title=name or "(untitled source)",
                    url=site_url,
                    anchor=f"source-{feed_id}",
                    stories=stories,
                    more=more.get(feed_id, 0),
                    more_url=self.links.source(feed_id),
                )
            )
        return sections

    def message(self, digest: DigestRow, *, date: datetime) -> OutgoingMessage | None:
        """The stored digest as a message; None when nothing of it is left to show."""
        # Many digests of a run hold the same stories: read and clean them once.
        layout = digest_rows.digest_layout(self.store.db, digest.id)
        key = (layout, tuple(sorted(digest.more.items())))
        sections = self._sections.get(key)
        if sections is None:
            lines = digest_rows.layout_lines(self.store.db, layout)
            sections = self.sections(lines, digest.more)
            self._sections[key] = sections
            if len(self._sections) > _CACHE_SIZE:
                self._sections.popitem(last=False)
        else:
            self._sections.move_to_end(key)
        if not sections:
            return None
        return self.compose(
            sections,
            digest_id=digest.id,
            subscriber_id=digest.subscriber_id,
            recipient=digest.email,
            issued_at=digest.created_at,
            date=date,
        )

    def compose(
        self,
        sections: list[SectionView],
        *,
        digest_id: int | None,
        subscriber_id: int,
        recipient: str,
        issued_at: datetime,
        date: datetime,
    ) -> OutgoingMessage:
        links = self.links
        unsubscribe_url = links.unsubscribe(subscriber_id, issued_at)
        personal = {
            "web_url": links.digest(digest_id, issued_at) if digest_id is not None else None,
            "archive_url": links.archive(subscriber_id, issued_at),
            "preferences_url": links.preferences(subscriber_id, issued_at),
            "unsubscribe_url": unsubscribe_url,
        }
        subject, text, html = self._shared(sections, issued_at, with_web=digest_id is not None)
        for name, url in personal.items():
            if url is not None:
                text = text.replace(self._markers[name], url)
                html = html.replace(self._markers[name], str(escape(url)))
        mailto = links.unsubscribe_mailto(self.settings.mail.sender, subscriber_id, issued_at)
        headers = {
            "List-Id": self.list_id,
            "List-Unsubscribe": f"<{unsubscribe_url}>, <{mailto}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "List-Archive": f"<{links.archive(subscriber_id, issued_at)}>",
            "Precedence": "bulk",
            "Auto-Submitted": "auto-generated",
            "X-Auto-Response-Suppress": "All",
        }
        ident = digest_id if digest_id is not None else f"preview{subscriber_id}"
        return OutgoingMessage(
            message_id=links.message_id("digest", ident),
            sender=self.settings.mail.sender,
            recipient=recipient,
            subject=subject,
            text=text,
            html=html,
            date=date,
            headers=headers,
        )

    def _shared(
        self, sections: list[SectionView], issued_at: datetime, *, with_web: bool
    ) -> tuple[str, str, str]:
        """Subject, text and HTML (CSS inlined) with markers for the personal links."""
        day = issued_at.astimezone(self.settings.digest.timezone)
        key = (tuple(sections), day.date(), with_web)
        cached = self._rendered.get(key)
        if cached is not None:
            self._rendered.move_to_end(key)
            return cached
        total = sum(len(s.stories) + s.more for s in sections)
        subject = digest_subject(total, [s.title for s in sections])
        markers = self._markers
        context = {
            "product": self.product,
            "subject": subject,
            "total": total,
            "sections": sections,
            "date": day,
            "home_url": self.links.home(),
            "web_url": markers["web_url"] if with_web else None,
            "archive_url": markers["archive_url"],
            "preferences_url": markers["preferences_url"],
            "unsubscribe_url": markers["unsubscribe_url"],
        }
        rendered = (
            subject,
            self._text.render(context),
            inline_css(self._html.render(context)),
        )
        self._rendered[key] = rendered
        if len(self._rendered) > _CACHE_SIZE:
            self._rendered.popitem(last=False)
        return rendered

    def web_html(self, digest: DigestRow) -> tuple[str, list[SectionView]]:
        """Subject and sections of a stored digest, for its web copy."""
        lines = digest_rows.digest_lines(self.store.db, digest.id)
        sections = self.sections(lines, digest.more)
        total = sum(len(s.stories) + s.more for s in sections)
        return digest_subject(total, [s.title for s in sections]), sections


def digest_subject(total: int, sources: list[str]) -> str:
    """Count and sources: "3 new posts from A and B"."""
    names = [line(name, 40) for name in sources]
    if len(names) > 3:
        shown = f"{', '.join(names[:2])} and {len(names) - 2} more sources"
    elif len(names) > 1:
        shown = f"{', '.join(names[:-1])} and {names[-1]}"
    else:
        shown = names[0] if names else ""
    noun = "post" if total == 1 else "posts"
    return f"{total} new {noun} from {shown}" if shown else f"{total} new {noun}"


def _product_name(settings: Settings) -> str:
    try:
        return line(parse_address(settings.mail.sender).display_name, 60) or "Blog digest"
    except ValueError:
        return "Blog digest"


# --- sending ------------------------------------------------------------------------

Outcome = Literal["sent", "retry", "failed", "bounced", "empty"]


@dataclass(frozen=True, slots=True)
class SendProgress:
    done: int
    total: int
    outcome: Outcome
    digest_id: int
    address: str


@dataclass(slots=True)
class SendReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    bounced: int = 0
    empty: int = 0
    stopped: str | None = None  # why the run ended early, if it did
    errors: list[str] = field(default_factory=list)

    @property
    def handled(self) -> int:
        return self.sent + self.retried + self.failed + self.bounced + self.empty


def backoff(attempts: int) -> timedelta:
    """Wait before attempt ``attempts + 1``: doubling from five minutes, capped."""
    delay: timedelta = BACKOFF_BASE * (2 ** min(max(attempts - 1, 0), 20))
    return min(delay, BACKOFF_CAP)


class _Lease:
    """One sending run at a time across processes; a holder that died is taken over."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{random_source.token_hex(4)}"
        self._renewed = 0.0

    def take(self) -> bool:
        now = self.clock()
        with self.store.write() as db:
            if digest_rows.take_lease(db, LEASE_NAME, self.owner, now, now + LEASE_LENGTH):
                self._renewed = time.monotonic()
                return True
            holder = digest_rows.lease_owner(db, LEASE_NAME)
            if holder and self._dead(holder):
                digest_rows.hand_over_lease(db, LEASE_NAME, self.owner, now + LEASE_LENGTH)
                self._renewed = time.monotonic()
                return True
        return False

    def _dead(self, owner: str) -> bool:
        host, _, rest = owner.partition(":")
        pid_text = rest.partition(":")[0]
        if host != self.host or not pid_text.isdigit():
            return False
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def keep(self) -> bool:
        if time.monotonic() - self._renewed < LEASE_RENEW_SECONDS:
            return True
        return self.take()

    def release(self) -> None:
        with self.store.write() as db:
            digest_rows.release_lease(db, LEASE_NAME, self.owner)


def count_due(store: Store, now: datetime) -> int:
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
    """Send every pending digest whose time has come (``now``), oldest first.

    ``clock`` stamps sends and retries as the run goes (``now`` throughout if omitted).
    This thread renders; ``sender.connections`` threads hand the messages over, each
    marking its message's outcome (in a transaction of its own) before it takes the
    next, so a crash re-sends at most one message per connection. Raises what a
    sending thread raised (a ``StoreError``), after the others have finished.
    """
    tick: Clock = clock or (lambda: now)
    report = SendReport()
    links = links_for(store, settings)
    renderer = Renderer(store, settings, links)
    lease = _Lease(store, tick)
    if not lease.take():
        report.stopped = "another run is sending digests"
        return report
    total = count_due(store, now)
    if limit is not None:
        total = min(total, limit)
    run = _SendRun(store, sender, tick, report, total, on_progress)
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
    """The sending threads of one run: a bounded queue of rendered messages in, each
    outcome recorded by the thread that sent it before it takes the next message."""

    def __init__(
        self,
        store: Store,
        sender: Sender,
        tick: Clock,
        report: SendReport,
        total: int,
        on_progress: Callable[[SendProgress], None] | None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.tick = tick
        self.report = report
        self.total = total
        self.on_progress = on_progress
        self._lock = threading.Lock()
        self._consecutive = 0  # temporary failures in a row
        self._failure: BaseException | None = None
        self._queue: queue.Queue[tuple[DigestRow, OutgoingMessage] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._slots = threading.Semaphore(1)  # rendered messages waiting, at most

    @property
    def stopping(self) -> bool:
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
                return
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
                    outcome, error = _deliver(self.store, self.sender, digest, message, self.tick)
                    self.finish(digest, outcome, error)
                except BaseException as failure:  # a database failure: stop, re-raise
                    with self._lock:
                        if self._failure is None:
                            self._failure = failure
        finally:
            self.store.close_thread()

    def finish(self, digest: DigestRow, outcome: Outcome, error: str | None = None) -> None:
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
            self._consecutive = self._consecutive + 1 if outcome == "retry" else 0
            if self.on_progress is not None:
                self.on_progress(
                    SendProgress(report.handled, self.total, outcome, digest.id, digest.email)
                )
            if self._consecutive >= MAX_CONSECUTIVE_TEMPORARY and report.stopped is None:
                report.stopped = f"mail server unavailable: {report.errors[-1]}"


def _deliver(
    store: Store, sender: Sender, digest: DigestRow, message: OutgoingMessage, tick: Clock
) -> tuple[Outcome, str | None]:
    """Hand one message over and record what became of it: (outcome, error or None)."""
    try:
        sender.send(message)
    except MailPermanentError as error:
        reason = str(error)
        with store.write() as db:
            digest_rows.mark_failed(db, digest.id, reason)
            digest_rows.close_pending(db, digest.subscriber_id, "failed", "address bounced")
            subscriber_rows.set_status(db, digest.subscriber_id, "bounced", tick(), reason=reason)
        return "bounced", reason
    except MailTemporaryError as error:
        reason = str(error)
        with store.write() as db:
            if digest.attempts + 1 >= MAX_ATTEMPTS:
                digest_rows.mark_failed(db, digest.id, f"gave up: {reason}")
                return "failed", reason
            digest_rows.mark_retry(db, digest.id, reason, tick() + backoff(digest.attempts + 1))
        return "retry", reason
    with store.write() as db:
        digest_rows.mark_sent(db, digest.id, message.message_id, tick())
    return "sent", None


# --- the welcome mail -----------------------------------------------------------------

WELCOME_POSTS = 5


def welcome_message(
    store: Store, settings: Settings, links: Links, subscriber: Subscriber, now: datetime
) -> OutgoingMessage:
    """What a newly confirmed subscriber gets at once: what comes when, the latest few
    posts of their sources (labelled as recent, not news), and their links."""
    renderer = Renderer(store, settings, links)
    recent = digest_rows.latest_stories(store.db, subscriber.feed_ids, WELCOME_POSTS)
    stories = [renderer._story(DigestLine(entry, entry.feed_id, ())) for entry in recent]
    product = renderer.product
    context = {
        "product": product,
        "home_url": links.home(),
        "cadence": subscriber.cadence,
        "digest": settings.digest,
        "stories": stories,
        "preferences_url": links.preferences(subscriber.id, now),
        "archive_url": links.archive(subscriber.id, now),
        "unsubscribe_url": links.unsubscribe(subscriber.id, now),
    }
    env = renderer._env
    return OutgoingMessage(
        message_id=links.message_id("welcome", subscriber.id),
        sender=settings.mail.sender,
        recipient=subscriber.email,
        subject=f"Welcome to the {product}",
        text=env.get_template("email/welcome.txt").render(context),
        html=inline_css(env.get_template("email/welcome.html").render(context)),
        date=now,
        headers={
            "List-Id": renderer.list_id,
            "List-Unsubscribe": f"<{context['unsubscribe_url']}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Auto-Submitted": "auto-generated",
            "X-Auto-Response-Suppress": "All",
        },
    )


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


# --- preview ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preview:
    """A digest to look at and what it is: ``next`` (what would go out now), ``last``
    (the last one sent), or ``everything`` (a digest of all stored posts in the
    subscriber's sources, shown when nothing is new and none was sent yet)."""

    message: OutgoingMessage
    kind: Literal["next", "last", "everything"]
    note: str


def preview(
    store: Store, settings: Settings, now: datetime, *, email: str | None = None
) -> OutgoingMessage | None:
    """The digest a subscriber (or, without one, a reader of every source since the
    start) would get now. Writes nothing but the instance secret on first use."""
    subscriber = _preview_subscriber(store, settings, email, now)
    return _next_message(store, settings, subscriber, now)


def preview_for(
    store: Store,
    settings: Settings,
    now: datetime,
    *,
    email: str | None = None,
    last: bool = False,
) -> Preview | None:
    """Something to look at, labelled: the next digest when something is new; else the
    last digest sent to that subscriber; else everything stored in their sources.

    With ``last``, only the last digest sent. None when there is nothing at all (no
    posts stored in the subscriber's sources). Sends nothing, moves nothing."""
    subscriber = _preview_subscriber(store, settings, email, now)
    who = subscriber.email if email is not None else "a reader of every source"
    if last:
        if email is None:
            raise LookupError("--last needs --subscriber: whose last digest?")
        shown = _last_sent(store, settings, subscriber, now)
        if shown is None:
            raise LookupError(f"no digest was sent to {subscriber.email} yet")
        return shown
    message = _next_message(store, settings, subscriber, now)
    if message is not None:
        since = "since their last digest" if email is not None else "stored so far"
        return Preview(message, "next", f"The next digest for {who}: what is new {since}.")
    if email is not None:
        shown = _last_sent(store, settings, subscriber, now)
        if shown is not None:
            return Preview(
                shown.message,
                "last",
                f"Nothing new for {who} since their last digest: the next one would be "
                f"empty so far. Shown instead: {shown.note[0].lower()}{shown.note[1:]}",
            )
    everything = replace(subscriber, watermark=0)
    message = _next_message(store, settings, everything, now, window=False)
    if message is None:
        return None
    return Preview(
        message,
        "everything",
        f"Nothing new for {who} and no digest sent yet. Shown instead: what a digest of "
        "everything stored in their sources would hold.",
    )


def _preview_subscriber(
    store: Store, settings: Settings, email: str | None, now: datetime
) -> Subscriber:
    if email is not None:
        from .subscriptions import normalise_email

        _, key = normalise_email(email)
        subscriber = subscriber_rows.by_key(store.db, key)
        if subscriber is None:
            raise LookupError(f"no subscriber {email}")
        return subscriber
    return Subscriber(
        id=0,
        email=parse_address(settings.mail.sender).addr_spec,
        status="confirmed",
        cadence="weekly",
        feed_ids=None,
        watermark=0,
        created_at=now,
    )


def _next_message(
    store: Store, settings: Settings, subscriber: Subscriber, now: datetime, *, window: bool = True
) -> OutgoingMessage | None:
    """The digest ``subscriber`` would get now; ``window`` False lifts the first-digest
    limit of one cadence period (a preview of everything stored)."""
    links = links_for(store, settings)
    upto = subscriber_rows.high_water(store.db)
    plan = _PlanCache().plan(
        store.db,
        subscriber,
        upto,
        settings.digest.max_entries_per_source,
        now if window and subscriber.id else None,  # the window is a real subscriber's
    )
    if plan is None:
        return None
    renderer = Renderer(store, settings, links)
    lines = _plan_lines(store, plan)
    more = {s.feed_id: s.more for s in plan.sections if s.more}
    sections = renderer.sections(lines, more)
    return renderer.compose(
        sections,
        digest_id=None,
        subscriber_id=subscriber.id,
        recipient=subscriber.email,
        issued_at=now,
        date=now,
    )


def _last_sent(
    store: Store, settings: Settings, subscriber: Subscriber, now: datetime
) -> Preview | None:
    sent = digest_rows.for_subscriber(store.db, subscriber.id, limit=1)
    if not sent:
        return None
    digest = sent[0]
    renderer = Renderer(store, settings, links_for(store, settings))
    message = renderer.message(digest, date=digest.sent_at or digest.created_at)
    if message is None:
        return None
    when = (digest.sent_at or digest.created_at).strftime("%Y-%m-%d %H:%M")
    return Preview(message, "last", f"The last digest sent to {subscriber.email}, on {when} UTC.")


def _plan_lines(store: Store, plan: DigestPlan) -> list[DigestLine]:
    ids = [item.entry_id for s in plan.sections for item in s.items]
    also = [i for s in plan.sections for item in s.items for i in item.also_on]
    views: dict[int, EntryView] = digest_rows.entries_by_id(store.db, ids + also)
    lines = []
    for section in plan.sections:
        for item in section.items:
            if item.entry_id in views:
                copies = tuple(views[i] for i in item.also_on if i in views)
                lines.append(DigestLine(views[item.entry_id], section.feed_id, copies))
    return lines
