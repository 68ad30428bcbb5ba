"""The run-level closing stages: the per-round history (and the trackers' copies of it), and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ropd.params import Params
from ropd.pipeline.run import RunPaths, write_json
from ropd.tracking import publish
from ropd.tracking.dvclive_files import write_dvclive


def summarize(params: Params) -> None:
    """One row per round for the report and the trackers: reward, AUC, pass rates, accuracy. DVCLive's
    headline copy (`dvc exp show`, `dvc plots`) is written from the same rows."""
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
    write_dvclive(rows, Path(params.tracking.dvclive_dir))


def report(params: Params) -> None:
    """The HTML report; then, with `tracking.backend` mlflow or wandb, the run's params, history and report go
    to that tracker (last, so the tracker gets the report the run ends with)."""
    from ropd.store.report import write_report

    paths = RunPaths(params)
    write_report(paths.run, paths.report)
    if params.tracking.backend != "none":
        history = json.loads(paths.history.read_text())
        qa = [(paths.round(item.r) / "qa.md", f"round_{item.r}") for item in params.rounds]
        publish(params, history, [(paths.report, None), *qa])
