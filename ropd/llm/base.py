"""The `ChatModel` protocol and the request/result models every backend speaks."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ropd.config import RoleConfig


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
    temperature: float
    top_p: float = 1.0
    max_tokens: int
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
            **kw,
        )

    def canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def key(self) -> str:
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

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
    latency_s: float = 0.0
    cached: bool = False
    response_format: str | None = Field(default=None, description="the structured-output mode the server took")


@runtime_checkable
class ChatModel(Protocol):
    """An async chat endpoint for one role. Backends: OpenAI-compatible HTTP, local transformers."""

    role: str
    config: RoleConfig

    async def complete(self, request: ChatRequest) -> ChatResult:
        """One completion. Raises `LLMError` classified by type."""
        ...
