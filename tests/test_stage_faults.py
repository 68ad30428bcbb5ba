"""Judge endpoints down for a whole pipeline stage: groups are masked, never zeroed, and the quality gate
stops the train stage cleanly (exit 3, stopped.json with a reason, the last good checkpoint untouched).

The stages are the real functions of `ropd.pipeline.stages` on a tiny project (SmolLM2 rollouts, 2 groups);
the judge URL is a loopback port nothing listens on.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ropd.params import load_params
from ropd.pipeline import stages
from tests.test_faults import dead_url
from tests.tiny import BIN, project_env, provide_models, tiny_params


@pytest.fixture(scope="module")
def rolled(module_tmp: Path, smollm2_dir: Path) -> Iterator[Path]:
    """A tiny project up to round 0's rollouts, the judges pointed at a dead endpoint; cwd is the project."""
    proj = module_tmp
    fast = {"max_retries": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.02, "breaker_threshold": 2}
    data = tiny_params(dead_url(), smollm2_dir.parent)
    provide_models(proj, smollm2_dir.parent)
    for role in ("rubricator", "verifier"):
        data[role].update(fast)
    (proj / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(proj)
        params = load_params("params.yaml")
        for name in ("demo_data", "prepare", "teacher"):
            stages.run_stage(params, name)
        stages.run_stage(params, "rollout", 0)
        yield proj


def test_judge_down_masks_every_group_and_the_gate_stops_training(rolled: Path) -> None:
    params = load_params("params.yaml")
    rd = rolled / "data" / "runs" / "tiny" / "round_0"
    stages.run_stage(params, "mine", 0)
    failures = pd.read_parquet(rd / "rubric_failures.parquet")
    assert len(failures) == 2 and set(failures["stage"]) == {"rubric"}
    assert set(failures["error_type"]) <= {"http", "circuit_open"}
    assert pd.read_parquet(rd / "rubrics.parquet").empty

    stages.run_stage(params, "qa", 0)
    stages.run_stage(params, "verify", 0)
    rewards = pd.read_parquet(rd / "rewards.parquet")
    assert len(rewards) == 4 and (rewards["status"] == "judge_error").all()
    assert rewards["reward"].isna().all()  # masked, never scored 0

    ckpt0 = rolled / "data" / "runs" / "tiny" / "checkpoints" / "round_0"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in ckpt0.iterdir())
    proc = subprocess.run([str(BIN / "ropd"), "stage", "train", "--round", "0"], cwd=rolled, env=project_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    stopped = json.loads((rd / "stopped.json").read_text())
    assert stopped["stopped"] is True and stopped["failed_share"] == 1.0
    assert "quality gate" in stopped["reason"] and "checkpoints/round_0" in stopped["reason"]
    assert "quality gate" in proc.stdout + proc.stderr
    assert not (rolled / "data" / "runs" / "tiny" / "checkpoints" / "round_1").exists()  # the policy untouched
    assert sorted((p.name, p.stat().st_mtime_ns) for p in ckpt0.iterdir()) == before
    assert not (rd / "train_metrics.json").exists()
