"""Checkpoint retention: exactly what it promises is kept, and a kill -9 mid-sweep loses nothing.

Checkpoints here are small stand-in directories (the sweep reads names and manifests, never weights);
the DVC end-to-end test runs the sweep on real ones.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ropd.models import sha256_file
from ropd.pipeline.checkpoints import CheckpointParams, PrunedCheckpoint, manifest_path, publish, require, sweep
from ropd.train.grpo import OPTIM_FILE


def make_rounds(root: Path, n: int) -> Path:
    ckpts = root / "checkpoints"
    for r in range(n):
        d = ckpts / f"round_{r}"
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(os.urandom(64))
        (d / "config.json").write_text("{}")
        (d / OPTIM_FILE).write_bytes(os.urandom(128))
        publish(d, r)
    return ckpts


def listing(ckpts: Path) -> dict[str, list[str]]:
    return {d.name: sorted(f.name for f in d.iterdir()) for d in sorted(ckpts.iterdir()) if d.is_dir()}


def test_publish_writes_a_manifest_of_the_policy_files_and_hides_them_from_git(tmp_path: Path) -> None:
    ckpts = make_rounds(tmp_path, 1)
    manifest = json.loads(manifest_path(ckpts / "round_0").read_text())
    assert manifest == {"round": 0, "files": {name: sha256_file(ckpts / "round_0" / name)
                                              for name in ("config.json", "model.safetensors")}}
    assert (ckpts / "round_0" / ".gitignore").read_text() == "*\n"


def test_keep_every_keeps_multiples_and_the_newest_and_adamw_only_for_the_newest(tmp_path: Path) -> None:
    ckpts = make_rounds(tmp_path, 6)
    removed = sweep(ckpts, CheckpointParams(keep_every=2), lambda r: True)
    assert sorted(removed) == sorted(["round_1", "round_3", *(f"round_{r}/{OPTIM_FILE}" for r in (0, 2, 4))])
    kept = listing(ckpts)
    assert list(kept) == ["round_0", "round_2", "round_4", "round_5"]
    assert all(OPTIM_FILE not in files for name, files in kept.items() if name != "round_5")
    assert OPTIM_FILE in kept["round_5"]
    assert all(manifest_path(ckpts / f"round_{r}").is_file() for r in range(6))  # what DVC tracks is untouched
    assert sweep(ckpts, CheckpointParams(keep_every=2), lambda r: True) == []  # idempotent


def test_weights_still_to_be_read_are_kept_and_a_missing_one_is_named(tmp_path: Path) -> None:
    ckpts = make_rounds(tmp_path, 3)
    sweep(ckpts, CheckpointParams(keep_every=5, optimizer="all"), lambda r: r != 1)  # evaluate@0 has not run
    assert list(listing(ckpts)) == ["round_0", "round_1", "round_2"]
    assert all(OPTIM_FILE in files for files in listing(ckpts).values())  # optimizer: all
    sweep(ckpts, CheckpointParams(keep_every=5), lambda r: True)
    assert list(listing(ckpts)) == ["round_0", "round_2"]
    require(ckpts / "round_2", "hint")
    with pytest.raises(PrunedCheckpoint, match=r"round_1: its manifest is here but its weights are not.*hint"):
        require(ckpts / "round_1", "hint")


def test_a_kill_mid_sweep_leaves_whole_checkpoints_and_the_next_sweep_finishes(tmp_path: Path) -> None:
    ckpts = make_rounds(tmp_path, 4)
    for r in range(4):  # enough files that the kill lands inside the removal of a directory
        for k in range(50):
            (ckpts / f"round_{r}" / f"shard-{k}.bin").write_bytes(b"x")
    before = {r: sha256_file(ckpts / f"round_{r}" / "model.safetensors") for r in range(4)}
    # The child removes files one by one and SIGKILLs itself after the tenth: inside the first directory.
    child = f"""
import os, signal, shutil
from pathlib import Path
from ropd.pipeline.checkpoints import CheckpointParams, sweep
real, n = os.unlink, [0]
def unlink(path, *a, **kw):
    n[0] += 1
    if n[0] == 10:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, *a, **kw)
os.unlink = unlink
sweep(Path({str(ckpts)!r}), CheckpointParams(keep_every=3), lambda r: True)
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    strays = sorted(p.name for p in ckpts.glob(".trash-*"))
    assert len(strays) == 1 and strays[0].startswith(".trash-round_1."), strays
    for r in (0, 2, 3):  # every checkpoint not being removed is whole
        assert sha256_file(ckpts / f"round_{r}" / "model.safetensors") == before[r]
        assert len(list((ckpts / f"round_{r}").glob("shard-*"))) == 50
    removed = sweep(ckpts, CheckpointParams(keep_every=3), lambda r: True)
    assert strays[0] in removed and "round_2" in removed
    assert list(listing(ckpts)) == ["round_0", "round_3"] and not list(ckpts.glob(".trash-*"))
    assert OPTIM_FILE in listing(ckpts)["round_3"]  # the newest resumes with its AdamW state


def test_a_queued_experiment_gets_round_0_back_and_shares_the_call_cache(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc exp run --run-all` runs in a fresh copy of the repository: DVC restores round 0's manifest, not its
    weights. Round 0 is the base model, so it comes back from its source, checked file for file."""
    from ropd.params import Params
    from ropd.pipeline.run import RunPaths, queued_from, require_policy

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"weights")
    params = Params.model_validate({"runs_dir": str(tmp_path / "runs"), "student": {"model_path": str(base)}})
    paths = RunPaths(params)
    ckpt = paths.checkpoint(0)
    ckpt.mkdir(parents=True)
    for f in base.iterdir():
        os.link(f, ckpt / f.name)
    publish(ckpt, 0)
    manifest = manifest_path(ckpt).read_text()
    for f in ckpt.iterdir():
        f.unlink()
    ckpt.rmdir()  # as in the experiment's copy: the manifest only
    require_policy(params, paths, 0)
    assert sorted(p.name for p in ckpt.iterdir()) == [".gitignore", "config.json", "model.safetensors"]
    assert manifest_path(ckpt).read_text() == manifest
    shutil.rmtree(ckpt)
    (base / "model.safetensors").write_bytes(b"other weights")  # not the model the manifest names
    with pytest.raises(PrunedCheckpoint, match="no longer the model its manifest names"):
        require_policy(params, paths, 0)
    assert not ckpt.exists()

    exp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12"
    exp.mkdir(parents=True)
    monkeypatch.chdir(exp)
    assert queued_from(Path("data/cache/x.sqlite")) == tmp_path / "repo" / "data" / "cache" / "x.sqlite"
    monkeypatch.chdir(tmp_path)
    assert queued_from(Path("data/cache/x.sqlite")) == Path("data/cache/x.sqlite")
