"""A tiny copy of the project (params, dvc.yaml, flows) in a fresh git+DVC repository, for pipeline tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ropd.params import round_items

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tiny_params(base_url: str, models_dir: Path, overrides: dict | None = None) -> dict:
    """The shipped params.yaml shrunk to one round of 2 prompts x 2 rollouts, judged by `base_url`.

    `overrides` maps dotted keys to values, e.g. {"limits.max_in_flight": 1}.
    """
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    judge = {"provider": "openai", "base_url": base_url, "model": "stand-in-judge", "api_key_env": None,
             "max_tokens": 512, "backoff_initial_s": 0.05}
    data.update({
        "run_id": "tiny", "models_dir": str(models_dir), "rounds": round_items(1),
        "rubricator": {**judge, "temperature": 0.7}, "verifier": {**judge, "temperature": 0.0},
    })
    data["data"].update({"prompts_per_round": 2, "n_train": 500, "n_eval": 100})
    data["student"]["sampling"].update({"n": 2, "max_new_tokens": 16})
    data["eval"].update({"n_prompts": 2, "max_new_tokens": 16})
    data["grpo"].update({"micro_batch_size": 4})
    data["judge_check"] = {"prompts": 0}  # skipped (SKIPPED, gate open) unless a test is about it
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    if "data.pool_prompts" not in (overrides or {}):  # the rounds' prompts: an LLM teacher answers the whole pool
        data["data"]["pool_prompts"] = data["data"]["prompts_per_round"] * len(data["rounds"])
    return data


def make_project(tmp: Path, base_url: str, models_dir: Path, overrides: dict | None = None) -> Path:
    proj = tmp / "proj"
    proj.mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
    shutil.copytree(ROOT / "flows", proj / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    (proj / "params.yaml").write_text(yaml.safe_dump(tiny_params(base_url, models_dir, overrides), sort_keys=False))
    (proj / ".gitignore").write_text("data/cache/\ndata/runs/.locks/\n")
    env = project_env()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"],
                [str(BIN / "dvc"), "init", "-q"], [str(BIN / "dvc"), "config", "cache.type", "hardlink,copy"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=proj, check=True, env=env)
    provide_models(proj, models_dir)  # after the commit: git need not hash 0.5 GB of weights
    return proj


def provide_models(root: Path, models_dir: Path | str) -> None:
    """Hard-link the prepared SmolLM2 into `root / models_dir`, where a stage run from `root` looks for it.

    The tests pass the session's relative `data/models` (the smollm2_dir fixture), which a stage whose cwd
    is `root` resolves under `root`: without this, every such project's prepare stage converted the packaged
    GGUF again (40-50 s of CPU and 0.5 GB of disk each, a dozen times a suite); now it verifies the
    checksums, as it does for any prepared model. The conversion itself is what smollm2_dir and
    tests/test_models.py test. An absolute models_dir is the test's own and is left alone.
    """
    from ropd.models import MANIFEST, SMOLLM2

    models_dir = Path(models_dir)
    src, dst = models_dir.resolve() / SMOLLM2.name, root / models_dir / SMOLLM2.name
    if models_dir.is_absolute() or not (src / MANIFEST).is_file() or dst.exists() or src == dst.resolve():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, copy_function=os.link)  # the weights are only read


def project_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def dvc(proj: Path, *args: str) -> str:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=proj, capture_output=True, text=True, env=project_env(),
                          timeout=900)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


