"""Where a stage's time goes, for the round-overhead figure: each completed stage appends one line to
`<runs_dir>/.timings/<run>.jsonl` (beside the run directory, which DVC hashes).

A line holds the stage function's start (epoch seconds) and own seconds, so the gaps between the stages an
orchestrator runs are its bookkeeping; the named phases inside it that are not model work
(loading and saving the policy, hashing its manifest); and, for the first stage a process runs, how long the
process had lived before the stage began (interpreter start and imports: what a `ropd stage` command pays
before any work). `bench/round_overhead.py` subtracts these from the wall time of a `dvc repro`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

# The running stage's phases, per context: stages that overlap in threads (`overlap`) each keep their own.
_phases: ContextVar[dict[str, float] | None] = ContextVar("ropd_stage_phases", default=None)
_first_stage = True
_append = threading.Lock()


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a part of the running stage that is not model work; repeated phases add up."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        phases = _phases.get()
        if phases is not None:  # outside a timed stage (a bench, a test) there is nothing to add to
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0


def process_age_s() -> float | None:
    """Seconds since this process started, from /proc (10 ms resolution); None where there is no /proc."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in ticks since boot
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def timed_stage(timings: Path, stage: str, r: int | None) -> Iterator[None]:
    """Run a stage and append its line once it completes (a failed stage records nothing)."""
    global _first_stage
    startup = process_age_s() if _first_stage else None
    _first_stage = False
    phases: dict[str, float] = {}
    token = _phases.set(phases)
    started = time.time()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _phases.reset(token)
    line = {"stage": stage, "round": r, "started": round(started, 3), "seconds": round(time.perf_counter() - t0, 3),
            "phases": {k: round(v, 3) for k, v in sorted(phases.items())}}
    if startup is not None:
        line["startup_s"] = round(startup, 3)
    timings.parent.mkdir(parents=True, exist_ok=True)
    with _append, timings.open("a") as f:
        f.write(json.dumps(line) + "\n")
