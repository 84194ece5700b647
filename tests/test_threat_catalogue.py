"""Every case of the threat catalogue is named by a test (or, for group L, a benchmark).

The catalogue is ``../shared/THREATS.md`` beside the repository when it is there, else the
copy in ``docs/THREATS.md``. A case id (F1, H10, K7 …) counts as covered when it appears
in the name or docstring of a test module, class or function under ``tests/`` (group L:
in a benchmark module, or in ``benchmarks/README.md``). A missing case fails here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CATALOGUES = (ROOT.parent / "shared" / "THREATS.md", ROOT / "docs" / "THREATS.md")
CASE = re.compile(r"^- ([A-Z]\d+) ", re.MULTILINE)
GROUPS = ("F", "H", "C", "S", "K", "L")


def catalogue() -> Path:
    return next(path for path in CATALOGUES if path.is_file())


def case_ids() -> list[str]:
    return CASE.findall(catalogue().read_text(encoding="utf-8"))


def _python_files(folder: Path) -> Iterable[Path]:
    for path in sorted(folder.rglob("*.py")):
        if not any(part.startswith(".") for part in path.relative_to(folder).parts):
            yield path


def _names_and_docstrings(path: Path) -> Iterable[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if not isinstance(node, ast.Module):
                yield node.name
            docstring = ast.get_docstring(node)
            if docstring:
                yield docstring


@cache
def texts(folder: str) -> tuple[str, ...]:
    base = ROOT / folder
    found = [text for path in _python_files(base) for text in _names_and_docstrings(path)]
    if folder == "benchmarks" and (base / "README.md").is_file():
        found.append((base / "README.md").read_text(encoding="utf-8"))
    return tuple(found)


def names_case(text: str, case: str) -> bool:
    """``h1`` in ``test_h1_drip`` or ``H1`` in a docstring; never ``H10`` for ``H1``."""
    return re.search(rf"(?<![A-Za-z0-9]){case}(?![0-9])", text, re.IGNORECASE) is not None


def test_the_catalogue_lists_every_group() -> None:
    ids = case_ids()
    assert len(ids) == len(set(ids)), "an id is listed twice"
    assert {case[0] for case in ids} == set(GROUPS)
    assert len(ids) >= 44


def test_matching_is_exact() -> None:
    assert names_case("test_h1_drip_feed", "H1")
    assert names_case("Kill -9 mid-write (THREATS K1).", "K1")
    assert not names_case("test_h10_per_host_limit", "H1")
    assert not names_case("uses sha1 hashes", "A1")
    assert not names_case("test_k10", "K1")


@pytest.mark.parametrize("case", case_ids())
def test_every_threat_case_is_named_by_a_test(case: str) -> None:
    folder = "benchmarks" if case.startswith("L") else "tests"
    assert any(names_case(text, case) for text in texts(folder)), (
        f"THREATS {case} is named by no test name or docstring under {folder}/"
    )
