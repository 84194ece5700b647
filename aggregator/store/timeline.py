"""Read queries for the web pages: timeline pages, entries, sources and their health.

Pages are keyset-paginated on ``(published, id)`` (the ``entries_timeline`` and
``entries_feed_timeline`` indexes), never OFFSET: a page boundary is a position in the
order, so entries arriving between two page loads never shift or repeat what a reader
pages through.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from sqlite_utils import Database

from ..errors import StoreError
from ..models import MediaItem
from ..urls import without_userinfo
from .codec import from_db, from_db_required, to_db
from .entries import media_for

__all__ = [
    "AlsoOn",
    "Cursor",
    "FeedHealth",
    "SourceLink",
    "TimelineEntry",
    "TimelinePage",
    "entry_count",
    "feed_health",
    "fts_query",
    "get_entry",
    "latest_entries",
    "source_links",
    "timeline_page",
]

_CURSOR = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)\|(\d{1,18})")
# A search term is a run of letters or digits; everything else only separates terms.
_TERM = re.compile(r"\w+", re.UNICODE)
# Words of a search kept (the rest ignored): bounds the FTS5 query's cost.
MAX_SEARCH_TERMS = 12


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A position in the timeline order: the (published, id) of an entry."""

    published: str  # the stored fixed-width UTC text (codec.to_db)
    id: int

    def __str__(self) -> str:
        return f"{self.published}|{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """``published|id`` as made by ``str()``; ValueError for anything else."""
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise ValueError(f"not a page position: {text[:60]!r}")
        published = match.group(1)
        from_db_required(published)  # rejects impossible dates such as month 13
        return cls(published, int(match.group(2)))


@dataclass(frozen=True, slots=True)
class AlsoOn:
    """Another copy of the same story, on another source."""

    entry_id: int
    feed_id: int
    feed_title: str
    link: str | None


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """An entry as the web pages show it: with its feed's title, the other feeds that
    carried the same story (``also_on``) and its media. ``published`` is UTC;
    ``duplicate_of`` is the story's entry id when this is a copy.
    """

    id: int
    feed_id: int
    feed_title: str
    title: str
    link: str | None
    author: str | None
    summary_html: str
    content_html: str
    text: str
    published: datetime
    updated: datetime | None
    last_changed: datetime
    duplicate_of: int | None
    also_on: tuple[AlsoOn, ...] = ()
    media: tuple[MediaItem, ...] = ()  # enclosures and thumbnails, in the feed's order

    @property
    def enclosures(self) -> tuple[MediaItem, ...]:
        """The entry's enclosures (RSS 2.0 <enclosure>, Atom rel=enclosure), without its
        thumbnails.
        """
        return tuple(item for item in self.media if item.role == "enclosure")

    date_only: bool = False  # published is a calendar day (noon UTC): show no time

    @property
    def day(self) -> date | None:
        """The calendar day as the feed wrote it, for a date-only entry; else None."""
        return self.published.date() if self.date_only else None

    @property
    def cursor(self) -> Cursor:
        """The page boundary just after this entry in (published, id) order."""
        return Cursor(_stamp(self.published), self.id)


@dataclass(frozen=True, slots=True)
class TimelinePage:
    """One page of the timeline in (published, id) order, newest first, with the cursors
    that fetch the pages beside it (None at either end)."""

    entries: tuple[TimelineEntry, ...]
    older: Cursor | None  # ask for ``before=older`` to get the next older page
    newer: Cursor | None  # ask for ``after=newer`` to get the next newer page


@dataclass(frozen=True, slots=True)
class SourceLink:
    """What a badge or a filter menu needs of a feed."""

    id: int
    title: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class FeedHealth:
    """A feed row with its latest fetch, for the source page and the admin list."""

    feed_id: int
    entries: int
    last_fetch_at: datetime | None
    last_status: int | None
    last_outcome: str | None
    last_fetch_error: str | None


_ENTRY_COLUMNS = (
    "e.id, e.feed_id, coalesce(nullif(f.title, ''), f.url), e.title, e.link, e.author, "
    "e.summary_html, e.content_html, e.text, e.published, e.updated, e.last_changed, "
    "e.duplicate_of, e.date_only"
)


def _stamp(moment: datetime) -> str:
    value = to_db(moment)
    assert value is not None
    return value


def _entry(row: Sequence[Any]) -> TimelineEntry:
    return TimelineEntry(
        id=row[0],
        feed_id=row[1],
        feed_title=without_userinfo(row[2]),  # a feed named by its URL: no password shown
        title=row[3],
        link=row[4],
        author=row[5],
        summary_html=row[6],
        content_html=row[7],
        text=row[8],
        published=from_db_required(row[9]),
        updated=from_db(row[10]),
        last_changed=from_db_required(row[11]),
        duplicate_of=row[12],
        date_only=bool(row[13]),
    )


def _execute(db: Database, sql: str, params: Iterable[Any]) -> list[Any]:
    try:
        return db.execute(sql, list(params)).fetchall()
    except sqlite3.DatabaseError as error:
        raise StoreError(f"timeline query failed: {error}") from None


def fts_query(text: str) -> str | None:
    """The user's words as an FTS5 query that cannot be read as FTS syntax.

    Each word becomes a quoted string (all must match, in any order); quotes,
    operators, column filters and parentheses in the input are just separators.
    None when no word is left.
    """
    terms = _TERM.findall(text)[:MAX_SEARCH_TERMS]
    if not terms:
        return None
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms)


def timeline_page(
    db: Database,
    *,
    feed_id: int | None = None,
    search: str | None = None,
    before: Cursor | None = None,
    after: Cursor | None = None,
    limit: int = 30,
) -> TimelinePage:
    """One page, newest first.

    Without ``feed_id`` only stories are listed (an entry that is a cross-post of an
    earlier one shows as "also on" of its story); with it, every entry of that feed.
    ``search`` is an FTS5 query made by ``fts_query``. ``before`` pages to older
    entries, ``after`` to newer ones (not both).
    """
    if before is not None and after is not None:
        raise ValueError("before and after together")
    ascending = after is not None
    order = "ASC" if ascending else "DESC"
    ordering = f"ORDER BY e.published {order}, e.id {order}"
    columns = f"SELECT {_ENTRY_COLUMNS} FROM entries e JOIN feeds f ON f.id = e.feed_id"
    if search is not None:
        ids = _search_ids(db, search, feed_id, after or before, ascending, limit + 1)
        rows = _execute(
            db,
            f"{columns} WHERE e.id IN (SELECT value FROM json_each(?)) {ordering}",
            [json.dumps(ids)],
        )
    else:
        where, params = _filter(feed_id, after or before, ascending, stories=True)
        rows = _execute(db, f"{columns} WHERE {where} {ordering} LIMIT ?", [*params, limit + 1])
    more = len(rows) > limit
    entries = [_entry(row) for row in rows[:limit]]
    if after is not None:
        if not more:
            # Back at the top: show a full first page rather than a short one.
            return timeline_page(db, feed_id=feed_id, search=search, limit=limit)
        entries.reverse()
        return TimelinePage(
            tuple(_with_copies(db, entries)), older=entries[-1].cursor, newer=entries[0].cursor
        )
    older = entries[-1].cursor if more else None
    newer: Cursor | None = None
    if before is not None:
        # The page the reader came from is above this one.
        newer = entries[0].cursor if entries else before
    return TimelinePage(tuple(_with_copies(db, entries)), older=older, newer=newer)


def _filter(
    feed_id: int | None, position: Cursor | None, ascending: bool, *, stories: bool
) -> tuple[str, list[Any]]:
    """WHERE terms on ``entries e`` for one source (or stories only) past a position."""
    where: list[str] = []
    params: list[Any] = []
    if feed_id is not None:
        where.append("e.feed_id = ?")
        params.append(feed_id)
    elif stories:
        # Unary plus: keeps the planner off the duplicate_of index (which matches nearly
        # every row and then needs a sort) and on the (published, id) index.
        where.append("+e.duplicate_of IS NULL")
    if position is not None:
        where.append(f"(e.published, e.id) {'>' if ascending else '<'} (?, ?)")
        params += [position.published, position.id]
    return " AND ".join(where) or "1", params


# Searches: below this many matches, sorting the matches by date is cheapest; above it,
# walking the timeline index and keeping the entries that match finds a page sooner.
RARE_MATCHES = 2000
# The walk reads the index in chunks, 16 rows per wanted entry first, 4 times more each
# round; past this many rows the rest of the page comes from sorting the matches.
_FIRST_CHUNK = 16
_CHUNK_GROWTH = 4
_WALK_BUDGET = 64_000


def _search_ids(
    db: Database,
    search: str,
    feed_id: int | None,
    position: Cursor | None,
    ascending: bool,
    want: int,
) -> list[int]:
    """Ids of the first ``want`` matching entries past ``position``, in page order.

    Sorting all matches costs a row read per match: hundreds of ms for a word in one
    entry in nine of a million. A common word instead is found by reading the timeline
    index from the position in chunks and asking FTS which rowids in the chunk's id
    range match. Ids mostly follow dates, so that range is narrow and its FTS lookup
    cheap; when they do not (a backlog), the range is wider and slower, never wrong.
    """
    (matches,) = _execute(
        db,
        "SELECT count(*) FROM (SELECT 1 FROM entries_fts WHERE entries_fts MATCH ? LIMIT ?)",
        [search, RARE_MATCHES],
    )[0]
    if matches < RARE_MATCHES:
        return _sorted_matches(db, search, feed_id, position, ascending, want)
    order = "ASC" if ascending else "DESC"
    found: list[int] = []
    chunk = _FIRST_CHUNK * want
    walked = 0
    while True:
        if walked >= _WALK_BUDGET:
            # Sparse from here on: the matches sorted cost less than walking further.
            rest = _sorted_matches(db, search, feed_id, position, ascending, want - len(found))
            return found + rest
        where, params = _filter(feed_id, position, ascending, stories=False)
        walk = (
            f"SELECT e.id, e.published FROM entries e WHERE {where} "
            f"ORDER BY e.published {order}, e.id {order}"
        )
        low, high, size = _execute(
            db, f"SELECT min(id), max(id), count(*) FROM ({walk} LIMIT ?)", [*params, chunk]
        )[0]
        if size == 0:
            return found
        stories = (
            "JOIN entries e ON e.id = c.id AND +e.duplicate_of IS NULL" if feed_id is None else ""
        )
        rows = _execute(
            db,
            f"SELECT c.id FROM ({walk} LIMIT ?) c {stories} WHERE c.id IN (SELECT rowid "
            "FROM entries_fts WHERE entries_fts MATCH ? AND rowid BETWEEN ? AND ?) "
            f"ORDER BY c.published {order}, c.id {order} LIMIT ?",
            [*params, chunk, search, low, high, want - len(found)],
        )
        found += [row[0] for row in rows]
        if len(found) >= want or size < chunk:
            return found
        walked += size
        last_id, last_published = _execute(db, f"{walk} LIMIT 1 OFFSET ?", [*params, chunk - 1])[0]
        position = Cursor(last_published, last_id)
        chunk = min(chunk * _CHUNK_GROWTH, _WALK_BUDGET)


def _sorted_matches(
    db: Database,
    search: str,
    feed_id: int | None,
    position: Cursor | None,
    ascending: bool,
    want: int,
) -> list[int]:
    """The first ``want`` matches past ``position``: every match read, then sorted."""
    order = "ASC" if ascending else "DESC"
    where, params = _filter(feed_id, position, ascending, stories=True)
    rows = _execute(
        db,
        "SELECT e.id FROM entries_fts JOIN entries e ON e.id = entries_fts.rowid "
        f"WHERE entries_fts MATCH ? AND {where} "
        f"ORDER BY e.published {order}, e.id {order} LIMIT ?",
        [search, *params, want],
    )
    return [row[0] for row in rows]


def _with_copies(db: Database, entries: list[TimelineEntry]) -> list[TimelineEntry]:
    """Each entry with its media and the other copies of its story (the story itself
    included)."""
    if not entries:
        return entries
    try:
        media = media_for(db, (entry.id for entry in entries))
    except sqlite3.DatabaseError as error:
        raise StoreError(f"timeline query failed: {error}") from None
    if media:
        entries = [
            replace(entry, media=media[entry.id]) if entry.id in media else entry
            for entry in entries
        ]
    roots = sorted({entry.duplicate_of or entry.id for entry in entries})
    shown = {entry.id for entry in entries}
    # Two index lookups; one query with "duplicate_of IN (…) OR id IN (…)" makes the
    # planner scan the whole table once the lists grow.
    columns = (
        "SELECT e.id, e.feed_id, coalesce(nullif(f.title, ''), f.url), e.link, "
        "coalesce(e.duplicate_of, e.id) FROM entries e JOIN feeds f ON f.id = e.feed_id "
    )
    rows = _execute(db, f"{columns} WHERE e.duplicate_of IN ({', '.join('?' * len(roots))})", roots)
    unseen_roots = [root for root in roots if root not in shown]
    if unseen_roots:
        rows += _execute(
            db, f"{columns} WHERE e.id IN ({', '.join('?' * len(unseen_roots))})", unseen_roots
        )
    rows.sort(key=lambda row: row[0])
    copies: dict[int, list[AlsoOn]] = {}
    for entry_id, copy_feed, title, link, root in rows:
        copies.setdefault(root, []).append(
            AlsoOn(entry_id, copy_feed, without_userinfo(title), link)
        )
    result = []
    for entry in entries:
        # A copy that links to the very page the entry links to (a pointer post on the
        # other blog) is linked to its own page here instead: a second link to the same
        # page under the other blog's name would mislead.
        others = [
            copy if copy.link != entry.link else replace(copy, link=None)
            for copy in copies.get(entry.duplicate_of or entry.id, [])
            if copy.entry_id != entry.id and copy.feed_id != entry.feed_id
        ]
        seen: set[int] = set()
        unique = []
        for copy in others:
            if copy.feed_id not in seen:
                seen.add(copy.feed_id)
                unique.append(copy)
        result.append(replace(entry, also_on=tuple(unique)) if unique else entry)
    return result


def latest_entries(
    db: Database, *, feed_id: int | None = None, limit: int = 50
) -> list[TimelineEntry]:
    """The newest entries (stories only when no feed is given), for Atom feeds."""
    return list(timeline_page(db, feed_id=feed_id, limit=limit).entries)


def get_entry(db: Database, entry_id: int) -> TimelineEntry | None:
    """One entry with its feed's title and the other feeds that carried the same story, or
    None.
    """
    rows = _execute(
        db,
        f"SELECT {_ENTRY_COLUMNS} FROM entries e JOIN feeds f ON f.id = e.feed_id WHERE e.id = ?",
        [entry_id],
    )
    if not rows:
        return None
    return _with_copies(db, [_entry(rows[0])])[0]


def source_links(db: Database) -> list[SourceLink]:
    """Every feed, by title, for filter menus and badges."""
    rows = _execute(
        db,
        "SELECT id, coalesce(nullif(title, ''), url), enabled FROM feeds "
        "ORDER BY lower(coalesce(nullif(title, ''), url)), id",
        [],
    )
    return [SourceLink(row[0], without_userinfo(row[1]), bool(row[2])) for row in rows]


def feed_health(db: Database, feed_ids: Iterable[int] | None = None) -> dict[int, FeedHealth]:
    """Latest fetch and entry count per feed (all feeds when ``feed_ids`` is None)."""
    params: list[Any] = []
    only = ""
    if feed_ids is not None:
        ids = list(feed_ids)
        if not ids:
            return {}
        only = f"WHERE f.id IN ({', '.join('?' * len(ids))})"
        params = ids
    rows = _execute(
        db,
        "SELECT f.id, (SELECT count(*) FROM entries e WHERE e.feed_id = f.id), "
        "x.at, x.status, x.outcome, x.error FROM feeds f "
        "LEFT JOIN fetches x ON x.id = (SELECT id FROM fetches WHERE feed_id = f.id "
        f"ORDER BY at DESC, id DESC LIMIT 1) {only} ORDER BY f.id",
        params,
    )
    return {
        row[0]: FeedHealth(
            feed_id=row[0],
            entries=row[1],
            last_fetch_at=from_db(row[2]),
            last_status=row[3],
            last_outcome=row[4],
            last_fetch_error=row[5],
        )
        for row in rows
    }


def entry_count(db: Database) -> int:
    """How many entries are stored, copies included."""
    return int(_execute(db, "SELECT count(*) FROM entries", [])[0][0])
