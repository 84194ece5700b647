"""The public URL layout is written once: mail links and the web's routes agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from webdata import make_settings

from aggregator.paths import PATHS, public_path
from aggregator.subscriptions import Links
from aggregator.web import create_app

# A value for each path parameter of the routes in PATHS.
PARAMS = {"entry": {"entry_id": 12}, "digest": {"digest_id": 7}}


@pytest.mark.parametrize("name", sorted(PATHS))
def test_every_public_path_is_the_web_route_of_that_name(tmp_path: Path, name: str) -> None:
    app = create_app(make_settings(tmp_path))
    params = PARAMS.get(name, {})
    assert public_path(name, **params) == app.url_path_for(name, **params)


def test_public_path_fills_and_encodes_parameters() -> None:
    assert public_path("digest", digest_id=7) == "/digests/7"
    assert public_path("entry", entry_id="a/b c") == "/entries/a%2Fb%20c"
    with pytest.raises(KeyError):
        public_path("digest")
    with pytest.raises(KeyError):
        public_path("nowhere")


def test_mail_links_use_the_public_paths() -> None:
    links = Links("https://news.example.org/", b"k" * 32)
    assert links.entry(5) == "https://news.example.org/entries/5"
    assert links.source(3) == "https://news.example.org/?source=3"
    assert links.home() == "https://news.example.org/"
    assert links.subscribe() == "https://news.example.org/subscribe"
