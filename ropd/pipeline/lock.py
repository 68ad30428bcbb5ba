"""One writer per run directory. The kernel drops an flock when its holder dies, kill -9 included."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ropd.pipeline.launch import LAUNCHED_ENV

# Re-entrant within a process: a flow holds it while its stages take it again, from any of its threads. The
# flock is taken by the first holder and released by the last, whichever threads those are.
_held: dict[Path, list[int]] = {}  # run directory -> [fd, holders]
_counts = threading.Lock()


class RunLocked(RuntimeError):
    pass


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    run_dir = Path(run_dir).resolve()
    if os.environ.get(LAUNCHED_ENV) == str(run_dir):  # a launched stage's child: its parent holds the lock
        yield
        return
    with _counts:
        if run_dir in _held:
            _held[run_dir][1] += 1
        else:
            _held[run_dir] = [_take(run_dir), 1]
    try:
        yield
    finally:
        with _counts:
            entry = _held[run_dir]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[run_dir]
                os.ftruncate(entry[0], 0)
                fcntl.flock(entry[0], fcntl.LOCK_UN)
                os.close(entry[0])


def _take(run_dir: Path) -> int:
    # Beside the run directory, not in it: DVC hashes the run directory as a dependency.
    path = run_dir.parent / ".locks" / f"{run_dir.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunLocked(f"run directory {run_dir} is in use by {holder}; wait for it to finish or stop it "
                        "(the lock is released automatically when that process exits)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    return fd
