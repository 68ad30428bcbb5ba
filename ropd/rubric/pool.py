"""The blind verification pool: deterministic shuffle, its inverse, `</think>` stripping, chunking.

The verifier must not know which answers are the teacher's (the paper's blind-scoring ablation costs
3.3 points), yet a rerun must build the very same pool so the call cache can replay it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

THINK_CLOSE = "</think>"


class Source(StrEnum):
    TEACHER = "teacher"
    STUDENT = "student"


class PoolItem(BaseModel):
    """One answer in the pool, remembering where it came from."""

    model_config = ConfigDict(frozen=True)

    source: Source
    index: int
    text: str


def strip_think(text: str) -> str:
    """Drop everything up to and including the last `</think>`: only the final answer is judged.

    A reasoning trace that never closes is judged as written; an answer cannot hide text behind an
    unmatched opening tag.
    """
    cut = text.rfind(THINK_CLOSE)
    return text[cut + len(THINK_CLOSE) :].strip() if cut >= 0 else text.strip()


def _shuffle_key(group_id: str, item: PoolItem) -> str:
    payload = "\x1f".join([group_id, item.source.value, str(item.index), item.text])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def blind_pool(group_id: str, teacher: list[str], student: list[str]) -> list[PoolItem]:
    """Teacher and student answers in a deterministic, content-keyed order.

    The key hashes group id, source, index and text, so the order is stable across processes
    (unlike `random` with Python's salted `hash`) and carries no signal about the source.
    """
    items = [PoolItem(source=Source.TEACHER, index=i, text=strip_think(t)) for i, t in enumerate(teacher)]
    items += [PoolItem(source=Source.STUDENT, index=i, text=strip_think(s)) for i, s in enumerate(student)]
    return sorted(items, key=lambda it: _shuffle_key(group_id, it))


def labelled_pool(teacher: list[str], student: list[str]) -> list[PoolItem]:
    """Teacher answers first, then students: the non-blind ablation."""
    items = [PoolItem(source=Source.TEACHER, index=i, text=strip_think(t)) for i, t in enumerate(teacher)]
    return items + [PoolItem(source=Source.STUDENT, index=i, text=strip_think(s)) for i, s in enumerate(student)]


def unshuffle(pool: list[PoolItem], rows: list[list[bool]]) -> dict[Source, list[list[bool]]]:
    """Map verdict rows in pool order back to per-source lists in original index order."""
    if len(rows) != len(pool):
        raise ValueError(f"{len(rows)} verdict rows for a pool of {len(pool)} answers")
    out: dict[Source, dict[int, list[bool]]] = {Source.TEACHER: {}, Source.STUDENT: {}}
    for item, row in zip(pool, rows, strict=True):
        out[item.source][item.index] = row
    return {src: [by_idx[i] for i in sorted(by_idx)] for src, by_idx in out.items()}


def chunk_pool(pool: list[PoolItem], fits: Callable[[list[PoolItem]], bool]) -> list[list[PoolItem]]:
    """The whole pool as one chunk when `fits` accepts it, else consecutive chunks that each fit.

    The paper verifies the whole pool in one call; this only guards the judge's context. `fits`
    measures the rendered prompt, so the split follows what the judge would really receive. An answer
    that does not fit even alone gets a chunk of its own (truncation is the prompt renderer's job), so
    no answer is ever dropped and pool order is preserved across chunks.
    """
    if fits(pool):
        return [list(pool)] if pool else []
    chunks: list[list[PoolItem]] = []
    current: list[PoolItem] = []
    for item in pool:
        if current and not fits([*current, item]):
            chunks.append(current)
            current = []
        current.append(item)
    if current:
        chunks.append(current)
    return chunks
