"""Every public name in ``aggregator/`` carries a docstring with its contract.

Public names: module-level functions and classes not starting with ``_``, module-level
constants with UPPER_CASE names, and the public methods and properties of public
classes. A function, class or method is documented when ``inspect.getdoc`` finds a
docstring (an override inherits its base's). A constant is documented by a string
right after it (an attribute docstring) or by a ``#`` comment on its line or on the
lines right above it.

Run this file as a script to list the gaps: ``.venv/bin/python tests/test_docstrings.py``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import sys
from functools import cache
from pathlib import Path

import pytest

import aggregator

PACKAGE = Path(aggregator.__file__).resolve().parent
CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")


def module_names() -> list[str]:
    """Every module of the package, by dotted name (``aggregator.store.feeds``)."""
    found = [aggregator.__name__]
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="aggregator."):
        if not info.name.endswith(".__main__"):  # importing it runs the command line
            found.append(info.name)
    return sorted(found)


def _public(name: str) -> bool:
    return not name.startswith("_")


def _constant_gaps(module_name: str, path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    body = ast.parse(source).body
    gaps = []
    for index, node in enumerate(body):
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        else:
            continue
        names = [name for name in targets if CONSTANT.fullmatch(name)]
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "TypeVar":
            continue  # a type variable, not a constant
        if not names:
            continue
        following = body[index + 1] if index + 1 < len(body) else None
        has_docstring = (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        )
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        commented = "#" in lines[first] or any("#" in line for line in lines[first : last + 1])
        above = first - 1
        while above >= 0 and lines[above].lstrip().startswith("@"):
            above -= 1
        commented = commented or (above >= 0 and lines[above].lstrip().startswith("#"))
        if not (has_docstring or commented):
            gaps.extend(f"{module_name}.{name}" for name in names)
    return gaps


def _own_class_doc(cls: type) -> bool:
    """Whether the class was given a docstring: not inherited, nor the signature that
    ``dataclasses`` writes (``Name(field: type, ...)``), nor Enum's placeholder."""
    doc = (cls.__dict__.get("__doc__") or "").strip()
    return bool(doc) and not doc.startswith(f"{cls.__name__}(") and doc != "An enumeration."


@cache
def gaps_in(module_name: str) -> tuple[str, ...]:
    """Public names of one module that have no docstring, as dotted names."""
    module = importlib.import_module(module_name)
    gaps = []
    for name, value in vars(module).items():
        if not _public(name) or getattr(value, "__module__", None) != module_name:
            continue
        if inspect.isfunction(value) and not inspect.getdoc(value):
            gaps.append(f"{module_name}.{name}")
        elif inspect.isclass(value):
            if not _own_class_doc(value):
                gaps.append(f"{module_name}.{name}")
            for member_name, member in vars(value).items():
                if not _public(member_name):
                    continue
                if isinstance(member, staticmethod | classmethod):
                    member = member.__func__
                if not (inspect.isfunction(member) or isinstance(member, property)):
                    continue
                if not inspect.getdoc(getattr(value, member_name)):
                    gaps.append(f"{module_name}.{name}.{member_name}")
    path = Path(module.__file__ or "")
    if path.suffix == ".py":
        gaps.extend(_constant_gaps(module_name, path))
    return tuple(gaps)


@pytest.mark.parametrize("module_name", module_names())
def test_public_names_have_docstrings(module_name: str) -> None:
    gaps = gaps_in(module_name)
    assert not gaps, f"{len(gaps)} public names without a docstring: " + ", ".join(gaps)


def test_the_checker_sees_a_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docless.py").write_text(
        '"""A module."""\n\nfrom dataclasses import dataclass\n\n'
        "LIMIT = 3\n\n"
        "# Seconds.\n"
        "TIMEOUT = 5.0\n\n"
        'SIZE = 10\n"""Bytes."""\n\n'
        "def helper() -> None:\n    pass\n\n"
        "@dataclass\nclass Point:\n    x: int\n\n"
        "class Thing:\n"
        '    """A thing."""\n\n'
        "    def act(self) -> None:\n        pass\n\n"
        "    def __repr__(self) -> str:\n        return 'Thing'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert set(gaps_in("docless")) == {
        "docless.LIMIT",
        "docless.helper",
        "docless.Point",
        "docless.Thing.act",
    }


if __name__ == "__main__":
    total = 0
    for name in module_names():
        found = gaps_in(name)
        total += len(found)
        for gap in found:
            print(gap)
    print(f"{total} public names without a docstring", file=sys.stderr)
