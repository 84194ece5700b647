"""A real SMTP server (aiosmtpd) on 127.0.0.1 with scripted behaviour, for tests and benchmarks.

    server = SmtpServer().start()
    server.temp_fail.add("busy@example.org")      # RCPT answered 450
    server.perm_fail.add("gone@example.org")      # RCPT answered 550
    server.drop_every = 3                         # close the connection after every 3rd message
    server.drop_before_reply = True               # ... before saying 250 (delivery in doubt)
    server.max_sessions = 1                       # further sessions get 421 at the greeting
    server.stop()                                 # now connections are refused; start() again

Every accepted message is recorded with its envelope; ``messages()`` parses them.
"""

from __future__ import annotations

import asyncio
import email
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True, slots=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    connection: int  # serial number of the SMTP connection that carried it

    def parse(self) -> EmailMessage:
        # SMTP carries CRLF; local line ends make decoded bodies compare as plain text.
        local = self.data.replace(b"\r\n", b"\n")
        message = email.message_from_bytes(local, policy=default_policy)
        assert isinstance(message, EmailMessage)
        return message


class _ScriptedSMTP(SMTP):
    """One connection; can drop itself around the reply to DATA."""

    def __init__(self, handler: Any, *, connection: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.connection = connection
        self.drop: str | None = None  # "before" or "after" the next reply

    async def _handle_client(self) -> None:
        owner = self.event_handler
        if isinstance(owner, SmtpServer) and not owner._admit(self):
            transport = self.transport
            assert isinstance(transport, asyncio.Transport)
            if owner.refuse_with_close:
                transport.abort()
            else:
                transport.write(b"421 4.7.0 Too many sessions from your address\r\n")
                transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        owner = self.event_handler
        if isinstance(owner, SmtpServer):
            owner._leave(self)
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        drop, self.drop = self.drop, None
        transport = self.transport
        assert isinstance(transport, asyncio.Transport)
        if drop == "before":
            transport.abort()
            return
        await super().push(status)
        if drop == "after":
            transport.close()


class _Controller(Controller):
    def __init__(self, owner: SmtpServer, **kwargs: Any) -> None:
        super().__init__(owner, **kwargs)
        self._owner = owner

    def factory(self) -> _ScriptedSMTP:
        connection = self._owner._next_connection()
        return _ScriptedSMTP(self.handler, connection=connection, **self.SMTP_kwargs)


class SmtpServer:
    """Thread-hosted SMTP server; scripted behaviour is changed through its attributes."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        starttls_context: ssl.SSLContext | None = None,
        implicit_tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.port = _free_port()
        self.starttls_context = starttls_context
        self.implicit_tls_context = implicit_tls_context
        self.temp_fail: set[str] = set()
        self.perm_fail: set[str] = set()
        self.drop_every: int | None = None
        self.drop_before_reply = False
        self.reject_data: Callable[[Received], str | None] | None = None  # a reply, or None
        self.pipelining = False  # offer PIPELINING (RFC 2920) in the EHLO reply
        self.rcpt_seen: list[str] = []  # every RCPT address, accepted or not
        # Sessions at once; more are refused at the greeting: 421, or closed at once.
        self.max_sessions: int | None = None
        self.refuse_with_close = False
        self.refused = 0  # sessions refused so far
        self.peak_sessions = 0  # most admitted sessions open at once
        self._sessions: set[int] = set()
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._connections = itertools.count(1)
        self._accepted = 0
        self._controller: _Controller | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> SmtpServer:
        assert self._controller is None, "already running"
        kwargs: dict[str, Any] = {"server_hostname": "smtp.test.localhost"}
        if self.starttls_context is not None:
            kwargs["tls_context"] = self.starttls_context
        if self.implicit_tls_context is not None:
            kwargs["ssl_context"] = self.implicit_tls_context
        controller = _Controller(self, hostname=self.host, port=self.port, **kwargs)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop listening; until the next start() connections to the port are refused."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    # -- what arrived ----------------------------------------------------------------

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def messages(self) -> list[EmailMessage]:
        return [item.parse() for item in self.received()]

    def clear(self) -> None:
        with self._lock:
            self._received.clear()
            self.rcpt_seen.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received()) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.received()

    # -- aiosmtpd handler hooks ------------------------------------------------------

    def _admit(self, server: _ScriptedSMTP) -> bool:
        with self._lock:
            if self.max_sessions is not None and len(self._sessions) >= self.max_sessions:
                self.refused += 1
                return False
            self._sessions.add(server.connection)
            self.peak_sessions = max(self.peak_sessions, len(self._sessions))
            return True

    def _leave(self, server: _ScriptedSMTP) -> None:
        with self._lock:
            self._sessions.discard(server.connection)

    def _next_connection(self) -> int:
        with self._lock:
            return next(self._connections)

    async def handle_EHLO(
        self,
        server: _ScriptedSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:  # aiosmtpd reads pipelined commands one after the other
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_RCPT(
        self,
        server: _ScriptedSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        with self._lock:
            self.rcpt_seen.append(address)
        if address in self.perm_fail:
            return "550 5.1.1 No such user here"
        if address in self.temp_fail:
            return "450 4.2.1 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: _ScriptedSMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        item = Received(
            mail_from=str(envelope.mail_from),
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=data,
            connection=server.connection,
        )
        if self.reject_data is not None:
            reply = self.reject_data(item)
            if reply is not None:
                return reply
        with self._lock:
            self._received.append(item)
            self._accepted += 1
            drop = self.drop_every is not None and self._accepted % self.drop_every == 0
        if drop:
            server.drop = "before" if self.drop_before_reply else "after"
        return "250 2.0.0 Accepted"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
