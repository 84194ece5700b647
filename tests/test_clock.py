"""Only ``aggregator/clock.py`` reads the system time; everything else takes a clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "aggregator"

# Calls that read the wall clock. time.monotonic/perf_counter measure durations and
# are allowed anywhere.
READS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "localtime"),
    ("time", "gmtime"),
}


def clock_reads(source: str) -> list[int]:
    """Line numbers of calls such as ``datetime.now(...)`` or ``time.time()``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and (node.func.value.id, node.func.attr) in READS
        ):
            # time.gmtime(x)/time.localtime(x) convert a given stamp; only the bare
            # call reads the clock.
            if node.func.attr in {"gmtime", "localtime"} and node.args:
                continue
            lines.append(node.lineno)
    return lines


def test_the_detector_finds_each_kind_of_read() -> None:
    source = "datetime.now(UTC)\ntime.time()\ndate.today()\ntime.gmtime(5)\ntime.monotonic()\n"
    assert clock_reads(source) == [1, 2, 3]


@pytest.mark.parametrize(
    "module",
    sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")),
)
def test_only_the_clock_module_reads_the_system_time(module: str) -> None:
    if module == "clock.py":
        return
    found = clock_reads((PACKAGE / module).read_text(encoding="utf-8"))
    assert not found, f"aggregator/{module} reads the system time at lines {found}; take a Clock"
