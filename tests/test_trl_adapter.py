"""`trl.GRPOTrainer` runs with the ROPD reward, judged inline by the local constrained backend, and leaves
a staged round's contract tables per step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from transformers import TrainerState
from trl import GRPOConfig, GRPOTrainer
from typer.testing import CliRunner

from ropd.cli import app
from ropd.config import EngineConfig, RoleConfig
from ropd.integrations.trl import RopdReward
from ropd.llm.cache import CallCache
from ropd.llm.local import LocalChat
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.store.export import ExportFormat, export_run
from ropd.store.rescore import RescoreOptions, rescore
from ropd.store.tables import TABLES, create_schema, load_round, round_dirs
from ropd.testing.server import Fail, ScriptedServer
from tests.conftest import FAST, run

STEP_TABLES = ("rollouts", "rubrics", "criteria", "judgements", "rewards", "rubric_failures")


def assert_round_contract(rd: Path) -> dict[str, int]:
    """A step's directory passes the checks ingest applies to a staged round (`load_round`: required columns,
    the round matching the directory, every value casting to the contract type), and holds every column of
    each table's spec, not just the required ones; returns the rows per table."""
    assert {p.name for p in rd.iterdir()} == {f"{t}.parquet" for t in STEP_TABLES} | {"diagnostics.json"}
    for t in TABLES:
        if t.name in STEP_TABLES:
            assert set(t.file_columns) <= set(pq.read_schema(rd / str(t.file)).names), t.name
    con = duckdb.connect()
    try:
        create_schema(con)
        return load_round(con, rd)
    finally:
        con.close()


def test_grpo_trainer_two_steps_with_local_judge(smollm2_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    questions = ["What is 3 times 12?", "What is 45 plus 17?"]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "prompt_id": f"p{i}"}
                            for i, q in enumerate(questions)])
    teacher = {"p0": ["3 * 12 = 36\nAnswer: 36"], "p1": ["45 + 17 = 62\nAnswer: 62"]}
    cfg = RoleConfig(provider="local", model="smollm2", model_path=str(smollm2_dir), api_key_env=None,
                     max_tokens=220)
    run_dir = tmp_path / "runs" / "trl-run"
    cache = CallCache(run_dir / "llm_cache.sqlite")
    reward = RopdReward(teacher, LocalChat("rubricator", cfg.model_copy(update={"temperature": 0.7}), cache=cache),
                        LocalChat("verifier", cfg, cache=cache), EngineConfig(min_criteria=4, max_criteria=4,
                                                                              max_criterion_chars=40),
                        run_dir=run_dir)
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, beta=0.0, num_generations=2,
                      per_device_train_batch_size=2, max_completion_length=16, max_steps=2, logging_steps=1,
                      report_to="none", save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=str(smollm2_dir), reward_funcs=[reward], args=args, train_dataset=ds)
    trainer.train()
    cache.close()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2 and reward.calls == 2
    for h in logs:
        assert 0.0 <= h["rewards/ropd_rubric/mean"] <= 1.0
        assert h["ropd/judge_failure_rate"] == 0.0
        assert any(k.startswith("ropd/pass_rate/") for k in h)

    # one round per training step, each a valid staged round, its rewards the ones TRL logged
    assert [d.name for d in round_dirs(run_dir)] == ["round_0", "round_1"]
    for rd, h in zip(round_dirs(run_dir), logs, strict=True):
        rows = assert_round_contract(rd)
        assert rows["rollouts"] == rows["rewards"] == 2 and rows["rubrics"] == 1 and rows["criteria"] == 4
        assert rows["judgements"] == 4 * (2 + 1)  # 4 criteria × (2 rollouts + 1 teacher answer)
        assert json.loads((rd / "diagnostics.json").read_text())["n_groups_ok"] == 1
        stored = [r["reward"] for r in pq.read_table(rd / "rewards.parquet").to_pylist()]
        assert sum(stored) / len(stored) == pytest.approx(h["rewards/ropd_rubric/mean"], abs=1e-6)
    # the store, the audit and the report read the TRL run as they read a pipeline run
    db, cli = tmp_path / "ropd.duckdb", CliRunner()
    monkeypatch.chdir(tmp_path)  # no shared data/cache/llm_calls.sqlite here: ingest finds the run's own cache
    for args in (["store", "ingest", str(run_dir), "--db", str(db)],
                 ["audit", "worst-rubrics", "--db", str(db), "--format", "json"],
                 ["audit", "trends", "--db", str(db), "--format", "json"],
                 ["report", str(run_dir)]):
        result = cli.invoke(app, args, env={"COLUMNS": "120"})
        assert result.exit_code == 0, (args, result.output)
        if "trends" in args:
            trends = json.loads(result.stdout)
            assert [t["round"] for t in trends] == [0, 1] and all(t["rollouts"] == 2 for t in trends)
    con = duckdb.connect(str(db), read_only=True)
    try:
        used = {r[0] for r in con.execute("SELECT DISTINCT prompt_id FROM rollouts").fetchall()}
        assert {r[0] for r in con.execute("SELECT prompt_id FROM prompts").fetchall()} == used
        assert con.execute("SELECT count(*) FROM llm_calls").fetchone()[0] >= 4  # a rubric and a verify per step
    finally:
        con.close()
    page = (run_dir / "report.html").read_text()
    assert all(pid in page for pid in used) and "trl-run" in page


def test_failed_group_returns_none(tmp_path: Path) -> None:
    """Directly, through the stand-in server: a failed group's rollouts get None, not 0."""
    with ScriptedServer() as srv:
        srv.push(Fail(400), kind="verify")
        cfg = RoleConfig(base_url=srv.base_url, api_key_env=None, **FAST)
        rub, ver = OpenAICompatChat("rubricator", cfg), OpenAICompatChat("verifier", cfg)
        reward = RopdReward({"a": ["1 + 2 = 3\nAnswer: 3"], "b": ["2 + 2 = 4\nAnswer: 4"]}, rub, ver)
        metrics: dict[str, float] = {}
        prompts = [[{"role": "user", "content": "What is 1 plus 2?"}]] * 2 + [
            [{"role": "user", "content": "What is 2 plus 2?"}]] * 2
        completions = [[{"role": "assistant", "content": t}] for t in ["1 + 2 = 3\nAnswer: 3", "Answer: 4",
                                                                        "2 + 2 = 4\nAnswer: 4", "5"]]
        out = run(reward(prompts, completions, log_metric=metrics.__setitem__, prompt_id=["a", "a", "b", "b"]),
                  rub, ver)
    assert metrics["ropd/judge_failure_rate"] == 0.5
    failed = [i for i in range(4) if out[i] is None]
    assert failed in ([0, 1], [2, 3])  # one whole group masked, the other scored
    assert all(isinstance(out[i], float) for i in range(4) if i not in failed)


def test_step_tables_replay_from_the_call_cache(tmp_path: Path) -> None:
    """A rerun of a step (a resumed training: a new reward, the same trainer step) sends no judge call and
    rewrites byte-identical tables; a step twice in one process is refused; a rubric failure is recorded."""
    run_dir = tmp_path / "runs" / "trl-direct"
    teacher = {"a": ["1 + 2 = 3\nAnswer: 3"], "b": ["2 + 2 = 4\nAnswer: 4"]}
    prompts = [[{"role": "user", "content": "What is 1 plus 2?"}]] * 2 + [
        [{"role": "user", "content": "What is 2 plus 2?"}]] * 2
    completions = [[{"role": "assistant", "content": t}] for t in ["1 + 2 = 3\nAnswer: 3", "Answer: 4",
                                                                    "2 + 2 = 4\nAnswer: 4", "5"]]
    columns = {"prompt_id": ["a", "a", "b", "b"], "reference_answer": ["3", "3", "4", "4"],
               "completion_ids": [[1, 2, 3], [4], [5, 6], [7]]}

    def step(srv: ScriptedServer, at: int, reward: RopdReward | None = None, texts: list[Any] = completions
             ) -> RopdReward:
        cache = CallCache(run_dir / "llm_cache.sqlite")
        cfg = RoleConfig(base_url=srv.base_url, api_key_env=None, **FAST)
        rub, ver = OpenAICompatChat("rubricator", cfg, cache=cache), OpenAICompatChat("verifier", cfg, cache=cache)
        reward = reward or RopdReward(teacher, rub, ver, run_dir=run_dir)
        reward.rubricator, reward.verifier = rub, ver
        try:
            run(reward(prompts, texts, trainer_state=TrainerState(global_step=at), **columns), rub, ver)
        finally:
            cache.close()
        return reward

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
                if p.is_file() and not p.name.startswith("llm_cache")}

    with ScriptedServer() as srv:
        first = step(srv, 3)
        paid, before = srv.served(), snapshot()
        with pytest.raises(ValueError, match="called twice at step 3"):
            step(srv, 3, first)
        step(srv, 3)  # a fresh process resuming at step 3
        assert srv.served() == paid and snapshot() == before
        srv.push(Fail(400), kind="rubric")
        step(srv, 4, texts=[[{"role": "assistant", "content": f"Answer: {i}"}] for i in range(4)])  # new calls
    rows = assert_round_contract(run_dir / "round_3")
    assert rows["rollouts"] == rows["rewards"] == 4 and rows["rubrics"] == 2 and rows["rubric_failures"] == 0
    rollouts = pq.read_table(run_dir / "round_3" / "rollouts.parquet").to_pylist()
    assert [(r["prompt_id"], r["sample_idx"], r["n_tokens"]) for r in rollouts] == [
        ("a", 0, 3), ("a", 1, 1), ("b", 0, 2), ("b", 1, 1)]
    assert {r["checkpoint"] for r in rollouts} == {"checkpoint-3"}
    assert json.loads((run_dir / "round_3" / "diagnostics.json").read_text())["auc_n"] == 4  # references came along
    rows = assert_round_contract(run_dir / "round_4")
    assert rows["rubrics"] == rows["rubric_failures"] == 1
    failure = pq.read_table(run_dir / "round_4" / "rubric_failures.parquet").to_pylist()[0]
    statuses = {(r["prompt_id"], r["status"], r["error_stage"])
                for r in pq.read_table(run_dir / "round_4" / "rewards.parquet").to_pylist()}
    assert failure["stage"] == "rubric" and (failure["prompt_id"], "judge_error", "rubric") in statuses
    teacher_rows = pq.read_table(run_dir / "teacher.parquet").to_pylist()
    assert [(r["prompt_id"], r["answer_idx"]) for r in teacher_rows] == [("a", 0), ("b", 0)]
    # the dataset leaves, and the what-if rescoring reads it, as for a staged run
    prov = export_run(run_dir, tmp_path / "export", ExportFormat.jsonl, with_verdicts=True)
    assert prov.rounds == [3, 4] and prov.rows["rubrics"] == 3 and prov.qa.rubric_failures == {"http": 1}
    unchanged = rescore(run_dir, 3, RescoreOptions())
    assert [d for p in unchanged.prompts for d in p.deltas] == [0.0] * 4
