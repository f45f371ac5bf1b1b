"""The one table style of the headless commands.

Plain columns two spaces apart under a lower-case header, numbers right-aligned, nothing
truncated, wrapped or boxed: a path stays whole and greppable at any terminal width, and
`grep`, `cut -c`, `awk '{print $1}'` see one row per line, the same on a terminal as in a
pipe. A name/value listing (doctor, models info) is the same table without its header.
Only the standard library: `tui-infer --help` stays instant.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

GAP = "  "


class Table:
    def __init__(
        self,
        *columns: str,
        right: Iterable[str] = (),
        title: str | None = None,
        header: bool = True,
    ) -> None:
        self.columns = columns
        self.right = {columns.index(c) for c in right}
        self.title = title
        self.header = header
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(tuple("" if c is None else str(c) for c in cells))

    def lines(self) -> list[str]:
        """The rendered lines; a cell of several lines continues under its own column."""
        rows = ([self.columns] if self.header else []) + self.rows
        widths = [
            max((len(part) for row in rows for part in row[i].splitlines() or [""]), default=0)
            for i in range(len(self.columns))
        ]
        out = [self.title] if self.title else []
        for row in rows:
            cells = [c.splitlines() or [""] for c in row]
            for k in range(max(len(c) for c in cells)):
                parts = [
                    (c[k] if k < len(c) else "").rjust(w)
                    if i in self.right
                    else (c[k] if k < len(c) else "").ljust(w)
                    for i, (c, w) in enumerate(zip(cells, widths, strict=True))
                ]
                out.append(GAP.join(parts).rstrip())
        return out

    def print(self, file: TextIO | None = None) -> None:
        out = file or sys.stdout
        for line in self.lines():
            print(line, file=out)


def output_flags(p: Any, quiet: str | None = None) -> None:
    """--json (one JSON document, documented in the README) and, where a script wants
    only the identifiers, --quiet (one per line: what `quiet` names)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print one JSON document")
    if quiet:
        g.add_argument("-q", "--quiet", action="store_true", help=f"print only {quiet}, one a line")


def print_json(document: Any, file: TextIO | None = None) -> None:
    """The one JSON style of the headless commands: one document, UTF-8 as is."""
    import json

    print(json.dumps(document, ensure_ascii=False, indent=2), file=file or sys.stdout)


def wants(args: Any, flag: str) -> bool:
    return bool(getattr(args, flag, False))
