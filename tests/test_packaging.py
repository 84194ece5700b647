"""The product as a package: the wheel carries templates, static files, configurations
and snapshots, and an installation outside the checkout works end to end."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path

import httpx
import pytest
from feedfactory import Item, rss
from feedserver import FeedServer

from aggregator import resources
from aggregator.config import STARTER_CONFIG, config_path_from, load_settings
from aggregator.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("templates", "static", "config", "seeds")


def _checkout_files(folder: str) -> set[str]:
    return {
        str(path.relative_to(ROOT / folder))
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_pyproject_ships_every_data_file_of_the_checkout() -> None:
    """A new template folder or file type must not be left out of the wheel."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dirs: dict[str, str] = setup["package-dir"]
    patterns: dict[str, list[str]] = setup["package-data"]
    for folder in SHIPPED:
        package = f"aggregator.{resources.PACKAGED[folder]}"
        assert package_dirs[package] == folder
        for name in _checkout_files(folder):
            *subdirs, filename = Path(name).parts
            sub_package = ".".join([package, *subdirs])
            assert sub_package in setup["packages"], f"{folder}/{name}: {sub_package} not listed"
            assert any(fnmatch(filename, p) for p in patterns.get(sub_package, [])), (
                f"{folder}/{name} matches no package-data pattern of {sub_package}"
            )


def test_a_checkout_reads_its_own_folders() -> None:
    for folder in SHIPPED:
        assert resources.resource_dir(folder) == ROOT / folder  # type: ignore[arg-type]
    assert resources.is_checkout()


def test_without_a_config_an_installed_package_asks_for_one() -> None:
    with pytest.raises(ConfigError, match=r"no configuration file: .*aggregator init --config"):
        config_path_from(None, {}, checkout=False)
    assert config_path_from(None, {"AGGREGATOR_CONFIG": "x.toml"}, checkout=False) == Path("x.toml")


def test_the_starter_configuration_loads_and_keeps_its_data_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "site.toml"
    target.write_text(STARTER_CONFIG.read_text())
    settings = load_settings(target, {})
    assert settings.database == tmp_path / "aggregator.sqlite3"
    assert settings.mail.outbox == tmp_path / "outbox"
    assert settings.feeds == ()
    for line in STARTER_CONFIG.read_text().splitlines():
        assert "password" not in line.split("#")[0].lower()


# --- the wheel, installed outside the repository ---------------------------------------


def _run(*args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 180) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{args}: {result.returncode}\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh virtual environment outside the checkout with the wheel installed."""
    base = tmp_path_factory.mktemp("installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AGGREGATOR_"))}
    # Built from a copy holding what deploy/Containerfile copies: no stale build/ of
    # the checkout ends up in the wheel, and the checkout is not written to.
    source = base / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in ("aggregator", *SHIPPED):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = base / "wheels"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        wheels,
        source,
        cwd=base,
        env=env,
    )
    (wheel,) = wheels.glob("aggregator-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in SHIPPED:
        for name in _checkout_files(folder):
            assert f"aggregator/{resources.PACKAGED[folder]}/{name}" in names
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=base, env=env)
    # Base interpreter's venv module; pip resolves the dependencies (from its cache).
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=base, env=env)
    yield venv / "bin", env


def test_the_installed_wheel_inits_polls_and_serves(
    installed: tuple[Path, dict[str, str]], tmp_path: Path, feed_server: FeedServer
) -> None:
    bin_dir, env = installed
    aggregator = bin_dir / "aggregator"
    site = tmp_path / "site"

    # Nothing to fall back on outside a checkout: say how to start.
    result = subprocess.run(
        [aggregator, "status"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: no configuration file")

    config = site / "site.toml"
    said = _run(aggregator, "init", "--config", config, cwd=tmp_path, env=env)
    assert f"Wrote a starter configuration to {config}" in said
    assert (site / "aggregator.sqlite3").exists()
    assert config.read_text().startswith("# Aggregator configuration for a new site")

    feed_server.add(
        "/feed.xml",
        rss(
            [
                Item(
                    title="Packaged post",
                    link="https://blog.test/p1",
                    published=datetime(2026, 11, 1, tzinfo=UTC),
                )
            ]
        ),
    )
    with config.open("a") as file:
        file.write(
            f'\n[[feeds]]\nurl = "{feed_server.url("/feed.xml")}"\n'
            "\n[fetch]\nallow_private_addresses = true\n"
        )
    said = _run(aggregator, "--config", config, "poll", cwd=tmp_path, env=env)
    assert "1 new" in said

    port = _free_port()
    server = subprocess.Popen(
        [aggregator, "--config", config, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        page = style = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert page is not None and page.status_code == 200
        assert "Packaged post" in page.text
        assert "/static/style.css" in page.text
        style = httpx.get(f"http://127.0.0.1:{port}/static/style.css", timeout=5)
        assert style.status_code == 200 and "text/css" in style.headers["content-type"]
        assert len(style.content) > 1000
        httpx.get(f"http://127.0.0.1:{port}/unsubscribe?token=SECRET-TOKEN", timeout=5)
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert "path=/unsubscribe?token=REDACTED" in output
    assert "SECRET-TOKEN" not in output
