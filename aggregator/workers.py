"""Worker processes for CPU-heavy work, and their lifetime: none outlives its owner.

The pool is a ``ProcessPoolExecutor`` on multiprocessing's fork server (no fork of a
threaded process). Besides the workers, multiprocessing starts two helpers of its own
on first use: the fork server (which forks the workers) and the resource tracker
(which removes named semaphores that a dead process left behind). Each of them has to
end, within a few seconds, whenever the process that owns the pool ends, however it
ends: a normal exit, an unhandled exception, ``kill -9``, the OOM killer.

Three mechanisms make that so, in this order of death:

- The fork server ends when its "alive" pipe reaches end of file: when every copy of
  the write end is closed. multiprocessing hands a copy to every worker it forks (so
  that a worker could start processes of its own), so the fork server lives as long as
  any worker does, and the workers, which wait for work on queues whose both ends they
  hold, live as long as the fork server does: after a ``kill -9`` of the owner neither
  would ever end. Workers close their copy at start; the owner is then the only
  holder, and the fork server ends with it.
- Each worker asks the kernel for SIGKILL when its parent, the (single-threaded) fork
  server, ends (``PR_SET_PDEATHSIG``, Linux). A worker in the middle of a document is
  killed at once; it cannot block the signal.
- Each worker also watches its owner directly, through the sentinel multiprocessing
  hands it (``multiprocessing.parent_process().sentinel``: a pipe whose only write end
  is in the owner), on a daemon thread that ends the process when the owner is gone.
  This covers a fork server that died before the worker set ``PR_SET_PDEATHSIG``, and
  systems without it.

The resource tracker reads its pipe until end of file; the write ends are in the owner
and in the workers, so it cleans up and ends after them.

``PR_SET_PDEATHSIG`` is no answer for the fork server or the resource tracker: the
signal comes when the *thread* that forked a process ends, and the owner starts them
from whichever thread first uses the pool (a helper thread, see ParseWorkers), not when
the owner process ends. Workers cannot start processes through the fork server (they no
longer hold its pipe); nothing here needs them to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, TypeVar

# multiprocessing and the process pool are imported where processes start (5 ms of every
# command's start otherwise): a warm poll, or a small one parsed in-process, starts none.
if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals a service manager, ``timeout`` or Ctrl-C send to ask for a graceful stop."""

_PR_SET_PDEATHSIG = 1  # linux/prctl.h

FORK_SERVER_SIGNALS = "aggregator.forkserver_signals"
"""The module the fork server imports first (see it): it ignores SIGTERM."""


def _release_fork_server() -> None:
    """Close this worker's copy of the write end of the fork server's "alive" pipe, so
    that the fork server sees end of file, and ends, as soon as the owner is gone."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if server is not None and isinstance(alive_fd, int):  # set only in a forked worker
        with contextlib.suppress(OSError):
            os.close(alive_fd)
        server._forkserver_alive_fd = None


def _die_with_parent() -> None:
    """SIGKILL from the kernel when the parent (the fork server) ends. The fork server
    is single-threaded, so "the thread that forked us" is the whole fork server."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _exit_with_owner() -> None:
    """End this process as soon as its owner ends (even if the owner was SIGKILLed)."""
    import multiprocessing
    import multiprocessing.connection

    owner = multiprocessing.parent_process()
    if owner is None:
        return
    sentinel = owner.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(1)  # nobody is left to take a result or to join us

    threading.Thread(target=watch, name="aggregator-owner-watch", daemon=True).start()


def start_worker() -> None:
    """The initializer of every worker process.

    Workers ignore stop signals sent to the whole process group (Ctrl-C, a service
    manager): the owner decides when they end, after its last write. They never outlive
    the owner or the fork server, though (see the module docstring).
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    _release_fork_server()
    _die_with_parent()
    _exit_with_owner()


def process_pool(workers: int, preload: Sequence[str] = ()) -> ProcessPoolExecutor:
    """``workers`` processes started by the fork server, which imports ``preload`` once
    for all of them (after ``FORK_SERVER_SIGNALS``: it ignores a stop signal sent to the
    whole group, and leaves the pool's end to its owner)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([FORK_SERVER_SIGNALS, *preload])
    return ProcessPoolExecutor(
        max_workers=workers or os.cpu_count() or 1,
        mp_context=context,
        initializer=start_worker,
    )


class WorkerDied(Exception):
    """A worker process ended (killed, out of memory, a crash in a library) while it ran
    this piece of work; the next piece of work gets a fresh process."""


class WorkTimedOut(Exception):
    """A piece of work ran past its deadline in a worker process and was stopped there;
    the worker goes on with the next piece of work. ``seconds`` is the deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)  # the only argument: it pickles to the owner as it is
        self.seconds = seconds

    def __str__(self) -> str:
        return f"stopped after {self.seconds:g} s"


class _Deadline(BaseException):
    """Raised inside a worker by the deadline's alarm; a BaseException, so that the work's
    own ``except Exception`` cannot swallow it."""


def _expired(signum: int, frame: object) -> None:
    raise _Deadline


def run_with_deadline(work: Callable[[], T], seconds: float) -> T:
    """Run ``work`` in this (worker) process's main thread, stopping it after ``seconds``
    of wall time: SIGALRM interrupts it between Python steps (``WorkTimedOut``); work
    stuck inside C code, which the alarm cannot interrupt, is ended with its process by
    SIGPROF after twice as many seconds of CPU time (``WorkerDied`` for the owner, and
    the pool is replaced). Linux and other POSIX systems; ``seconds <= 0``: no deadline."""
    if seconds <= 0:
        return work()
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.signal(signal.SIGPROF, signal.SIG_DFL)  # default action: end the process
    signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.setitimer(signal.ITIMER_PROF, 2 * seconds)
    try:
        try:
            return work()
        finally:  # an alarm here, as the work ends, is caught below too
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.setitimer(signal.ITIMER_PROF, 0)
    except _Deadline:
        raise WorkTimedOut(seconds) from None
    finally:
        signal.signal(signal.SIGALRM, previous)


INLINE_DOCUMENT_BYTES = 256 * 1024
"""The largest document parsed in the owner's process (see ParseWorkers): every document
of the benchmark corpus (at most 228 KB; 119 to 183 KB in the 2- and 20-feed one-shot
polls) is under it, while a document built to be slow to parse (deep nesting, a million
unclosed tags: 1.8 MB took 105 s and 441 MB) is over it and costs a worker, not the
poll."""


class ParseWorkers:
    """Where documents are parsed: in this process while the work is small, else in
    worker processes, started on first use, off the event loop, replaced if one dies.

    Spawning a worker waits for the fork server to import the parser (about 0.3 s per
    worker on a small machine), more than parsing a few small documents costs. So the
    first ``inline_bytes`` bytes of documents (``size`` given to ``run``) are parsed
    here, on one helper thread (the event loop stays free), as long as each document
    is at most ``inline_document_bytes`` (``INLINE_DOCUMENT_BYTES``): a bigger one
    (which may be built to be slow to parse) goes to a worker, and so does everything
    after it. The processes start only when the work grows past that: a poll that
    parses nothing (all 304) or a few small documents starts none. ``inline_bytes = 0``
    sends every document to the processes (the long-running service does so: its web
    app shares the event loop).

    Workers start on a helper thread. A worker that dies breaks its pool: the documents
    in flight fail with ``WorkerDied`` and the next one gets a new pool, so one hostile
    document cannot stop a long-running service from parsing. ``deadline`` (seconds, 0:
    none) bounds each piece of work in a worker (see ``run_with_deadline``); the small
    documents parsed in this process have none.
    """

    def __init__(
        self,
        count: int,
        preload: Sequence[str] = (),
        *,
        inline_bytes: int = 0,
        inline_document_bytes: int = INLINE_DOCUMENT_BYTES,
        deadline: float = 0.0,
    ) -> None:
        self.count = count
        self.preload = tuple(preload)
        self.inline_bytes = max(inline_bytes, 0)
        self.inline_document_bytes = max(inline_document_bytes, 0)
        self.deadline = deadline
        self.inline_spent = 0  # bytes parsed (or being parsed) in this process
        self._inline: ThreadPoolExecutor | None = None
        self._ready: asyncio.Future[ProcessPoolExecutor] | None = None
        self._current: ProcessPoolExecutor | None = None
        self._pools: list[ProcessPoolExecutor] = []

    @property
    def started(self) -> bool:
        """Whether worker processes were asked for (they may still be starting)."""
        return bool(self._pools) or self._ready is not None

    def _start(self) -> ProcessPoolExecutor:
        pool = process_pool(self.count, self.preload)
        self._pools.append(pool)
        for future in [pool.submit(os.getpid) for _ in range(self.count)]:
            future.result()
        self._current = pool
        return pool

    async def _pool(self) -> ProcessPoolExecutor:
        from concurrent.futures.process import BrokenProcessPool

        if self._ready is None:
            loop = asyncio.get_running_loop()
            self._ready = asyncio.ensure_future(loop.run_in_executor(None, self._start))
        ready = self._ready
        try:
            return await asyncio.shield(ready)
        except BrokenProcessPool:
            if self._ready is ready:
                self._ready = None
            raise WorkerDied("the worker processes could not start") from None

    def _take_inline(self, size: int) -> bool:
        if self.inline_bytes <= 0 or self._ready is not None:
            return False
        if size > self.inline_document_bytes or self.inline_spent + size > self.inline_bytes:
            return False
        self.inline_spent += size
        return True

    async def run(self, work: Callable[[], T], *, size: int = 0) -> T:
        """Run ``work`` (a picklable callable) and return its result; ``size`` is its
        share of the inline budget (a document's length in bytes). Raises what ``work``
        raises, ``WorkTimedOut`` when it ran past the deadline in a worker, or
        ``WorkerDied`` when its process ended under it."""
        loop = asyncio.get_running_loop()
        if self._take_inline(size):
            if self._inline is None:
                self._inline = ThreadPoolExecutor(1, thread_name_prefix="aggregator-parse")
            return await loop.run_in_executor(self._inline, work)
        from concurrent.futures.process import BrokenProcessPool

        pool = await self._pool()
        try:
            if self.deadline > 0:
                return await loop.run_in_executor(
                    pool, partial(run_with_deadline, work, self.deadline)
                )
            return await loop.run_in_executor(pool, work)
        except BrokenProcessPool:
            if self._current is pool:
                self._current, self._ready = None, None  # the next document starts a new pool
            pool.shutdown(wait=False, cancel_futures=True)
            raise WorkerDied("a worker process ended while running this work") from None

    def close(self) -> None:
        """Wait for the work in flight, then end the helper thread and every process."""
        if self._inline is not None:
            self._inline.shutdown(wait=True)
            self._inline = None
        for pool in self._pools:
            pool.shutdown(wait=True)
        self._pools.clear()


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """While the event loop runs in the main thread, the first SIGTERM or SIGINT calls
    ``stop`` (the owner finishes what it started and ends normally); a second one acts
    as usual (ends the process at once). Elsewhere (a thread, no signal support) it
    does nothing. Must be entered inside a running event loop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    installed: list[int] = []

    def requested() -> None:
        stop()
        while installed:
            loop.remove_signal_handler(installed.pop())

    for signum in STOP_SIGNALS:
        try:
            loop.add_signal_handler(signum, requested)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(signum)
    try:
        yield
    finally:
        while installed:
            loop.remove_signal_handler(installed.pop())
