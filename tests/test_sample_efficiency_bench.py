"""bench/sample_efficiency.py's bookkeeping: a finished run loses only its optimizer state, and the
prompts-to-reach figure is the first budget at or above the target."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "sample_efficiency.py"
spec = importlib.util.spec_from_file_location("bench_sample_efficiency", BENCH)
assert spec and spec.loader
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_prune_keeps_weights_and_deletes_only_optimizer_state(tmp_path: Path) -> None:
    for r in range(3):
        ckpt = tmp_path / "checkpoints" / f"round_{r}"
        ckpt.mkdir(parents=True)
        (ckpt / "model.safetensors").write_bytes(b"w" * 10)
        (ckpt / "trainer_state.json").write_text("{}")
        if r:  # round_0 is the base model: it has none
            (ckpt / "optimizer.pt").write_bytes(b"o" * 20)
    assert bench.prune_optimizer_state(tmp_path) == 40
    assert not list(tmp_path.rglob("optimizer.pt"))
    assert len(list(tmp_path.rglob("model.safetensors"))) == 3 and len(list(tmp_path.rglob("*.json"))) == 3
    assert bench.prune_optimizer_state(tmp_path) == 0  # a resumed study finds nothing more to free


def test_prompts_to_reach() -> None:
    points = [(0, 0.0), (4, 0.02), (8, None), (12, 0.05), (16, 0.03)]
    assert bench.prompts_to_reach(points, 0.05) == 12
    assert bench.prompts_to_reach(points, 0.5) is None
    assert bench.prompts_to_reach(points, None) is None
