"""A full disk during a write: a clear OSError naming the output, no half-written file under any output's
name, and the previous version of every output intact.

Two ways to fill the disk, each in a child process: a real 1 MiB tmpfs in a private mount namespace
(`unshare -rm`, ENOSPC), and `RLIMIT_FSIZE` with SIGXFSZ ignored (EFBIG), which works everywhere.
The child writes through the real atomic writers (text, parquet, checkpoint directory) and reports.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r'''
import json, os, resource, signal, sys
from pathlib import Path
import pandas as pd
from ropd.io import atomic_dir, atomic_write_parquet, atomic_write_text

d, mode = Path(sys.argv[1]), sys.argv[2]
atomic_write_text("old\n", d / "metrics.json")  # the previous outputs, written while there was room
atomic_write_parquet(pd.DataFrame({"a": [1]}), d / "rewards.parquet")
with atomic_dir(d / "ckpt") as t:
    (t / "model.safetensors").write_bytes(b"old")
if mode == "fsize":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

def big_dir():
    with atomic_dir(d / "ckpt") as t:
        (t / "config.json").write_text("{}")
        (t / "model.safetensors").write_bytes(os.urandom(16) * 200_000)

out = {}
for name, write in [
    ("metrics.json", lambda: atomic_write_text("x" * 3_000_000, d / "metrics.json")),
    ("rewards.parquet", lambda: atomic_write_parquet(pd.DataFrame({"t": [os.urandom(500).hex() for _ in range(3000)]}),
                                                     d / "rewards.parquet")),
    ("ckpt", big_dir),
]:
    try:
        write()
        out[name] = None
    except OSError as e:
        out[name] = [e.errno, str(e)]
out["files"] = sorted(os.listdir(d))
out["ckpt_files"] = sorted(os.listdir(d / "ckpt"))
out["metrics"] = (d / "metrics.json").read_text()
out["rewards"] = pd.read_parquet(d / "rewards.parquet").to_dict("list")
out["weights"] = (d / "ckpt" / "model.safetensors").read_bytes().decode()
print(json.dumps(out))
'''


def check(report: dict, expected_errno: int, where: Path) -> None:
    for name in ("metrics.json", "rewards.parquet", "ckpt"):
        assert report[name] is not None, f"{name}: the write should have failed"
        code, message = report[name]
        assert code == expected_errno, report[name]
        assert f"cannot write {where / name}" in message  # names the output it was writing
    assert report["files"] == ["ckpt", "metrics.json", "rewards.parquet"]  # no temporary leftovers
    assert report["ckpt_files"] == ["model.safetensors"]
    assert (report["metrics"], report["rewards"], report["weights"]) == ("old\n", {"a": [1]}, "old")


def test_file_size_limit_efbig(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "fsize"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check(json.loads(proc.stdout.strip().splitlines()[-1]), errno.EFBIG, tmp_path)


def test_full_tmpfs_enospc(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    mnt = tmp_path / "small"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mnt}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here: {probe.stderr.strip()}")
    script = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$1" -c "$2" "$0" tmpfs'
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(mnt), sys.executable, CHILD],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check(json.loads(proc.stdout.strip().splitlines()[-1]), errno.ENOSPC, mnt)


def test_other_errors_inside_a_writer_keep_their_culprit(tmp_path: Path) -> None:
    """Only a full disk is restated as a write error: a missing input read inside the block still names itself."""
    from ropd.io import atomic_dir

    with pytest.raises(FileNotFoundError, match=r"no-such-model"), atomic_dir(tmp_path / "ckpt"):
        (tmp_path / "no-such-model").read_bytes()
    assert list(tmp_path.iterdir()) == []
