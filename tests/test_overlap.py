"""Overlapped judging (`overlap: true`): round r+1 samples from policy r while round r is judged.

The Prefect flow and `ropd run` run a round's judging beside the next round's sampling, in threads. That
an overlapped flow run and `dvc repro` write the same bytes, and that the update sees the older policy, is
tested end to end in tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ropd.params import Params, round_items
from ropd.pipeline.dag import stage_io
from ropd.pipeline.stages import ROUND_STAGES, SETUP_STAGES, round_steps, side_by_side


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


def test_an_overlapped_schedule_runs_each_stage_once_after_its_inputs_and_hides_judging() -> None:
    """Every stage of every round runs once; each reads only what an earlier step, or its own lane before it,
    wrote (so lanes of a step never wait on each other); and round r's judging runs beside round r-1's train."""
    params = Params.model_validate({"overlap": True, "rounds": round_items(4, overlap=True), "grpo": {"tis_cap": 2.0}})
    steps = round_steps(params)
    ran = [stage for step in steps for lane in step for stage in lane]
    assert sorted(ran) == sorted((name, r) for r in range(4) for name in ROUND_STAGES)
    produced = {out for name in ROUND_STAGES for r in range(4) for out in stage_io(params, name, r)[1]}
    written = {out for name in SETUP_STAGES for out in stage_io(params, name)[1]}
    for step in steps:
        outs: set[Path] = set()
        for lane in step:
            seen = set(written)
            for name, r in lane:
                deps, lane_outs = stage_io(params, name, r)
                missing = [d for d in deps if d in produced and d not in seen]
                assert not missing, f"{name}@{r} runs before {missing} is written (step {step})"
                seen |= set(lane_outs)
                outs |= set(lane_outs)
        written |= outs
    beside = {r: next(lane for lane in step if ("mine", r) not in lane)
              for step in steps for r in range(1, 4) if len(step) > 1 and ("mine", r) in step[0]}
    assert {r: lane[0] for r, lane in beside.items()} == {r: ("train", r - 1) for r in range(1, 4)}


def test_the_run_lock_is_shared_by_threads_and_released_by_the_last(tmp_path: Path) -> None:
    """Two lanes take the run lock with no outer holder; whichever ends last releases it, and another process
    is kept out until then."""
    import subprocess
    import sys

    from ropd.pipeline.lock import run_lock

    run = tmp_path / "runs" / "x"
    probe = ("import sys; from ropd.pipeline.lock import run_lock, RunLocked\n"
             "try:\n    with run_lock(sys.argv[1]): print('free')\nexcept RunLocked: print('locked')")

    def other_process() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(run)], capture_output=True, text=True).stdout.strip()

    first_in, first_out = threading.Event(), threading.Event()

    def first() -> None:
        with run_lock(run):
            first_in.set()
            first_out.wait(10)

    t = threading.Thread(target=first)
    t.start()
    first_in.wait(10)
    with run_lock(run):  # this thread joins the held lock
        first_out.set()
        t.join(10)  # the first holder ended; the lock stays held for this one
        assert other_process() == "locked"
    assert other_process() == "free"
