"""Seconds per GRPO update step and peak memory, for 8 rollouts x 128 completion tokens on SmolLM2.

    .venv/bin/python bench/grpo_step.py [--steps 3]

Last line: {"step_s": median seconds per optimizer step, "peak_rss_gb": peak resident memory}.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from ropd.models import prepare_smollm2
from ropd.train.config import GRPOConfig
from ropd.train.grpo import GRPOLearner, TrainSample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    learner = GRPOLearner.load(prepare_smollm2(), GRPOConfig(micro_batch_size=args.rollouts))
    gen = torch.Generator().manual_seed(0)
    vocab = learner.model.config.vocab_size
    prompt = torch.randint(0, vocab, (48,), generator=gen).tolist()
    samples = [TrainSample(prompt_ids=prompt, completion_ids=torch.randint(0, vocab, (args.tokens,), generator=gen)
                           .tolist(), advantage=(-1.0) ** i * 0.5) for i in range(args.rollouts)]
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        metrics = learner.train_round(samples)
        times.append(time.perf_counter() - t0)
        assert metrics["steps"] == 1
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"{args.rollouts} rollouts x {args.tokens} tokens (+48 prompt), AdamW fp32, "
          f"{torch.get_num_threads()} threads: steps {[round(t, 2) for t in times]} s")
    print(json.dumps({"step_s": round(statistics.median(times), 2), "peak_rss_gb": round(peak_gb, 2)}))


if __name__ == "__main__":
    main()
