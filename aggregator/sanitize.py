"""Feed HTML -> HTML that is safe to store, show in a page and put in an email.

nh3 (ammonia) does the parsing and the allow-listing; this module decides the policy:
which tags and attributes survive, that every link and image is absolute http(s), that
tracker images go, and how HTML turns into plain text. No network, no writes.
"""

from __future__ import annotations

import html as html_lib
import re
from contextvars import ContextVar

import nh3

from .urls import clean_link

__all__ = ["clean_text", "excerpt", "excerpt_blocks", "html_to_text", "sanitize_html"]

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
    "img": {"src", "alt", "title", "width", "height", "hidden", "style"},
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


def _filter_attribute(element: str, attribute: str, value: str) -> str | None:
    if attribute in _URL_ATTRIBUTES:
        return clean_link(value, _BASE_URL.get())
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


def sanitize_html(html: str, *, base_url: str | None = None) -> str:
    """Safe HTML (THREATS C1, C3, C4) from untrusted feed HTML.

    Relative href/src/cite resolve against ``base_url``; whatever is not absolute
    http(s) afterwards is dropped, and tracking parameters are removed. Links get
    rel="nofollow noopener noreferrer". Tracker images (1x1, 0x0, hidden) and images
    without a usable src are removed. Sanitising the result again changes nothing.
    """
    if not html:
        return ""
    token = _BASE_URL.set(base_url)
    try:
        cleaned = _drop_unwanted_images(_CLEANER.clean(_limit_nesting(html))).strip()
    finally:
        _BASE_URL.reset(token)
    # Removing a tag can leave a tree that parses differently when read again
    # ("<li><form><li>" -> "<li><li></li></li>" -> "<li></li><li></li>"): clean the
    # structure until it is stable, so that sanitising the result changes nothing.
    for _ in range(_MAX_PASSES):
        again = _drop_unwanted_images(_STRUCTURE_CLEANER.clean(cleaned)).strip()
        if again == cleaned:
            break
        cleaned = again
    return cleaned


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
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_WHITESPACE = re.compile(r"[ \t\r\n\f]+")
_BLANK_LINES = re.compile(r"\n(?:[ ]?\n)+")

# C0 and C1 controls except tab and newline, DEL, lone surrogates, non-characters.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
# Bidirectional embeddings, overrides and isolates: they reorder what a reader sees.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_LINE_BREAKS = re.compile("[\r\n\u2028\u2029\x0b\x0c\x85]")


def html_to_text(html: str) -> str:
    """Plain text of an HTML fragment: one line per block, whitespace collapsed."""
    if not html:
        return ""
    if "<" in html or "&" in html:
        markup = _TEXT_CLEANER.clean(_limit_nesting(html))
        # Line breaks in the source are just spaces in HTML; only block tags break lines.
        markup = _CELL_TAG.sub(" ", _WHITESPACE.sub(" ", markup))
        text = html_lib.unescape(_ANY_TAG.sub("\n", markup))
    else:
        text = _WHITESPACE.sub(" ", html)
    text = _BIDI.sub("", _CONTROL.sub("", text))
    text = _HORIZONTAL_SPACE.sub(" ", text)
    lines = (line.strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


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


def clean_text(text: str, *, multiline: bool = False) -> str:
    """A plain-text field fit to store and show: no controls, no bidi tricks.

    Whitespace is collapsed. A single line unless ``multiline`` (then line breaks are
    kept, at most one blank line in a row).
    """
    if not text:
        return ""
    if multiline:
        text = _LINE_BREAKS.sub("\n", text.replace("\r\n", "\n"))
        text = _BIDI.sub("", _CONTROL.sub("", text.replace("\t", " ")))
        lines = [_HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.split("\n")]
        return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    text = _BIDI.sub("", _CONTROL.sub("", _LINE_BREAKS.sub(" ", text)))
    return " ".join(text.split())
