"""The data stages: the seeded demo task, and `prepare` (the run's prompt schedule and its round-0 policy)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from ropd.io import atomic_dir, atomic_write_parquet
from ropd.params import DataParams, Params
from ropd.pipeline.checkpoints import PrunedCheckpoint, manifest_files, manifest_path, publish
from ropd.pipeline.lock import run_lock
from ropd.pipeline.run import RunPaths

log = logging.getLogger(__name__)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a model directory, hard-linking files where the filesystem allows (no 500 MB copies)."""
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.is_file():
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)


def demo_splits(d: DataParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The seeded demo task: ≥500 train and ≥100 held-out arithmetic problems, none of them in both."""
    from ropd.data.load import load_prompts

    train = load_prompts("demo", "train", n=max(d.n_train, 500), seed=d.seed)
    held = load_prompts("demo", "eval", n=max(d.n_eval, 100), seed=d.seed + 1, exclude=set(train["question"]))
    return train, held


def demo_data(params: Params) -> None:
    """The demo task's splits, as parquet under data/."""
    train, held = demo_splits(params.data)
    out = RunPaths(params).demo_dir
    atomic_write_parquet(train, out / "train.parquet")
    atomic_write_parquet(held, out / "eval.parquet")


def _demo_split(params: Params, split: str) -> pd.DataFrame:
    path = RunPaths(params).demo_dir / f"{split}.parquet"
    if not path.is_file():
        raise ValueError(f"{path} is missing: run `ropd stage demo_data` first (dvc repro and the flow do)")
    return pd.read_parquet(path)


def train_pool(params: Params) -> pd.DataFrame:
    """Every training problem the data source offers (the demo split, or the user's file)."""
    from ropd.data.load import load_prompts

    d = params.data
    if d.source == "demo":
        return _demo_split(params, "train")
    return load_prompts(d.source, "train", seed=d.seed)


def prepare(params: Params) -> None:
    """Models prepared, the run's prompt schedule, and the round-0 policy.

    The schedule is the seeded shuffle of the pool, cut into rounds of `prompts_per_round`: round r
    takes the r-th slice whatever the number of rounds asked for, so extending a run changes neither
    this file nor the teacher's answers, and only the new rounds run.
    """
    from ropd.data.load import load_prompts

    paths = RunPaths(params)
    d = params.data
    with run_lock(paths.run):
        train = train_pool(params)  # the data first: a bad row is reported before any model work
        held = (_demo_split(params, "eval") if d.eval_source is None
                else load_prompts(d.eval_source, "eval", seed=d.seed))
        pool = min(len(train), d.pool_prompts or len(train))
        slots = pool // d.prompts_per_round
        if slots < len(params.rounds):
            raise ValueError(pool_too_small(params, pool))
        train = train.sample(frac=1.0, random_state=d.seed).head(slots * d.prompts_per_round).reset_index(drop=True)
        train["round"] = train.index // d.prompts_per_round
        held = held.head(params.eval.n_prompts).assign(round=-1)
        base = base_policy(params)
        atomic_write_parquet(pd.concat([train, held], ignore_index=True), paths.prompts)
        paths.checkpoint(0).parent.mkdir(parents=True, exist_ok=True)
        _link_tree(base, paths.checkpoint(0))
        publish(paths.checkpoint(0), 0)


def base_policy(params: Params) -> Path:
    """The round-0 policy's source: `student.model_path`, or the packaged SmolLM2 (converted on first use)."""
    from ropd.models import prepare_smollm2

    base = Path(params.student.model_path) if params.student.model_path else prepare_smollm2(Path(params.models_dir))
    if not (base / "config.json").is_file() and not (base / "adapter_config.json").is_file():
        raise ValueError(f"student.model_path: {base} is not a model directory (no config.json); point it at a "
                         "transformers checkpoint, or set it to null for the packaged SmolLM2")
    return base


def restore_base_policy(params: Params, paths: RunPaths) -> None:
    """Round 0's weights when only its manifest is here, as in a queued DVC experiment: DVC runs it in a fresh
    copy of the repository and restores the manifest from its cache, but no weights travel. Round 0 is the
    base model, so it is linked again from its source and must match the manifest file for file; a later
    round's weights have no source but the run that trained them."""
    ckpt = paths.checkpoint(0)
    if ckpt.is_dir() or not manifest_path(ckpt).is_file():
        return
    base = base_policy(params)
    _link_tree(base, ckpt)
    if manifest_files(ckpt) != json.loads(manifest_path(ckpt).read_text())["files"]:
        shutil.rmtree(ckpt)
        raise PrunedCheckpoint(f"{ckpt}: its weights are not here, and {base} is no longer the model its manifest "
                               "names (the base model changed since prepare ran): rerun prepare")
    (ckpt / ".gitignore").write_text("*\n")
    log.info("%s: restored from %s", ckpt, base)


def pool_too_small(params: Params, pool: int) -> str:
    d = params.data
    return (f"The pool holds {pool} training prompts, {pool // d.prompts_per_round} rounds of {d.prompts_per_round}; "
            f"{len(params.rounds)} rounds need {len(params.rounds) * d.prompts_per_round}. Raise data.pool_prompts "
            "or use a larger data.source (either re-prepares the run).")
