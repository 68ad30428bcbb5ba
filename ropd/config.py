"""Configuration models. Secrets are never fields: a role names the environment variable holding its key."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, model_validator

ResponseFormatMode = Literal["auto", "json_schema", "json_object", "text"]


class RoleConfig(BaseModel):
    """One LLM role (teacher, rubricator, verifier): its endpoint, model and sampling settings."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["openai", "local", "dataset"] = "openai"
    base_url: str | None = None
    model: str = "stand-in-judge"
    model_path: str | None = Field(default=None, description="local provider: a transformers model directory; "
                                   "default: the prepared SmolLM2")
    device: str = Field(default="cpu", description="local provider: torch device")
    batch_size: int = Field(default=8, ge=1, description="local provider: requests generated together")
    api_key_env: str | None = Field(
        default="OPENAI_API_KEY", description="name of the environment variable holding the key"
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=2048, ge=16)
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

    def sampling_identity(self) -> dict[str, object]:
        """What changes the output distribution. URLs, timeouts and retry settings are excluded."""
        return {
            "provider": self.provider,
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "system_prompt": self.system_prompt,
        }

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
