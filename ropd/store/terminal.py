"""Query results as tables that fit the terminal: `ropd audit`'s default view.

Twelve columns squeezed into 80 characters show nothing, so the table view chooses: hash ids are cut to
the shortest unique prefix of at least 8 characters, a label column with one value in every row moves to
the title, a column equal to an earlier one is named there instead of repeated, headers break at underscores,
long text wraps, and the columns of lowest priority that still do not fit are left out and named in the
caption. CSV and JSON always carry every column in full.

A column moves to the title only if it labels the rows (an id, the round, a status): a measure that
happens to be equal in every row stays a column.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

MAX_CELL = 200  # characters of one cell shown in a table; one line per row, newlines folded to spaces
SHORT_CELL = 20  # a column whose cells are all this short never wraps (ids, numbers, category names)
WRAP_MIN = 24  # the narrowest a wrapping column gets (less if its text is shorter), so prose stays readable
ID_CHARS = 8
HASH = re.compile(r"^[0-9a-f]{12,}$")


def cell_text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list) and not value:
        return "[]"
    if isinstance(value, list) and all(isinstance(v, bool) for v in value):
        return "".join("✓" if v else "✗" for v in value)
    text = ", ".join(map(str, value)) if isinstance(value, list) else (
        f"{value:.4g}" if isinstance(value, float) else str(value))
    text = " ".join(text.split())  # newlines in answers would wreck the table
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"


def short_ids(values: Sequence[str]) -> list[str]:
    """Hash ids cut to their shortest common prefix length (≥ `ID_CHARS`) that keeps distinct ids distinct."""
    distinct = set(values)
    n = ID_CHARS
    while len({v[:n] for v in distinct}) < len(distinct):
        n += 1
    return [v[:n] for v in values]


def header(name: str) -> str:
    """A column name broken after each underscore, one word a line, so narrow columns keep readable headers."""
    return re.sub(r"_(?=.)", "_\n", name)


def _label(name: str, value: Any) -> bool:
    """A column that names what the rows are about (an id, the round, a status), not a measure of them."""
    return name == "round" or isinstance(value, bool) or not isinstance(value, int | float | list)


def _overhead(n: int) -> int:
    return 3 * (n - 1)  # one space of padding either side of each inner border, no outer edges


def fit_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], width: int,
              priority: Sequence[str] | None = None) -> Table:
    """A rich table of `rows` no wider than `width`; `priority` names the most important columns first, the
    others follow in their own order."""
    first = [columns.index(c) for c in priority or ()]
    order = first + [i for i in range(len(columns)) if i not in first]
    cells = {i: [cell_text(r[i]) for r in rows] for i in order}
    for i in order:
        if rows and all(isinstance(r[i], str) and HASH.match(r[i]) for r in rows):
            cells[i] = short_ids(cells[i])
    notes, shown = [], []
    for i in order:
        col = cells[i]
        same = next((j for j in shown if columns[i].endswith("_id") and cells[j] == col), None) if rows else None
        if len(rows) > 1 and len(set(col)) == 1 and len(col[0]) <= SHORT_CELL and _label(columns[i], rows[0][i]):
            notes.append(f"{columns[i]}={col[0]}")
        elif same is not None:
            notes.append(f"{columns[i]} = {columns[same]}")
        else:
            shown.append(i)

    def need(i: int) -> tuple[int, int]:
        """(narrowest, widest useful) width of column i."""
        head = max(len(w) for w in header(columns[i]).splitlines())
        natural = max((len(c) for c in cells[i]), default=0)
        if natural <= SHORT_CELL:
            return max(head, natural), max(head, natural)
        return max(head, WRAP_MIN), max(head, natural)

    hidden = []
    while len(shown) > 1 and sum(need(i)[0] for i in shown) + _overhead(len(shown)) > width:
        hidden.append(columns[shown.pop()])
    widths = {i: need(i)[0] for i in shown}
    spare = width - sum(widths.values()) - _overhead(len(shown))
    for _ in range(max(spare, 0)):  # what is left goes, a character at a time, to the column most cut short
        cut = max(shown, key=lambda i: need(i)[1] - widths[i])
        if need(cut)[1] == widths[cut]:
            break
        widths[cut] += 1
    caption = f"{len(rows)} row(s)" + (f"; not shown: {', '.join(hidden)} (see --format csv|json)" if hidden else "")
    table = Table(title=title + (f"  ({', '.join(notes)})" if notes else ""), title_justify="left",
                  caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i in shown:
        table.add_column(header(columns[i]), width=widths[i], overflow="fold", no_wrap=need(i)[1] <= SHORT_CELL)
    for r in range(len(rows)):
        table.add_row(*(Text(cells[i][r], style="dim") if rows[r][i] is None else Text(cells[i][r])
                        for i in shown))
    return table
