"""The DuckDB store: idempotent ingest, rebuild equal to ingest, views that agree with the parquet files."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ropd.io import atomic_write_parquet
from ropd.rubric.engine import GroupResult, GroupStatus
from ropd.rubric.pool import PoolItem, Source
from ropd.rubric.tables import GroupMeta, result_frames
from ropd.store.db import Store
from ropd.store.qa import QAConfig, run_qa
from ropd.store.tables import BY_NAME, LLM_CALLS, TABLES, StoreError
from tests.test_store_fixtures import RUN_ID, good_rubric, write_run


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_run(root)
    return root


def table_rows(db: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t.name: sorted(con.execute(f"SELECT * FROM {t.name}").fetchall(), key=repr)
                for t in (*TABLES, LLM_CALLS)}
    finally:
        con.close()


def parquet_rows(run_dir: Path, table: str) -> int:
    spec = BY_NAME[table]
    files = [run_dir / spec.file] if spec.scope == "run" else sorted(run_dir.glob(f"round_*/{spec.file}"))
    return sum(len(pd.read_parquet(f)) for f in files if f.exists())


def test_ingest_is_idempotent_and_matches_parquet(runs_root: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "ropd.duckdb")
    first = store.ingest_run(runs_root / RUN_ID)
    before = table_rows(store.path)
    second = store.ingest_run(runs_root / RUN_ID)
    assert first == second
    assert table_rows(store.path) == before
    for t in TABLES:
        if t.file is not None:
            assert len(before[t.name]) == parquet_rows(runs_root / RUN_ID, t.name), t.name
            assert len(set(map(repr, before[t.name]))) == len(before[t.name]), t.name
    assert len(before["round_metrics"]) == 2 and len(before["llm_calls"]) == 3
    assert len(before["rubric_failures"]) == 1 and len(before["merges"]) == 3


def test_rebuild_equals_ingest(runs_root: Path, tmp_path: Path) -> None:
    ingested, rebuilt = Store(tmp_path / "a.duckdb"), Store(tmp_path / "b.duckdb")
    ingested.ingest_run(runs_root / RUN_ID)
    counts = rebuilt.rebuild(runs_root)
    assert set(counts) == {RUN_ID} and counts[RUN_ID]["judgements"] > 0
    assert table_rows(rebuilt.path) == table_rows(ingested.path)
    rebuilt.rebuild(runs_root)  # over an existing store: replaced, not appended to
    assert table_rows(rebuilt.path) == table_rows(ingested.path)
    assert not list(tmp_path.glob(".b.duckdb.*"))  # no temp file left behind


def test_reingest_follows_the_files(runs_root: Path, tmp_path: Path) -> None:
    """Parquet is the system of record: a changed round, a removed round and a copied run all show up."""
    run = tmp_path / "runs" / "copy"
    shutil.copytree(runs_root / RUN_ID, run)
    store = Store(tmp_path / "s.duckdb")
    store.ingest_run(runs_root / RUN_ID)
    store.ingest_run(run)
    rewards = pd.read_parquet(run / "round_0" / "rewards.parquet")
    atomic_write_parquet(rewards.iloc[:3], run / "round_0" / "rewards.parquet")
    shutil.rmtree(run / "round_1")
    store.ingest_run(run)
    con = store.connect()
    try:
        got = dict(con.execute("SELECT run_id, count(*) FROM rewards GROUP BY 1").fetchall())
        rounds = con.execute("SELECT DISTINCT round FROM rubrics WHERE run_id = 'copy'").fetchall()
    finally:
        con.close()
    assert got == {RUN_ID: 32, "copy": 3}
    assert rounds == [(0,)]


def test_views_agree_with_rewards(runs_root: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.ingest_run(runs_root / RUN_ID)
    con = store.connect()
    try:
        # The verdict matrix recomputes every ok student's reward from the verdicts and criteria weights.
        mismatched = con.execute("""
            SELECT count(*) FROM rewards w JOIN verdict_matrix v
              ON v.run_id = w.run_id AND v.round = w.round AND v.prompt_id = w.prompt_id AND v.source = 'student'
             AND v.answer_idx = w.sample_idx
            WHERE w.status = 'ok' AND (abs(v.weighted - w.reward) > 1e-9 OR v.score != w.score)""").fetchone()[0]
        ok = con.execute("SELECT count(*) FROM rewards WHERE status = 'ok'").fetchone()[0]
        matched = con.execute("SELECT count(*) FROM verdict_matrix WHERE source = 'student'").fetchone()[0]
        clean = con.execute("SELECT count(*) FROM criteria_clean").fetchone()[0]
        rubric_criteria = con.execute("SELECT count(*) FILTER (WHERE is_clean), count(*) FILTER (WHERE NOT is_clean) "
                                      "FROM rubric_criteria").fetchone()
        rollouts = con.execute("SELECT count(*), count(text), count(reward) FROM rollout_rewards").fetchone()
        pencils = con.execute("SELECT issues, flags, merges FROM rubric_health "
                              "WHERE prompt_id = 'p-pencils' AND round = 0").fetchone()
    finally:
        con.close()
    assert mismatched == 0 and matched == ok == 28
    assert rubric_criteria == (clean - 3, 4)  # the degenerate group was judged with its raw 4 criteria
    assert rollouts == (32, 32, 28)  # the failed group's 4 rollouts have no reward
    assert pencils[1] == ["too_many_heavy", "quotes_reference"] and pencils[2] == 2 and pencils[0] >= 2


def test_a_degenerate_rubric_verified_raw_is_audited_as_judged(runs_root: Path, tmp_path: Path) -> None:
    """QA left p-cookies (round 1) with 3 criteria; verification used the raw rubric, as `verify_raw` does."""
    store = Store(tmp_path / "s.duckdb")
    store.ingest_run(runs_root / RUN_ID)
    con = store.connect()
    key = "run_id = 'run-a' AND round = 1 AND group_id = 'p-cookies'"
    try:
        final = con.execute(f"SELECT rubric_id, raw_rubric_id, n_criteria, degenerate, flags, is_clean "
                            f"FROM rubrics_final WHERE {key}").fetchall()
        clean_id = con.execute(f"SELECT rubric_id FROM rubrics_clean WHERE {key}").fetchone()[0]
        matrix = con.execute(f"SELECT count(*), min(len(verdicts)) FROM verdict_matrix WHERE {key}").fetchone()
        health = con.execute(f"SELECT merges, flags FROM rubric_health WHERE {key}").fetchone()
    finally:
        con.close()
    [(rid, raw_id, n, degenerate, flags, is_clean)] = final
    assert rid == raw_id != clean_id and n == 4 and degenerate and flags == ["too_few_criteria"] and not is_clean
    assert matrix == (6, 4)  # 2 teacher + 4 student answers, each with 4 verdicts
    assert health == (1, ["too_few_criteria"])


def test_read_only_connection_cannot_write_or_touch_files(runs_root: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.ingest_run(runs_root / RUN_ID)
    con = store.connect(read_only=True)
    try:
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("DELETE FROM rewards")
        with pytest.raises(duckdb.Error, match="disabled"):
            con.execute(f"SELECT * FROM read_parquet('{runs_root / RUN_ID / 'prompts.parquet'}')")
        with pytest.raises(duckdb.Error, match=r"locked|disabled"):
            con.execute("SET enable_external_access = true")
    finally:
        con.close()
    with pytest.raises(StoreError, match="ropd store rebuild"):
        Store(tmp_path / "missing.duckdb").connect()


def test_schema_version_mismatch_asks_for_rebuild(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    store.connect(read_only=False).close()
    con = duckdb.connect(str(store.path))
    con.execute("UPDATE store_meta SET value = '0' WHERE key = 'schema_version'")
    con.close()
    for read_only in (False, True):
        with pytest.raises(StoreError, match=r"schema version 0.*rebuild"):
            store.connect(read_only=read_only)
    duckdb.connect(str(tmp_path / "other.duckdb")).close()
    with pytest.raises(StoreError, match="not a ropd store"):
        Store(tmp_path / "other.duckdb").connect()
    (tmp_path / "text.duckdb").write_text("hello")
    with pytest.raises(StoreError, match="cannot open the store"):
        Store(tmp_path / "text.duckdb").connect()


def broken_run(tmp_path: Path, runs_root: Path, frame_edit) -> tuple[Store, Path]:
    run = tmp_path / "runs" / "broken"
    shutil.copytree(runs_root / RUN_ID, run)
    path = run / "round_0" / "rewards.parquet"
    atomic_write_parquet(frame_edit(pd.read_parquet(path)), path)
    return Store(tmp_path / "s.duckdb"), run


@pytest.mark.parametrize(("edit", "message"), [
    (lambda df: df.drop(columns=["status"]), r"rewards\.parquet: missing column\(s\) status"),
    (lambda df: df.assign(sample_idx="first"),
     r"rewards\.parquet: column sample_idx has 16 value\(s\) that are not INTEGER"),
    (lambda df: df.assign(round=5), r"rewards\.parquet: column round holds \[5\], but the file sits in round_0"),
])
def test_malformed_file_is_named_and_store_untouched(runs_root: Path, tmp_path: Path, edit, message: str) -> None:
    store, run = broken_run(tmp_path, runs_root, edit)
    store.ingest_run(runs_root / RUN_ID)
    before = table_rows(store.path)
    with pytest.raises(StoreError, match=message):
        store.ingest_run(run)
    assert table_rows(store.path) == before  # the failed ingest rolled back


def test_empty_frames_without_columns_are_skipped(runs_root: Path, tmp_path: Path) -> None:
    """result_frames writes an all-failed round's tables as frames with no columns at all."""
    store, run = broken_run(tmp_path, runs_root, lambda df: pd.DataFrame())
    counts = store.ingest_run(run)
    assert counts["rewards"] == 16  # round_1 only


def test_several_groups_of_one_prompt_stay_apart(tmp_path: Path) -> None:
    """The no-shared-rubric ablation: one group per rollout, here with identical rubric content (same rubric_id)."""
    run = tmp_path / "runs" / "ablation"
    rdir = run / "round_0"
    rubric = good_rubric()
    metas = [GroupMeta(group_id=f"p#{i}", prompt_id="p", sample_indices=[i]) for i in range(2)]
    rows = [[True, True, False, False, True], [False, True, True, True, True]]
    scores = [sum(c.points for c, v in zip(rubric.criteria, row, strict=True) if v) / rubric.max_score for row in rows]
    results = [GroupResult(group_id=m.group_id, status=GroupStatus.OK, rubric=rubric,
                           pool=[PoolItem(source=Source.STUDENT, index=0, text=f"answer {i}")], verdicts=[row],
                           student_verdicts=[row], student_scores=[s], rewards=[s])
               for i, (m, row, s) in enumerate(zip(metas, rows, scores, strict=True))]
    frames = result_frames(results, run_id="ablation", round=0, rubricator_fingerprint="fp", metas=metas)
    for name, df in frames.items():
        atomic_write_parquet(df, rdir / f"{name}.parquet")
    atomic_write_parquet(pd.DataFrame({"run_id": "ablation", "round": 0, "prompt_id": "p", "sample_idx": [0, 1],
                                       "text": ["answer 0", "answer 1"], "n_tokens": 2, "finish_reason": "stop",
                                       "checkpoint": "c"}), rdir / "rollouts.parquet")
    run_qa(rdir, None, QAConfig())
    assert sorted(pd.read_parquet(rdir / "rubrics_clean.parquet")["group_id"]) == ["p#0", "p#1"]
    store = Store(tmp_path / "s.duckdb")
    store.ingest_run(run)
    con = store.connect()
    try:
        matrix = con.execute("SELECT group_id, weighted FROM verdict_matrix ORDER BY group_id").fetchall()
        n_criteria = con.execute("SELECT count(*) FROM rubric_criteria").fetchone()[0]
        rewards = con.execute("SELECT group_id, reward FROM rollout_rewards ORDER BY sample_idx").fetchall()
    finally:
        con.close()
    assert matrix == [("p#0", pytest.approx(scores[0])), ("p#1", pytest.approx(scores[1]))]
    assert n_criteria == 10 and rewards == [("p#0", scores[0]), ("p#1", scores[1])]
