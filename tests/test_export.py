"""`ropd export`: the three formats, byte-for-byte determinism, and the refusals (unfinished, locked, no round)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ropd.cli import app
from ropd.store.export import MANIFEST, ExportError, ExportFormat, export_run
from ropd.store.tables import create_schema, load_run


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def judged_criteria(run_dir: Path) -> list[tuple[str, int, str, str, int, str]]:
    """What the store says each group was judged with: (prompt, round, rubric, category, points, text) in order."""
    con = duckdb.connect()
    create_schema(con)
    load_run(con, run_dir)
    rows = con.execute("SELECT prompt_id, round, rubric_id, category, points, text FROM rubric_criteria "
                       "ORDER BY round, group_id, position").fetchall()
    con.close()
    return rows


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_exports_are_byte_identical(fmt: ExportFormat, finished_run: Path, tmp_path: Path) -> None:
    export_run(finished_run, tmp_path / "a", fmt, with_verdicts=True)
    export_run(finished_run, tmp_path / "b", fmt, with_verdicts=True)
    export_run(finished_run, tmp_path / "b", fmt, with_verdicts=True)  # over an earlier export: replaced
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a == b and MANIFEST in a and len(a) > 1
    manifest = json.loads(a[MANIFEST])
    assert manifest["files"] == {k: v for k, v in manifest["files"].items() if k in a} and "imported_at" not in a


def test_hf_loads_and_its_card_says_where_it_came_from(finished_run: Path, tmp_path: Path) -> None:
    prov = export_run(finished_run, tmp_path / "hf", ExportFormat.hf, rounds=[0])
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert len(ds) == prov.rows["rubrics"] == 4 and "pool" not in ds.column_names
    pencils = next(r for r in ds if r["prompt_id"] == "p-pencils")
    assert pencils["flags"] == ["too_many_heavy", "quotes_reference"] and pencils["merges"] == 2
    assert [c["criterion_id"] for c in pencils["criteria"]] == ["c1", "c3", "c4", "c6"]  # after QA's merges
    assert pencils["messages"] == [{"role": "user", "content": pencils["question"]}]
    card = (tmp_path / "hf" / "README.md").read_text()
    for fact in ("| run | `demo`, round(s) 0 |", "`rubricator-fp`", "`teacher-fp`", "quotes_reference: 1",
                 "exact: 1, near: 1", "| licence | unknown |", "verifier | unknown", "prompt templates | unknown"):
        assert fact in card, fact


def test_the_card_finds_template_versions_in_the_shared_call_cache(finished_run: Path, tmp_path: Path) -> None:
    """A pipeline run has no cache of its own: the versions are those of the calls the shared cache holds under
    its run id, and another run's calls do not leak in."""
    import sqlite3

    from ropd.llm.cache import CallCache

    shared = tmp_path / "llm_calls.sqlite"
    CallCache(shared).close()
    with sqlite3.connect(shared) as con:
        con.executemany("INSERT INTO llm_calls (call_id, role, model, template, request, status, created_at, run_id) "
                        "VALUES (?, ?, 'm', ?, '{}', 'ok', 0, ?)",
                        [("a", "rubricator", "rubricator/v9", "demo"), ("b", "verifier", "verifier/v7", "demo"),
                         ("c", "verifier", "verifier/v1", "another-run")])
    export_run(finished_run, tmp_path / "hf", ExportFormat.hf, calls=shared)
    assert "| prompt templates | rubricator: rubricator/v9; verifier: verifier/v7 |" in \
        (tmp_path / "hf" / "README.md").read_text()


def test_healthbench_rows_hold_the_judged_criteria(finished_run: Path, tmp_path: Path) -> None:
    export_run(finished_run, tmp_path / "hb", ExportFormat.healthbench, with_verdicts=True)
    rows = [json.loads(line) for line in (tmp_path / "hb" / "healthbench.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and all(set(r) == {"prompt_id", "prompt", "rubrics", "example_tags", "answers"}
                                  for r in rows)
    assert all(m["role"] == "user" and m["content"] for r in rows for m in r["prompt"])
    got = []
    for r in rows:
        tags = {t.split(":", 1)[0]: t.split(":", 1)[1] for t in r["example_tags"] if not t.startswith("qa_flag")}
        for item in r["rubrics"]:
            assert set(item) == {"criterion", "points", "tags"}
            t = dict(x.split(":", 1) for x in item["tags"])
            assert t["round"] == tags["round"] and t["rubric"] == tags["rubric"]
            got.append((r["prompt_id"], int(t["round"]), t["rubric"], t["category"], item["points"], item["criterion"]))
        assert all(len(a["criteria_met"]) == len(r["rubrics"]) for a in r["answers"])
    assert got == judged_criteria(finished_run)


def test_jsonl_tables(finished_run: Path, tmp_path: Path) -> None:
    prov = export_run(finished_run, tmp_path / "j", ExportFormat.jsonl, with_verdicts=True)
    read = {n: [json.loads(x) for x in (tmp_path / "j" / f"{n}.jsonl").read_text().splitlines()]
            for n in ("prompts", "rubrics", "answers", "verdicts")}
    assert [len(read[n]) for n in ("prompts", "rubrics", "answers", "verdicts")] == [
        prov.rows[k] for k in ("prompts", "criteria", "answers", "verdicts")]
    assert len(read["rubrics"]) == len(judged_criteria(finished_run))
    teacher = [a for a in read["answers"] if a["source"] == "teacher"]
    assert teacher and all(a["reward"] is None and a["text"] for a in teacher)


def test_a_chat_and_non_ascii_text_come_out_as_given(finished_run: Path, tmp_path: Path) -> None:
    """A prompt's chat (prompts.messages, JSON) is exported as its messages; text is UTF-8, one object a line."""
    run = tmp_path / "runs" / "demo"
    shutil.copytree(finished_run, run)
    chat = [{"role": "system", "content": "Réponds en français — brièvement."}, {"role": "user", "content": "2+2 ?"}]
    prompts = pq.read_table(run / "prompts.parquet").to_pylist()  # `messages` is all null there: typed anew
    prompts[0]["messages"] = json.dumps(chat)
    pq.write_table(pa.Table.from_pylist(prompts), run / "prompts.parquet")
    pid = prompts[0]["prompt_id"]
    export_run(run, tmp_path / "j", ExportFormat.jsonl)
    raw = (tmp_path / "j" / "prompts.jsonl").read_bytes()
    assert "français —".encode() in raw and raw.endswith(b"}\n")
    lines = raw.decode().splitlines()
    assert [json.loads(x)["messages"] for x in lines if json.loads(x)["prompt_id"] == pid] == [chat]
    export_run(run, tmp_path / "hb", ExportFormat.healthbench)
    rows = [json.loads(x) for x in (tmp_path / "hb" / "healthbench.jsonl").read_text().splitlines()]
    assert all(r["prompt"] == chat for r in rows if r["prompt_id"] == pid) and any(r["prompt_id"] == pid for r in rows)
    export_run(run, tmp_path / "hf", ExportFormat.hf)
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert all(r["messages"] == chat for r in ds if r["prompt_id"] == pid)


def test_refuses_unfinished_missing_or_locked_runs(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "demo"
    shutil.copytree(finished_run, run)
    with pytest.raises(ExportError, match=r"run demo has no round 5 \(its rounds: 0, 1\)"):
        export_run(run, tmp_path / "out", ExportFormat.jsonl, rounds=[5])
    (run / "round_2").mkdir()
    (run / "round_2" / "rollouts.parquet").write_bytes(b"")
    with pytest.raises(ExportError, match=r"round 2 is not finished .*no rewards.parquet.*finished rounds: 0, 1"):
        export_run(run, tmp_path / "out", ExportFormat.jsonl)
    assert export_run(run, tmp_path / "out", ExportFormat.jsonl, rounds=[0, 1]).rounds == [0, 1]
    # A pipeline stage in another process holds the run lock: the export waits for nothing and says so.
    lock = run.parent / ".locks" / "demo.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, b'pid 4242 since noon')\nprint('held', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ExportError, match=r"run demo is being written: .*in use by pid 4242"):
            export_run(run, tmp_path / "out2", ExportFormat.jsonl, rounds=[0])
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "out2").exists()


def test_cli_export_and_its_refusals(finished_run: Path, tmp_path: Path) -> None:
    runs = str(finished_run.parent)
    result = CliRunner().invoke(app, ["export", "demo", "--runs", runs, "--format", "healthbench", "--round", "1",
                                      "--out", str(tmp_path / "hb")])
    assert result.exit_code == 0 and "3 rubrics" in result.output, result.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["export", "demo", "--runs", runs, "-f", "jsonl", "--out", str(tmp_path / "mine")])
    assert result.exit_code == 1 and "is not an earlier export" in result.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    result = CliRunner().invoke(app, ["export", "nope", "--runs", runs, "-f", "jsonl", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "no run 'nope'" in result.output
