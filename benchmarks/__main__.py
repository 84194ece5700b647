"""``python -m benchmarks [--quick] [NAME ...]``: run every benchmark module present.

A benchmark module is one of BENCHMARKS that exists in this package and exposes
``main(argv: list[str]) -> int``. ``--quick`` is passed on to each; anything after
``--`` is passed on too. The exit status is non-zero when any benchmark failed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
import traceback
from collections.abc import Callable

BENCHMARKS = ("poll", "web", "digest", "load")


def available() -> list[str]:
    return [name for name in BENCHMARKS if importlib.util.find_spec(f"{__package__}.{name}")]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passed: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passed = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run the benchmarks present."
    )
    parser.add_argument("--quick", action="store_true", help="small smoke runs")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and stop")
    parser.add_argument("names", nargs="*", help=f"which to run (default: all of {BENCHMARKS})")
    args = parser.parse_args(argv)
    present = available()
    if args.list:
        print("\n".join(present))
        return 0
    unknown = [name for name in args.names if name not in present]
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; present: {', '.join(present)}")
    chosen = args.names or present
    forwarded = (["--quick"] if args.quick else []) + passed
    failed = []
    for name in chosen:
        print(f"== benchmark: {name} ==", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"{__package__}.{name}")
            run: Callable[[list[str]], int] = module.main
            code = run(list(forwarded))
        except SystemExit as stop:  # argparse in a benchmark: --help or a wrong option
            code = stop.code if isinstance(stop.code, int) else 1
        except Exception:  # one broken benchmark must not stop the others
            traceback.print_exc()
            code = 1
        print(f"== {name}: exit {code}, {time.perf_counter() - started:.0f} s ==\n", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
