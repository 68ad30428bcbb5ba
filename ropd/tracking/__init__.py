"""Per-round figures where users already look: DVCLive for `dvc exp show` and `dvc plots`, and MLflow or W&B.

Every number here is read from the run's history (`RUN.history.json`, written by `summarize` from the
per-round JSON files), so there is one writer of each figure and the trackers only copy it:
- DVCLive always gets the headline figures (`dvclive_files`), in a git-tracked directory that `dvc.yaml`
  declares as the summarize stage's metrics and plots, so experiment commits hold them;
- `tracking.backend: mlflow` (`mlflow_store`) or `wandb` (`wandb_run`) makes each ropd run one tracker run
  with the params, every numeric per-round figure with the round as its step, and the report and each
  round's `qa.md` as artifacts. The TRL baselines' trainers report to the same place (`trainer_reporting`).

No secret is passed: each tracker reads its own credentials (`MLFLOW_TRACKING_TOKEN`, `WANDB_API_KEY`, …)
from the environment, and the params hold only the names of key variables.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What `dvc exp show` lists per experiment: the figures a sweep is compared on.
HEADLINE = ("mean_reward", "reward_auc", "accuracy", "judge_error_rate", "run_spend_usd")


class TrackingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["none", "mlflow", "wandb"] = Field(default="none", description="where per-round figures also go")
    uri: str | None = Field(default=None, description="mlflow: the tracking URI (sqlite:///mlflow.db, "
                                                      "http://host:5000), null = MLFLOW_TRACKING_URI; "
                                                      "wandb: the server's base URL, "
                                                      "null = WANDB_BASE_URL, else W&B's cloud")
    experiment: str = Field(default="ropd", description="the MLflow experiment, or the W&B project, of every run")
    entity: str | None = Field(default=None, description="wandb: the team or user (null = WANDB_ENTITY, else your "
                                                         "default entity); mlflow has none")
    dvclive_dir: str = Field(default="dvclive", description="DVCLive's directory (git-tracked: dvc exp show)")

    @model_validator(mode="after")
    def _uri_fits_backend(self) -> TrackingParams:
        if self.backend == "wandb" and self.uri and not self.uri.startswith(("http://", "https://")):
            raise ValueError(f"tracking.uri {self.uri!r} is not a W&B server: with backend wandb it is the server's "
                             "http(s) base URL, or null for WANDB_BASE_URL / W&B's cloud")
        return self


def round_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A history row's figures as a tracker takes them: numbers only (a null AUC is not a 0)."""
    return {k: float(v) for k, v in row.items()
            if k != "round" and isinstance(v, int | float) and not isinstance(v, bool)}


def publish(params: Any, history: list[dict[str, Any]], artifacts: list[tuple[Path, str | None]]) -> str | None:
    """The run's params, history and artifacts (path, folder) to the configured backend; its run id, or None."""
    backend = params.tracking.backend
    if backend == "mlflow":
        from ropd.tracking.mlflow_store import publish_mlflow

        return publish_mlflow(params, history, artifacts)
    if backend == "wandb":
        from ropd.tracking.wandb_run import publish_wandb

        return publish_wandb(params, history, artifacts)
    return None


@contextlib.contextmanager
def trainer_reporting(params: Any, r: int) -> Iterator[list[str]]:
    """`report_to` for a TRL trainer, with the backend's environment set for the round: the trainer's step logs
    go to a run of their own, tied to this ropd run (an MLflow child run, a W&B run in the run's group), so
    they do not mix with the per-round steps."""
    backend = params.tracking.backend
    if backend == "none":
        yield []
        return
    if backend == "mlflow":
        from ropd.tracking.mlflow_store import end_active, trainer_env
    else:
        from ropd.tracking.wandb_run import end_active, trainer_env
    env = trainer_env(params, r)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield [backend]
    finally:
        end_active()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
