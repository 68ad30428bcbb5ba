"""The timings line each stage appends: its seconds, the non-model phases inside it, and a process's startup."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ropd.pipeline import timings


def test_a_stage_line_holds_its_phases_and_the_process_startup(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timings, "_first_stage", True)
    f = tmp_path / ".timings" / "run.jsonl"
    age = timings.process_age_s()
    before = time.time()
    assert age is not None and age > 0
    with timings.timed_stage(f, "train", 0):
        for _ in range(2):
            with timings.phase("policy_save"):
                time.sleep(0.05)
        time.sleep(0.05)
    with timings.timed_stage(f, "evaluate", 0):
        pass
    with pytest.raises(RuntimeError), timings.timed_stage(f, "verify", 0):
        raise RuntimeError("a failed stage records nothing")
    first, second = (json.loads(line) for line in f.read_text().splitlines())
    assert first["stage"] == "train" and first["round"] == 0
    assert first["phases"]["policy_save"] >= 0.1 and first["seconds"] > first["phases"]["policy_save"] + 0.04
    assert age - 0.01 <= first["startup_s"] < age + 5  # this process's age when the first stage began
    assert before - 1e-3 <= first["started"] <= second["started"] - first["seconds"] + 0.01  # in order, no overlap
    assert second["phases"] == {} and "startup_s" not in second  # only a process's first stage pays its start
