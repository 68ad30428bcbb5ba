"""The policy a long-lived runner keeps in memory between stages (`ropd run`, the Prefect flow).

Under `dvc repro` every stage is a process of its own, and each of a round's rollout, train and evaluate loads
the policy from disk; train loads AdamW state too. A runner that runs every stage in one process need not:
train leaves the learner it has just saved here, and the next rollout, evaluate and train take it instead of
reading the checkpoint again. At 4B in bf16 a load is 8 GB of weights, and train's adds 16 GB of AdamW
moments, three loads a round.

The memory copy is exactly the checkpoint (weights are saved in the dtype they train in), and it is used
only while that checkpoint's manifest is the one it was kept under, so a stage rerun by hand, or a launched
stage that writes the checkpoint in processes of its own, never meets a stale copy. Train takes the learner
out while it updates it, so a failed update leaves nothing behind. The disk stays the record: every
checkpoint is still written and published as before, and a resumed run loads from it.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ropd.pipeline.checkpoints import manifest_path
from ropd.pipeline.timings import phase

if TYPE_CHECKING:
    from ropd.params import Params
    from ropd.train.config import GRPOConfig
    from ropd.train.grpo import GRPOLearner

_lock = threading.RLock()  # held while the policy samples: a stage beside it never trains the same weights
_slot: tuple[Path, str, GRPOLearner] | None = None
_active = False


@contextmanager
def policy_in_memory(enabled: bool = True) -> Iterator[None]:
    """Keep the policy between the stages run inside (`checkpoints.in_memory`); free it at the end."""
    global _active, _slot
    with _lock:
        outer, _active = _active, _active or enabled
    try:
        yield
    finally:
        with _lock:
            _active = outer
            if not outer:
                _slot = None


def learner_config(params: Params) -> GRPOConfig | None:
    """The run's GRPO settings when its train stage updates a `GRPOLearner` in this process, which may then
    take the one a sampling stage loaded (not a baseline's TRL trainer, nor a train stage `launch` runs)."""
    launched = bool(params.launch.command) and "train" in params.launch.stages
    return None if params.method in ("sft", "lopd") or launched else params.grpo


def _manifest(ckpt: Path) -> str | None:
    try:
        return manifest_path(ckpt).read_text()
    except FileNotFoundError:
        return None


def _kept(ckpt: Path) -> GRPOLearner | None:
    """The kept learner if it is `ckpt`'s, as its manifest stands now."""
    if _slot is None or _slot[0] != ckpt.resolve():
        return None
    return _slot[2] if _manifest(ckpt) == _slot[1] else None


def _load(ckpt: Path, cfg: GRPOConfig, device: str) -> GRPOLearner:
    from ropd.train.grpo import GRPOLearner

    with phase("policy_load"):  # weights, and the AdamW state where it was kept
        return GRPOLearner.load(ckpt, cfg, device=device)


def take_learner(ckpt: Path, cfg: GRPOConfig, device: str) -> GRPOLearner:
    """The learner to update: the kept one (taken out: the update owns it until it is kept again), or loaded."""
    global _slot
    with _lock:
        learner, _slot = _kept(ckpt), None
    return learner if learner is not None and learner.cfg == cfg else _load(ckpt, cfg, device)


def _put(ckpt: Path, learner: GRPOLearner) -> None:
    global _slot
    manifest = _manifest(ckpt)
    _slot = (ckpt.resolve(), manifest, learner) if _active and manifest is not None else None


def keep_learner(ckpt: Path, learner: GRPOLearner) -> None:
    """`learner` is now `ckpt`, saved and published: keep it for the next stage (inside `policy_in_memory`)."""
    with _lock:
        _put(ckpt, learner)


@contextmanager
def sampling_policy(ckpt: Path, device: str, cfg: GRPOConfig | None = None) -> Iterator[tuple[Any, Any]]:
    """Model and tokenizer to sample from `ckpt`: the kept learner's, or loaded. Given the run's GRPO `cfg`
    (a method that trains with `GRPOLearner`), a load inside `policy_in_memory` loads the whole learner and
    keeps it, so the train stage after it loads nothing."""
    from ropd.train.grpo import is_peft, load_policy

    global _slot
    with _lock:
        learner = _kept(ckpt)
        if learner is None:
            _slot = None  # another checkpoint's copy: freed before this one is loaded
            if _active and cfg is not None:
                learner = _load(ckpt, cfg, device)
                _put(ckpt, learner)
        if learner is not None:
            model = learner.accelerator.unwrap_model(learner.model)
            if not is_peft(model):  # a LoRA policy samples merged, as loaded from disk, below
                # a copy: the sampler sets the padding side, and the learner's tokenizer stays as it was
                yield model, copy.deepcopy(learner.tokenizer)
                return
    with phase("policy_load"):
        model, tokenizer = load_policy(ckpt, device)
    yield model, tokenizer
