"""The sampler interface, and the factory that picks vLLM when it is importable on a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=8, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=1)
    seed: int = 0
    batch_size: int = Field(default=8, ge=1, description="sequences generated together")


class Rollout(BaseModel):
    """One sampled completion; `token_ids` lets training score exactly the tokens that were sampled."""

    model_config = ConfigDict(frozen=True)

    prompt_id: str
    sample_idx: int
    text: str
    token_ids: list[int]
    n_tokens: int
    finish_reason: str  # "stop" or "length"


class Sampler(Protocol):
    def sample(self, prompts: dict[str, list[dict[str, str]]], params: SamplingParams) -> list[Rollout]:
        """`prompts` maps prompt_id → chat messages; returns n rollouts per prompt, in prompt order."""
        ...


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Chat-templated prompt token ids, exactly as the samplers and the trainer both see them."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_sampler(model_path: Path, device: str = "cpu") -> Sampler:
    """vLLM on a GPU when it is installed (the `gpu` extra), else transformers."""
    if device.startswith("cuda") and importlib.util.find_spec("vllm") is not None:
        from ropd.rollout.vllm_sampler import VLLMSampler

        return VLLMSampler(model_path)
    from ropd.rollout.hf_sampler import TransformersSampler

    return TransformersSampler.from_path(model_path, device)
