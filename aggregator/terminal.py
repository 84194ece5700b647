"""What the command line writes: lines, error lines, tables and progress bars.

Much of what it shows comes from feeds and servers (titles, URLs, error messages), so it
is shown as text and nothing else: never read as rich markup (a title ``[/b]`` used to
stop ``aggregator poll`` with a traceback, and ``[bold]`` vanished from URLs) or as
emoji codes (``:coffee:``), and with control characters replaced, so that no feed can
restyle, hide or rewrite the terminal's screen (ECMA-48 escape and control sequences).

rich lays out the tables and draws the progress bars, and is imported only for them: a
command that prints a few lines does not load it. Plain lines go through ``click.echo``,
which drops colour where the stream is not a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

import click

from .text import BIDI, CONTROL

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

REPLACEMENT = "\ufffd"
"""What stands for a control character in shown text (U+FFFD REPLACEMENT CHARACTER)."""

LARGE_TABLE_ROWS = 200
"""Past this many rows a table is laid out as plain aligned columns, one line a row:
rich lays a row out in about half a millisecond (10,000 subscribers took 15 s)."""

PROGRESS_LABEL_CHARS = 40
"""How much of the current item (a feed's title, an outcome) a progress bar shows."""


def shown(text: str) -> str:
    """``text`` fit for a terminal: C0 and C1 controls except newline and tab, DEL, lone
    surrogates, non-characters and bidirectional controls each become U+FFFD (see
    ``text.CONTROL`` and ``text.BIDI``: an override would reorder what follows it)."""
    return BIDI.sub(REPLACEMENT, CONTROL.sub(REPLACEMENT, text))


Columns = Sequence[tuple[str, str]]
"""A table's columns, (name, kind): "id" cells never wrap, "num" cells are right
aligned, "text" cells wrap between words."""


class OutputError(Exception):
    """The command's output stream cannot be written (a full disk, an I/O error): the
    command's work may be done, but what it says is lost, so it must not exit 0."""


class Terminal:
    """One output stream of the command, stdout or stderr, looked up at each write (so
    that a test harness that swaps ``sys.stdout`` sees the output)."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr

    @property
    def file(self) -> TextIO | None:
        """The stream written to: the current ``sys.stdout`` or ``sys.stderr``; None when
        the command was started with it closed (``2>&-``)."""
        return sys.stderr if self._stderr else sys.stdout

    @property
    def is_terminal(self) -> bool:
        """Whether a person watches this stream (a TTY), not a pipe or a file."""
        try:
            return bool(self.file and self.file.isatty())
        except (AttributeError, ValueError):  # no such method, or closed
            return False

    @property
    def colour(self) -> bool:
        """Whether to colour: on a terminal, unless NO_COLOR is set (no-color.org)."""
        return self.is_terminal and not os.environ.get("NO_COLOR")

    def line(self, text: str) -> None:
        """``text`` (any number of lines) and a newline, exactly as given but for controls."""
        self.write(shown(text) + "\n")

    def error(self, message: str, *, label: str = "error") -> None:
        """One ``error: message`` line, the label red on a terminal."""
        head = click.style(f"{label}:", fg="red") if self.colour else f"{label}:"
        self.write(f"{head} {shown(message)}\n")

    def write(self, text: str) -> None:
        """Write ``text`` as it is and flush it. Raises ``OutputError`` when the stream
        cannot take it (a full disk, an I/O error), ``BrokenPipeError`` when its reader
        has gone; writes nothing when the stream was closed from the start. Characters
        the stream's encoding lacks are replaced."""
        stream = self.file
        if stream is None:
            return
        try:
            try:
                stream.write(text)
            except UnicodeEncodeError:
                encoding = stream.encoding or "utf-8"
                stream.write(text.encode(encoding, "replace").decode(encoding))
            stream.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as error:
            name = "standard error" if self._stderr else "standard output"
            reason = getattr(error, "strerror", None) or str(error)
            raise OutputError(f"cannot write to {name}: {reason}") from None

    def table(self, title: str, columns: Columns, rows: Sequence[Sequence[str]]) -> None:
        """A table whose identifiers (URLs, addresses, ids) and words are never broken.

        When the table would break an identifier or a word (a narrow terminal, or 80
        columns when piped), one record per block instead. The table is laid out once,
        on a console that records it, and that output is written as it is (rich lays out
        a row in about a millisecond: a second layout doubled the time of a 500-feed
        poll's summary). Over ``LARGE_TABLE_ROWS`` rows, plain columns; with no rows,
        the title alone.
        """
        title = shown(title)
        if not rows:
            self.write(title + "\n")
            return
        rows = [[shown(cell) for cell in row] for row in rows]
        console = self._console()
        if len(rows) > LARGE_TABLE_ROWS:
            self.write(_plain_table(title, columns, rows, console.width))
            return
        import io

        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for name, kind in columns:
            if kind == "id":
                table.add_column(name, no_wrap=True, overflow="ignore")
            else:
                table.add_column(
                    name, overflow="fold", justify="right" if kind == "num" else "left"
                )
        for row in rows:
            table.add_row(*row)
        probe = Console(
            file=io.StringIO(),
            width=console.width,
            markup=False,
            emoji=False,
            highlight=False,
            soft_wrap=True,
            record=True,
            force_terminal=console.is_terminal,
            color_system=console.color_system,  # type: ignore[arg-type]
            no_color=console.no_color,
        )
        probe.print(table)
        lines = probe.export_text(styles=False).splitlines()
        fits = all(len(line) <= console.width for line in lines) and all(
            any(token in line for line in lines) for token in _identifiers(columns, rows)
        )
        if fits:
            self.write(probe.file.getvalue())  # type: ignore[attr-defined]
        else:
            self.write(_blocks(title, columns, rows))

    @contextmanager
    def progress(self, label: str) -> Iterator[ProgressBar]:
        """A transient progress bar (``label``, bar, done/total, current item, elapsed)
        while the block runs; on anything but a terminal, nothing (and rich is not loaded:
        nobody watches a pipe)."""
        if not self.is_terminal:
            yield ProgressBar(None, None)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn(label, markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}", markup=False),
            TimeElapsedColumn(),
            console=self._console(),
            transient=True,
        ) as bar:
            yield ProgressBar(bar, bar.add_task("", total=None))

    def _console(self) -> Console:
        from rich.console import Console

        return Console(file=self.file, markup=False, emoji=False, highlight=False, soft_wrap=True)


class WarningLines(logging.Handler):
    """The log records of a one-shot command, warnings and worse, as ``warning: …`` or
    ``error: …`` lines on ``terminal`` (without a handler Python would print the bare
    message, unlabelled and unfiltered). The service configures its own log instead."""

    def __init__(self, terminal: Terminal) -> None:
        super().__init__(logging.WARNING)
        self._terminal = terminal

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` as one labelled line."""
        try:
            label = "warning" if record.levelno < logging.ERROR else "error"
            self._terminal.error(" ".join(record.getMessage().split()), label=label)
        except Exception:  # logging's contract: a handler never raises
            self.handleError(record)


class ProgressBar:
    """What a command moves on a ``Terminal.progress`` bar; does nothing when the bar is
    not shown."""

    def __init__(self, bar: Progress | None, task: TaskID | None) -> None:
        self._bar = bar
        self._task = task

    def update(
        self,
        *,
        total: int | None = None,
        completed: int | None = None,
        advance: int | None = None,
        item: str | None = None,
    ) -> None:
        """Set the total or the count done, advance by some, name the current item."""
        if self._bar is None or self._task is None:
            return
        self._bar.update(
            self._task,
            total=total,
            completed=completed,
            advance=advance,
            description=None if item is None else shown(item)[:PROGRESS_LABEL_CHARS],
        )


def _blocks(title: str, columns: Columns, rows: Sequence[Sequence[str]]) -> str:
    """``title``, then one ``name: value`` block per row."""
    blocks = [title]
    for row in rows:
        blocks.append("")
        blocks += [f"{name}: {value}" for (name, _), value in zip(columns, row, strict=True)]
    return "\n".join(blocks) + "\n"


def _plain_table(title: str, columns: Columns, rows: Sequence[Sequence[str]], width: int) -> str:
    """``title``, then the header and one line per row in columns two spaces apart ("num"
    columns right aligned); when a line would pass ``width``, one record per block."""
    from rich.cells import cell_len

    lines: list[Sequence[str]] = [[name for name, _ in columns], *rows]
    widths = [max(cell_len(line[i]) for line in lines) for i in range(len(columns))]
    if sum(widths) + 2 * (len(widths) - 1) > width:
        return _blocks(title, columns, rows)
    right = [kind == "num" for _, kind in columns]
    text = [title]
    for line in lines:
        cells = [
            " " * (w - cell_len(cell)) + cell if r else cell + " " * (w - cell_len(cell))
            for cell, w, r in zip(line, widths, right, strict=True)
        ]
        text.append("  ".join(cells).rstrip())
    return "\n".join(text) + "\n"


def _identifiers(columns: Columns, rows: Sequence[Sequence[str]]) -> Iterator[str]:
    """What must stand whole in the rendered table: each identifier, and each word of
    the headers and of the text cells."""
    for name, _ in columns:
        yield from name.split()
    for row in rows:
        for (_, kind), value in zip(columns, row, strict=True):
            if kind == "id":
                yield value
            else:
                yield from value.split()
