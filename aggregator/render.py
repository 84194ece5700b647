"""The one Jinja2 environment, for web pages, Atom feeds and emails alike.

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
from .sanitize import excerpt, sanitize_html

TEMPLATES = resource_dir("templates")


def clean_html(html: str | None) -> Markup:
    return Markup(sanitize_html(html or ""))  # noqa: S704 - sanitiser output, by definition


def format_date(moment: datetime | None, pattern: str = "%-d %B %Y") -> str:
    return moment.strftime(pattern) if moment else ""


def iso_date(moment: datetime | None) -> str:
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
    )
    if filters:
        environment.filters.update(filters)
    if globals:
        environment.globals.update(globals)
    return environment
