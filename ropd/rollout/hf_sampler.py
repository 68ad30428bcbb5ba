"""transformers sampler: batched `generate`, seeded per batch so a rerun draws the same rollouts.

Each token's log-probability is taken from the raw logits (before temperature and top-p), so with the
same weights it equals the trainer's teacher-forced `token_logprobs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from ropd.rng import seeded
from ropd.rollout.base import Rollout, SamplingParams, encode_prompt


class TransformersSampler:
    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu",
                 chat_template_kwargs: Mapping[str, Any] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_path(cls, path: Path, device: str = "cpu", chat_template_kwargs: Mapping[str, Any] | None = None,
                  ) -> TransformersSampler:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, AutoTokenizer.from_pretrained(path), device, chat_template_kwargs)

    def sample(self, prompts: dict[str, list[dict[str, str]]], params: SamplingParams,
               shard: tuple[int, int] = (0, 1)) -> list[Rollout]:
        """Every prompt's n rollouts; with `shard=(rank, world)` only the batches b with b % world == rank.

        Batches and their seeds do not depend on the sharding, so the processes of a launched stage
        draw together exactly the rollouts one process would.
        """
        rank, world = shard
        jobs = [(pid, i) for pid in prompts for i in range(params.n)]
        encoded = {pid: encode_prompt(self.tokenizer, msgs, self.chat_template_kwargs)
                   for pid, msgs in prompts.items()}
        eos = self.tokenizer.eos_token_id
        was_training = self.model.training
        self.model.eval()
        out: list[Rollout] = []
        try:
            starts = range(0, len(jobs), params.batch_size)
            for b, start in enumerate(tqdm(starts, desc="sampling", unit="batch", disable=len(starts) < 2)):
                if b % world != rank:
                    continue
                batch = jobs[start : start + params.batch_size]
                enc = self.tokenizer.pad({"input_ids": [encoded[pid] for pid, _ in batch]},
                                         return_tensors="pt").to(self.device)
                sample = params.temperature > 0
                with seeded(params.seed * 1_000_003 + b), torch.inference_mode():
                    gen = self.model.generate(
                        **enc, max_new_tokens=params.max_new_tokens, do_sample=sample,
                        temperature=params.temperature if sample else None,
                        top_p=params.top_p if sample else None, top_k=None,
                        pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos,
                        logits_processor=LogitsProcessorList([recorder := RawLogprobs()]),
                    )
                new_ids = gen[:, enc["input_ids"].shape[1] :]
                logprobs = recorder.finish(gen).tolist()
                for (pid, i), row, lps in zip(batch, new_ids.tolist(), logprobs, strict=True):
                    finished = eos in row
                    ids = row[: row.index(eos) + 1] if finished else row
                    out.append(Rollout(prompt_id=pid, sample_idx=i, token_ids=ids, n_tokens=len(ids),
                                       text=self.tokenizer.decode(ids, skip_special_tokens=True),
                                       finish_reason="stop" if finished else "length", logprobs=lps[: len(ids)]))
        finally:
            self.model.train(was_training)
        return out



class RawLogprobs(LogitsProcessor):
    """Records log π(sampled token) under the raw logits of every step, holding one vocab row at a time.

    `generate` runs custom processors before its temperature and top-p warpers, so the scores seen here
    are the model's own. A step's row is reduced at the next step, whose `input_ids` end with the token
    that was sampled from it; `output_logits=True` would instead keep every step's row (many GB for
    long answers over a large vocabulary).
    """

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None
        self.columns: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._settle(input_ids)
        self.pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _settle(self, input_ids: torch.Tensor) -> None:
        if self.pending is not None:
            self.columns.append(self.pending.gather(-1, input_ids[:, -1:]).squeeze(-1))
            self.pending = None

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """(batch, generated steps) log-probs, once `generate` has returned `sequences`."""
        self._settle(sequences)
        return torch.stack(self.columns, dim=1).cpu() if self.columns else torch.zeros(len(sequences), 0)
