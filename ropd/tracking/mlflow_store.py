"""MLflow: each ropd run is one MLflow run (found again by its `ropd.run_id` tag), with the params as MLflow
params, every numeric per-round figure with the round as its step, and the artifacts it is given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ropd.tracking import TrackingParams, round_metrics

RUN_TAG = "ropd.run_id"


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
        metrics = [Metric(k, v, 0, int(row["round"])) for k, v in round_metrics(row).items()]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        done.add(row["round"])
    client.set_tag(run_id, "ropd.logged_rounds", json.dumps(sorted(done)))
    for path, where in artifacts:
        if path.is_file():
            client.log_artifact(run_id, str(path), artifact_path=where)
    return run_id


def trainer_env(params: Any, r: int) -> dict[str, str]:
    """MLflow's environment for a TRL trainer's round: a child run of this ropd run, tagged with the round."""
    import mlflow

    _, parent = mlflow_run(params, params.tracking)
    return {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_EXPERIMENT_NAME": params.tracking.experiment,
            "MLFLOW_RUN_NAME": f"{params.run_id}-train-{r}", "MLFLOW_FLATTEN_PARAMS": "TRUE",
            "MLFLOW_TAGS": json.dumps({"mlflow.parentRunId": parent, RUN_TAG: f"{params.run_id}/train/{r}",
                                       "ropd.round": str(r)})}


def end_active() -> None:
    """The trainer's run, if it left one open (TRL's callback does not end it)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.end_run()
