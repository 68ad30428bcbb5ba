"""Serve the distillation flow as a deployment, so runs can be scheduled and started from the Prefect UI.

    prefect server start &                                   # the UI at http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/deploy.py --cron "0 3 * * *"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from flows.distill import distill

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="serve the ropd-distill deployment")
    ap.add_argument("--name", default="ropd-distill")
    ap.add_argument("--cron", default=None, help="cron schedule, e.g. '0 3 * * *'; none = start runs from the UI")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    distill.serve(name=args.name, cron=args.cron, parameters={"params_file": args.params},
                  tags=["ropd"], description="Rubric-based on-policy distillation, one run per call")
