"""Orchestration overhead of one pipeline round: what `dvc repro` adds around the stage functions.

    .venv/bin/python bench/round_overhead.py [--prompts 8] [--n 4]

It copies the project into a temporary git+DVC repository with one round at the demo settings
(local SmolLM2 judge, 8 prompts x n=4), runs the per-round stages once through `dvc repro` and times
the whole command, and reads how long each stage function itself took (`ropd stage` records it in
data/runs/.timings/). Overhead = 1 - Σ stage time / wall time: process start, imports, DVC hashing and
lock files. Last line: {"overhead_share": x, "wall_s": ..., "stage_s": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory() as tmp:
        proj = Path(tmp)
        shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params.update({"run_id": "bench", "models_dir": str((ROOT / "data" / "models").resolve()),
                       "rounds": [{"r": 0, "next": 1}]})
        params["data"]["prompts_per_round"] = args.prompts
        params["student"]["sampling"]["n"] = args.n
        (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
            subprocess.run(cmd, cwd=proj, check=True, env=env)
        # stages before the round are set-up, not part of a round
        subprocess.run([str(BIN / "dvc"), "repro", "teacher"], cwd=proj, check=True, env=env,
                       stdout=subprocess.DEVNULL)
        timings = proj / "data" / "runs" / ".timings" / "bench.jsonl"
        timings.unlink(missing_ok=True)
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "dvc"), "repro", "evaluate@0"], cwd=proj, check=True, env=env,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        stages = [json.loads(line) for line in timings.read_text().splitlines()]
    stage_s = sum(s["seconds"] for s in stages)
    for s in stages:
        print(f"  {s['stage']:<10} round {s['round']}: {s['seconds']:7.1f} s")
    print(f"round wall time through dvc repro: {wall:.1f} s; inside stage functions: {stage_s:.1f} s")
    print(json.dumps({"overhead_share": round(1 - stage_s / wall, 4), "wall_s": round(wall, 1),
                      "stage_s": round(stage_s, 1)}))


if __name__ == "__main__":
    main()
