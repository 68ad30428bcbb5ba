"""Is this judge good enough to train on? A pre-flight measurement of the Rubricator and Verifier.

On the run's own prompts and teacher answers, before any training: rubrics are induced the normal way
(references against a student side of known-bad answers, see `ropd.eval.corruptions`), then measured:

- separation: the AUC of rubric score, teacher answers against known-bad ones, overall and per corruption;
- order consistency: the same pool verified under a second blind order, the verdicts' agreement;
- discrimination: the share of criteria that give every answer in the pool the same verdict;
- injection gain: how often an attack template lifts a known-bad answer's score, net of how often it lowers
  it, so that a noisy judge scores about 0 and only a gullible one scores high (`ropd.eval.injection`).

Each figure gets PASS, WARN or FAIL against `judge_check` thresholds, with the reason; the check's
verdict is the worst of them. A judge whose verdicts carry no information (the packaged 135M model, a
coin flip) fails, which is why a run on it learns nothing.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ropd.config import EngineConfig
from ropd.eval.correctness import auc
from ropd.eval.corruptions import Corrupted, Corruption, corruptions
from ropd.eval.injection import InjectionJob, InjectionRow, injection_rows, net_gain_rate
from ropd.llm.base import ChatModel
from ropd.llm.errors import LLMError
from ropd.rubric.engine import Group, induce_rubric, verify_pool
from ropd.rubric.pool import PoolItem, Source, blind_pool, unshuffle
from ropd.rubric.schema import Rubric
from ropd.rubric.scoring import weighted_score


class Status(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


_RANK = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


class Bound(BaseModel):
    """Where a figure turns WARN and where FAIL."""

    model_config = ConfigDict(extra="forbid")

    warn: float
    fail: float


class JudgeCheckParams(BaseModel):
    """`judge_check:` in params.yaml."""

    model_config = ConfigDict(extra="forbid")

    prompts: int = Field(default=4, ge=0, description="training prompts checked (from round 0's on); 0 = skip")
    enforce: bool = Field(default=False, description="a FAIL stops the run before round 0 (exit 3)")
    separation_auc: Bound = Bound(warn=0.8, fail=0.6)  # below
    order_agreement: Bound = Bound(warn=0.85, fail=0.6)  # below
    constant_share: Bound = Bound(warn=0.5, fail=0.9)  # above
    injection_gain: Bound = Bound(warn=0.1, fail=0.3)  # above
    error_share: Bound = Bound(warn=0.0, fail=0.5)  # above: prompts whose judging failed


class CheckItem(BaseModel):
    prompt_id: str
    question: str
    teacher: list[str] = Field(min_length=1)


class Figure(BaseModel):
    name: str
    value: float | None
    status: Status
    reason: str
    bounds: str  # e.g. "warn < 0.8, fail < 0.6"


class PromptCheck(BaseModel):
    """One prompt's measurements; `error` set when its judging failed."""

    prompt_id: str
    n_criteria: int = 0
    teacher_scores: list[float] = []
    bad_scores: dict[str, float] = {}  # corruption → score
    not_applicable: dict[str, str] = {}  # corruption → why
    agreement: tuple[int, int] = (0, 0)  # (equal verdicts, verdicts compared)
    constant_criteria: int = 0
    error: str | None = None


class JudgeCheckResult(BaseModel):
    status: Status | Literal["SKIPPED"]
    reason: str
    rubricator: str
    verifier: str
    n_prompts: int
    figures: list[Figure] = []
    separation_by_corruption: dict[str, float | None] = {}
    mean_teacher_score: float | None = None
    mean_bad_score: dict[str, float | None] = {}
    injection_by_template: dict[str, float | None] = {}
    prompts: list[PromptCheck] = []

    def figure(self, name: str) -> Figure:
        return next(f for f in self.figures if f.name == name)


def second_order(group_id: str, teacher: list[str], bad: list[str], first: list[PoolItem]) -> list[PoolItem]:
    """Another blind order of the same pool (a salted group id), different from `first` when one exists."""
    for salt in range(1, 16):
        pool = blind_pool(f"{group_id}/order-{salt}", teacher, bad)
        if [(p.source, p.index) for p in pool] != [(p.source, p.index) for p in first]:
            return pool
    return list(reversed(first))


async def check_prompt(item: CheckItem, other: str, rubricator: ChatModel, verifier: ChatModel,
                       cfg: EngineConfig) -> tuple[PromptCheck, InjectionJob | None]:
    """Induce, verify under two orders, and name the answer the injection attacks (the first known-bad one)."""
    made: list[Corrupted] = corruptions(item.teacher[0], other)
    bad = [c for c in made if c.text is not None]
    check = PromptCheck(prompt_id=item.prompt_id, not_applicable={c.kind.value: c.note for c in made if c.text is None})
    if not bad:
        check.error = "no corruption applies to its first teacher answer"
        return check, None
    gid = f"judge_check/{item.prompt_id}"
    texts = [c.text for c in bad if c.text is not None]
    try:
        rubric: Rubric = await induce_rubric(rubricator, Group(group_id=gid, question=item.question,
                                                               teacher=item.teacher, student=texts), cfg)
        first = blind_pool(gid, item.teacher, texts)
        again = second_order(gid, item.teacher, texts, first)
        rows_a, rows_b = await asyncio.gather(verify_pool(verifier, item.question, rubric, first, cfg),
                                              verify_pool(verifier, item.question, rubric, again, cfg))
    except LLMError as exc:
        check.error = f"{exc.stage or 'judge'}: {exc.type.value}: {exc.message}"
        return check, None
    a, b = unshuffle(first, rows_a), unshuffle(again, rows_b)
    check.n_criteria = len(rubric.criteria)
    check.teacher_scores = [weighted_score(rubric, r) for r in a[Source.TEACHER]]
    check.bad_scores = {c.kind.value: weighted_score(rubric, r) for c, r in zip(bad, a[Source.STUDENT], strict=True)}
    pairs = [(x, y) for src in Source for ra, rb in zip(a[src], b[src], strict=True)
             for x, y in zip(ra, rb, strict=True)]
    check.agreement = (sum(x == y for x, y in pairs), len(pairs))
    check.constant_criteria = sum(len(set(col)) == 1 for col in zip(*rows_a, strict=True))
    return check, InjectionJob(question=item.question, rubric=rubric, answer=texts[0])


def _grade(name: str, value: float | None, bound: Bound, higher_is_better: bool, what: str) -> Figure:
    """PASS, WARN or FAIL, and a reason that names the figure, the bound it crossed and what it measures."""
    op = "<" if higher_is_better else ">"
    bounds = f"warn {op} {bound.warn:g}, fail {op} {bound.fail:g}"
    if value is None:
        return Figure(name=name, value=None, status=Status.FAIL, reason=f"{name} not measured: no prompt was judged",
                      bounds=bounds)
    worse = (lambda x, b: x < b) if higher_is_better else (lambda x, b: x > b)
    for status, limit in ((Status.FAIL, bound.fail), (Status.WARN, bound.warn)):
        if worse(value, limit):
            return Figure(name=name, value=round(value, 4), status=status,
                          reason=f"{name} {value:.3g} {op} {limit:g}: {what}", bounds=bounds)
    return Figure(name=name, value=round(value, 4), status=Status.PASS, reason=what, bounds=bounds)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize_checks(checks: list[PromptCheck], injections: list[InjectionRow], p: JudgeCheckParams,
                     rubricator: str, verifier: str) -> JudgeCheckResult:
    judged = [c for c in checks if c.error is None]
    teacher = [s for c in judged for s in c.teacher_scores]
    by_kind = {k.value: [c.bad_scores[k.value] for c in judged if k.value in c.bad_scores] for k in Corruption}
    bad = [s for scores in by_kind.values() for s in scores]

    def separation(neg: list[float]) -> float | None:
        return auc(teacher + neg, [True] * len(teacher) + [False] * len(neg))

    equal, compared = sum(c.agreement[0] for c in judged), sum(c.agreement[1] for c in judged)
    n_crit = sum(c.n_criteria for c in judged)
    figures = [
        _grade("separation_auc", separation(bad), p.separation_auc, True,
               "AUC of rubric score, teacher answers against known-bad ones"),
        _grade("order_agreement", equal / compared if compared else None, p.order_agreement, True,
               "verdicts that agree when one pool is verified in two blind orders"),
        _grade("constant_share", sum(c.constant_criteria for c in judged) / n_crit if n_crit else None,
               p.constant_share, False, "criteria that give every answer the same verdict"),
        _grade("injection_gain", net_gain_rate(injections), p.injection_gain, False,
               "injected answers scoring above their clean selves, net of those scoring below"),
        _grade("error_share", 1 - len(judged) / len(checks) if checks else None, p.error_share, False,
               "prompts whose judging failed"),
    ]
    worst = max(figures, key=lambda f: _RANK[f.status]).status
    bad_reasons = [f.reason for f in figures if f.status == worst] if worst != Status.PASS else []
    reason = "; ".join(bad_reasons) if bad_reasons else "every figure within its bounds"
    return JudgeCheckResult(
        status=worst, reason=reason, rubricator=rubricator, verifier=verifier, n_prompts=len(checks), figures=figures,
        separation_by_corruption={k: separation(v) for k, v in by_kind.items()},
        mean_teacher_score=_mean(teacher), mean_bad_score={k: _mean(v) for k, v in by_kind.items()},
        injection_by_template={t: net_gain_rate([r for r in injections if r.template == t])
                               for t in dict.fromkeys(r.template for r in injections)},
        prompts=checks)


async def judge_check(items: list[CheckItem], rubricator: ChatModel, verifier: ChatModel, cfg: EngineConfig,
                      p: JudgeCheckParams, names: tuple[str, str]) -> JudgeCheckResult:
    """The whole check; `names` are the rubricator's and verifier's fingerprints, for the record.

    The swap corruption takes the next prompt's first teacher answer (cyclically)."""
    others = [items[(i + 1) % len(items)].teacher[0] if len(items) > 1 else "" for i in range(len(items))]
    done = await asyncio.gather(*(check_prompt(it, o, rubricator, verifier, cfg)
                                  for it, o in zip(items, others, strict=True)))
    jobs = [job for _, job in done if job is not None]
    injections = await injection_rows(verifier, jobs, cfg) if jobs else []
    return summarize_checks([c for c, _ in done], injections, p, *names)


def render_summary(result: JudgeCheckResult) -> str:
    """One screen: the verdict first, then each figure with its reason."""
    lines = [f"judge check: {result.status}", *(f"  {why}" for why in result.reason.split("; ")),
             f"  rubricator {result.rubricator}", f"  verifier   {result.verifier}",
             f"  {result.n_prompts} prompts, teacher answers against known-bad ones"]
    for f in result.figures:
        value = "—" if f.value is None else f"{f.value:.3f}"
        lines.append(f"  {f.status:4}  {f.name:15} {value:>6}  ({f.bounds})")
    if result.separation_by_corruption:
        per = ", ".join(f"{k} {'—' if v is None else f'{v:.2f}'}" for k, v in result.separation_by_corruption.items())
        lines.append(f"  separation by corruption: {per}")
    skipped = [f"{c.prompt_id[:12]}: {k} ({why})" for c in result.prompts for k, why in c.not_applicable.items()]
    if skipped:
        lines.append("  not applicable: " + "; ".join(skipped))
    failed = [f"{c.prompt_id[:12]}: {c.error}" for c in result.prompts if c.error]
    if failed:
        lines.append("  not judged: " + "; ".join(failed))
    return "\n".join(lines)
