"""Plain data handed from one stage to the next. No behaviour beyond small derived values.

All datetimes are timezone-aware UTC. Text fields named ``*_html`` hold HTML that has
been through ``sanitize`` once it leaves the pipeline's parse step; every other text
field is plain text (never markup).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from .errors import FetchError

# --- configuration of sources -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedSource:
    """A feed as the operator configures it (config file, CLI, OPML, admin page)."""

    url: str
    title: str | None = None
    interval_seconds: int | None = None


# --- stored feed state --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Feed:
    """A feed row: what we know about one source between polls."""

    id: int
    url: str
    title: str
    site_url: str | None
    enabled: bool
    disabled_reason: str | None
    etag: str | None
    last_modified: str | None
    error_count: int
    last_error: str | None
    next_poll_at: datetime | None
    last_polled_at: datetime | None
    last_success_at: datetime | None
    interval_seconds: int | None
    added_at: datetime
    # Highest entry id stored by the feed's first successful poll: its backlog.
    # Digests never include entries at or below it.
    backlog_seq: int | None = None


# --- fetching -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of one conditional GET, successful or not.

    ``error`` is set when there is no usable body (``content`` is None then), except for
    a 304 (``not_modified``), which is a success without a body.
    """

    url: str  # the URL asked for
    final_url: str  # after redirects
    status: int | None  # None when no HTTP answer arrived
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None
    # Set when every hop to final_url was permanent (301/308): the feed has moved.
    permanent_url: str | None = None
    retry_after: str | None = None  # raw Retry-After header of a 429/503; see polling
    elapsed_seconds: float = 0.0
    bytes_read: int = 0  # decompressed body bytes
    error: FetchError | None = None
    # An https URL whose redirects went through plain http on the way to final_url:
    # whatever that hop said may have been written by anyone on the path.
    downgraded: bool = False

    @property
    def ok(self) -> bool:
        """Whether the fetch produced a usable answer (a body, or 304 Not Modified)."""
        return self.error is None

    @property
    def gone(self) -> bool:
        """Whether the server said 410 Gone: the feed was removed on purpose (RFC 9110
        section 15.5.11), so polling stops.
        """
        return self.status == 410


# --- media -------------------------------------------------------------------------

# "enclosure": the entry's podcast episode, video or file (RSS <enclosure>, Atom
# rel="enclosure", media:content); "thumbnail": a picture of it (media:thumbnail,
# itunes:image).
MediaRole = Literal["enclosure", "thumbnail"]


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One media file an entry carries, as the feed states it (see ``media``)."""

    url: str  # absolute http(s)
    role: MediaRole = "enclosure"
    mime_type: str | None = None  # lower-case type/subtype, no parameters
    medium: str | None = None  # audio, video, image, document, executable
    length: int | None = None  # bytes
    duration: int | None = None  # seconds
    episode: int | None = None  # itunes:episode of the entry


# --- parsing ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedEntry:
    """One entry as read from a feed document. HTML is sanitised by the pipeline."""

    guid: str | None
    link: str | None  # absolute http(s) or None
    title: str
    author: str | None
    summary_html: str
    content_html: str
    published: datetime | None  # the best date it carries; None when it carries none known
    updated: datetime | None
    # What relative links in content_html resolve against: the xml:base in scope when
    # it is http(s), else the entry's link, the feed's link, the feed document's URL.
    base_url: str | None = None
    # The same for summary_html (Atom's <summary> can carry its own xml:base); None
    # when it is base_url.
    summary_base_url: str | None = None
    media: tuple[MediaItem, ...] = ()  # each URL once, at most media.MAX_MEDIA_PER_ENTRY
    # ``published`` names a calendar day, written without a time of day ("2024-03-04",
    # read as midnight UTC of that day); shown as that day, without a time.
    date_only: bool = False
    # ``published`` is an edit time: an Atom entry dated only by <updated> (RFC 4287
    # §4.2.15: "the most recent instant in time when the entry was modified").
    date_is_edit_time: bool = False


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """A feed document as parsed: its title and site URL, its format name (``rss20``,
    ``atom10``, ``rdf``, ``json``, ...), its entries in document order, and the
    recoverable problems met (caps applied, markup repaired), one line each.
    """

    title: str | None
    site_url: str | None
    format: str  # "rss20", "atom10", "rdf", "json" …
    entries: tuple[ParsedEntry, ...]
    warnings: tuple[str, ...] = ()  # recoverable problems: caps applied, bozo messages
    # False when the document broke off (not well-formed XML): what was read is kept.
    complete: bool = True


# --- stored entries and identity ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """What identity decisions need to know about an entry already stored."""

    id: int
    feed_id: int
    key: str
    alias: str  # the churn-tolerant form of the key (see dedup.entry_alias)
    link_key: str | None
    canonical_url: str | None
    norm_title: str
    content_hash: str
    text: str  # plain text of the content, for near-duplicate checks
    published: datetime
    first_seen: datetime
    duplicate_of: int | None


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """An entry ready to be written: everything derived, nothing left to decide."""

    key: str  # exact identity inside the feed (dedup.entry_key)
    alias: str  # the same identity with harmless churn folded away (dedup.entry_alias)
    link_key: str | None
    guid: str | None
    link: str | None
    canonical_url: str | None
    title: str
    norm_title: str
    author: str | None
    summary_html: str
    content_html: str
    text: str
    content_hash: str
    published: datetime  # effective date: the feed's, or first-seen when missing/absurd
    updated: datetime | None
    date_missing: bool
    media: tuple[MediaItem, ...] = ()
    date_only: bool = False  # published is a calendar day (filed at noon UTC), no time written
    # published is the entry's last edit time (Atom <updated> only): an update keeps the
    # date the entry was first stored with (see dedup.plan_entries). Not stored.
    date_is_edit_time: bool = False


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An entry to insert, with the story it is a copy of (None: it is a story of its own)
    and the stored story it replaces as the earliest-published copy, if any (DESIGN
    section 5.2).
    """

    record: EntryRecord
    duplicate_of: int | None  # the story's entry id when this is a cross-post
    # A stored story this entry replaces as the story, being an earlier-published copy
    # of it: the old story and its copies then point at this entry.
    supersedes: int | None = None


@dataclass(frozen=True, slots=True)
class EntryUpdate:
    """A stored entry (``entry_id``) whose content changed: its new record."""

    entry_id: int
    record: EntryRecord


@dataclass(frozen=True, slots=True)
class PollPlan:
    """What one poll of one feed writes. Produced purely by ``dedup.plan_entries``."""

    inserts: tuple[NewEntry, ...] = ()
    updates: tuple[EntryUpdate, ...] = ()
    unchanged: int = 0
    skipped_in_document: int = 0  # repeated ids inside the same document

    @property
    def duplicates(self) -> int:
        """How many cross-posts this poll found: inserts that are copies of a story already
        stored, and inserts that take a stored story's place (an earlier-published copy:
        the stored one becomes the copy)."""
        return sum(
            1 for new in self.inserts if new.duplicate_of is not None or new.supersedes is not None
        )


# --- poll outcome -------------------------------------------------------------------

PollStatus = Literal["ok", "not_modified", "error", "disabled", "skipped"]


@dataclass(frozen=True, slots=True)
class PollSummary:
    """What one poll of one feed did, for the command line and the logs: new, updated and
    duplicate entries, or the error (one line), the warnings, and ``store_error`` when
    the database failed and the poll stopped.
    """

    feed_id: int
    url: str
    title: str
    status: PollStatus
    new: int = 0
    updated: int = 0
    duplicates: int = 0
    error: str | None = None
    warnings: tuple[str, ...] = ()
    store_error: str | None = None  # the database failed (full, locked …): the poll stopped
