"""Weights & Biases: each ropd run is one W&B run, whose id, name and group are the run id, in the project
`tracking.experiment`. The mode and the directory are W&B's own settings (`WANDB_MODE=offline`, `WANDB_DIR`),
so a machine without network keeps the run on disk for a later `wandb sync`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ropd.tracking import TrackingParams, round_metrics


def _wandb() -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise RuntimeError("tracking.backend is wandb, but the wandb package is not installed: "
                           "pip install 'ropd[wandb]' (or wandb)") from exc
    return wandb


def _settings(wandb: Any, cfg: TrackingParams) -> Any:
    """No console capture and no code upload: the tracker gets the figures ropd hands it, nothing else."""
    extra = {"base_url": cfg.uri} if cfg.uri else {}
    return wandb.Settings(console="off", save_code=False, silent=True, **extra)


def publish_wandb(params: Any, history: list[dict[str, Any]], artifacts: list[tuple[Path, str | None]]) -> str:
    """The params as the run's config, each round's figures with the round as its step, and the artifacts as the
    run's files (copied, so the tracker keeps the report this publish saw); returns the W&B run id.

    Online, the run is resumed and holds the rounds below its step already, so only newer rounds are sent. An
    offline run cannot ask the server what it holds, so each publish writes the whole history to a fresh
    offline directory: the newest directory of a run is its complete copy, and the one to `wandb sync`."""
    wandb = _wandb()
    cfg = params.tracking
    run = wandb.init(project=cfg.experiment, entity=cfg.entity, id=params.run_id, name=params.run_id,
                     group=params.run_id, job_type="ropd", resume="allow", settings=_settings(wandb, cfg))
    try:
        run.config.update(params.model_dump(mode="json", exclude={"rounds"}), allow_val_change=True)
        first = run.step  # a resumed run's next step (a call into W&B's service each time it is read)
        for row in history:
            if int(row["round"]) >= first:
                run.log(round_metrics(row), step=int(row["round"]))
        for path, where in artifacts:
            if path.is_file():
                dest = Path(run.dir) / (where or "") / path.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
                run.save(str(dest), base_path=run.dir, policy="now")
        return run.id
    finally:
        run.finish()
        wandb.teardown()  # W&B's process-wide setup caches WANDB_DIR and WANDB_MODE; the next run reads them anew


def trainer_env(params: Any, r: int) -> dict[str, str]:
    """W&B's environment for a TRL trainer's round: a run of its own in this ropd run's group."""
    cfg = params.tracking
    env = {"WANDB_PROJECT": cfg.experiment, "WANDB_RUN_GROUP": params.run_id,
           "WANDB_NAME": f"{params.run_id}-train-{r}", "WANDB_JOB_TYPE": "train",
           "WANDB_CONSOLE": "off", "WANDB_SILENT": "true"}
    if cfg.entity:
        env["WANDB_ENTITY"] = cfg.entity
    if cfg.uri:
        env["WANDB_BASE_URL"] = cfg.uri
    return env


def end_active() -> None:
    """The trainer's run, if it left one open."""
    wandb = _wandb()
    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()
