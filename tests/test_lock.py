from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ropd.pipeline.lock import RunLocked, run_lock


def test_second_process_is_locked_out_until_the_first_dies(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "demo"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from ropd.pipeline.lock import run_lock\n"
        f"with run_lock(__import__('pathlib').Path({str(run)!r})):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=rf"run directory .*demo is in use by pid {holder.pid}"), run_lock(run):
            pass
    finally:
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            with run_lock(run):
                break
        except RunLocked:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_reentrant_in_one_process(tmp_path: Path) -> None:
    with run_lock(tmp_path / "r"), run_lock(tmp_path / "r"):
        pass
    with run_lock(tmp_path / "r"):  # released after the outer block
        pass
