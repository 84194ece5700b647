"""Feed HTML -> HTML that is safe to store, show in a page and put in an email.

nh3 (ammonia) does the parsing and the allow-listing; this module decides the policy:
which tags and attributes survive, that every link and image is absolute http(s), that
tracker images go, and how HTML turns into plain text. No network, no writes.

Embedded players (iframe, object, embed, video, audio) never reach a page, but what
they showed does: each becomes a plain link to it (``media.embed_link``: a YouTube,
Vimeo, PeerTube or Dailymotion player links to the video's own page), so a reader
learns there was a video without a third-party frame loading in their browser.
Figures and captions stay; images keep ``alt``, get ``loading="lazy"`` and may keep a
``srcset`` whose every candidate is absolute http(s).
"""

from __future__ import annotations

import html as html_lib
import re
from contextvars import ContextVar
from dataclasses import dataclass

import nh3

from .media import embed_link
from .text import BIDI, CONTROL, clean_text
from .urls import clean_link

__all__ = [
    "SanitizedHtml",
    "embeds_to_links",
    "excerpt",
    "excerpt_blocks",
    "html_to_text",
    "sanitize",
    "sanitize_html",
]

_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del",
        "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "h2", "h3", "h4", "h5",
        "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s",
        "samp", "small", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot",
        "th", "thead", "time", "tr", "u", "ul", "var",
    }
)  # fmt: skip
# Removed together with everything inside them (not just the tag).
_CLEAN_CONTENT_TAGS = frozenset(
    {
        "script", "style", "template", "iframe", "object", "embed", "applet", "noembed",
        "noframes", "noscript", "svg", "math", "select", "textarea", "title", "xmp",
    }
)  # fmt: skip
# "hidden" and "style" on <img> are only read to spot hidden tracker images; an image
# carrying either never reaches the output (see _drop_unwanted_images).
_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "del": {"cite"},
    "ins": {"cite"},
    "img": {"src", "srcset", "alt", "title", "width", "height", "hidden", "style", "loading"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "ol": {"start", "reversed"},
    "time": {"datetime"},
}
_URL_ATTRIBUTES = frozenset({"href", "src", "cite"})
_NUMBER_ATTRIBUTES = frozenset({"width", "height", "colspan", "rowspan", "start"})
_SCOPES = frozenset({"row", "col", "rowgroup", "colgroup"})
_HIDDEN_MARK = "hidden"
_HIDING_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|opacity\s*:\s*0(?:\.0*)?\s*(?:;|$)"
    r"|(?:^|[;\s])(?:max-)?(?:width|height)\s*:\s*[01](?:px)?\s*(?:;|$)",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\s*(\d{1,5})(?:px)?\s*")
_MAX_TEXT_ATTRIBUTE = 1000

# The base URL of the fragment being cleaned; the cleaner is built once and shared.
_BASE_URL: ContextVar[str | None] = ContextVar("sanitize_base_url", default=None)


# One srcset candidate (HTML §4.8.4.3.1): a URL, then at most one "2x" or "480w".
_SRCSET_CANDIDATE = re.compile(r"\s*(\S+)(?:\s+(\d{1,5}w|\d{1,2}(?:\.\d{1,3})?x))?\s*")
_MAX_SRCSET_CANDIDATES = 12


def _clean_srcset(value: str) -> str | None:
    """A srcset whose every candidate is an absolute http(s) URL (resolved against the
    base) with a valid descriptor; None (the attribute dropped) when any is not."""
    candidates = value.split(",")
    if len(candidates) > _MAX_SRCSET_CANDIDATES or len(value) > 4 * _MAX_TEXT_ATTRIBUTE:
        return None
    cleaned = []
    for candidate in candidates:
        match = _SRCSET_CANDIDATE.fullmatch(candidate)
        url = clean_link(match.group(1), _BASE_URL.get()) if match else None
        if match is None or url is None or "," in url:
            return None
        cleaned.append(f"{url} {match.group(2)}" if match.group(2) else url)
    return ", ".join(cleaned)


def _filter_attribute(element: str, attribute: str, value: str) -> str | None:
    if attribute in _URL_ATTRIBUTES:
        return clean_link(value, _BASE_URL.get())
    if attribute == "srcset":
        return _clean_srcset(value)
    if attribute == "loading":
        return "lazy"
    if attribute in _NUMBER_ATTRIBUTES:
        match = _NUMBER.fullmatch(value)
        return match.group(1) if match else None
    if attribute == "hidden":
        return _HIDDEN_MARK
    if attribute == "style":  # only allowed on <img>
        return _HIDDEN_MARK if _HIDING_STYLE.search(value) else None
    if attribute == "scope":
        return value.lower() if value.lower() in _SCOPES else None
    if attribute == "reversed":
        return ""
    if len(value) > _MAX_TEXT_ATTRIBUTE:
        return value[:_MAX_TEXT_ATTRIBUTE]
    return value


_CLEANER = nh3.Cleaner(
    tags=set(_TAGS),
    clean_content_tags=set(_CLEAN_CONTENT_TAGS),
    attributes=_ATTRIBUTES,
    attribute_filter=_filter_attribute,
    set_tag_attribute_values={"img": {"loading": "lazy"}},
    strip_comments=True,
    link_rel="nofollow noopener noreferrer",
    url_schemes={"http", "https"},
)

# Attribute values in the cleaner's output are final (absolute links, plain numbers), so
# passes over it need no filter.
_STRUCTURE_CLEANER = nh3.Cleaner(
    tags=set(_TAGS),
    clean_content_tags=set(_CLEAN_CONTENT_TAGS),
    attributes=_ATTRIBUTES,
    set_tag_attribute_values={"img": {"loading": "lazy"}},
    strip_comments=True,
    link_rel="nofollow noopener noreferrer",
    url_schemes={"http", "https"},
)
_MAX_PASSES = 4

# --- nesting guard ----------------------------------------------------------------------
# html5ever needs time quadratic in the depth of some nestings (<ul><li> …, <div><a> …):
# 20,000 levels take seconds. Tags past a sane depth are dropped before it sees them.
_MAX_DEPTH = 256
_NESTING_CHECK_TAGS = 2000  # fewer tags than this cannot nest deeply enough to matter
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)[^<>]*?(/?)>")
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
     "source", "track", "wbr"}
)  # fmt: skip


def _limit_nesting(html: str) -> str:
    if html.count("<") <= _NESTING_CHECK_TAGS:
        return html
    depth = 0

    def keep_shallow(match: re.Match[str]) -> str:
        nonlocal depth
        closing, name, self_closing = match.groups()
        if self_closing or name.lower() in _VOID:
            return match.group(0)
        if closing:
            level, depth = depth, max(depth - 1, 0)
            return "" if level > _MAX_DEPTH else match.group(0)
        depth += 1
        return match.group(0) if depth <= _MAX_DEPTH else ""

    return _TAG.sub(keep_shallow, html)


# --- images -------------------------------------------------------------------------------
# The cleaner's output is regular: every attribute value is double-quoted and a quote
# inside a value is written as &quot;, so this pattern reads its <img> tags exactly.
_IMG = re.compile(r'<img((?:\s+[^\s="<>]+(?:="[^"]*")?)*)\s*/?>')
_ATTR = re.compile(r'([^\s="<>]+)(?:="([^"]*)")?')


def _unwanted_image(match: re.Match[str]) -> str:
    attributes = dict(_ATTR.findall(match.group(1)))
    if "src" not in attributes or "hidden" in attributes or "style" in attributes:
        return ""
    for dimension in ("width", "height"):
        value = attributes.get(dimension)
        if value is not None and value.isdigit() and int(value) <= 1:
            return ""
    return match.group(0)


def _drop_unwanted_images(html: str) -> str:
    if "<img" not in html:
        return html
    return _IMG.sub(_unwanted_image, html)


# --- embedded players -----------------------------------------------------------------
# Read from the raw HTML before the cleaner removes the elements. Only a link is added
# (its URL escaped, then checked by the cleaner like any other link); the element goes.
_EMBED_HINT = re.compile(r"<(?:iframe|embed|object|video|audio)\b", re.IGNORECASE)
# A start tag ends at the next "<" at the latest (attribute values holding "<" are not
# read): each search stops there, so a scan stays linear however the input is built.
_EMBED_OPEN = re.compile(
    r"<(iframe|embed|object|video|audio)\b((?:[^<>\"']|\"[^\"<]*\"|'[^'<]*')*)>",
    re.IGNORECASE,
)
_EMBED_CLOSE = {
    name: re.compile(rf"</{name}\s*>", re.IGNORECASE)
    for name in ("iframe", "object", "video", "audio")
}
_EMBED_ATTR = re.compile(r"""([A-Za-z_:][-\w:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""")
_INNER_SOURCE = re.compile(r"<(?:source|embed)\b((?:[^<>\"']|\"[^\"<]*\"|'[^'<]*')*)>", re.I)
_INNER_PARAM = re.compile(r"<param\b((?:[^<>\"']|\"[^\"<]*\"|'[^'<]*')*)>", re.IGNORECASE)
_MAX_EMBEDS = 50  # per fragment; past this, embeds just go


def _attributes(markup: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for match in _EMBED_ATTR.finditer(markup):
        name = match.group(1).lower()
        if name not in found:
            value = next((v for v in match.groups()[1:] if v is not None), "")
            found[name] = html_lib.unescape(value)
    return found


def _embed_source(tag: str, attributes: dict[str, str], body: str) -> str | None:
    """The URL an embed shows: src (iframe, embed, video, audio), data (object), else a
    nested <source>/<embed> src or a <param name="movie"|"src"> value."""
    direct = attributes.get("data" if tag == "object" else "src")
    if direct:
        return direct
    for match in _INNER_SOURCE.finditer(body):
        inner = _attributes(match.group(1)).get("src")
        if inner:
            return inner
    if tag == "object":
        for match in _INNER_PARAM.finditer(body):
            param = _attributes(match.group(1))
            if param.get("name", "").lower() in ("movie", "src", "url") and param.get("value"):
                return param["value"]
    return None


def _embed_replacement(tag: str, attributes: dict[str, str], body: str) -> str:
    url = clean_link(_embed_source(tag, attributes, body), _BASE_URL.get())
    if url is None:
        return ""
    link = embed_link(url, kind=tag if tag in ("video", "audio") else "embed")
    return (
        f'<p class="embed"><a href="{html_lib.escape(link.url)}">'
        f"{html_lib.escape(link.label)}</a></p>"
    )


def embeds_to_links(html: str) -> str:
    """Each embedded player (iframe, object, embed, video, audio) replaced by a link to
    what it showed (see ``media.embed_link``), or removed when that is not http(s).

    One scan, linear in the input: an element runs to its closing tag (an unclosed one
    is only its start tag); a second element of the same kind inside it goes with it.
    """
    if _EMBED_HINT.search(html) is None:
        return html
    out: list[str] = []
    position = 0
    unclosed: set[str] = set()  # kinds with no closing tag after the current position
    for _ in range(4 * _MAX_EMBEDS):
        match = _EMBED_OPEN.search(html, position)
        if match is None:
            break
        tag = match.group(1).lower()
        attributes = _attributes(match.group(2))
        end = match.end()
        body = ""
        if tag in _EMBED_CLOSE and tag not in unclosed:
            close = _EMBED_CLOSE[tag].search(html, end)
            if close is None:
                unclosed.add(tag)
            else:
                body, end = html[end : close.start()], close.end()
        out.append(html[position : match.start()])
        if len(out) <= 2 * _MAX_EMBEDS:
            out.append(_embed_replacement(tag, attributes, body))
        position = end
    out.append(html[position:])
    return "".join(out)


def sanitize_html(html: str, *, base_url: str | None = None) -> str:
    """Safe HTML (THREATS C1, C3, C4) from untrusted feed HTML.

    Relative href/src/cite resolve against ``base_url``; whatever is not absolute
    http(s) afterwards is dropped, and tracking parameters are removed. Links get
    rel="nofollow noopener noreferrer". Tracker images (1x1, 0x0, hidden) and images
    without a usable src are removed; the others load lazily. Embedded players become
    links (``embeds_to_links``). Sanitising the result again changes nothing.
    """
    return sanitize(html, base_url=base_url).html


@dataclass(frozen=True, slots=True)
class SanitizedHtml:
    """The result of ``sanitize``: ``html`` is what ``sanitize_html`` returns.

    ``serialised`` is True when the cleaner, given ``html``, writes ``html`` back
    unchanged: then ``html`` is exactly the serialisation of the tree it parses into,
    and ``text()`` reads that tree's text from the markup instead of parsing it again.
    """

    html: str
    serialised: bool

    def text(self) -> str:
        """``html_to_text(self.html)``, with one HTML parse fewer when ``serialised``."""
        if self.serialised and self.html.count("<") <= _NESTING_CHECK_TAGS:
            return _text_of_serialised(self.html)
        return html_to_text(self.html)


def sanitize(html: str, *, base_url: str | None = None) -> SanitizedHtml:
    """``sanitize_html``, with what is known about its output (see ``SanitizedHtml``)."""
    if not html:
        return SanitizedHtml("", serialised=True)
    token = _BASE_URL.set(base_url)
    try:
        raw = embeds_to_links(_limit_nesting(html))
        cleaned = _drop_unwanted_images(_CLEANER.clean(raw))
    finally:
        _BASE_URL.reset(token)
    # Characters are neutralised after each cleaning (so that those written as
    # references, &#x202E;, are caught too), and removing a tag can leave a tree that
    # parses differently when read again ("<li><form><li>" -> "<li><li></li></li>" ->
    # "<li></li><li></li>"): clean until stable, so that sanitising the result again
    # changes nothing.
    cleaned = _neutralise_characters(cleaned).strip()
    serialised = False
    for _ in range(_MAX_PASSES):
        written = _STRUCTURE_CLEANER.clean(cleaned)
        again = _neutralise_characters(_drop_unwanted_images(written)).strip()
        if again == cleaned:
            serialised = written == cleaned
            break
        cleaned = again
    return SanitizedHtml(cleaned, serialised=serialised)


# --- plain text ---------------------------------------------------------------------------
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "caption", "dd", "div", "dl",
        "dt", "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6",
        "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tr",
        "ul",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})
_TEXT_CLEANER = nh3.Cleaner(
    tags=set(_BLOCK_TAGS | _CELL_TAGS),
    clean_content_tags=set(_CLEAN_CONTENT_TAGS),
    attributes={},
    strip_comments=True,
    link_rel=None,
)
_CELL_TAG = re.compile(r"</?t[dh]>")
_ANY_TAG = re.compile(r"<[^>]*>")  # output of _TEXT_CLEANER: bare tags, text escaped
_WHITESPACE = re.compile(r"[ \t\r\n\f]+")


# What XML 1.0 cannot carry at all, escaped or not.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
# In entry HTML: controls (tab, newline and carriage return are whitespace there) and
# the bidi characters go; form feed and the like become a space.
_HTML_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def xml_chars(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot carry (escaping cannot help them).

    Every XML document the product writes (Atom, OPML) passes through this last."""
    return _XML_INVALID.sub("", text)


_NEUTRALISED = re.compile(f"[\x0c{_HTML_CONTROL.pattern[1:-1]}{BIDI.pattern[1:-1]}]")
_CONTROL_OR_BIDI = re.compile(f"[{CONTROL.pattern[1:-1]}{BIDI.pattern[1:-1]}]")


def _neutralise_characters(html: str) -> str:
    """Bidi embeddings, overrides and isolates, and control characters, out of HTML, as
    out of plain-text fields: they would reorder or hide what a reader sees."""
    if _NEUTRALISED.search(html) is None:
        return html  # the common case: one scan instead of three
    return BIDI.sub("", _HTML_CONTROL.sub("", html.replace("\x0c", " ")))


def html_to_text(html: str) -> str:
    """Plain text of an HTML fragment: one line per block, whitespace collapsed."""
    if not html:
        return ""
    # Line breaks in the source are just spaces in HTML; only block tags break lines.
    if "<" in html or "&" in html:
        markup = _CELL_TAG.sub(" ", _source_spaces(_TEXT_CLEANER.clean(_limit_nesting(html))))
        return _lines(html_lib.unescape(_ANY_TAG.sub("\n", markup)))
    return _lines(_source_spaces(html))


def _source_spaces(markup: str) -> str:
    """Line breaks and form feeds as spaces (runs are collapsed later, by ``_lines``)."""
    markup = markup.replace("\n", " ")
    if "\r" in markup:
        markup = markup.replace("\r", " ")
    if "\f" in markup:
        markup = markup.replace("\f", " ")
    return markup


def _lines(text: str) -> str:
    """Controls and bidi characters dropped, then each line with its whitespace collapsed
    (str.split: the same characters as the regular expression ``\\s``), blank lines out."""
    if _CONTROL_OR_BIDI.search(text) is not None:
        text = BIDI.sub("", CONTROL.sub("", text))
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


# Tags as the cleaner writes them: every "<" of the text is escaped (&lt;), and every
# attribute value is double-quoted with its quotes escaped, though it may hold "<" or ">".
# The name ends at a space or ">", so that "<b>" is not read as the start of "<br>".
_SERIALISED_TAG_END = r"""(?=[\s>])(?:[^>"]|"[^"]*")*>"""
_SERIALISED_BLOCK_TAG = re.compile(
    "</?(?:" + "|".join(sorted(_BLOCK_TAGS)) + ")" + _SERIALISED_TAG_END
)
_SERIALISED_CELL_TAG = re.compile("</?t[dh]" + _SERIALISED_TAG_END)
_SERIALISED_TAG = re.compile("</?[A-Za-z][^\\s/>]*" + _SERIALISED_TAG_END)


def _text_of_serialised(html: str) -> str:
    """``html_to_text(html)`` for markup the cleaner writes back unchanged (its own
    output, at most _NESTING_CHECK_TAGS tags): the text cleaner would parse it into the
    same tree and write the same text nodes, with only its block and cell tags left
    (without attributes), so the tags are mapped here as html_to_text maps those."""
    markup = _SERIALISED_CELL_TAG.sub(" ", _source_spaces(html))
    markup = _SERIALISED_TAG.sub("", _SERIALISED_BLOCK_TAG.sub("\n", markup))
    return _lines(html_lib.unescape(markup))


def excerpt(html: str, limit: int = 300) -> str:
    """A one-paragraph plain-text excerpt of at most ``limit`` characters.

    Cut at a word boundary with an ellipsis when the text is longer.
    """
    text = " ".join(html_to_text(html).split())
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-–—") + "…"


_TAG_NAME = re.compile(r"<(/?)([a-z0-9]+)")
_HEADING_TAGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})


def excerpt_blocks(html: str, limit: int = 300, max_blocks: int = 8) -> list[tuple[str, str]]:
    """An excerpt that keeps its shape: ``(kind, text)`` blocks, kind "p", "li" or "h".

    At most ``limit`` characters of text over at most ``max_blocks`` blocks; the last one
    kept is cut at a word boundary with an ellipsis when there was more.
    """
    if not html:
        return []
    if "<" not in html and "&" not in html:
        text = excerpt(html, limit)
        return [("p", text)] if text else []
    markup = _TEXT_CLEANER.clean(_limit_nesting(html))
    markup = _CELL_TAG.sub(" ", _WHITESPACE.sub(" ", markup))
    raw: list[tuple[str, str]] = []
    kind, buffer = "p", []
    for piece in re.split(r"(<[^>]*>)", markup):
        if not piece.startswith("<"):
            buffer.append(piece)
            continue
        text = clean_text(html_lib.unescape("".join(buffer)))
        if text:
            raw.append((kind, text))
        buffer = []
        found = _TAG_NAME.match(piece)
        name, closing = (found[2], found[1] == "/") if found else ("", True)
        if not closing and name == "li":
            kind = "li"
        elif not closing and name in _HEADING_TAGS:
            kind = "h"
        elif closing and (name == "li" or name in _HEADING_TAGS):
            kind = "p"
    text = clean_text(html_lib.unescape("".join(buffer)))
    if text:
        raw.append((kind, text))
    blocks: list[tuple[str, str]] = []
    left = limit
    for index, (kind, text) in enumerate(raw):
        last = len(blocks) + 1 >= max_blocks or index + 1 == len(raw)
        if len(text) > left or (last and index + 1 < len(raw)):
            cut = excerpt(text, max(left, 1)) if len(text) > left else text
            if not cut.endswith("…"):
                cut = cut.rstrip(" ,;:.-–—") + "…"
            blocks.append((kind, cut))
            break
        blocks.append((kind, text))
        left -= len(text)
        if left <= 0:
            break
    return blocks
