"""Structured output: parse, validate, and a bounded repair retry, the same for every backend."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from ropd.llm.base import ChatModel, ChatRequest
from ropd.llm.errors import CONTENT_ERRORS, ErrorType, LLMError

T = TypeVar("T")

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_json_object(text: str) -> dict[str, Any]:
    """Parse a JSON object, tolerating a markdown fence or prose around one object. Raises `parse`."""
    stripped = text.strip()
    if not stripped:
        raise LLMError(ErrorType.PARSE, "empty completion", retryable=False)
    if m := _FENCE.match(stripped):
        stripped = m.group(1)
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as first:
        start, end = stripped.find("{"), stripped.rfind("}")
        if start < 0 or end <= start:
            raise LLMError(ErrorType.PARSE, f"not JSON: {first.msg} at char {first.pos}", retryable=False) from first
        try:
            data = json.loads(stripped[start : end + 1])
        except json.JSONDecodeError as second:
            raise LLMError(ErrorType.PARSE, f"not JSON: {second.msg} at char {start + second.pos}",
                           retryable=False) from second
    if not isinstance(data, dict):
        raise LLMError(ErrorType.PARSE, f"expected a JSON object, got {type(data).__name__}", retryable=False)
    return data


def schema_error(exc: ValidationError) -> LLMError:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]]
    return LLMError(ErrorType.SCHEMA, "; ".join(parts), retryable=False)


async def complete_structured(
    chat: ChatModel,
    request: ChatRequest,
    parse: Callable[[dict[str, Any]], T],
    *,
    stage: str,
) -> T:
    """Run `request` and return `parse(json)`; on a content error, show the model its mistake and retry.

    `parse` raises `pydantic.ValidationError` (→ `schema`) or `ValueError` (→ `validation`).
    Each repair is its own cached call, so a rerun replays the whole exchange for free.
    Transport errors were already retried by the backend and pass through, tagged with `stage`.
    """
    messages = list(request.messages)
    last: LLMError | None = None
    for _ in range(chat.config.max_repairs + 1):
        req = request.model_copy(update={"messages": messages})
        try:
            result = await chat.complete(req)
        except LLMError as exc:
            exc.stage = stage
            raise
        try:
            if result.finish_reason == "length":
                raise LLMError(ErrorType.PARSE, f"output cut off at max_tokens={req.max_tokens} "
                               "(finish_reason=length)", retryable=False)
            data = parse_json_object(result.content)
            try:
                return parse(data)
            except ValidationError as exc:
                raise schema_error(exc) from exc
            except ValueError as exc:
                raise LLMError(ErrorType.VALIDATION, str(exc), retryable=False) from exc
        except LLMError as exc:
            assert exc.type in CONTENT_ERRORS
            exc.stage = stage
            last = exc
            # The transcript grows, so each repair is a distinct request (and a distinct cache entry).
            messages = [
                *messages,
                {"role": "assistant", "content": result.content[:4000]},
                {"role": "user", "content": f"That reply was rejected ({exc.type.value}): {exc.message}. "
                 "Reply again with one JSON object only, in exactly the required format."},
            ]
    assert last is not None
    raise last
