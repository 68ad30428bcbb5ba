"""The `ChatModel` protocol and the request/result models every backend speaks."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Coroutine
from functools import cached_property
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ropd.config import ReasoningEffort, RoleConfig

# Fields added after cache keys were first written: left out of the canonical form while at their default,
# so a request that does not use them keeps the key it always had (and its cached reply).
_KEYED_ONLY_WHEN_SET: dict[str, Any] = {"reasoning_effort": None, "extra_body": {}}


class ChatRequest(BaseModel):
    """Everything that determines a completion. Its hash is the call cache key.

    It holds no secret and no URL: the same model asked the same thing through another host is the
    same call.
    """

    model_config = ConfigDict(frozen=True)

    role: str
    provider: str
    model: str
    messages: list[dict[str, str]]
    temperature: float | None = Field(description="None = not sent: the server's default")
    top_p: float | None = 1.0
    max_tokens: int
    reasoning_effort: ReasoningEffort | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields (they may change "
                                       "the output, so they are part of the key)")
    seed: int | None = None
    json_schema: dict[str, Any] | None = None
    schema_name: str | None = None
    template: str | None = Field(default=None, description="prompt template version")

    @classmethod
    def for_role(cls, role: str, cfg: RoleConfig, messages: list[dict[str, str]], **kw: Any) -> ChatRequest:
        return cls(
            role=role,
            provider=cfg.provider,
            model=cfg.model,
            messages=messages,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            reasoning_effort=cfg.reasoning_effort,
            extra_body=cfg.extra_body,
            **kw,
        )

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> ChatRequest:
        """A copy with fresh identity: cached key and canonical form are recomputed, never inherited."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("_canonical", None)
        copy.__dict__.pop("_key", None)
        return copy

    @cached_property
    def _canonical(self) -> str:
        data = self.model_dump(mode="json")
        for name, default in _KEYED_ONLY_WHEN_SET.items():
            if data[name] == default:
                del data[name]
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def canonical(self) -> str:
        """Sorted-key compact JSON; computed once per (immutable) request, it is on the hot path."""
        return self._canonical

    def key(self) -> str:
        return self._key

    @cached_property
    def _key(self) -> str:
        return hashlib.sha256(self._canonical.encode("utf-8")).hexdigest()

    def est_tokens(self) -> int:
        """A cheap upper estimate for TPM budgeting: ~4 characters per token plus the output cap."""
        return sum(len(m.get("content", "")) for m in self.messages) // 4 + self.max_tokens


class ChatResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    call_id: str
    content: str
    finish_reason: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_cached: int | None = Field(default=None, description="input tokens the server served from its prompt "
                                      "cache, where it reports them (priced lower)")
    tokens_reasoning: int | None = Field(default=None, description="output tokens spent on hidden reasoning, "
                                         "where the server reports them (part of tokens_out)")
    latency_s: float = 0.0
    cached: bool = False
    response_format: str | None = Field(default=None, description="the structured-output mode the server took")


T = TypeVar("T")


def run_closing(coro: Coroutine[Any, Any, T], *chats: ChatModel) -> T:
    """Run `coro` in a fresh event loop, closing the chats' connections before that loop ends.

    The entry point for synchronous callers (CLI, pipeline stages): pooled connections belong to
    the loop that opened them and must be closed inside it.
    """

    async def main() -> T:
        try:
            return await coro
        finally:
            for chat in chats:
                await chat.aclose()

    return asyncio.run(main())


@runtime_checkable
class ChatModel(Protocol):
    """An async chat endpoint for one role. Backends: OpenAI-compatible HTTP, local transformers."""

    role: str
    config: RoleConfig

    async def complete(self, request: ChatRequest) -> ChatResult:
        """One completion. Raises `LLMError` classified by type."""
        ...

    async def aclose(self) -> None:
        """Release connections held for the running event loop."""
        ...
