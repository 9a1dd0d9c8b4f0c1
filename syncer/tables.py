"""Plain-text tables for the operator's terminal: they fit its width (80 columns when piped)
and never cut a name.

Identifier columns (`Column(key=True)`: regions, nodes, sites, plan ids, artifact paths) are
never wrapped or shortened, because an operator copies them into the next command. Other
columns wrap inside their cell when the table is too wide; a row's free text (failures,
errors) goes on indented lines under the row, wrapped to the width, instead of a column that
would squeeze everything else. When even that does not fit, each row becomes a small block of
`header: value` lines. Plain text, so the output is the same in a terminal, a pipe or a log.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.console import Console

GAP = 2  # spaces between columns


@dataclass(frozen=True)
class Column:
    header: str
    justify: Literal["left", "right"] = "left"
    key: bool = False  # an identifier: never wrapped or cut


def _cell_lines(text: str, width: int, key: bool) -> list[str]:
    if key or len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]


def _notes(note: str, width: int, indent: str = "    ") -> list[str]:
    """Free text under a row, wrapped to the width (only a word longer than a line breaks)."""
    if not note:
        return []
    return textwrap.wrap(note, max(20, width), initial_indent=indent,
                         subsequent_indent=indent + "  ", break_long_words=True,
                         break_on_hyphens=False)


def _join_keys(keys: Sequence[str], width: int) -> list[str]:
    """Names on as few lines as fit; a name is never broken."""
    lines: list[str] = []
    for key in keys:
        if lines and len(lines[-1]) + 1 + len(key) <= width:
            lines[-1] += " " + key
        else:
            lines.append(key)
    return lines


def render_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int = 80,
                 title: str = "", notes: Sequence[str] | None = None) -> list[str]:
    """The table as lines of at most `width` characters (except a single name longer than the
    whole width, which is printed whole); `notes[i]` is printed under row i."""
    notes = list(notes or [""] * len(rows))
    natural = [max([len(c.header), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    widths = list(natural)
    budget = width - GAP * (len(columns) - 1)
    # Shrink the widest wrappable column, one character at a time, down to its header.
    # A wrappable column keeps its longest word whole, so it wraps between words.
    floor = [n if c.key else min(n, max([len(c.header), *(len(w) for r in rows
                                                          for w in r[i].split())]))
             for i, (c, n) in enumerate(zip(columns, natural, strict=True))]
    while sum(widths) > budget:
        candidates = [i for i, c in enumerate(columns) if not c.key and widths[i] > floor[i]]
        if not candidates:
            return _records(columns, rows, width, title, notes)
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
    out = [title] if title else []

    def line(cells: Sequence[str]) -> str:
        parts = [cell.rjust(w) if c.justify == "right" else cell.ljust(w)
                 for c, cell, w in zip(columns, cells, widths, strict=True)]
        return (" " * GAP).join(parts).rstrip()

    out.append(line([c.header for c in columns]))
    out.append(line(["-" * w for w in widths]))
    for row, note in zip(rows, notes, strict=True):
        wrapped = [_cell_lines(cell, w, c.key) for c, cell, w in zip(columns, row, widths,
                                                                     strict=True)]
        for k in range(max(len(w) for w in wrapped)):
            out.append(line([w[k] if k < len(w) else "" for w in wrapped]))
        out.extend(_notes(note, width))
    return out


def _records(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int, title: str,
             notes: Sequence[str]) -> list[str]:
    """One block per row: the key values on the first line, then `header: value` lines."""
    out = [title] if title else []
    for row, note in zip(rows, notes, strict=True):
        keys = [cell for c, cell in zip(columns, row, strict=True) if c.key and cell]
        out.extend(_join_keys(keys or [row[0]], width))
        pairs = "   ".join(f"{c.header}: {cell}" for c, cell in zip(columns, row, strict=True)
                           if not c.key and cell)
        out.extend(textwrap.wrap(pairs, max(20, width), initial_indent="    ",
                                 subsequent_indent="    ", break_long_words=True,
                                 break_on_hyphens=False))
        out.extend(_notes(note, width))
    return out


class OperatorConsole(Console):
    """rich's Console, except that a reader that went away (`| head`) raises BrokenPipeError
    for `distro-sync`'s main to end quietly with the shell's SIGPIPE status, as for print()."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError
