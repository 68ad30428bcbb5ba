"""Pydantic models for rubrics and verdicts: the contract between the judge LLMs and our scoring.

Rules live here so that every producer (remote API, local constrained decoder, parquet reload) is
held to the same checks, and so that a rule broken by a model is reported as a `schema` error.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, computed_field, model_validator

MIN_CRITERIA = 4
MAX_CRITERIA = 12
MIN_POINTS = 1
MAX_POINTS = 5


class Category(StrEnum):
    """The three criterion categories of the paper's rubric design (§1)."""

    TASK = "task_fulfilment"
    QUALITY = "response_quality"
    REASONING = "reasoning_quality"


NonEmptyText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=600)]
CriterionId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]


class Criterion(BaseModel):
    """One binary, self-contained check on a single answer, with an integer weight."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    id: CriterionId
    category: Category
    text: NonEmptyText
    points: int = Field(ge=MIN_POINTS, le=MAX_POINTS, strict=True)


class Rubric(BaseModel):
    """A prompt-specific rubric shared by a whole GRPO group.

    `max_score` is derived from the points and never read from model output, because the official
    code's trust in self-reported totals is exactly the failure we guard against.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    criteria: list[Criterion] = Field(min_length=MIN_CRITERIA, max_length=MAX_CRITERIA)

    @model_validator(mode="before")
    @classmethod
    def _drop_reported_totals(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in ("max_score", "total", "total_points")}
        return data

    @model_validator(mode="after")
    def _unique_ids(self) -> Rubric:
        seen: set[str] = set()
        for c in self.criteria:
            if c.id in seen:
                raise ValueError(f"duplicate criterion id {c.id!r}")
            seen.add(c.id)
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def max_score(self) -> int:
        return sum(c.points for c in self.criteria)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.criteria]


class AnswerVerdict(BaseModel):
    """The verifier's booleans for one pooled answer, in rubric order."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    answer: int = Field(ge=1, strict=True)
    verdicts: list[bool] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _strict_bools(cls, data: Any) -> Any:
        # "yes"/1 coerced to True would hide a broken judge; only JSON booleans count.
        if isinstance(data, dict):
            for v in data.get("verdicts") or []:
                if not isinstance(v, bool):
                    raise ValueError(f"verdict {v!r} is not a JSON boolean")
        return data


class VerdictSheet(BaseModel):
    """One batched verifier response: an entry per answer in the (chunk of the) blind pool."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    answers: list[AnswerVerdict] = Field(min_length=1)

    def matrix(self, n_answers: int, n_criteria: int) -> list[list[bool]]:
        """Check the sheet against what was asked and return verdicts in pool order.

        Raises `ValueError` naming the mismatch; callers classify it as a `validation` error.
        """
        got = [a.answer for a in self.answers]
        if sorted(got) != list(range(1, n_answers + 1)):
            raise ValueError(f"expected one entry for each answer 1..{n_answers}, got answer numbers {got}")
        if got != sorted(got):
            raise ValueError(f"answers must be listed in order 1..{n_answers}, got {got}")
        for a in self.answers:
            if len(a.verdicts) != n_criteria:
                raise ValueError(
                    f"answer {a.answer} has {len(a.verdicts)} verdicts, expected {n_criteria} (one per criterion)"
                )
        return [list(a.verdicts) for a in self.answers]
