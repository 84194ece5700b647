"""Full-text search: the reader's query language, relevance ranking, snippets, counts.

The query language (``parse_query``, pure) is what a reader would guess:

- plain words must all match, in any order (``kubernetes tuning``);
- ``"a phrase"`` matches those words next to each other, in that order;
- ``clust*`` matches words that begin with ``clust`` (two letters or more before ``*``);
- ``-word`` or ``-"a phrase"`` leaves out posts that contain it;
- ``source:word`` or ``source:"two words"`` matches in the source's title only;
  ``title:`` and ``author:`` likewise in the post's title or author name.

Anything else is taken literally: only runs of letters and digits are searched for, and
each is sent to FTS5 as a quoted string, so FTS5 syntax in the input (``NEAR(``, ``OR``,
``text:``, ``^``, ``*`` alone, parentheses) never reaches the FTS5 parser as syntax and
never raises. A bare token of several words (``e-mail``, ``don't``, ``10:30``) is a
phrase of them, as the tokenizer splits the text it indexed. A quote that is never
closed (``"unterminated words``) is ignored: the words after it are plain words.
Control characters (NUL included) separate words. At most ``MAX_PARTS`` words, phrases
and exclusions and ``MAX_WORDS`` words in all are kept (the rest of a longer query is
dropped); a query with nothing left to find (only exclusions, only punctuation) finds
nothing: ``SearchQuery.fts`` is None.

Ranking (``ranked_page``): an exact title match (``entries.norm_title`` equal to the
query's words normalised as titles are) first; then FTS5's ``bm25()`` with the column
weights of ``WEIGHTS`` (title above author above source title above text), scaled by a
small recency factor of at most ``RECENCY`` (a post a year older than the newest counts
half that less); ties by newest id. See https://www.sqlite.org/fts5.html#the_bm25_function:
bm25 returns lower (more negative) values for better matches.

Stable paging: a ranked search is fixed at its first page by ``upto``, the highest
entry id that page saw; later pages rank only entries up to it (carried in the page
links with the position), so posts that arrive while a reader pages never shift or
repeat what they page through. (bm25 weighs words by the whole index, so new posts
can nudge two near-equal scores; the order stays that of one ranking otherwise.)

The cap (``RANK_ALL``): when a query matches more than ``RANK_ALL`` posts, only the
newest ``RANK_ALL`` matches (by ingest order) are ranked, and not by bm25: bm25's
inverse document frequency makes FTS5 read every match of every word of the query in
the whole index on every page (at a million entries 15 ms for a word in 15 % of them,
100 to 200 ms for a phrase of two words that most posts contain), whereas the newest
matches are read newest first and cost the same at any size. They are ranked in tiers,
newest first within each: (0) exact title matches, from anywhere, older ones too;
(1) posts whose title holds every word and phrase of the query; (2) posts whose title
holds some of them, or whose title, author and source title hold all of them between
them; (3) the rest (the words are only in the text). The tiers take one FTS5 scan of
the capped id range (three for a query of several words and phrases). Older matches
are reached with "Newest first". The count of a capped search is an estimate (see
``count_matches``).

Snippets and highlighted titles (``highlights``) come from FTS5's ``snippet()`` and
``highlight()`` with control characters as markers, split here into plain text
fragments flagged as matched or not: no markup is ever built from feed text; the
templates escape each fragment and wrap matched ones in ``<mark>``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from ..dedup import normalise_title
from ..errors import StoreError
from .timeline import _ENTRY_COLUMNS, TimelineEntry, _entry, _with_copies

__all__ = [
    "MAX_PARTS",
    "MAX_WORDS",
    "RANK_ALL",
    "WEIGHTS",
    "Fragment",
    "Highlight",
    "Matches",
    "RankedCursor",
    "RankedPage",
    "SearchQuery",
    "count_matches",
    "highlights",
    "parse_query",
    "ranked_page",
]

# Words, phrases and exclusions kept from one query (the rest is dropped).
MAX_PARTS = 12
# Words kept from one query in all, phrases included: FTS5 reads a list per word.
MAX_WORDS = 32
# Letters needed before ``*`` for a prefix search (``c*`` is the word ``c``).
MIN_PREFIX = 2
# bm25 column weights, in the column order of entries_fts: title, author, text, source.
WEIGHTS = (10.0, 4.0, 1.0, 2.0)
# The most the recency factor takes off a bm25 score (a fraction; see ranked_page).
RECENCY = 0.1
# Added to the score of an exact title match: below any bm25 score.
_EXACT = -1e9
# Past this many matches only the newest this many are ranked, in tiers (the cap).
RANK_ALL = 1_000
# Tokens in a snippet at most (FTS5 snippet(), its last argument).
SNIPPET_TOKENS = 24
_OPEN, _CLOSE = "\x02", "\x03"
_WORD = re.compile(r"\w+", re.UNICODE)
# Column filters: the reader's name, and the FTS5 column it searches.
_COLUMN = re.compile(r"(source|title|author):", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RANKED_CURSOR = re.compile(r"(\d{1,18})\.(\d{1,9})")


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A reader's query, parsed: ``fts`` is the FTS5 MATCH expression (None when
    nothing is left to find, e.g. only exclusions); ``title`` the query's words
    normalised as titles are (``dedup.normalise_title``), for the exact-title rule."""

    text: str
    fts: str | None
    title: str
    words: tuple[str, ...]
    parts: tuple[str, ...] = ()  # the words and phrases without a column filter (FTS5)


def _phrase(words: Sequence[str], prefix: bool) -> str:
    quoted = '"' + " ".join(word.replace('"', '""') for word in words) + '"'
    return quoted + " *" if prefix else quoted


def parse_query(text: str) -> SearchQuery:
    """``text`` in the query language of the module docstring, as a ``SearchQuery``.

    Never raises; at most ``MAX_PARTS`` words, phrases and exclusions and ``MAX_WORDS``
    words in all are kept.
    """
    cleaned = _CONTROL.sub(" ", text)
    positive: list[str] = []
    negative: list[str] = []
    parts: list[str] = []
    words: list[str] = []
    budget = MAX_WORDS
    position, end = 0, len(cleaned)
    while position < end and len(positive) + len(negative) < MAX_PARTS and budget > 0:
        if cleaned[position].isspace():
            position += 1
            continue
        exclude = (
            cleaned[position] == "-" and position + 1 < end and not cleaned[position + 1].isspace()
        )
        if exclude:
            position += 1
        column = ""
        named = _COLUMN.match(cleaned, position)
        if named is not None and named.end() < end and not cleaned[named.end()].isspace():
            column, position = named.group(1).lower(), named.end()
        close = cleaned.find('"', position + 1) if cleaned[position] == '"' else -1
        if close != -1:
            token, position, prefix = cleaned[position + 1 : close], close + 1, False
        else:
            if cleaned[position] == '"':  # never closed: taken as plain words
                position += 1
            stop = position
            while stop < end and not cleaned[stop].isspace() and cleaned[stop] != '"':
                stop += 1
            token, position = cleaned[position:stop], stop
            prefix = token.endswith("*")
        found = _WORD.findall(token)[:budget]
        if not found:
            continue
        budget -= len(found)
        prefix = prefix and len(found[-1]) >= MIN_PREFIX
        filter_ = f"{column} : " if column else ""
        part = f"({filter_}{_phrase(found, prefix)})"
        if exclude:
            negative.append(part)
        else:
            positive.append(part)
            if not column:
                parts.append(part)
            if column in ("", "title"):
                words.extend(found)
    if not positive:
        return SearchQuery(text, None, "", ())
    fts = " AND ".join(positive) + "".join(f" NOT {part}" for part in negative)
    title = normalise_title(" ".join(words))
    return SearchQuery(text, fts, title, tuple(words), tuple(parts))


@dataclass(frozen=True, slots=True, order=True)
class RankedCursor:
    """A position in one ranked result set: ``upto`` fixes the set (the highest entry
    id when its first page was asked), ``start`` is the number of results before."""

    upto: int
    start: int

    def __str__(self) -> str:
        return f"{self.upto}.{self.start}"

    @classmethod
    def parse(cls, text: str) -> RankedCursor:
        """``upto.start`` as made by ``str()``; ValueError for anything else."""
        match = _RANKED_CURSOR.fullmatch(text)
        if match is None:
            raise ValueError(f"not a result position: {text[:60]!r}")
        return cls(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True, slots=True)
class Matches:
    """How many entries up to ``upto`` match: ``count`` exactly when ``exact``, else an
    estimate; ``low``: only entries with a greater id are ranked (0: all of them)."""

    count: int
    exact: bool
    low: int


@dataclass(frozen=True, slots=True)
class RankedPage:
    """One page of ranked results; ``next`` and ``previous`` are None at the ends."""

    entries: tuple[TimelineEntry, ...]
    upto: int
    start: int
    next: RankedCursor | None
    previous: RankedCursor | None
    capped: bool  # only the newest RANK_ALL matches were ranked (see module docstring)
    matches: Matches


@dataclass(frozen=True, slots=True)
class Fragment:
    """A piece of plain text; ``hit`` when it is a matched word."""

    text: str
    hit: bool


@dataclass(frozen=True, slots=True)
class Highlight:
    """An entry's title and a snippet of its text, as fragments (see ``Fragment``)."""

    title: tuple[Fragment, ...]
    snippet: tuple[Fragment, ...]


def _execute(db: Database, sql: str, params: Iterable[Any]) -> list[Any]:
    try:
        return db.execute(sql, list(params)).fetchall()
    except sqlite3.DatabaseError as error:
        raise StoreError(f"search failed: {error}") from None


def _filter(feed_id: int | None) -> tuple[str, list[Any]]:
    if feed_id is not None:
        return "e.feed_id = ?", [feed_id]
    return "+e.duplicate_of IS NULL", []


def newest_id(db: Database) -> int:
    """The highest entry id now (0 for an empty database): a new search's ``upto``."""
    return int(_execute(db, "SELECT coalesce(max(id), 0) FROM entries", [])[0][0])


def count_matches(db: Database, query: SearchQuery, *, feed_id: int | None, upto: int) -> Matches:
    """The matches up to ``upto`` (with ``feed_id``, of that source only), and the cap.

    Up to ``RANK_ALL`` matches are counted exactly. Past that, the ranked set is the
    newest ``RANK_ALL`` matches by ingest order (whatever their source), and the count
    is estimated from how many ids they span (matches spread evenly over ids): reading
    every match of a word in 15 % of a million entries costs more than the page may.
    Without a source, exact counts are of stories (the results list each cross-posted
    story once); past the cap the estimate counts copies too, and pages say "about".
    """
    if query.fts is None:
        return Matches(0, True, 0)
    newest = (
        "SELECT rowid FROM entries_fts WHERE entries_fts MATCH ? AND rowid <= ? "
        "ORDER BY rowid DESC LIMIT ?"
    )
    rows = _execute(
        db, f"SELECT count(*), min(rowid) FROM ({newest})", [query.fts, upto, RANK_ALL + 1]
    )
    count, lowest = rows[0]
    if count <= RANK_ALL:
        where, params = _filter(feed_id)
        sql = (
            "SELECT count(*) FROM entries_fts JOIN entries e ON e.id = entries_fts.rowid "
            f"WHERE entries_fts MATCH ? AND entries_fts.rowid <= ? AND {where}"
        )
        count = _execute(db, sql, [query.fts, upto, *params])[0][0]
        return Matches(int(count), True, 0)
    low = int(lowest)
    estimate = _estimate(upto, low)
    if feed_id is not None:
        share = _execute(
            db,
            "SELECT count(*) FROM entries WHERE id IN (SELECT value FROM json_each(?)) "
            "AND feed_id = ?",
            [json.dumps([row[0] for row in _execute(db, newest, [query.fts, upto, 200])]), feed_id],
        )[0][0]
        estimate *= share / 200
    return Matches(_round(estimate), False, low)


def _estimate(upto: int, low: int) -> float:
    """The matches up to ``upto`` when the newest ``RANK_ALL`` of them are the ids above
    ``low``: matches spread evenly over ids."""
    return RANK_ALL * upto / max(1, upto - low)


def _round(value: float) -> int:
    """Two significant digits: an estimate should not look exact."""
    if value < 100:
        return round(value)
    digits = len(str(int(value))) - 2
    return int(round(value, -digits))


def ranked_page(
    db: Database,
    query: SearchQuery,
    *,
    feed_id: int | None = None,
    position: RankedCursor | None = None,
    limit: int = 30,
) -> RankedPage:
    """One page of results by relevance (the rule of the module docstring), and how
    many there are (``RankedPage.matches``, as ``count_matches`` gives it).

    Without ``feed_id`` only stories are listed (as the timeline does); with it, every
    entry of that source. ``position`` is None for a first page (which fixes ``upto``
    as the newest entry id now) or a cursor from an earlier page.

    First the newest ``RANK_ALL`` + 1 matching ids are read (FTS5 walks its index
    newest first and stops there): they give the count and say whether the cap
    applies. Up to the cap, those matches are ranked by bm25; past it, by the tiers of
    the module docstring, without bm25 (see there for why).
    """
    upto = position.upto if position is not None else newest_id(db)
    start = position.start if position is not None else 0
    if query.fts is None or upto == 0:
        return RankedPage((), upto, start, None, None, False, Matches(0, True, 0))
    newest = [
        row[0]
        for row in _execute(
            db,
            "SELECT rowid FROM entries_fts WHERE entries_fts MATCH ? AND rowid <= ? "
            "ORDER BY rowid DESC LIMIT ?",
            [query.fts, upto, RANK_ALL + 1],
        )
    ]
    if not newest:
        return RankedPage((), upto, start, None, None, False, Matches(0, True, 0))
    if len(newest) > RANK_ALL:
        low = newest[-1]  # only ids above it are ranked
        ids = _tiered(db, query, newest[:RANK_ALL], feed_id, upto, low, limit + 1, start)
        if feed_id is None:
            matches = Matches(_round(_estimate(upto, low)), False, low)
        else:
            matches = count_matches(db, query, feed_id=feed_id, upto=upto)
    else:
        low = 0
        ids = _by_bm25(db, query, feed_id, newest[-1], upto, limit + 1, start)
        where, params = _filter(feed_id)
        count = _execute(
            db,
            "SELECT count(*) FROM json_each(?) AS j CROSS JOIN entries e ON e.id = j.value "
            f"WHERE {where}",
            [json.dumps(newest), *params],
        )[0][0]
        matches = Matches(int(count), True, 0)
    more = len(ids) > limit
    ids = ids[:limit]
    entries = _entries(db, ids)
    return RankedPage(
        entries=tuple(entries),
        upto=upto,
        start=start,
        next=RankedCursor(upto, start + limit) if more else None,
        previous=RankedCursor(upto, max(0, start - limit)) if start > 0 else None,
        capped=low > 0,
        matches=matches,
    )


def _by_bm25(
    db: Database,
    query: SearchQuery,
    feed_id: int | None,
    lowest: int,
    upto: int,
    limit: int,
    offset: int,
) -> list[int]:
    """``limit`` ids from ``offset`` of every match in ``lowest``..``upto`` (all of
    them: at most ``RANK_ALL``), ranked by exact title, then bm25 scaled by recency."""
    where, params = _filter(feed_id)
    weights = ", ".join(str(weight) for weight in WEIGHTS)
    # The recency reference: the publication date of the newest entry of the set.
    # 1 - RECENCY * age / (age + 365), written with one date computation per row.
    age = (
        "max(0.0, julianday((SELECT published FROM entries WHERE id <= ? ORDER BY id DESC "
        "LIMIT 1)) - julianday(e.published))"
    )
    recency = f"({1 - RECENCY} + {RECENCY * 365} / ({age} + 365.0))"
    exact = f"CASE WHEN e.norm_title = ? THEN {_EXACT} ELSE 0.0 END"
    sql = (
        f"WITH m AS MATERIALIZED (SELECT rowid AS id, bm25(entries_fts, {weights}) AS b "
        "FROM entries_fts WHERE entries_fts MATCH ? AND rowid >= ? AND rowid <= ?) "
        f"SELECT m.id FROM m CROSS JOIN entries e ON e.id = m.id WHERE {where} "
        f"ORDER BY {exact} + m.b * {recency}, m.id DESC LIMIT ? OFFSET ?"
    )
    sql_params = [query.fts, lowest, upto, *params, query.title, upto, limit, offset]
    return [row[0] for row in _execute(db, sql, sql_params)]


def _tiered(
    db: Database,
    query: SearchQuery,
    newest: Sequence[int],
    feed_id: int | None,
    upto: int,
    low: int,
    limit: int,
    offset: int,
) -> list[int]:
    """``limit`` ids from ``offset`` of a capped result set: exact title matches (from
    anywhere up to ``upto``), then the ``newest`` matches (the ids above ``low``) by
    tier (module docstring), newest first within a tier.

    A few small statements, each on an index, a few rowids or the capped id range, put
    together here (one statement joining them made SQLite's plan several times slower).
    """
    tier = dict.fromkeys(newest, 3)
    if query.parts:
        every = " AND ".join(query.parts)
        # Every word in the title, author or source title: one scan of the range, with
        # whether the title holds a match (highlight() of the title, for those few rows
        # only, in the same scan: seeking them again one by one costs far more).
        rows = _execute(
            db,
            f"SELECT rowid, instr(highlight(entries_fts, 0, '{_OPEN}', ''), '{_OPEN}') > 0 "
            "FROM entries_fts WHERE entries_fts MATCH ? AND rowid > ? AND rowid <= ?",
            [f"{{title author source}} : ({every})", low, upto],
        )
        single = len(query.parts) == 1
        tier.update((row[0], 1 if single and row[1] else 2) for row in rows if row[0] in tier)
        if not single:  # some of the words in the title; all of them
            _raise(db, tier, f"title : ({' OR '.join(query.parts)})", low, upto, 2)
            _raise(db, tier, f"title : ({every})", low, upto, 1)
    where, params = _filter(feed_id)
    exact = _execute(
        db,
        f"SELECT e.id FROM entries e WHERE e.norm_title = ? AND e.id <= ? AND {where} "
        "AND EXISTS (SELECT 1 FROM entries_fts WHERE entries_fts MATCH ? "
        "AND entries_fts.rowid = e.id)",
        [query.title, upto, *params, query.fts],
    )
    tier.update((row[0], 0) for row in exact)
    ranked = sorted(tier, key=lambda entry_id: (tier[entry_id], -entry_id))
    # Only stories (or the source's entries) are listed: checked in ranked order, as far
    # as the page reaches (the column read is at the end of a long row: reading it for
    # every ranked id would cost more than all the rest).
    listed: list[int] = []
    position, batch = 0, 2 * (offset + limit)
    while len(listed) < offset + limit and position < len(ranked):
        chunk = ranked[position : position + batch]
        rows = _execute(
            db,
            "SELECT e.id FROM json_each(?) AS j CROSS JOIN entries e ON e.id = j.value "
            f"WHERE {where}",
            [json.dumps(chunk), *params],
        )
        kept = {row[0] for row in rows}
        listed.extend(entry_id for entry_id in chunk if entry_id in kept)
        position, batch = position + len(chunk), batch * 2
    return listed[offset : offset + limit]


def _raise(
    db: Database, tiers: dict[int, int], expression: str, low: int, upto: int, to: int
) -> None:
    """Sets the tier of the ids of ``tiers`` that match the FTS5 ``expression`` to
    ``to`` (ids above ``low`` and up to ``upto``: the capped range, one scan)."""
    rows = _execute(
        db,
        "SELECT rowid FROM entries_fts WHERE entries_fts MATCH ? AND rowid > ? AND rowid <= ?",
        [expression, low, upto],
    )
    tiers.update((row[0], to) for row in rows if row[0] in tiers)


def _entries(db: Database, ids: Sequence[int]) -> list[TimelineEntry]:
    """The entries of ``ids``, in that order, with their other copies."""
    if not ids:
        return []
    rows = _execute(
        db,
        f"SELECT {_ENTRY_COLUMNS} FROM entries e JOIN feeds f ON f.id = e.feed_id "
        "WHERE e.id IN (SELECT value FROM json_each(?))",
        [json.dumps(list(ids))],
    )
    by_id = {row[0]: _entry(row) for row in rows}
    return _with_copies(db, [by_id[entry_id] for entry_id in ids if entry_id in by_id])


def _fragments(marked: str | None) -> tuple[Fragment, ...]:
    """``marked`` (text with ``_OPEN``/``_CLOSE`` around matches) as fragments. Marker
    characters that the text itself held only toggle highlighting, never add markup."""
    fragments: list[Fragment] = []
    hit = False
    for piece in re.split(f"([{_OPEN}{_CLOSE}])", marked or ""):
        if piece == _OPEN:
            hit = True
        elif piece == _CLOSE:
            hit = False
        elif piece:
            fragments.append(Fragment(piece, hit))
    return tuple(fragments)


def highlights(db: Database, query: SearchQuery, ids: Sequence[int]) -> dict[int, Highlight]:
    """Each matching entry of ``ids`` with its title highlighted and a snippet of its
    text around the best match (FTS5 ``highlight()`` and ``snippet()``, at most
    ``SNIPPET_TOKENS`` tokens, "…" where text was cut)."""
    if query.fts is None or not ids:
        return {}
    # One statement for the page. The ids drive the join (CROSS JOIN keeps them outside),
    # so FTS5 seeks each rowid; a plain IN list could make it read the whole match list
    # of a common word.
    rows = _execute(
        db,
        f"SELECT j.value, highlight(entries_fts, 0, '{_OPEN}', '{_CLOSE}'), "
        f"snippet(entries_fts, 2, '{_OPEN}', '{_CLOSE}', '…', {SNIPPET_TOKENS}) "
        "FROM json_each(?) AS j CROSS JOIN entries_fts ON entries_fts.rowid = j.value "
        "WHERE entries_fts MATCH ?",
        [json.dumps(list(ids)), query.fts],
    )
    found = {
        int(entry_id): Highlight(_fragments(title), _fragments(snippet))
        for entry_id, title, snippet in rows
    }
    return found
