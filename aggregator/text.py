"""Plain-text fields made fit to store and show: the character rules, written once.

Feed text may carry control characters, lone surrogates and non-characters (which break
XML, terminals and mail headers) and bidirectional overrides (which reorder what a
reader sees, Unicode TR #9 section 2.2; the "Trojan Source" trick). Parsing cleans
titles and GUIDs with these rules, sanitising cleans excerpts and names with them.
"""

from __future__ import annotations

import re

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
"""C0 and C1 controls except tab and newline, DEL, lone surrogates, non-characters."""
BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
"""Bidirectional embeddings, overrides and isolates (U+202A-202E, U+2066-2069)."""
LINE_BREAKS = re.compile("[\r\n\u2028\u2029\x0b\x0c\x85]")
"""Every character that breaks a line somewhere (CR, LF, LS, PS, VT, FF, NEL)."""
HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
"""A run of whitespace that is not a newline."""
_BLANK_LINES = re.compile(r"\n(?:[ ]?\n)+")
UNSHOWABLE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u202a-\u202e\u2066-\u2069\u2028\u2029]"
)
"""What a one-line record (a log line) must never carry raw: every ``CONTROL``, ``BIDI``
and ``LINE_BREAKS`` character (tab aside)."""


def escaped(text: str) -> str:
    """``text`` with each ``UNSHOWABLE`` character written as its Python escape
    (``\\x1b``, ``\\u202e``): one line that shows what was there, and does nothing to
    the terminal or the file it lands in."""
    return UNSHOWABLE.sub(lambda found: ascii(found[0])[1:-1], text)


def clean_text(text: str, *, multiline: bool = False) -> str:
    """A plain-text field fit to store and show: no controls, no bidi tricks.

    Whitespace is collapsed. A single line unless ``multiline`` (then line breaks are
    kept, at most one blank line in a row).
    """
    if not text:
        return ""
    if multiline:
        text = LINE_BREAKS.sub("\n", text.replace("\r\n", "\n"))
        text = BIDI.sub("", CONTROL.sub("", text.replace("\t", " ")))
        lines = [HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.split("\n")]
        return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    text = BIDI.sub("", CONTROL.sub("", LINE_BREAKS.sub(" ", text)))
    return " ".join(text.split())
