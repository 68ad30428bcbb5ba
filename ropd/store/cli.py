"""`ropd store`, `audit`, `report`, `export`, `import rubrics`: typer objects that ropd/cli.py registers.

Errors the user can act on (no store, a bad query, a malformed file) print one line and exit 1;
only a bug shows a traceback.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from ropd.store.audit import CANNED, Result, canned, parse_param, prompt_story, run_query
from ropd.store.db import DEFAULT_CALLS, DEFAULT_DB, DEFAULT_IMPORTS, DEFAULT_RUNS, Store
from ropd.store.export import ExportFormat, export_run
from ropd.store.report import write_report
from ropd.store.rubric_import import ImportFormat, import_rubrics
from ropd.store.tables import StoreError
from ropd.store.terminal import fit_table

store_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="The DuckDB audit store: an index over the runs' parquet files.")
import_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Bring external rubric sets into the store, beside the mined ones.")
console = Console()

DbOption = Annotated[Path, typer.Option("--db", help="DuckDB store file")]
CallsOption = Annotated[list[Path] | None, typer.Option(
    "--calls", help=f"SQLite call cache(s) to index (repeatable); default: {DEFAULT_CALLS} if it exists")]


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _fail(e: Exception) -> typer.Exit:
    Console(stderr=True).print(Text(f"error: {e}", style="bold red"), soft_wrap=True)  # one line: it names paths
    return typer.Exit(1)


def _caches(calls: list[Path] | None) -> list[Path]:
    return calls if calls is not None else [c for c in (DEFAULT_CALLS,) if c.exists()]


def _print_counts(title: str, counts: dict[str, dict[str, int]]) -> None:
    """Rows loaded, one line per (source, table): as long as there are tables, never as wide."""
    rows = [(source, table, n) for source, c in counts.items() for table, n in sorted(c.items())]
    out = Console()
    out.print(fit_table(title, ["source", "table", "rows"], rows, out.width))


ImportsOption = Annotated[Path, typer.Option("--imports", help="where imported rubric sets are kept")]


@store_app.command()
def rebuild(runs: Annotated[Path, typer.Option(help="directory holding one folder per run")] = DEFAULT_RUNS,
            calls: CallsOption = None, db: DbOption = DEFAULT_DB, imports: ImportsOption = DEFAULT_IMPORTS) -> None:
    """Rebuild the store from every run's parquet files and the imported rubric sets (atomic: readers see the old
    or the new store)."""
    try:
        counts = Store(db).rebuild(runs, _caches(calls), imports)
    except StoreError as e:
        raise _fail(e) from e
    _print_counts(f"{db}: rebuilt from {runs}", counts)


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
    _print_counts(f"{db}: ingested", counts)


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
        out = Console()  # reads COLUMNS now, not at import
        out.print(fit_table(r.title, r.columns, r.rows, out.width, r.table))


RunArg = Annotated[str, typer.Argument(help="a run id under --runs, or a run directory")]
RunsOption = Annotated[Path, typer.Option(help="directory holding one folder per run")]


def _run_dir(run: str, runs: Path) -> Path:
    run_dir = Path(run) if Path(run).is_dir() else runs / run
    if not run_dir.is_dir():
        raise StoreError(f"no run {run!r}: neither a directory nor {runs / run}")
    return run_dir


def audit(
    view: Annotated[str, typer.Argument(help=f"one of: {', '.join(CANNED)}, prompt, rescore")] = "worst-rubrics",
    target: Annotated[str | None, typer.Argument(
        metavar="[PROMPT_ID|RUN]", help="with `prompt`: a prompt id (or a unique prefix); with `rescore`: a run id "
        "under --runs, or a run directory")] = None,
    run: Annotated[str | None, typer.Option(help="only this run")] = None,
    round: Annotated[int | None, typer.Option(help="only this round (rescore: the round to rescore)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="rows to show")] = 20,
    sql: Annotated[str | None, typer.Option("--sql", help="an ad-hoc query; bind values with --param")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="name=value, used as $name in --sql")]
    = None,
    drop_criterion: Annotated[list[str] | None, typer.Option(
        "--drop-criterion", help="rescore: leave out criterion ID (in every rubric) or GROUP:ID; repeatable")] = None,
    weight: Annotated[list[str] | None, typer.Option(
        "--weight", help="rescore: CATEGORY=F multiplies the points of that category; repeatable")] = None,
    cap_category: Annotated[list[str] | None, typer.Option(
        "--cap-category", help="rescore: CATEGORY=N caps that category's points in each rubric; repeatable")] = None,
    ignore_merges: Annotated[bool, typer.Option(
        "--ignore-merges", help="rescore: count the criteria QA merged away again")] = False,
    runs: RunsOption = DEFAULT_RUNS,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.table,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Audit the rubric dataset: worst rubrics, failed criteria, trends, imports, a prompt's story, SQL, rescoring.

    The store is opened read-only with file access disabled; docs/audit.md lists its views.
    `rescore` reads the run's files, not the store.
    """
    try:
        if view == "rescore":
            results = [_rescore(target, round, runs, drop_criterion or [], weight or [], cap_category or [],
                                ignore_merges)]
        else:
            con = Store(db).connect(read_only=True)
            try:
                if sql is not None:
                    results = [run_query(con, sql, dict(parse_param(p) for p in param or []))]
                elif view == "prompt":
                    if target is None:
                        raise StoreError("`ropd audit prompt` needs a prompt id: ropd audit prompt PROMPT_ID")
                    results = prompt_story(con, target, run=run, round=round)
                else:
                    results = [canned(con, view, run=run, round=round, limit=limit)]
            finally:
                con.close()
    except StoreError as e:
        raise _fail(e) from e
    emit(results, fmt)


def _rescore(run: str | None, rnd: int | None, runs: Path, drop: list[str], weight: list[str], cap: list[str],
             ignore_merges: bool) -> Result:
    from ropd.store.rescore import RescoreOptions, parse_category_values, rescore

    if run is None or rnd is None:
        raise StoreError("`ropd audit rescore` needs a run and a round: ropd audit rescore RUN --round R")
    options = RescoreOptions(drop=drop, weights=parse_category_values(weight, "--weight"),
                             caps=parse_category_values(cap, "--cap-category"), ignore_merges=ignore_merges)
    done = rescore(_run_dir(run, runs), rnd, options)
    Console(stderr=True).print(f"wrote {done.path}", soft_wrap=True)  # stderr: stdout may be CSV or JSON
    columns = ["prompt_id", "sign_flips", "spearman", "reward_deltas"]
    rows = [(p.prompt_id, p.sign_flips, None if p.spearman is None else round(p.spearman, 4),
             [None if d is None else round(d, 4) for d in p.deltas]) for p in done.prompts]
    return Result(f"rescore: run {done.run_id} round {done.round}", columns, rows, tuple(columns))


def report(
    run: RunArg,
    out: Annotated[Path | None, typer.Option(help="output file; default RUN_DIR/report.html")] = None,
    runs: RunsOption = DEFAULT_RUNS,
) -> None:
    """Write a self-contained HTML audit report of a run (no network needed to view it)."""
    try:
        path = write_report(_run_dir(run, runs), out)
    except StoreError as e:
        raise _fail(e) from e
    console.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB); open it with: xdg-open {path}")


def export(
    run: RunArg,
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="hf (datasets, with a card), healthbench "
                                              "(simple-evals JSONL) or jsonl (the contract tables, flattened)")],
    out: Annotated[Path, typer.Option(help="directory to write; an earlier export there is replaced")],
    round: Annotated[list[int] | None, typer.Option("--round", "-r", help="round to export (repeatable); "
                                                    "default: every round, all of which must be finished")] = None,
    with_verdicts: Annotated[bool, typer.Option("--with-verdicts", help="also the blind pool's answers, "
                                                "verdicts and rewards")] = False,
    runs: RunsOption = DEFAULT_RUNS,
    calls: Annotated[Path, typer.Option("--calls", help="the shared call cache, for the card's prompt template "
                                        "versions of a run without a cache of its own")] = DEFAULT_CALLS,
) -> None:
    """Export a finished run's rubrics (as judged, after QA) with their prompts; deterministic and atomic."""
    try:
        prov = export_run(_run_dir(run, runs), out, fmt, round, with_verdicts, calls)
    except StoreError as e:
        raise _fail(e) from e
    rows = ", ".join(f"{n} {k}" for k, n in prov.rows.items())
    console.print(f"wrote {out} ({fmt.value}): run {prov.run_id}, round(s) {', '.join(map(str, prov.rounds))}: {rows}",
                  soft_wrap=True)


@import_app.command("rubrics")
def import_rubric_set(
    file: Annotated[Path, typer.Argument(help="a HealthBench JSONL file, or the rubrics.jsonl of an export")],
    fmt: Annotated[ImportFormat, typer.Option("--format", "-f", help="healthbench or jsonl")],
    db: DbOption = DEFAULT_DB,
    imports: ImportsOption = DEFAULT_IMPORTS,
) -> None:
    """Import a rubric set with its provenance; points are kept as given, and what ROPD cannot train on is flagged.

    A file with any malformed line imports nothing; every bad line is reported by number."""
    try:
        imported = import_rubrics(file, fmt, db, imports)
    except StoreError as e:
        raise _fail(e) from e
    criteria = [c for r in imported.rubrics for c in r.criteria]
    flags = Counter(f for c in criteria for f in c.flags) + Counter(f for r in imported.rubrics for f in r.flags)
    console.print(f"imported {file} (sha256 {imported.file_sha256[:16]}): {len(imported.rubrics)} rubrics, "
                  f"{len(criteria)} criteria; flagged: "
                  + (", ".join(f"{k} {n}" for k, n in sorted(flags.items())) or "none")
                  + f". See them with: ropd audit imports --db {db}", soft_wrap=True)
