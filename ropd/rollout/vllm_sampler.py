"""vLLM sampler for GPU runs (`pip install 'ropd[gpu]'`). Not installable on the CPU machines."""

from __future__ import annotations

from pathlib import Path

from ropd.rollout.base import Rollout, SamplingParams


class VLLMSampler:
    def __init__(self, model_path: Path) -> None:
        from vllm import LLM

        self.llm = LLM(model=str(model_path), seed=0)
        self.tokenizer = self.llm.get_tokenizer()

    def sample(self, prompts: dict[str, list[dict[str, str]]], params: SamplingParams) -> list[Rollout]:
        from vllm import SamplingParams as VSP

        vsp = VSP(n=params.n, temperature=params.temperature, top_p=params.top_p,
                  max_tokens=params.max_new_tokens, seed=params.seed)
        outputs = self.llm.chat(list(prompts.values()), vsp, use_tqdm=False)
        rollouts = []
        for pid, out in zip(prompts, outputs, strict=True):
            for i, c in enumerate(out.outputs):
                rollouts.append(Rollout(prompt_id=pid, sample_idx=i, text=c.text, token_ids=list(c.token_ids),
                                        n_tokens=len(c.token_ids),
                                        finish_reason="length" if c.finish_reason == "length" else "stop"))
        return rollouts
