"""The Prefect front-end: one flow per run, one task per stage per round, over `ropd.pipeline.stages`.

    python flows/distill.py [--params params.yaml]       # run once, locally
    python flows/deploy.py                                 # serve it as a deployment for the UI

Tasks are cached across runs on the content hash of their input files and of the params they read
(the keys dvc.yaml lists for the stage), plus their source (`INPUTS + TASK_SOURCE`); a cached task
whose outputs are gone or changed is rerun. So more rounds rerun only the new rounds.
The judge stages retry, and carry the `llm-judge` tag, while that tag has a concurrency limit, for a
UI-side limit on top of the in-process limiter (`limits.max_in_flight`). At the end the flow records the lineage with
`dvc commit`, so `dvc status` agrees the pipeline is up to date.

The deployment's form (`flows/deploy.py`) sets a few keys on top of the params file (`ropd.overrides`).
The run's effective params go to `RUN/params.yaml` and every stage reads that file; `RUN/lineage.json`
says where they came from and how to reproduce the run. Only a run whose params are params.yaml's own
is committed to dvc.lock: DVC reads params.yaml, so any other commit would record a lie.
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
from prefect.runtime import flow_run
from prefect.states import Failed, State

from ropd.io import atomic_write_text
from ropd.overrides import Effective, Method, RoleOverride, RunOverrides, dvc_exp_command, effective
from ropd.params import ConfigError, Params, load_params
from ropd.pipeline.dag import content_hash, params_digest, stage_io
from ropd.pipeline.lock import run_lock
from ropd.pipeline.resident import policy_in_memory
from ropd.pipeline.run import RunStop
from ropd.pipeline.stages import SETUP_STAGES, RunPaths, round_steps, run_stage, side_by_side

LLM_STAGES = {"teacher", "judge_check", "mine", "verify", "evaluate"}
JUDGE_TAG = "llm-judge"


@task(cache_policy=INPUTS + TASK_SOURCE, task_run_name="{name}-{r}")
def stage_task(name: str, r: int | None, params_file: str, inputs_hash: str) -> str:
    """Run one stage; the return value is the hash of its outputs, checked on a cache hit."""
    params = load_params(params_file)
    run_stage(params, name, r)
    return content_hash(stage_io(params, name, r)[1])


@task(task_run_name="{name}")
def final_task(name: str, params_file: str) -> None:
    run_stage(load_params(params_file), name)


def _not_a_stop(task: object, task_run: object, state: State) -> bool:
    """Retry a judge stage's fault, not a clean stop (quality gate, budget, judge check): a stop is a verdict,
    and a retry would only wait and reach it again."""
    return not isinstance(state.data, RunStop)


def judge_limited() -> bool:
    """Whether the `llm-judge` tag has a concurrency limit right now (a read: milliseconds).

    Prefect asks its server for a slot of every tag a task carries, limit or not, and on a SQLite-backed server
    that write often collides with the server recording the task run it just created: a 503, which Prefect's
    client retries after about 2 s (PrefectHQ/prefect#18934). So a judge task carries the tag only while there is a
    limit to honour. It is asked before each judge task, so a limit set in the UI mid-run holds from the next one.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_concurrency_limit_by_tag(JUDGE_TAG)
        except ObjectNotFound:
            return False
    return True


def task_options(name: str) -> dict:
    """A judge stage retries a fault (never a clean stop), and takes a slot of the `llm-judge` limit if one is set."""
    if name not in LLM_STAGES:
        return {}
    return {"retries": 2, "retry_delay_seconds": 10, "retry_condition_fn": _not_a_stop,
            "tags": [JUDGE_TAG] if judge_limited() else []}


def _run(params: Params, params_file: str, name: str, r: int | None = None) -> None:
    deps, outs = stage_io(params, name, r)
    key = f"{content_hash(deps)}-{params_digest(params, name)}"  # the params this stage reads, as DVC keys it
    t = stage_task.with_options(**task_options(name))
    got = t(name, r, params_file, key)
    if got != content_hash(outs):  # cached, but the files on disk are not what that run wrote
        t.with_options(refresh_cache=True)(name, r, params_file, key)


def _dvc_lineage(eff: Effective, params_file: str) -> str | None:
    """Why dvc.lock cannot record this run, or None when DVC would have run it from the same params."""
    if not Path(".dvc").is_dir() or shutil.which("dvc") is None:
        return "not a DVC repository: dvc.lock not written"
    if Path(params_file).resolve() != Path("params.yaml").resolve() or eff.changed:
        return "not recorded in dvc.lock: the run's params are not params.yaml's (DVC reads params.yaml)"
    return None


def _lineage(eff: Effective, params_file: str, run_params: Path, dvc: str) -> dict:
    return {"flow_run_id": str(flow_run.id), "params_file": params_file, "parameters": eff.sets,
            "effective_params": str(run_params), "dvc": dvc,
            "reproduce": {"dvc_exp_run": dvc_exp_command(eff) if eff.sets else "dvc repro",
                          "dvc_repro": f"cp {run_params} params.yaml && dvc repro"}}


@flow(name="ropd-distill", log_prints=True)
def distill(params_file: str = "params.yaml", run_id: str | None = None, rounds: int | None = None,
            method: Method | None = None,
            lr: float | None = None, prompts_per_round: int | None = None, n: int | None = None,
            overlap: bool | None = None, tis_cap: float | None = None,
            teacher: RoleOverride | None = None, rubricator: RoleOverride | None = None,
            verifier: RoleOverride | None = None) -> dict | State:
    """Teacher (and the white-box teacher when needed) and the judge check, then per round: rollout → mine →
    qa → verify → train → evaluate; then summary and report. Every parameter but params_file is applied on top
    of that file; unset ones keep its values.

    A bad value, or a clean stop (quality gate, budget, an enforced judge-check FAIL), ends the flow run in a
    Failed state whose message is the reason, so the UI shows why rather than a traceback."""
    logger = get_run_logger()
    try:
        eff = effective(Path(params_file), RunOverrides(
            run_id=run_id, rounds=rounds, method=method, lr=lr, prompts_per_round=prompts_per_round, n=n,
            overlap=overlap, tis_cap=tis_cap,
            teacher=teacher, rubricator=rubricator, verifier=verifier))  # a bad value fails the run here
        return _distill(eff, params_file)
    except (ConfigError, RunStop) as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc))


def _distill(eff: Effective, params_file: str) -> dict:
    logger = get_run_logger()
    params = eff.params
    paths = RunPaths(params)
    if eff.sets:
        logger.info("parameters on top of %s: %s (run %s)", params_file, ", ".join(eff.sets), params.run_id)
    with run_lock(paths.run):
        paths.run.mkdir(parents=True, exist_ok=True)
        run_params = paths.run / "params.yaml"
        atomic_write_text(eff.text, run_params)
        stage_file = str(run_params)  # what every stage reads, so a stage rerun by hand reads the same
        for name in SETUP_STAGES:
            _run(params, stage_file, name)
        progress = create_progress_artifact(0.0, key=f"{params.run_id}-progress",
                                            description="rounds completed")
        done: set[int] = set()
        with policy_in_memory(params.checkpoints.in_memory):  # the tasks hand the policy on, not reload it
            for step in round_steps(params):  # with overlap, a round is judged while the next one samples
                side_by_side(step, lambda name, r: _run(params, stage_file, name, r))
                done |= {r for lane in step for name, r in lane if name == "evaluate"}
                update_progress_artifact(progress, 100.0 * len(done) / len(params.rounds))
        final_task("summarize", stage_file)
        final_task("report", stage_file)
        history = json.loads(paths.history.read_text())
        create_table_artifact(history, key=f"{params.run_id}-rounds", description="per-round metrics")
        last = paths.round(params.rounds[-1].r)
        qa_md = (last / "qa.md").read_text() if (last / "qa.md").is_file() else "(no QA summary)"
        create_markdown_artifact(
            f"# QA, round {params.rounds[-1].r}\n\n{qa_md}\n\nReport: [{paths.report}]"
            f"(file://{paths.report.resolve()})\n", key=f"{params.run_id}-qa",
            description="rubric QA summary and the HTML report")
        # written before `dvc commit`, which then hashes the run directory with it in place
        why_not = _dvc_lineage(eff, params_file)
        lineage = _lineage(eff, params_file, run_params, why_not or "recorded in dvc.lock")
        atomic_write_text(json.dumps(lineage, indent=2) + "\n", paths.run / "lineage.json")
        if why_not is None:
            proc = subprocess.run(["dvc", "commit", "--force", "--quiet"], capture_output=True, text=True)
            if proc.returncode != 0:
                logger.warning("dvc commit failed, so dvc.lock does not record this run: %s",
                               proc.stderr.strip()[-500:])
    logger.info("lineage: %s; reproduce with: %s", lineage["dvc"], lineage["reproduce"]["dvc_exp_run"])
    return {"run_dir": str(paths.run), "report": str(paths.report), "rounds": history, "lineage": lineage}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="run the ROPD flow once")
    ap.add_argument("--params", default="params.yaml")
    distill(ap.parse_args().params)
