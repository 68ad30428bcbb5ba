"""Disk per round checkpoint for the 135M student, under a retention setting.

    .venv/bin/python bench/checkpoint_disk.py [--rounds 3] [--keep-every K]

Runs `--rounds` tiny rounds (2 prompts × 2 rollouts: the checkpoint's size does not depend on them)
against the stand-in judge in a temporary directory, then reports the bytes each round's checkpoint
directory holds. round_0 is hard links to the prepared model, so only files the run itself wrote
(link count 1) are counted. Last line: JSON, MB per round directory still on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

from ropd.params import round_items

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def written_mb(path: Path) -> int:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.stat().st_nlink == 1) / 1e6)


def main() -> None:
    from ropd.models import prepare_smollm2
    from ropd.params import load_params
    from ropd.pipeline import stages
    from ropd.testing.server import ScriptedServer
    from tests.tiny import tiny_params

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep-every", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ScriptedServer() as srv:
        os.chdir(tmp)
        data = tiny_params(srv.base_url, prepare_smollm2().parent)
        data["rounds"] = round_items(args.rounds)
        data["data"]["pool_prompts"] = 2 * args.rounds
        data["checkpoints"] = {"keep_every": args.keep_every}
        Path("params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        params = load_params("params.yaml")
        stages.run_all(params)
        ckpts = stages.RunPaths(params).checkpoint(0).parent
        sizes = {d.name: written_mb(d) for d in sorted(ckpts.iterdir()) if d.is_dir()}
    print(json.dumps({"keep_every": args.keep_every, "rounds": args.rounds, "mb": sizes}))


if __name__ == "__main__":
    main()
