"""Where one pipeline round's time goes under `dvc repro`, and how much of it is not model work.

    .venv/bin/python bench/round_overhead.py [--prompts 8] [--n 4] [--judge local|scripted]

It copies the project into a temporary git+DVC repository with one round at the demo settings
(8 prompts x n=4; the judge is the demo's local SmolLM2, or with `--judge scripted` the stand-in
OpenAI-compatible server, which answers at once, so the figure is that of a round whose judge is
an API you do not wait for), runs the set-up stages, then times `dvc repro evaluate@0` (the round's six
stages) as a whole. Each `ropd stage` command records (ropd/pipeline/timings.py) its function's
seconds, the non-model phases inside it (policy load, policy save, manifest hashing, retention sweep)
and how long the process had lived before the stage began (interpreter start and imports).

    orchestration = wall - Σ stage seconds            (process start, imports, DVC)
    non-model     = orchestration + Σ phases           (the figure issue 14 asks under 5 %)

Last line: {"orchestration_share", "non_model_share", "wall_s", "breakdown_s": {...}}.
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

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--judge", choices=("local", "scripted"), default="local")
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
                           "rounds": round_items(1)})
            params["data"].update({"prompts_per_round": args.prompts, "pool_prompts": args.prompts})
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
            # the stages before the round are set-up, not part of a round
            subprocess.run([str(BIN / "dvc"), "repro", "judge_check"], cwd=proj, check=True, env=env,
                           stdout=subprocess.DEVNULL)
            timings = proj / "data" / "runs" / ".timings" / "bench.jsonl"
            timings.unlink(missing_ok=True)
            t0 = time.perf_counter()
            subprocess.run([str(BIN / "dvc"), "repro", "evaluate@0"], cwd=proj, check=True, env=env,
                           stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            stages = [json.loads(line) for line in timings.read_text().splitlines()]
    finally:
        if server is not None:
            stop_server(server)
    stage_s = sum(s["seconds"] for s in stages)
    startup = sum(s.get("startup_s") or 0.0 for s in stages)
    phases: dict[str, float] = {}
    for s in stages:
        for k, v in s.get("phases", {}).items():
            phases[k] = phases.get(k, 0.0) + v
    breakdown = {"process_start_and_imports": startup, **phases,
                 "dvc_and_other": wall - stage_s - startup}
    model = stage_s - sum(phases.values())
    print(f"{'stage':<10} {'seconds':>8} {'startup':>8}  phases")
    for s in stages:
        print(f"{s['stage']:<10} {s['seconds']:8.1f} {s.get('startup_s') or 0:8.1f}  "
              + ", ".join(f"{k} {v:.1f}" for k, v in s.get("phases", {}).items()))
    print(f"round wall time through dvc repro: {wall:.1f} s; model work {model:.1f} s; not model work:")
    for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<28} {v:7.1f} s  {v / wall:6.1%}")
    print(json.dumps({"judge": args.judge, "orchestration_share": round(1 - stage_s / wall, 4),
                      "non_model_share": round(1 - model / wall, 4), "wall_s": round(wall, 1),
                      "model_s": round(model, 1), "breakdown_s": {k: round(v, 2) for k, v in breakdown.items()}}))


if __name__ == "__main__":
    main()
