"""The rollout and train stages on 1 process and on N (torchrun, gloo on CPU), side by side on one round.

    .venv/bin/python bench/multi_process.py [--processes 2] [--prompts 4] [--n 4]

One round of the demo's settings is judged by the stand-in judge, then rolled out and trained once in
this process and once under `launch.command`, from the same checkpoint. The stage times include
the launcher's start and each process's model load, which is what a user pays per round. On this
2-core machine N processes share the cores the single process uses, so the ratio shows the
overhead of the launch, not a speed-up. Last line: JSON with both times and their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from ropd.models import prepare_smollm2
    from ropd.params import load_params
    from ropd.pipeline import stages
    from ropd.testing.server import ScriptedServer
    from tests.tiny import BIN, tiny_params

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ScriptedServer() as srv:
        os.chdir(tmp)
        data = tiny_params(srv.base_url, prepare_smollm2().parent)
        data["data"].update({"prompts_per_round": args.prompts, "pool_prompts": args.prompts})
        data["student"]["sampling"].update({"n": args.n, "max_new_tokens": 32})
        Path("params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        params = load_params("params.yaml")
        for name in ("demo_data", "prepare", "teacher"):
            stages.run_stage(params, name)
        for name in ("rollout", "mine", "qa", "verify"):
            stages.run_stage(params, name, 0)
        launched = params.model_copy(update={"launch": params.launch.model_copy(update={"command": [
            str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(args.processes)]})})
        for p in (params, launched):
            stages.run_stage(p, "rollout", 0)
            stages.run_stage(p, "train", 0)
        timings = Path(params.runs_dir) / ".timings" / "tiny.jsonl"
        rows = [json.loads(line) for line in timings.read_text().splitlines()]
    times = [r["seconds"] for r in rows if r["stage"] in ("rollout", "train")][-4:]  # 1 process, then N
    out = {"processes": args.processes, "prompts": args.prompts, "n": args.n,
           "rollout_1_s": times[0], "train_1_s": times[1], f"rollout_{args.processes}_s": times[2],
           f"train_{args.processes}_s": times[3], "rollout_ratio": round(times[2] / times[0], 2),
           "train_ratio": round(times[3] / times[1], 2), "cores": os.cpu_count()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
