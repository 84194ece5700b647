"""Screenshots of the web app for the README, from the bundled seed feeds.

    .venv/bin/python docs/screenshots.py

Polls config/default.toml's feeds (the offline snapshots in seeds/) into a temporary
database, serves the app on a free loopback port and photographs it with Debian's
Chromium (through Playwright, no browser download) into docs/screenshots/.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from aggregator.config import DEFAULT_CONFIG, WebSettings, load_settings
from aggregator.digests.preview import preview_for
from aggregator.pipeline import poll_feeds
from aggregator.sources import sync_configured_feeds
from aggregator.store import Store
from aggregator.web import create_app

OUT = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "screenshot"  # noqa: S105 - a throwaway password for a throwaway server


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(DEFAULT_CONFIG, env={})
        settings = replace(
            settings,
            database=Path(tmp) / "aggregator.sqlite3",
            web=WebSettings(admin_password=PASSWORD),
        )
        store = Store.open(settings.database)
        now = datetime.now(UTC)
        sync_configured_feeds(store, settings, now)
        asyncio.run(poll_feeds(settings, store))
        # A digest of everything stored, as a reader of every source would get it.
        shown = preview_for(store, settings, now)
        store.close()
        assert shown is not None and shown.message.html is not None
        mail = Path(tmp) / "digest.html"
        mail.write_text(shown.message.html, encoding="utf-8")
        (OUT.parent / "digest-example.txt").write_text(shown.message.text, encoding="utf-8")

        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        OUT.mkdir(exist_ok=True)
        try:
            shoot(base, mail.as_uri())
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def shoot(base: str, mail: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        shots = [
            ("timeline-desktop.png", "/", {"width": 1280, "height": 1100}, 1, "light", None),
            ("timeline-phone.png", "/", {"width": 390, "height": 844}, 2, "light", None),
            ("timeline-dark.png", "/", {"width": 1280, "height": 1100}, 1, "dark", None),
            ("admin.png", "/admin", {"width": 1280, "height": 1100}, 1, "light", PASSWORD),
            ("source-phone.png", "/sources/1", {"width": 390, "height": 844}, 2, "light", None),
            ("search.png", "/?q=cluster", {"width": 1280, "height": 1100}, 1, "light", None),
            ("digests-public.png", "/digests", {"width": 1280, "height": 1100}, 1, "light", None),
            ("digest.png", mail, {"width": 800, "height": 1100}, 1, "light", None),
            ("digest-phone.png", mail, {"width": 390, "height": 844}, 2, "light", None),
            ("digest-dark.png", mail, {"width": 800, "height": 1100}, 1, "dark", None),
        ]
        for name, path, viewport, scale, scheme, password in shots:
            context = browser.new_context(
                viewport=viewport,
                device_scale_factor=scale,
                color_scheme=scheme,
                http_credentials={"username": "admin", "password": password} if password else None,
            )
            page = context.new_page()
            page.goto(path if path.startswith("file:") else base + path)
            page.screenshot(path=str(OUT / name))
            context.close()
            print(f"wrote {OUT / name}")
        browser.close()


if __name__ == "__main__":
    main()
