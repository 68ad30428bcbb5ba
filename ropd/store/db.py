"""The audit database (`data/ropd.duckdb`): an index over the runs' parquet files, never the system of record.

Ingest replaces a run's rows in one transaction; rebuild writes a fresh file beside the old one and
renames it over, so a reader never sees a half-built store and a failed rebuild leaves the old one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb

from ropd.io import atomic_path
from ropd.store.tables import StoreError, check_version, create_schema, load_calls, load_import, load_run

DEFAULT_DB = Path("data/ropd.duckdb")
DEFAULT_RUNS = Path("data/runs")
DEFAULT_CALLS = Path("data/cache/llm_calls.sqlite")  # the pipeline's call cache, shared by its runs
DEFAULT_IMPORTS = Path("data/imports")  # imported rubric sets, one parquet per file (`ropd import rubrics`)


class Store:
    def __init__(self, path: Path | str = DEFAULT_DB) -> None:
        self.path = Path(path)

    def connect(self, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        """Read-only connections also disable file access, so ad-hoc SQL can neither read nor write files."""
        if read_only and not self.path.exists():
            raise StoreError(f"no store at {self.path}; build it with `ropd store rebuild`")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        config = {"enable_external_access": False, "lock_configuration": True} if read_only else {}
        try:
            con = duckdb.connect(str(self.path), read_only=read_only, config=config)
        except duckdb.Error as e:  # not a DuckDB file, or another process holds it for writing
            raise StoreError(f"{self.path}: cannot open the store ({e})") from e
        try:
            (check_version if read_only else create_schema)(con)
        except BaseException:
            con.close()
            raise
        return con

    def ingest_run(self, run_dir: Path) -> dict[str, int]:
        """Index one run directory; ingesting it again replaces its rows instead of adding to them."""
        run_dir = _run_dir(run_dir)
        con = self.connect(read_only=False)
        try:
            return load_run(con, run_dir)
        finally:
            con.close()

    def ingest_calls(self, cache: Path) -> int:
        """Upsert the llm_calls of a SQLite call cache (keyed by call_id, so re-ingesting adds nothing)."""
        con = self.connect(read_only=False)
        try:
            return load_calls(con, cache)
        finally:
            con.close()

    def ingest_import(self, path: Path) -> int:
        """Index (or re-index) one imported rubric set; returns its criteria."""
        con = self.connect(read_only=False)
        try:
            return load_import(con, path)
        finally:
            con.close()

    def rebuild(self, runs_root: Path = DEFAULT_RUNS, call_caches: Sequence[Path] = (),
                imports_dir: Path = DEFAULT_IMPORTS) -> dict[str, dict[str, int]]:
        """Build the store from scratch from every run directory under `runs_root`, the given call caches and
        the imported rubric sets in `imports_dir` (if it exists).

        Returns row counts per run (and per call cache and imported set, under its path).
        """
        if not runs_root.is_dir():
            raise StoreError(f"{runs_root}: no such runs directory")
        counts: dict[str, dict[str, int]] = {}
        with atomic_path(self.path) as tmp:
            tmp.unlink()  # DuckDB refuses an existing empty file; it creates its own
            con = duckdb.connect(str(tmp))
            try:
                create_schema(con)
                for run_dir in sorted(p for p in runs_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    counts[run_dir.name] = load_run(con, run_dir)
                for cache in call_caches:
                    counts[str(cache)] = {"llm_calls": load_calls(con, cache)}
                for imported in sorted(imports_dir.glob("*.parquet")) if imports_dir.is_dir() else []:
                    counts[str(imported)] = {"imported_criteria": load_import(con, imported)}
            finally:
                con.close()
            # A write-ahead log left by a crashed writer of the old file must not be replayed onto the new one.
            Path(f"{self.path}.wal").unlink(missing_ok=True)
        return counts


def _run_dir(path: Path) -> Path:
    if not path.is_dir():
        raise StoreError(f"{path}: no such run directory")
    return path
