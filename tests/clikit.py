"""The `aggregator` command as a user runs it: a subprocess with its own configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

AGGREGATOR = [sys.executable, "-m", "aggregator"]


def run_cli(
    *args: str, config: Path, check: bool = True, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    """``aggregator ARGS`` with ``$AGGREGATOR_CONFIG`` set to ``config``, at ``columns``
    wide; asserts exit status 0 (with stderr as the message) unless ``check`` is off."""
    env = {**os.environ, "AGGREGATOR_CONFIG": str(config), "COLUMNS": str(columns)}
    result = subprocess.run(
        [*AGGREGATOR, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result
