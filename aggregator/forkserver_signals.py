"""Imported by the parse processes' fork server alone, first of its preloaded modules
(``workers.process_pool``): the fork server then ignores SIGTERM, as multiprocessing
already makes it ignore SIGINT.

A stop sent to the whole process group (``systemctl stop`` with systemd's default
``KillMode=control-group``, ``timeout``, ``kill -TERM -PGID``) used to end the fork
server at once; its workers die with it (see ``workers``), so the documents being parsed
were lost to that poll and fetched again at the next. Now the owner decides: it finishes
the work in flight, writes it, and closes the pool, and the fork server ends when the
owner has gone (the end of its "alive" pipe), as before. Importing this module anywhere
else would change that process's signal handling: nothing else imports it.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
