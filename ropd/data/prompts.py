"""Prompt identity and the shipped sample used by the demo."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, ValidationError


def prompt_id(messages: list[dict[str, str]]) -> str:
    """sha256 of the canonical messages: the same prompt has the same id in every dataset and run."""
    canon = json.dumps([{"role": m["role"], "content": m["content"]} for m in messages],
                       sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class SampleGroup(BaseModel):
    """One row of the shipped sample: a question, reference solutions, and student answers to score."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str = Field(min_length=1)
    reference_answer: str | None = None
    solutions: list[str] = Field(min_length=1)
    student: list[str] = Field(min_length=1)

    @property
    def prompt_id(self) -> str:
        return prompt_id([{"role": "user", "content": self.question}])


def load_sample() -> list[SampleGroup]:
    """The sample shipped inside the package, so the demo needs no download and no data directory."""
    text = resources.files("ropd.data").joinpath("sample/groups.jsonl").read_text(encoding="utf-8")
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(SampleGroup.model_validate_json(line))
        except ValidationError as exc:
            raise ValueError(f"sample/groups.jsonl line {lineno}: {exc}") from exc
    return rows
