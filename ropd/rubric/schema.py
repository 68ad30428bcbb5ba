"""Pydantic models for rubrics and verdicts: the contract between the judge LLMs and our scoring.

Rules live here so that every producer (remote API, local constrained decoder, parquet reload) is
held to the same checks, and so that a rule broken by a model is reported as a `schema` error.

The judges reply in the shapes of the strict reply schemas (ropd/rubric/prompts.py): a rubric as named
slots c1..cN, verdicts and scores under answer keys a1..an. Fixed names pin ids and order without the
array keywords strict mode refuses; `Rubric.from_reply` and `VerdictSheet.matrix` check what those
schemas cannot state (counts, gaps, text lengths) and turn the reply into the same Python objects.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, computed_field, field_validator, model_validator

MIN_CRITERIA = 4
MAX_CRITERIA = 12
MIN_POINTS = 1
MAX_POINTS = 5
MAX_TEXT_CHARS = 600  # the absolute cap on a criterion's text; engine.max_criterion_chars sets the working one


class Category(StrEnum):
    """The three criterion categories of the paper's rubric design (§1)."""

    TASK = "task_fulfilment"
    QUALITY = "response_quality"
    REASONING = "reasoning_quality"


NonEmptyText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS)]
CriterionId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]
Points = Annotated[int, Field(ge=MIN_POINTS, le=MAX_POINTS, strict=True)]


def criterion_slots(max_k: int) -> list[str]:
    """The rubric reply's slot names, c1..c{max_k}; a criterion's id is the name of its slot."""
    return [f"c{k}" for k in range(1, max_k + 1)]


def answer_keys(n: int) -> list[str]:
    """The keys of a verdict or score reply, a1..a{n}, for the answers numbered 1..n in the prompt."""
    return [f"a{i}" for i in range(1, n + 1)]


def ordered_answers(reply: dict[str, Any], n: int, what: str) -> list[Any]:
    """`reply`'s values in answer order a1..a{n}; raises `ValueError` naming missing and unexpected keys."""
    keys = answer_keys(n)
    missing = [k for k in keys if k not in reply]
    extra = [k for k in reply if k not in keys]
    if missing or extra:
        raise ValueError(f"expected one {what} for each answer 1..{n}, under keys a1..a{n}; "
                         f"missing {missing}, unexpected {extra}")
    return [reply[k] for k in keys]


class Criterion(BaseModel):
    """One binary, self-contained check on a single answer, with an integer weight."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    id: CriterionId
    category: Category
    text: NonEmptyText
    points: Points


class CriterionSlot(BaseModel):
    """A criterion as the Rubricator writes it into a slot; the slot's name is its id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: Category
    text: NonEmptyText
    points: Points


class RubricReply(BaseModel):
    """The Rubricator's reply: `criteria` maps slot names to criteria, null for an unused slot."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    criteria: dict[str, CriterionSlot | None]


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

    @classmethod
    def from_reply(cls, data: Any, *, min_k: int = MIN_CRITERIA, max_k: int = MAX_CRITERIA,
                   max_chars: int = MAX_TEXT_CHARS) -> Rubric:
        """The rubric a Rubricator reply (`rubric_json_schema`'s shape) describes, criteria in slot order.

        Raises `pydantic.ValidationError` for a malformed slot and `ValueError` naming the bound broken
        where the schema could not state it: slots filled from c1 without gaps, `min_k` to `max_k` of
        them, each text at most `max_chars`. A trailing slot left out counts as null.
        """
        slots = RubricReply.model_validate(data).criteria
        names = criterion_slots(max_k)
        if extra := [s for s in slots if s not in names]:
            raise ValueError(f"unknown criterion slots {extra}: at most {max_k} criteria, in slots c1..c{max_k}")
        filled = [(n, slot) for n in names if (slot := slots.get(n)) is not None]
        if [n for n, _ in filled] != names[: len(filled)]:
            gap = next(n for n in names if slots.get(n) is None)
            raise ValueError(f"slot {gap} is empty but {filled[-1][0]} is filled: fill the slots in order from c1 "
                             "and leave only the trailing ones null")
        if len(filled) < min_k:
            raise ValueError(f"{len(filled)} criteria, at least {min_k} are required (slots c1..c{min_k})")
        for n, slot in filled:
            if len(slot.text) > max_chars:
                raise ValueError(f"criterion {n} text is {len(slot.text)} characters, at most {max_chars} are allowed")
        return cls(criteria=[Criterion(id=n, **slot.model_dump()) for n, slot in filled])


class VerdictSheet(BaseModel):
    """One batched verifier reply (`verdict_json_schema`): a row of booleans per answer, under keys a1..an."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    answers: dict[str, list[bool]]

    @field_validator("answers", mode="before")
    @classmethod
    def _strict_bools(cls, data: Any) -> Any:
        # "yes"/1 coerced to True would hide a broken judge; only JSON booleans count.
        if isinstance(data, dict):
            for key, row in data.items():
                for v in row if isinstance(row, list) else []:
                    if not isinstance(v, bool):
                        raise ValueError(f"{key}: verdict {v!r} is not a JSON boolean")
        return data

    def matrix(self, n_answers: int, n_criteria: int) -> list[list[bool]]:
        """Check the sheet against what was asked and return verdicts in pool order.

        Raises `ValueError` naming the mismatch; callers classify it as a `validation` error.
        """
        rows = ordered_answers(self.answers, n_answers, "row")
        for k, row in zip(answer_keys(n_answers), rows, strict=True):
            if len(row) != n_criteria:
                raise ValueError(f"answer {k} has {len(row)} verdicts, expected {n_criteria} (one per criterion)")
        return [list(row) for row in rows]
