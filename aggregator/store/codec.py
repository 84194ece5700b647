"""How values are written to and read from SQLite columns."""

from __future__ import annotations

from datetime import UTC, datetime


def to_db(moment: datetime | None) -> str | None:
    """UTC ISO 8601 with microseconds: one fixed width, so text order is time order."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_db(value: str | None) -> datetime | None:
    """The moment a column holds (written by ``to_db``), timezone-aware UTC; None for NULL
    or empty. Raises ValueError for text in another format.
    """
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def from_db_required(value: str) -> datetime:
    """``from_db`` for a NOT NULL column: raises ValueError when the value is missing."""
    moment = from_db(value)
    if moment is None:
        raise ValueError("missing timestamp")
    return moment
