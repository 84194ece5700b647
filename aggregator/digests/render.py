"""A digest as a message: story and section views, the subject, the HTML and text parts.

``Renderer`` renders stored digests (and plans, for previews) with the one Jinja2
environment (``aggregator.render``); the welcome mail is rendered here too. Nothing
here sends or writes.
"""

from __future__ import annotations

import secrets as random_source
import textwrap
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from markupsafe import escape

from ..config import Settings
from ..mail import OutgoingMessage
from ..media import media_label, media_marker
from ..render import environment, inline_css, line
from ..sanitize import excerpt_blocks
from ..selection import Subscriber, first_digest_since
from ..store import Store
from ..store import digests as digest_rows
from ..store.digests import DigestLine, DigestRow, EntryView
from ..subscriptions import Links, product_name
from ..urls import without_userinfo

EXCERPT_CHARS = 280
"""Longest excerpt of a story, in characters (cut at a word, with an ellipsis)."""
TEXT_WIDTH = 72
"""Width of the plain-text part's wrapped paragraphs, in characters."""
MAX_SOURCE_CHARS = 80
"""Longest source (feed) or author name shown, in characters."""
WELCOME_POSTS = 5
"""How many recent posts the welcome mail shows."""
_PERSONAL_LINKS = ("web_url", "archive_url", "preferences_url", "unsubscribe_url")
_CACHE_SIZE = 64
_VIEW_CACHE_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class StoryView:
    """One story of a digest, cleaned for display: one-line title and names, the
    excerpt as text and as blocks, its other copies and its media."""

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
    """One source's part of a digest: its stories, and how many more it had than
    were shown (``more``, read at ``more_url``)."""

    feed_id: int
    title: str
    url: str | None
    anchor: str
    stories: tuple[StoryView, ...]
    more: int
    more_url: str

    @property
    def count(self) -> int:
        """Stories of this source in the digest: shown plus ``more``."""
        return len(self.stories) + self.more


def text_blocks(blocks: tuple[tuple[str, str], ...]) -> str:
    """An excerpt's blocks as plain text: paragraphs wrapped at ``TEXT_WIDTH``, "- item"
    lines, headings on their own line; a blank line between a paragraph and what
    follows it."""
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
    name = entry.feed_title or entry.site_url or without_userinfo(entry.feed_url)
    return line(name, MAX_SOURCE_CHARS)


def story_count(sections: list[SectionView]) -> int:
    """How many stories a digest holds: those shown plus each section's ``more``."""
    return sum(section.count for section in sections)


def digest_subject(total: int, sources: list[str]) -> str:
    """Count and sources: "3 new posts from A and B"; more than three sources are
    named as "A, B and 2 more sources"."""
    names = [line(name, 40) for name in sources]
    if len(names) > 3:
        shown = f"{', '.join(names[:2])} and {len(names) - 2} more sources"
    elif len(names) > 1:
        shown = f"{', '.join(names[:-1])} and {names[-1]}"
    else:
        shown = names[0] if names else ""
    noun = "post" if total == 1 else "posts"
    return f"{total} new {noun} from {shown}" if shown else f"{total} new {noun}"


class Renderer:
    """Renders stored digests; remembers per-entry views so a run cleans each entry once.

    Not thread-safe: one per run (or per request).
    """

    def __init__(self, store: Store, settings: Settings, links: Links) -> None:
        self.store = store
        self.settings = settings
        self.links = links
        self.env = environment()
        self._html = self.env.get_template("email/digest.html")
        self._text = self.env.get_template("email/digest.txt")
        self._views: OrderedDict[int, StoryView] = OrderedDict()
        # Subscribers with the same stories get the same text: render it once, with
        # markers where each reader's own links go. The nonce keeps feed text from
        # spelling a marker.
        nonce = random_source.token_hex(8)
        self._markers = {name: f"https://{name}-{nonce}.invalid/" for name in _PERSONAL_LINKS}
        self._rendered: OrderedDict[tuple[Any, ...], tuple[str, str, str]] = OrderedDict()
        self._sections: OrderedDict[tuple[Any, ...], list[SectionView]] = OrderedDict()
        self.product = product_name(settings)
        self.list_id = f"{self.product} <digest.{links.host}>"

    def story(self, line_: DigestLine) -> StoryView:
        """The view of one digest line (cached per entry id)."""
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
            # A copy linking to the same page as the story (a pointer post on the other
            # blog) links to its own page here: the same link under two names misleads.
            also_on=tuple(
                (
                    _source_name(copy),
                    copy.link if copy.link != entry.link else self.links.entry(copy.id),
                )
                for copy in line_.also_on
            ),
            media=tuple((item.url, media_label(item)) for item in enclosures),
            marker=media_marker(enclosures),
            blocks=blocks,
        )
        self._views[entry.id] = view
        if len(self._views) > _VIEW_CACHE_SIZE:
            self._views.popitem(last=False)
        return view

    def sections(self, lines: list[DigestLine], more: dict[int, int]) -> list[SectionView]:
        """Lines grouped by section feed, in feed id order; a feed with only ``more``
        (feed id -> stories not shown) still gets a section."""
        grouped: dict[int, list[DigestLine]] = {}
        for item in lines:
            grouped.setdefault(item.section_feed_id, []).append(item)
        names = digest_rows.feed_titles(self.store.db, [*grouped, *more])
        sections = []
        for feed_id in sorted(set(grouped) | {k for k, v in more.items() if v}):
            title, feed_url, site_url = names.get(feed_id, ("", "", None))
            items = grouped.get(feed_id, [])
            stories = tuple(self.story(item) for item in items)
            name = (
                stories[0].source
                if stories
                else line(title or site_url or without_userinfo(feed_url), MAX_SOURCE_CHARS)
            )
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
        """The message for ``sections``, with the subscriber's own signed links (made at
        ``issued_at``) and the list headers (RFC 2369, RFC 8058 one-click unsubscribe).
        ``digest_id`` None: a preview, without a web copy link."""
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
        total = story_count(sections)
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

    @staticmethod
    def removed(digest: DigestRow, sections: list[SectionView]) -> int:
        """How many stories of ``digest`` can no longer be shown in ``sections`` (their
        source was removed since, and its posts with it)."""
        return max(0, digest.entry_count - sum(len(section.stories) for section in sections))

    def web_html(self, digest: DigestRow) -> tuple[str, list[SectionView]]:
        """Subject and sections of a stored digest, for its web copy."""
        lines = digest_rows.digest_lines(self.store.db, digest.id)
        sections = self.sections(lines, digest.more)
        return digest_subject(story_count(sections), [s.title for s in sections]), sections


def welcome_message(
    store: Store, settings: Settings, links: Links, subscriber: Subscriber, now: datetime
) -> OutgoingMessage:
    """What a newly confirmed subscriber gets at once: what comes when, the latest few
    posts of their sources (labelled as recent, not news), and their links.

    The posts are those no digest will carry, so that none comes again in the first
    digest: those stored when the address was confirmed (up to its watermark; a welcome
    sent late, after a relay was down, lists none of what came since), and for someone
    who joined before anything was stored, the posts of each feed's first poll that are
    older than their first digest holds (``selection.first_digest_since``). A welcome
    that goes out after digests (its relay was down for days) leaves out what those
    carried."""
    renderer = Renderer(store, settings, links)
    recent = digest_rows.latest_stories(
        store.db,
        subscriber.feed_ids,
        WELCOME_POSTS,
        upto=subscriber.watermark,
        backlog_before=first_digest_since(subscriber, now),
        not_mailed_to=subscriber.id,
    )
    stories = [renderer.story(DigestLine(entry, entry.feed_id, ())) for entry in recent]
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
    env = renderer.env
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
