"""Student sampler throughput: batched generation against one stream, same model, same run.

    .venv/bin/python bench/sampler.py [--n 8] [--tokens 128]

Generates n samples of `tokens` new tokens (EOS suppressed so every sample has the same length),
first one stream at a time, then as one batch. Last line: {"batched_over_single": x, ...}.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ropd.models import prepare_smollm2
from ropd.rollout.base import encode_prompt
from ropd.rollout.hf_sampler import TransformersSampler

PROMPT = [{"role": "user", "content": "Tell me a short story about a lighthouse keeper."}]


def timed_generate(sampler: TransformersSampler, batch: int, tokens: int) -> float:
    """Seconds to generate `tokens` new tokens for `batch` copies of the prompt."""
    ids = encode_prompt(sampler.tokenizer, PROMPT)
    enc = sampler.tokenizer.pad({"input_ids": [ids] * batch}, return_tensors="pt")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = sampler.model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True,
                                     temperature=1.0, top_k=None, pad_token_id=sampler.tokenizer.pad_token_id)
    elapsed = time.perf_counter() - t0
    assert out.shape[1] - enc["input_ids"].shape[1] == tokens
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    sampler = TransformersSampler.from_path(prepare_smollm2())
    timed_generate(sampler, 1, 8)  # warm-up
    single_s = sum(timed_generate(sampler, 1, args.tokens) for _ in range(args.n))
    batched_s = timed_generate(sampler, args.n, args.tokens)
    total = args.n * args.tokens
    single_tps, batched_tps = total / single_s, total / batched_s
    print(f"{args.n} samples x {args.tokens} tokens, SmolLM2-135M fp32 on {torch.get_num_threads()} threads")
    print(f"one stream at a time: {single_s:.1f} s, {single_tps:.1f} tok/s")
    print(f"one batch of {args.n}:   {batched_s:.1f} s, {batched_tps:.1f} tok/s")
    print(json.dumps({"batched_over_single": round(batched_tps / single_tps, 2),
                      "single_tok_s": round(single_tps, 1), "batched_tok_s": round(batched_tps, 1)}))


if __name__ == "__main__":
    main()
