"""Several processes for the rollout and train stages, through the user's own launcher, never one of ours.

With `launch.command` set (e.g. `[accelerate, launch, --num_processes, "8"]`, or `[torchrun,
--nproc_per_node, "2"]` on CPU), `run_stage` runs such a stage as `<command> -m ropd.cli stage NAME`
in child processes and waits. DVC, Prefect and `ropd run` all call `run_stage`, so they all get it.
The parent holds the run lock for the children; in them only the main process writes, and the data
is sharded so that together they compute what one process would (see `TransformersSampler.sample`
and `GRPOLearner._micro_batches`).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LAUNCHED_ENV = "ROPD_LAUNCHED_RUN"  # in the children: the run directory whose lock the parent holds


class LaunchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(default_factory=list, description="launcher argv the stage is appended to as "
                               "`-m ropd.cli stage ...`; [] runs every stage in this process")
    stages: list[Literal["rollout", "train"]] = Field(default_factory=lambda: ["rollout", "train"],
                                                      description="the stages that run under the launcher")


class LaunchError(ValueError):
    """A launched stage failed; its own error is in the output above this one."""


def launched() -> bool:
    """True inside the processes a launcher started for a stage (they never launch again)."""
    return LAUNCHED_ENV in os.environ


def rank_world() -> tuple[int, int]:
    """(global rank, world size) as torchrun and `accelerate launch` set them; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank_world()[0] == 0


def process_device(device: str) -> str:
    """Each launched process on its own GPU (`cuda:LOCAL_RANK`); a CPU or single-process device as given."""
    if device.startswith("cuda") and rank_world()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@contextmanager
def process_group() -> Iterator[None]:
    """Leave the launcher's process group on the way out: a live gloo group aborts the process at exit."""
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run_launched(command: list[str], params_json: str, run_dir: Path, name: str, r: int | None) -> None:
    """Run stage `name` under `command` with these params; raise what the stage raised, by its exit code.

    The params travel as a file beside the run directory (not in it: DVC hashes that), so the children
    read exactly the validated params of this process, overrides included.
    """
    from ropd.io import atomic_write_text
    from ropd.pipeline.run import STOPS, RunStop

    spec = run_dir.parent / ".launch" / f"{run_dir.name}.{name}{'' if r is None else f'.{r}'}.json"
    atomic_write_text(params_json, spec)
    argv = [*command, "-m", "ropd.cli", "stage", name, *([] if r is None else ["--round", str(r)]),
            "--params", str(spec)]
    try:
        code = subprocess.run(argv, env={**os.environ, LAUNCHED_ENV: str(run_dir.resolve())}).returncode
    except FileNotFoundError as exc:
        raise LaunchError(f"launch.command: cannot start {command[0]!r} ({exc.strerror}); install it or fix "
                          "launch.command in the params") from exc
    stopped = run_dir / f"round_{r}" / "stopped.json"
    if code == 3 and stopped.is_file():  # a clean stop, of the kind stopped.json names
        note = json.loads(stopped.read_text())
        raise STOPS.get(note.get("kind"), RunStop)(note["reason"])
    if code != 0:
        where = f"stage {name}" + ("" if r is None else f" (round {r})")
        raise LaunchError(f"{where} under `{' '.join(command)}` exited {code}; its error is above")
    spec.unlink(missing_ok=True)
