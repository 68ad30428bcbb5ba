"""The store's tables (design §3), its views, and loading a run's files into them.

One list of table specs drives the DDL, the column checks on every input file and the ingest, so the
store, the QA stage, the diagnostics and the report all read the data contract the same way. The
views hold the joins everyone needs once: a consumer that wants "the rubric the verifier used" or
"the verdict matrix of a group" queries a view instead of writing the join again.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from ropd.rubric.schema import Category

ROUND_DIR = re.compile(r"^round_(\d+)$")
CALL_CACHE = "llm_cache.sqlite"
SCHEMA_VERSION = "4"

V, INT, D, B = "VARCHAR", "INTEGER", "DOUBLE", "BOOLEAN"
_RUN = (("run_id", V),)
_ROUND = (("run_id", V), ("round", INT))
_GROUP = (*_ROUND, ("group_id", V), ("prompt_id", V))
_RUBRIC = (*_GROUP, ("rubric_id", V), ("n_criteria", INT), ("max_score", INT), ("rubricator_fingerprint", V),
           ("rubric_json", V))
_CRITERIA = (*_GROUP, ("rubric_id", V), ("position", INT), ("criterion_id", V), ("category", V), ("text", V),
             ("points", INT), ("rubricator_fingerprint", V))


class StoreError(RuntimeError):
    """An input file breaks the data contract, or the database cannot be used; the message names the file."""


@dataclass(frozen=True)
class Table:
    """A contract table. `file` lives in the run directory (`scope="run"`) or in every round directory.

    `run_id` is never read from a file: a run is its directory, so a copied or renamed run directory
    ingests under its own name and re-ingesting it replaces exactly its own rows. A file without
    `group_id` (one group per prompt, the paper's shared rubric) takes the prompt id as its group id.
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    file: str | None = None
    scope: str = "round"

    @property
    def file_columns(self) -> list[str]:
        return [c for c, _ in self.columns if c != "run_id"]

    @property
    def required_columns(self) -> list[str]:
        return [c for c in self.file_columns if c not in DEFAULTS]

    def ddl(self) -> str:
        cols = ", ".join(f"{c} {t}" for c, t in self.columns)
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({cols})"


TABLES: tuple[Table, ...] = (
    Table("prompts", (*_RUN, ("prompt_id", V), ("question", V), ("reference_answer", V), ("split", V),
                      ("source", V), ("messages", V)), "prompts.parquet", "run"),
    Table("teacher_answers", (*_RUN, ("prompt_id", V), ("teacher_fingerprint", V), ("answer_idx", INT), ("text", V)),
          "teacher.parquet", "run"),
    Table("rollouts", (*_ROUND, ("prompt_id", V), ("sample_idx", INT), ("text", V), ("n_tokens", INT),
                       ("finish_reason", V), ("checkpoint", V)), "rollouts.parquet"),
    Table("rubrics", _RUBRIC, "rubrics.parquet"),
    Table("criteria", _CRITERIA, "criteria.parquet"),
    Table("rubrics_clean", (*_RUBRIC, ("raw_rubric_id", V), ("degenerate", B), ("flags", "VARCHAR[]")),
          "rubrics_clean.parquet"),
    Table("criteria_clean", _CRITERIA, "criteria_clean.parquet"),
    Table("merges", (*_GROUP, ("raw_rubric_id", V), ("rubric_id", V), ("kind", V),
                     ("similarity", D), ("kept_criterion_id", V), ("kept_points", INT), ("kept_text", V),
                     ("dropped_criterion_id", V), ("dropped_points", INT), ("dropped_text", V)), "merges.parquet"),
    Table("judgements", (*_GROUP, ("rubric_id", V), ("source", V), ("answer_idx", INT),
                         ("pool_position", INT), ("criterion_id", V), ("verdict", B)), "judgements.parquet"),
    Table("rewards", (*_GROUP, ("sample_idx", INT), ("rubric_id", V), ("score", INT),
                      ("max_score", INT), ("reward", D), ("status", V), ("error_stage", V), ("error_type", V)),
          "rewards.parquet"),
    Table("rubric_failures", (*_GROUP, ("stage", V), ("error_type", V), ("message", V)),
          "rubric_failures.parquet"),
    # qa.json and diagnostics.json of each round, kept whole so new metrics need no schema change.
    Table("round_metrics", (*_ROUND, ("qa", "JSON"), ("diagnostics", "JSON"))),
)
BY_NAME = {t.name: t for t in TABLES}
# column → expression used where a file lacks the column; `messages` (the chat as JSON) is absent from older runs
DEFAULTS = {"group_id": "prompt_id", "messages": "NULL"}
# The call cache is shared by successive runs and content-addressed, so it is keyed by call_id, not run_id.
LLM_CALLS = Table("llm_calls", (("call_id", V), ("role", V), ("model", V), ("template", V), ("request", V),
                                ("response", V), ("content", V), ("finish_reason", V), ("status", V),
                                ("error_type", V), ("error", V), ("latency_s", D), ("tokens_in", INT),
                                ("tokens_out", INT), ("attempts", INT), ("created_at", D)), CALL_CACHE, "cache")
# External rubric sets (`ropd import rubrics`), one row per criterion, keyed by the imported file's sha256.
# Points are kept exactly as given (HealthBench's may be negative); `flags` says what ROPD's schema would refuse.
IMPORTED = Table("imported_criteria", (
    ("file_sha256", V), ("source_file", V), ("format", V), ("imported_at", "TIMESTAMP"), ("rubric_line", INT),
    ("line", INT), ("prompt_id", V), ("question", V), ("messages", V), ("rubric_id", V), ("round", INT),
    ("position", INT), ("criterion_id", V), ("category", V), ("points", D), ("text", V), ("tags", "VARCHAR[]"),
    ("flags", "VARCHAR[]"), ("rubric_flags", "VARCHAR[]")), None, "import")

_KEY = "run_id, round, group_id, rubric_id"  # a group is judged against one rubric; prompt_id rides along
_CATEGORY_PASS = ",\n       ".join(
    f"sum(n_pass) FILTER (WHERE category = '{c.value}') / sum(n_answers) FILTER (WHERE category = '{c.value}')"
    f" AS pass_{c.value}" for c in Category)

VIEWS: tuple[str, ...] = (
    # The rubric each group was judged with: the one its rewards name; before verification (or when judging
    # failed), the QA output where QA ran, else the raw rubric. A raw rubric carries its group's QA flags, so
    # a degenerate rubric verified in its raw form (the pipeline's `verify_raw`) still shows as flagged.
    """CREATE OR REPLACE VIEW rubrics_final AS
WITH cand AS (
  SELECT run_id, round, group_id, prompt_id, rubric_id, raw_rubric_id, n_criteria, max_score,
         rubricator_fingerprint, rubric_json, degenerate, flags, true AS is_clean
  FROM rubrics_clean
  UNION ALL
  SELECT r.run_id, r.round, r.group_id, r.prompt_id, r.rubric_id, r.rubric_id, r.n_criteria, r.max_score,
         r.rubricator_fingerprint, r.rubric_json, coalesce(k.degenerate, false), coalesce(k.flags, []::VARCHAR[]),
         false
  FROM rubrics r LEFT JOIN rubrics_clean k USING (run_id, round, group_id)
), used AS (
  SELECT DISTINCT run_id, round, group_id, rubric_id FROM rewards WHERE rubric_id IS NOT NULL
)
SELECT * EXCLUDE (pick) FROM (
  SELECT c.*, row_number() OVER (PARTITION BY c.run_id, c.round, c.group_id
                                 ORDER BY u.rubric_id IS NOT NULL DESC, c.is_clean DESC) AS pick
  FROM cand c LEFT JOIN used u USING (run_id, round, group_id, rubric_id))
WHERE pick = 1""",
    """CREATE OR REPLACE VIEW criteria_final AS
SELECT c.* FROM criteria_clean c
WHERE EXISTS (SELECT 1 FROM rubrics_final f WHERE f.is_clean AND f.run_id = c.run_id AND f.round = c.round
              AND f.group_id = c.group_id AND f.rubric_id = c.rubric_id)
UNION ALL
SELECT c.* FROM criteria c
WHERE EXISTS (SELECT 1 FROM rubrics_final f WHERE NOT f.is_clean AND f.run_id = c.run_id AND f.round = c.round
              AND f.group_id = c.group_id AND f.rubric_id = c.rubric_id)""",
    f"""CREATE OR REPLACE VIEW rubric_criteria AS
SELECT r.run_id, r.round, r.group_id, r.prompt_id, r.rubric_id, r.raw_rubric_id, r.n_criteria, r.max_score,
       r.degenerate, r.flags, r.is_clean, c.position, c.criterion_id, c.category, c.points, c.text
FROM rubrics_final r JOIN criteria_final c USING ({_KEY})""",
    # One verdict per (group, pool answer, criterion), with the criterion's category, points and text: the
    # join every per-criterion figure (pass rate by category, fail rates, the verdict matrix) starts from.
    f"""CREATE OR REPLACE VIEW criterion_verdicts AS
SELECT j.run_id, j.round, j.group_id, j.prompt_id, j.rubric_id, j.source, j.answer_idx, j.pool_position,
       c.position, j.criterion_id, c.category, c.points, c.text, j.verdict
FROM judgements j JOIN criteria_final c USING ({_KEY}, criterion_id)""",
    """CREATE OR REPLACE VIEW verdict_matrix AS
SELECT run_id, round, group_id, any_value(prompt_id) AS prompt_id, rubric_id, source, answer_idx, pool_position,
       list(verdict ORDER BY position) AS verdicts,
       list(criterion_id ORDER BY position) AS criterion_ids,
       coalesce(sum(points) FILTER (WHERE verdict), 0) AS score,
       sum(points) AS max_score,
       coalesce(sum(points) FILTER (WHERE verdict), 0) / sum(points) AS weighted
FROM criterion_verdicts
GROUP BY run_id, round, group_id, rubric_id, source, answer_idx, pool_position""",
    """CREATE OR REPLACE VIEW rollout_rewards AS
SELECT run_id, round, prompt_id, sample_idx, w.group_id, o.text, o.n_tokens, o.finish_reason, o.checkpoint,
       w.rubric_id, w.score, w.max_score, w.reward, w.status, w.error_stage, w.error_type
FROM rollouts o FULL JOIN rewards w USING (run_id, round, prompt_id, sample_idx)""",
    """CREATE OR REPLACE VIEW criterion_stats AS
SELECT run_id, round, group_id, prompt_id, rubric_id, position, criterion_id, category, points, text,
       count(*) AS n_answers,
       count(*) FILTER (WHERE verdict) AS n_pass,
       1 - avg(verdict::INT) AS fail_rate,
       avg(verdict::INT) FILTER (WHERE source = 'teacher') AS teacher_pass_rate,
       avg(verdict::INT) FILTER (WHERE source = 'student') AS student_pass_rate,
       bool_and(verdict) OR NOT bool_or(verdict) AS non_discriminative
FROM criterion_verdicts
GROUP BY ALL""",
    f"""CREATE OR REPLACE VIEW rubric_health AS
WITH s AS (
  SELECT {_KEY},
         avg(weighted) FILTER (WHERE source = 'teacher') AS teacher_mean,
         min(weighted) FILTER (WHERE source = 'teacher') AS teacher_min,
         avg(weighted) FILTER (WHERE source = 'student') AS student_mean,
         max(weighted) FILTER (WHERE source = 'student') AS student_max
  FROM verdict_matrix GROUP BY ALL
), d AS (
  SELECT {_KEY}, count(*) FILTER (WHERE non_discriminative) AS non_discriminative
  FROM criterion_stats GROUP BY ALL
), m AS (  -- per group: a degenerate rubric verified raw still had its merges
  SELECT run_id, round, group_id, count(*) AS merges FROM merges GROUP BY ALL
)
SELECT r.run_id, r.round, r.group_id, r.prompt_id, r.rubric_id, r.n_criteria, r.max_score, r.degenerate, r.flags,
       coalesce(m.merges, 0) AS merges, d.non_discriminative,
       s.teacher_mean, s.student_mean, s.teacher_min, s.student_max,
       s.teacher_min < s.student_max AS teacher_below_student,
       len(r.flags) + coalesce(d.non_discriminative, 0) + coalesce((s.teacher_min < s.student_max)::INT, 0)
         AS issues
FROM rubrics_final r LEFT JOIN m USING (run_id, round, group_id) LEFT JOIN d USING ({_KEY})
  LEFT JOIN s USING ({_KEY})""",
    """CREATE OR REPLACE VIEW imported_rubrics AS
SELECT file_sha256, any_value(source_file) AS source_file, any_value(format) AS format,
       any_value(imported_at) AS imported_at, rubric_line, prompt_id, rubric_id, any_value(round) AS round,
       any_value(question) AS question, count(*) AS n_criteria, sum(points) FILTER (WHERE points > 0) AS max_score,
       list_sort(list_distinct(flatten(list(list_concat(flags, rubric_flags))))) AS flags
FROM imported_criteria GROUP BY file_sha256, rubric_line, prompt_id, rubric_id""",
    # Mined (as judged) and imported criteria side by side, so one query compares a run with an external set.
    """CREATE OR REPLACE VIEW rubric_library AS
SELECT 'mined' AS origin, run_id AS set_id, round, prompt_id, rubric_id, position, criterion_id, category,
       points::DOUBLE AS points, text, flags, NULL::VARCHAR AS source_file, NULL::INTEGER AS line
FROM rubric_criteria
UNION ALL
SELECT 'imported', file_sha256, round, prompt_id, rubric_id, position, criterion_id, category, points, text,
       list_concat(flags, rubric_flags), source_file, line
FROM imported_criteria""",
    f"""CREATE OR REPLACE VIEW round_trends AS
WITH rounds AS (
  SELECT run_id, round FROM rewards UNION SELECT run_id, round FROM rubrics_final
  UNION SELECT run_id, round FROM round_metrics
), rw AS (
  SELECT run_id, round, count(DISTINCT prompt_id) AS prompts, count(DISTINCT group_id) AS groups,
         count(*) AS rollouts, avg(reward) FILTER (WHERE status = 'ok') AS mean_reward,
         count(DISTINCT group_id) FILTER (WHERE status = 'judge_error') / count(DISTINCT group_id)
           AS judge_error_rate,
         count(DISTINCT group_id) FILTER (WHERE status = 'masked') / count(DISTINCT group_id) AS masked_rate
  FROM rewards GROUP BY ALL
), rh AS (
  SELECT run_id, round, count(*) AS rubrics, avg(n_criteria) AS mean_criteria,
         count(*) FILTER (WHERE degenerate) AS degenerate, count(*) FILTER (WHERE len(flags) > 0) AS flagged,
         sum(merges) AS merges, avg(teacher_mean) AS teacher_mean,
         avg(teacher_below_student::INT) AS teacher_below_student_rate
  FROM rubric_health GROUP BY ALL
), cs AS (
  SELECT run_id, round, avg(non_discriminative::INT) AS non_discriminative_rate,
       {_CATEGORY_PASS}
  FROM criterion_stats GROUP BY ALL
)
SELECT run_id, round, rw.prompts, rw.groups, rw.rollouts, rw.mean_reward, rh.teacher_mean,
       TRY_CAST(mt.diagnostics->>'reward_auc' AS DOUBLE) AS reward_auc, rw.judge_error_rate, rw.masked_rate,
       rh.rubrics, rh.mean_criteria, rh.merges, rh.flagged, rh.degenerate, rh.teacher_below_student_rate,
       cs.* EXCLUDE (run_id, round)
FROM rounds LEFT JOIN rw USING (run_id, round) LEFT JOIN rh USING (run_id, round)
  LEFT JOIN cs USING (run_id, round) LEFT JOIN round_metrics mt USING (run_id, round)
ORDER BY run_id, round""",
)


def check_version(con: duckdb.DuckDBPyConnection) -> None:
    """A store built by another version of this schema is rebuilt, not half-read."""
    try:
        found = con.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
    except duckdb.CatalogException as e:
        raise StoreError("not a ropd store (it has no store_meta table); run `ropd store rebuild`") from e
    if found is not None and found[0] != SCHEMA_VERSION:
        raise StoreError(f"the store has schema version {found[0]}, this ropd writes {SCHEMA_VERSION}; "
                         "run `ropd store rebuild`")


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table (if missing) and (re)create every view, then stamp the schema version."""
    con.execute("CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    check_version(con)
    for t in (*TABLES, LLM_CALLS, IMPORTED):
        con.execute(t.ddl())
    for view in VIEWS:
        con.execute(view)
    con.execute("INSERT OR REPLACE INTO store_meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])


def round_key(round_dir: Path) -> tuple[str, int]:
    """(run_id, round) of a `data/runs/<run_id>/round_<r>` directory."""
    m = ROUND_DIR.match(round_dir.name)
    if m is None:
        raise StoreError(f"{round_dir}: not a round directory (expected a name like round_0)")
    return round_dir.parent.name, int(m.group(1))


def round_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and ROUND_DIR.match(p.name))


def load_run(con: duckdb.DuckDBPyConnection, run_dir: Path, rounds: Iterable[int] | None = None) -> dict[str, int]:
    """Replace everything the database holds for this run by what its files hold now (only `rounds`, where
    given), in one transaction.

    Deleting then inserting makes ingest idempotent, and a round removed from disk leaves the store too.
    """
    run_id = run_dir.name
    counts: Counter[str] = Counter()
    con.begin()
    try:
        for t in TABLES:
            con.execute(f"DELETE FROM {t.name} WHERE run_id = ?", [run_id])
        for t in TABLES:
            if t.scope == "run":
                counts[t.name] += _insert_parquet(con, t, run_dir / t.file, run_id, None)
        for rdir in round_dirs(run_dir):
            if rounds is None or round_key(rdir)[1] in rounds:
                counts.update(load_round(con, rdir))
        if (run_dir / CALL_CACHE).exists():
            counts[LLM_CALLS.name] += load_calls(con, run_dir / CALL_CACHE)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return dict(counts)


def load_round(con: duckdb.DuckDBPyConnection, round_dir: Path, only: Iterable[str] | None = None) -> dict[str, int]:
    """Insert one round's files (those of `only`, by table name, or all); missing files are skipped."""
    run_id, rnd = round_key(round_dir)
    names = set(only) if only is not None else {t.name for t in TABLES if t.scope == "round"}
    counts = {t.name: _insert_parquet(con, t, round_dir / t.file, run_id, rnd)
              for t in TABLES if t.name in names and t.file is not None}
    if "round_metrics" in names:
        docs = [_read_json(round_dir / f) for f in ("qa.json", "diagnostics.json")]
        if any(d is not None for d in docs):
            con.execute("INSERT INTO round_metrics VALUES (?, ?, ?, ?)", [run_id, rnd, *docs])
            counts["round_metrics"] = 1
    return counts


def _read_json(path: Path) -> str | None:
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: not valid JSON ({e})") from e
    return text


def _insert_parquet(con: duckdb.DuckDBPyConnection, table: Table, path: Path, run_id: str, rnd: int | None) -> int:
    """Insert the contract columns of one parquet file (extra columns are ignored), casting to the table's types."""
    if not path.exists():
        return 0
    try:
        if pq.read_metadata(path).num_rows == 0:  # an empty frame may have been written with no columns at all
            return 0
    except Exception as e:
        raise StoreError(f"{path}: not a readable parquet file ({e})") from e
    src = str(path)
    have = {row[0] for row in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [src]).fetchall()}
    missing = [c for c in table.required_columns if c not in have]
    if missing:
        raise StoreError(f"{path}: missing column(s) {', '.join(missing)}; "
                         f"a {table.name} file needs {', '.join(table.required_columns)}")
    if rnd is not None:
        bad = con.execute("SELECT DISTINCT round FROM read_parquet(?) WHERE round IS DISTINCT FROM ?",
                          [src, rnd]).fetchall()
        if bad:
            raise StoreError(f"{path}: column round holds {sorted(r[0] for r in bad)!r}, but the file sits in "
                             f"{path.parent.name}")
    types = dict(table.columns)
    select = ", ".join(f"CAST({c if c in have else DEFAULTS[c]} AS {types[c]}) AS {c}" for c in table.file_columns)
    try:
        row = con.execute(f"INSERT INTO {table.name} BY NAME SELECT ?::VARCHAR AS run_id, {select} "
                          "FROM read_parquet(?)", [run_id, src]).fetchone()
    except duckdb.Error as e:  # a value that does not cast (conversion), or a type that cannot (binder)
        raise StoreError(f"{path}: {_bad_column(table, src)}: {e}") from e
    return int(row[0]) if row else 0


def _bad_column(table: Table, src: str) -> str:
    """Name the first column whose values do not cast to the contract type (only called after a failure).

    Runs on a connection of its own: the caller's transaction is aborted by the failed insert.
    """
    types = dict(table.columns)
    with duckdb.connect() as con:
        for col in table.required_columns:
            try:
                n = con.execute(f"SELECT count(*) FROM read_parquet(?) WHERE {col} IS NOT NULL "
                                f"AND TRY_CAST({col} AS {types[col]}) IS NULL", [src]).fetchone()
            except duckdb.Error:
                return f"column {col} cannot be read as {types[col]}"
            if n and n[0]:
                return f"column {col} has {n[0]} value(s) that are not {types[col]}"
    return "a column has values of the wrong type"


def load_import(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Replace one imported rubric set (a `data/imports/*.parquet`) in the store; its file time is the import time."""
    try:
        pq.read_metadata(path)
    except Exception as e:
        raise StoreError(f"{path}: not a readable parquet file ({e})") from e
    src = str(path)
    have = {row[0] for row in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [src]).fetchall()}
    needed = [c for c, _ in IMPORTED.columns if c != "imported_at"]
    if missing := [c for c in needed if c not in have]:
        raise StoreError(f"{path}: missing column(s) {', '.join(missing)}; not a file `ropd import rubrics` wrote")
    select = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in IMPORTED.columns if c != "imported_at")
    try:
        con.execute("DELETE FROM imported_criteria WHERE file_sha256 IN "
                    "(SELECT DISTINCT file_sha256 FROM read_parquet(?))", [src])
        row = con.execute(f"INSERT INTO imported_criteria BY NAME SELECT to_timestamp(?) AS imported_at, {select} "
                          "FROM read_parquet(?)", [path.stat().st_mtime, src]).fetchone()
    except duckdb.Error as e:
        raise StoreError(f"{path}: {e}") from e
    return int(row[0]) if row else 0


def load_calls(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Upsert the llm_calls of a SQLite call cache, read-only so a run writing it is not disturbed."""
    cols = ", ".join(c for c, _ in LLM_CALLS.columns)
    try:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            calls = pd.read_sql_query(f"SELECT {cols} FROM llm_calls", src)
        finally:
            src.close()
    except (sqlite3.Error, pd.errors.DatabaseError) as e:
        raise StoreError(f"{path}: cannot read llm_calls ({e})") from e
    if calls.empty:
        return 0
    con.register("_calls", calls)
    try:
        con.execute("DELETE FROM llm_calls WHERE call_id IN (SELECT call_id FROM _calls)")
        casts = ", ".join(f"CAST({c} AS {t})" for c, t in LLM_CALLS.columns)
        con.execute(f"INSERT INTO llm_calls SELECT {casts} FROM _calls")
    finally:
        con.unregister("_calls")
    return len(calls)
