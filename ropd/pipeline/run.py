"""What every pipeline stage shares: where a run's files live, the clean stops, the call cache and budget
gate the judge stages use, and which stages each method runs.

Every output is written atomically, so a killed stage leaves either its previous output or none,
never a torn file. Every LLM call goes through the persistent call cache, so rerunning a killed
stage pays only for the calls it had not received.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd
from tqdm.auto import tqdm

from ropd.config import RoleConfig
from ropd.io import atomic_write_parquet, atomic_write_text
from ropd.llm.base import ChatModel, run_closing
from ropd.llm.cache import CallCache, CallTag
from ropd.llm.cost import Ledger, Remaining, budget_status, remaining
from ropd.llm.factory import make_chat
from ropd.llm.limits import CallLimiter
from ropd.params import Params
from ropd.pipeline.checkpoints import manifest_path, publish, require, sweep
from ropd.pipeline.launch import is_main
from ropd.pipeline.timings import phase
from ropd.rubric.prompts import render_conversation


def queued_from(rel: Path) -> Path:
    """`rel` in the workspace a DVC experiment was queued from, when this process runs in DVC's temporary copy
    of it (`<repo>/.dvc/tmp/exps/<tmp>/`, `dvc exp run --run-all`); else `rel` as it is."""
    for p in Path.cwd().parents:
        if p.name == "exps" and p.parent.name == "tmp" and p.parent.parent.name == ".dvc":
            return p.parent.parent.parent / rel
    return rel


# Shared with the workspace a queued experiment came from, so no experiment pays for a call twice.
CACHE_FILE = queued_from(Path("data/cache/llm_calls.sqlite"))


class RunStop(RuntimeError):
    """A clean stop before a stage does its work: `stopped.json` says why, nothing is half-written, and
    the same command resumes once the cause is fixed. The CLI exits 3."""


class QualityGateStop(RunStop):
    """Too many groups of a round failed judging: the run stops before training on them."""


class BudgetStop(RunStop):
    """The next judge stage's estimate would take the run's spend above `budget.max_usd`."""


class JudgeCheckStop(RunStop):
    """`judge_check.enforce` is on and the judge check FAILED: no round trains on that judge."""


def stop(exc: type[RunStop], path: Path, reason: str, **figures: Any) -> NoReturn:
    """Write `stopped.json` ({"stopped": true, "kind", "reason", figures…}) and raise `exc`."""
    kind = next(k for k, cls in STOPS.items() if cls is exc)
    if is_main():  # the other processes of a launched stage raise the same stop without writing
        write_json({"stopped": True, "kind": kind, "reason": reason, **figures}, path)
    raise exc(reason)


STOPS: dict[str, type[RunStop]] = {"quality_gate": QualityGateStop, "budget": BudgetStop,
                                   "judge_check": JudgeCheckStop}


def clear_stop(path: Path, kind: str) -> None:
    """Remove a `stopped.json` of `kind` once its cause is gone (another kind's stop stays)."""
    if path.is_file() and json.loads(path.read_text()).get("kind") == kind:
        path.unlink()


class RunPaths:
    """Where each artifact of a run lives; one place, so DVC, Prefect and the report agree."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.run = params.run_dir
        self.prompts = self.run / "prompts.parquet"
        self.teacher = self.run / "teacher.parquet"
        self.judge_check = self.run / "judge_check.json"
        # What the rounds depend on: written only when training may go ahead, and always the same bytes,
        # so a re-check that moves a figure (or more check prompts) retrains nothing.
        self.judge_gate = self.run / "judge_check.gate"
        # Outside the run directory, which the summary and report stages depend on as a whole.
        self.history = Path(params.runs_dir) / f"{params.run_id}.history.json"
        self.report = Path(params.runs_dir) / f"{params.run_id}.report.html"

    def round(self, r: int) -> Path:
        return self.run / f"round_{r}"

    def checkpoint(self, r: int) -> Path:
        return self.run / "checkpoints" / f"round_{r}"

    @property
    def demo_dir(self) -> Path:
        return Path(self.params.runs_dir).parent / "demo"


def write_json(obj: Any, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n", path)


def read_prompts(paths: RunPaths) -> pd.DataFrame:
    return pd.read_parquet(paths.prompts)


def messages(row: Any) -> list[dict[str, str]]:
    return json.loads(row["messages"])


def round_seed(params: Params, r: int) -> int:
    """Round r's sampling seed: a new draw each round, moved by `data.seed` and `student.sampling.seed`.

    `student.sampling.seed` enters with a factor that `data.seed · 1000 + r` never reaches in practice,
    so its default (0) keeps every earlier run's seeds and any other value gives a run of its own.
    """
    return params.student.sampling.seed * 1_000_003 + params.data.seed * 1000 + r


def judge_resources(params: Params, stage: str, r: int | None = None) -> tuple[CallCache, CallLimiter]:
    """The call cache, tagging the calls it pays for with (run, round, stage), and the stage's one limiter."""
    return CallCache(CACHE_FILE, CallTag(run_id=params.run_id, round=r, stage=stage)), CallLimiter(params.limits)


Plan = list[tuple[str, int, Callable[[], float]]]  # (stage, expected calls, USD from request sizes)


def budget_gate(params: Params, stage: str, r: int | None, where: Path, plan: Plan) -> None:
    """Stop before `stage` starts when the run's spend plus what is left of `plan` (this stage and the
    rest of its round) would overrun budget.max_usd. A budget stop written at `where` earlier is cleared
    once the stage may run."""
    stopped = where / "stopped.json"
    if params.budget.max_usd is not None:
        ledger = Ledger.load(params, CACHE_FILE)
        left: list[Remaining] = [remaining(ledger, s, r, calls, usd) for s, calls, usd in plan]
        status = budget_status(ledger, stage, r, left)
        if status.over:
            resume = f"`ropd stage {stage}{'' if r is None else f' --round {r}'}` (or dvc repro, or the flow)"
            stop(BudgetStop, stopped, status.reason(resume), **status.model_dump(exclude={"stage", "round"}),
                 stage=stage, round=r)
    clear_stop(stopped, "budget")


def teacher_role(params: Params) -> RoleConfig:
    from ropd.models import pinned

    return pinned(params.teacher.role)


# Which round stages each method runs; the others write empty outputs, so one DAG serves every method.
USES = {"ropd": {"rollout", "mine", "qa", "verify"}, "static_rubric": {"rollout", "mine", "qa", "verify"},
        "tjudge": {"rollout", "verify"}, "sft": set(), "lopd": set()}


# The round stages that call a judge (static_rubric's `mine` reads its rubrics from a file).
CALLS_JUDGE = {"ropd": ("mine", "verify"), "static_rubric": ("verify",), "tjudge": ("verify",), "sft": (), "lopd": ()}


# The methods whose reward is a rubric verdict, and so depend on the judge check.
RUBRIC_REWARD = {"ropd", "static_rubric"}


# The stages that run under `launch.command`: GRPO's rollout and update (the TRL baselines launch themselves).
USES_LAUNCH = {method: {"rollout", "train"} if "rollout" in used else set() for method, used in USES.items()}


def not_used(params: Params, stage: str, rd: Path, outputs: list[str]) -> bool:
    """True (after writing empty outputs) when `params.method` does not use `stage`."""
    if stage in USES[params.method]:
        return False
    note = {"method": params.method, "stage": stage, "skipped": f"method {params.method} does not use {stage}"}
    for name in outputs:
        if name.endswith(".parquet"):
            atomic_write_parquet(pd.DataFrame(), rd / name)
        elif name.endswith(".json"):
            write_json(note, rd / name)
        else:
            atomic_write_text(note["skipped"] + "\n", rd / name)
    return True


def judge_questions(prompts: pd.DataFrame) -> dict[str, str]:
    """What the judges see of each prompt: the student's whole conversation (see `render_conversation`)."""
    ids, chats = prompts["prompt_id"], prompts["messages"]
    return {str(pid): render_conversation(json.loads(m)) for pid, m in zip(ids, chats, strict=True)}


async def counted(coro: Any, bar: tqdm) -> Any:
    try:
        return await coro
    finally:
        bar.update()


def with_chats(params: Params, roles: tuple[str, ...], body: Any, stage: str, r: int | None = None) -> Any:
    """Run `body(*chats)` (a coroutine function) with the roles' chats, sharing one cache and limiter; the
    calls paid are accounted to (`stage`, round `r`)."""
    cache, limiter = judge_resources(params, stage, r)
    chats: list[ChatModel] = [make_chat(role, getattr(params, role), cache=cache, limiter=limiter) for role in roles]
    try:
        return run_closing(body(*chats), *chats)
    finally:
        cache.close()


def require_policy(params: Params, paths: RunPaths, r: int) -> None:
    if r == 0:
        from ropd.pipeline.data import restore_base_policy  # data.py builds on this module

        restore_base_policy(params, paths)
    require(paths.checkpoint(r), f"checkpoints.keep_every={params.checkpoints.keep_every}")


def publish_policy(params: Params, paths: RunPaths, r: int) -> None:
    """Policy r is complete: its manifest (what DVC and the next stages depend on), then the retention sweep."""
    with phase("manifest"):
        publish(paths.checkpoint(r), r)
    sweep_policies(params, paths)


def sweep_policies(params: Params, paths: RunPaths) -> None:
    rounds = {item.r for item in params.rounds}

    def read_by_all(j: int) -> bool:
        """Round j's weights were read by the rollouts they sampled (round j, or j+1 with overlap), train@j and
        evaluate@(j-1), wherever those are scheduled."""
        rolled = all((paths.round(item.r) / "rollouts.parquet").is_file() for item in params.rounds
                     if item.policy == j)
        trained = j not in rounds or manifest_path(paths.checkpoint(j + 1)).is_file()
        evaluated = j - 1 not in rounds or (paths.round(j - 1) / "eval.json").is_file()
        return rolled and trained and evaluated

    with phase("sweep"):
        sweep(paths.checkpoint(0).parent, params.checkpoints, read_by_all)
