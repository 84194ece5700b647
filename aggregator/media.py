"""Media attached to an entry (podcast episodes, videos, images) and embedded players.

Pure functions over plain values, standard library only: the parser reads the feed's
fields into these rules, the sanitiser asks where an embedded player's video lives, and
templates ask for labels. Nothing here fetches anything.

Sources of the rules:

* RSS 2.0 ``<enclosure url length type>`` (https://www.rssboard.org/rss-specification):
  ``length`` is the size in bytes, ``type`` a MIME type.
* Atom ``<link rel="enclosure" href type length>`` (RFC 4287 §4.2.7.2): the same.
* Media RSS (https://www.rssboard.org/media-rss): ``media:content`` with ``url``,
  ``type``, ``medium`` (image, audio, video, document, executable), ``fileSize`` in
  bytes and ``duration`` in seconds; ``media:thumbnail``; ``media:group`` holds
  renditions of one item.
* Apple podcast tags (https://podcasters.apple.com/support/823-podcast-requirements):
  ``itunes:duration`` as ``HH:MM:SS``, ``MM:SS`` or a number of seconds,
  ``itunes:image href``, ``itunes:episode`` a positive integer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from .models import MediaItem, MediaRole

__all__ = [
    "MAX_DURATION_SECONDS",
    "MAX_LENGTH_BYTES",
    "MAX_MEDIA_PER_ENTRY",
    "EmbedLink",
    "embed_link",
    "format_duration",
    "format_size",
    "guess_mime_type",
    "make_item",
    "media_label",
    "media_marker",
    "medium_of",
    "merge_media",
    "parse_duration",
    "parse_episode",
    "parse_length",
    "parse_mime_type",
]

# An entry carries at most this many media items; more are refused with a warning.
MAX_MEDIA_PER_ENTRY = 20
# Larger sizes and longer durations are not believed (a feed's typo or a hostile value):
# stored as unknown. 1 TB; one week.
MAX_LENGTH_BYTES = 10**12
MAX_DURATION_SECONDS = 7 * 24 * 3600  # one week, in seconds
MAX_EPISODE = 10**6  # podcast:episode / itunes:episode numbers above this are unknown
MAX_URL_CHARS = 2048  # a media URL longer than this is dropped (stored URLs stay indexable)

_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,99}")
_MEDIA_KINDS = frozenset({"audio", "video", "image"})
# Media RSS medium values we show differently; "document" and "executable" are "other".
_MEDIUMS = frozenset({"audio", "video", "image", "document", "executable"})
# When a feed states no type: what the file name says.
_EXTENSIONS: dict[str, tuple[str, str]] = {
    "mp3": ("audio/mpeg", "audio"),
    "m4a": ("audio/mp4", "audio"),
    "aac": ("audio/aac", "audio"),
    "ogg": ("audio/ogg", "audio"),
    "oga": ("audio/ogg", "audio"),
    "opus": ("audio/opus", "audio"),
    "flac": ("audio/flac", "audio"),
    "wav": ("audio/wav", "audio"),
    "mp4": ("video/mp4", "video"),
    "m4v": ("video/mp4", "video"),
    "mov": ("video/quicktime", "video"),
    "webm": ("video/webm", "video"),
    "ogv": ("video/ogg", "video"),
    "jpg": ("image/jpeg", "image"),
    "jpeg": ("image/jpeg", "image"),
    "png": ("image/png", "image"),
    "gif": ("image/gif", "image"),
    "webp": ("image/webp", "image"),
    "avif": ("image/avif", "image"),
    "pdf": ("application/pdf", "document"),
}
_SHORT_TYPES = {
    "audio/mpeg": "MP3",
    "audio/mp3": "MP3",
    "audio/x-m4a": "M4A",
    "audio/mp4": "M4A",
    "audio/aac": "AAC",
    "audio/ogg": "Ogg",
    "audio/opus": "Opus",
    "audio/flac": "FLAC",
    "audio/wav": "WAV",
    "video/mp4": "MP4",
    "video/webm": "WebM",
    "video/quicktime": "QuickTime",
    "video/ogg": "Ogg",
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WebP",
    "application/pdf": "PDF",
}
_DIGITS = re.compile(r"\s*\+?([0-9]{1,15})(?:\.[0-9]*)?\s*")
# ASCII digits only (``\d`` would take Arabic-Indic or full-width ones too).
_CLOCK = re.compile(r"\s*(?:([0-9]{1,4}):)?([0-9]{1,4}):([0-9]{1,2})(?:\.[0-9]*)?\s*")


# --- reading the feed's values ------------------------------------------------------


def parse_length(value: object) -> int | None:
    """A size in bytes as RSS 2.0 and RFC 4287 write it (a decimal integer); None when
    absent, not a number, zero (feeds write ``0`` for unknown) or over MAX_LENGTH_BYTES."""
    number = _integer(value)
    if number is None or number <= 0 or number > MAX_LENGTH_BYTES:
        return None
    return number


def parse_duration(value: object) -> int | None:
    """Seconds from ``itunes:duration`` (``HH:MM:SS``, ``MM:SS`` or seconds, Apple's
    spellings; fractions dropped) or Media RSS ``duration`` (seconds). None when
    absent, malformed, zero or over MAX_DURATION_SECONDS."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds: int | None = value
    elif isinstance(value, str) and len(value) <= 40:
        clock = _CLOCK.fullmatch(value)
        if clock is not None:
            hours, minutes, secs = (int(part) if part else 0 for part in clock.groups())
            # A clock reading: seconds below 60, and minutes too when hours are written.
            readable = secs < 60 and (clock.group(1) is None or minutes < 60)
            seconds = hours * 3600 + minutes * 60 + secs if readable else None
        else:
            seconds = _integer(value)
    else:
        seconds = None
    if seconds is None or seconds <= 0 or seconds > MAX_DURATION_SECONDS:
        return None
    return seconds


def parse_episode(value: object) -> int | None:
    """``itunes:episode``: a positive integer, else None."""
    number = _integer(value)
    return number if number is not None and 0 < number <= MAX_EPISODE else None


def parse_mime_type(value: object) -> str | None:
    """A MIME type (``type/subtype``, parameters dropped), lower-case; else None."""
    if not isinstance(value, str) or len(value) > 200:
        return None
    text = value.split(";", 1)[0].strip().lower()
    return text if _MIME.fullmatch(text) else None


def _integer(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str) or len(value) > 40:
        return None
    match = _DIGITS.fullmatch(value)
    return int(match.group(1)) if match else None


def medium_of(url: str, mime_type: str | None, medium: str | None = None) -> str | None:
    """audio, video, image, document, executable or None: Media RSS ``medium`` when the
    feed states one, else the MIME type's top level, else the file name's extension."""
    if medium:
        stated = medium.strip().lower()
        if stated in _MEDIUMS:
            return stated
    if mime_type:
        top = mime_type.split("/", 1)[0]
        if top in _MEDIA_KINDS:
            return top
        if mime_type == "application/pdf":
            return "document"
        return None
    guessed = _EXTENSIONS.get(_extension(url))
    return guessed[1] if guessed else None


def _extension(url: str) -> str:
    path = urlsplit(url).path
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def guess_mime_type(url: str) -> str | None:
    """The MIME type a file name suggests, for items whose feed states none."""
    guessed = _EXTENSIONS.get(_extension(url))
    return guessed[0] if guessed else None


def merge_media(items: Iterable[MediaItem]) -> list[MediaItem]:
    """Items in order, each URL once (an enclosure repeated as ``media:content`` is one
    item): the first occurrence keeps its place and takes what a later one adds (type,
    size, duration, medium, episode). An enclosure role wins over a thumbnail."""
    merged: dict[str, MediaItem] = {}
    for item in items:
        seen = merged.get(item.url)
        if seen is None:
            merged[item.url] = item
            continue
        merged[item.url] = MediaItem(
            url=seen.url,
            role="enclosure" if "enclosure" in (seen.role, item.role) else seen.role,
            mime_type=seen.mime_type or item.mime_type,
            medium=seen.medium or item.medium,
            length=seen.length or item.length,
            duration=seen.duration or item.duration,
            episode=seen.episode or item.episode,
        )
    return list(merged.values())


def make_item(
    url: str,
    *,
    role: MediaRole,
    mime_type: object = None,
    medium: object = None,
    length: object = None,
    duration: object = None,
    episode: int | None = None,
) -> MediaItem:
    """One item from a feed's raw values (``url`` already absolute http(s))."""
    mime = parse_mime_type(mime_type) or guess_mime_type(url)
    return MediaItem(
        url=url,
        role=role,
        mime_type=mime,
        medium=medium_of(url, mime, medium if isinstance(medium, str) else None),
        length=parse_length(length),
        duration=parse_duration(duration),
        episode=episode,
    )


# --- labels -------------------------------------------------------------------------


def format_size(length: int | None) -> str:
    """``38.2 MB``; decimal units, as players and browsers show file sizes."""
    if not length:
        return ""
    size = float(length)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            break
        size /= 1000
    if unit == "bytes":
        return "1 byte" if length == 1 else f"{length} bytes"
    return f"{size:.1f} {unit}" if size < 100 else f"{size:.0f} {unit}"


def format_duration(seconds: int | None) -> str:
    """``42 min``, ``1 h 5 min``, ``40 s``."""
    if not seconds:
        return ""
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _kind_name(item: MediaItem) -> str:
    return {"audio": "audio", "video": "video", "image": "image", "document": "document"}.get(
        item.medium or "", "file"
    )


def media_label(item: MediaItem) -> str:
    """What a download link says: ``Audio (MP3, 38.2 MB, 42 min)``."""
    details = [
        _SHORT_TYPES.get(item.mime_type or "", item.mime_type or ""),
        format_size(item.length),
        format_duration(item.duration),
    ]
    if item.episode:
        details.insert(0, f"episode {item.episode}")
    shown = ", ".join(detail for detail in details if detail)
    name = _kind_name(item).capitalize()
    return f"{name} ({shown})" if shown else name


def media_marker(items: Iterable[MediaItem]) -> str:
    """The timeline card's marker for an entry's media: ``audio · 42 min``; empty when
    it has no enclosure. Several enclosures of one kind count once (renditions)."""
    enclosures = [item for item in items if item.role == "enclosure"]
    if not enclosures:
        return ""
    first = next((i for i in enclosures if i.medium in ("audio", "video")), enclosures[0])
    parts = [_kind_name(first)]
    duration = format_duration(first.duration)
    if duration:
        parts.append(duration)
    return " · ".join(parts)


# --- embedded players ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbedLink:
    """Where an embedded player's content lives, and what a link to it says."""

    url: str
    label: str


_YOUTUBE_HOSTS = frozenset(
    {"youtube.com", "www.youtube.com", "m.youtube.com", "youtube-nocookie.com",
     "www.youtube-nocookie.com"}
)  # fmt: skip
_VIMEO_HOSTS = frozenset({"player.vimeo.com", "vimeo.com", "www.vimeo.com"})
_DAILYMOTION_HOSTS = frozenset({"dailymotion.com", "www.dailymotion.com", "geo.dailymotion.com"})
_VIDEO_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_YOUTUBE_EMBED = re.compile(r"/(?:embed|v|shorts)/([A-Za-z0-9_-]{1,64})/?")
_VIMEO_EMBED = re.compile(r"/video/(\d{1,20})/?")
_DAILYMOTION_EMBED = re.compile(r"/embed/video/([A-Za-z0-9]{1,32})/?")
_PEERTUBE_EMBED = re.compile(r"/videos/embed/([A-Za-z0-9_-]{1,64})/?")


def embed_link(url: str, *, kind: str = "embed") -> EmbedLink:
    """The page of what an embedded player at ``url`` (absolute http(s)) shows.

    YouTube (``/embed/ID``, ``youtube-nocookie.com``), Vimeo (``player.vimeo.com/video/
    ID``), PeerTube (``/videos/embed/ID`` on any host) and Dailymotion (``/embed/video/
    ID``, ``geo.dailymotion.com/player.html?video=ID``) players become a link to the
    video's own page ("Watch on YouTube: …"); anything else a link to ``url`` itself,
    labelled by ``kind`` (video, audio or embed). The URL is only read, never fetched.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    path = parts.path
    if host in _YOUTUBE_HOSTS:
        match = _YOUTUBE_EMBED.fullmatch(path)
        if match and match.group(1) != "videoseries":
            return _watch("YouTube", f"https://www.youtube.com/watch?v={match.group(1)}")
        playlist = parse_qs(parts.query).get("list", [""])[0]
        if _VIDEO_ID.fullmatch(playlist):
            return _watch("YouTube", f"https://www.youtube.com/playlist?list={playlist}")
    elif host in _VIMEO_HOSTS:
        match = _VIMEO_EMBED.fullmatch(path)
        if match:
            return _watch("Vimeo", f"https://vimeo.com/{match.group(1)}")
    elif host in _DAILYMOTION_HOSTS:
        match = _DAILYMOTION_EMBED.fullmatch(path)
        video = match.group(1) if match else parse_qs(parts.query).get("video", [""])[0]
        if re.fullmatch(r"[A-Za-z0-9]{1,32}", video):
            return _watch("Dailymotion", f"https://www.dailymotion.com/video/{video}")
    match = _PEERTUBE_EMBED.fullmatch(path)
    # Named by its host alone: a user part ("youtube.com@evil.example") would let the
    # label name a site the link does not lead to.
    if match and host and parts.username is None and parts.password is None:
        port = f":{parts.port}" if parts.port else ""
        origin = f"{parts.scheme}://{host}{port}"
        return _watch(host, f"{origin}/videos/watch/{match.group(1)}")
    label = {"video": "Video", "audio": "Audio"}.get(kind, "Embedded content")
    return EmbedLink(url, f"{label}: {url}")


def _watch(site: str, page: str) -> EmbedLink:
    return EmbedLink(page, f"Watch on {site}: {page}")
