"""`ropd store`, `ropd audit` and `ropd report` through typer, registered exactly as ropd/cli.py registers them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ropd.store.audit import CANNED, canned, prompt_story
from ropd.store.cli import audit, report, store_app
from ropd.store.db import Store
from ropd.store.terminal import fit_table, short_ids
from tests.test_store_fixtures import RUN_ID, write_run

app = typer.Typer()
app.add_typer(store_app, name="store")
app.command("audit")(audit)
app.command("report")(report)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("audit")
    write_run(root / "runs")
    db = root / "ropd.duckdb"
    result = CliRunner().invoke(app, ["store", "rebuild", "--runs", str(root / "runs"), "--db", str(db),
                                      "--calls", str(root / "runs" / RUN_ID / "llm_cache.sqlite")])
    assert result.exit_code == 0, result.output
    return root, db


def cli(db: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--db", str(db)], env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_rebuild_and_ingest_print_counts(env: tuple[Path, Path]) -> None:
    root, db = env
    code, out = cli(db, "store", "ingest", str(root / "runs" / RUN_ID))
    assert code == 0 and RUN_ID in out and "judgements" in out
    code, out = cli(db, "store", "rebuild", "--runs", str(root / "nowhere"))
    assert code == 1 and "no such runs directory" in out


def test_worst_rubrics_table_and_formats(env: tuple[Path, Path]) -> None:
    _, db = env
    code, out = cli(db, "audit")
    assert code == 0 and "worst-rubrics" in out and "too_many_heavy, quotes_reference" in out
    code, out = cli(db, "audit", "worst-rubrics", "--format", "json", "--limit", "3")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 3
    assert rows[0]["issues"] >= rows[1]["issues"] >= rows[2]["issues"]
    assert {"run_id", "round", "prompt_id", "group_id", "issues", "flags"} <= set(rows[0])
    code, out = cli(db, "audit", "worst-rubrics", "--format", "csv", "--round", "1")
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {r["round"] for r in parsed} == {"1"} and len(parsed) == 3


def test_failed_criteria_and_trends(env: tuple[Path, Path]) -> None:
    _, db = env
    rows = json.loads(cli(db, "audit", "failed-criteria", "-f", "json")[1])
    assert rows[0]["fail_rate"] >= rows[-1]["fail_rate"] and len(rows) == 20
    trends = json.loads(cli(db, "audit", "trends", "-f", "json", "--run", RUN_ID)[1])
    assert [t["round"] for t in trends] == [0, 1]
    assert trends[0]["merges"] == 2 and trends[1]["judge_error_rate"] == 0.25 and trends[0]["reward_auc"] == 1.0
    assert json.loads(cli(db, "audit", "trends", "-f", "json", "--run", "other")[1]) == []


def test_one_prompts_story(env: tuple[Path, Path]) -> None:
    _, db = env
    code, out = cli(db, "audit", "prompt", "p-pencils", "-f", "json")
    story = json.loads(out)
    assert code == 0
    assert list(story) == ["prompt", "teacher answers", "rollouts", "rubric", "merges", "verdict matrix"]
    assert story["prompt"][0]["reference_answer"] == "27" and len(story["teacher answers"]) == 2
    assert len(story["rollouts"]) == 8 and len(story["merges"]) == 2
    matrix = story["verdict matrix"]
    assert {m["source"] for m in matrix} == {"teacher", "student"} and all(isinstance(v, bool) for v in
                                                                           matrix[0]["verdicts"])
    code, out = cli(db, "audit", "prompt", "p-essay", "--round", "1")
    assert code == 0 and "failures" in out and "judge_error" in out
    code, out = cli(db, "audit", "prompt", "p-pencils", "-f", "csv", "--round", "0")
    assert code == 0 and out.count("run_id,") == 6  # one CSV block per section
    assert cli(db, "audit", "prompt")[0] == 1
    code, out = cli(db, "audit", "prompt", "nope")
    assert code == 1 and "'nope' is not in the store" in out


def test_sql_with_bound_parameters(env: tuple[Path, Path]) -> None:
    _, db = env
    code, out = cli(db, "audit", "--sql", "SELECT prompt_id, count(*) AS n FROM rubric_criteria "
                    "WHERE round = $r AND prompt_id = $p GROUP BY ALL", "-p", "r=0", "-p", "p=p-pencils", "-f", "json")
    assert code == 0 and json.loads(out) == [{"prompt_id": "p-pencils", "n": 4}]
    # A value is bound, never spliced into the SQL: a quote in it is just a character.
    code, out = cli(db, "audit", "--sql", "SELECT count(*) AS n FROM prompts WHERE prompt_id = $p",
                    "-p", "p=x' OR '1'='1", "-f", "json")
    assert code == 0 and json.loads(out) == [{"n": 0}]


@pytest.mark.parametrize(("sql", "message"), [
    ("SELEC 1", "Parser Error: syntax error"),
    ("SELECT * FROM no_such_table", "Catalog Error"),
    ("DELETE FROM rewards", "read-only"),
    ("COPY rewards TO '/tmp/ropd-leak.csv'", "disabled by configuration"),
    ("SELECT $missing", "parameters"),
])
def test_bad_queries_print_duckdbs_message(env: tuple[Path, Path], sql: str, message: str) -> None:
    _, db = env
    code, out = cli(db, "audit", "--sql", sql)
    assert code == 1 and message in out and "Traceback" not in out


def test_missing_store_and_unknown_view(tmp_path: Path, env: tuple[Path, Path]) -> None:
    code, out = cli(tmp_path / "none.duckdb", "audit")
    assert code == 1 and "ropd store rebuild" in out
    code, out = cli(env[1], "audit", "best-rubrics")
    assert code == 1 and "unknown view 'best-rubrics'" in out


def test_report_command(env: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = env
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", RUN_ID, "--runs", str(root / "runs"), "--out", str(out)])
    assert result.exit_code == 0 and "wrote" in result.output and out.stat().st_size > 10_000
    result = CliRunner().invoke(app, ["report", "nope", "--runs", str(root / "runs")])
    assert result.exit_code == 1 and "no run 'nope'" in result.output


def test_tables_fit_80_columns(env: tuple[Path, Path]) -> None:
    _, db = env
    for args in (("audit", "worst-rubrics"), ("audit", "failed-criteria"), ("audit", "trends"),
                 ("audit", "prompt", "p-pencils"), ("audit", "prompt", "p-essay"),
                 ("audit", "--sql", "SELECT * FROM rubric_health"), ("audit", "imports"), ("store", "ingest",
                                                                                      str(env[0] / "runs" / RUN_ID))):
        result = CliRunner().invoke(app, [*args, "--db", str(db)], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= 80, "\n".join(lines)
        assert "…" not in result.output  # neither a header nor a cell of the fixture is cut
    # The 16-hex rubric id shows as 8 characters in the table; csv keeps every column, ids whole.
    out = cli(db, "audit", "prompt", "p-pencils", "--round", "0")[1]
    rubric_id = json.loads(cli(db, "audit", "prompt", "p-pencils", "--round", "0", "-f", "json")[1])["rubric"][0][
        "rubric_id"]
    assert len(rubric_id) == 16 and f"rubric_id={rubric_id[:8]}" in out and rubric_id not in out
    header = next(csv.reader(io.StringIO(cli(db, "audit", "worst-rubrics", "-f", "csv")[1])))
    assert len(header) == 12 and "n_criteria" in header and "teacher_below_student" in header


def test_every_header_is_a_whole_column_name(env: tuple[Path, Path]) -> None:
    _, db = env
    con = Store(db).connect()
    try:
        results = [canned(con, v) for v in CANNED] + prompt_story(con, "p-pencils")
    finally:
        con.close()
    for r in results:
        table = fit_table(r.title, r.columns, r.rows, 80, r.table)
        headers = [str(c.header).replace("_\n", "_") for c in table.columns]
        assert headers and all(h in r.columns for h in headers), (r.title, headers)
        if r.title in ("rubric", "failed-criteria"):  # the columns that matter survive the squeeze
            assert {"criterion_id", "text"} <= set(headers)


def test_short_ids_stay_unique_and_prompt_prefixes_resolve(env: tuple[Path, Path]) -> None:
    assert short_ids(["abcdef0123", "abcdef0199", "abcdef0123"]) == ["abcdef012", "abcdef019", "abcdef012"]
    assert short_ids(["0123456789ab", "fedcba987654"]) == ["01234567", "fedcba98"]
    _, db = env
    code, out = cli(db, "audit", "prompt", "p-pen", "-f", "json")
    assert code == 0 and json.loads(out)["prompt"][0]["reference_answer"] == "27"
    code, out = cli(db, "audit", "prompt", "p-")
    assert code == 1 and "ambiguous" in out and "p-cookies" in out
