"""Seconds per GRPO round and peak memory on SmolLM2: one optimizer step per round against 4.

The same 8 rollouts x 128 completion tokens (4 prompts x 2) are trained on in one step, and in 4 steps
of one prompt group each (`grpo.mini_batch_prompts`: the later steps also need the old log-probs,
one extra forward pass). Both use the same micro-batches (`--micro` sequences per forward/backward), so
the difference is the schedule's. Each configuration runs in its own process, so each peak RSS is its own.

    .venv/bin/python bench/grpo_step.py [--rounds 2]

Last line: {"one_step_round_s", "four_step_round_s": median seconds per round, "time_ratio": four/one,
"one_step_peak_rss_gb", "four_step_peak_rss_gb"}.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from ropd.models import prepare_smollm2
from ropd.train.config import GRPOConfig
from ropd.train.grpo import GRPOLearner, TrainSample


def run_config(mini_batch_prompts: int | None, rounds: int, rollouts: int, group: int, tokens: int,
               micro: int) -> dict:
    """Train `rounds` rounds on fixed samples in this process; seconds per round, peak RSS."""
    learner = GRPOLearner.load(prepare_smollm2(), GRPOConfig(micro_batch_size=micro,
                                                             mini_batch_prompts=mini_batch_prompts))
    gen = torch.Generator().manual_seed(0)
    vocab = learner.model.config.vocab_size
    prompts = [torch.randint(0, vocab, (48,), generator=gen).tolist() for _ in range(rollouts // group)]
    samples = [TrainSample(prompt_id=f"p{i // group}", prompt_ids=prompts[i // group],
                           completion_ids=torch.randint(0, vocab, (tokens,), generator=gen).tolist(),
                           advantage=(-1.0) ** i * 0.5) for i in range(rollouts)]
    times, steps = [], 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        steps = learner.train_round(samples)["steps"]
        times.append(time.perf_counter() - t0)
    return {"steps": steps, "round_s": statistics.median(times), "times": [round(t, 2) for t in times],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--group", type=int, default=2, help="rollouts per prompt")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--micro", type=int, default=2, help="sequences per forward/backward, both configurations")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # mini_batch_prompts; 0 = None
    args = ap.parse_args()
    shape = [f"--rounds={args.rounds}", f"--rollouts={args.rollouts}", f"--group={args.group}",
             f"--tokens={args.tokens}", f"--micro={args.micro}"]
    if args.child is not None:
        print(json.dumps(run_config(args.child or None, args.rounds, args.rollouts, args.group, args.tokens,
                                    args.micro)))
        return
    n_prompts = args.rollouts // args.group
    res = {}
    for name, per_step in (("one_step", 0), ("four_step", max(n_prompts // 4, 1))):
        proc = subprocess.run([sys.executable, __file__, *shape, f"--child={per_step}"], capture_output=True,
                              text=True, check=True)
        res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: {res[name]['steps']:.0f} optimizer step(s) per round, rounds {res[name]['times']} s, "
              f"peak RSS {res[name]['peak_rss_gb']:.2f} GB")
    print(f"{args.rollouts} rollouts ({n_prompts} prompts) x {args.tokens} tokens (+48 prompt), micro-batches of "
          f"{args.micro}, AdamW fp32, {torch.get_num_threads()} threads")
    one, four = res["one_step"], res["four_step"]
    print(json.dumps({"one_step_round_s": round(one["round_s"], 2), "four_step_round_s": round(four["round_s"], 2),
                      "time_ratio": round(four["round_s"] / one["round_s"], 2),
                      "one_step_peak_rss_gb": round(one["peak_rss_gb"], 2),
                      "four_step_peak_rss_gb": round(four["peak_rss_gb"], 2)}))


if __name__ == "__main__":
    main()
