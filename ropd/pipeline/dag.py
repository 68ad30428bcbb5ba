"""Each stage's inputs and outputs, for the Prefect front-end's content-hash cache keys.

`dvc.yaml` declares the same edges for DVC; `tests/test_pipeline_dag.py` checks the two agree, so
the lineage is one graph whichever front-end ran it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ropd.params import Params
from ropd.pipeline.checkpoints import manifest_path
from ropd.pipeline.run import RunPaths


def stage_io(params: Params, name: str, r: int | None = None) -> tuple[list[Path], list[Path]]:
    """(deps, outs) of one stage, as dvc.yaml declares them."""
    p = RunPaths(params)

    def ckpt(r: int) -> Path:  # a policy is tracked by its manifest, not its GBs of weights (checkpoints.py)
        return manifest_path(p.checkpoint(r))

    demo = [p.demo_dir / "train.parquet", p.demo_dir / "eval.parquet"]
    if name == "demo_data":
        return [], demo
    if name == "prepare":
        return demo, [p.prompts, ckpt(0)]
    if name == "teacher_sft":
        return demo[:1], [params.teacher_sft_dir]
    if name == "teacher":
        return [p.prompts, params.teacher_sft_dir], [p.teacher]
    if name == "judge_check":
        return [p.prompts, p.teacher], [p.judge_check, p.judge_gate]
    if name == "summarize":
        live = Path(params.tracking.dvclive_dir)
        return [p.run], [p.history, live / "plots", live / "metrics.json"]
    if name == "report":
        return [p.run, p.history], [p.report]
    assert r is not None, f"stage {name} needs a round"
    rd = p.round(r)
    table = {
        "rollout": ([p.prompts, ckpt(params.rounds[r].policy), p.judge_gate], [rd / "rollouts.parquet"]),
        "mine": ([rd / "rollouts.parquet", p.teacher],
                 [rd / "rubrics.parquet", rd / "criteria.parquet", rd / "rubric_failures.parquet"]),
        "qa": ([rd / "rubrics.parquet", rd / "criteria.parquet", rd / "rubric_failures.parquet"],
               [rd / "rubrics_clean.parquet", rd / "criteria_clean.parquet", rd / "merges.parquet", rd / "qa.md",
                rd / "qa.json"]),
        "verify": ([rd / "rubrics_clean.parquet", rd / "rubrics.parquet", rd / "rollouts.parquet", p.teacher],
                   [rd / "judgements.parquet", rd / "rewards.parquet", rd / "diagnostics.json"]),
        "train": ([rd / "rollouts.parquet", rd / "rewards.parquet", ckpt(r), p.teacher, params.teacher_sft_dir],
                  [ckpt(r + 1), rd / "train_metrics.json"]),
        "evaluate": ([ckpt(r + 1), p.prompts, p.teacher], [rd / "eval.json"]),
    }
    return table[name]


# The params each stage reads, as dvc.yaml's `params:` lists them (a key names its whole subtree). The
# Prefect flow keys its cache on these values, not on the whole file, so that asking for more rounds
# reruns only the new rounds under either front-end.
STAGE_PARAMS: dict[str, list[str]] = {
    "demo_data": ["data.seed", "data.n_train", "data.n_eval"],
    "prepare": ["run_id", "data", "student.model_path", "eval.n_prompts"],
    "teacher_sft": ["method", "teacher", "teacher_sft", "lopd.teacher_path", "data.source", "data.seed"],
    "teacher": ["teacher", "eval.rubric_prompts"],
    "judge_check": ["method", "judge_check", "rubricator", "verifier", "engine"],
    "rollout": ["method", "student", "data.seed"],
    "mine": ["method", "rubricator", "engine", "shared_rubric", "static_rubric"],
    "qa": ["method", "qa"],
    "verify": ["method", "verifier", "engine", "shared_rubric", "degenerate_rubrics"],
    "train": ["method", "grpo", "quality_gate", "sft", "lopd"],
    "evaluate": ["eval", "student", "rubricator", "verifier", "engine"],
    "summarize": ["tracking.dvclive_dir"],
    "report": ["tracking"],
}


def params_digest(params: Params, name: str) -> str:
    """sha256 of the values of the params `name` reads (defaults filled in), in STAGE_PARAMS order."""
    data = params.model_dump(mode="json")
    picked = {}
    for dotted in STAGE_PARAMS[name]:
        node = data
        for part in dotted.split("."):
            node = node[part]
        picked[dotted] = node
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def content_hash(paths: list[Path]) -> str:
    """sha256 over the bytes of every file (directories walked in sorted order); 'missing' marks absences."""
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path).encode())
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            if not f.is_file():
                h.update(b"missing")
                continue
            h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()
