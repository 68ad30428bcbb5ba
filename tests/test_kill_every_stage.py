"""kill -9 in the stages that tests/test_resume.py and tests/test_kill_teacher.py do not kill: each one dies
just before publishing its (last) output, then the same command resumes it.

Promised: the output is absent, not half-written; the dead writer's temporary is swept by the resume;
no LLM call is served twice; and the finished run's tables, metrics and checkpoint equal those of an
uninterrupted `ropd run` of the same params.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ropd.io import atomic_write_parquet
from ropd.testing.server import ScriptedServer
from tests.test_resume import in_process, served_twice, tree_hash
from tests.tiny import BIN, make_project, project_env

KILLPOINT = Path(__file__).with_name("killpoint.py")
RUN = Path("data/runs/tiny")

# (stage args, the output it dies before publishing); the stages in between run uninterrupted
PLAN: list[tuple[list[str], str | None]] = [
    (["demo_data"], "eval.parquet"),
    (["prepare"], "round_0"),
    (["teacher_sft"], "teacher-sft"),
    (["teacher"], None),
    (["judge_check"], "judge_check.gate"),
    (["rollout", "--round", "0"], "rollouts.parquet"),
    (["mine", "--round", "0"], None),
    (["qa", "--round", "0"], "qa.json"),
    (["verify", "--round", "0"], None),
    (["train", "--round", "0"], None),
    (["evaluate", "--round", "0"], "eval.json"),
    (["summarize"], "tiny.history.json"),
    (["report"], "tiny.report.html"),
]


def stage(proj: Path, *args: str, target: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(KILLPOINT), target, "stage", *args] if target else [str(BIN / "ropd"), "stage", *args]
    return subprocess.run(cmd, cwd=proj, env={**project_env(), "KILLPOINT_LOG": str(proj / "killpoint.log")},
                          capture_output=True, text=True, timeout=600)


def models(root: Path, smollm2_dir: Path) -> Path:
    """A project's own models dir (teacher_sft writes there), the packaged weights hard-linked into it."""
    shutil.copytree(smollm2_dir, root / smollm2_dir.name, copy_function=os.link)
    return root


def outputs(proj: Path) -> dict[str, object]:
    """Every table, metrics file and checkpoint a run leaves, as comparable values (the durations in
    data/runs/.timings are the one thing two correct runs differ in)."""
    data = proj / "data"
    out: dict[str, object] = {}
    for f in sorted(data.rglob("*")):
        rel = str(f.relative_to(data))
        if f.is_file() and "cache" not in f.parts and ".timings" not in f.parts and "checkpoints" not in f.parts:
            if f.suffix == ".parquet":
                out[rel] = pd.read_parquet(f)
            elif f.suffix == ".json":
                out[rel] = json.loads(f.read_text())
    for ckpt in sorted((data / "runs" / "tiny" / "checkpoints").iterdir()):  # weight directories and manifests
        out[str(ckpt.relative_to(data))] = tree_hash(ckpt) if ckpt.is_dir() else json.loads(ckpt.read_text())
    return out


@pytest.fixture(scope="module")
def reference(module_tmp: Path, smollm2_dir: Path) -> dict[str, object]:
    """The uninterrupted run, in its own project with its own judge."""
    with ScriptedServer() as srv:
        proj = make_project(module_tmp / "a", srv.base_url, models(module_tmp / "a_models", smollm2_dir))
        done = subprocess.run([str(BIN / "ropd"), "run"], cwd=proj, env=project_env(), capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return outputs(proj)


def test_kill_every_stage_before_it_publishes_then_resume(reference: dict[str, object], module_tmp: Path,
                                                          smollm2_dir: Path) -> None:
    with ScriptedServer() as srv:
        proj = make_project(module_tmp / "b", srv.base_url, models(module_tmp / "b_models", smollm2_dir))
        log = proj / "killpoint.log"
        for args, target in PLAN:
            if target is None and args[0] != "train":  # in this process, as a command would (~5 s of imports less)
                in_process(proj, args[0], int(args[2]) if len(args) > 2 else None)
                continue
            if target is None:  # a command, as the reference's: its checkpoint must compare bit for bit
                assert stage(proj, *args).returncode == 0
                continue
            killed = stage(proj, *args, target=target)
            assert killed.returncode == -9, f"{args} was not killed at {target}: {killed.stderr[-2000:]}"
            dst, tmp = (proj / p for p in log.read_text().splitlines()[-1].split("\t"))  # relative to the cwd
            assert dst.name == target and not dst.exists(), f"{args}: {dst} published although killed"
            assert tmp.exists(), f"{args}: the finished temporary {tmp} should still be there after kill -9"
            resumed = stage(proj, *args)
            assert resumed.returncode == 0, f"{args} did not resume: {resumed.stdout[-2000:]}"
            assert dst.exists() and not tmp.exists(), f"{args}: resume left {tmp} behind"
            assert not list(dst.parent.glob(f".{dst.name}.*")), f"{args}: a temporary of {dst.name} remains"
        assert served_twice(srv) == []  # evaluate's rubric calls among them: none bought twice
        got = outputs(proj)
    assert got.keys() == reference.keys()
    for name, want in reference.items():
        if isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(got[name], want, obj=name)
        else:
            assert got[name] == want, name


def test_kill_teacher_sft_after_training_then_resume(module_tmp: Path, smollm2_dir: Path) -> None:
    """The white-box teacher (a real SFT build) killed as it publishes: no half teacher that the
    inputs-hash check could mistake for a finished one; the resume builds it, and a rerun is a no-op."""
    proj = make_project(module_tmp / "c", "http://127.0.0.1:9/v1", models(module_tmp / "c_models", smollm2_dir), {
        "method": "lopd", "teacher_sft": {"n_prompts": 4, "lr": 5e-5, "epochs": 1, "batch_size": 4, "max_length": 128}})
    teacher = module_tmp / "c_models" / "teacher-sft"
    assert stage(proj, "demo_data").returncode == 0
    killed = stage(proj, "teacher_sft", target="teacher-sft")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not teacher.exists() and len(list(teacher.parent.glob(".teacher-sft.*"))) == 1
    assert stage(proj, "teacher_sft").returncode == 0
    assert not list(teacher.parent.glob(".teacher-sft.*"))  # the dead build's 0.5 GB orphan is swept
    manifest = teacher / "ropd_manifest.json"
    built = manifest.stat().st_mtime_ns
    assert json.loads(manifest.read_text())["inputs"]
    assert stage(proj, "teacher_sft").returncode == 0 and manifest.stat().st_mtime_ns == built  # not redone


def test_sweep_removes_only_dead_writers_temporaries(tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        in_flight = tmp_path / f".rewards.parquet.{live.pid}.a1.tmp"  # a concurrent writer's: must survive
        orphan_file = tmp_path / f".rewards.parquet.{dead.pid}.b2.tmp"
        orphan_dir = tmp_path / f".rewards.parquet.{dead.pid}.c3"
        other_output = tmp_path / f".rewards.parquet2.{dead.pid}.d4.tmp"  # another output's temporary
        foreign = tmp_path / ".rewards.parquet.swp"  # not ours at all
        for f in (in_flight, orphan_file, other_output, foreign):
            f.write_text("x")
        orphan_dir.mkdir()
        (orphan_dir / "model.safetensors").write_bytes(b"x")
        atomic_write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "rewards.parquet")
        assert in_flight.exists() and other_output.exists() and foreign.exists()
        assert not orphan_file.exists() and not orphan_dir.exists()
        assert pd.read_parquet(tmp_path / "rewards.parquet")["a"].tolist() == [1]
    finally:
        live.kill()
        live.wait()
