"""Imported by the parse processes' fork server alone, first of its preloaded modules
(``workers.process_pool``): the fork server then ignores SIGTERM, as multiprocessing
already makes it ignore SIGINT.

A stop sent to the whole process group (``systemctl stop`` with systemd's default
``KillMode=control-group``, ``timeout``, ``kill -TERM -PGID``) used to end the fork
server at once; its workers die with it (see ``workers``), so the documents being parsed
were lost to that poll and fetched again at the next. Now the owner decides: it finishes
the work in flight, writes it, and closes the pool, and the fork server ends when the
owner has gone (the end of its "alive" pipe), as before.

Imported anywhere else (a documentation tool, a test that imports every module), it
changes nothing: it acts only in the process multiprocessing started as its fork
server. A process that ignored SIGTERM would pass that on to every program it starts.
"""

from __future__ import annotations

import signal
import sys

FORK_SERVER_COMMAND = "from multiprocessing.forkserver import main"
"""What multiprocessing runs (``python -c …``) to start its fork server (CPython 3.11)."""


def in_fork_server() -> bool:
    """Whether this process is a multiprocessing fork server."""
    return any(FORK_SERVER_COMMAND in arg for arg in sys.orig_argv)


if in_fork_server():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
