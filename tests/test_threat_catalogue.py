"""Every case of the threat catalogue has a test named for it (group L: a benchmark).

The catalogue is the repository's copy, ``docs/THREATS.md``. A case id (F1, H10, K7 …)
is covered when a test function in a ``tests/test_*.py`` module carries it in its name
as a word (``test_k1_kill_nine_…``, ``test_…_f1``); for group L (load), a function of a
module under ``benchmarks/``. A mention in a docstring or comment does not count: the
name is what a failing run prints. A missing case fails here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "docs" / "THREATS.md"
CASE = re.compile(r"^- ([A-Z]\d+) ", re.MULTILINE)
GROUPS = ("F", "H", "C", "S", "K", "L")


def case_ids() -> list[str]:
    return CASE.findall(CATALOGUE.read_text(encoding="utf-8"))


def _function_names(path: Path) -> Iterable[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name


@cache
def collected_test_names() -> tuple[str, ...]:
    """Names of the test functions (and test methods) pytest collects under tests/."""
    paths = sorted((ROOT / "tests").glob("test_*.py"))
    return tuple(
        name for path in paths for name in _function_names(path) if name.startswith("test_")
    )


@cache
def benchmark_names() -> tuple[str, ...]:
    paths = sorted((ROOT / "benchmarks").rglob("*.py"))
    return tuple(name for path in paths for name in _function_names(path))


def names_case(name: str, case: str) -> bool:
    """``h1`` in ``test_h1_drip``; never ``H10`` for ``H1``, nor ``sha1`` for ``A1``."""
    return re.search(rf"(?<![A-Za-z0-9]){case}(?![0-9])", name, re.IGNORECASE) is not None


def test_the_catalogue_lists_every_group() -> None:
    ids = case_ids()
    assert len(ids) == len(set(ids)), "an id is listed twice"
    assert {case[0] for case in ids} == set(GROUPS)
    assert len(ids) >= 44


def test_matching_is_exact() -> None:
    assert names_case("test_h1_drip_feed", "H1")
    assert names_case("test_entity_bombs_f1", "F1")
    assert not names_case("test_h10_per_host_limit", "H1")
    assert not names_case("test_uses_sha1_hashes", "A1")
    assert not names_case("test_k10", "K1")


@pytest.mark.parametrize("case", case_ids())
def test_every_threat_case_has_a_test_named_for_it(case: str) -> None:
    if case.startswith("L"):
        names, where = benchmark_names(), "function under benchmarks/"
    else:
        names, where = collected_test_names(), "test function in tests/test_*.py"
    assert any(names_case(name, case) for name in names), (
        f"THREATS {case}: no {where} carries {case.lower()} in its name"
    )
