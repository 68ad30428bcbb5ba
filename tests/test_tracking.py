"""The trackers' copies of a run's history: DVCLive's files and a real MLflow store (SQLite)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ropd.params import Params
from ropd.tracking import HEADLINE
from ropd.tracking.dvclive_files import write_dvclive
from ropd.tracking.mlflow_store import publish_mlflow

HISTORY = [{"round": 0, "mean_reward": 0.25, "reward_auc": None, "accuracy": 0.0, "loss": 0.5, "judge_error_rate": 0.0},
           {"round": 1, "mean_reward": 0.5, "reward_auc": 0.75, "accuracy": 0.125, "loss": 0.25,
            "judge_error_rate": 0.1, "run_spend_usd": 0.02}]


def test_dvclive_holds_the_headline_figures_per_round(tmp_path: Path) -> None:
    out = tmp_path / "dvclive"
    write_dvclive(HISTORY, out)
    write_dvclive(HISTORY, out)  # rewritten, not appended: a rerun of summarize gives the same files
    summary = json.loads((out / "metrics.json").read_text())
    assert summary == {"step": 1, "mean_reward": 0.5, "reward_auc": 0.75, "accuracy": 0.125,
                       "judge_error_rate": 0.1, "run_spend_usd": 0.02}
    assert set(summary) - {"step"} <= set(HEADLINE)  # a handful of columns in dvc exp show, not every key
    with (out / "plots" / "metrics" / "mean_reward.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [(r["step"], r["mean_reward"]) for r in rows] == [("0", "0.25"), ("1", "0.5")]
    assert not (out / "plots" / "metrics" / "loss.tsv").exists()
    write_dvclive(HISTORY[:1], out)  # no round has an AUC or a spend yet: the plots' files exist, empty
    assert (out / "plots" / "metrics" / "reward_auc.tsv").read_text() == "step\treward_auc\n"
    assert "reward_auc" not in json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("dvc", [True, False], ids=["git-dvc-no-commit", "git-without-dvc"])
def test_dvclive_needs_no_commit_and_touches_no_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          dvc: bool) -> None:
    """`git init && dvc init && dvc repro` before a first commit: DVCLive's own repository lookup raised
    "Empty git repo" in summarize; and in a git repository without DVC it ran `dvc init`."""
    import subprocess
    import sys

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    if dvc:
        subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    write_dvclive(HISTORY, Path("dvclive"))
    assert json.loads((tmp_path / "dvclive" / "metrics.json").read_text())["step"] == 1
    assert (tmp_path / ".dvc").is_dir() == dvc


@pytest.fixture
def params(tmp_path: Path) -> Params:
    return Params.model_validate({"run_id": "trk", "tracking": {
        "backend": "mlflow", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "ropd-test"}})


def test_mlflow_gets_params_rounds_as_steps_and_artifacts_once(tmp_path: Path, params: Params,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in ./mlruns

    report = tmp_path / "trk.report.html"
    report.write_text("<html>report</html>")
    qa = tmp_path / "qa.md"
    qa.write_text("# QA")
    run_id = publish_mlflow(params, HISTORY[:1], [(report, None), (qa, "round_0")])
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.data.tags["ropd.run_id"] == "trk" and run.info.run_name == "trk"
    assert run.data.params["grpo.lr"] == str(params.grpo.lr) and run.data.params["verifier.model"]
    assert "rounds" not in run.data.params
    assert {a.path for a in client.list_artifacts(run_id)} == {"trk.report.html", "round_0"}
    # the run grows by a round: the same MLflow run, each round logged once, the round as the step
    again = publish_mlflow(params, HISTORY, [(report, None)])
    assert again == run_id
    assert publish_mlflow(params, HISTORY, []) == run_id
    steps = [(m.step, m.value) for m in client.get_metric_history(run_id, "mean_reward")]
    assert steps == [(0, 0.25), (1, 0.5)]
    assert [m.step for m in client.get_metric_history(run_id, "reward_auc")] == [1]  # null is not logged
    # a changed param under the same run id is named, not silently overwritten (MLflow params are immutable)
    changed = params.model_copy(update={"grpo": params.grpo.model_copy(update={"lr": 3e-5})})
    publish_mlflow(changed, HISTORY, [])
    run = client.get_run(run_id)
    assert run.data.tags["ropd.params_changed"] == "grpo.lr" and run.data.params["grpo.lr"] == str(params.grpo.lr)


def test_wandb_offline_run_holds_params_rounds_as_steps_and_artifacts(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.wandb_file import offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    params = Params.model_validate({"run_id": "trk", "tracking": {"backend": "wandb", "experiment": "ropd-test"}})
    with pytest.raises(ValueError, match=r"tracking.uri 'sqlite:///mlflow.db' is not a W&B server"):
        Params.model_validate({"tracking": {"backend": "wandb", "uri": "sqlite:///mlflow.db"}})
    report = tmp_path / "trk.report.html"
    report.write_text("<html>first</html>")
    qa = tmp_path / "qa.md"
    qa.write_text("# QA")
    from ropd.tracking import publish

    assert publish(params, HISTORY[:1], [(report, None), (qa, "round_0"), (tmp_path / "absent.md", None)]) == "trk"
    report.write_text("<html>second</html>")
    assert publish(params, HISTORY, [(report, None)]) == "trk"
    first, newest = offline_runs(tmp_path / "wandb")
    assert (newest.run_id, newest.project, newest.group, newest.job_type) == ("trk", "ropd-test", "trk", "ropd")
    assert newest.config["grpo"]["lr"] == params.grpo.lr and "rounds" not in newest.config
    # the newest offline copy is the whole run: every round once, the round as its step, a null AUC left out
    steps = [(h["_step"], h["mean_reward"], h.get("reward_auc")) for h in newest.history]
    assert steps == [(0, 0.25, None), (1, 0.5, 0.75)]
    assert [h["_step"] for h in first.history] == [0]
    assert {"trk.report.html", "round_0/qa.md"} <= first.files and "absent.md" not in first.files
    # artifacts are copies: each offline run keeps the report it was given
    assert (first.directory / "files" / "trk.report.html").read_text() == "<html>first</html>"
    assert (newest.directory / "files" / "trk.report.html").read_text() == "<html>second</html>"
    assert not (first.directory / "files" / "trk.report.html").is_symlink()


def test_an_evaluated_round_reaches_the_tracker_at_once_and_a_dead_tracker_only_warns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A long run shows in MLflow while it trains: `evaluate` publishes its round (the skip branch of
    eval.every here, so no policy is needed). A tracker that is down costs a warning, not the round."""
    from mlflow import MlflowClient

    from ropd.params import round_items
    from ropd.pipeline.evaluate import evaluate
    from ropd.pipeline.run import RunPaths

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = Params.model_validate({"run_id": "live", "rounds": round_items(2), "eval": {"every": 1000},
                                    "tracking": {"backend": "mlflow", "uri": store, "experiment": "live"}})
    rd = RunPaths(params).round(0)
    rd.mkdir(parents=True)
    RunPaths(params).checkpoint(0).parent.mkdir()  # a run's checkpoints directory, which the sweep reads
    (rd / "train_metrics.json").write_text(json.dumps({"round": 0, "mean_reward": 0.25, "loss": 0.5}))
    (rd / "qa.md").write_text("# QA")
    evaluate(params, 0)
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("live").experiment_id], "tags.`ropd.run_id` = 'live'")
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "mean_reward")] == [(0, 0.25)]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"round_0"}

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    dead = params.model_copy(update={"tracking": params.tracking.model_copy(update={"uri": "http://127.0.0.1:9"})})
    (rd / "eval.json").unlink()
    evaluate(dead, 0)
    assert (rd / "eval.json").is_file()
    assert "tracking.backend mlflow: rounds up to 0 not published yet" in caplog.text

    monkeypatch.setenv("WANDB_MODE", "offline")  # nobody watches an offline run live: left to `report`
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    evaluate(params.model_copy(update={"tracking": params.tracking.model_copy(update={
        "backend": "wandb", "uri": None})}), 0)
    assert not (tmp_path / "wb" / "wandb").exists()
