"""The public URL layout: the path of each page that mail links to, by route name.

The web app declares these routes with these paths (``PATHS[name]``), and mail, which
has no request to ask, builds its links with ``public_path``; so each path is written
once. Templates build links from route names with ``url_for`` (see ``web.pages``).
Path templates use Starlette's syntax: ``{name}`` or ``{name:convertor}``.
"""

from __future__ import annotations

import re
from urllib.parse import quote

PATHS: dict[str, str] = {
    "timeline": "/",
    "entry": "/entries/{entry_id:id}",
    "subscribe": "/subscribe",
    "confirm": "/subscribe/confirm",
    "preferences": "/preferences",
    "unsubscribe": "/unsubscribe",
    "digest_archive": "/digests",
    "digest_archive_feed": "/digests/feed.atom",
    "digest": "/digests/{digest_id:id}",
}
"""Route name -> path template, for every page a mail links to."""

_PARAMETER = re.compile(r"\{(\w+)(?::\w+)?\}")


def public_path(name: str, **params: int | str) -> str:
    """The root-relative path of route ``name`` with ``params`` filled in (each one
    percent-encoded as one path segment): ``public_path("digest", digest_id=7)`` is
    ``"/digests/7"``. ``KeyError`` for an unknown route or a missing parameter."""
    return _PARAMETER.sub(lambda match: quote(str(params[match[1]]), safe=""), PATHS[name])
