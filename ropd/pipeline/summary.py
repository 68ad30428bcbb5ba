"""The run-level closing stages: the per-round history DVC plots read, and the HTML report."""

from __future__ import annotations

import json
from typing import Any

from ropd.params import Params
from ropd.pipeline.run import RunPaths, write_json


def summarize(params: Params) -> None:
    """One row per round for DVC plots and the report: reward, AUC, pass rates, accuracy."""
    paths = RunPaths(params)
    rows = []
    for item in params.rounds:
        rd = paths.round(item.r)
        row: dict[str, Any] = {"round": item.r}
        for name in ("train_metrics", "diagnostics", "eval"):
            f = rd / f"{name}.json"
            if f.is_file():
                data = json.loads(f.read_text())
                row.update({k: v for k, v in data.items() if isinstance(v, int | float) and k != "round"})
        rows.append(row)
    write_json(rows, paths.history)


def report(params: Params) -> None:
    from ropd.store.report import write_report

    write_report(RunPaths(params).run, RunPaths(params).report)
