"""Long value lists for ``IN (...)`` clauses, split into chunks of a fixed size."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T", int, str)
"""The values chunked: row ids or text keys."""

CHUNK = 400
"""Values per query. SQLite's default limit on host parameters (32766) is far above
this; chunks keep each statement and its plan small."""


def chunks(values: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    """The distinct ``values``, sorted, in lists of at most ``size`` (none when empty)."""
    unique = sorted(set(values))
    for start in range(0, len(unique), size):
        yield unique[start : start + size]
