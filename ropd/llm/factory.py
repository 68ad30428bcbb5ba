"""Build the `ChatModel` a role's config asks for."""

from __future__ import annotations

from ropd.config import RoleConfig
from ropd.llm.base import ChatModel
from ropd.llm.cache import CallCache
from ropd.llm.limits import CallLimiter


def make_chat(role: str, cfg: RoleConfig, *, cache: CallCache | None = None,
              limiter: CallLimiter | None = None) -> ChatModel:
    if cfg.provider == "local":
        from ropd.llm.local import LocalChat
        from ropd.models import pinned

        return LocalChat(role, pinned(cfg), cache=cache)
    if cfg.provider == "openai":
        from ropd.llm.openai_compat import OpenAICompatChat

        return OpenAICompatChat(role, cfg, cache=cache, limiter=limiter)
    raise ValueError(f"role {role!r}: provider {cfg.provider!r} cannot answer chat requests (use local or openai)")
