"""The product uses httpx and httpcore through their public API only.

Their private modules and attributes change between releases (httpx 0.28 moved the
connection pool that an earlier address guard replaced), so nothing in ``aggregator/``
or ``benchmarks/`` may import a private name of theirs, read one off them, or subclass
one of their concrete classes (and so reach into its private state): the extension
points they document are the only base classes allowed. ``ruff``'s banned-api list
(pyproject.toml) catches the private modules in ``make check``; this test catches every
other private name too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import httpcore
import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
GUARDED = {"httpx": httpx, "httpcore": httpcore}
# Documented extension points: a transport, a body stream, a network backend and stream.
EXTENSION_POINTS = {
    httpx.AsyncBaseTransport,
    httpx.BaseTransport,
    httpx.AsyncByteStream,
    httpx.SyncByteStream,
    httpx.Auth,
    httpcore.AsyncNetworkBackend,
    httpcore.AsyncNetworkStream,
    httpcore.NetworkBackend,
    httpcore.NetworkStream,
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def offences(source: str) -> list[str]:
    """Each use of a private httpx/httpcore name in ``source``, as 'line: what'."""
    found: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, *rest = alias.name.split(".")
                if top in GUARDED and any(_private(part) for part in rest):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            top, *rest = node.module.split(".")
            if top in GUARDED and (
                any(_private(part) for part in rest)
                or any(_private(alias.name) for alias in node.names)
            ):
                names = ", ".join(alias.name for alias in node.names)
                found.append(f"{node.lineno}: from {node.module} import {names}")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in GUARDED
            and _private(node.attr)
        ):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                if not (
                    isinstance(base, ast.Attribute)
                    and isinstance(base.value, ast.Name)
                    and base.value.id in GUARDED
                ):
                    continue
                cls = getattr(GUARDED[base.value.id], base.attr, None)
                allowed = isinstance(cls, type) and (
                    cls in EXTENSION_POINTS or issubclass(cls, BaseException)
                )
                if not allowed:
                    found.append(
                        f"{node.lineno}: class {node.name} subclasses {base.value.id}.{base.attr}"
                    )
    return found


def _modules() -> list[Path]:
    return sorted([*(ROOT / "aggregator").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_httpx_or_httpcore_name(path: Path) -> None:
    assert offences(path.read_text(encoding="utf-8")) == []


def test_the_check_sees_each_kind_of_private_use() -> None:
    source = (
        "import httpx._transports.default\n"
        "from httpcore._async import connection_pool\n"
        "from httpx import _main\n"
        "import httpx\n"
        "pool = httpx._config\n"
        "class Transport(httpx.AsyncHTTPTransport):\n"
        "    pass\n"
        "class Fine(httpx.AsyncBaseTransport, httpx.ConnectError):\n"
        "    pass\n"
    )
    assert sorted(int(line.split(":")[0]) for line in offences(source)) == [1, 2, 3, 5, 6]
