"""vLLM sampler for GPU runs (`pip install 'ropd[gpu]'`). Not installable on the CPU machines.

It asks for the sampled token's log-prob only (`logprobs=0`) in `raw_logprobs` mode: the model's
distribution before temperature and top-p, the quantity the trainer's `token_logprobs` computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ropd.rollout.base import Rollout, SamplingParams


class VLLMSampler:
    def __init__(self, model_path: Path, chat_template_kwargs: Mapping[str, Any] | None = None) -> None:
        from vllm import LLM

        self.llm = LLM(model=str(model_path), seed=0, logprobs_mode="raw_logprobs")
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def sample(self, prompts: dict[str, list[dict[str, str]]], params: SamplingParams) -> list[Rollout]:
        from vllm import SamplingParams as VSP

        vsp = VSP(n=params.n, temperature=params.temperature, top_p=params.top_p,
                  max_tokens=params.max_new_tokens, seed=params.seed, logprobs=0)
        outputs = self.llm.chat(list(prompts.values()), vsp, use_tqdm=False,
                                chat_template_kwargs=self.chat_template_kwargs or None)
        rollouts = []
        for pid, out in zip(prompts, outputs, strict=True):
            for i, c in enumerate(out.outputs):
                ids = list(c.token_ids)
                # One {token_id: Logprob} per step; with logprobs=0 it holds the sampled token.
                logprobs = [float(step[t].logprob) for step, t in zip(c.logprobs, ids, strict=True)]
                rollouts.append(Rollout(prompt_id=pid, sample_idx=i, text=c.text, token_ids=ids,
                                        n_tokens=len(ids), logprobs=logprobs,
                                        finish_reason="length" if c.finish_reason == "length" else "stop"))
        return rollouts
