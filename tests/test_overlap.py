"""Overlapped judging (`overlap: true`): round r+1 samples from policy r while round r is judged.

The Prefect flow and `ropd run` run a round's judging beside the next round's sampling, in threads. That
an overlapped flow run and `dvc repro` write the same bytes, and that the update sees the older policy, is
tested end to end in tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from ropd.params import Params
from ropd.pipeline.stages import round_steps, side_by_side


def test_a_failing_lane_waits_for_the_other_and_then_fails_the_step() -> None:
    finished: list[str] = []

    def run(name: str, r: int) -> None:
        if name == "mine":
            raise RuntimeError(f"judge down in {name}@{r}")
        time.sleep(0.2)  # the rollout is still sampling when the judge lane fails
        finished.append(f"{name}@{r}:{threading.current_thread().name}")

    with pytest.raises(RuntimeError, match="judge down in mine@0"):
        side_by_side([[("mine", 0), ("qa", 0)], [("rollout", 1)]], run)
    assert len(finished) == 1 and finished[0].startswith("rollout@1:ropd-lane")  # kept, in its own thread


def test_in_turn_every_stage_is_a_step_of_its_own() -> None:
    steps = round_steps(Params())
    assert all(len(step) == 1 and len(step[0]) == 1 for step in steps)
    assert [lane[0] for step in steps for lane in step][:6] == [
        (name, 0) for name in ("rollout", "mine", "qa", "verify", "train", "evaluate")]
