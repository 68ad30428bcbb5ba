"""The pipeline stages as functions of (params, round) → files. DVC, Prefect and the CLI all call these.

Every output is written atomically, so a killed stage leaves either its previous output or none,
never a torn file. Every LLM call goes through the persistent call cache, so rerunning a killed
stage pays only for the calls it had not received. Sampling and training are seeded, so a rerun
produces the same tables.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ropd.io import atomic_dir, atomic_write_parquet, atomic_write_text
from ropd.llm.base import ChatModel, run_closing
from ropd.llm.cache import CallCache
from ropd.llm.errors import LLMError
from ropd.llm.factory import make_chat
from ropd.llm.limits import CallLimiter
from ropd.params import Params
from ropd.pipeline.lock import run_lock
from ropd.rubric.engine import Group, GroupResult, GroupStatus, JudgeFailure, induce_rubric, verify_group
from ropd.rubric.prompts import RUBRICATOR_VERSION
from ropd.rubric.schema import Rubric
from ropd.rubric.tables import GroupMeta, rubric_frames, verdict_frames
from ropd.teacher import TeacherIndex, TeacherPrompt, build_index, dataset_index, fingerprint

CACHE_FILE = Path("data/cache/llm_calls.sqlite")


class QualityGateStop(RuntimeError):
    """Too many groups of a round failed judging: the run stops before training on them."""


class RunPaths:
    """Where each artifact of a run lives; one place, so DVC, Prefect and the report agree."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.run = params.run_dir
        self.prompts = self.run / "prompts.parquet"
        self.teacher = self.run / "teacher.parquet"
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


def prepare(params: Params) -> None:
    """Models prepared, the run's prompts chosen (which round uses which), and the round-0 policy."""
    from ropd.data.load import load_prompts
    from ropd.models import prepare_smollm2

    paths = RunPaths(params)
    d = params.data
    with run_lock(paths.run):
        base = Path(params.student.model_path) if params.student.model_path else prepare_smollm2(
            Path(params.models_dir))
        demo = paths.demo_dir
        train = (pd.read_parquet(demo / "train.parquet") if d.source == "demo"
                 else load_prompts(d.source, "train", seed=d.seed))
        held = (pd.read_parquet(demo / "eval.parquet") if d.eval_source is None
                else load_prompts(d.eval_source, "eval", seed=d.seed))
        need = d.prompts_per_round * len(params.rounds)
        if len(train) < need:
            raise ValueError(f"data.source has {len(train)} prompts; {len(params.rounds)} rounds x "
                             f"{d.prompts_per_round} prompts need {need}")
        train = train.sample(frac=1.0, random_state=d.seed).head(need).reset_index(drop=True)
        train["round"] = train.index // d.prompts_per_round
        held = held.head(params.eval.n_prompts).assign(round=-1)
        atomic_write_parquet(pd.concat([train, held], ignore_index=True), paths.prompts)
        paths.checkpoint(0).parent.mkdir(parents=True, exist_ok=True)
        _link_tree(base, paths.checkpoint(0))


def _prompts(paths: RunPaths) -> pd.DataFrame:
    return pd.read_parquet(paths.prompts)


def _messages(row: Any) -> list[dict[str, str]]:
    return json.loads(row["messages"])


# -- teacher ---------------------------------------------------------------------------------------------
def _judge_resources(params: Params) -> tuple[CallCache, CallLimiter]:
    return CallCache(CACHE_FILE), CallLimiter(params.limits)


def teacher(params: Params) -> None:
    paths = RunPaths(params)
    cfg = params.teacher.role
    with run_lock(paths.run):
        df = _prompts(paths)
        train = df[df["split"] == "train"]
        prompts = [TeacherPrompt(prompt_id=r["prompt_id"], question=r["question"], solutions=list(r["solutions"]))
                   for _, r in train.iterrows()]
        if cfg.provider == "dataset":
            dataset_index(prompts, cfg, params.teacher.m, paths.teacher)
            return
        cache, limiter = _judge_resources(params)
        chat = make_chat("teacher", cfg, cache=cache, limiter=limiter)
        try:
            run_closing(build_index(prompts, chat, params.teacher.m, paths.teacher), chat)
        finally:
            cache.close()


# -- rollout ---------------------------------------------------------------------------------------------
def rollout(params: Params, r: int) -> None:
    from ropd.rollout.hf_sampler import TransformersSampler
    from ropd.train.grpo import load_policy

    paths = RunPaths(params)
    with run_lock(paths.run):
        df = _prompts(paths)
        mine = df[df["round"] == r]
        if mine.empty:
            raise ValueError(f"round {r}: no prompts assigned (params.rounds has {len(params.rounds)} rounds)")
        model, tokenizer = load_policy(paths.checkpoint(r), params.student.device)
        sampler = TransformersSampler(model, tokenizer, params.student.device)
        sampling = params.student.sampling.model_copy(update={"seed": params.data.seed * 1000 + r})
        rollouts = sampler.sample({row["prompt_id"]: _messages(row) for _, row in mine.iterrows()}, sampling)
        out = pd.DataFrame([{"run_id": params.run_id, "round": r, **ro.model_dump(),
                             "checkpoint": paths.checkpoint(r).name} for ro in rollouts])
        atomic_write_parquet(out, paths.round(r) / "rollouts.parquet")


# -- judging ---------------------------------------------------------------------------------------------
def _groups(params: Params, paths: RunPaths, r: int) -> list[tuple[GroupMeta, Group]]:
    """Groups of a round: one per prompt (shared rubric), or one per rollout (the paper's ablation)."""
    rollouts = pd.read_parquet(paths.round(r) / "rollouts.parquet").sort_values(["prompt_id", "sample_idx"])
    questions = _prompts(paths).set_index("prompt_id")["question"]
    index = TeacherIndex.load(paths.teacher, fingerprint(params.teacher.role))
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


async def counted(coro: Any, bar: tqdm) -> Any:
    try:
        return await coro
    finally:
        bar.update()


def _with_chat(params: Params, role: str, body: Any) -> Any:
    """Run `body(chat)` (a coroutine factory) with the role's chat, cache and limiter, then close them."""
    cache, limiter = _judge_resources(params)
    chat: ChatModel = make_chat(role, getattr(params, role), cache=cache, limiter=limiter)
    try:
        return run_closing(body(chat), chat)
    finally:
        cache.close()


def mine(params: Params, r: int) -> None:
    """Contrastive rubric induction for every group of the round, all concurrently."""
    import asyncio

    paths = RunPaths(params)
    with run_lock(paths.run):
        groups = _groups(params, paths, r)

        async def one(g: Group, chat: ChatModel) -> Rubric | LLMError:
            try:
                return await induce_rubric(chat, g, params.engine)
            except LLMError as exc:
                return exc

        async def induce_all(chat: ChatModel) -> list[Rubric | LLMError]:
            with tqdm(total=len(groups), desc=f"round {r} mine", unit="group") as bar:
                return list(await asyncio.gather(*(counted(one(g, chat), bar) for _, g in groups)))

        outcomes = _with_chat(params, "rubricator", induce_all)
        ok = [(m, o) for (m, _), o in zip(groups, outcomes, strict=True) if isinstance(o, Rubric)]
        failed = [{"run_id": params.run_id, "round": r, "group_id": m.group_id, "prompt_id": m.prompt_id,
                   "stage": o.stage or "rubric", "error_type": o.type.value, "message": o.message}
                  for (m, _), o in zip(groups, outcomes, strict=True) if isinstance(o, LLMError)]
        rubrics, criteria = rubric_frames(ok, run_id=params.run_id, round=r,
                                          rubricator_fingerprint=params.rubricator.fingerprint(RUBRICATOR_VERSION))
        rd = paths.round(r)
        atomic_write_parquet(rubrics, rd / "rubrics.parquet")
        atomic_write_parquet(criteria, rd / "criteria.parquet")
        atomic_write_parquet(pd.DataFrame(failed, columns=["run_id", "round", "group_id", "prompt_id", "stage",
                                                           "error_type", "message"]), rd / "rubric_failures.parquet")


def qa(params: Params, r: int) -> None:
    from ropd.store.qa import run_qa

    paths = RunPaths(params)
    with run_lock(paths.run):
        run_qa(paths.round(r), _prompts(paths), params.qa)


def verify(params: Params, r: int) -> None:
    """Blind batched verification against the QA-cleaned rubrics; failed groups are recorded, not zeroed."""
    import asyncio

    from ropd.store.qa import pool_diagnostics

    paths = RunPaths(params)
    rd = paths.round(r)
    with run_lock(paths.run):
        groups = _groups(params, paths, r)
        clean = pd.read_parquet(rd / "rubrics_clean.parquet").set_index("group_id")
        raw = pd.read_parquet(rd / "rubrics.parquet").set_index("group_id")
        failures = pd.read_parquet(rd / "rubric_failures.parquet").set_index("group_id")

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

        results = _with_chat(params, "verifier", verify_all)
        judgements, rewards = verdict_frames([(m, res) for (m, _), res in zip(groups, results, strict=True)],
                                             run_id=params.run_id, round=r)
        atomic_write_parquet(judgements, rd / "judgements.parquet")
        atomic_write_parquet(rewards, rd / "rewards.parquet")
        pool_diagnostics(rd, _prompts(paths))


# -- training and evaluation -----------------------------------------------------------------------------
def train(params: Params, r: int) -> None:
    """One GRPO update on the round's rollouts → policy r+1; stop cleanly if the quality gate trips."""
    from ropd.rollout.base import Rollout
    from ropd.train.grpo import GRPOLearner, build_samples

    paths = RunPaths(params)
    rd = paths.round(r)
    with run_lock(paths.run):
        rewards = pd.read_parquet(rd / "rewards.parquet")
        by_group = rewards.groupby("group_id")["status"].agg(lambda s: (s == "ok").all())
        failed_share = float((~by_group).mean()) if len(by_group) else 1.0
        if failed_share > params.quality_gate.max_failed_share:
            reason = (f"round {r}: {failed_share:.0%} of groups could not be judged, above the quality gate "
                      f"({params.quality_gate.max_failed_share:.0%}); the policy was not updated. Resume from "
                      f"{paths.checkpoint(r)} after fixing the judge (see {rd / 'rewards.parquet'}).")
            _json({"stopped": True, "reason": reason, "failed_share": failed_share}, rd / "stopped.json")
            raise QualityGateStop(reason)
        rollouts = [Rollout.model_validate({k: row[k] for k in Rollout.model_fields})
                    for row in pd.read_parquet(rd / "rollouts.parquet").to_dict("records")]
        reward_map = {(str(x["prompt_id"]), int(x["sample_idx"])):
                      (None if pd.isna(x["reward"]) else float(x["reward"]), str(x["status"]))
                      for x in rewards.to_dict("records")}
        learner = GRPOLearner.load(paths.checkpoint(r), params.grpo, device=params.student.device)
        prompts = _prompts(paths)
        chats = {row["prompt_id"]: _messages(row) for _, row in prompts[prompts["round"] == r].iterrows()}
        samples = build_samples(learner.tokenizer, chats, rollouts, reward_map,
                                scale_by_std=params.grpo.scale_adv_by_std)
        metrics = learner.train_round(samples)
        learner.save(paths.checkpoint(r + 1))
        ok = rewards[rewards["status"] == "ok"]["reward"]
        _json({"round": r, **metrics, "failed_share": failed_share,
               "mean_reward": float(ok.mean()) if len(ok) else None}, rd / "train_metrics.json")


def evaluate(params: Params, r: int) -> None:
    """Held-out accuracy of policy r+1: k samples per problem, pass@1 averaged over k, checked by math-verify."""
    from ropd.eval.correctness import is_correct
    from ropd.rollout.hf_sampler import TransformersSampler
    from ropd.train.grpo import load_policy

    paths = RunPaths(params)
    with run_lock(paths.run):
        prompts = _prompts(paths)
        held = prompts[prompts["split"] == "eval"].head(params.eval.n_prompts)
        model, tokenizer = load_policy(paths.checkpoint(r + 1), params.student.device)
        sampler = TransformersSampler(model, tokenizer, params.student.device)
        e = params.eval
        sampling = params.student.sampling.model_copy(update={"n": e.k, "temperature": e.temperature,
                                                              "max_new_tokens": e.max_new_tokens, "seed": 10_000})
        outs = sampler.sample({row["prompt_id"]: _messages(row) for _, row in held.iterrows()}, sampling)
        refs = held.set_index("prompt_id")["reference_answer"]
        verdicts = [is_correct(o.text, str(refs[o.prompt_id])) for o in outs]
        _json({"round": r, "policy": paths.checkpoint(r + 1).name, "n_problems": len(held), "k": e.k,
               "accuracy": sum(bool(v) for v in verdicts) / max(len(verdicts), 1),
               "unparseable": sum(v is None for v in verdicts)}, paths.round(r) / "eval.json")


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


ROUND_STAGES = {"rollout": rollout, "mine": mine, "qa": qa, "verify": verify, "train": train, "evaluate": evaluate}
RUN_STAGES = {"demo_data": demo_data, "prepare": prepare, "teacher": teacher, "summarize": summarize,
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
    t0 = time.perf_counter()
    fn(*args)
    timings = Path(params.runs_dir) / ".timings" / f"{params.run_id}.jsonl"
    timings.parent.mkdir(parents=True, exist_ok=True)
    with timings.open("a") as f:
        f.write(json.dumps({"stage": name, "round": r, "seconds": round(time.perf_counter() - t0, 3)}) + "\n")


def run_all(params: Params) -> None:
    """Every stage in order, in this process: the plain front-end (DVC and Prefect call the same stages)."""
    for name in ("demo_data", "prepare", "teacher"):
        run_stage(params, name)
    for item in params.rounds:
        for name in ROUND_STAGES:
            run_stage(params, name, item.r)
    run_stage(params, "summarize")
    run_stage(params, "report")
