"""The judge stages: the pre-flight judge check, rubric mining (or a fixed set), QA, blind verification, and
the cost plan over all of them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
from tqdm.auto import tqdm

from ropd.io import atomic_write_parquet, atomic_write_text
from ropd.llm.base import ChatModel
from ropd.llm.cost import CHARS_PER_TOKEN, Ledger, judge_size_usd, round_usage, teacher_size_usd
from ropd.llm.errors import LLMError
from ropd.params import Params
from ropd.pipeline.lock import run_lock
from ropd.pipeline.run import (
    CACHE_FILE,
    CALLS_JUDGE,
    RUBRIC_REWARD,
    JudgeCheckStop,
    RunPaths,
    budget_gate,
    clear_stop,
    counted,
    judge_questions,
    not_used,
    read_prompts,
    stop,
    teacher_role,
    with_chats,
    write_json,
)
from ropd.pipeline.teacher import teacher_wanted
from ropd.rubric.engine import Group, GroupResult, GroupStatus, JudgeFailure, induce_rubric, verify_group
from ropd.rubric.prompts import RUBRICATOR_VERSION
from ropd.rubric.schema import Rubric
from ropd.rubric.tables import FAILURE_COLS, GroupMeta, rubric_frames, verdict_frames
from ropd.teacher import TeacherIndex, fingerprint

if TYPE_CHECKING:
    from ropd.eval.judge_check import JudgeCheckResult


def judge_check(params: Params) -> None:
    """Pre-flight: is the configured judge good enough to train on? `judge_check.json`, then the gate."""
    from ropd.eval.judge_check import Status, render_summary

    paths = RunPaths(params)
    with run_lock(paths.run):
        result = judge_check_result(params)
        write_json(result.model_dump(mode="json"), paths.judge_check)
        print(render_summary(result), flush=True)
        stopped = paths.run / "stopped.json"
        if result.status == Status.FAIL and params.judge_check.enforce:
            paths.judge_gate.unlink(missing_ok=True)
            stop(JudgeCheckStop, stopped, f"judge check FAILED, and judge_check.enforce is on: {result.reason}. "
                 f"Nothing was trained. See {paths.judge_check}; fix the judge (or set judge_check.enforce: false) "
                 "and rerun.", status=result.status)
        clear_stop(stopped, "judge_check")
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
    df = read_prompts(paths)
    train = df[df["split"] == "train"].sort_values("round", kind="stable").head(n)
    index = TeacherIndex.load(paths.teacher, fingerprint(teacher_role(params)))
    questions = judge_questions(train)
    items = [CheckItem(prompt_id=str(pid), question=questions[str(pid)], teacher=index.answers(str(pid)))
             for pid in train["prompt_id"]]

    async def body(rubricator: ChatModel, verifier: ChatModel) -> JudgeCheckResult:
        return await run_check(items, rubricator, verifier, params.engine, params.judge_check, names)

    return with_chats(params, ("rubricator", "verifier"), body, "judge_check")


def round_groups(params: Params, paths: RunPaths, r: int) -> list[tuple[GroupMeta, Group]]:
    """Groups of a round: one per prompt (shared rubric), or one per rollout (the paper's ablation)."""
    rollouts = pd.read_parquet(paths.round(r) / "rollouts.parquet").sort_values(["prompt_id", "sample_idx"])
    questions = judge_questions(read_prompts(paths))
    index = TeacherIndex.load(paths.teacher, fingerprint(teacher_role(params)))
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


def sized_groups(params: Params, paths: RunPaths, r: int) -> list[Group]:
    """The round's groups for a cost estimate: the real ones once its rollouts exist, else stand-ins as large
    as the caps allow (the teacher's answers, or m of teacher.role.max_tokens; n answers of max_new_tokens)."""
    if (paths.round(r) / "rollouts.parquet").is_file():
        return [g for _, g in round_groups(params, paths, r)]
    df = read_prompts(paths)
    index = TeacherIndex.load(paths.teacher, fingerprint(teacher_role(params))) if paths.teacher.is_file() else None
    cap = "x" * (CHARS_PER_TOKEN * params.student.sampling.max_new_tokens)
    teacher_cap = ["x" * (CHARS_PER_TOKEN * params.teacher.role.max_tokens)] * params.teacher.m
    n = params.student.sampling.n
    pools = [[cap] * n] if params.shared_rubric else [[cap]] * n
    return [Group(group_id=pid, question=q, teacher=index.answers(pid) if index and index.has(pid) else teacher_cap,
                  student=pool) for pid, q in judge_questions(df[df["round"] == r]).items() for pool in pools]


def cost_plan(params: Params) -> list[tuple[str, int | None, int, Callable[[], float]]]:
    """Every judge stage of the run as (stage, round, expected calls, USD from request sizes), for
    `ropd cost estimate`; the same stages and calls the budget checks before each stage."""
    paths = RunPaths(params)
    if not paths.prompts.is_file():
        raise ValueError(f"{paths.prompts} is missing: the rounds' prompts are chosen by `ropd stage prepare`")
    df = read_prompts(paths)
    plan: list[tuple[str, int | None, int, Callable[[], float]]] = []
    if params.teacher.role.provider != "dataset":
        questions = list(teacher_wanted(params, df)["question"])
        plan.append(("teacher", None, len(questions) * params.teacher.m, lambda: teacher_size_usd(params, questions)))
    per_prompt = 1 if params.shared_rubric else params.student.sampling.n
    for item in params.rounds:
        calls = int((df["round"] == item.r).sum()) * per_prompt
        plan += [(stage, item.r, calls,
                  lambda s=stage, r=item.r: judge_size_usd(params, s, sized_groups(params, paths, r)))
                 for stage in CALLS_JUDGE[params.method]]
    return plan


def mine(params: Params, r: int) -> None:
    """Contrastive rubric induction for every group of the round, all concurrently."""
    import asyncio

    paths = RunPaths(params)
    with run_lock(paths.run):
        if not_used(params, "mine", paths.round(r), ["rubrics.parquet", "criteria.parquet",
                                                      "rubric_failures.parquet"]):
            return
        groups = round_groups(params, paths, r)
        if params.method == "static_rubric":
            _static_mine(params, paths, r, groups)
            return
        judged = [g for _, g in groups]
        budget_gate(params, "mine", r, paths.round(r), [(s, len(judged), lambda s=s: judge_size_usd(params, s, judged))
                                                       for s in CALLS_JUDGE[params.method]])

        async def one(g: Group, chat: ChatModel) -> Rubric | LLMError:
            try:
                return await induce_rubric(chat, g, params.engine)
            except LLMError as exc:
                return exc

        async def induce_all(chat: ChatModel) -> list[Rubric | LLMError]:
            with tqdm(total=len(groups), desc=f"round {r} mine", unit="group") as bar:
                return list(await asyncio.gather(*(counted(one(g, chat), bar) for _, g in groups)))

        outcomes = with_chats(params, ("rubricator",), induce_all, "mine", r)
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
        if not_used(params, "qa", paths.round(r), ["rubrics_clean.parquet", "criteria_clean.parquet",
                                                    "merges.parquet", "qa.md", "qa.json"]):
            return
        run_qa(paths.round(r), read_prompts(paths), params.qa)


def verify(params: Params, r: int) -> None:
    """Blind batched verification against the QA-cleaned rubrics; failed groups are recorded, not zeroed."""
    import asyncio

    from ropd.store.qa import pool_diagnostics

    paths = RunPaths(params)
    rd = paths.round(r)
    with run_lock(paths.run):
        if not_used(params, "verify", rd, ["judgements.parquet", "rewards.parquet", "diagnostics.json"]):
            return
        groups = round_groups(params, paths, r)
        if params.method == "tjudge":
            _tjudge(params, paths, r, groups)
            return
        clean = pd.read_parquet(rd / "rubrics_clean.parquet").set_index("group_id")
        raw = pd.read_parquet(rd / "rubrics.parquet").set_index("group_id")
        failures = pd.read_parquet(rd / "rubric_failures.parquet").set_index("group_id")
        calling = [g for _, g in groups if g.group_id not in failures.index]
        budget_gate(params, "verify", r, rd, [("verify", len(calling),
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

        results = with_chats(params, ("verifier",), verify_all, "verify", r)
        judgements, rewards = verdict_frames([(m, res) for (m, _), res in zip(groups, results, strict=True)],
                                             run_id=params.run_id, round=r)
        atomic_write_parquet(judgements, rd / "judgements.parquet")
        atomic_write_parquet(rewards, rd / "rewards.parquet")
        metrics = pool_diagnostics(rd, read_prompts(paths))
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
    budget_gate(params, "verify", r, paths.round(r), [("verify", len(judged),
                                                       lambda: judge_size_usd(params, "verify", judged))])
    results = with_chats(params, ("verifier",), judge_all, "verify", r)
    judgements, rewards = verdict_frames([(m, res) for (m, _), res in zip(groups, results, strict=True)],
                                         run_id=params.run_id, round=r)
    rd = paths.round(r)
    atomic_write_parquet(judgements, rd / "judgements.parquet")
    atomic_write_parquet(rewards, rd / "rewards.parquet")
    ok = rewards[rewards["status"] == "ok"].merge(pd.read_parquet(rd / "rollouts.parquet")[
        ["prompt_id", "sample_idx", "text"]], on=["prompt_id", "sample_idx"])
    refs = read_prompts(paths).set_index("prompt_id")["reference_answer"]
    labels = [is_correct(t, str(refs[p])) for p, t in zip(ok["prompt_id"], ok["text"], strict=True)]
    known = [(float(x), bool(y)) for x, y in zip(ok["reward"], labels, strict=True) if y is not None]
    n_ok = sum(res.ok for res in results)
    write_json({"run_id": params.run_id, "round": r, "method": "tjudge", "n_groups": len(results), "n_groups_ok": n_ok,
                "judge_error_rate": 1 - n_ok / len(results) if results else None,
                "mean_reward": float(ok["reward"].mean()) if len(ok) else None,
                "reward_auc": auc([x for x, _ in known], [y for _, y in known]) if known else None,
                **round_usage(Ledger.load(params, CACHE_FILE), r)}, rd / "diagnostics.json")
