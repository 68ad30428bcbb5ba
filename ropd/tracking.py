"""Per-round figures where users already look: DVCLive for `dvc exp show` and `dvc plots`, and MLflow.

Every number here is read from the run's history (`RUN.history.json`, written by `summarize` from the
per-round JSON files), so there is one writer of each figure and the trackers only copy it:
- DVCLive always gets the headline figures, in a git-tracked directory (`tracking.dvclive_dir`) that
  `dvc.yaml` declares as the summarize stage's metrics and plots, so experiment commits hold them;
- `tracking.backend: mlflow` makes each ropd run one MLflow run (found again by its `ropd.run_id` tag)
  with the params as MLflow params, every numeric per-round figure with the round as its step, and the
  report and each round's `qa.md` as artifacts. The TRL baselines' trainers report to the same store.

No secret is passed: MLflow reads its own credentials (`MLFLOW_TRACKING_TOKEN`, …) from the environment,
and the params hold only the names of key variables.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# What `dvc exp show` lists per experiment: the figures a sweep is compared on.
HEADLINE = ("mean_reward", "reward_auc", "accuracy", "judge_error_rate", "run_spend_usd")
RUN_TAG = "ropd.run_id"


class TrackingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["none", "mlflow"] = Field(default="none", description="where per-round figures also go")
    uri: str | None = Field(default=None, description="mlflow tracking URI (sqlite:///mlflow.db, http://host:5000); "
                                                      "null = MLFLOW_TRACKING_URI, else MLflow's default")
    experiment: str = Field(default="ropd", description="the MLflow experiment of every run")
    dvclive_dir: str = Field(default="dvclive", description="DVCLive's directory (git-tracked: dvc exp show)")


def write_dvclive(history: list[dict[str, Any]], out: Path) -> None:
    """The headline figures of every round, step = round, rewritten from scratch each time."""
    from dvclive import Live

    class FilesOnly(Live):
        def _init_dvc(self) -> None:
            """No repository lookup: dvc.yaml already declares these files, and DVCLive's own lookup fails in a
            git repository with no commit yet (scmrepo's SCMError escapes it) and runs `dvc init` in a git
            repository without DVC."""
            self._dvc_file = None

    with FilesOnly(dir=str(out), resume=False, save_dvc_exp=False, dvcyaml=None) as live:
        for row in history:
            live.step = int(row["round"])
            for key in HEADLINE:
                if isinstance(row.get(key), int | float):
                    live.log_metric(key, float(row[key]))
            live.make_summary()  # metrics.json holds the last round's values
    for key in HEADLINE:  # a figure no round had (AUC without labels, spend unpriced): an empty series, so
        tsv = out / "plots" / "metrics" / f"{key}.tsv"  # a dvc.yaml plot of it draws nothing rather than fail
        if not tsv.is_file():
            tsv.parent.mkdir(parents=True, exist_ok=True)
            tsv.write_text(f"step\t{key}\n")


def _flat(data: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(data) if isinstance(data, list) else str(data)}


def _client(cfg: TrackingParams):
    try:
        import mlflow
        from mlflow import MlflowClient
    except ImportError as exc:
        raise RuntimeError("tracking.backend is mlflow, but the mlflow package is not installed: "
                           "pip install 'ropd[mlflow]' (or mlflow)") from exc

    if cfg.uri:
        mlflow.set_tracking_uri(cfg.uri)
    return MlflowClient()


def mlflow_run(params: Any, cfg: TrackingParams) -> tuple[Any, str]:
    """The MLflow client and the id of this ropd run's MLflow run, created on first use."""
    client = _client(cfg)
    exp = client.get_experiment_by_name(cfg.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_TAG}` = '{params.run_id}'", max_results=1)
    if found:
        return client, found[0].info.run_id
    return client, client.create_run(exp_id, run_name=params.run_id, tags={RUN_TAG: params.run_id}).info.run_id


def publish_mlflow(params: Any, history: list[dict[str, Any]], artifacts: list[tuple[Path, str | None]]) -> str:
    """Params, per-round metrics (each round once) and artifacts into this run's MLflow run; returns its id.

    MLflow params cannot change once logged, so a key whose value changed under the same run id is left
    as first logged and named in the `ropd.params_changed` tag; `rounds` is not a param (it grows)."""
    from mlflow.entities import Metric, Param

    cfg = params.tracking
    client, run_id = mlflow_run(params, cfg)
    run = client.get_run(run_id)
    flat = _flat(params.model_dump(mode="json", exclude={"rounds"}))
    new = [Param(k[:250], v[:6000]) for k, v in flat.items() if k[:250] not in run.data.params]
    changed = sorted(k for k, v in flat.items() if k in run.data.params and run.data.params[k] != v[:6000])
    for i in range(0, len(new), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=new[i:i + 100])
    if changed:
        client.set_tag(run_id, "ropd.params_changed", ",".join(changed)[:5000])
    done = set(json.loads(run.data.tags.get("ropd.logged_rounds", "[]")))
    for row in history:
        if row["round"] in done:
            continue
        metrics = [Metric(k, float(v), 0, int(row["round"])) for k, v in row.items()
                   if k != "round" and isinstance(v, int | float) and not isinstance(v, bool)]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        done.add(row["round"])
    client.set_tag(run_id, "ropd.logged_rounds", json.dumps(sorted(done)))
    for path, where in artifacts:
        if path.is_file():
            client.log_artifact(run_id, str(path), artifact_path=where)
    return run_id


@contextlib.contextmanager
def trainer_reporting(params: Any, r: int) -> Iterator[list[str]]:
    """`report_to` for a TRL trainer, with MLflow's environment set for the round: the trainer's step logs go
    to a child run of this ropd run (tagged with the round), so they do not mix with the per-round steps."""
    cfg = params.tracking
    if cfg.backend != "mlflow":
        yield []
        return
    _, parent = mlflow_run(params, cfg)
    import mlflow

    env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_EXPERIMENT_NAME": cfg.experiment,
           "MLFLOW_RUN_NAME": f"{params.run_id}-train-{r}", "MLFLOW_FLATTEN_PARAMS": "TRUE",
           "MLFLOW_TAGS": json.dumps({"mlflow.parentRunId": parent, RUN_TAG: f"{params.run_id}/train/{r}",
                                      "ropd.round": str(r)})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield ["mlflow"]
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
