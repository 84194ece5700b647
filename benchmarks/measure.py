"""Run one contender as a child process and measure its whole process tree.

- wall: from spawn to the child's exit;
- CPU: user + system of the child and every descendant. The benchmark process makes
  itself a child subreaper, so descendants that outlive their parent (a forkserver and
  its pool workers, say) are re-parented here and reaped with their resource usage
  instead of vanishing into init;
- memory: the peak, sampled every 50 ms, of the summed proportional set size (PSS) of
  the tree, which counts pages shared between forked workers once; and the largest
  resident set any single process of the tree reached (its VmHWM, also sampled: the
  ru_maxrss of wait4 is no use here, as Linux carries it across exec from the forked
  copy of this process, which holds the whole corpus).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
SAMPLE_SECONDS = 0.05


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class Measured:
    name: str
    returncode: int
    wall: float
    cpu_user: float
    cpu_sys: float
    peak_pss_mb: float
    max_rss_mb: float
    timed_out: bool = False
    report: dict[str, Any] = field(default_factory=dict)  # what the child wrote
    log: str = ""

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_sys

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_measured(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: Path,
    report: Path | None = None,
    timeout: float = 900.0,
) -> Measured:
    """Run ``argv`` to completion (or ``timeout``) and measure it; ``report`` is a JSON
    file the child may write with its own figures."""
    if report is not None:
        report.unlink(missing_ok=True)
    me = os.getpid()
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )
        user = system = 0.0
        max_rss = 0
        peak_pss = 0
        wall = None
        status = 0
        timed_out = False
        deadline = started + timeout
        while True:
            pss, hwm = _tree_memory(me)
            peak_pss = max(peak_pss, pss)
            max_rss = max(max_rss, hwm)
            reaped = _reap_all()
            for pid, code, usage in reaped:
                user += usage.ru_utime
                system += usage.ru_stime
                if pid == proc.pid:
                    wall = time.perf_counter() - started
                    status = code
            if wall is not None and not _has_children():
                break
            if time.perf_counter() > deadline and not timed_out:
                timed_out = True
                _kill_tree(me)
            time.sleep(SAMPLE_SECONDS)
        proc.returncode = status  # reaped above; keeps Popen from waiting again
    found: dict[str, Any] = {}
    if report is not None and report.exists():
        found = json.loads(report.read_text(encoding="utf-8"))
    return Measured(
        name=name,
        returncode=status,
        wall=wall if wall is not None else float("nan"),
        cpu_user=user,
        cpu_sys=system,
        peak_pss_mb=peak_pss / 1e6,
        max_rss_mb=max_rss / 1e6,
        timed_out=timed_out,
        report=found,
        log=str(log),
    )


def _reap_all() -> list[tuple[int, int, Any]]:
    reaped = []
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        code = os.waitstatus_to_exitcode(status)
        reaped.append((pid, code, usage))
    return reaped


def _has_children() -> bool:
    return bool(_descendants(os.getpid()))


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                text = stat.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ")".
        rest = text[text.rfind(b")") + 2 :].split()
        parents[int(entry.name)] = int(rest[1])
    return parents


def _descendants(root: int) -> list[int]:
    parents = _parents()
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _tree_memory(root: int) -> tuple[int, int]:
    """Summed PSS of the tree, and the largest VmHWM in it, in bytes."""
    total = largest = 0
    for pid in _descendants(root):
        total += _pss(pid)
        largest = max(largest, _status_kb(pid, b"VmHWM:") * 1024)
    return total, largest


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _status_kb(pid, b"VmRSS:") * 1024


def _status_kb(pid: int, field: bytes) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _kill_tree(root: int) -> None:
    for pid in _descendants(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
