"""Round checkpoints on disk: what DVC tracks of them, and how many are kept.

A round's policy is a directory (`checkpoints/round_<r>/`: weights, tokenizer, AdamW state; GBs at
real scale) plus a manifest beside it (`checkpoints/round_<r>.json`: the sha256 of every file that
defines the policy). DVC tracks and the stages depend on the manifest only. So the weights are hashed
once, by us, and never copied into the DVC cache (an experiment does not duplicate them), and the
retention sweep can delete old weights without `dvc status` seeing a change.

The sweep keeps AdamW state for the newest round only (`checkpoints.optimizer: newest`), and with
`checkpoints.keep_every: K` the weights of rounds that are multiples of K and of the newest. It
deletes a round's weights only once every stage that reads them has written its output. A directory
is renamed away first, then removed, so a kill -9 mid-sweep leaves a whole checkpoint or a stray
`.trash-*` directory that the next sweep removes, never a torn checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ropd.io import atomic_write_text

log = logging.getLogger(__name__)

_ROUND = re.compile(r"^round_(\d+)$")


class CheckpointParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_every: int | None = Field(default=None, ge=1, description="keep the weights of rounds that are "
                                   "multiples of K, and the newest; null keeps every round's weights")
    optimizer: Literal["newest", "all"] = Field(default="newest", description="which rounds keep their AdamW "
                                                "state (2× the fp32 weights); a rerun from an older round without "
                                                "it starts AdamW afresh")
    in_memory: bool = Field(default=True, description="`ropd run` and the Prefect flow keep the policy in "
                            "memory from stage to stage instead of loading it again for rollout, train and evaluate; "
                            "false frees its memory (an accelerator shared with an in-process judge) while judging")


class PrunedCheckpoint(ValueError):
    """A stage needs weights that the retention sweep deleted."""


def manifest_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".json")


def manifest_files(ckpt: Path) -> dict[str, str]:
    """The sha256 of every file that defines the policy (not its resumable AdamW state)."""
    from ropd.models import sha256_file
    from ropd.train.grpo import OPTIM_FILE

    return {f.name: sha256_file(f) for f in sorted(ckpt.iterdir())
            if f.is_file() and f.name not in (OPTIM_FILE, ".gitignore")}


def publish(ckpt: Path, r: int) -> None:
    """Mark a finished checkpoint directory: git ignores it, and its manifest is written last (atomically)."""
    (ckpt / ".gitignore").write_text("*\n")  # the weights are in no git or DVC store
    atomic_write_text(json.dumps({"round": r, "files": manifest_files(ckpt)}, indent=2) + "\n", manifest_path(ckpt))


def require(ckpt: Path, params_hint: str) -> None:
    """Name a missing checkpoint plainly, before a model loader reports a missing config.json."""
    if not ckpt.is_dir() and manifest_path(ckpt).is_file():
        raise PrunedCheckpoint(f"{ckpt}: its manifest is here but its weights are not: deleted by the retention "
                               f"sweep ({params_hint}), or never on this machine (weights travel in no git or DVC "
                               "store). Rerun the stages from a round whose weights are here")


def sweep(checkpoints: Path, params: CheckpointParams, read_by_all: Callable[[int], bool]) -> list[str]:
    """Apply the retention policy under `checkpoints/`; return what was removed.

    `read_by_all(r)` says whether every stage that reads round r's weights has written its output.
    """
    from ropd.train.grpo import OPTIM_FILE

    removed = []
    for stray in sorted(checkpoints.glob(".trash-*")):  # left by a sweep that was killed
        shutil.rmtree(stray, ignore_errors=True)
        removed.append(stray.name)
    rounds = sorted(int(m.group(1)) for p in checkpoints.iterdir()
                    if (m := _ROUND.match(p.name)) and p.is_dir() and manifest_path(p).is_file())
    if not rounds:
        return removed
    for r in rounds[:-1]:  # never the newest: the next round resumes from it
        ckpt = checkpoints / f"round_{r}"
        keep = params.keep_every is None or r % params.keep_every == 0
        if not keep and read_by_all(r):
            trash = checkpoints / f".trash-round_{r}.{os.getpid()}"
            ckpt.rename(trash)
            shutil.rmtree(trash)
            removed.append(ckpt.name)
        elif params.optimizer == "newest" and (ckpt / OPTIM_FILE).is_file():
            (ckpt / OPTIM_FILE).unlink()
            removed.append(f"{ckpt.name}/{OPTIM_FILE}")
    if removed:
        log.info("checkpoint retention removed %s", ", ".join(removed))
    return removed
