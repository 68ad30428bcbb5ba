"""Every `method:` runs one tiny round through the same pipeline, evaluation and report."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from ropd.params import Params
from ropd.pipeline.stages import RunPaths, run_all
from ropd.testing.server import ScriptedServer
from tests.tiny import tiny_params


@pytest.fixture(scope="module")
def project(module_tmp: Path, smollm2_dir: Path) -> Iterator[tuple[Path, ScriptedServer]]:
    root = module_tmp
    shutil.copytree(smollm2_dir, root / "models" / smollm2_dir.name, copy_function=os.link)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with ScriptedServer() as srv:
            yield root, srv
    finally:
        os.chdir(cwd)


def run_method(root: Path, srv: ScriptedServer, method: str, extra: dict | None = None) -> RunPaths:
    data = tiny_params(srv.base_url, root / "models", {"run_id": method, "method": method,
                                                       "eval.rubric_prompts": 2, **(extra or {})})
    data["teacher_sft"] = {"n_prompts": 4, "epochs": 1, "batch_size": 4, "max_length": 128}
    data["sft"] = {"lr": 1e-4, "batch_size": 4, "max_length": 128}
    data["lopd"] = {"lr": 1e-4, "batch_size": 2, "max_completion_length": 8}
    (root / f"{method}.yaml").write_text(yaml.safe_dump(data))
    params = Params.model_validate(data)
    run_all(params)
    return RunPaths(params)


def weights_changed(paths: RunPaths) -> bool:
    before = load_file(paths.checkpoint(0) / "model.safetensors")
    after = load_file(paths.checkpoint(1) / "model.safetensors")
    return any(not before[k].equal(after[k]) for k in before)


def check_common(paths: RunPaths, method: str) -> dict:
    rd = paths.round(0)
    metrics = json.loads((rd / "train_metrics.json").read_text())
    assert metrics["method"] == method
    ev = json.loads((rd / "eval.json").read_text())
    assert ev["n_problems"] == 2 and ev["correct"] + ev["wrong"] + ev["unparseable"] + ev["no_reference"] == 2
    assert 0.0 <= ev["accuracy"] <= 1.0
    assert ev["rubric_prompts"] == 2 and ev["rubric_judge_error_rate"] == 0.0
    assert ev["mean_rubric_score"] is not None  # every method is scored by the same rubric view
    history = json.loads(paths.history.read_text())
    assert history[0]["accuracy"] == ev["accuracy"]
    assert paths.report.is_file()
    return metrics


def test_ropd_round(project: tuple[Path, ScriptedServer]) -> None:
    root, srv = project
    paths = run_method(root, srv, "ropd")
    check_common(paths, "ropd")
    rewards = pd.read_parquet(paths.round(0) / "rewards.parquet")
    assert len(rewards) == 4 and (rewards["status"] == "ok").all() and rewards["rubric_id"].notna().all()
    assert not (paths.params.teacher_sft_dir / "model.safetensors").exists()  # not needed, not built


def test_tjudge_round(project: tuple[Path, ScriptedServer]) -> None:
    root, srv = project
    before = srv.received("tjudge")
    paths = run_method(root, srv, "tjudge")
    check_common(paths, "tjudge")
    assert srv.received("tjudge") - before == 2  # one scalar-scoring call per prompt group
    rd = paths.round(0)
    assert pd.read_parquet(rd / "rubrics.parquet").empty  # no rubric is mined
    rewards = pd.read_parquet(rd / "rewards.parquet")
    assert len(rewards) == 4 and (rewards["status"] == "ok").all() and (rewards["max_score"] == 10).all()
    assert (rewards["reward"] == rewards["score"] / 10).all()
    assert json.loads((rd / "diagnostics.json").read_text())["method"] == "tjudge"


def test_static_rubric_round_verifies_against_an_exported_set(project: tuple[Path, ScriptedServer]) -> None:
    """The ROPD run's round-0 rubrics, exported and read back as a fixed set: the same rollouts (same
    checkpoint and seed) against the same clean rubrics give the same rewards, with no rubricator call."""
    from ropd.pipeline.judging import cost_plan
    from ropd.pipeline.stages import run_stage
    from ropd.store.export import ExportFormat, export_run

    root, srv = project
    mined = RunPaths(Params.model_validate(yaml.safe_load((root / "ropd.yaml").read_text())))
    export_run(mined.run, root / "exported", ExportFormat.healthbench)
    overrides = {"static_rubric": {"file": str(root / "exported" / "healthbench.jsonl")}}
    data = {**tiny_params(srv.base_url, root / "models", {"run_id": "static", "method": "static_rubric",
                                                         "eval.rubric_prompts": 2}), **overrides}
    params = Params.model_validate(data)
    for name in ("demo_data", "prepare", "teacher", "judge_check"):
        run_stage(params, name)
    run_stage(params, "rollout", 0)
    asked = srv.received("rubric")
    run_stage(params, "mine", 0)
    assert srv.received("rubric") == asked  # the rubrics come from the file
    for name in ("qa", "verify", "train", "evaluate"):
        run_stage(params, name, 0)
    run_stage(params, "summarize")
    run_stage(params, "report")
    paths = RunPaths(params)
    assert {stage for stage, r, *_ in cost_plan(params) if r is not None} == {"verify"}  # no rubricator call to pay
    metrics = check_common(paths, "static_rubric")
    rd, md = paths.round(0), mined.round(0)
    rubrics = pd.read_parquet(rd / "rubrics.parquet")
    assert (rubrics["rubricator_fingerprint"].str.startswith("static:healthbench:")).all()
    assert set(rubrics["rubric_id"]) == set(pd.read_parquet(md / "rubrics_clean.parquet")["rubric_id"])
    cols = ["prompt_id", "sample_idx", "reward", "status"]
    got = pd.read_parquet(rd / "rewards.parquet")[cols].sort_values(cols[:2]).reset_index(drop=True)
    want = pd.read_parquet(md / "rewards.parquet")[cols].sort_values(cols[:2]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    assert (got["status"] == "ok").all() and metrics["steps"] == 1 and weights_changed(paths)
    # A set that misses one of the round's prompts is refused by name, not trained as a zero reward.
    lines = (root / "exported" / "healthbench.jsonl").read_text().splitlines()
    (root / "short.jsonl").write_text(lines[0] + "\n")
    missing = json.loads(lines[1])["prompt_id"]
    short = Params.model_validate({**data, "static_rubric": {"file": str(root / "short.jsonl")}})
    with pytest.raises(ValueError, match=f"round 0: static_rubric.file .*short.jsonl has no rubric for 1 of the "
                                         f"round's 2 prompts \\({missing}\\)"):
        run_stage(short, "mine", 0)
    # A penalising criterion (HealthBench's negative points) is refused for training unless a mapping is chosen.
    row = json.loads(lines[0]) | {"prompt_id": missing}
    row["rubrics"].append({"criterion": "Recommends skipping the check of the result", "points": -3, "tags": []})
    (root / "negative.jsonl").write_text(lines[0] + "\n" + json.dumps(row) + "\n")
    negative = {**data, "static_rubric": {"file": str(root / "negative.jsonl")}}
    with pytest.raises(ValueError, match=r"(?s)static_rubric.file: .*negative.jsonl: line 2: criterion .* "
                                         r"negative_points.* choose a points mapping"):
        run_stage(Params.model_validate(negative), "mine", 0)
    negative["static_rubric"]["mapping"] = "drop_negative"
    run_stage(Params.model_validate(negative), "mine", 0)
    kept = pd.read_parquet(rd / "criteria.parquet").query("prompt_id == @missing")["text"].tolist()
    assert kept == [c["criterion"] for c in json.loads(lines[0])["rubrics"]]  # the penalising one left out
    # A hand-written HealthBench file: no prompt_id (matched by the conversation), no category tags (the
    # default category), and a penalising criterion brought in by the abs_capped mapping.
    prompts = pd.read_parquet(paths.prompts).query("round == 0")
    criteria = ["Gives exactly one final answer", "Uses every quantity in the question",
                "Gets the arithmetic right", "Shows at least two steps of working", "Stays under 120 words"]
    (root / "handwritten.jsonl").write_text("".join(json.dumps({
        "prompt": json.loads(m), "ideal_completions_data": None, "example_tags": ["theme:arithmetic"],
        "rubrics": [*({"criterion": c, "points": 5 - i, "tags": ["axis:accuracy"]} for i, c in enumerate(criteria)),
                    {"criterion": "Hedges with maybe or probably", "points": -2, "tags": []}]}) + "\n"
        for m in prompts["messages"]))
    run_stage(Params.model_validate({**data, "static_rubric": {
        "file": str(root / "handwritten.jsonl"), "mapping": "abs_capped", "default_category": "task_fulfilment"}}),
        "mine", 0)
    mined_by_hand = pd.read_parquet(rd / "criteria.parquet")
    assert set(mined_by_hand["prompt_id"]) == set(prompts["prompt_id"])  # matched by the conversation's content id
    assert (mined_by_hand["text"] == "Avoids the following: Hedges with maybe or probably").sum() == len(prompts)
    assert mined_by_hand["points"].between(1, 5).all() and (mined_by_hand["category"] == "task_fulfilment").all()


def test_sft_round(project: tuple[Path, ScriptedServer]) -> None:
    """SFT on the round's teacher answers; run with `tracking.backend: mlflow`, so the TRL trainer reports to
    the same (SQLite) store as the run, as a child run of it."""
    root, srv = project
    store = f"sqlite:///{root / 'mlflow.db'}"
    paths = run_method(root, srv, "sft", {"tracking": {"backend": "mlflow", "uri": store, "experiment": "ropd",
                                                       "dvclive_dir": "dvclive"}})
    metrics = check_common(paths, "sft")
    assert pd.read_parquet(paths.round(0) / "rollouts.parquet").empty  # SFT samples nothing on-policy
    state = json.loads((paths.checkpoint(1) / "baseline_state.json").read_text())
    teacher = pd.read_parquet(paths.teacher)
    round0 = pd.read_parquet(paths.prompts).query("round == 0")["prompt_id"]
    assert state["examples"] == teacher["prompt_id"].isin(round0).sum()  # every teacher answer of the round
    assert metrics["loss"] > 0 and weights_changed(paths)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("ropd").experiment_id
    [run] = client.search_runs([exp], "tags.`ropd.run_id` = 'sft'")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [0]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"sft.report.html", "round_0"}
    [child] = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert child.data.tags["ropd.round"] == "0" and child.data.params["learning_rate"] == "0.0001"
    assert client.get_metric_history(child.info.run_id, "loss")  # the trainer's own per-step logs


def test_lopd_round_with_a_white_box_teacher(project: tuple[Path, ScriptedServer],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Run with `tracking.backend: wandb` offline, so the run and the TRL trainer's round land in W&B's files."""
    from tests.wandb_file import offline_runs

    root, srv = project
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(root / "wb"))
    (root / "wb").mkdir()
    paths = run_method(root, srv, "lopd", {"tracking": {"backend": "wandb", "experiment": "ropd"}})
    metrics = check_common(paths, "lopd")
    by_job = {run.job_type: run for run in offline_runs(root / "wb" / "wandb")}
    assert set(by_job) == {"ropd", "train"} and {r.group for r in by_job.values()} == {"lopd"}
    run = by_job["ropd"]
    assert run.run_id == "lopd" and run.config["method"] == "lopd"
    accuracy = json.loads((paths.round(0) / "eval.json").read_text())["accuracy"]
    assert [(h["_step"], h["accuracy"]) for h in run.history] == [(0, accuracy)]
    assert {"lopd.report.html", "round_0/qa.md"} <= run.files
    trainer = by_job["train"]
    assert trainer.config["learning_rate"] == 1e-4 and any("train/loss" in h for h in trainer.history)
    teacher_dir = paths.params.teacher_sft_dir
    manifest = json.loads((teacher_dir / "ropd_manifest.json").read_text())
    assert manifest["trained_by"] == "sft" and len(manifest["inputs"]) == 16
    state = json.loads((paths.checkpoint(1) / "baseline_state.json").read_text())
    assert state["teacher"] == str(teacher_dir)
    assert metrics["steps"] == 1 and weights_changed(paths)
    mtime = (teacher_dir / "model.safetensors").stat().st_mtime_ns
    from ropd.pipeline.teacher import teacher_sft

    teacher_sft(paths.params)  # same inputs: the teacher is not retrained
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_eval_cli_reproduces_the_stage_and_names_a_bad_checkpoint(project: tuple[Path, ScriptedServer]) -> None:
    from typer.testing import CliRunner

    from ropd.cli import app

    root, _ = project
    paths = RunPaths(Params.model_validate(yaml.safe_load((root / "sft.yaml").read_text())))
    res = CliRunner().invoke(app, ["eval", str(paths.checkpoint(1)), "--params", "sft.yaml", "--out", "e.json"])
    assert res.exit_code == 0, res.output
    got, stage = json.loads((root / "e.json").read_text()), json.loads((paths.round(0) / "eval.json").read_text())
    assert {k: got[k] for k in ("accuracy", "correct", "mean_rubric_score")} == \
        {k: stage[k] for k in ("accuracy", "correct", "mean_rubric_score")}  # seeded: the same samples and calls
    (root / "broken").mkdir()
    res = CliRunner().invoke(app, ["eval", "broken", "--params", "sft.yaml"])
    assert res.exit_code == 2 and "broken" in res.output and "cannot load the policy" in res.output
