"""The tools a user would pick instead, in an environment of their own.

``ensure_env()`` creates ``benchmarks/.venv-compare`` on first use (a venv of the same
Python, with PyPI ``reader`` and ``rss2email``), so they never touch our environment.

This file also runs as a script with that environment's Python, one contender per
process; it imports nothing from our package (the standard library and the tool only):

    .venv-compare/bin/python compare_env.py reader-setup --urls U --db D
    .venv-compare/bin/python compare_env.py reader-update --db D --workers N --out R
    .venv-compare/bin/python compare_env.py r2e-setup --urls U --config C --data D
    .venv-compare/bin/python compare_env.py r2e-run --config C --data D --out R

Each writes a JSON report with the wall time of its measured phase.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# reader's vendored feedparser imports ``sgmllib``, which feedparser itself no longer
# pulls in (it moved to feedparser-sgmllib): sgmllib3k supplies it.
PACKAGES = ("reader", "rss2email", "sgmllib3k")
REPORTED = ("reader", "rss2email", "feedparser")
MARKER = "installed.json"


def env_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_env(venv: Path, base_python: str, *, timeout: float = 600.0) -> str | None:
    """Create the environment if needed. None when ready, else why it cannot be."""
    marker = venv / MARKER
    if marker.exists() and env_python(venv).exists():
        return None
    try:
        if not env_python(venv).exists():
            subprocess.run(
                [base_python, "-m", "venv", str(venv)],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
        subprocess.run(
            [str(env_python(venv)), "-m", "pip", "install", "--quiet", *PACKAGES],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        versions = subprocess.run(
            [
                str(env_python(venv)),
                "-c",
                "import json, importlib.metadata as m; "
                f"print(json.dumps({{p: m.version(p) for p in {list(REPORTED)!r}}}))",
            ],
            check=True,
            capture_output=True,
            timeout=60,
            text=True,
        ).stdout
    except subprocess.CalledProcessError as error:
        tail = (error.stderr or b"")[-400:]
        text = tail.decode("utf-8", "replace") if isinstance(tail, bytes) else str(tail)
        return f"cannot create {venv}: {' '.join(map(str, error.cmd))} failed: {text.strip()}"
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot create {venv}: {error}"
    marker.write_text(versions, encoding="utf-8")
    return None


def installed_versions(venv: Path) -> dict[str, str]:
    try:
        found: dict[str, str] = json.loads((venv / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found


# --- run inside the comparison environment ------------------------------------------


def _urls(path: str) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _write(path: str, report: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(report, indent=1), encoding="utf-8")


def reader_setup(args: argparse.Namespace) -> int:
    make_reader = importlib.import_module("reader").make_reader

    for suffix in ("", "-wal", "-shm"):
        Path(args.db + suffix).unlink(missing_ok=True)
    reader = make_reader(args.db)
    for url in _urls(args.urls):
        reader.add_feed(url)
    reader.close()
    return 0


def reader_update(args: argparse.Namespace) -> int:
    make_reader = importlib.import_module("reader").make_reader

    reader = make_reader(args.db)
    started = time.perf_counter()
    reader.update_feeds(workers=args.workers, scheduled=False)
    phase = time.perf_counter() - started
    counts = reader.get_entry_counts()
    errors = sum(1 for feed in reader.get_feeds() if feed.last_exception)
    reader.close()
    _write(
        args.out,
        {"phase_wall": phase, "entries_stored": counts.total, "feed_errors": errors},
    )
    return 0


def r2e_setup(args: argparse.Namespace) -> int:
    lines = [
        "[DEFAULT]",
        "from = bench@example.invalid",
        "to = bench@example.invalid",
        "",
    ]
    for index, url in enumerate(_urls(args.urls)):
        lines += [f"[feed.f{index:05d}]", f"url = {url}", ""]
    Path(args.config).write_text("\n".join(lines), encoding="utf-8")
    Path(args.data).unlink(missing_ok=True)
    return 0


def r2e_run(args: argparse.Namespace) -> int:
    run = importlib.import_module("rss2email.main").run

    started = time.perf_counter()
    try:
        run(["-c", args.config, "-d", args.data, "run", "--no-send"])
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    phase = time.perf_counter() - started
    data = json.loads(Path(args.data).read_text(encoding="utf-8"))
    seen = sum(len(feed.get("seen", {})) for feed in data.get("feeds", []))
    _write(args.out, {"phase_wall": phase, "entries_stored": seen})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compare_env.py")
    commands = parser.add_subparsers(dest="command", required=True)

    setup = commands.add_parser("reader-setup")
    setup.add_argument("--urls", required=True)
    setup.add_argument("--db", required=True)
    setup.set_defaults(run=reader_setup)

    update = commands.add_parser("reader-update")
    update.add_argument("--db", required=True)
    update.add_argument("--workers", type=int, default=8)
    update.add_argument("--out", required=True)
    update.set_defaults(run=reader_update)

    r2e = commands.add_parser("r2e-setup")
    r2e.add_argument("--urls", required=True)
    r2e.add_argument("--config", required=True)
    r2e.add_argument("--data", required=True)
    r2e.set_defaults(run=r2e_setup)

    r2e_go = commands.add_parser("r2e-run")
    r2e_go.add_argument("--config", required=True)
    r2e_go.add_argument("--data", required=True)
    r2e_go.add_argument("--out", required=True)
    r2e_go.set_defaults(run=r2e_run)

    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
