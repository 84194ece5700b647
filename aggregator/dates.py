"""Date strings found in feeds -> aware UTC datetimes, or None when the date is unknown.

A translator (python-dateutil does the general case); no IO. The rule it implements:

* RFC 3339 / ISO 8601 (Atom ``published``/``updated``, RFC 4287 §3.3; JSON Feed) and
  RFC 822 as updated by RFC 2822 §3.3 (RSS ``pubDate``) are read by exact patterns,
  including their common slips: no seconds, two-digit years (RFC 2822 §4.3: 00-49 are
  20xx, 50-99 are 19xx), obsolete and common zone names (EST, PDT, CEST …), an ISO
  8601 date-time without an offset (read as UTC), a missing or wrong day name, a
  localised day or month abbreviation (``lun., 04 mars 2024``, ``Mo, 04 Mär 2024``) and
  a zone name after the numeric offset (``+0100 CET``: the offset counts).
* Anything else goes to dateutil, with localised month and day names put into English
  first, and its answer is kept only if it **agrees with the digits of the raw string**:
  the year, the month (as a number or a name) and the day must all be written there,
  in the order year-month-day, day-month-year or month-day-year. A purely numeric date
  whose day and month could be swapped (``07/08/2017``) is unknown: a guess would be a
  made-up date half of the time.
* A value that fails all of this is unknown (None), never a date some parser invented
  (feedparser reads ``2017/7/21`` as 1 November 2017 and ``2017-13-45`` as 1 January
  2018).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from itertools import permutations

from dateutil import parser as dateutil_parser

__all__ = ["date_agrees_with_text", "has_time_of_day", "parse_date"]

_MAX_CHARS = 120

# Zone names: RFC 822 §5.1 (UT, GMT, EST … PDT, military Z) and names common in feeds
# whose offset is not in doubt. Ambiguous names (IST, BST in Asia …) keep their most
# common meaning in feeds; unknown names are read as UTC, as RFC 2822 §4.3 says of
# unknown zones ("-0000").
_ZONE_HOURS: dict[str, float] = {
    "UT": 0, "UTC": 0, "GMT": 0, "Z": 0, "WET": 0, "WEST": 1, "BST": 1, "IST": 1,
    "CET": 1, "CEST": 2, "MET": 1, "MEST": 2, "EET": 2, "EEST": 3, "MSK": 3,
    "EST": -5, "EDT": -4, "CST": -6, "CDT": -5, "MST": -7, "MDT": -6, "PST": -8,
    "PDT": -7, "AKST": -9, "AKDT": -8, "HST": -10, "AST": -4, "ADT": -3, "NST": -3.5,
    "NDT": -2.5, "JST": 9, "KST": 9, "HKT": 8, "SGT": 8, "AWST": 8, "ACST": 9.5,
    "ACDT": 10.5, "AEST": 10, "AEDT": 11, "NZST": 12, "NZDT": 13,
}  # fmt: skip
_ZONES = {name: timezone(timedelta(hours=hours)) for name, hours in _ZONE_HOURS.items()}

_MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}
# Month names in the languages feeds are most often written in besides English
# (French, German, Spanish, Italian, Portuguese, Dutch), lower-case, accents kept and
# also dropped. Each maps to its month number.
_LOCAL_MONTHS: dict[str, int] = {}
for _number, _names in enumerate(
    [
        "janvier janv januar jänner jän jan enero ene gennaio genn gen janeiro januari",
        "février fevrier févr fevr februar feb febrero febbraio fevereiro fev februari",
        "mars märz mär maerz mrz marzo mar março marco maart mrt",
        "avril avr april abril aprile abr",
        "mai mayo maggio mag maio mei",
        "juin juni junio giugno giu junho jun",
        "juillet juil juli julio luglio lug julho jul",
        "août aout august agosto ago augustus",
        "septembre sept september septiembre setiembre settembre set setembro",
        "octobre oct oktober okt octubre ottobre ott outubro out",
        "novembre nov november noviembre novembro",
        "décembre decembre déc dezember dez diciembre dic dicembre dezembro december",
    ],
    start=1,
):
    for _name in _names.split():
        _LOCAL_MONTHS.setdefault(_name, _number)
_DAY_NAME_TEXT = (
    "mon tue tues wed thu thur thurs fri sat sun monday tuesday wednesday thursday friday "
    "saturday sunday lundi mardi mercredi jeudi vendredi samedi dimanche montag dienstag "
    "mittwoch donnerstag freitag samstag sonntag lunes martes miércoles miercoles jueves "
    "viernes sábado sabado domingo lunedì lunedi martedì martedi mercoledì mercoledi "
    "giovedì giovedi venerdì venerdi sabato domenica maandag dinsdag woensdag donderdag "
    "vrijdag zaterdag zondag segunda terça terca quarta quinta sexta"
)
_DAY_NAMES = frozenset(_DAY_NAME_TEXT.split())
# Abbreviated day names (French, German, Spanish, Italian, Portuguese, Dutch). Some are
# also month abbreviations ("mar") or words, so they are only dropped where RFC 822
# puts a day name: first, before a comma ("lun., 04 mars 2024", "Mo, 04 Mär 2024").
_DAY_ABBREVIATION_TEXT = (
    "lun mar mer jeu ven sam dim mo di mi do fr sa so mié mie jue vie sáb sab dom "
    "gio seg ter qua qui sex ma wo vr za zo"
)
_DAY_ABBREVIATIONS = frozenset(_DAY_ABBREVIATION_TEXT.split())
_FILLER = frozenset({"de", "del", "der", "den", "le", "am", "at", "à", "a", "um", "om", "h"})

_WORD = re.compile(r"[^\W\d_]+\.?", re.UNICODE)
_COMMENT = re.compile(r"\([^()]*\)")

# RFC 3339 §5.6 and the ISO 8601 forms feeds use (basic or extended, "T" or space,
# fraction, offset or Z or none).
_ISO = re.compile(
    r"(?P<year>\d{4})-?(?P<month>\d{2})-?(?P<day>\d{2})"
    r"(?:[Tt ]+(?P<hour>\d{2}):?(?P<minute>\d{2})(?::?(?P<second>\d{2})(?:[.,]\d+)?)?)?"
    r"\s*(?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?|UTC|GMT)?"
)
# RFC 822 §5 / RFC 2822 §3.3 date-time, day name already removed.
_RFC822 = re.compile(
    r"(?P<day>\d{1,2})[ -]+(?P<month>[^\W\d_]{3,9})\.?,?[ -]+(?P<year>\d{2,4})"
    r"(?:[ ,T]+(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,]\d+)?)?)?"
    r"\s*(?P<zone>[+-]\d{2}:?\d{2}|[A-Za-z]{1,5})?"
)
# "+0100 CET": a zone name written after a numeric offset repeats it; the offset is exact.
_OFFSET_THEN_NAME = re.compile(r"([+-]\d{2}:?\d{2})\s+(?![AaPp][Mm]\b)[A-Za-z]{1,5}$")
_NAMED_OFFSET = re.compile(r"\b(?:GMT|UTC)\s*([+-]\d{1,2}(?::?\d{2})?)\b")
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})?")


def parse_date(raw: str | None, *, fallback: datetime | None = None) -> datetime | None:
    """The moment a feed date string names, in UTC; None when it is unknown.

    ``fallback`` is another parser's reading of the same string (feedparser's, which
    knows a few more exotic forms); it is used only when nothing here can read the
    string and only if it agrees with the digits written (see the module docstring).
    """
    if not raw:
        return None
    text = raw[:_MAX_CHARS]
    if "(" in text:
        text = _COMMENT.sub(" ", text)
    text = " ".join(text.split())
    # "GMT+0200" (as JavaScript writes dates) means +02:00, not POSIX's inverted sign.
    if "GMT" in text or "UTC" in text:
        text = _NAMED_OFFSET.sub(r"\1", text)
    if text[-1:].isalpha():
        text = _OFFSET_THEN_NAME.sub(r"\1", text)
    if not text:
        return None
    for reader in (_read_iso, _read_rfc822):
        found, moment = reader(text)
        if found:
            return moment
    moment = _read_general(text)
    if moment is None and fallback is not None and date_agrees_with_text(fallback, text):
        moment = _utc(fallback)
    return moment


def _utc(moment: datetime) -> datetime | None:
    try:
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


@lru_cache(maxsize=512)
def _zone(value: str | None) -> timezone | None:
    """A numeric offset or a known zone name; None for "not given" or unknown."""
    if not value:
        return None
    offset = _OFFSET.fullmatch(value)
    if offset:
        sign, hours, minutes = offset.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
        if delta >= timedelta(hours=24):
            return None
        return timezone(-delta if sign == "-" else delta)
    return _ZONES.get(value.upper())


def _build(year: int, month: int, day: int, parts: dict[str, str | None]) -> datetime | None:
    """The moment named by the date and the ``hour``, ``minute``, ``second`` and
    ``zone`` of a pattern's match (no zone: UTC), or None when the digits name none."""
    try:
        moment = datetime(
            year,
            month,
            day,
            int(parts["hour"] or 0),
            int(parts["minute"] or 0),
            min(int(parts["second"] or 0), 59),  # a leap second (RFC 3339 §5.7): the one before
        )
    except ValueError:  # 31 February, month 13, hour 25: the digits name no moment
        return None
    return _utc(moment.replace(tzinfo=_zone(parts["zone"]) or UTC))


def _read_iso(text: str) -> tuple[bool, datetime | None]:
    """(matched, moment): an ISO 8601 string is read here or is unknown."""
    match = _ISO.fullmatch(text)
    if match is None:
        return False, None
    parts = match.groupdict()
    return True, _build(int(parts["year"]), int(parts["month"]), int(parts["day"]), parts)


def _two_digit_year(year: str) -> int:
    """RFC 2822 §4.3: 00-49 -> 2000-2049, 50-99 and three digits -> +1900."""
    value = int(year)
    if len(year) == 2:
        return value + (2000 if value < 50 else 1900)
    if len(year) == 3:
        return value + 1900
    return value


def _without_day_name(text: str) -> str:
    head, _, rest = text.partition(",")
    day = head.strip().lower().rstrip(".")
    if rest and (day in _DAY_NAMES or day in _DAY_ABBREVIATIONS):
        return rest.strip()
    first, _, rest = text.partition(" ")
    if rest and first.lower().rstrip(".,") in _DAY_NAMES:
        return rest.strip()
    return text


def _read_rfc822(text: str) -> tuple[bool, datetime | None]:
    match = _RFC822.fullmatch(_without_day_name(text))
    if match is None:
        return False, None
    parts = match.groupdict()
    month = _MONTHS.get(parts["month"].lower()) or _LOCAL_MONTHS.get(parts["month"].lower())
    if month is None or (parts["zone"] or "").lower() in ("am", "pm"):
        return False, None
    return True, _build(_two_digit_year(parts["year"]), month, int(parts["day"]), parts)


def _english(text: str) -> str:
    """Localised month names to English ones; day names and filler words dropped."""

    def word(match: re.Match[str]) -> str:
        name = match.group(0).lower().rstrip(".")
        if name in _DAY_NAMES or name in _FILLER:
            return " "
        if name in _MONTHS or name.upper() in _ZONES or name in ("pm", "t"):
            return match.group(0)
        month = _LOCAL_MONTHS.get(name)
        return f" {_MONTH_ABBREVIATIONS[month - 1]} " if month else match.group(0)

    return " ".join(_WORD.sub(word, text).replace(",", " ").split())


_MONTH_ABBREVIATIONS = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)
_DEFAULTS = (datetime(1904, 1, 1), datetime(1908, 2, 2))  # two leap years, all fields differ


def _read_general(text: str) -> datetime | None:
    english = _english(text)
    if not english:
        return None
    readings = []
    for default in _DEFAULTS:
        try:
            readings.append(
                dateutil_parser.parse(english, default=default, tzinfos=_ZONES, fuzzy=False)
            )
        except (ValueError, OverflowError):
            return None
    first, second = readings
    if (first.year, first.month, first.day) != (second.year, second.month, second.day):
        return None  # year, month or day not written: dateutil filled it in
    if not date_agrees_with_text(first, english):
        return None
    return _utc(first)


# --- agreement with the digits written ---------------------------------------------------
_TOKEN = re.compile(r"\d+(?::\d+)+|\d+|[^\W\d_]+", re.UNICODE)
_ORDERS = frozenset({("y", "m", "d"), ("d", "m", "y"), ("m", "d", "y")})


def _tokens(text: str) -> list[tuple[str, int | None]]:
    """Date-bearing tokens: (kind, value); kind "n" numbers, "w" month names."""
    found: list[tuple[str, int | None]] = []
    for token in _TOKEN.findall(text):
        if ":" in token:  # a time of day: never a year, month or day
            continue
        if token.isdigit():
            found.append(("n" if len(token) <= 4 else "x", int(token)))
            if len(token) == 8:  # 20170721: basic ISO 8601 date
                found[-1] = ("x", None)
                found += [("n", int(token[:4])), ("n", int(token[4:6])), ("n", int(token[6:]))]
            continue
        month = _MONTHS.get(token.lower()) or _LOCAL_MONTHS.get(token.lower())
        if month is not None:
            found.append(("w", month))
    return found


def _year_matches(token: tuple[str, int | None], year: int) -> bool:
    kind, value = token
    if kind != "n" or value is None:
        return False
    return value == year or (value < 100 and value == year % 100)


def date_agrees_with_text(moment: datetime, text: str) -> bool:
    """True when ``text`` writes ``moment``'s year, month and day in a consistent order.

    The month may be a number or a (possibly localised) name. A numeric day/month pair
    that could be read either way (both at most 12 and different) does not agree: the
    text does not say which date it is.
    """
    tokens = _tokens(text)
    candidates: list[tuple[int, int, int]] = []
    indexes = range(len(tokens))
    for y, m, d in permutations(indexes, 3):
        if not _year_matches(tokens[y], moment.year):
            continue
        kind_m, month = tokens[m]
        kind_d, day = tokens[d]
        if kind_d != "n" or day != moment.day or month != moment.month:
            continue
        if kind_m not in ("n", "w"):
            continue
        order = tuple(name for _, name in sorted(((y, "y"), (m, "m"), (d, "d"))))
        if order not in _ORDERS:
            continue
        candidates.append((y, m, d))
    if not candidates:
        return False
    return not any(_swappable(tokens, y, m, d) for y, m, d in candidates)


def _swappable(tokens: list[tuple[str, int | None]], y: int, m: int, d: int) -> bool:
    """Numeric day and month both next to each other, both <= 12 and different."""
    if tokens[m][0] != "n" or y < min(m, d):
        return False  # a month name, or year first (Y-M-D is the only year-first order)
    month, day = tokens[m][1], tokens[d][1]
    return month is not None and day is not None and month <= 12 and day <= 12 and month != day


_TIME_OF_DAY = re.compile(r"\d:\d\d|\d[Tt]\d\d|\d\s*[AaPp]\.?[Mm]\b")


def has_time_of_day(raw: str | None) -> bool:
    """Whether a date string writes a time of day. ``2024-03-04`` and ``Mon, 04 Mar 2024``
    name a calendar day, not a moment: ``parse_date`` reads them as midnight UTC of that
    day, which is the day as written only when shown without a time and without moving
    it to another zone (midnight UTC is 19:00 the day before in New York)."""
    return bool(raw) and _TIME_OF_DAY.search(raw[:_MAX_CHARS] if raw else "") is not None


def best_date(readings: Iterable[datetime | None]) -> datetime | None:
    """The first known date of several, in the order given."""
    return next((moment for moment in readings if moment is not None), None)
