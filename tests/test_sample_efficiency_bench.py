"""bench/sample_efficiency.py's bookkeeping: the prompts-to-reach figure is the first budget at or above the
target. (A finished run's older AdamW state is deleted by the pipeline's own retention: tests/test_checkpoints.py.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "sample_efficiency.py"
spec = importlib.util.spec_from_file_location("bench_sample_efficiency", BENCH)
assert spec and spec.loader
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_prompts_to_reach() -> None:
    points = [(0, 0.0), (4, 0.02), (8, None), (12, 0.05), (16, 0.03)]
    assert bench.prompts_to_reach(points, 0.05) == 12
    assert bench.prompts_to_reach(points, 0.5) is None
    assert bench.prompts_to_reach(points, None) is None
