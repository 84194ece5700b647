"""Identity of entries: the same entry in one feed, the same story across feeds (DESIGN §5).

Pure functions over plain data; standard library only. Nothing here reads the clock:
``now`` is always an argument.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from difflib import SequenceMatcher
from itertools import islice

from .models import (
    EntryRecord,
    EntryUpdate,
    MediaItem,
    NewEntry,
    ParsedEntry,
    PollPlan,
    StoredEntry,
)
from .urls import canonical_url

# A feed date is believed only inside this range (THREATS F5). Earlier than the web's
# first feeds or more than a day ahead of our clock (time zones, skewed servers) is
# noise: such an entry gets its first-seen time instead, so it can never sit above
# real posts on the timeline.
EARLIEST_PLAUSIBLE = datetime(1995, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(days=1)  # how far ahead of our clock a date is believed
# Where a date-only entry sits in time order (see ``make_record``).
DATE_ONLY_HOUR = timedelta(hours=12)

# Identity strings are stored and indexed; longer ones are replaced by their digest.
MAX_IDENTITY_CHARS = 2048
# Only the start of a title takes part in identity: a 5 MB title costs no more than this.
MAX_TITLE_CHARS = 2000
# Near-duplicate checks read at most this many words of each text.
MAX_SIMILARITY_WORDS = 5000
SHINGLE_SIZE = 3  # words per shingle when comparing texts for near-duplicates
# Fewer words than this are no evidence that two texts are one story: a one-line body
# ("A new episode is out. Listen now!") is boilerplate that distinct posts share.
MIN_EVIDENCE_WORDS = 20
# Two different titles are near-identical at this character similarity (difflib ratio)
# when they also carry the same numbers ("Episode 10" and "Episode 11" are not).
TITLE_SIMILARITY = 0.9

# Prefixes that reposts and cross-posts put in front of the original title.
_REPOST_PREFIX = re.compile(
    r"^\s*(?:"
    r"(?:re|fwd?|cross[\s_-]?post(?:ed)?|x[\s-]?post(?:ed)?|re-?post(?:ed)?)\s*(?:\[\d+\])?\s*:"
    r"|[\[(](?:cross[\s_-]?post(?:ed)?|x[\s-]?post(?:ed)?|re-?post(?:ed)?)[\])]"
    r")\s*",
)
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+")
# A GUID that is a path relative to the feed: "/2024/05/post", "./post", "?p=12".
_RELATIVE_PATH = re.compile(r"^(?:/|\./|\.\./|\?)\S*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


# --- titles and texts ---------------------------------------------------------------


def normalise_title(title: str) -> str:
    """The form two copies of one title share.

    NFKC and case folding, reposting prefixes ("Re:", "Cross-post:", "[x-post]") removed,
    punctuation, quotes, dashes and symbols turned into spaces, spaces collapsed. Words
    are kept, including bracketed tags such as "[Video]": they tell posts apart.
    """
    text = unicodedata.normalize("NFKC", title[:MAX_TITLE_CHARS]).casefold()
    while True:
        match = _REPOST_PREFIX.match(text)
        if match is None or match.end() == 0:
            break
        text = text[match.end() :]
    kept = [" " if unicodedata.category(char)[0] in "PSCZ" else char for char in text]
    return " ".join("".join(kept).split())


def _words(text: str) -> list[str]:
    return [
        match.group().casefold() for match in islice(_WORD.finditer(text), MAX_SIMILARITY_WORDS)
    ]


def _shingles(text: str) -> frozenset[tuple[str, ...]]:
    words = _words(text)
    if not words:
        return frozenset()
    if len(words) < SHINGLE_SIZE:
        return frozenset({tuple(words)})
    # SHINGLE_SIZE consecutive words: zip of the list with itself shifted.
    return frozenset(zip(*(words[i:] for i in range(SHINGLE_SIZE)), strict=False))


def _jaccard(a: frozenset[tuple[str, ...]], b: frozenset[tuple[str, ...]]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def text_similarity(a: str, b: str) -> float:
    """Jaccard similarity of the word 3-shingles of two texts, 0.0 to 1.0.

    Only the first MAX_SIMILARITY_WORDS words count, so huge entries stay cheap. A text
    without words has nothing to compare: 0.0, so that empty bodies never make two
    entries look alike.
    """
    return _jaccard(_shingles(a), _shingles(b))


def titles_agree(a: str, b: str) -> bool:
    """Whether two normalised titles (``normalise_title``) name one post.

    Equal; or one contains the other as whole words and the shorter has at least two
    words ("shipping v2" in "shipping v2 is out"); or they differ by a few characters
    (``TITLE_SIMILARITY``) while carrying the same numbers, so that "episode 10" and
    "episode 11", or "part 1" and "part 2", stay two posts. An empty title agrees with
    nothing.
    """
    if not a or not b:
        return False
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    if len(short.split()) >= 2 and f" {short} " in f" {long} ":
        return True
    return (
        _NUMBER.findall(a) == _NUMBER.findall(b)
        and SequenceMatcher(None, a, b).ratio() >= TITLE_SIMILARITY
    )


def _evidence(text: str) -> frozenset[tuple[str, ...]]:
    """The shingles of a text long enough to tell a story apart, else none."""
    shingles = _shingles(text)
    return shingles if len(shingles) >= MIN_EVIDENCE_WORDS - SHINGLE_SIZE + 1 else frozenset()


# --- keys ---------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        # Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.hexdigest()


def _bounded(identity: str) -> str:
    return identity if len(identity) <= MAX_IDENTITY_CHARS else "sha256:" + _digest(identity)


def _guid_identity(guid: str, feed_url: str) -> str:
    """GUIDs drift between polls (THREATS F6): fold the harmless differences away.

    A URL GUID gets the canonical URL form (http/https, www., default port, tracking
    parameters and fragments, trailing slash; an identifying fragment is kept, see
    ``urls.canonical_url``); a relative path is resolved against the feed first (so
    moving the feed to another host changes such aliases: the stable link then matches
    instead). Any other GUID (tag:, urn:uuid:, a number) is opaque and kept as it is.
    """
    if _SCHEME.match(guid) or _RELATIVE_PATH.match(guid):
        canonical = canonical_url(guid, base=feed_url if _RELATIVE_PATH.match(guid) else None)
        if canonical is not None:
            return canonical
    return guid


def link_key(link: str | None) -> str | None:
    """Canonical form of an entry link, for secondary matching inside one feed.

    An identifying fragment is part of it: ``/now.html#2026-02-16`` and
    ``/now.html#2026-02-17`` are two entries of a one-page site.
    """
    canonical = canonical_url(link)
    return _bounded(canonical) if canonical is not None else None


def _date_part(published: datetime | None) -> str:
    return _stable_iso(published) if published is not None else ""


def _text_part(text: str) -> str:
    return " ".join(text[: MAX_SIMILARITY_WORDS * 16].split())


def entry_key(
    guid: str | None,
    link: str | None,
    title: str,
    published: datetime | None,
    *,
    feed_url: str,
    text: str = "",
) -> str:
    """Exact identity of an entry inside one feed: "guid:…", else "link:…", else "hash:…".

    Two entries of one document with different keys are two entries, always.

    - A GUID is the identity exactly as written (surrounding space stripped). RSS 2.0
      defines ``<guid>`` as "a string that uniquely identifies the item"; RFC 4287
      §4.2.6.1 compares ``atom:id`` values character by character, never normalised,
      and §4.1.1 makes entries with one ``atom:id`` one entry. So ``#comment-401`` and
      ``#comment-402``, or even ``http://…/p`` and ``https://…/p``, are distinct
      entries; spelling churn between polls is ``entry_alias``'s business.
    - Without a GUID, the canonical link (identifying fragment kept) together with the
      normalised title and the feed's date: what a publisher uses to tell entries
      apart when every item links to one page (RSS 2.0 makes every item element
      optional, only title or description is required).
    - Without either, the normalised title, the date exactly as the feed gave it (never
      the first-seen time, which would differ on every poll) and the plain text: an
      item that has only a description is told apart by that description.
    """
    stripped = (guid or "").strip()
    if stripped:
        return "guid:" + _bounded(stripped)
    date = _date_part(published)
    canonical = canonical_url(link, base=feed_url)
    if canonical is not None:
        return "link:" + _bounded(canonical) + " " + _digest(normalise_title(title), date)[:24]
    return "hash:" + _digest(normalise_title(title), date, _text_part(text))


def entry_alias(
    guid: str | None,
    link: str | None,
    title: str,
    published: datetime | None,
    *,
    feed_url: str,
    text: str = "",
) -> str:
    """The churn-tolerant form of ``entry_key``: what may join one entry across polls.

    - A URL GUID in canonical form (http/https, host case, ``www.``, default port,
      tracking parameters and fragments, trailing slash folded; an identifying fragment
      kept), so a feed that moves to https keeps its entries (THREATS F6).
    - An entry without GUID or link: its normalised title and date (no date: its title
      alone), so that an edit of the text is an update, not a new entry.
    - Otherwise the key itself.

    An alias only ever joins a record to a stored entry when neither side has a second
    entry with that alias (``plan_entries``): inside one document it never merges.
    """
    stripped = (guid or "").strip()
    if stripped:
        return "guid:" + _bounded(_guid_identity(stripped, feed_url))
    key = entry_key(guid, link, title, published, feed_url=feed_url, text=text)
    norm_title = normalise_title(title)
    if key.startswith("hash:") and norm_title:
        return "hash:" + _digest(norm_title, _date_part(published))
    return key


def content_hash(
    title: str,
    summary_html: str,
    content_html: str,
    link: str | None,
    author: str | None,
    media: Sequence[MediaItem] = (),
) -> str:
    """Digest of what a reader sees: a change means the stored entry is updated.

    Media count only when an entry has some, so that the digest of an entry without
    media is what it was before media were stored (no update storm on upgrade), while
    an entry whose enclosure was not stored yet is updated once and gains it.
    """
    parts = [title, summary_html, content_html, link or "", author or ""]
    for item in media:
        parts += [
            "\x00media",
            item.url,
            item.role,
            item.mime_type or "",
            item.medium or "",
            str(item.length or ""),
            str(item.duration or ""),
            str(item.episode or ""),
        ]
    return _digest(*parts)


# --- records ------------------------------------------------------------------------


def _stable_iso(value: datetime) -> str:
    try:
        return _utc(value).isoformat()
    except OverflowError:
        return value.isoformat()


def _utc(value: datetime) -> datetime:
    # Naive datetimes should not reach here; if one does, it is read as UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def plausible_date(value: datetime | None, *, now: datetime) -> datetime | None:
    """The date in UTC when it lies between EARLIEST_PLAUSIBLE and now + FUTURE_TOLERANCE."""
    if value is None:
        return None
    try:
        moment = _utc(value)
    except OverflowError:  # year 1 or 9999 with an offset falls off the calendar
        return None
    if moment < EARLIEST_PLAUSIBLE or moment > _utc(now) + FUTURE_TOLERANCE:
        return None
    return moment


def make_record(entry: ParsedEntry, *, feed_url: str, text: str, now: datetime) -> EntryRecord:
    """Everything the store writes for one parsed entry.

    ``text`` is the plain text of the sanitised content. The effective date is the
    feed's when present and plausible, else ``now`` with ``date_missing`` set (an update
    then keeps the first-seen date the entry got once; see ``plan_entries``).
    """
    published = plausible_date(entry.published, now=now)
    date_only = published is not None and entry.date_only
    if published is not None and date_only:
        # A day without a time of day ("2024-03-04") is filed at noon UTC of that day:
        # the same calendar day from UTC-12 to UTC+11, so the timeline's order agrees
        # with the day it is shown under (``date_only``: shown without a time, under
        # the day written) nearly everywhere. Identity keeps the feed's reading.
        published += DATE_ONLY_HOUR
    canonical = canonical_url(entry.link, base=feed_url)
    identity = (entry.guid, entry.link, entry.title, entry.published)
    return EntryRecord(
        key=entry_key(*identity, feed_url=feed_url, text=text),
        alias=entry_alias(*identity, feed_url=feed_url, text=text),
        link_key=link_key(entry.link),
        guid=entry.guid,
        link=entry.link,
        canonical_url=_bounded(canonical) if canonical is not None else None,
        title=entry.title,
        norm_title=normalise_title(entry.title),
        author=entry.author,
        summary_html=entry.summary_html,
        content_html=entry.content_html,
        text=text,
        content_hash=content_hash(
            entry.title,
            entry.summary_html,
            entry.content_html,
            entry.link,
            entry.author,
            entry.media,
        ),
        published=published if published is not None else _utc(now),
        updated=plausible_date(entry.updated, now=now),
        date_missing=published is None,
        media=entry.media,
        date_only=date_only,
        date_is_edit_time=published is not None and entry.date_is_edit_time,
    )


# --- planning one poll --------------------------------------------------------------


def _agree(record: EntryRecord, stored: StoredEntry) -> bool:
    """Whether a record and a stored entry sharing a link read as one entry (an edit).

    The rule (DESIGN §5.1), by what each side carries:

    - Both carry GUIDs, and they differ: the publisher says they are two entries
      unless it re-numbered its posts (a CMS migration); then title and text must
      both agree.
    - Otherwise (one side or neither has a GUID): an edit keeps at least its title or
      its date. Same normalised title: one entry (its text or date was edited). Same
      feed date (known on both sides): one entry only if the text also agrees (the
      title was edited). A different title *and* a different date is a second entry,
      whatever the text: a podcast or comic feed whose one item links to the home page
      and carries the same boilerplate body every day publishes a new entry each day.
      (Without a GUID the entry key is the link with the title and date, so two such
      items of one document are two entries too.)
    """
    same_title = bool(record.norm_title) and record.norm_title == stored.norm_title
    same_content = record.content_hash == stored.content_hash or (
        bool(record.text.strip()) and record.text == stored.text
    )
    if record.key.startswith("guid:") and stored.key.startswith("guid:"):
        return same_title and same_content
    same_date = not record.date_missing and record.published == _utc(stored.published)
    return same_title or (same_date and same_content)


def _counts(values: Iterable[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        if value is not None:
            counts[value] = counts.get(value, 0) + 1
    return counts


def _match_existing(
    records: Sequence[EntryRecord], existing: Sequence[StoredEntry]
) -> dict[int, StoredEntry]:
    """Pair records (by index) with stored entries of the same feed.

    1. By exact key, for every record.
    2. By alias (GUID spelling churn, an edited entry without GUID or link), only where
       it cannot be mistaken for a second entry: no other record of the document has
       that alias, and one unclaimed stored entry has it (or, of several, one has the
       same title).
    3. By link, only when the link can identify anything: it is not shared by several
       records of the document, the stored entry was not already claimed, and the two
       agree (``_agree``). Feeds that point every entry at their home page would
       otherwise have each new entry overwrite an old one.
    """
    by_key: dict[str, StoredEntry] = {}
    by_alias: dict[str, list[StoredEntry]] = {}
    by_link: dict[str, list[StoredEntry]] = {}
    for stored in sorted(existing, key=lambda s: s.id):
        by_key.setdefault(stored.key, stored)
        by_alias.setdefault(stored.alias, []).append(stored)
        if stored.link_key is not None:
            by_link.setdefault(stored.link_key, []).append(stored)

    matches: dict[int, StoredEntry] = {}
    claimed: set[int] = set()
    for index, record in enumerate(records):
        keyed = by_key.get(record.key)
        if keyed is not None and keyed.id not in claimed:
            matches[index] = keyed
            claimed.add(keyed.id)

    alias_counts = _counts(record.alias for record in records)
    for index, record in enumerate(records):
        if index in matches or alias_counts[record.alias] > 1:
            continue
        free = [s for s in by_alias.get(record.alias, ()) if s.id not in claimed]
        if len(free) > 1:
            free = [s for s in free if s.norm_title == record.norm_title]
        if len(free) == 1:
            matches[index] = free[0]
            claimed.add(free[0].id)

    link_counts = _counts(record.link_key for record in records)
    for index, record in enumerate(records):
        if index in matches or record.link_key is None or link_counts[record.link_key] > 1:
            continue
        for stored in by_link.get(record.link_key, ()):
            if stored.id not in claimed and _agree(record, stored):
                matches[index] = stored
                claimed.add(stored.id)
                break
    return matches


def _root(entry: StoredEntry) -> int:
    return entry.duplicate_of if entry.duplicate_of is not None else entry.id


def _shared_urls(
    records: Sequence[EntryRecord],
    existing: Sequence[StoredEntry],
    matched: set[int],
    candidates: Sequence[StoredEntry],
) -> set[str]:
    """Canonical URLs that name no single post: several entries of one feed carry them.

    A home page, a show page or a category page that a feed gives as the link of many
    posts: records of this document with different keys, a record and a stored entry
    of this feed it is not, or two candidates of one other feed.
    """
    shared = {url for url, n in _counts(r.canonical_url for r in records).items() if n > 1}
    shared.update(s.canonical_url for s in existing if s.canonical_url and s.id not in matched)
    per_feed: dict[tuple[int, str], int] = {}
    for candidate in candidates:
        if candidate.canonical_url is not None:
            pair = (candidate.feed_id, candidate.canonical_url)
            per_feed[pair] = per_feed.get(pair, 0) + 1
    shared.update(url for (_, url), n in per_feed.items() if n > 1)
    return shared


def _story_of(
    record: EntryRecord,
    candidates: Sequence[StoredEntry],
    *,
    window: timedelta,
    threshold: float,
    shared_urls: set[str],
    blocked: set[int],
) -> int | None:
    """The root story a new entry of another feed repeats, or None.

    ``candidates`` come earliest-published first; stories in ``blocked`` (one of this
    feed's entries is in them already) are never joined.
    """
    evidence: frozenset[tuple[str, ...]] | None = None

    def texts_agree(candidate: StoredEntry) -> bool:
        nonlocal evidence
        if evidence is None:
            evidence = _evidence(record.text)
        return bool(evidence) and _jaccard(evidence, _evidence(candidate.text)) >= threshold

    url = record.canonical_url if record.canonical_url not in shared_urls else None
    for candidate in candidates:
        root = _root(candidate)
        if root in blocked:
            continue
        if url is not None and candidate.canonical_url == url:
            if titles_agree(record.norm_title, candidate.norm_title) or texts_agree(candidate):
                return root
            continue
        if (
            not record.norm_title
            or candidate.norm_title != record.norm_title
            or abs(_utc(candidate.published) - record.published) > window
        ):
            continue
        if texts_agree(candidate):
            return root
    return None


def _stories(
    records: Sequence[EntryRecord],
    fresh: Sequence[int],
    *,
    existing: Sequence[StoredEntry],
    matched: set[int],
    candidates: Sequence[StoredEntry],
    feed_id: int | None,
    window: timedelta,
    threshold: float,
) -> dict[int, int]:
    """The story each new record (index in ``records``) is a copy of, where it is one.

    A story holds at most one entry of a feed: two entries of one feed with different
    keys are two posts, never copies of each other. So a story that already has an
    entry of this feed (``feed_id``) is not joined, and of several new records that
    would join one story only the earliest-published does (document order on ties).
    """
    by_id = {c.id: c for c in candidates}
    blocked: set[int] = set()
    for candidate in candidates:
        root = by_id.get(_root(candidate))
        if feed_id is not None and feed_id in (
            candidate.feed_id,
            root.feed_id if root is not None else None,
        ):
            blocked.add(_root(candidate))
    ordered = sorted(candidates, key=lambda c: (_utc(c.published), c.id))
    shared = _shared_urls(records, existing, matched, candidates)
    found: dict[int, int] = {}
    for index in sorted(fresh, key=lambda i: (records[i].date_missing, records[i].published, i)):
        story = _story_of(
            records[index],
            ordered,
            window=window,
            threshold=threshold,
            shared_urls=shared,
            blocked=blocked,
        )
        if story is not None:
            found[index] = story
            blocked.add(story)
    return found


def _credit_earliest(
    fresh: list[tuple[int, NewEntry]], candidates: Sequence[StoredEntry]
) -> list[tuple[int, NewEntry]]:
    """Make the earliest-published new copy of a stored story the story."""
    published = {c.id: _utc(c.published) for c in candidates}
    earliest: dict[int, int] = {}  # story id -> position in ``fresh`` of its earliest copy
    for position, (_, new) in enumerate(fresh):
        story = new.duplicate_of
        if story is None or story not in published or new.record.date_missing:
            continue
        if new.record.published >= published[story]:
            continue
        best = earliest.get(story)
        if best is None or new.record.published < fresh[best][1].record.published:
            earliest[story] = position
    result = list(fresh)
    for story, position in earliest.items():
        index, new = result[position]
        result[position] = (index, replace(new, duplicate_of=None, supersedes=story))
    return result


def plan_entries(
    records: Sequence[EntryRecord],
    *,
    existing: Sequence[StoredEntry],
    candidates: Sequence[StoredEntry],
    window: timedelta = timedelta(days=14),
    similarity_threshold: float = 0.8,
    feed_id: int | None = None,
) -> PollPlan:
    """Decide what one poll of one feed writes.

    ``existing``: stored entries of this feed sharing a key or link key with a record.
    ``candidates``: stored entries of other feeds sharing a canonical URL or normalised
    title with a record, and the stories those entries are copies of.
    ``feed_id``: the feed polled, when known; stories holding one of its entries are
    never joined (``store.entries.cross_candidates`` leaves them out as well).

    - A repeated key inside the document (the same GUID twice, RFC 4287 §4.1.1; the
      same link, title and date; or the same title, date and text): the first
      occurrence wins, later ones are counted in ``skipped_in_document``. Records with
      different keys are different entries, however alike their aliases or links.
    - A record matching a stored entry (see ``_match_existing``) is an update when its
      content, key, alias or link key changed (it keeps its id, first-seen time and ingest
      order; a record without a believable date keeps the stored date, and so does one
      dated only by its edit time, Atom ``<updated>``: an edit moves that date, but the
      entry was published when it was first stored), else unchanged.
      Refreshing a drifted key makes the next poll match it directly.
    - Any other record is new. It is a cross-post of the earliest candidate (an entry
      of another feed) that has
      - the same canonical URL, where that URL names one post (no feed gives it to
        several entries: a home page or show page is no evidence), and a title that
        agrees (``titles_agree``) or near-identical text; or
      - the same normalised title, a date within ``window`` and near-identical text.
      Near-identical: word 3-shingle similarity of at least ``similarity_threshold``,
      over texts of at least MIN_EVIDENCE_WORDS words. ``duplicate_of`` then names
      that candidate's root story. A story holds at most one entry of each feed
      (``feed_id``; see ``_stories``): entries of one feed with different keys are
      never copies of each other.
    - The earliest-published copy is the story (DESIGN §5.2), whatever order copies
      arrive in: a new record with a believable date earlier than its story's becomes
      the story instead (``supersedes`` names the old one, whose copies then point at
      it). A story already stored stays the story against a later or undated copy.
    - Inserts are ordered oldest first, so that the ingest sequence follows publication
      within a batch. Entries with equal dates keep the reverse of document order,
      since feeds list their newest entry first.
    """
    unique: list[EntryRecord] = []
    seen_keys: set[str] = set()
    for record in records:
        if record.key in seen_keys:
            continue
        seen_keys.add(record.key)
        unique.append(record)
    skipped = len(records) - len(unique)

    matches = _match_existing(unique, existing)
    stories = _stories(
        unique,
        [index for index in range(len(unique)) if index not in matches],
        existing=existing,
        matched={stored.id for stored in matches.values()},
        candidates=candidates,
        feed_id=feed_id,
        window=window,
        threshold=similarity_threshold,
    )
    updates: list[EntryUpdate] = []
    unchanged = 0
    fresh: list[tuple[int, NewEntry]] = []
    for index, record in enumerate(unique):
        stored = matches.get(index)
        if stored is None:
            fresh.append((index, NewEntry(record=record, duplicate_of=stories.get(index))))
        elif (
            stored.content_hash != record.content_hash
            or stored.key != record.key
            or stored.alias != record.alias
            or stored.link_key != record.link_key
        ):
            kept = (
                replace(record, published=_utc(stored.published))
                if record.date_missing or record.date_is_edit_time
                else record
            )
            updates.append(EntryUpdate(entry_id=stored.id, record=kept))
        else:
            unchanged += 1

    fresh = _credit_earliest(fresh, candidates)
    fresh.sort(key=lambda item: (item[1].record.published, -item[0]))
    return PollPlan(
        inserts=tuple(new for _, new in fresh),
        updates=tuple(updates),
        unchanged=unchanged,
        skipped_in_document=skipped,
    )
