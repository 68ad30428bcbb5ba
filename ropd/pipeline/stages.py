"""The stage registry: every stage by name, and `run_stage`, the one entry point DVC, Prefect and the CLI call.

Each stage family has its own module: `data` (demo_data, prepare), `teacher` (teacher_sft, teacher),
`judging` (judge_check, mine, qa, verify), `rollout`, `train`, `evaluate`, `summary` (summarize, report);
`run` holds what they share (the run's paths, the clean stops, the call cache), re-exported here as the
pipeline's public surface. Sampling and training are seeded, so a rerun produces the same tables.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ropd.params import Params
from ropd.pipeline.data import demo_data, prepare
from ropd.pipeline.evaluate import evaluate
from ropd.pipeline.judging import judge_check, mine, qa, verify
from ropd.pipeline.launch import launched, process_group, run_launched
from ropd.pipeline.lock import run_lock
from ropd.pipeline.resident import policy_in_memory
from ropd.pipeline.rollout import rollout
from ropd.pipeline.run import (
    CACHE_FILE,
    STOPS,
    USES_LAUNCH,
    BudgetStop,
    JudgeCheckStop,
    QualityGateStop,
    RunPaths,
    RunStop,
)
from ropd.pipeline.summary import report, summarize
from ropd.pipeline.teacher import teacher, teacher_sft
from ropd.pipeline.timings import timed_stage
from ropd.pipeline.train import train

__all__ = ["CACHE_FILE", "ROUND_STAGES", "RUN_STAGES", "SETUP_STAGES", "STOPS", "BudgetStop", "JudgeCheckStop",
           "QualityGateStop", "RunPaths", "RunStop", "round_steps", "run_all", "run_rounds", "run_stage",
           "side_by_side"]


SETUP_STAGES = ("demo_data", "prepare", "teacher_sft", "teacher", "judge_check")
ROUND_STAGES = {"rollout": rollout, "mine": mine, "qa": qa, "verify": verify, "train": train, "evaluate": evaluate}
RUN_STAGES = {"demo_data": demo_data, "prepare": prepare, "teacher_sft": teacher_sft, "teacher": teacher,
              "judge_check": judge_check, "summarize": summarize, "report": report}


def run_stage(params: Params, name: str, r: int | None = None) -> None:
    """Dispatch by name; a per-round stage needs a round that params.rounds contains.

    Each completed stage appends its time, and where it went, to data/runs/.timings/<run>.jsonl
    (`ropd/pipeline/timings.py`), so orchestration overhead can be measured against it.
    """
    if name in RUN_STAGES:
        fn, args = RUN_STAGES[name], (params,)
    elif name in ROUND_STAGES:
        rounds = [item.r for item in params.rounds]
        if r is None or r not in rounds:
            raise ValueError(f"stage {name!r} needs --round, one of {rounds}")
        fn, args = ROUND_STAGES[name], (params, r)
    else:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join([*RUN_STAGES, *ROUND_STAGES])}")
    if launched():  # a child of a launched stage: the parent records the time
        with process_group():
            fn(*args)
        return
    with timed_stage(Path(params.runs_dir) / ".timings" / f"{params.run_id}.jsonl", name, r):
        if params.launch.command and name in params.launch.stages and name in USES_LAUNCH[params.method]:
            run_dir = RunPaths(params).run
            with run_lock(run_dir):
                run_launched(params.launch.command, params.model_dump_json(), run_dir, name, r)
        else:
            fn(*args)


Lane = list[tuple[str, int]]  # round stages run in this order


def round_steps(params: Params) -> list[list[Lane]]:
    """The round stages in steps: a step's lanes run side by side, and a step starts once the last one ended.

    In turn, every stage is a step of its own. With `overlap`, round r is judged (mine, qa, verify) while the
    policy side trains on round r-1, samples round r+1 from the policy that makes (policy r) and evaluates it:
    the judge's latency hides behind the accelerator's work, and a step takes max(judging, train + rollout +
    evaluate) instead of their sum. `dvc repro` runs the same stages one at a time, in an order its DAG
    allows, and writes the same tables.
    """
    rounds = [item.r for item in params.rounds]
    if not params.overlap:
        return [[[(name, r)]] for r in rounds for name in ROUND_STAGES]
    steps: list[list[Lane]] = [[[("rollout", rounds[0])]]]
    for i, r in enumerate(rounds):
        before = [("train", rounds[i - 1])] if i else []
        after = [("evaluate", rounds[i - 1])] if i else []
        policy_side = [*before, *([("rollout", rounds[i + 1])] if i + 1 < len(rounds) else []), *after]
        steps.append([[("mine", r), ("qa", r), ("verify", r)], *([policy_side] if policy_side else [])])
    steps += [[[("train", rounds[-1])]], [[("evaluate", rounds[-1])]]]
    return steps


def side_by_side(lanes: list[Lane], run: Callable[[str, int], None]) -> None:
    """`run` every stage of each lane, the lanes in threads of their own; the first error is raised once all
    lanes ended, so a failing judge never cuts a rollout short. Each thread gets a copy of this context, so
    Prefect's flow run and the stage timings follow it."""
    def lane_fn(lane: Lane) -> Callable[[], None]:
        def in_order() -> None:
            for name, r in lane:
                run(name, r)
        return in_order

    if len(lanes) == 1:
        lane_fn(lanes[0])()
        return
    with ThreadPoolExecutor(len(lanes), thread_name_prefix="ropd-lane") as pool:
        futures = [pool.submit(contextvars.copy_context().run, lane_fn(lane)) for lane in lanes]
    if errors := [exc for f in futures if (exc := f.exception()) is not None]:
        raise errors[0]


def run_rounds(params: Params) -> None:
    """Every round stage, step by step (`round_steps`), in this process; the caller holds the run lock when
    lanes run side by side."""
    with policy_in_memory(params.checkpoints.in_memory):  # rollout, train and evaluate hand the policy on
        for step in round_steps(params):
            side_by_side(step, lambda name, r: run_stage(params, name, r))


def run_all(params: Params) -> None:
    """Every stage in order, in this process: the plain front-end (DVC and Prefect call the same stages)."""
    with run_lock(RunPaths(params).run):  # held here, so the lanes of an overlapped step share it
        for name in SETUP_STAGES:
            run_stage(params, name)
        run_rounds(params)
        run_stage(params, "summarize")
        run_stage(params, "report")
