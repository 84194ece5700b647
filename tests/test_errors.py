"""The error tree: one root, drawn in errors.py's docstring, every error one line."""

from __future__ import annotations

import inspect
import pickle

import pytest

from aggregator import errors
from aggregator.errors import (
    AggregatorError,
    ConfigError,
    FetchStatusError,
    InvalidSubscription,
    NotFound,
    RateLimited,
)

ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, BaseException) and cls.__module__ == errors.__name__
]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_is_in_the_tree_and_drawn(cls: type[BaseException]) -> None:
    assert issubclass(cls, AggregatorError)
    drawn = [line for line in (errors.__doc__ or "").splitlines() if f" {cls.__name__} " in line]
    assert len(drawn) == 1, f"{cls.__name__} is not drawn once in the module docstring"
    parent = cls.__mro__[1]
    if cls is not AggregatorError:
        # Drawn under its parent: the nearest line above at a lower depth names it.
        lines = (errors.__doc__ or "").splitlines()
        at = lines.index(drawn[0])
        depth = drawn[0].index(cls.__name__)
        above = next(line for line in reversed(lines[:at]) if _depth(line) < depth)
        assert f" {parent.__name__} " in above


def _depth(line: str) -> int:
    stripped = line.lstrip(" │├└─")
    return len(line) - len(stripped) if stripped else 1_000


def test_where_and_reason_are_kept_apart() -> None:
    error = ConfigError("must be a number", path="a.toml", key="poll.interval")
    assert str(error) == "a.toml: poll.interval: must be a number"
    assert error.reason == "must be a number" and error.kind == "config"
    visitor = InvalidSubscription("Please enter a valid email address.", field="email", value="x")
    assert str(visitor) == "'x': Please enter a valid email address."
    assert visitor.reason == "Please enter a valid email address."
    assert str(RateLimited("192.0.2.1")).startswith("192.0.2.1: too many requests")
    assert str(NotFound("no subscriber a@b", what="subscriber", key="a@b")) == "no subscriber a@b"


def test_one_line_and_picklable() -> None:
    error = FetchStatusError("bad\n gateway", url="http://x.test/", status=502)
    assert str(error) == "http://x.test/: bad gateway"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is FetchStatusError
    assert (copy.url, copy.status, copy.reason, str(copy)) == (
        error.url,
        502,
        "bad gateway",
        str(error),
    )
