"""Atomic writes: a crash or a full disk never leaves a half-written file under an output's name.

A temporary sibling is named `.<name>.<pid>.<random>`: a writer killed with -9 cannot remove its own,
so the next write of the same output sweeps the ones whose process is gone (a killed checkpoint write
would otherwise leave a GB-sized orphan behind for good).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_stale_temps(path: Path) -> None:
    """Remove the temporary siblings of `path` left by writers that died (pids are this host's: a
    writer in another PID namespace sharing the directory would look dead)."""
    head = f".{path.name}."
    for sib in path.parent.glob(f".{glob.escape(path.name)}.*"):
        pid = sib.name[len(head):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if sib.is_dir() and not sib.is_symlink():
            shutil.rmtree(sib, ignore_errors=True)
        else:
            sib.unlink(missing_ok=True)
        log.info("%s: removed %s, left by writer pid %s that died", path, sib.name, pid)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if (err := _write_error(path, exc)) is exc:
            raise
        raise err from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def one_writer(path: Path) -> Iterator[None]:
    """Wait for, then hold, an flock on the file `path`: one process at a time through a one-off build of a
    shared output (two runs started together would both build it, and the second rename would replace the
    first's output under its readers). The kernel drops the lock when its holder dies, kill -9 included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (err := _write_error(path, exc)) is exc:
            raise
        raise err from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _write_error(path: Path, exc: OSError) -> OSError:
    """A full disk restated with the output being written (pyarrow and torch name no file); any other
    OSError, e.g. a missing input read inside the block, is passed on as it is."""
    if exc.errno not in _NO_ROOM:
        return exc
    reason = exc.strerror or str(exc)
    return OSError(exc.errno, f"cannot write {path}: {reason} (the partial output was removed)")


def atomic_write_text(text: str, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_parquet(df: pd.DataFrame, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
