"""transformers sampler: batched `generate`, seeded per batch so a rerun draws the same rollouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ropd.rollout.base import Rollout, SamplingParams, encode_prompt


class TransformersSampler:
    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_path(cls, path: Path, device: str = "cpu") -> TransformersSampler:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, AutoTokenizer.from_pretrained(path), device)

    def sample(self, prompts: dict[str, list[dict[str, str]]], params: SamplingParams) -> list[Rollout]:
        jobs = [(pid, i) for pid in prompts for i in range(params.n)]
        encoded = {pid: encode_prompt(self.tokenizer, msgs) for pid, msgs in prompts.items()}
        eos = self.tokenizer.eos_token_id
        was_training = self.model.training
        self.model.eval()
        out: list[Rollout] = []
        try:
            starts = range(0, len(jobs), params.batch_size)
            for b, start in enumerate(tqdm(starts, desc="sampling", unit="batch", disable=len(starts) < 2)):
                batch = jobs[start : start + params.batch_size]
                enc = self.tokenizer.pad({"input_ids": [encoded[pid] for pid, _ in batch]},
                                         return_tensors="pt").to(self.device)
                torch.manual_seed(params.seed * 1_000_003 + b)
                sample = params.temperature > 0
                with torch.inference_mode():
                    gen = self.model.generate(
                        **enc, max_new_tokens=params.max_new_tokens, do_sample=sample,
                        temperature=params.temperature if sample else None,
                        top_p=params.top_p if sample else None, top_k=None,
                        pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos,
                    )
                new = gen[:, enc["input_ids"].shape[1] :].tolist()
                for (pid, i), row in zip(batch, new, strict=True):
                    finished = eos in row
                    ids = row[: row.index(eos) + 1] if finished else row
                    out.append(Rollout(prompt_id=pid, sample_idx=i, token_ids=ids, n_tokens=len(ids),
                                       text=self.tokenizer.decode(ids, skip_special_tokens=True),
                                       finish_reason="stop" if finished else "length"))
        finally:
            self.model.train(was_training)
        return out
