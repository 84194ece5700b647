"""Slowing down, then refusing, repeated failed attempts (admin password guessing).

Pure bookkeeping: the caller passes ``now`` and says what happened; nothing here sleeps
or reads a clock. Per client, the first few failures in a window cost nothing, the next
ones make the client wait, doubling each time, and past a ceiling every attempt is
refused until the window has passed. Over all clients together a second ceiling stops
a guesser that rotates addresses. While a client must wait, its attempt is not even
checked: a right password sent during the wait is refused like a wrong one, so guessing
faster gains nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

# Clients remembered at once: past this, idle ones are forgotten, then the oldest half
# (memory stays bounded under a spray of addresses).
MAX_TRACKED_CLIENTS = 10_000


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """Limits on failed attempts (admin logins) over a sliding window: a few free failures
    per client, then waits that double from ``first_wait``, then refusal until the window
    has passed; and a cap over all clients together.
    """

    window: timedelta = timedelta(minutes=15)
    free_failures: int = 5  # per client and window, before any wait
    first_wait: timedelta = timedelta(seconds=1)  # then 2 s, 4 s, ... up to the window
    max_failures: int = 20  # per client and window: refused until the window has passed
    max_failures_overall: int = 200  # all clients together, per window


class FailureThrottle:
    """Failed attempts by client over a sliding window; one per protected door."""

    def __init__(self, policy: ThrottlePolicy | None = None) -> None:
        self.policy = policy or ThrottlePolicy()
        self._clients: dict[str, deque[datetime]] = {}
        self._overall: deque[datetime] = deque(maxlen=self.policy.max_failures_overall)
        self.failures_total = 0
        self.refused_total = 0

    def wait(self, client: str, now: datetime) -> timedelta | None:
        """How long ``client`` must wait before an attempt is considered, or None.

        A refusal is counted (``refused_total``)."""
        policy = self.policy
        waits: list[timedelta] = []
        overall = self._prune(self._overall, now)
        if len(overall) >= policy.max_failures_overall:
            waits.append(overall[0] + policy.window - now)
        failures = self._clients.get(client)
        if failures:
            self._prune(failures, now)
            count = len(failures)
            if count >= policy.max_failures:
                waits.append(failures[0] + policy.window - now)
            elif count >= policy.free_failures:
                backoff = min(
                    policy.first_wait * 2 ** (count - policy.free_failures), policy.window
                )
                waits.append(failures[-1] + backoff - now)
        longest = max(waits, default=None)
        if longest is None or longest <= timedelta(0):
            return None
        self.refused_total += 1
        return longest

    def failed(self, client: str, now: datetime) -> int:
        """Record a failed attempt; the client's failures in the window, this one included."""
        self.failures_total += 1
        self._overall.append(now)
        failures = self._clients.get(client)
        if failures is None:
            if len(self._clients) >= MAX_TRACKED_CLIENTS:
                self._forget_idle(now)
            failures = self._clients[client] = deque(maxlen=self.policy.max_failures)
        failures.append(now)
        return len(failures)

    def succeeded(self, client: str) -> None:
        """Forget the client's failures: it proved it knows the secret."""
        self._clients.pop(client, None)

    def _prune(self, times: deque[datetime], now: datetime) -> deque[datetime]:
        while times and times[0] <= now - self.policy.window:
            times.popleft()
        return times

    def _forget_idle(self, now: datetime) -> None:
        for client in [c for c, times in self._clients.items() if not self._prune(times, now)]:
            del self._clients[client]
        if len(self._clients) >= MAX_TRACKED_CLIENTS:  # all recent: forget the oldest half
            by_age = sorted(self._clients, key=lambda c: self._clients[c][-1])
            for client in by_age[: len(by_age) // 2]:
                del self._clients[client]
