"""`ropd store rebuild|ingest`, `ropd audit`, `ropd report`: typer objects that ropd/cli.py registers.

Errors the user can act on (no store, a bad query, a malformed file) print one line and exit 1;
only a bug shows a traceback.
"""

from __future__ import annotations

import csv
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ropd.store.audit import CANNED, Result, canned, parse_param, prompt_story, run_query
from ropd.store.db import DEFAULT_CALLS, DEFAULT_DB, DEFAULT_RUNS, Store
from ropd.store.report import write_report
from ropd.store.tables import StoreError

store_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="The DuckDB audit store: an index over the runs' parquet files.")
console = Console()
MAX_CELL = 80
SHORT_CELL = 16

DbOption = Annotated[Path, typer.Option("--db", help="DuckDB store file")]
CallsOption = Annotated[list[Path] | None, typer.Option(
    "--calls", help=f"SQLite call cache(s) to index (repeatable); default: {DEFAULT_CALLS} if it exists")]


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _fail(e: Exception) -> typer.Exit:
    Console(stderr=True).print(Text(f"error: {e}", style="bold red"))
    return typer.Exit(1)


def _caches(calls: list[Path] | None) -> list[Path]:
    return calls if calls is not None else [c for c in (DEFAULT_CALLS,) if c.exists()]


def _counts_table(title: str, counts: dict[str, dict[str, int]]) -> Table:
    tables = sorted({t for c in counts.values() for t in c})
    out = Table(title=title)
    out.add_column("run")
    for t in tables:
        out.add_column(t, justify="right")
    for run, c in counts.items():
        out.add_row(run, *(str(c.get(t, 0)) for t in tables))
    return out


@store_app.command()
def rebuild(runs: Annotated[Path, typer.Option(help="directory holding one folder per run")] = DEFAULT_RUNS,
            calls: CallsOption = None, db: DbOption = DEFAULT_DB) -> None:
    """Rebuild the store from every run's parquet files (atomic: readers see the old or the new store)."""
    try:
        counts = Store(db).rebuild(runs, _caches(calls))
    except StoreError as e:
        raise _fail(e) from e
    console.print(_counts_table(f"{db}: rebuilt from {runs}", counts))


@store_app.command()
def ingest(run_dir: Annotated[Path, typer.Argument(help="a run directory, e.g. data/runs/demo")],
           calls: CallsOption = None, db: DbOption = DEFAULT_DB) -> None:
    """Index (or re-index) one run; its previous rows are replaced, never duplicated."""
    store = Store(db)
    try:
        counts = {run_dir.name: store.ingest_run(run_dir)}
        counts |= {str(c): {"llm_calls": store.ingest_calls(c)} for c in _caches(calls)}
    except StoreError as e:
        raise _fail(e) from e
    console.print(_counts_table(f"{db}: ingested", counts))


def _cell(value: Any) -> Text:
    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, list) and value and all(isinstance(v, bool) for v in value):
        return Text("".join("✓" if v else "✗" for v in value))
    if isinstance(value, list):
        text = ", ".join(map(str, value))
    else:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
    text = " ".join(text.split())  # one line per row: newlines in answers would wreck the table
    return Text(text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…")


def _plain(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else value


def emit(results: list[Result], fmt: Format) -> None:
    """Print results as rich tables, CSV (one block per result, blank line between) or JSON."""
    if fmt is Format.json:
        payload: Any = (results[0].records() if len(results) == 1 else {r.title: r.records() for r in results})
        sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2, default=str) + "\n")
        return
    for i, r in enumerate(results):
        if fmt is Format.csv:
            if i:
                sys.stdout.write("\n")
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(r.columns)
            writer.writerows([_plain(v) for v in row] for row in r.rows)
            continue
        cells = [[_cell(v) for v in row] for row in r.rows]
        table = Table(title=r.title, title_justify="left", caption=f"{len(r.rows)} row(s)")
        for i, c in enumerate(r.columns):
            # Short columns (ids, numbers) never wrap, so the width goes to the long text columns.
            short = max((len(row[i]) for row in cells), default=0) <= SHORT_CELL
            table.add_column(c, no_wrap=short, overflow="ellipsis" if short else "fold")
        for row in cells:
            table.add_row(*row)
        console.print(table)


def audit(
    view: Annotated[str, typer.Argument(help=f"one of: {', '.join(CANNED)}, prompt")] = "worst-rubrics",
    prompt_id: Annotated[str | None, typer.Argument(help="with `prompt`: the prompt to show")] = None,
    run: Annotated[str | None, typer.Option(help="only this run")] = None,
    round: Annotated[int | None, typer.Option(help="only this round")] = None,
    limit: Annotated[int, typer.Option(min=1, help="rows to show")] = 20,
    sql: Annotated[str | None, typer.Option("--sql", help="an ad-hoc query; bind values with --param")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="name=value, used as $name in --sql")]
    = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.table,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Audit the rubric dataset: worst rubrics, most-failed criteria, per-round trends, one prompt's story, or SQL.

    The store is opened read-only with file access disabled; views: rubric_criteria, verdict_matrix,
    rollout_rewards, rubric_health, criterion_stats, round_trends (see docs/audit.md).
    """
    try:
        con = Store(db).connect(read_only=True)
        try:
            if sql is not None:
                results = [run_query(con, sql, dict(parse_param(p) for p in param or []))]
            elif view == "prompt":
                if prompt_id is None:
                    raise StoreError("`ropd audit prompt` needs a prompt id: ropd audit prompt PROMPT_ID")
                results = prompt_story(con, prompt_id, run=run, round=round)
            else:
                results = [canned(con, view, run=run, round=round, limit=limit)]
        finally:
            con.close()
    except StoreError as e:
        raise _fail(e) from e
    emit(results, fmt)


def report(
    run: Annotated[str, typer.Argument(help="a run id under --runs, or a run directory")],
    out: Annotated[Path | None, typer.Option(help="output file; default RUN_DIR/report.html")] = None,
    runs: Annotated[Path, typer.Option(help="directory holding one folder per run")] = DEFAULT_RUNS,
) -> None:
    """Write a self-contained HTML audit report of a run (no network needed to view it)."""
    run_dir = Path(run) if Path(run).is_dir() else runs / run
    if not run_dir.is_dir():
        raise _fail(StoreError(f"no run {run!r}: neither a directory nor {runs / run}"))
    try:
        path = write_report(run_dir, out)
    except StoreError as e:
        raise _fail(e) from e
    console.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB); open it with: xdg-open {path}")
