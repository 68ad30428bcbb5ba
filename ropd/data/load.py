"""Loading prompt datasets: the demo generator, user jsonl/parquet files, or HF datasets when online.

Every row is validated; a bad one stops the load with its row number and what is wrong, because a
silently dropped prompt changes the experiment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ropd.data import arith
from ropd.data.prompts import prompt_id

COLUMNS = ["prompt_id", "question", "messages", "reference_answer", "solutions", "split", "source"]


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message names the file and the row."""


class PromptRow(BaseModel):
    """One user row: `prompt` / `question` (text) or `messages` (chat), optional reference answer."""

    model_config = ConfigDict(extra="ignore")

    prompt: str | None = None
    question: str | None = None
    messages: list[dict[str, str]] | None = None
    reference_answer: str | None = None
    solutions: list[str] = Field(default_factory=list)

    @field_validator("reference_answer", mode="before")
    @classmethod
    def _number_to_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _has_prompt(self) -> PromptRow:
        given = [k for k in ("prompt", "question", "messages") if getattr(self, k) is not None]
        if not given:
            raise ValueError("needs one of the columns 'prompt', 'question' or 'messages'")
        if self.messages is not None:
            if not self.messages or any(set(m) != {"role", "content"} for m in self.messages):
                raise ValueError("'messages' must be a non-empty list of {role, content}")
            if not any(m["role"] == "user" and m["content"].strip() for m in self.messages):
                raise ValueError("'messages' has no non-empty user turn")
        elif not (self.prompt or self.question or "").strip():
            raise ValueError("the prompt is empty")
        return self

    def chat(self) -> list[dict[str, str]]:
        return self.messages or [{"role": "user", "content": (self.prompt or self.question or "").strip()}]


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path).to_dict("records")
        except Exception as exc:
            raise DatasetError(f"{path}: not a readable parquet file ({exc})") from exc
    if path.suffix not in (".jsonl", ".json"):
        raise DatasetError(f"{path}: unsupported format {path.suffix!r}; use .jsonl or .parquet")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}: line {line}: not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from exc
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: line {lineno}: not JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
        records.append({**obj, "_row": lineno})
    return records


def _frame(rows: list[PromptRow], where: list[str], split: str, source: str) -> pd.DataFrame:
    out, seen = [], {}
    for row, loc in zip(rows, where, strict=True):
        messages = row.chat()
        pid = prompt_id(messages)
        if pid in seen:
            raise DatasetError(f"{loc}: duplicate prompt (same messages as {seen[pid]})")
        seen[pid] = loc
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        out.append({"prompt_id": pid, "question": question, "messages": json.dumps(messages),
                    "reference_answer": row.reference_answer, "solutions": list(row.solutions), "split": split,
                    "source": source})
    return pd.DataFrame(out, columns=COLUMNS)


def _validate(records: list[dict[str, Any]], where: list[str]) -> list[PromptRow]:
    rows = []
    for rec, loc in zip(records, where, strict=True):
        clean = {k: (None if isinstance(v, float) and pd.isna(v) else v) for k, v in rec.items()}
        if hasattr(clean.get("solutions"), "tolist"):
            clean["solutions"] = clean["solutions"].tolist()
        if hasattr(clean.get("messages"), "tolist"):
            clean["messages"] = [dict(m) for m in clean["messages"].tolist()]
        try:
            rows.append(PromptRow.model_validate(clean))
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors()[:3])
            raise DatasetError(f"{loc}: {detail}") from exc
    return rows


def load_prompts(source: str, split: str, *, n: int | None = None, seed: int = 0,
                 exclude: set[str] | None = None) -> pd.DataFrame:
    """The prompts table for `split` from `source` ('demo', a file path, or hf://name[:split])."""
    if source == "demo":
        problems = arith.generate(n or 512, seed=seed, exclude=exclude)
        return pd.DataFrame(arith.as_rows(problems, split), columns=COLUMNS).assign(
            messages=lambda d: [json.dumps([{"role": "user", "content": q}]) for q in d["question"]])
    if source.startswith("hf://"):
        name, _, hf_split = source[5:].partition(":")
        try:
            from datasets import load_dataset

            records = list(load_dataset(name, split=hf_split or split))
        except Exception as exc:
            raise DatasetError(f"{source}: cannot load from the hub ({type(exc).__name__}: {exc}); "
                               "download it and point `data.source` at a local .jsonl/.parquet") from exc
        where = [f"{source} row {i}" for i in range(len(records))]
    else:
        path = Path(source)
        records = _read_records(path)
        where = [f"{path}: line {r.pop('_row')}" if "_row" in r else f"{path}: row {i}"
                 for i, r in enumerate(records)]
    df = _frame(_validate(records, where), where, split, source)
    return df.head(n) if n is not None else df
