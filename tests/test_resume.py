"""kill -9 in the middle of mine, verify and train; the same command again resumes, repeats no paid call,
and ends with the same tables (and the same checkpoint) as a run that was never interrupted."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from ropd.testing.server import ScriptedServer
from tests.tiny import BIN, make_project, project_env

GROUPS = 4


def ropd(proj: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ropd"), "stage", *args], cwd=proj, env=project_env(), capture_output=True,
                          text=True, timeout=600)


def in_process(proj: Path, name: str, r: int | None = None) -> None:
    """A stage this test does not kill, in this process: what `ropd stage` runs, without the ~5 s of imports
    a new interpreter pays (the killed stages and their resumes stay commands)."""
    from ropd.params import load_params
    from ropd.pipeline.stages import run_stage

    here = Path.cwd()
    os.chdir(proj)  # the stages' paths, the call cache included, are relative to the project
    try:
        run_stage(load_params("params.yaml"), name, r)
    finally:
        os.chdir(here)


def ok_calls(proj: Path) -> int:
    path = proj / "data" / "cache" / "llm_calls.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=1) as con:
            return con.execute("SELECT count(*) FROM llm_calls WHERE status = 'ok'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def kill_when(proj: Path, args: list[str], ready: callable) -> None:  # type: ignore[valid-type]
    """Start `ropd stage ARGS`, SIGKILL it once `ready()` holds, and make sure it really died mid-stage."""
    proc = subprocess.Popen([str(BIN / "ropd"), "stage", *args], cwd=proj, env=project_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, f"stage ended before the kill: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def served_twice(srv: ScriptedServer) -> list[str]:
    counts = Counter(e["key"] for e in srv.log if e["served"])
    return [k for k, n in counts.items() if n > 1]


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "optimizer.pt"):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_kill_mid_stage_then_resume(tmp_path: Path, smollm2_dir: Path) -> None:
    with ScriptedServer(latency=0.4) as srv:
        proj = make_project(tmp_path, srv.base_url, smollm2_dir.parent, {
            "data.prompts_per_round": GROUPS, "limits.max_in_flight": 1})
        for name, r in (("demo_data", None), ("prepare", None), ("teacher", None), ("rollout", 0)):
            in_process(proj, name, r)
        rd = proj / "data" / "runs" / "tiny" / "round_0"

        # mine: calls go one at a time; kill after two of the four rubrics are paid for
        kill_when(proj, ["mine", "--round", "0"], lambda: ok_calls(proj) >= 2)
        assert not (rd / "rubrics.parquet").exists()  # nothing half-written under an output's name
        assert not list(rd.glob(".*.tmp"))
        assert ropd(proj, "mine", "--round", "0").returncode == 0
        in_process(proj, "qa", 0)

        # verify: kill after two of the four verification calls
        kill_when(proj, ["verify", "--round", "0"], lambda: ok_calls(proj) >= GROUPS + 2)
        assert not (rd / "rewards.parquet").exists()
        assert ropd(proj, "verify", "--round", "0").returncode == 0
        assert served_twice(srv) == []  # no completed LLM call was repeated
        assert srv.served("rubric") == GROUPS and srv.served("verify") == GROUPS

        # train: kill while the update runs, before the checkpoint lands
        ckpt = proj / "data" / "runs" / "tiny" / "checkpoints" / "round_1"
        t0 = time.monotonic()
        kill_when(proj, ["train", "--round", "0"], lambda: time.monotonic() - t0 > 6)
        assert not ckpt.exists()
        assert ropd(proj, "train", "--round", "0").returncode == 0

        resumed = {n: pd.read_parquet(rd / f"{n}.parquet") for n in ("rubrics", "criteria", "judgements", "rewards")}
        resumed_ckpt = tree_hash(ckpt)

        # the uninterrupted reference: the same stages again with an empty cache (train as a command, as the
        # resumed one ran, so the checkpoints compare bit for bit)
        shutil.rmtree(proj / "data" / "cache")
        for stage in ("mine", "qa", "verify"):
            in_process(proj, stage, 0)
        assert ropd(proj, "train", "--round", "0").returncode == 0
    for name, df in resumed.items():
        pd.testing.assert_frame_equal(pd.read_parquet(rd / f"{name}.parquet"), df, check_like=False)
    assert tree_hash(ckpt) == resumed_ckpt


@pytest.mark.parametrize("stage", ["mine"])
def test_unknown_round_and_locked_run_are_clear(tmp_path: Path, smollm2_dir: Path, stage: str) -> None:
    proj = make_project(tmp_path, "http://127.0.0.1:9/v1", smollm2_dir.parent)
    bad = ropd(proj, stage, "--round", "7")
    assert bad.returncode == 2 and "needs --round, one of [0]" in bad.stdout
    from ropd.pipeline.lock import run_lock

    with run_lock(proj / "data" / "runs" / "tiny"):
        locked = ropd(proj, "prepare")
    assert locked.returncode == 2 and "is in use by pid" in locked.stdout
