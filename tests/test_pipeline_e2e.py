"""The whole pipeline at tiny settings, through `dvc repro` and through the Prefect flow.

The student is the real SmolLM2; the judge roles point at the stand-in OpenAI-compatible server (a real
HTTP server on 127.0.0.1), which keeps the run to about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ropd.testing.server import ScriptedServer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tiny_params(base_url: str, models_dir: Path) -> dict:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    judge = {"provider": "openai", "base_url": base_url, "model": "stand-in-judge", "api_key_env": None,
             "max_tokens": 512, "backoff_initial_s": 0.05}
    data.update({
        "run_id": "tiny", "models_dir": str(models_dir), "rounds": [{"r": 0, "next": 1}],
        "rubricator": {**judge, "temperature": 0.7}, "verifier": {**judge, "temperature": 0.0},
    })
    data["data"].update({"prompts_per_round": 2, "n_train": 500, "n_eval": 100})
    data["student"]["sampling"].update({"n": 2, "max_new_tokens": 16})
    data["eval"].update({"n_prompts": 2, "max_new_tokens": 16})
    data["grpo"].update({"micro_batch_size": 4})
    return data


def make_project(tmp: Path, base_url: str, models_dir: Path) -> Path:
    proj = tmp / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
    shutil.copytree(ROOT / "flows", proj / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    (proj / "params.yaml").write_text(yaml.safe_dump(tiny_params(base_url, models_dir), sort_keys=False))
    (proj / ".gitignore").write_text("data/cache/\ndata/runs/.locks/\n")
    env = project_env()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"],
                [str(BIN / "dvc"), "init", "-q"], [str(BIN / "dvc"), "config", "cache.type", "hardlink,copy"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=proj, check=True, env=env)
    return proj


def project_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def dvc(proj: Path, *args: str) -> str:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=proj, capture_output=True, text=True, env=project_env(),
                          timeout=900)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


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
    proj = make_project(tmp_path, judge.base_url, smollm2_dir.parent)
    dvc("repro")
    check_outputs(proj)
    assert "up to date" in dvc("status")
    again = dvc("repro")
    assert "didn't change" in again or "up to date" in again
    assert "Running stage" not in again
    metrics = dvc("metrics", "show", "--json")
    assert "accuracy" in metrics and "mean_reward" in metrics
    dvc("plots", "show", "--out", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").is_file()


def test_prefect_flow_end_to_end_records_dvc_lineage(tmp_path: Path, judge: ScriptedServer, smollm2_dir: Path,
                                                     prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = make_project(tmp_path, judge.base_url, smollm2_dir.parent)
    monkeypatch.chdir(proj)
    monkeypatch.setenv("PATH", project_env()["PATH"])
    monkeypatch.syspath_prepend(str(proj))
    from flows.distill import distill

    served = judge.served()
    out = distill("params.yaml")
    check_outputs(proj)
    assert out["rounds"][0]["round"] == 0
    assert "up to date" in dvc("status")  # the flow recorded the lineage
    # a second run is served from Prefect's cache: no judge call, no stage rerun
    served_after_first = judge.served()
    assert served_after_first > served
    distill("params.yaml")
    assert judge.served() == served_after_first
