"""The sampler interface, and the factory that picks vLLM when it is importable on a GPU."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=8, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=1)
    seed: int = 0
    batch_size: int = Field(default=8, ge=1, description="sequences generated together")


class Rollout(BaseModel):
    """One sampled completion; `token_ids` lets training score exactly the tokens that were sampled.

    `logprobs` are the sampler's own log π(token) under the raw model distribution (temperature 1, no
    top-p), one per token: truncated importance sampling (`grpo.tis_cap`) weighs the trainer's
    log-probs against them to correct for the two engines' numerical mismatch.
    """

    model_config = ConfigDict(frozen=True)

    prompt_id: str
    sample_idx: int
    text: str
    token_ids: list[int]
    n_tokens: int
    finish_reason: str  # "stop" or "length"
    logprobs: list[float] | None = None

    @model_validator(mode="after")
    def _one_logprob_per_token(self) -> Rollout:
        check_logprobs(self.logprobs, self.token_ids, f"prompt {self.prompt_id} sample {self.sample_idx}")
        return self


def check_logprobs(logprobs: list[float] | None, tokens: list[int], where: str) -> None:
    """Log-probs, when present, are one per sampled token: a shifted list would weigh the wrong tokens."""
    if logprobs is not None and len(logprobs) != len(tokens):
        raise ValueError(f"{where}: {len(logprobs)} log-probs for {len(tokens)} tokens")


class Sampler(Protocol):
    def sample(self, prompts: dict[str, list[dict[str, str]]], params: SamplingParams) -> list[Rollout]:
        """`prompts` maps prompt_id → chat messages; returns n rollouts per prompt, in prompt order."""
        ...


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]],
                  chat_template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
    """Chat-templated prompt token ids, exactly as the samplers and the trainer both see them.

    `chat_template_kwargs` reach the template (e.g. `enable_thinking: false` for Qwen3 students); the
    one place they are applied, so sampling and training can never encode a prompt differently.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **(chat_template_kwargs or {}))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_sampler(model_path: Path, device: str = "cpu", chat_template_kwargs: Mapping[str, Any] | None = None,
                 ) -> Sampler:
    """vLLM on a GPU when it is installed (the `gpu` extra), else transformers."""
    if device.startswith("cuda") and importlib.util.find_spec("vllm") is not None:
        from ropd.rollout.vllm_sampler import VLLMSampler

        return VLLMSampler(model_path, chat_template_kwargs)
    from ropd.rollout.hf_sampler import TransformersSampler

    return TransformersSampler.from_path(model_path, device, chat_template_kwargs)
