"""URL rules: which links we accept, and the canonical form used to spot the same story.

Pure functions over strings; standard library only.
"""

from __future__ import annotations

import contextlib
import re
from functools import lru_cache
from urllib.parse import (
    SplitResult,
    parse_qsl,
    quote,
    urlencode,
    urljoin,
    urlsplit,
    urlunsplit,
)

from .text import UNSHOWABLE as _UNSHOWABLE

# The URL schemes fetched, linked and stored (RFC 9110 section 4.2); every other scheme is
# refused.
HTTP_SCHEMES = frozenset({"http", "https"})

# Query parameters that only track the reader and never change the page.
_TRACKING_PREFIXES = ("utm_", "mtm_", "pk_", "_hs")
_TRACKING_NAMES = frozenset(
    {
        "fbclid",
        "gclid",
        "dclid",
        "gbraid",
        "wbraid",
        "msclkid",
        "mc_cid",
        "mc_eid",
        "yclid",
        "igshid",
        "_ga",
        "_gl",
        "ref_src",
        "spm",
        "oly_enc_id",
        "oly_anon_id",
        "vero_id",
        "rb_clickid",
        "s_cid",
    }
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters that browsers silently drop from URLs: used to hide "javascript:" schemes.
_INVISIBLE = re.compile(r"[\x00-\x20\x7f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")
# Lone UTF-16 surrogates (a JSON "\\ud800" escape, a broken decoder) cannot be encoded.
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Path characters left as they are; "%" keeps escapes that must stay escaped (%2F).
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


# A cheap first look: a query parameter whose name could be a tracking one (the name may
# be percent-encoded, so any "%" in the query counts too).
_MAY_TRACK = re.compile(
    r"[?&;][\x00-\x20]*(?:%|"
    + "|".join(re.escape(p) for p in (*_TRACKING_PREFIXES, *sorted(_TRACKING_NAMES)))
    + ")",
    re.IGNORECASE,
)


# Fragments that never tell two pages apart: tracking tags (Google Analytics campaign
# tags, AT Internet's xtor, Matomo, AddThis's "#.XyZ12ab", Facebook's "#_=_") and the
# jump links blog software puts on every post ("read more", the comment form). Any other
# fragment is an anchor a publisher may use for one entry among several on a page.
_IDLE_FRAGMENT = re.compile(
    r"(?:(?:utm_|mtm_|pk_)[\w-]*(?:=.*)?|xtor=.*|\.[A-Za-z0-9_-]{6,}|_=_"
    r"|more|more-\d+|comments|respond|disqus_thread)",
    re.IGNORECASE | re.DOTALL,
)


def is_idle_fragment(fragment: str) -> bool:
    """True for a fragment that names no entry: empty, tracking, or blog page furniture."""
    return not fragment or _IDLE_FRAGMENT.fullmatch(fragment) is not None


def is_tracking_parameter(name: str) -> bool:
    """Whether a query parameter name only tracks the reader (``utm_*``, ``fbclid``, ...)
    and is dropped from canonical URLs; compared case-insensitively.
    """
    lowered = name.lower()
    return lowered in _TRACKING_NAMES or lowered.startswith(_TRACKING_PREFIXES)


def without_surrogates(text: str) -> str:
    """``text`` without lone UTF-16 surrogates (U+D800 to U+DFFF), which no encoder
    accepts (a JSON ``"\\ud800"`` escape decodes to one); other text is returned as is."""
    return _SURROGATES.sub("", text) if _SURROGATES.search(text) else text


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        return None
    return parts


def is_http_url(url: str | None) -> bool:
    """True for an absolute http(s) URL with a host."""
    if not url:
        return False
    parts = _split(url.strip())
    return parts is not None and parts.scheme.lower() in HTTP_SCHEMES and bool(parts.hostname)


def strip_tracking(url: str) -> str:
    """Drop tracking query parameters, keep everything else as it was."""
    url = without_surrogates(url)
    if not _MAY_TRACK.search(url):
        return url
    parts = _split(url)
    if parts is None or not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if not is_tracking_parameter(k)]
    if len(kept) == len(pairs):
        return url
    return urlunsplit(parts._replace(query=urlencode(kept, doseq=True)))


def absolute_http_url(url: str | None, base: str | None = None) -> str | None:
    """Resolve ``url`` against ``base``; return it only if the result is http(s).

    Whitespace and invisible characters are removed first, as a browser would, so
    that ``java\\tscript:`` is seen for what it is. Protocol-relative ``//host`` and
    the backslash form ``/\\host`` resolve like a browser resolves them.
    """
    if url is None:
        return None
    if _PLAIN_HTTP_URL.fullmatch(url) is not None:
        return url  # the common case: what the steps below would give back unchanged
    if base and url.startswith("/"):  # the next most common: a path on the base's host
        path = _PLAIN_PATH_REFERENCE.fullmatch(url)
        origin = _PLAIN_HTTP_URL.fullmatch(base) if path is not None else None
        if path is not None and origin is not None and "/." not in path[1]:
            return origin["origin"] + url
    return _resolved_http_url(url, base)


def _resolved_http_url(url: str, base: str | None) -> str | None:
    cleaned = without_surrogates(_INVISIBLE.sub("", url)).replace("\\", "/")
    if not cleaned:
        return None
    # An absolute http(s) URL with a host resolves to itself: no join needed.
    if base and not _ABSOLUTE_HTTP.match(cleaned) and _is_http_base(base):
        try:
            cleaned = _join(base, cleaned)
        except ValueError:
            return None
    parts = _split(cleaned)
    if parts is None or parts.scheme.lower() not in HTTP_SCHEMES or not parts.hostname:
        return None
    # Lower-case the scheme so that "HTTPS://" and "https://" are one link.
    return urlunsplit(parts._replace(scheme=parts.scheme.lower()))


# Sanitising calls these for every link of every entry; base URLs and relative links
# repeat across a feed's entries.
_ABSOLUTE_HTTP = re.compile(r"https?://[^/?#]", re.IGNORECASE)
# An absolute http(s) URL that absolute_http_url returns as written: lower-case scheme,
# a host of ASCII letters, digits, dots and hyphens (no user, no port), then only
# printable ASCII that urlsplit and urlunsplit leave in place; "?" and "#" only with
# something after them (urlunsplit drops an empty query or fragment).
_URL_CHARS = "-A-Za-z0-9._~!$&'()*+,;=:@%/"  # "-" first: a literal, not a range
_QUERY_AND_FRAGMENT = rf"(?:\?[{_URL_CHARS}?]+)?(?:#[{_URL_CHARS}?]+)?"
_PLAIN_HTTP_URL = re.compile(
    rf"(?P<origin>https?://[A-Za-z0-9.-]+)(?:/[{_URL_CHARS}]*)?{_QUERY_AND_FRAGMENT}"
)
# A path reference that urljoin puts after a plain base's origin as written: a path of
# the same characters without ";" (path parameters) and without empty segments ("//",
# which urljoin drops); the caller also refuses "/." (dot segments, which it resolves).
_SEGMENT = "[-A-Za-z0-9._~!$&'()*+,=:@%]"  # one character of a path segment
_PLAIN_PATH_REFERENCE = re.compile(rf"(/(?:{_SEGMENT}+/)*{_SEGMENT}*){_QUERY_AND_FRAGMENT}")


@lru_cache(maxsize=1024)
def _is_http_base(base: str) -> bool:
    return is_http_url(base)


@lru_cache(maxsize=16384)
def _join(base: str, url: str) -> str:
    return urljoin(base, url)


def clean_link(url: str | None, base: str | None = None) -> str | None:
    """A link fit to show: absolute http(s), tracking parameters removed."""
    absolute = absolute_http_url(url, base)
    return strip_tracking(absolute) if absolute else None


def canonical_url(url: str | None, base: str | None = None) -> str | None:
    """The form two copies of one page share, for matching, never for display.

    Scheme folded to https (http and https copies are one page), host lower-case
    without ``www.``, default port dropped, tracking parameters removed, remaining
    parameters sorted, trailing slash and ``index.html`` normalised away.

    The fragment is kept unless it carries no identity (``is_idle_fragment``): a
    publisher anchors distinct entries on one page (``?p=77#comment-401`` and
    ``#comment-402`` are two comments of a WordPress comment feed; a one-page site
    anchors each post), so two fragments are two pages here (DESIGN §5).
    """
    absolute = absolute_http_url(url, base)
    return None if absolute is None else _canonical_of_absolute(absolute)


# Making a record asks for the canonical form of one link two or three times (its
# canonical URL, its link key, its identity), with and without the feed as base.
@lru_cache(maxsize=4096)
def _canonical_of_absolute(absolute: str) -> str | None:
    parts = _split(absolute)
    if parts is None or parts.hostname is None:
        return None
    host = _canonical_host(parts.hostname)
    port = parts.port
    # The scheme folds to https, so either default port is dropped: otherwise
    # "http://host:443/" would canonicalise to a form that canonicalises again.
    if port is not None and port not in _DEFAULT_PORTS.values():
        host = f"{host}:{port}"
    path = re.sub(r"/{2,}", "/", _canonical_path(parts.path or "/"))
    path = re.sub(r"/index\.(html?|php)$", "/", path)
    if len(path) > 1:
        path = path.rstrip("/")
    query_pairs = sorted(
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not is_tracking_parameter(k)
    )
    query = urlencode(query_pairs)
    fragment = parts.fragment.strip()
    if is_idle_fragment(fragment):
        fragment = ""
    return urlunsplit(("https", host, path, query, fragment))


def _canonical_host(hostname: str) -> str:
    """Lower-case ASCII host: an internationalised name and its punycode are one host."""
    host = hostname.lower().rstrip(".")
    if not host.isascii():
        # An invalid IDN is matched on its lower-cased text as it is.
        with contextlib.suppress(UnicodeError):
            host = host.encode("idna").decode("ascii")
    return host[4:] if host.startswith("www.") else host


def _canonical_path(path: str) -> str:
    """One spelling per path: unreserved escapes decoded, others upper-case, non-ASCII escaped."""

    def fold(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return quote(_PERCENT_ESCAPE.sub(fold, path), safe=_PATH_SAFE)


# "https://…", "www.…", protocol-relative "//host/feed", and the feed: pseudo-scheme
# some readers put in front ("feed:https://…", "feed://…").
_URL_LIKE = re.compile(r"(?:feed:)?(?:[a-z][a-z0-9+.-]*://|//|www\.)\S+", re.IGNORECASE)


def is_placeholder_title(title: str | None, url: str) -> bool:
    """True when ``title`` names nothing: empty, a URL (any scheme, ``feed:`` in front,
    protocol-relative ``//host/…`` or ``www.…``), or the
    feed's own URL written without its scheme. Such a title (an OPML outline whose
    ``text`` is the feed URL, a form left blank) gives way to the feed's own title."""
    text = " ".join((title or "").split())
    if not text:
        return True
    if _URL_LIKE.fullmatch(text):
        return True
    bare = url.strip().split("://", 1)[-1].rstrip("/").lower()
    return text.rstrip("/").lower() == bare


def host_of(url: str) -> str:
    """Lower-case host name of a URL, or "" when it has none."""
    parts = _split(url)
    return (parts.hostname or "").lower() if parts else ""


# What an IRI reference cannot hold as it is (RFC 3987 section 2.2): controls, space,
# the delimiters RFC 3986 section 2 leaves out, bidi formatting characters (RFC 3987
# section 4.1), and a "%" that starts no percent-escape.
_NOT_IN_IRI = re.compile(
    r'[\x00-\x20"<>\\^`{|}\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ufff0-\uffff]'
    r"|%(?![0-9A-Fa-f]{2})"
)


def iri_reference(url: str) -> str:
    """``url`` as an IRI reference fit for an attribute such as Atom's ``href``
    (RFC 4287 section 4.2.7.1: an IRI reference, RFC 3987): each character an IRI
    cannot hold (space, controls, ``"<>\\^`{|}``, bidi controls, a ``%`` that starts no
    escape) percent-encoded as UTF-8; everything else kept, non-ASCII letters and
    existing escapes included. Markup escaping (``&``) is still the template's job.
    Never raises."""
    return _NOT_IN_IRI.sub(
        lambda found: "".join(f"%{byte:02X}" for byte in found.group().encode("utf-8", "replace")),
        url,
    )


USERINFO_REFUSED = (
    "a user name or password in a feed URL is refused: it would be shown on the "
    "public pages and in OPML exports"
)
"""The one-line reason a feed URL with userinfo (RFC 3986 section 3.2.1) is refused."""


def has_userinfo(url: str) -> bool:
    """Whether ``url`` carries userinfo (``user:pass@``) before its host (RFC 3986
    section 3.2.1)."""
    parts = _split(url.strip())
    return parts is not None and "@" in parts.netloc


def without_userinfo(url: str) -> str:
    """``url`` with any ``user:pass@`` removed, for display; other URLs as they are.
    Never raises."""
    parts = _split(url)
    if parts is None or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _percent_encoded(found: re.Match[str]) -> str:
    try:
        return quote(found[0], safe="")
    except UnicodeEncodeError:  # a lone surrogate: what it stood for is lost
        return "%EF%BF%BD"


def feed_url(url: str) -> str:
    """The form a feed URL is stored and compared in: surrounding whitespace removed,
    scheme and host lower-cased (case-insensitive, RFC 3986 section 6.2.2.1), the
    scheme's default port dropped (section 6.2.3); path, query and userinfo keep their
    case. Control characters, line breaks and bidirectional formatting characters, which
    an IRI must not hold raw (RFC 3987 section 4.1), are percent-encoded (UTF-8), so
    that no stored URL can reorder or restyle what shows it. A URL that does not split
    is returned stripped.
    """
    text = _UNSHOWABLE.sub(_percent_encoded, url.strip())
    parts = _split(text)
    if parts is None or not parts.netloc:
        return text
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if hostport.startswith("["):  # an IPv6 literal: its hex digits fold too
        host, bracket, port = hostport.lower().partition("]")
        host += bracket
    else:
        host, colon, port = hostport.partition(":")
        host, port = host.lower(), colon + port
    scheme = parts.scheme.lower()
    if port[1:].isdigit():  # no leading zeros: :080 is :80
        port = f":{int(port[1:])}"
    if port in (":", f":{_DEFAULT_PORTS.get(scheme)}"):  # RFC 3986 section 6.2.3
        port = ""
    return urlunsplit(parts._replace(scheme=scheme, netloc=f"{userinfo}{at}{host}{port}"))
