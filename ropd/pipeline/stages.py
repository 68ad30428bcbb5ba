"""The pipeline stages as functions of (params, round) → files. DVC, Prefect and the CLI all call these.

Every output is written atomically, so a killed stage leaves either its previous output or none,
never a torn file. Every LLM call goes through the persistent call cache, so rerunning a killed
stage pays only for the calls it had not received. Sampling and training are seeded, so a rerun
produces the same tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pandas as pd
from tqdm.auto import tqdm

from ropd.config import RoleConfig
from ropd.eval.harness import EvalResult
from ropd.io import atomic_dir, atomic_write_parquet, atomic_write_text
from ropd.llm.base import ChatModel, run_closing
from ropd.llm.cache import CallCache, CallTag
from ropd.llm.cost import (
    CHARS_PER_TOKEN,
    Ledger,
    Remaining,
    budget_status,
    judge_size_usd,
    remaining,
    round_usage,
    teacher_size_usd,
)
from ropd.llm.errors import LLMError
from ropd.llm.factory import make_chat
from ropd.llm.limits import CallLimiter
from ropd.params import Params
from ropd.pipeline.checkpoints import manifest_path, publish, require, sweep
from ropd.pipeline.launch import is_main, launched, process_device, process_group, rank_world, run_launched
from ropd.pipeline.lock import run_lock
from ropd.rubric.engine import Group, GroupResult, GroupStatus, JudgeFailure, induce_rubric, verify_group
from ropd.rubric.prompts import RUBRICATOR_VERSION, render_conversation
from ropd.rubric.schema import Rubric
from ropd.rubric.tables import FAILURE_COLS, GroupMeta, rubric_frames, verdict_frames
from ropd.teacher import TeacherIndex, TeacherPrompt, build_index, dataset_index, fingerprint

if TYPE_CHECKING:
    from ropd.eval.judge_check import JudgeCheckResult

CACHE_FILE = Path("data/cache/llm_calls.sqlite")


class RunStop(RuntimeError):
    """A clean stop before a stage does its work: `stopped.json` says why, nothing is half-written, and
    the same command resumes once the cause is fixed. The CLI exits 3."""


class QualityGateStop(RunStop):
    """Too many groups of a round failed judging: the run stops before training on them."""


class BudgetStop(RunStop):
    """The next judge stage's estimate would take the run's spend above `budget.max_usd`."""


class JudgeCheckStop(RunStop):
    """`judge_check.enforce` is on and the judge check FAILED: no round trains on that judge."""


def _stop(exc: type[RunStop], path: Path, reason: str, **figures: Any) -> NoReturn:
    """Write `stopped.json` ({"stopped": true, "kind", "reason", figures…}) and raise `exc`."""
    kind = next(k for k, cls in STOPS.items() if cls is exc)
    if is_main():  # the other processes of a launched stage raise the same stop without writing
        _json({"stopped": True, "kind": kind, "reason": reason, **figures}, path)
    raise exc(reason)


STOPS: dict[str, type[RunStop]] = {"quality_gate": QualityGateStop, "budget": BudgetStop,
                                   "judge_check": JudgeCheckStop}


def _clear_stop(path: Path, kind: str) -> None:
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


def _json(obj: Any, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n", path)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a model directory, hard-linking files where the filesystem allows (no 500 MB copies)."""
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.is_file():
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)


# -- data ------------------------------------------------------------------------------------------------
def demo_data(params: Params) -> None:
    """The seeded demo task: ≥500 train and ≥100 held-out arithmetic problems, as parquet under data/."""
    from ropd.data.load import load_prompts

    d = params.data
    train = load_prompts("demo", "train", n=max(d.n_train, 500), seed=d.seed)
    held = load_prompts("demo", "eval", n=max(d.n_eval, 100), seed=d.seed + 1, exclude=set(train["question"]))
    out = RunPaths(params).demo_dir
    atomic_write_parquet(train, out / "train.parquet")
    atomic_write_parquet(held, out / "eval.parquet")


def _demo_split(params: Params, split: str) -> pd.DataFrame:
    path = RunPaths(params).demo_dir / f"{split}.parquet"
    if not path.is_file():
        raise ValueError(f"{path} is missing: run `ropd stage demo_data` first (dvc repro and the flow do)")
    return pd.read_parquet(path)


def _train_pool(params: Params) -> pd.DataFrame:
    """Every training problem the data source offers (the demo split, or the user's file)."""
    from ropd.data.load import load_prompts

    d = params.data
    if d.source == "demo":
        return _demo_split(params, "train")
    return load_prompts(d.source, "train", seed=d.seed)


def prepare(params: Params) -> None:
    """Models prepared, the run's prompt schedule, and the round-0 policy.

    The schedule is the seeded shuffle of the pool, cut into rounds of `prompts_per_round`: round r
    takes the r-th slice whatever the number of rounds asked for, so extending a run changes neither
    this file nor the teacher's answers, and only the new rounds run.
    """
    from ropd.data.load import load_prompts
    from ropd.models import prepare_smollm2

    paths = RunPaths(params)
    d = params.data
    with run_lock(paths.run):
        train = _train_pool(params)  # the data first: a bad row is reported before any model work
        held = (_demo_split(params, "eval") if d.eval_source is None
                else load_prompts(d.eval_source, "eval", seed=d.seed))
        pool = min(len(train), d.pool_prompts or len(train))
        slots = pool // d.prompts_per_round
        if slots < len(params.rounds):
            raise ValueError(_pool_too_small(params, pool))
        train = train.sample(frac=1.0, random_state=d.seed).head(slots * d.prompts_per_round).reset_index(drop=True)
        train["round"] = train.index // d.prompts_per_round
        held = held.head(params.eval.n_prompts).assign(round=-1)
        base = Path(params.student.model_path) if params.student.model_path else prepare_smollm2(
            Path(params.models_dir))
        if not (base / "config.json").is_file() and not (base / "adapter_config.json").is_file():
            raise ValueError(f"student.model_path: {base} is not a model directory (no config.json); point it at a "
                             "transformers checkpoint, or set it to null for the packaged SmolLM2")
        atomic_write_parquet(pd.concat([train, held], ignore_index=True), paths.prompts)
        paths.checkpoint(0).parent.mkdir(parents=True, exist_ok=True)
        _link_tree(base, paths.checkpoint(0))
        publish(paths.checkpoint(0), 0)


def _pool_too_small(params: Params, pool: int) -> str:
    d = params.data
    return (f"The pool holds {pool} training prompts, {pool // d.prompts_per_round} rounds of {d.prompts_per_round}; "
            f"{len(params.rounds)} rounds need {len(params.rounds) * d.prompts_per_round}. Raise data.pool_prompts "
            "or use a larger data.source (either re-prepares the run).")


def _prompts(paths: RunPaths) -> pd.DataFrame:
    return pd.read_parquet(paths.prompts)


def _messages(row: Any) -> list[dict[str, str]]:
    return json.loads(row["messages"])


# -- teacher ---------------------------------------------------------------------------------------------
def _judge_resources(params: Params, stage: str, r: int | None = None) -> tuple[CallCache, CallLimiter]:
    """The call cache, tagging the calls it pays for with (run, round, stage), and the stage's one limiter."""
    return CallCache(CACHE_FILE, CallTag(run_id=params.run_id, round=r, stage=stage)), CallLimiter(params.limits)


Plan = list[tuple[str, int, Callable[[], float]]]  # (stage, expected calls, USD from request sizes)


def _budget_gate(params: Params, stage: str, r: int | None, where: Path, plan: Plan) -> None:
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
            _stop(BudgetStop, stopped, status.reason(resume), **status.model_dump(exclude={"stage", "round"}),
                  stage=stage, round=r)
    _clear_stop(stopped, "budget")


def teacher_sft(params: Params) -> None:
    """The white-box teacher (LOPD, and the teacher role that samples from it): SmolLM2 fine-tuned on the
    reference solutions of train problems. Built only when the run needs it; otherwise a manifest says so."""
    from ropd.models import prepare_smollm2, read_manifest
    from ropd.train.baselines import sft_train

    out = params.teacher_sft_dir
    if not params.needs_teacher_sft:
        if not out.exists():  # an already built teacher is kept: another run may use it
            with atomic_dir(out) as tmp:
                (tmp / "NOT_BUILT.json").write_text(json.dumps(
                    {"reason": f"method={params.method} with teacher provider={params.teacher.role.provider} "
                     "does not use the white-box teacher"}) + "\n")
        return
    cfg = params.teacher_sft
    rows = _train_pool(params).sample(frac=1.0, random_state=params.data.seed).head(cfg.n_prompts)
    examples = [{"prompt": json.loads(r["messages"]), "completion": [{"role": "assistant", "content": sol}]}
                for _, r in rows.iterrows() for sol in r["solutions"]]
    if not examples:
        raise ValueError(f"teacher_sft: the {len(rows)} train problems carry no reference solutions")
    base = prepare_smollm2(Path(params.models_dir))
    inputs = hashlib.sha256(json.dumps([cfg.model_dump(), examples, params.data.seed, read_manifest(base)],
                                       sort_keys=True).encode()).hexdigest()[:16]
    if (read_manifest(out) or {}).get("inputs") == inputs:
        return  # built from exactly these inputs already
    sft_train(base, examples, cfg, out, seed=params.data.seed, device=params.student.device,
              meta={"inputs": inputs})


def _teacher_role(params: Params) -> RoleConfig:
    from ropd.models import pinned

    return pinned(params.teacher.role)


def _teacher_wanted(params: Params, df: pd.DataFrame) -> pd.DataFrame:
    """The prompts the teacher answers: the whole training pool, and the held-out ones evaluation judges."""
    held = df[df["split"] == "eval"].head(params.eval.rubric_prompts)
    return pd.concat([df[df["split"] == "train"], held])


def teacher(params: Params) -> None:
    """Teacher answers for the train prompts, and for the held-out prompts that evaluation judges."""
    paths = RunPaths(params)
    cfg = _teacher_role(params)
    with run_lock(paths.run):
        wanted = _teacher_wanted(params, _prompts(paths))
        prompts = [TeacherPrompt(prompt_id=r["prompt_id"], question=r["question"], solutions=list(r["solutions"]))
                   for _, r in wanted.iterrows()]
        if cfg.provider == "dataset":
            dataset_index(prompts, cfg, params.teacher.m, paths.teacher)
            return
        questions = [p.question for p in prompts]
        _budget_gate(params, "teacher", None, paths.run,
                     [("teacher", len(prompts) * params.teacher.m, lambda: teacher_size_usd(params, questions))])
        cache, limiter = _judge_resources(params, "teacher")
        chat = make_chat("teacher", params.teacher.role, cache=cache, limiter=limiter)
        try:
            run_closing(build_index(prompts, chat, params.teacher.m, paths.teacher), chat)
        finally:
            cache.close()


# -- judge check -----------------------------------------------------------------------------------------
def judge_check(params: Params) -> None:
    """Pre-flight: is the configured judge good enough to train on? `judge_check.json`, then the gate."""
    from ropd.eval.judge_check import Status, render_summary

    paths = RunPaths(params)
    with run_lock(paths.run):
        result = judge_check_result(params)
        _json(result.model_dump(mode="json"), paths.judge_check)
        print(render_summary(result), flush=True)
        stopped = paths.run / "stopped.json"
        if result.status == Status.FAIL and params.judge_check.enforce:
            paths.judge_gate.unlink(missing_ok=True)
            _stop(JudgeCheckStop, stopped, f"judge check FAILED, and judge_check.enforce is on: {result.reason}. "
                  f"Nothing was trained. See {paths.judge_check}; fix the judge (or set judge_check.enforce: false) "
                  "and rerun.", status=result.status)
        _clear_stop(stopped, "judge_check")
        atomic_write_text("open\n", paths.judge_gate)


def judge_check_result(params: Params) -> JudgeCheckResult:
    """The judge check on the first `judge_check.prompts` training prompts in schedule order (round 0's first),
    with their teacher answers; SKIPPED where the method trains on no rubric verdicts."""
    from ropd.eval.judge_check import CheckItem, JudgeCheckResult
    from ropd.eval.judge_check import judge_check as run_check
    from ropd.rubric.prompts import VERIFIER_VERSION

    paths = RunPaths(params)
    names = (f"{params.rubricator.provider}:{params.rubricator.model} "
             f"({params.rubricator.fingerprint(RUBRICATOR_VERSION)})",
             f"{params.verifier.provider}:{params.verifier.model} ({params.verifier.fingerprint(VERIFIER_VERSION)})")
    n = params.judge_check.prompts
    if params.method not in RUBRIC_REWARD or n == 0:
        why = "judge_check.prompts is 0" if n == 0 else f"method {params.method} trains on no rubric verdicts"
        return JudgeCheckResult(status="SKIPPED", reason=why, rubricator=names[0], verifier=names[1], n_prompts=0)
    df = _prompts(paths)
    train = df[df["split"] == "train"].sort_values("round", kind="stable").head(n)
    index = TeacherIndex.load(paths.teacher, fingerprint(_teacher_role(params)))
    questions = _judge_questions(train)
    items = [CheckItem(prompt_id=str(pid), question=questions[str(pid)], teacher=index.answers(str(pid)))
             for pid in train["prompt_id"]]

    async def body(rubricator: ChatModel, verifier: ChatModel) -> JudgeCheckResult:
        return await run_check(items, rubricator, verifier, params.engine, params.judge_check, names)

    return _with_chats(params, ("rubricator", "verifier"), body, "judge_check")


# -- methods ---------------------------------------------------------------------------------------------
# Which round stages each method runs; the others write empty outputs, so one DAG serves every method.
USES = {"ropd": {"rollout", "mine", "qa", "verify"}, "static_rubric": {"rollout", "mine", "qa", "verify"},
        "tjudge": {"rollout", "verify"}, "sft": set(), "lopd": set()}
# The round stages that call a judge (static_rubric's `mine` reads its rubrics from a file).
CALLS_JUDGE = {"ropd": ("mine", "verify"), "static_rubric": ("verify",), "tjudge": ("verify",), "sft": (), "lopd": ()}
# The methods whose reward is a rubric verdict, and so depend on the judge check.
RUBRIC_REWARD = {"ropd", "static_rubric"}
# The stages that run under `launch.command`: GRPO's rollout and update (the TRL baselines launch themselves).
USES_LAUNCH = {method: {"rollout", "train"} if "rollout" in used else set() for method, used in USES.items()}


def _not_used(params: Params, stage: str, rd: Path, outputs: list[str]) -> bool:
    """True (after writing empty outputs) when `params.method` does not use `stage`."""
    if stage in USES[params.method]:
        return False
    note = {"method": params.method, "stage": stage, "skipped": f"method {params.method} does not use {stage}"}
    for name in outputs:
        if name.endswith(".parquet"):
            atomic_write_parquet(pd.DataFrame(), rd / name)
        elif name.endswith(".json"):
            _json(note, rd / name)
        else:
            atomic_write_text(note["skipped"] + "\n", rd / name)
    return True


# -- rollout ---------------------------------------------------------------------------------------------
def rollout(params: Params, r: int) -> None:
    from ropd.rollout.hf_sampler import TransformersSampler
    from ropd.train.grpo import load_policy

    paths = RunPaths(params)
    with run_lock(paths.run):
        if _not_used(params, "rollout", paths.round(r), ["rollouts.parquet"]):
            return
        if params.judge_check.enforce and not paths.judge_gate.is_file():
            raise ValueError(f"round {r}: judge_check.enforce is on and the judge check has not passed (no "
                             f"{paths.judge_gate}; see {paths.judge_check}): run `ropd stage judge_check` first")
        df = _prompts(paths)
        mine = df[df["round"] == r]
        if mine.empty:
            pool = int((df["split"] == "train").sum())
            raise ValueError(f"round {r}: no prompts assigned. {_pool_too_small(params, pool)}")
        device = process_device(params.student.device)
        _require(params, paths, r)
        model, tokenizer = load_policy(paths.checkpoint(r), device)
        sampler = TransformersSampler(model, tokenizer, device, params.student.chat_template_kwargs)
        sampling = params.student.sampling.model_copy(update={"seed": params.data.seed * 1000 + r})
        chats = {row["prompt_id"]: _messages(row) for _, row in mine.iterrows()}
        rank, world = rank_world()
        rollouts = sampler.sample(chats, sampling, shard=(rank, world))
        if world > 1:  # every process sampled its share of the batches: the main one writes them all
            from accelerate import PartialState
            from accelerate.utils import gather_object

            PartialState(cpu=not device.startswith("cuda"))  # joins the launcher's process group
            order = {pid: k for k, pid in enumerate(chats)}
            rollouts = sorted(gather_object(rollouts), key=lambda ro: (order[ro.prompt_id], ro.sample_idx))
            if not is_main():
                return
        out = pd.DataFrame([{"run_id": params.run_id, "round": r, **ro.model_dump(),
                             "checkpoint": paths.checkpoint(r).name} for ro in rollouts])
        atomic_write_parquet(out, paths.round(r) / "rollouts.parquet")


# -- judging ---------------------------------------------------------------------------------------------
def _judge_questions(prompts: pd.DataFrame) -> dict[str, str]:
    """What the judges see of each prompt: the student's whole conversation (see `render_conversation`)."""
    ids, chats = prompts["prompt_id"], prompts["messages"]
    return {str(pid): render_conversation(json.loads(m)) for pid, m in zip(ids, chats, strict=True)}


def _groups(params: Params, paths: RunPaths, r: int) -> list[tuple[GroupMeta, Group]]:
    """Groups of a round: one per prompt (shared rubric), or one per rollout (the paper's ablation)."""
    rollouts = pd.read_parquet(paths.round(r) / "rollouts.parquet").sort_values(["prompt_id", "sample_idx"])
    questions = _judge_questions(_prompts(paths))
    index = TeacherIndex.load(paths.teacher, fingerprint(_teacher_role(params)))
    out = []
    for pid, g in rollouts.groupby("prompt_id", sort=True):
        pid = str(pid)
        texts, idx = list(g["text"]), [int(i) for i in g["sample_idx"]]
        teacher = index.answers(pid)
        if params.shared_rubric:
            out.append((GroupMeta(group_id=pid, prompt_id=pid, sample_indices=idx),
                        Group(group_id=pid, question=questions[pid], teacher=teacher, student=texts)))
        else:
            for text, i in zip(texts, idx, strict=True):
                gid = f"{pid}#{i}"
                out.append((GroupMeta(group_id=gid, prompt_id=pid, sample_indices=[i]),
                            Group(group_id=gid, question=questions[pid], teacher=teacher, student=[text])))
    return out


def _sized_groups(params: Params, paths: RunPaths, r: int) -> list[Group]:
    """The round's groups for a cost estimate: the real ones once its rollouts exist, else stand-ins as large
    as the caps allow (the teacher's answers, or m of teacher.role.max_tokens; n answers of max_new_tokens)."""
    if (paths.round(r) / "rollouts.parquet").is_file():
        return [g for _, g in _groups(params, paths, r)]
    df = _prompts(paths)
    index = TeacherIndex.load(paths.teacher, fingerprint(_teacher_role(params))) if paths.teacher.is_file() else None
    cap = "x" * (CHARS_PER_TOKEN * params.student.sampling.max_new_tokens)
    teacher_cap = ["x" * (CHARS_PER_TOKEN * params.teacher.role.max_tokens)] * params.teacher.m
    n = params.student.sampling.n
    pools = [[cap] * n] if params.shared_rubric else [[cap]] * n
    return [Group(group_id=pid, question=q, teacher=index.answers(pid) if index and index.has(pid) else teacher_cap,
                  student=pool) for pid, q in _judge_questions(df[df["round"] == r]).items() for pool in pools]


def cost_plan(params: Params) -> list[tuple[str, int | None, int, Callable[[], float]]]:
    """Every judge stage of the run as (stage, round, expected calls, USD from request sizes), for
    `ropd cost estimate`; the same stages and calls the budget checks before each stage."""
    paths = RunPaths(params)
    if not paths.prompts.is_file():
        raise ValueError(f"{paths.prompts} is missing: the rounds' prompts are chosen by `ropd stage prepare`")
    df = _prompts(paths)
    plan: list[tuple[str, int | None, int, Callable[[], float]]] = []
    if params.teacher.role.provider != "dataset":
        questions = list(_teacher_wanted(params, df)["question"])
        plan.append(("teacher", None, len(questions) * params.teacher.m, lambda: teacher_size_usd(params, questions)))
    per_prompt = 1 if params.shared_rubric else params.student.sampling.n
    for item in params.rounds:
        calls = int((df["round"] == item.r).sum()) * per_prompt
        plan += [(stage, item.r, calls,
                  lambda s=stage, r=item.r: judge_size_usd(params, s, _sized_groups(params, paths, r)))
                 for stage in CALLS_JUDGE[params.method]]
    return plan


async def counted(coro: Any, bar: tqdm) -> Any:
    try:
        return await coro
    finally:
        bar.update()


def _with_chats(params: Params, roles: tuple[str, ...], body: Any, stage: str, r: int | None = None) -> Any:
    """Run `body(*chats)` (a coroutine function) with the roles' chats, sharing one cache and limiter; the
    calls paid are accounted to (`stage`, round `r`)."""
    cache, limiter = _judge_resources(params, stage, r)
    chats: list[ChatModel] = [make_chat(role, getattr(params, role), cache=cache, limiter=limiter) for role in roles]
    try:
        return run_closing(body(*chats), *chats)
    finally:
        cache.close()


def mine(params: Params, r: int) -> None:
    """Contrastive rubric induction for every group of the round, all concurrently."""
    import asyncio

    paths = RunPaths(params)
    with run_lock(paths.run):
        if _not_used(params, "mine", paths.round(r), ["rubrics.parquet", "criteria.parquet",
                                                      "rubric_failures.parquet"]):
            return
        groups = _groups(params, paths, r)
        if params.method == "static_rubric":
            _static_mine(params, paths, r, groups)
            return
        judged = [g for _, g in groups]
        _budget_gate(params, "mine", r, paths.round(r), [(s, len(judged), lambda s=s: judge_size_usd(params, s, judged))
                                                        for s in CALLS_JUDGE[params.method]])

        async def one(g: Group, chat: ChatModel) -> Rubric | LLMError:
            try:
                return await induce_rubric(chat, g, params.engine)
            except LLMError as exc:
                return exc

        async def induce_all(chat: ChatModel) -> list[Rubric | LLMError]:
            with tqdm(total=len(groups), desc=f"round {r} mine", unit="group") as bar:
                return list(await asyncio.gather(*(counted(one(g, chat), bar) for _, g in groups)))

        outcomes = _with_chats(params, ("rubricator",), induce_all, "mine", r)
        ok = [(m, o) for (m, _), o in zip(groups, outcomes, strict=True) if isinstance(o, Rubric)]
        failed = [{"run_id": params.run_id, "round": r, "group_id": m.group_id, "prompt_id": m.prompt_id,
                   "stage": o.stage or "rubric", "error_type": o.type.value, "message": o.message}
                  for (m, _), o in zip(groups, outcomes, strict=True) if isinstance(o, LLMError)]
        _write_rubrics(params, paths, r, ok, failed, params.rubricator.fingerprint(RUBRICATOR_VERSION))


def _static_mine(params: Params, paths: RunPaths, r: int, groups: list[tuple[GroupMeta, Group]]) -> None:
    """static_rubric's `mine`: each group's rubric is its prompt's rubric from the file; no judge call."""
    from ropd.rubric.static import load_static, rubric_for

    static = load_static(params.static_rubric)
    by_prompt = rubric_for(static, [m.prompt_id for m, _ in groups], str(params.static_rubric.file), r)
    _write_rubrics(params, paths, r, [(m, by_prompt[m.prompt_id]) for m, _ in groups], [], static.fingerprint)


def _write_rubrics(params: Params, paths: RunPaths, r: int, ok: list[tuple[GroupMeta, Rubric]],
                   failed: list[dict[str, Any]], fingerprint: str) -> None:
    rubrics, criteria = rubric_frames(ok, run_id=params.run_id, round=r, rubricator_fingerprint=fingerprint)
    rd = paths.round(r)
    atomic_write_parquet(rubrics, rd / "rubrics.parquet")
    atomic_write_parquet(criteria, rd / "criteria.parquet")
    atomic_write_parquet(pd.DataFrame(failed, columns=FAILURE_COLS), rd / "rubric_failures.parquet")


def qa(params: Params, r: int) -> None:
    from ropd.store.qa import run_qa

    paths = RunPaths(params)
    with run_lock(paths.run):
        if _not_used(params, "qa", paths.round(r), ["rubrics_clean.parquet", "criteria_clean.parquet",
                                                    "merges.parquet", "qa.md", "qa.json"]):
            return
        run_qa(paths.round(r), _prompts(paths), params.qa)


def verify(params: Params, r: int) -> None:
    """Blind batched verification against the QA-cleaned rubrics; failed groups are recorded, not zeroed."""
    import asyncio

    from ropd.store.qa import pool_diagnostics

    paths = RunPaths(params)
    rd = paths.round(r)
    with run_lock(paths.run):
        if _not_used(params, "verify", rd, ["judgements.parquet", "rewards.parquet", "diagnostics.json"]):
            return
        groups = _groups(params, paths, r)
        if params.method == "tjudge":
            _tjudge(params, paths, r, groups)
            return
        clean = pd.read_parquet(rd / "rubrics_clean.parquet").set_index("group_id")
        raw = pd.read_parquet(rd / "rubrics.parquet").set_index("group_id")
        failures = pd.read_parquet(rd / "rubric_failures.parquet").set_index("group_id")
        calling = [g for _, g in groups if g.group_id not in failures.index]
        _budget_gate(params, "verify", r, rd, [("verify", len(calling),
                                                lambda: judge_size_usd(params, "verify", calling))])

        def failed(g: Group, stage: str, type_: str, message: str, status: GroupStatus) -> GroupResult:
            return GroupResult(group_id=g.group_id, status=status, rewards=[None] * len(g.student),
                               error=JudgeFailure(stage=stage, type=type_, message=message))

        async def one(g: Group, chat: ChatModel) -> GroupResult:
            if g.group_id in failures.index:
                f = failures.loc[g.group_id]
                return failed(g, str(f["stage"]), str(f["error_type"]), str(f["message"]), GroupStatus.JUDGE_ERROR)
            row = clean.loc[g.group_id]
            rubric_json = row["rubric_json"]
            if bool(row.get("degenerate", False)):
                if params.degenerate_rubrics == "mask":
                    return failed(g, "qa", "degenerate", "rubric left with too few criteria after QA",
                                  GroupStatus.MASKED)
                rubric_json = raw.loc[g.group_id, "rubric_json"]  # still 4..12 criteria; flagged in qa.json
            return await verify_group(g, Rubric.model_validate_json(rubric_json), chat, params.engine)

        async def verify_all(chat: ChatModel) -> list[GroupResult]:
            with tqdm(total=len(groups), desc=f"round {r} verify", unit="group") as bar:
                return list(await asyncio.gather(*(counted(one(g, chat), bar) for _, g in groups)))

        results = _with_chats(params, ("verifier",), verify_all, "verify", r)
        judgements, rewards = verdict_frames([(m, res) for (m, _), res in zip(groups, results, strict=True)],
                                             run_id=params.run_id, round=r)
        atomic_write_parquet(judgements, rd / "judgements.parquet")
        atomic_write_parquet(rewards, rd / "rewards.parquet")
        metrics = pool_diagnostics(rd, _prompts(paths))
        # The round's tokens and spend join the pool figures in the same file (its format kept).
        usage = round_usage(Ledger.load(params, CACHE_FILE), r)
        atomic_write_text(json.dumps({**metrics, **usage}, indent=2) + "\n", rd / "diagnostics.json")


def _tjudge(params: Params, paths: RunPaths, r: int, groups: list[tuple[GroupMeta, Group]]) -> None:
    """T-Judge: the verifier role scores each rollout 0-10 with no rubric; the rest is as for ROPD."""
    import asyncio

    from ropd.eval.correctness import auc, is_correct
    from ropd.rubric.tjudge import tjudge_group

    async def judge_all(chat: ChatModel) -> list[GroupResult]:
        with tqdm(total=len(groups), desc=f"round {r} tjudge", unit="group") as bar:
            return list(await asyncio.gather(*(counted(tjudge_group(g, chat, params.engine), bar)
                                               for _, g in groups)))

    judged = [g for _, g in groups]
    _budget_gate(params, "verify", r, paths.round(r), [("verify", len(judged),
                                                        lambda: judge_size_usd(params, "verify", judged))])
    results = _with_chats(params, ("verifier",), judge_all, "verify", r)
    judgements, rewards = verdict_frames([(m, res) for (m, _), res in zip(groups, results, strict=True)],
                                         run_id=params.run_id, round=r)
    rd = paths.round(r)
    atomic_write_parquet(judgements, rd / "judgements.parquet")
    atomic_write_parquet(rewards, rd / "rewards.parquet")
    ok = rewards[rewards["status"] == "ok"].merge(pd.read_parquet(rd / "rollouts.parquet")[
        ["prompt_id", "sample_idx", "text"]], on=["prompt_id", "sample_idx"])
    refs = _prompts(paths).set_index("prompt_id")["reference_answer"]
    labels = [is_correct(t, str(refs[p])) for p, t in zip(ok["prompt_id"], ok["text"], strict=True)]
    known = [(float(x), bool(y)) for x, y in zip(ok["reward"], labels, strict=True) if y is not None]
    n_ok = sum(res.ok for res in results)
    _json({"run_id": params.run_id, "round": r, "method": "tjudge", "n_groups": len(results), "n_groups_ok": n_ok,
           "judge_error_rate": 1 - n_ok / len(results) if results else None,
           "mean_reward": float(ok["reward"].mean()) if len(ok) else None,
           "reward_auc": auc([x for x, _ in known], [y for _, y in known]) if known else None,
           **round_usage(Ledger.load(params, CACHE_FILE), r)}, rd / "diagnostics.json")


# -- training and evaluation -----------------------------------------------------------------------------
def train(params: Params, r: int) -> None:
    """One GRPO update on the round's rollouts → policy r+1; stop cleanly if the quality gate trips."""
    from ropd.rollout.base import Rollout
    from ropd.train.grpo import GRPOLearner, build_samples

    paths = RunPaths(params)
    rd = paths.round(r)
    with run_lock(paths.run):
        _require(params, paths, r)
        if params.method in ("sft", "lopd"):
            metrics = _train_baseline(params, paths, r)
            _json({"round": r, "method": params.method, **metrics}, rd / "train_metrics.json")
            _publish(params, paths, r + 1)
            return
        rewards = pd.read_parquet(rd / "rewards.parquet")
        by_group = rewards.groupby("group_id")["status"].agg(lambda s: (s == "ok").all())
        failed_share = float((~by_group).mean()) if len(by_group) else 1.0
        if failed_share > params.quality_gate.max_failed_share:
            reason = (f"round {r}: {failed_share:.0%} of groups could not be judged, above the quality gate "
                      f"({params.quality_gate.max_failed_share:.0%}); the policy was not updated. Resume from "
                      f"{paths.checkpoint(r)} after fixing the judge (see {rd / 'rewards.parquet'}).")
            _stop(QualityGateStop, rd / "stopped.json", reason, failed_share=failed_share)
        # A table written before a field existed (e.g. `logprobs`) leaves it at its default.
        rollouts = [Rollout.model_validate({k: row[k] for k in Rollout.model_fields if k in row})
                    for row in pd.read_parquet(rd / "rollouts.parquet").to_dict("records")]
        reward_map = {(str(x["prompt_id"]), int(x["sample_idx"])):
                      (None if pd.isna(x["reward"]) else float(x["reward"]), str(x["status"]))
                      for x in rewards.to_dict("records")}
        learner = GRPOLearner.load(paths.checkpoint(r), params.grpo, device=params.student.device)
        prompts = _prompts(paths)
        chats = {row["prompt_id"]: _messages(row) for _, row in prompts[prompts["round"] == r].iterrows()}
        samples = build_samples(learner.tokenizer, chats, rollouts, reward_map,
                                scale_by_std=params.grpo.scale_adv_by_std,
                                chat_template_kwargs=params.student.chat_template_kwargs)
        try:
            metrics = learner.train_round(samples)
        except ValueError as exc:  # e.g. grpo.tis_cap on rollouts without sampler log-probs: name the round
            raise ValueError(f"round {r} ({rd / 'rollouts.parquet'}): {exc}") from exc
        learner.save(paths.checkpoint(r + 1))
        if not is_main():
            return
        ok = rewards[rewards["status"] == "ok"]["reward"]
        _json({"round": r, "method": params.method, **metrics, "failed_share": failed_share,
               "mean_reward": float(ok.mean()) if len(ok) else None}, rd / "train_metrics.json")
        _publish(params, paths, r + 1)


def _require(params: Params, paths: RunPaths, r: int) -> None:
    require(paths.checkpoint(r), f"checkpoints.keep_every={params.checkpoints.keep_every}")


def _publish(params: Params, paths: RunPaths, r: int) -> None:
    """Policy r is complete: its manifest (what DVC and the next stages depend on), then the retention sweep."""
    publish(paths.checkpoint(r), r)
    _sweep(params, paths)


def _sweep(params: Params, paths: RunPaths) -> None:
    rounds = {item.r for item in params.rounds}

    def read_by_all(j: int) -> bool:
        """Round j's weights were read by rollout@j, train@j and evaluate@(j-1), wherever those are scheduled."""
        rolled = j not in rounds or (paths.round(j) / "rollouts.parquet").is_file()
        trained = j not in rounds or manifest_path(paths.checkpoint(j + 1)).is_file()
        evaluated = j - 1 not in rounds or (paths.round(j - 1) / "eval.json").is_file()
        return rolled and trained and evaluated

    sweep(paths.checkpoint(0).parent, params.checkpoints, read_by_all)


def _train_baseline(params: Params, paths: RunPaths, r: int) -> dict[str, float]:
    """SFT on the round's teacher answers, or LOPD on the round's prompts: the same prompt budget as GRPO."""
    from ropd.train.baselines import lopd_train, sft_train

    prompts = _prompts(paths)
    mine = prompts[prompts["round"] == r]
    chats = {row["prompt_id"]: _messages(row) for _, row in mine.iterrows()}
    seed = params.data.seed * 1000 + r
    src, dst = paths.checkpoint(r), paths.checkpoint(r + 1)
    if params.method == "lopd":
        return lopd_train(src, params.lopd_teacher, list(chats.values()), params.lopd, dst, seed=seed,
                          device=params.student.device)
    index = TeacherIndex.load(paths.teacher, fingerprint(_teacher_role(params)))
    examples = [{"prompt": chats[pid], "completion": [{"role": "assistant", "content": answer}]}
                for pid in chats for answer in index.answers(pid)]
    return sft_train(src, examples, params.sft, dst, seed=seed, device=params.student.device)


def evaluate(params: Params, r: int) -> None:
    """Held-out evaluation of policy r+1 after every `eval.every`-th round (and the last)."""
    paths = RunPaths(params)
    with run_lock(paths.run):
        if not params.evaluates_after(r):
            _json({"round": r, "skipped": f"eval.every={params.eval.every}"}, paths.round(r) / "eval.json")
        else:
            _require(params, paths, r + 1)
            result = evaluate_checkpoint(params, paths.checkpoint(r + 1))
            _json({"round": r, "prompts_seen": (r + 1) * params.data.prompts_per_round, **result.model_dump()},
                  paths.round(r) / "eval.json")
        _sweep(params, paths)


def evaluate_checkpoint(params: Params, checkpoint: Path) -> EvalResult:
    """k samples per held-out problem graded by math-verify; the first `eval.rubric_prompts` problems are
    also judged (rubric induced against the teacher's answers, then blind verification)."""
    import asyncio

    from ropd.eval.harness import eval_groups, summarize
    from ropd.rollout.hf_sampler import TransformersSampler
    from ropd.rubric.engine import score_group
    from ropd.train.grpo import load_policy

    paths = RunPaths(params)
    if not paths.prompts.is_file():
        raise ValueError(f"{paths.prompts} is missing: the held-out split is chosen by `ropd stage prepare`")
    prompts = _prompts(paths)
    held = prompts[prompts["split"] == "eval"].head(params.eval.n_prompts)
    model, tokenizer = load_policy(checkpoint, params.student.device)
    e = params.eval
    sampling = params.student.sampling.model_copy(update={"n": e.k, "temperature": e.temperature,
                                                          "max_new_tokens": e.max_new_tokens, "seed": 10_000})
    samples = TransformersSampler(model, tokenizer, params.student.device, params.student.chat_template_kwargs).sample(
        {row["prompt_id"]: _messages(row) for _, row in held.iterrows()}, sampling)
    del model
    refs = {str(k): str(v) for k, v in held.set_index("prompt_id")["reference_answer"].items()}
    teacher: dict[str, list[str]] = {}
    if e.rubric_prompts and paths.teacher.is_file():
        index = TeacherIndex.load(paths.teacher, fingerprint(_teacher_role(params)))
        teacher = {pid: index.answers(pid) for pid in refs if index.has(pid)}
    groups = eval_groups(samples, _judge_questions(held), teacher, e.rubric_prompts)
    judged = []
    if groups:
        async def judge(rubricator: ChatModel, verifier: ChatModel) -> list[GroupResult]:
            return list(await asyncio.gather(*(score_group(g, rubricator, verifier, params.engine) for g in groups)))

        results = _with_chats(params, ("rubricator", "verifier"), judge, "evaluate")
        judged = list(zip(groups, results, strict=True))
    return summarize(checkpoint.name, samples, refs, e.k, judged)


def summarize(params: Params) -> None:
    """One row per round for DVC plots and the report: reward, AUC, pass rates, accuracy."""
    paths = RunPaths(params)
    rows = []
    for item in params.rounds:
        rd = paths.round(item.r)
        row: dict[str, Any] = {"round": item.r}
        for name in ("train_metrics", "diagnostics", "eval"):
            f = rd / f"{name}.json"
            if f.is_file():
                data = json.loads(f.read_text())
                row.update({k: v for k, v in data.items() if isinstance(v, int | float) and k != "round"})
        rows.append(row)
    _json(rows, paths.history)


def report(params: Params) -> None:
    from ropd.store.report import write_report

    write_report(RunPaths(params).run, RunPaths(params).report)


SETUP_STAGES = ("demo_data", "prepare", "teacher_sft", "teacher", "judge_check")
ROUND_STAGES = {"rollout": rollout, "mine": mine, "qa": qa, "verify": verify, "train": train, "evaluate": evaluate}
RUN_STAGES = {"demo_data": demo_data, "prepare": prepare, "teacher_sft": teacher_sft, "teacher": teacher,
              "judge_check": judge_check, "summarize": summarize,
              "report": report}


def run_stage(params: Params, name: str, r: int | None = None) -> None:
    """Dispatch by name; a per-round stage needs a round that params.rounds contains.

    Each completed stage appends its duration to data/runs/.timings/<run>.jsonl (beside the run
    directory, which DVC hashes), so orchestration overhead can be measured against it.
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
    t0 = time.perf_counter()
    if params.launch.command and name in params.launch.stages and name in USES_LAUNCH[params.method]:
        run_dir = RunPaths(params).run
        with run_lock(run_dir):
            run_launched(params.launch.command, params.model_dump_json(), run_dir, name, r)
    else:
        fn(*args)
    timings = Path(params.runs_dir) / ".timings" / f"{params.run_id}.jsonl"
    timings.parent.mkdir(parents=True, exist_ok=True)
    with timings.open("a") as f:
        f.write(json.dumps({"stage": name, "round": r, "seconds": round(time.perf_counter() - t0, 3)}) + "\n")


def run_all(params: Params) -> None:
    """Every stage in order, in this process: the plain front-end (DVC and Prefect call the same stages)."""
    for name in SETUP_STAGES:
        run_stage(params, name)
    for item in params.rounds:
        for name in ROUND_STAGES:
            run_stage(params, name, item.r)
    run_stage(params, "summarize")
    run_stage(params, "report")
