"""`ropd demo`, the main job of `make run` until the pipeline lands, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd


def run_demo(out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "ropd.cli", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ROPD rewards" in proc.stdout
    return json.loads((out / "summary.json").read_text())


def test_demo_writes_contract_tables_and_replays_from_cache(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = run_demo(out)
    assert first["ok"] == first["groups"] == 6 and first["calls_sent"] == 12
    rewards = pd.read_parquet(out / "rewards.parquet")
    assert {"run_id", "round", "prompt_id", "sample_idx", "score", "max_score", "reward", "status"} <= set(
        rewards.columns)
    assert (rewards["status"] == "ok").all() and rewards["reward"].between(0, 1).all()
    assert (rewards["reward"] == rewards["score"] / rewards["max_score"]).all()
    judg = pd.read_parquet(out / "judgements.parquet")
    assert set(judg["source"]) == {"teacher", "student"}
    crit = pd.read_parquet(out / "criteria.parquet")
    assert {"rubric_id", "criterion_id", "category", "text", "points", "rubricator_fingerprint"} <= set(crit.columns)
    second = run_demo(out)
    assert second["calls_sent"] == 0 and second["cache_hits"] == 12
    pd.testing.assert_frame_equal(pd.read_parquet(out / "rewards.parquet"), rewards)
