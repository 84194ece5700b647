"""The ``[fetch]`` settings: what the fetcher may do, read by the configuration.

Kept apart from ``fetch`` so that reading the configuration does not import the HTTP
stack (httpx, httpcore, h2, asyncio): most commands fetch nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import USER_AGENT


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """Limits and choices of the fetcher (the ``[fetch]`` table of the configuration).

    Times are in seconds, sizes in bytes. ``connect_timeout``, ``read_timeout``: per
    phase of one request (httpx's timeouts); ``total_timeout``: deadline of the whole
    fetch, redirects and body included (a server dripping a byte at a time trips no
    per-phase timeout). ``max_body_bytes``: after decompression. ``max_connections``:
    requests in flight at once overall. ``max_per_host``: the most requests in flight to
    one host at once over HTTP/1.1 (each its own connection); a host that answers over
    HTTP/2 carries them as streams of one connection, up to ``max_connections``. Each
    host starts at ``PER_HOST_START`` and moves between 1 and its ceiling as it answers
    (see ``HostGate``).
    ``http2``: speak HTTP/2 to TLS servers that offer it (ALPN). ``ca_file``: a PEM file
    of certificate authorities trusted beside the default bundle.
    ``allow_private_addresses``: lift the THREATS H4 guard (feeds on your own network).
    """

    user_agent: str = USER_AGENT
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    total_timeout: float = 60.0
    max_body_bytes: int = 16 * 1024 * 1024
    max_redirects: int = 5
    max_connections: int = 32
    max_per_host: int = 16
    http2: bool = True
    ca_file: str | None = None
    allow_private_addresses: bool = False
    allow_file_urls: bool = False
