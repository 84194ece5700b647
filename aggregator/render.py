"""The one Jinja2 environment, for web pages, Atom feeds and emails alike; CSS
inlining for mail; one-line display text.

``environment()`` is the process's environment (built on first use); the web app
takes it injected (``create_app(env=...)``) and mail rendering uses it directly.

HTML and XML templates autoescape. Plain-text templates (``*.txt``: text emails) do
not, because their output is not markup; what they print is plain text already.
Feed HTML reaches a page only through the ``clean_html`` filter, which runs the
sanitiser (idempotent) and marks the result safe: templates never use ``|safe``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from .media import format_duration, format_size, media_label, media_marker
from .resources import resource_dir
from .sanitize import excerpt, sanitize_html, xml_chars
from .text import clean_text
from .urls import iri_reference, is_http_url

TEMPLATES = resource_dir("templates")
"""The templates' directory (``templates/`` in the repository, inside the wheel)."""
MAX_SHOWN_TITLE_CHARS = 300
"""Longest title shown in a digest or mail, in characters. (Identity, in ``dedup``,
reads a longer start of a title; this one is about what fits on a line.)"""


def line(text: str | None, limit: int = MAX_SHOWN_TITLE_CHARS) -> str:
    """One line of plain text, no controls or bidi overrides, at most ``limit`` chars
    (a longer one is cut and ends in "…")."""
    cleaned = clean_text(text or "")
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


def clean_html(html: str | None) -> Markup:
    """Feed HTML, sanitised and marked safe: the ``clean_html`` filter."""
    return Markup(sanitize_html(html or ""))  # noqa: S704 - sanitiser output, by definition


def xml_safe(value: str) -> str:
    """Drops the characters XML 1.0 cannot carry at all (escaping cannot help them);
    keeps ``Markup`` as ``Markup``. The ``xml_safe`` filter of the Atom templates."""
    cleaned = xml_chars(value)
    return Markup(cleaned) if isinstance(value, Markup) else cleaned  # noqa: S704 - same input


def format_date(moment: datetime | None, pattern: str = "%-d %B %Y") -> str:
    """``moment`` with a strftime ``pattern`` ("3 May 2026"); empty for None."""
    return moment.strftime(pattern) if moment else ""


def iso_date(moment: datetime | None) -> str:
    """``moment`` (UTC) as RFC 3339 with a "Z" ("2026-05-03T07:00:00Z"); empty for None."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


def zone_words(zone: Any) -> str:
    """ "Berlin time" for Europe/Berlin, "UTC" for UTC: how people name a time zone."""
    name = str(getattr(zone, "key", None) or zone)
    if name.upper() in ("UTC", "ETC/UTC", "GMT", "Z"):
        return "UTC"
    return name.rsplit("/", 1)[-1].replace("_", " ") + " time"


def schedule(cadence: str, digest: Any) -> str:
    """When a cadence's digest comes, in words: "Daily, at 07:00 Berlin time"."""
    at = f"{digest.daily_at} {zone_words(digest.timezone)}"
    if cadence == "daily":
        return f"Daily, at {at}"
    return f"Weekly, on {str(digest.weekly_day).capitalize()}s at {at}"


def make_environment(
    template_dir: Path = TEMPLATES,
    *,
    globals: Mapping[str, Any] | None = None,
    filters: Mapping[str, Callable[..., Any]] | None = None,
) -> Environment:
    """A new environment on ``template_dir`` with this module's filters (plus
    ``filters`` and ``globals``). Most callers want the shared ``environment()``;
    a new one is for tests and other template directories."""
    environment = Environment(
        loader=FileSystemLoader(str(template_dir)),
        autoescape=select_autoescape(
            enabled_extensions=("html", "htm", "xml", "atom", "opml"),
            disabled_extensions=("txt",),
            default_for_string=True,
            default=True,
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(
        clean_html=clean_html,
        excerpt=excerpt,
        format_date=format_date,
        iso_date=iso_date,
        media_label=media_label,
        media_marker=media_marker,
        file_size=format_size,
        duration=format_duration,
        schedule=schedule,
        xml_safe=xml_safe,
        http_url=is_http_url,
        iri=iri_reference,
    )
    if filters:
        environment.filters.update(filters)
    if globals:
        environment.globals.update(globals)
    return environment


_ENVIRONMENT: Environment | None = None


def environment() -> Environment:
    """The process's one environment (on ``TEMPLATES``), built on first use.

    Jinja2 environments are safe to share between threads once built; nothing adds
    filters or globals to this one afterwards.
    """
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        _ENVIRONMENT = make_environment()
    return _ENVIRONMENT


def inline_css(html: str) -> str:
    """``html`` with its ``<style>`` rules moved into ``style`` attributes, as mail
    clients need; remote stylesheets are never fetched."""
    import css_inline  # imported here: only mail building needs it

    inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False)
    return str(inliner.inline(html))
