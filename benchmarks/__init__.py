"""Benchmarks: ``python -m benchmarks`` runs every benchmark module present.

Each benchmark module exposes ``main(argv: list[str]) -> int``. Generated data, results
and the separate environment for competing tools live under ``benchmarks/.work/`` and
``benchmarks/.venv-compare/`` (both ignored by git).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
WORK = ROOT / ".work"
REPO = ROOT.parent
