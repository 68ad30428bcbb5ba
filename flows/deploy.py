"""Serve the distillation flow as a deployment, so runs can be scheduled and started from the Prefect UI.

    prefect server start &                                   # the UI at http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/deploy.py --cron "0 3 * * *"

The UI shows the flow's parameters as a form (run id, rounds, method, learning rate, each role's model,
endpoint and reasoning effort, prompts per round, n), applied on top of `--params`. Serving also creates
the `llm-judge` tag's concurrency limit, or keeps the one already set, so two scheduled runs do not
together send the judge more than one run's worth of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from prefect import get_client
from prefect.exceptions import ObjectNotFound

from flows.distill import distill

JUDGE_TAG = "llm-judge"


async def ensure_judge_limit(slots: int | None) -> int:
    """The `llm-judge` tag's limit: `slots` when given, else the one already set, else 1 (one judge stage at a
    time across all runs, each within its own `limits.max_in_flight`). Returns the limit in force."""
    async with get_client() as client:
        if slots is None:
            try:
                return (await client.read_concurrency_limit_by_tag(JUDGE_TAG)).concurrency_limit
            except ObjectNotFound:
                slots = 1
        await client.create_concurrency_limit(tag=JUDGE_TAG, concurrency_limit=slots)  # an upsert
        return slots


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="serve the ropd-distill deployment")
    ap.add_argument("--name", default="ropd-distill")
    ap.add_argument("--cron", default=None, help="cron schedule, e.g. '0 3 * * *'; none = start runs from the UI")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--judge-slots", type=int, default=None,
                    help="judge stages at once across all runs (the llm-judge tag limit); default: keep, else 1")
    args = ap.parse_args()
    if args.judge_slots is not None and args.judge_slots < 1:
        ap.error("--judge-slots: at least 1 (0 would abort every judge stage)")
    limit = asyncio.run(ensure_judge_limit(args.judge_slots))
    print(f"concurrency limit {JUDGE_TAG!r}: {limit} at a time")
    distill.serve(name=args.name, cron=args.cron, parameters={"params_file": args.params},
                  tags=["ropd"], description="Rubric-based on-policy distillation, one run per call")
