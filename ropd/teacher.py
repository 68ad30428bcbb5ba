"""The teacher index: m reference answers per prompt, sampled once, fingerprinted, stored as parquet.

The fingerprint hashes only what changes the answers (provider, model, sampling, system prompt,
template version). Unlike the official code it leaves out URLs and timeouts, so moving the same
model to another host, or raising a timeout, does not invalidate a paid-for index.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from ropd.config import RoleConfig
from ropd.io import atomic_write_parquet
from ropd.llm.base import ChatModel, ChatRequest
from ropd.llm.errors import LLMError

TEACHER_TEMPLATE_VERSION = "teacher-v1"
COLUMNS = ["prompt_id", "teacher_fingerprint", "answer_idx", "text"]


class TeacherIndexError(LookupError):
    """A prompt missing from the index, or indexed under another fingerprint."""


class TeacherPrompt(BaseModel):
    """What the teacher needs of a prompt. `solutions` feeds the `dataset` provider."""

    model_config = ConfigDict(frozen=True)

    prompt_id: str
    question: str
    solutions: list[str] = []


def fingerprint(cfg: RoleConfig) -> str:
    return cfg.fingerprint(TEACHER_TEMPLATE_VERSION)


def _dedup(texts: list[str]) -> list[str]:
    """Drop exact duplicates, keeping first occurrences, so m answers are m distinct references."""
    return list(dict.fromkeys(t for t in texts if t.strip()))


def index_frame(rows: list[tuple[str, str | None, int, str]]) -> pd.DataFrame:
    """teacher.parquet's rows (prompt_id, teacher_fingerprint, answer_idx, text), typed as every writer writes them."""
    return pd.DataFrame(rows, columns=COLUMNS).astype({"answer_idx": "int32"})


def dataset_index(prompts: list[TeacherPrompt], cfg: RoleConfig, m: int, out: Path) -> pd.DataFrame:
    """The `dataset` provider: reference solutions already in the data serve as teacher answers."""
    fp = fingerprint(cfg)
    rows = []
    for p in prompts:
        answers = _dedup(p.solutions)[:m]
        if not answers:
            raise TeacherIndexError(f"prompt {p.prompt_id}: no reference solutions for the dataset teacher")
        rows += [(p.prompt_id, fp, i, t) for i, t in enumerate(answers)]
    df = index_frame(rows)
    atomic_write_parquet(df, out)
    return df


async def build_index(prompts: list[TeacherPrompt], chat: ChatModel, m: int, out: Path) -> pd.DataFrame:
    """Sample m answers per prompt from an LLM teacher, all prompts concurrently.

    Sample j carries `seed=j`, so the m requests are distinct cache entries and a rerun after a crash
    pays only for the samples it had not received. If any prompt fails, nothing is written and the
    error names every failed prompt; the successful calls stay in the cache.
    """
    fp = fingerprint(chat.config)
    system = chat.config.system_prompt

    async def one(p: TeacherPrompt, j: int) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": p.question}
        ]
        req = ChatRequest.for_role(chat.role, chat.config, messages, seed=j, template=TEACHER_TEMPLATE_VERSION)
        res = await chat.complete(req)
        # A reply cut off at max_tokens is not a reference answer: it would teach the rubric a half solution.
        return "" if res.finish_reason == "length" else res.content

    async def per_prompt(p: TeacherPrompt) -> list[str]:
        return list(await asyncio.gather(*(one(p, j) for j in range(m))))

    results = await asyncio.gather(*(per_prompt(p) for p in prompts), return_exceptions=True)
    failures = [(p.prompt_id, r) for p, r in zip(prompts, results, strict=True) if isinstance(r, BaseException)]
    if failures:
        for _, r in failures:
            if not isinstance(r, LLMError):
                raise r
        detail = "; ".join(f"{pid}: {err}" for pid, err in failures[:5])
        raise TeacherIndexError(f"teacher sampling failed for {len(failures)} prompt(s): {detail}")
    usable = {p.prompt_id: _dedup(answers) for p, answers in zip(prompts, results, strict=True)}  # type: ignore[arg-type]
    if empty := [pid for pid, answers in usable.items() if not answers]:
        raise TeacherIndexError(
            f"no usable teacher answer for {len(empty)} prompt(s): {', '.join(empty[:5])} (every reply was empty "
            f"or cut off at max_tokens={chat.config.max_tokens}); raise teacher.role.max_tokens or check the model")
    rows = [(pid, fp, i, t) for pid, answers in usable.items() for i, t in enumerate(answers)]
    df = index_frame(rows)
    atomic_write_parquet(df, out)
    return df


class TeacherIndex:
    """Read side: answers for a prompt, checked against the fingerprint the run expects."""

    def __init__(self, df: pd.DataFrame, expected_fingerprint: str | None = None) -> None:
        missing = set(COLUMNS) - set(df.columns)
        if missing:
            raise TeacherIndexError(f"teacher index lacks columns {sorted(missing)}")
        self.expected = expected_fingerprint
        self._by_prompt: dict[str, tuple[str, list[str]]] = {}
        for pid, g in df.sort_values(["prompt_id", "answer_idx"]).groupby("prompt_id", sort=False):
            fps = set(g["teacher_fingerprint"])
            if len(fps) != 1:
                raise TeacherIndexError(f"prompt {pid}: answers under several fingerprints {sorted(fps)}")
            self._by_prompt[str(pid)] = (fps.pop(), list(g["text"]))

    @classmethod
    def load(cls, path: Path, expected_fingerprint: str | None = None) -> TeacherIndex:
        return cls(pd.read_parquet(path), expected_fingerprint)

    def has(self, prompt_id: str) -> bool:
        return prompt_id in self._by_prompt

    def _entry(self, prompt_id: str) -> tuple[str, list[str]]:
        entry = self._by_prompt.get(prompt_id)
        if entry is None:
            raise TeacherIndexError(f"prompt {prompt_id}: no teacher answers in the index")
        return entry

    def fingerprint_of(self, prompt_id: str) -> str:
        """The fingerprint the prompt's answers were sampled under (for tables that record it)."""
        return self._entry(prompt_id)[0]

    def answers(self, prompt_id: str) -> list[str]:
        fp, texts = self._entry(prompt_id)
        if self.expected is not None and fp != self.expected:
            raise TeacherIndexError(
                f"prompt {prompt_id}: teacher answers have fingerprint {fp}, this run expects {self.expected}"
                " (the teacher model or sampling settings changed: rebuild the index)"
            )
        return texts

    def __len__(self) -> int:
        return len(self._by_prompt)
