"""The whole pipeline at tiny settings, through `dvc repro` and through the Prefect flow.

The student is the real SmolLM2; the judge roles point at the stand-in OpenAI-compatible server (a real
HTTP server on 127.0.0.1), which keeps the run to about a minute.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ropd.params import load_params, round_items
from ropd.pipeline.stages import round_steps
from ropd.testing.server import ScriptedServer
from ropd.tracking import HEADLINE
from tests.tiny import BIN, dvc, make_project, project_env


@pytest.fixture(scope="module")
def judge() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


def check_outputs(proj: Path) -> None:
    run = proj / "data" / "runs" / "tiny"
    rd = run / "round_0"
    rewards = pd.read_parquet(rd / "rewards.parquet")
    assert len(rewards) == 4 and (rewards["status"] == "ok").all() and rewards["reward"].between(0, 1).all()
    assert len(pd.read_parquet(rd / "rollouts.parquet")) == 4
    assert (run / "checkpoints" / "round_1" / "model.safetensors").is_file()
    assert json.loads((rd / "train_metrics.json").read_text())["steps"] == 1
    assert 0.0 <= json.loads((rd / "eval.json").read_text())["accuracy"] <= 1.0
    assert (proj / "data" / "runs" / "tiny.report.html").is_file()
    history = json.loads((proj / "data" / "runs" / "tiny.history.json").read_text())
    assert history[0]["round"] == 0 and "mean_reward" in history[0]


def test_dvc_repro_end_to_end(tmp_path: Path, judge: ScriptedServer, smollm2_dir: Path) -> None:
    proj = make_project(tmp_path, judge.base_url, smollm2_dir.parent,
                        {"data.pool_prompts": 4, "judge_check": {"prompts": 2}, "checkpoints": {"keep_every": 2}})
    dvc(proj, "repro")
    check_outputs(proj)
    run = proj / "data" / "runs" / "tiny"
    assert json.loads((run / "judge_check.json").read_text())["status"] == "PASS"  # the clean rule judge
    assert "Judge check: PASS" in (proj / "data" / "runs" / "tiny.report.html").read_text()
    assert "up to date" in dvc(proj, "status")
    again = dvc(proj, "repro")
    assert "didn't change" in again or "up to date" in again
    assert "Running stage" not in again
    metrics = dvc(proj, "metrics", "show", "--json")
    assert "accuracy" in metrics and "mean_reward" in metrics
    dvc(proj, "plots", "show", "--out", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").is_file()
    # A DVC experiment, as a DVC user runs one on a committed pipeline (data/runs/ git-ignored, as in the
    # repository): `dvc exp show` lists the headline figures of the baseline and of the experiment, which
    # are git-tracked DVCLive files, and `dvc plots diff` draws both.
    (proj / ".gitignore").write_text((proj / ".gitignore").read_text() + "data/runs/\n")
    subprocess.run("git add -A && git commit -qm 'one round'", shell=True, cwd=proj, check=True)
    out = dvc(proj, "exp", "run", "-S", "grpo.lr=2e-6", "--name", "lr-2e-6")
    assert set(re.findall(r"Running stage '([^']+)'", out)) == {"train@0", "evaluate@0", "summarize", "report"}
    shown = {(row["name"] or row["rev"]): row for base in json.loads(dvc(proj, "exp", "show", "--json"))
             for row in [base, *(e["revs"][0] for e in base.get("experiments") or [])]}
    assert {"workspace", "lr-2e-6"} <= set(shown) and len(shown) == 3, list(shown)
    for name, row in shown.items():
        figures = row["data"]["metrics"]["dvclive/metrics.json"]["data"]
        assert {"mean_reward", "accuracy"} <= set(figures) <= {*HEADLINE, "step"}, (name, figures)
    assert shown["lr-2e-6"]["data"]["params"]["params.yaml"]["data"]["grpo"]["lr"] == 2e-6
    drawn = json.loads(dvc(proj, "plots", "diff", "HEAD", "lr-2e-6", "--json"))
    assert not drawn.get("errors"), drawn["errors"]
    assert {"HEAD", "lr-2e-6"} <= set(drawn["data"]["accuracy"][0]["revisions"])
    # Extend the finished run by one round, and re-check the judge on fewer prompts: only the new round, the
    # check (whose gate file keeps its bytes, so no round reruns) and the summary run.
    lock = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    # DVC tracks each policy by its manifest; the weights are in no DVC store (checkpoints.py).
    cache_mb = sum(f.stat().st_size for f in (proj / ".dvc" / "cache").rglob("*") if f.is_file()) / 2**20
    assert cache_mb < 5, f"the DVC cache holds {cache_mb:.0f} MB: weights went into it"
    before = {f: f.stat().st_mtime_ns for f in [run / "prompts.parquet", run / "teacher.parquet",
                                                *(run / "round_0").iterdir(), *(run / "checkpoints").glob("*.json")]}
    proc = subprocess.run([str(BIN / "ropd"), "rounds", "2"], cwd=proj, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["judge_check"]["prompts"] = 1
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(proj, "repro")
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert ran == {f"{s}@1" for s in ("rollout", "mine", "qa", "verify", "train", "evaluate")} | {
        "judge_check", "summarize", "report"}, ran
    assert json.loads((run / "judge_check.json").read_text())["n_prompts"] == 1
    after = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    rerun = ("summarize", "report", "judge_check")
    assert {k: v for k, v in after.items() if k in lock and k not in rerun} == \
        {k: v for k, v in lock.items() if k not in rerun}
    assert {f: f.stat().st_mtime_ns for f in before} == before
    assert len(pd.read_parquet(run / "round_1" / "rewards.parquet")) == 4
    # keep_every 2: round 1's weights went once round 2 was written and every reader of them had run; round 2
    # (the newest) keeps its AdamW state; and DVC, which tracks the manifests, sees nothing changed.
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["round_0", "round_2"]
    assert (run / "checkpoints" / "round_2" / "optimizer.pt").is_file()
    assert "up to date" in dvc(proj, "status")
    assert [row["round"] for row in json.loads((proj / "data" / "runs" / "tiny.history.json").read_text())] == [0, 1]


@pytest.fixture
def noisy_judge() -> Iterator[ScriptedServer]:
    """Verdicts flipped at ε = 0.3: a group's rewards differ, so every round's update moves the policy."""
    with ScriptedServer(noise=0.3) as srv:
        yield srv


def test_prefect_flow_end_to_end_records_dvc_lineage(tmp_path: Path, noisy_judge: ScriptedServer, smollm2_dir: Path,
                                                     prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """An overlapped flow run: each round's judging beside the previous round's update and the next round's
    sampling, in threads. DVC, which
    runs one stage at a time, writes the same bytes, and round 1's update sees that its rollouts came from
    policy 0 while it starts from policy 1."""
    judge = noisy_judge
    proj = make_project(tmp_path, judge.base_url, smollm2_dir.parent, {
        "overlap": True, "rounds": round_items(2, overlap=True), "grpo.tis_cap": 2.0, "grpo.lr": 1e-5})
    monkeypatch.chdir(proj)
    monkeypatch.setenv("PATH", project_env()["PATH"])
    monkeypatch.syspath_prepend(str(proj))
    from flows.distill import distill

    out = distill("params.yaml")
    check_outputs(proj)
    assert [row["round"] for row in out["rounds"]] == [0, 1]
    assert "up to date" in dvc(proj, "status")  # the flow recorded the lineage
    run = proj / "data" / "runs" / "tiny"
    rollouts = [pd.read_parquet(run / f"round_{r}" / "rollouts.parquet") for r in (0, 1)]
    assert [set(df["policy"]) for df in rollouts] == [{0}, {0}]
    assert [set(df["checkpoint"]) for df in rollouts] == [{"round_0"}, {"round_0"}]
    m0, m1 = (json.loads((run / f"round_{r}" / "train_metrics.json").read_text()) for r in (0, 1))
    assert m0["grad_norm"] > 0  # round 0 moved the policy, so round 1's rollouts are off-policy
    # On-policy the trainer and the sampler agree up to fp32 noise; one round behind they do not.
    assert m0["tis_abs_log_ratio_mean"] < 1e-3 < m1["tis_abs_log_ratio_mean"], (m0, m1)
    # The policy side of each overlapped step, once more by DVC, one stage at a time: the same bytes. These are
    # the stages that draw from torch's generator (or hold it, as train does) beside another stage; the judge
    # side's calls are replayed answers of a deterministic server, whatever runs beside them.
    steps = [step for step in round_steps(load_params("params.yaml")) if len(step) > 1]
    beside = [f"{name}@{r}" for step in steps for name, r in step[1]]
    assert beside == ["rollout@1", "train@0", "evaluate@0"], beside
    before = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    dvc(proj, "repro", "--force", "--single-item", *beside)
    after = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    assert {k: after[k] for k in beside} == {k: before[k] for k in beside}
    assert "up to date" in dvc(proj, "status")
    # a second run is served from Prefect's cache: no judge call, no stage rerun
    served = judge.served()
    distill("params.yaml")
    assert judge.served() == served
    assert (run / "params.yaml").read_text() == (proj / "params.yaml").read_text()  # the effective params
    lineage = json.loads((run / "lineage.json").read_text())
    assert lineage["dvc"] == "recorded in dvc.lock" and lineage["parameters"] == []
    # A value from the deployment's form, on the same run id: only train and evaluate rerun. Round 1 samples
    # from policy 0, which the new rate does not change, so no round samples or is judged again.
    judged = {f: f.stat().st_mtime_ns for f in run.glob("round_*/*.parquet")}
    out = distill("params.yaml", run_id="tiny", lr=3e-5)
    assert {f: f.stat().st_mtime_ns for f in judged} == judged
    assert yaml.safe_load((run / "params.yaml").read_text())["grpo"]["lr"] == 3e-5
    assert out["lineage"]["dvc"].startswith("not recorded in dvc.lock")
    assert '-S "++grpo.lr=3e-05"' in out["lineage"]["reproduce"]["dvc_exp_run"]
    assert json.loads((run / "lineage.json").read_text()) == out["lineage"]
    assert "up to date" not in dvc(proj, "status")  # the workspace now holds the form's run

