"""The Prefect front-end: one flow per run, one task per stage per round, over `ropd.pipeline.stages`.

    python flows/distill.py [--params params.yaml]       # run once, locally
    python flows/deploy.py                                 # serve it as a deployment for the UI

Tasks are cached across runs on the content hash of their input files and of the params they read
(the keys dvc.yaml lists for the stage), plus their source (`INPUTS + TASK_SOURCE`); a cached task
whose outputs are gone or changed is rerun. So more rounds rerun only the new rounds.
The judge stages retry, and carry the `llm-judge` tag for a UI-side concurrency limit on top of the
in-process limiter (`limits.max_in_flight`). At the end the flow records the lineage with
`dvc commit`, so `dvc status` agrees the pipeline is up to date.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import INPUTS, TASK_SOURCE

from ropd.params import Params, load_params
from ropd.pipeline.dag import content_hash, params_digest, stage_io
from ropd.pipeline.lock import run_lock
from ropd.pipeline.stages import ROUND_STAGES, SETUP_STAGES, RunPaths, run_stage

LLM_STAGES = {"teacher", "judge_check", "mine", "verify", "evaluate"}


@task(cache_policy=INPUTS + TASK_SOURCE, task_run_name="{name}-{r}")
def stage_task(name: str, r: int | None, params_file: str, inputs_hash: str) -> str:
    """Run one stage; the return value is the hash of its outputs, checked on a cache hit."""
    params = load_params(params_file)
    run_stage(params, name, r)
    return content_hash(stage_io(params, name, r)[1])


@task(task_run_name="{name}")
def final_task(name: str, params_file: str) -> None:
    run_stage(load_params(params_file), name)


def _run(params: Params, params_file: str, name: str, r: int | None = None) -> None:
    deps, outs = stage_io(params, name, r)
    key = f"{content_hash(deps)}-{params_digest(params, name)}"  # the params this stage reads, as DVC keys it
    opts = {"retries": 2, "retry_delay_seconds": 10, "tags": ["llm-judge"]} if name in LLM_STAGES else {}
    t = stage_task.with_options(**opts)
    got = t(name, r, params_file, key)
    if got != content_hash(outs):  # cached, but the files on disk are not what that run wrote
        t.with_options(refresh_cache=True)(name, r, params_file, key)


def _dvc_commit(logger) -> None:
    if not Path(".dvc").is_dir() or shutil.which("dvc") is None:
        logger.info("not a DVC repository: lineage not recorded in dvc.lock")
        return
    proc = subprocess.run(["dvc", "commit", "--force", "--quiet"], capture_output=True, text=True)
    if proc.returncode != 0:
        logger.warning("dvc commit failed: %s", proc.stderr.strip()[-500:])
    else:
        logger.info("lineage recorded in dvc.lock (dvc status: up to date)")


@flow(name="ropd-distill", log_prints=True)
def distill(params_file: str = "params.yaml") -> dict:
    """Teacher (and the white-box teacher when needed) and the judge check, then per round: rollout → mine →
    qa → verify → train → evaluate; then summary and report. An enforced judge-check FAIL fails the flow run
    before round 0."""
    logger = get_run_logger()
    params = load_params(params_file)
    paths = RunPaths(params)
    with run_lock(paths.run):
        for name in SETUP_STAGES:
            _run(params, params_file, name)
        progress = create_progress_artifact(0.0, key=f"{params.run_id}-progress",
                                            description="rounds completed")
        for i, item in enumerate(params.rounds):
            for name in ROUND_STAGES:
                _run(params, params_file, name, item.r)
            update_progress_artifact(progress, 100.0 * (i + 1) / len(params.rounds))
        final_task("summarize", params_file)
        final_task("report", params_file)
        history = json.loads(paths.history.read_text())
        create_table_artifact(history, key=f"{params.run_id}-rounds", description="per-round metrics")
        last = paths.round(params.rounds[-1].r)
        qa_md = (last / "qa.md").read_text() if (last / "qa.md").is_file() else "(no QA summary)"
        create_markdown_artifact(
            f"# QA, round {params.rounds[-1].r}\n\n{qa_md}\n\nReport: [{paths.report}]"
            f"(file://{paths.report.resolve()})\n", key=f"{params.run_id}-qa",
            description="rubric QA summary and the HTML report")
    _dvc_commit(logger)
    return {"run_dir": str(paths.run), "report": str(paths.report), "rounds": history}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="run the ROPD flow once")
    ap.add_argument("--params", default="params.yaml")
    distill(ap.parse_args().params)
