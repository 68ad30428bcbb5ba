"""The run-level closing stages: the per-round history (and the trackers' copies of it), and the HTML report."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ropd.params import Params
from ropd.pipeline.run import RunPaths, write_json
from ropd.tracking import publish
from ropd.tracking.dvclive_files import write_dvclive

log = logging.getLogger(__name__)


def history_rows(params: Params, last: int | None = None) -> list[dict[str, Any]]:
    """One row per round (up to round `last`): the numbers of its train, diagnostics and eval files."""
    paths = RunPaths(params)
    rows = []
    for item in params.rounds:
        if last is not None and item.r > last:
            break
        rd = paths.round(item.r)
        row: dict[str, Any] = {"round": item.r}
        for name in ("train_metrics", "diagnostics", "eval"):
            f = rd / f"{name}.json"
            if f.is_file():
                data = json.loads(f.read_text())
                row.update({k: v for k, v in data.items() if isinstance(v, int | float) and k != "round"})
        rows.append(row)
    return rows


def summarize(params: Params) -> None:
    """One row per round for the report and the trackers: reward, AUC, pass rates, accuracy. DVCLive's
    headline copy (`dvc exp show`, `dvc plots`) is written from the same rows."""
    rows = history_rows(params)
    write_json(rows, RunPaths(params).history)
    write_dvclive(rows, Path(params.tracking.dvclive_dir))


def publish_live(params: Params, r: int) -> None:
    """The rounds up to r to the tracker as soon as round r is evaluated, so a long run shows in MLflow or W&B
    while it trains; `report` publishes again at the end, with the report.

    A tracker that cannot be reached is a warning here, not a stopped run: training goes on, and `report`
    fails loudly if it is still down. An offline W&B run is watched by nobody until it is synced, so it is
    left to `report` (each offline publish is a directory of its own)."""
    backend = params.tracking.backend
    if backend == "none" or (backend == "wandb" and os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled")):
        return
    qa = RunPaths(params).round(r) / "qa.md"
    try:
        publish(params, history_rows(params, last=r), [(qa, f"round_{r}")])
    except Exception as exc:  # any tracker failure: the round's own outputs are written and stand
        log.warning("tracking.backend %s: rounds up to %d not published yet (%s: %s); the report stage "
                    "publishes them", backend, r, type(exc).__name__, exc)


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
