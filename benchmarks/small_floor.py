"""The floor of a one-shot poll built on this product's libraries.

    python benchmarks/small_floor.py --urls URLS.txt --db STATE.sqlite3

What any ``aggregator poll`` must at least do with the libraries it is built on: start
the interpreter; import click, httpx (asynchronous, so asyncio and anyio; not its own
command-line client) and sqlite-utils (without looking up its plugins); send every
feed's request at once on one event loop, conditional when a validator is stored; parse
each new document with feedparser (no sanitising, no URI resolution: lighter than the
product's parse); store the validators and the entries' ids with sqlite-utils; print one
line; end the process without tearing the interpreter down. No deduplication, no
sanitising, no schema checks, no scheduling. Run as a script,
not ``-m benchmarks…``, so that nothing of the benchmark package is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import click  # noqa: E402 - every `aggregator` command loads its CLI toolkit
import httpx  # noqa: E402
import sqlite_utils  # noqa: E402


async def fetch_all(urls: list[str], validators: dict[str, dict[str, Any]]) -> list[Any]:
    async with httpx.AsyncClient(http2=True, timeout=30) as client:

        async def one(url: str) -> tuple[str, httpx.Response]:
            known = validators.get(url, {})
            headers = {}
            if known.get("etag"):
                headers["If-None-Match"] = known["etag"]
            if known.get("last_modified"):
                headers["If-Modified-Since"] = known["last_modified"]
            return url, await client.get(url, headers=headers)

        return await asyncio.gather(*(one(url) for url in urls))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", required=True)
    parser.add_argument("--db", required=True)
    args = parser.parse_args()
    with open(args.urls, encoding="utf-8") as listed:
        urls = listed.read().split()
    db = sqlite_utils.Database(args.db, execute_plugins=False)
    known = "feeds" in db.table_names()
    validators = {row["url"]: row for row in db["feeds"].rows} if known else {}
    answers = asyncio.run(fetch_all(urls, validators))
    fresh = [(url, response) for url, response in answers if response.status_code == 200]
    entries: list[dict[str, str]] = []
    if fresh:
        import feedparser

        for url, response in fresh:
            parsed = feedparser.parse(
                response.content, sanitize_html=False, resolve_relative_uris=False
            )
            entries += [{"feed": url, "id": e.get("id") or e.get("link")} for e in parsed.entries]
    with db.conn:
        if fresh:
            db["feeds"].upsert_all(
                [
                    {
                        "url": url,
                        "etag": response.headers.get("etag"),
                        "last_modified": response.headers.get("last-modified"),
                    }
                    for url, response in fresh
                ],
                pk="url",
            )
        if entries:
            db["entries"].upsert_all(entries, pk=("feed", "id"))
    click.echo(f"{len(urls)} feeds: {len(entries)} entries")
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    os._exit(status)
