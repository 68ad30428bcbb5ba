"""Where one pipeline round's time goes under `dvc repro` or the Prefect flow, and how much of it is not model work.

    .venv/bin/python bench/round_overhead.py [--prompts 8] [--n 4] [--judge local|scripted] [--runner dvc|prefect]
                                             [--rounds 1] [--reload] [--judge-limit N]

It copies the project into a temporary git+DVC repository with `--rounds` rounds at the demo settings
(8 prompts x n=4; the judge is the demo's local SmolLM2, or with `--judge scripted` the stand-in
OpenAI-compatible server, which answers at once, so the figure is that of a round whose judge is
an API you do not wait for), runs the set-up stages and the rounds before the last, then times the last
round's six stages (`dvc repro evaluate@R`) as a whole. Round 0's rollout loads the policy in every runner;
from round 1 on, the flow hands it from stage to stage in memory (`checkpoints.in_memory`; `--reload` turns
that off, for a side-by-side comparison), so `--rounds 2` gives a long run's steady state. Each
`ropd stage` command records (ropd/pipeline/timings.py) its function's seconds, the non-model phases
inside it (policy load, policy save, manifest hashing, retention sweep) and how long the process had
lived before the stage began (interpreter start and imports).

    orchestration = wall - Σ stage seconds            (process start, imports, DVC)
    non-model     = orchestration + Σ phases           (the figure issue 14 asks under 5 %)

With `--runner prefect` the project runs `python flows/distill.py` instead: every stage is a task in one
process, so there is no process start per stage, and the orchestration is the gaps between the round's
tasks (each stage line records its start), which is Prefect's task bookkeeping and the flow's input hashing.

Then, beside the round in the same run, it times the trackers' copies of the finished round (issue 16):
DVCLive's files, an MLflow run in a SQLite store and an offline W&B run, each published three times from
the run's real history, report and `qa.md`. The first call pays the tracker's import (for DVCLive, the
first call is the whole `summarize` function, which imports and writes it); the later ones are a warm
publish. Under `dvc repro` each round's `evaluate` is a process of its own that publishes the round, so
the first call's share of one round's wall time is what tracking costs a round there; the flow and
`ropd run` pay it once per run, then the warm call.

Last line: {"runner", "orchestration_share", "non_model_share", "wall_s", "breakdown_s": {...},
"tracking_s": {tracker: {"first", "warm"}}, "tracking_share": {tracker: first / wall}}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ropd.params import round_items
from ropd.pipeline.stages import SETUP_STAGES as SETUP

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def through_dvc(proj: Path, env: dict[str, str], timings: Path, r: int) -> tuple[float, list[dict], dict[str, float]]:
    """`dvc repro` of round r's six stages, each a `ropd stage` process, after the set-up stages and the rounds
    before it."""
    before = f"evaluate@{r - 1}" if r else "judge_check"
    subprocess.run([str(BIN / "dvc"), "repro", before], cwd=proj, check=True, env=env, stdout=subprocess.DEVNULL)
    timings.unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "dvc"), "repro", f"evaluate@{r}"], cwd=proj, check=True, env=env,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    stages = [json.loads(line) for line in timings.read_text().splitlines()]
    startup = sum(s.get("startup_s") or 0.0 for s in stages)
    return wall, stages, {"process_start_and_imports": startup,
                          "dvc_and_other": wall - sum(s["seconds"] for s in stages) - startup}


def through_prefect(proj: Path, env: dict[str, str], timings: Path, r: int, judge_limit: int | None = None
                    ) -> tuple[float, list[dict], dict[str, float]]:
    """The whole flow in one process (`python flows/distill.py`, an ephemeral Prefect server in a fresh
    PREFECT_HOME); round r is the span from the end of the stages before it (the set-up stages, or round
    r-1's) to the end of `evaluate@r`, and its gaps between stages are Prefect's task bookkeeping plus the
    flow's own input hashing. With `judge_limit`, the `llm-judge` tag has that concurrency limit first, as
    `flows/deploy.py` sets it, so every judge task takes a slot from the server."""
    env = {**env, "PREFECT_HOME": str(proj / ".prefect"), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    if judge_limit is not None:  # written to PREFECT_HOME's database, which the flow's own server then reads
        subprocess.run([sys.executable, "-c", "import asyncio, sys; from flows.deploy import ensure_judge_limit; "
                        "asyncio.run(ensure_judge_limit(int(sys.argv[1])))", str(judge_limit)],
                       cwd=proj, env=env, check=True, capture_output=True)
    proc = subprocess.run([sys.executable, str(ROOT / "flows" / "distill.py")], cwd=proj, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the flow run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    lines = [json.loads(line) for line in timings.read_text().splitlines()]
    setup_end = max(s["started"] + s["seconds"] for s in lines
                    if (s["round"] is None and s["stage"] in SETUP) or (s["round"] is not None and s["round"] < r))
    stages = sorted((s for s in lines if s["round"] == r), key=lambda s: s["started"])
    wall = stages[-1]["started"] + stages[-1]["seconds"] - setup_end
    return wall, stages, {"prefect_task_bookkeeping": wall - sum(s["seconds"] for s in stages)}


def tracker_seconds(proj: Path) -> dict[str, dict[str, float]]:
    """Seconds to publish the finished round to each tracker: the first call (with its import), and the mean
    of two more (warm). The trackers write under the temporary project and are read from the same history."""
    from ropd.params import load_params
    from ropd.pipeline.run import RunPaths
    from ropd.pipeline.summary import report, summarize

    cwd, saved = os.getcwd(), dict(os.environ)
    os.chdir(proj)
    os.environ.update({"WANDB_MODE": "offline", "WANDB_DIR": str(proj), "WANDB_SILENT": "true"})
    try:
        params = load_params(proj / "params.yaml")  # tracking.backend: none, as params.yaml ships
        t0 = time.perf_counter()
        summarize(params)  # the history and DVCLive's files: DVCLive's first call, with its import
        first_dvclive = time.perf_counter() - t0
        report(params)  # the round's real report: the artifact the trackers are given
        paths = RunPaths(params)
        history = json.loads(paths.history.read_text())
        artifacts = [(paths.report, None), (paths.round(0) / "qa.md", "round_0")]
        from ropd.tracking import publish
        from ropd.tracking.dvclive_files import write_dvclive

        def with_backend(backend: str, uri: str | None):
            return params.model_copy(update={"tracking": params.tracking.model_copy(
                update={"backend": backend, "uri": uri})})

        mlflow_params = with_backend("mlflow", f"sqlite:///{proj / 'mlflow.db'}")
        wandb_params = with_backend("wandb", None)
        out = {}
        for name, call in (("dvclive", lambda: write_dvclive(history, proj / "dvclive")),
                           ("mlflow", lambda: publish(mlflow_params, history, artifacts)),
                           ("wandb", lambda: publish(wandb_params, history, artifacts))):
            seconds = []
            for _ in range(3):
                t0 = time.perf_counter()
                call()
                seconds.append(time.perf_counter() - t0)
            out[name] = {"first": first_dvclive if name == "dvclive" else seconds[0], "warm": sum(seconds[1:]) / 2}
        return out
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--judge", choices=("local", "scripted"), default="local")
    ap.add_argument("--runner", choices=("dvc", "prefect"), default="dvc")
    ap.add_argument("--rounds", type=int, default=1, help="run this many rounds and time the last: from the second "
                    "on, a long-lived runner (the flow) hands the policy on from the round before")
    ap.add_argument("--judge-limit", type=int, default=None, help="with --runner prefect: give the llm-judge tag "
                    "this concurrency limit first, as a served deployment has (each judge task then takes a slot)")
    ap.add_argument("--reload", action="store_true", help="checkpoints.in_memory: false (every stage loads the "
                    "policy from disk), to compare with the default side by side")
    args = ap.parse_args()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TQDM_DISABLE": "1"}
    sys.path.insert(0, str(ROOT / "bench"))
    from _common import start_server, stop_server

    server = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            proj = Path(tmp)
            shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
            params = yaml.safe_load((ROOT / "params.yaml").read_text())
            params.update({"run_id": "bench", "models_dir": str((ROOT / "data" / "models").resolve()),
                           "rounds": round_items(args.rounds)})
            params["checkpoints"]["in_memory"] = not args.reload
            params["data"].update({"prompts_per_round": args.prompts, "pool_prompts": args.prompts * args.rounds})
            params["student"]["sampling"]["n"] = args.n
            params["judge_check"]["prompts"] = 0
            if args.judge == "scripted":
                server, url = start_server(0.0)
                for role in ("rubricator", "verifier"):
                    params[role] = {**params[role], "provider": "openai", "base_url": url,
                                    "model": "stand-in-judge", "api_key_env": None}
            (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
                subprocess.run(cmd, cwd=proj, check=True, env=env)
            timings = proj / "data" / "runs" / ".timings" / "bench.jsonl"
            if args.runner == "dvc":
                wall, stages, orchestration = through_dvc(proj, env, timings, args.rounds - 1)
            else:
                wall, stages, orchestration = through_prefect(proj, env, timings, args.rounds - 1, args.judge_limit)
            trackers = tracker_seconds(proj)
    finally:
        if server is not None:
            stop_server(server)
    stage_s = sum(s["seconds"] for s in stages)
    phases: dict[str, float] = {}
    for s in stages:
        for k, v in s.get("phases", {}).items():
            phases[k] = phases.get(k, 0.0) + v
    breakdown = {**orchestration, **phases}
    model = stage_s - sum(phases.values())
    print(f"{'stage':<10} {'seconds':>8} {'startup':>8}  phases")
    for s in stages:
        print(f"{s['stage']:<10} {s['seconds']:8.1f} {s.get('startup_s') or 0:8.1f}  "
              + ", ".join(f"{k} {v:.1f}" for k, v in s.get("phases", {}).items()))
    print(f"round {args.rounds - 1}'s wall time through {args.runner}: {wall:.1f} s; model work {model:.1f} s; "
          "not model work:")
    for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<28} {v:7.1f} s  {v / wall:6.1%}")
    print("publishing the finished round to a tracker (first call with its import; warm):")
    for k, v in trackers.items():
        print(f"  {k:<10} {v['first']:6.2f} s  {v['first'] / wall:6.2%} of the round;  warm {v['warm']:5.2f} s")
    print(json.dumps({"runner": args.runner, "judge": args.judge, "round": args.rounds - 1,
                      "in_memory": not args.reload, "judge_limit": args.judge_limit,
                      "orchestration_share": round(1 - stage_s / wall, 4),
                      "non_model_share": round(1 - model / wall, 4), "wall_s": round(wall, 1),
                      "model_s": round(model, 1), "breakdown_s": {k: round(v, 2) for k, v in breakdown.items()},
                      "tracking_s": {k: {m: round(x, 3) for m, x in v.items()} for k, v in trackers.items()},
                      "tracking_share": {k: round(v["first"] / wall, 4) for k, v in trackers.items()}}))


if __name__ == "__main__":
    main()
