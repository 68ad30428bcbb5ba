"""Deploy the distillation flow, so runs can be scheduled and started from the Prefect UI.

    prefect server start &                                   # the UI at http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python flows/deploy.py --cron "0 3 * * *"                # serve: runs execute in this process
    python flows/deploy.py --pool gpu                        # or deploy to a `process` work pool, and on
    prefect worker start --pool gpu                          # each machine that should run them, a worker

Served, the runs execute inside the serving process. Deployed to a work pool, each run executes in a
fresh process on whichever machine runs a worker of the pool, in the project directory given by
`--source` (this checkout by default, so a worker elsewhere needs it at the same path; or a git URL,
which the worker clones for each run).

The UI shows the flow's parameters as a form (run id, rounds, method, learning rate, each role's model,
endpoint and reasoning effort, prompts per round, n), applied on top of `--params`. Serving also creates
the `llm-judge` tag's concurrency limit, or keeps the one already set, so two scheduled runs do not
together send the judge more than one run's worth of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from prefect import get_client
from prefect.exceptions import ObjectNotFound

from flows.distill import JUDGE_TAG, distill

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTION = "Rubric-based on-policy distillation, one run per call"


async def ensure_process_pool(name: str) -> None:
    """The work pool a deployment targets must exist before `deploy`; a worker's `--type process` is the same."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def deploy_to_pool(pool: str, name: str, source: str, cron: str | None, parameters: dict) -> str:
    """`flow.deploy` to a `process` work pool, from `source` (a directory or a git URL); returns the deployment id."""
    asyncio.run(ensure_process_pool(pool))
    remote = distill.from_source(source=source, entrypoint="flows/distill.py:distill")
    return str(remote.deploy(name=name, work_pool_name=pool, cron=cron, parameters=parameters, tags=["ropd"],
                             description=DESCRIPTION, print_next_steps=False))


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
    ap = argparse.ArgumentParser(description="serve the ropd-distill deployment, or deploy it to a work pool")
    ap.add_argument("--name", default="ropd-distill")
    ap.add_argument("--cron", default=None, help="cron schedule, e.g. '0 3 * * *'; none = start runs from the UI")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--judge-slots", type=int, default=None,
                    help="judge stages at once across all runs (the llm-judge tag limit); default: keep, else 1")
    ap.add_argument("--pool", default=None, help="deploy to this `process` work pool (created if missing) "
                                                 "instead of serving; start workers with `prefect worker start`")
    ap.add_argument("--source", default=str(ROOT), help="with --pool: the project a worker runs the flow from, "
                                                       "a directory or a git URL (default: this checkout)")
    args = ap.parse_args()
    if args.judge_slots is not None and args.judge_slots < 1:
        ap.error("--judge-slots: at least 1 (0 would abort every judge stage)")
    limit = asyncio.run(ensure_judge_limit(args.judge_slots))
    print(f"concurrency limit {JUDGE_TAG!r}: {limit} at a time")
    if args.pool:
        deployment = deploy_to_pool(args.pool, args.name, args.source, args.cron, {"params_file": args.params})
        print(f"deployment {deployment} in work pool {args.pool!r}; start a worker: prefect worker start --pool "
              f"{args.pool}")
    else:
        distill.serve(name=args.name, cron=args.cron, parameters={"params_file": args.params},
                      tags=["ropd"], description=DESCRIPTION)
