"""Previews: the digest a subscriber would get now, the last one sent, or everything.

Sends nothing and moves no watermark; writes nothing but the instance secret on
first use (for the signed links).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from ..config import Settings
from ..errors import NotFound, UsageError
from ..mail import OutgoingMessage, parse_address
from ..selection import DigestPlan, Subscriber
from ..store import Store
from ..store import digests as digest_rows
from ..store import subscribers as subscriber_rows
from ..store.digests import DigestLine, EntryView
from ..subscriptions import links_for, normalise_email
from .build import PlanCache
from .render import Renderer


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
    start) would get now; None when nothing is new. ``NotFound`` for an unknown
    address, ``InvalidSubscription`` for text that is not one."""
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
    posts stored in the subscriber's sources). ``NotFound`` for an unknown address or
    ``last`` with nothing sent yet, ``UsageError`` for ``last`` without an address."""
    subscriber = _preview_subscriber(store, settings, email, now)
    who = subscriber.email if email is not None else "a reader of every source"
    last_gone = ""  # why the last digest sent cannot be shown, when it cannot
    if last:
        if email is None:
            raise UsageError("--last needs --subscriber: whose last digest?", argument="--last")
        shown = _last_sent(store, settings, subscriber, now)
        if shown is None:
            raise NotFound(
                f"no digest was sent to {subscriber.email} yet", what="digest", key=subscriber.email
            )
        return shown
    message = _next_message(store, settings, subscriber, now)
    if message is not None:
        since = "since their last digest" if email is not None else "stored so far"
        return Preview(message, "next", f"The next digest for {who}: what is new {since}.")
    if email is not None:
        try:
            shown = _last_sent(store, settings, subscriber, now)
        except NotFound as gone:  # its sources are gone: show what would come instead
            shown, last_gone = None, str(gone)
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
    history = f"; {last_gone[0].lower()}{last_gone[1:]}" if last_gone else " and no digest sent yet"
    return Preview(
        message,
        "everything",
        f"Nothing new for {who}{history}. Shown instead: what a digest of "
        "everything stored in their sources would hold.",
    )


def _preview_subscriber(
    store: Store, settings: Settings, email: str | None, now: datetime
) -> Subscriber:
    if email is not None:
        _, key = normalise_email(email)
        subscriber = subscriber_rows.by_key(store.db, key)
        if subscriber is None:
            raise NotFound(f"no subscriber {email}", what="subscriber", key=email)
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
    plan = PlanCache().plan(
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
    when = (digest.sent_at or digest.created_at).strftime("%Y-%m-%d %H:%M")
    message = renderer.message(digest, date=digest.sent_at or digest.created_at)
    if message is None:
        raise NotFound(
            f"the last digest sent to {subscriber.email} (on {when} UTC) held "
            f"{digest.entry_count} {'post' if digest.entry_count == 1 else 'posts'}, all "
            "from sources removed since: nothing of it can be shown",
            what="digest",
            key=subscriber.email,
        )
    removed = Renderer.removed(digest, renderer.web_html(digest)[1])
    gone = f"; {removed} of its posts came from sources removed since" if removed else ""
    return Preview(
        message, "last", f"The last digest sent to {subscriber.email}, on {when} UTC{gone}."
    )


def _plan_lines(store: Store, plan: DigestPlan) -> list[DigestLine]:
    """The digest lines of a plan not stored as a digest, read from the entries."""
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
