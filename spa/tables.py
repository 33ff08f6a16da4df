"""Every table spa prints. On a terminal, rich draws it (a title, a ruled header, bold block
headings, the last column wrapped to the window). Anywhere else (a pipe, a file, a test) it is
plain text that scripts can rely on: no escape codes, no title, never wrapped or cut, columns
two spaces apart, so `split()` gives a row's cells."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NamedTuple

SEPARATOR = "  "  # between plain columns


class Column(NamedTuple):
    header: str
    right: bool = False  # numbers align right


class Heading(NamedTuple):
    """A line of its own between rows (a block of `spa inspect`): unindented in plain text,
    bold in the last column on a terminal."""
    text: str


Row = Sequence[str] | Heading


def right(header: str) -> Column:
    return Column(header, right=True)


def render(columns: Sequence[Column], rows: Sequence[Row], title: str | None = None,
           terminal: bool | None = None) -> str:
    """The table as text to print: drawn by rich if `terminal` (default: stdout is a terminal),
    else plain. A row shorter than the header has its last cell run on past the columns
    (plain text; on a terminal the missing cells are empty)."""
    if terminal is None:
        terminal = stdout_is_terminal()
    return _rich(columns, rows, title) if terminal else _plain(columns, rows)


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def _plain(columns: Sequence[Column], rows: Sequence[Row]) -> str:
    header = tuple(column.header for column in columns)
    # a shorter row (a sweep's error message) is left out of the widths: its last cell runs on
    full = [header] + [row for row in rows if not isinstance(row, Heading) and len(row) == len(columns)]
    widths = [max(len(row[k]) for row in full) for k in range(len(columns))]
    lines = []
    for row in (header, *rows):
        if isinstance(row, Heading):
            lines.append(row.text)
            continue
        cells = [cell.rjust(width) if column.right else cell.ljust(width)
                 for cell, width, column in zip(row, widths, columns)]
        lines.append(SEPARATOR.join(cells).rstrip())
    return "\n".join(lines)


def _rich(columns: Sequence[Column], rows: Sequence[Row], title: str | None) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, header_style="bold",
                  show_edge=False)
    for column in columns:
        table.add_column(column.header, justify="right" if column.right else "left")
    for row in rows:
        if isinstance(row, Heading):
            if table.row_count:
                table.add_section()
            table.add_row(*[""] * (len(columns) - 1), Text(row.text, style="bold"))
        else:
            table.add_row(*(Text(cell) for cell in row))  # Text: a name's "[...]" is not rich markup
    # rich finds the window's width and colours (none with NO_COLOR, or TERM=dumb) from stdout
    console = Console(file=sys.stdout, force_terminal=True, highlight=False)
    with console.capture() as captured:
        console.print(table)
    return captured.get().rstrip("\n")
