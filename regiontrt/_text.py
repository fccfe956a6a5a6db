"""Tables for the CLI and the demo: ``rich`` tables where ``rich`` is installed, plain otherwise.

``rich`` is an optional extra (``pip install 'regiontrt[rich]'``); without it the same rows print
as left-aligned plain columns, so a bare install still reads well and pipes stay parseable.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from typing import IO, Any


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Left-aligned plain columns with a dashed rule under the header (no ``rich`` needed)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def rich_table(
    rows: Sequence[Sequence[Any]], header: Sequence[str], title: str | None = None
) -> Any:
    """A ``rich.table.Table`` of ``rows`` (``rich`` must be installed).

    Cells are plain text: square brackets in a value (shape lists, user descriptions) are shown
    as written, never read as ``rich`` markup.
    """
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, header_style="bold")
    for h in header:
        table.add_column(Text(str(h)))
    for row in rows:
        table.add_row(*(Text(str(c)) for c in row))
    return table


def print_table(
    rows: Sequence[Sequence[Any]],
    header: Sequence[str],
    *,
    title: str | None = None,
    file: IO[str] | None = None,
) -> None:
    """Print a table to ``file`` (standard output by default).

    On a terminal with ``rich`` the table is drawn with box lines and fitted to the terminal;
    into a pipe or file it is printed at its natural width, never wrapped or cut, so ``grep`` and
    ``head`` see whole rows.
    """
    out = sys.stdout if file is None else file
    try:
        from rich.console import Console
    except ImportError:
        if title:
            print(title, file=out)
        print(format_table(rows, header), file=out)
        return
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    table = rich_table(rows, header, title)
    if tty:
        Console(file=out).print(table)
        return
    from rich import box

    table.box, table.show_edge, table.pad_edge = box.SIMPLE_HEAD, False, False
    buffer = io.StringIO()
    Console(file=buffer, width=100_000, color_system=None, force_terminal=False,
            soft_wrap=True).print(table)
    out.write("\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n")
