"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from feedserver import FeedServer
from smtpserver import SmtpServer


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    """A scriptable HTTP server on 127.0.0.1 (see tests/feedserver.py), stopped afterwards."""
    server = FeedServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A scriptable SMTP server on 127.0.0.1 (see tests/smtpserver.py), stopped afterwards."""
    server = SmtpServer().start()
    try:
        yield server
    finally:
        server.stop()
