"""What overlapped judging (`overlap: true`) saves: wall time of the same rounds in turn and overlapped.

    .venv/bin/python bench/overlap.py [--rounds 3] [--latency 2.0] [--in-flight 1] [--prompts 8] [--n 4]

Both arms run the demo's rounds (the packaged SmolLM2 student on CPU, 8 prompts x n=4 by default) through
`ropd.pipeline.stages.run_rounds`, as `ropd run` does, against the stand-in OpenAI-compatible judge in its own process,
which waits `--latency` seconds before every reply. `--in-flight` caps the calls in flight
(`limits.max_in_flight`): 1 is an endpoint that serves one call at a time, as a rate-limited reasoning model
does; raise it to see the judge's share shrink. Each arm has its own project directory and call cache, so
neither is served from the other's calls, and both set `grpo.tis_cap`, so the schedule is the only
difference. The set-up stages (data, teacher, model preparation) run before the clock starts.

The whole-run ratio includes the steps at either end that cannot overlap (round 0's sampling; the last
update and evaluation), so it grows with the number of rounds. The steady-state ratio does not: a round's
span in turn against an overlapped step whose policy lane trains, samples and evaluates (from 3 rounds on),
which is the pace of a long run.

Last line: {"speedup": in_turn / overlapped, "steady_speedup", "in_turn_s", "overlap_s",
"stage_s": {arm: {stage: s}}, "steady_s": {arm: [s]}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ropd.params import round_items

ROOT = Path(__file__).resolve().parent.parent


def run_arm(work: Path, url: str, args: argparse.Namespace, overlap: bool) -> dict:
    from ropd.params import Params
    from ropd.pipeline.lock import run_lock
    from ropd.pipeline.stages import ROUND_STAGES, SETUP_STAGES, round_steps, run_rounds, run_stage

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data.update({"run_id": "overlap" if overlap else "in_turn", "models_dir": str((ROOT / "data" / "models").resolve()),
                 "overlap": overlap, "rounds": round_items(args.rounds, overlap)})
    data["data"].update({"prompts_per_round": args.prompts, "pool_prompts": args.prompts * args.rounds})
    data["student"]["sampling"]["n"] = args.n
    data["grpo"]["tis_cap"] = 2.0
    data["judge_check"]["prompts"] = 0
    data["limits"]["max_in_flight"] = args.in_flight
    for role in ("rubricator", "verifier"):
        data[role] = {**data[role], "provider": "openai", "base_url": url, "model": "stand-in-judge",
                      "api_key_env": None}
    proj = work / data["run_id"]
    proj.mkdir()
    os.chdir(proj)  # the run directory and the call cache are relative: each arm has its own
    params = Params.model_validate(data)
    with run_lock(params.run_dir):
        for name in SETUP_STAGES:
            run_stage(params, name)
        t0 = time.perf_counter()
        run_rounds(params)
        wall = time.perf_counter() - t0
    lines = [json.loads(line) for line in (Path(params.runs_dir) / ".timings" / f"{params.run_id}.jsonl").open()]
    stage_s: dict[str, float] = {}
    for line in lines:
        if line["round"] is not None:
            stage_s[line["stage"]] = round(stage_s.get(line["stage"], 0.0) + line["seconds"], 1)
    # A long run's pace: in turn, a round's span; overlapped, a step whose policy lane trains, samples and
    # evaluates (not the fill and drain steps at either end of the run, whose share shrinks as a run grows).
    if overlap:
        groups = [[s for lane in step for s in lane] for step in round_steps(params)
                  if len(step) == 2 and len(step[1]) == 3]
    else:
        groups = [[(name, item.r) for name in ROUND_STAGES] for item in params.rounds]
    return {"wall_s": round(wall, 1), "stage_s": stage_s, "steady_s": [round(span(lines, g), 1) for g in groups]}


def span(lines: list[dict], group: list[tuple[str, int]]) -> float:
    """Wall seconds from the first start to the last end of the stages in `group`."""
    mine = [ln for ln in lines if (ln["stage"], ln["round"]) in group]
    return max(ln["started"] + ln["seconds"] for ln in mine) - min(ln["started"] for ln in mine)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency", type=float, default=2.0, help="seconds the judge waits before each reply")
    ap.add_argument("--in-flight", type=int, default=1, help="limits.max_in_flight")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    os.environ["TQDM_DISABLE"] = "1"
    sys.path.insert(0, str(ROOT / "bench"))
    from _common import start_server, stop_server

    server, url = start_server(args.latency)
    cwd = Path.cwd()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            arms = {name: run_arm(Path(tmp), url, args, name == "overlap") for name in ("in_turn", "overlap")}
            os.chdir(cwd)
    finally:
        stop_server(server)
    for name, arm in arms.items():
        print(f"{name:<8} {arm['wall_s']:7.1f} s  " + ", ".join(f"{k} {v:.1f}" for k, v in arm["stage_s"].items()))
    speedup = arms["in_turn"]["wall_s"] / arms["overlap"]["wall_s"]
    pace = {name: sum(arm["steady_s"]) / len(arm["steady_s"]) if arm["steady_s"] else None
            for name, arm in arms.items()}
    steady = pace["in_turn"] / pace["overlap"] if pace["overlap"] else None
    print(f"{args.rounds} rounds, judge latency {args.latency} s, {args.in_flight} call(s) in flight: "
          f"overlap is {speedup:.2f}x faster")
    if steady:
        print(f"steady state: a round in turn takes {pace['in_turn']:.1f} s, an overlapped step "
              f"{pace['overlap']:.1f} s ({steady:.2f}x)")
    print(json.dumps({"speedup": round(speedup, 3), "steady_speedup": round(steady, 3) if steady else None,
                      "in_turn_s": arms["in_turn"]["wall_s"],
                      "overlap_s": arms["overlap"]["wall_s"], "rounds": args.rounds, "latency_s": args.latency,
                      "in_flight": args.in_flight, "prompts": args.prompts, "n": args.n,
                      "stage_s": {name: arm["stage_s"] for name, arm in arms.items()},
                      "steady_s": {name: arm["steady_s"] for name, arm in arms.items()}}))


if __name__ == "__main__":
    main()
