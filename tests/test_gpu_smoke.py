"""bench/gpu_smoke.py runs on CPU, so the check waiting for a GPU cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_smoke_runs_on_cpu_in_bf16() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_smoke.py"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["device"] == "cpu" and figures["dtype"] == "bfloat16"
    assert figures["judged_groups"] == 2  # rubric, blind verification and rewards through the stand-in judge
    assert figures["steps"] == 1 and figures["tokens"] > 0  # one GRPO step on the round's rollouts
    assert all(figures[k] >= 0 for k in ("rollout_s", "judge_s", "step_s", "peak_memory_mb"))
