"""The evaluate stage: the held-out evaluation of a round's new policy, every `eval.every` rounds."""

from __future__ import annotations

from ropd.eval.checkpoint import evaluate_checkpoint
from ropd.params import Params
from ropd.pipeline.lock import run_lock
from ropd.pipeline.run import RunPaths, require_policy, sweep_policies, write_json
from ropd.pipeline.summary import publish_live


def evaluate(params: Params, r: int) -> None:
    """Held-out evaluation of policy r+1 after every `eval.every`-th round (and the last); then the round goes
    to the configured tracker."""
    paths = RunPaths(params)
    with run_lock(paths.run):
        if not params.evaluates_after(r):
            write_json({"round": r, "skipped": f"eval.every={params.eval.every}"}, paths.round(r) / "eval.json")
        else:
            require_policy(params, paths, r + 1)
            result = evaluate_checkpoint(params, paths.checkpoint(r + 1))
            write_json({"round": r, "prompts_seen": (r + 1) * params.data.prompts_per_round, **result.model_dump()},
                       paths.round(r) / "eval.json")
        sweep_policies(params, paths)
    publish_live(params, r)  # the round is complete: a tracker shows it now, not when the run ends
