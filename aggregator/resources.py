"""Files shipped beside the code: templates, static files, configurations, feed snapshots.

A checkout keeps them at the top of the repository (``templates/``, ``static/``,
``config/``, ``seeds/``); a wheel carries them inside the package (``aggregator/templates``,
``aggregator/static``, ``aggregator/defaults``, ``aggregator/seeds``), mapped there at build
time by ``pyproject.toml``. They are read from the package when it holds them, else from
the checkout the package was imported from (an editable install, ``make run``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from .errors import MissingResource

Kind = Literal["templates", "static", "config", "seeds"]

# The folder's name in the checkout -> its name inside the installed package.
PACKAGED: dict[str, str] = {
    "templates": "templates",
    "static": "static",
    "config": "defaults",  # not "config": aggregator/config.py is the settings module
    "seeds": "seeds",
}

# The top of the source checkout the package was imported from (where ``templates/``,
# ``static/``, ``config/`` and ``seeds/`` live in a checkout).
CHECKOUT = Path(__file__).resolve().parent.parent


def resource_dir(kind: Kind) -> Path:
    """The folder holding one kind of shipped file, as a real directory on disk."""
    packaged = resources.files(__package__ or "aggregator") / PACKAGED[kind]
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = CHECKOUT / kind
    if checkout.is_dir():
        return checkout
    raise MissingResource(
        f"the {kind} folder is missing from the installed package (looked in {packaged} "
        f"and {checkout}); reinstall the aggregator",
        path=str(checkout),
    )


def resource_file(kind: Kind, name: str) -> Path:
    """The path of one shipped file, ``name`` inside the ``kind`` folder (see
    ``resource_dir``); it may not exist. Raises MissingResource when the folder itself is
    missing.
    """
    return resource_dir(kind) / name


def is_checkout() -> bool:
    """Whether the shipped files are read from a source checkout (not an installed wheel)."""
    return resource_dir("config") == CHECKOUT / "config"
