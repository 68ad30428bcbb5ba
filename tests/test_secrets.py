"""A canary API key, used by all three judge roles for a whole tiny run, is stored nowhere.

The run is the Prefect flow (flows/distill.py) on a tiny project whose teacher, rubricator and verifier
are the openai provider pointed at the scripted server, with `api_key_env` naming the canary's variable.
Afterwards every byte is searched (UTF-8 and UTF-16): the project (run directory, tables, checkpoints,
call cache, DVC files, DVCLive's files, the MLflow store and its artifacts, W&B's offline run), the DuckDB
store, the HTML report, Prefect's result storage and its database, and everything logged or printed during the run;
then the run's exports (`ropd export`, every format, with verdicts) and what the command printed. The
server must have received the canary, so the test proves the key was really in use. Heavy: one full
tiny run, 1 to 4 minutes depending on load.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path

import pytest

from ropd.testing.server import ScriptedServer, auth_digest
from tests.tiny import make_project, project_env

KEY_ENV = "ROPD_CANARY_API_KEY"


def leaks(roots: list[Path], canary: str) -> list[str]:
    """Every file under `roots` whose bytes hold the canary, as UTF-8 or UTF-16."""
    needles = [canary.encode(), canary.encode("utf-16-le")]
    found = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        for f in files:
            data = f.read_bytes()
            if any(n in data for n in needles):
                found.append(str(f))
    return found


def test_canary_key_is_stored_nowhere(tmp_path: Path, smollm2_dir: Path, prefect_harness: None,
                                      monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    import prefect.settings
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_DATABASE_CONNECTION_URL

    canary = f"sk-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, canary)
    with ScriptedServer() as srv:
        teacher = {"provider": "openai", "base_url": srv.base_url, "model": "stand-in-judge", "api_key_env": KEY_ENV,
                   "temperature": 1.0, "max_tokens": 256, "backoff_initial_s": 0.05}
        proj = make_project(tmp_path, srv.base_url, smollm2_dir.parent, {
            "rubricator.api_key_env": KEY_ENV, "verifier.api_key_env": KEY_ENV, "teacher.role": teacher,
            "teacher.m": 2, "tracking.backend": "mlflow", "tracking.uri": "sqlite:///mlflow.db"})
        monkeypatch.chdir(proj)
        monkeypatch.setenv("PATH", project_env()["PATH"])
        monkeypatch.syspath_prepend(str(proj))
        storage = tmp_path / "prefect-storage"
        caplog.set_level(logging.DEBUG)
        with prefect.settings.temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: storage}):
            from flows.distill import distill

            distill("params.yaml")
        served = {e["kind"] for e in srv.log if e["served"]}
        sent = {e["auth"] for e in srv.log}
    # the key was really used, by every role
    assert served >= {"teacher", "rubric", "verify"}
    assert sent == {auth_digest(f"Bearer {canary}")}

    # W&B, the other tracker: the same run's report stage again, offline, with the key still in the environment
    from ropd.params import load_params
    from ropd.pipeline.summary import report
    from tests.wandb_file import offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(proj / "wb"))
    (proj / "wb").mkdir()
    params = load_params(proj / "params.yaml")
    report(params.model_copy(update={"tracking": params.tracking.model_copy(update={"backend": "wandb", "uri": None})}))
    [wb] = offline_runs(proj / "wb" / "wandb")
    assert "tiny.report.html" in wb.files and wb.history and wb.config["verifier"]["api_key_env"] == KEY_ENV

    from ropd.store.db import Store

    db = proj / "data" / "ropd.duckdb"
    Store(db).rebuild(proj / "data" / "runs", [proj / "data" / "cache" / "llm_calls.sqlite"])
    report = proj / "data" / "runs" / "tiny.report.html"
    prefect_db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    for must in (db, report, proj / "data" / "cache" / "llm_calls.sqlite", proj / "data" / "runs" / "tiny",
                 storage, prefect_db, proj / "mlflow.db", proj / "dvclive" / "metrics.json"):
        assert must.exists(), must
    assert list(proj.glob("mlruns/*/*/artifacts/tiny.report.html")), "MLflow got no report"  # searched below
    assert any(storage.rglob("*")), "Prefect persisted no task results"

    # the scanner finds a planted copy, so an empty result means something
    plant = tmp_path / "planted.bin"
    plant.write_bytes(b"\x00" + canary.encode("utf-16-le") + b"\x00")
    assert leaks([plant], canary) == [str(plant)]
    plant.unlink()

    assert leaks([proj, storage, prefect_db.parent], canary) == []

    # the rubric dataset leaves the project without the key: every format, with the verdict pools
    from typer.testing import CliRunner

    from ropd.cli import app
    from ropd.store.export import ExportFormat

    exports, printed = tmp_path / "exports", []
    for fmt in ExportFormat:
        result = CliRunner().invoke(app, ["export", "tiny", "--format", fmt.value, "--with-verdicts",
                                          "--out", str(exports / fmt.value)])
        assert result.exit_code == 0, result.output
        assert any((exports / fmt.value).iterdir())
        printed.append(result.output)
    assert leaks([exports], canary) == []
    out, err = capfd.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    # Prefect re-configures logging during a run: its API handler writes the run's logs to the database
    # (searched above as bytes); its console handler lands in the fd capture, unless an earlier Prefect
    # test in the session bound it to another stream. The database copy must exist either way.
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    with sqlite3.connect(prefect_db) as con:
        db_logs = "\n".join(m for (m,) in con.execute("SELECT message FROM log"))
    assert "Finished in state Completed" in db_logs
    assert canary not in out + err + logged + db_logs + "".join(printed)
