"""Configuration models. Secrets are never fields: a role names the environment variable holding its key."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ResponseFormatMode = Literal["auto", "json_schema", "json_object_schema", "json_object", "text"]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
# Request fields ropd itself sets (either API); `extra_body` may not override them.
_OWN_FIELDS = frozenset({"model", "messages", "input", "instructions", "temperature", "top_p", "max_tokens",
                         "max_completion_tokens", "max_output_tokens", "response_format", "text", "seed",
                         "reasoning_effort", "reasoning", "stream", "store"})


def _url_problem(url: str) -> str | None:
    """Why `url` is not an http(s)://host[:port]/path endpoint, or None. Credentials are never echoed."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number in range
    except ValueError:
        return f"{url!r} is not http(s)://host[:port]/path (bad port or brackets)"
    if parts.username is not None or parts.password is not None:
        return "carries a user or password; put the key in the variable named by api_key_env"
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
            or any(ch.isspace() for ch in url):
        return f"{url!r} is not http(s)://host[:port]/path"
    return None


class Price(BaseModel):
    """A role's list price in USD per million tokens, for cost accounting and `budget.max_usd`.

    It is no part of a call's identity (cache key, fingerprint): repricing never re-asks a model.
    """

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, description="USD per million input tokens the server did not serve from its cache")
    cached_input: float | None = Field(default=None, ge=0, description="USD per million cached input tokens; "
                                       "default: the input price")
    output: float = Field(ge=0, description="USD per million output tokens, hidden reasoning tokens included")

    def usd(self, tokens_in: int, tokens_cached: int, tokens_out: int) -> float:
        """Cached tokens are a part of `tokens_in` (as servers report them), reasoning tokens a part of `tokens_out`."""
        cached = min(tokens_cached, tokens_in)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((tokens_in - cached) * self.input + cached * cached_rate + tokens_out * self.output) / 1e6


class RoleConfig(BaseModel):
    """One LLM role (teacher, rubricator, verifier): its endpoint, model and sampling settings."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["openai", "local", "dataset"] = "openai"
    base_url: str | None = None
    base_urls: list[str] | None = Field(default=None, description="openai provider: several servers of one model "
                                        "(e.g. a vLLM fleet); each call goes to the least-loaded healthy one")
    model: str = "stand-in-judge"
    model_path: str | None = Field(default=None, description="local provider: a transformers model directory; "
                                   "default: the prepared SmolLM2")
    device: str = Field(default="cpu", description="local provider: torch device")
    batch_size: int = Field(default=8, ge=1, description="local provider: requests generated together")
    api_key_env: str | None = Field(
        default="OPENAI_API_KEY", description="name of the environment variable holding the key"
    )
    temperature: float | None = Field(default=0.0, ge=0.0, le=2.0, description="null = not sent (reasoning "
                                      "models accept only their default); the local provider then decodes greedily")
    top_p: float | None = Field(default=1.0, gt=0.0, le=1.0, description="null = not sent")
    max_tokens: int = Field(default=2048, ge=16)
    token_param: Literal["auto", "max_tokens", "max_completion_tokens"] = Field(
        default="auto", description="the name the limit is sent under on the chat API; auto starts with max_tokens "
        "and switches once, for the run, when the server asks for max_completion_tokens")
    reasoning_effort: ReasoningEffort | None = Field(default=None, description="sent when set: chat "
                                                     "`reasoning_effort`, responses `reasoning.effort`")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="more request fields, merged into "
                                       "every body, e.g. {chat_template_kwargs: {enable_thinking: false}} for vLLM")
    api: Literal["chat", "responses"] = Field(default="chat", description="POST /chat/completions or /responses")
    timeout_s: float = Field(default=120.0, gt=0)
    response_format: ResponseFormatMode = "auto"
    max_retries: int = Field(default=4, ge=0, le=20)
    max_repairs: int = Field(default=2, ge=0, le=5)
    backoff_initial_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    retry_after_cap_s: float = Field(default=120.0, ge=0)
    breaker_threshold: int = Field(default=5, ge=1, description="consecutive transport failures that open it")
    breaker_reset_s: float = Field(default=30.0, ge=0, description="seconds open before one probe call")
    system_prompt: str | None = Field(default=None, description="teacher only: system message for answers")
    price: Price | None = Field(default=None, description="USD per million tokens; null = not priced (spend "
                                "unknown, counted as 0 against a budget)")

    @field_validator("extra_body")
    @classmethod
    def _extra_body_adds_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        if clash := sorted(_OWN_FIELDS & value.keys()):
            raise ValueError(f"extra_body may not set {', '.join(clash)}: ropd sends those from the role's own keys")
        return value

    @model_validator(mode="after")
    def _check_base_urls(self) -> RoleConfig:
        """After the model, not on the field: the error then names the entry, never echoes the whole list."""
        if self.base_urls is None:
            return self
        if self.base_url is not None:
            raise ValueError("base_url and base_urls are both set; keep one (base_urls may hold a single URL)")
        if self.provider != "openai":
            raise ValueError(f"base_urls is for provider 'openai', not {self.provider!r}")
        if not self.base_urls:
            raise ValueError("base_urls is empty; list at least one http(s)://host[:port]/path")
        for i, url in enumerate(self.base_urls):
            if problem := _url_problem(url):
                raise ValueError(f"base_urls[{i}] {problem}")
            if url in self.base_urls[:i]:
                raise ValueError(f"base_urls[{i}] {url!r} is listed twice")
        return self

    def sampling_identity(self) -> dict[str, object]:
        """What changes the output distribution. URLs, timeouts, retry settings, the API (chat or responses:
        the same model answering the same messages) and the token limit's name are excluded.

        Settings added later (reasoning_effort, extra_body) count only when set, so fingerprints of roles
        that do not use them stay what they were.
        """
        identity: dict[str, object] = {
            "provider": self.provider,
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "system_prompt": self.system_prompt,
        }
        if self.reasoning_effort is not None:
            identity["reasoning_effort"] = self.reasoning_effort
        if self.extra_body:
            identity["extra_body"] = self.extra_body
        return identity

    def fingerprint(self, template_version: str) -> str:
        """16-hex hash of the sampling identity plus the prompt template version."""
        identity = {**self.sampling_identity(), "template": template_version}
        if self.provider == "dataset":  # the answers are the dataset's; sampling settings do not apply
            identity = {"provider": "dataset", "model": self.model, "template": template_version}
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def api_key(self, env_file: Path | None = Path(".env")) -> str:
        """Read the key from the environment, then `.env`; local servers accept any placeholder."""
        if not self.api_key_env:
            return "EMPTY"
        if value := os.environ.get(self.api_key_env):
            return value
        if env_file is not None and env_file.is_file():
            value = dotenv_values(env_file).get(self.api_key_env)
            if value:
                return value
        return "EMPTY"


class LimitsConfig(BaseModel):
    """One limiter for the whole judge stage: calls in flight plus optional RPM/TPM budgets."""

    model_config = ConfigDict(extra="forbid")

    max_in_flight: int = Field(default=64, ge=1)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class EngineConfig(BaseModel):
    """Rubric induction and verification settings for the reward engine."""

    model_config = ConfigDict(extra="forbid")

    min_criteria: int = Field(default=4, ge=4, le=12)
    max_criteria: int = Field(default=12, ge=4, le=12)
    blind: bool = True
    judge_context_tokens: int = Field(default=131072, ge=512, description="the verifier's context window; "
                                      "a pool is split over several calls only when its prompt would not fit")
    judge_chars_per_token: float = Field(default=3.5, gt=0, description="estimate used to size prompts "
                                         "against the context; lower it for code or non-Latin scripts")
    # 40,000 lets the paper's 8192-token answers (~4 characters per token, ~33,000 characters) pass whole.
    max_answer_chars: int = Field(default=40_000, ge=100, description="longer answers keep their head and "
                                  "tail around a marked cut")
    max_criterion_chars: int = Field(default=300, ge=20, le=600, description="criterion text length in the "
                                     "schema sent to the judge; bounds a constrained decoder's worst case")

    @model_validator(mode="after")
    def _bounds(self) -> EngineConfig:
        if self.min_criteria > self.max_criteria:
            raise ValueError(f"min_criteria ({self.min_criteria}) > max_criteria ({self.max_criteria})")
        return self

    def prompt_char_budget(self, reply_tokens: int) -> int:
        """Prompt characters (system and user) that fit the judge's context with room for the reply."""
        return max(0, int((self.judge_context_tokens - reply_tokens) * self.judge_chars_per_token))


class QualityGate(BaseModel):
    """Stop a run cleanly when too many groups of a round could not be judged (official default 0.4)."""

    model_config = ConfigDict(extra="forbid")

    max_failed_share: float = Field(default=0.4, ge=0.0, le=1.0)
