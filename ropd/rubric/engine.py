"""The reward engine: for every group, rubric induction then blind batched verification, all concurrent.

A group whose judging fails is reported as `judge_error` with the stage and type of the error, and
its rewards are `None`: GRPO masks it. It is never scored 0, which would teach the student that
whatever it wrote was bad.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from ropd.config import EngineConfig
from ropd.llm.base import ChatModel, ChatRequest
from ropd.llm.errors import LLMError
from ropd.llm.structured import complete_structured
from ropd.rubric.pool import PoolItem, Source, blind_pool, chunk_pool, labelled_pool, unshuffle
from ropd.rubric.prompts import (
    RUBRICATOR_VERSION,
    VERIFIER_VERSION,
    Messages,
    render_rubricator,
    render_verifier,
    rubric_json_schema,
    verdict_json_schema,
)
from ropd.rubric.schema import Rubric, VerdictSheet
from ropd.rubric.scoring import weighted_score


class Group(BaseModel):
    """One prompt with its teacher answers and the current student's rollouts."""

    model_config = ConfigDict(frozen=True)

    group_id: str
    question: str
    teacher: list[str]
    student: list[str] = Field(min_length=1)


class GroupStatus(StrEnum):
    OK = "ok"
    JUDGE_ERROR = "judge_error"
    MASKED = "masked"  # judged unusable before verification (e.g. a degenerate rubric after QA)


class JudgeFailure(BaseModel):
    stage: str
    type: str
    message: str


class GroupResult(BaseModel):
    group_id: str
    status: GroupStatus
    error: JudgeFailure | None = None
    rubric: Rubric | None = None
    pool: list[PoolItem] = []
    verdicts: list[list[bool]] = []  # pool order
    student_verdicts: list[list[bool]] = []
    teacher_verdicts: list[list[bool]] = []
    student_scores: list[float] = []
    teacher_scores: list[float] = []
    rewards: list[float | None] = []
    score_scale: int | None = None  # rubric-free judges (T-Judge): reward = score / score_scale

    @property
    def ok(self) -> bool:
        return self.status == GroupStatus.OK


async def induce_rubric(chat: ChatModel, group: Group, cfg: EngineConfig) -> Rubric:
    messages = render_rubricator(group.question, group.teacher, group.student, min_k=cfg.min_criteria,
                                 max_k=cfg.max_criteria, max_answer_chars=cfg.max_answer_chars)
    request = ChatRequest.for_role(chat.role, chat.config, messages, template=RUBRICATOR_VERSION,
                                   json_schema=rubric_json_schema(cfg.min_criteria, cfg.max_criteria,
                                                                  cfg.max_criterion_chars),
                                   schema_name="ropd_rubric")

    def parse(data: dict) -> Rubric:
        return Rubric.from_reply(data, min_k=cfg.min_criteria, max_k=cfg.max_criteria,
                                 max_chars=cfg.max_criterion_chars)

    return await complete_structured(chat, request, parse, stage="rubric")


def _verifier_messages(question: str, rubric: Rubric, chunk: list[PoolItem], cfg: EngineConfig) -> Messages:
    return render_verifier(question, rubric, [it.text for it in chunk], max_answer_chars=cfg.max_answer_chars)


def verifier_chunks(question: str, rubric: Rubric, pool: list[PoolItem], cfg: EngineConfig,
                    reply_tokens: int) -> list[list[PoolItem]]:
    """The whole pool as one call, as the paper verifies it, unless its prompt would not fit the verifier's
    context (`engine.judge_context_tokens`, less `reply_tokens` for the reply); then consecutive chunks."""
    budget = cfg.prompt_char_budget(reply_tokens)

    def fits(chunk: list[PoolItem]) -> bool:
        return sum(len(m["content"]) for m in _verifier_messages(question, rubric, chunk, cfg)) <= budget

    return chunk_pool(pool, fits)


async def verify_pool(chat: ChatModel, question: str, rubric: Rubric, pool: list[PoolItem],
                      cfg: EngineConfig) -> list[list[bool]]:
    """Verdict rows in pool order; one call per chunk of `verifier_chunks`, chunks run concurrently."""
    k = len(rubric.criteria)

    async def one_chunk(chunk: list[PoolItem]) -> list[list[bool]]:
        messages = _verifier_messages(question, rubric, chunk, cfg)
        request = ChatRequest.for_role(chat.role, chat.config, messages, template=VERIFIER_VERSION,
                                       json_schema=verdict_json_schema(len(chunk), k), schema_name="ropd_verdicts")
        return await complete_structured(
            chat, request, lambda d: VerdictSheet.model_validate(d).matrix(len(chunk), k), stage="verify"
        )

    chunks = verifier_chunks(question, rubric, pool, cfg, chat.config.max_tokens)
    parts = await asyncio.gather(*(one_chunk(c) for c in chunks))
    return [row for part in parts for row in part]


def _failure(group: Group, exc: LLMError) -> GroupResult:
    return GroupResult(
        group_id=group.group_id,
        status=GroupStatus.JUDGE_ERROR,
        error=JudgeFailure(stage=exc.stage or "unknown", type=exc.type.value, message=exc.message),
        rewards=[None] * len(group.student),
    )


async def verify_group(group: Group, rubric: Rubric, verifier: ChatModel, cfg: EngineConfig) -> GroupResult:
    """Blind verification of one group against an already induced (and QA-cleaned) rubric."""
    pool = (blind_pool(group.group_id, group.teacher, group.student) if cfg.blind
            else labelled_pool(group.teacher, group.student))
    try:
        rows = await verify_pool(verifier, group.question, rubric, pool, cfg)
    except LLMError as exc:
        return _failure(group, exc)
    by_source = unshuffle(pool, rows)
    student_scores = [weighted_score(rubric, r) for r in by_source[Source.STUDENT]]
    return GroupResult(
        group_id=group.group_id,
        status=GroupStatus.OK,
        rubric=rubric,
        pool=pool,
        verdicts=rows,
        student_verdicts=by_source[Source.STUDENT],
        teacher_verdicts=by_source[Source.TEACHER],
        student_scores=student_scores,
        teacher_scores=[weighted_score(rubric, r) for r in by_source[Source.TEACHER]],
        rewards=list(student_scores),
    )


async def score_group(group: Group, rubricator: ChatModel, verifier: ChatModel, cfg: EngineConfig) -> GroupResult:
    try:
        rubric = await induce_rubric(rubricator, group, cfg)
    except LLMError as exc:
        return _failure(group, exc)
    return await verify_group(group, rubric, verifier, cfg)


async def score_groups(groups: list[Group], rubricator: ChatModel, verifier: ChatModel,
                       cfg: EngineConfig | None = None) -> list[GroupResult]:
    """Score every group concurrently; the clients' shared limiter bounds the calls in flight."""
    cfg = cfg or EngineConfig()
    ids = [g.group_id for g in groups]
    if len(set(ids)) != len(ids):
        raise ValueError("group ids must be unique within one call")
    return list(await asyncio.gather(*(score_group(g, rubricator, verifier, cfg) for g in groups)))
