"""One sending run at a time across processes: a named lease in the database.

The lease row (``store.digests``) names its holder as ``host:pid:nonce`` and expires
after ``LEASE_LENGTH`` unless renewed. A holder on this host whose process is gone is
taken over at once instead of waiting for the expiry.
"""

from __future__ import annotations

import os
import secrets as random_source
import socket
import time
from datetime import timedelta

from ..clock import Clock
from ..store import Store
from ..store import digests as digest_rows

LEASE_NAME = "digest-send"
"""The lease's row name: every sending run takes the same one."""
LEASE_LENGTH = timedelta(minutes=2)
"""How long a taken (or renewed) lease lasts without renewal."""
LEASE_RENEW_SECONDS = 20.0
"""How often, in seconds, a holder renews the lease while it works (``keep``)."""


class SendLease:
    """The sending lease, held by this process while a run lasts.

    ``clock`` gives the aware UTC time written into the lease row; renewal intervals
    are measured with the monotonic clock.
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{random_source.token_hex(4)}"
        self._renewed = 0.0

    def take(self) -> bool:
        """Take (or renew) the lease; False when another live run holds it."""
        now = self.clock()
        with self.store.write() as db:
            if digest_rows.take_lease(db, LEASE_NAME, self.owner, now, now + LEASE_LENGTH):
                self._renewed = time.monotonic()
                return True
            holder = digest_rows.lease_owner(db, LEASE_NAME)
            if holder and self._dead(holder):
                digest_rows.hand_over_lease(db, LEASE_NAME, self.owner, now + LEASE_LENGTH)
                self._renewed = time.monotonic()
                return True
        return False

    def _dead(self, owner: str) -> bool:
        """Whether ``owner`` names a process on this host that no longer exists."""
        host, _, rest = owner.partition(":")
        pid_text = rest.partition(":")[0]
        if host != self.host or not pid_text.isdigit():
            return False
        try:
            os.kill(int(pid_text), 0)  # signal 0: a liveness check, nothing is sent
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def keep(self) -> bool:
        """Renew the lease when ``LEASE_RENEW_SECONDS`` have passed; False when it was
        lost to another run meanwhile."""
        if time.monotonic() - self._renewed < LEASE_RENEW_SECONDS:
            return True
        return self.take()

    def release(self) -> None:
        """Give the lease up (a no-op when another run holds it)."""
        with self.store.write() as db:
            digest_rows.release_lease(db, LEASE_NAME, self.owner)
