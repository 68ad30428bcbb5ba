"""The teacher stages: the white-box teacher some runs need, and the cached reference answers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from ropd.io import atomic_dir
from ropd.llm.base import run_closing
from ropd.llm.cost import teacher_size_usd
from ropd.llm.factory import make_chat
from ropd.params import Params
from ropd.pipeline.data import train_pool
from ropd.pipeline.lock import run_lock
from ropd.pipeline.run import RunPaths, budget_gate, judge_resources, read_prompts, teacher_role
from ropd.teacher import TeacherPrompt, build_index, dataset_index


def teacher_sft(params: Params) -> None:
    """The white-box teacher (LOPD, and the teacher role that samples from it): SmolLM2 fine-tuned on the
    reference solutions of train problems. Built only when the run needs it; otherwise a manifest says so."""
    from ropd.models import prepare_smollm2, read_manifest
    from ropd.train.baselines import sft_train

    out = params.teacher_sft_dir
    if not params.needs_teacher_sft:
        if not out.exists():  # an already built teacher is kept: another run may use it
            with atomic_dir(out) as tmp:
                (tmp / "NOT_BUILT.json").write_text(json.dumps(
                    {"reason": f"method={params.method} with teacher provider={params.teacher.role.provider} "
                     "does not use the white-box teacher"}) + "\n")
        return
    cfg = params.teacher_sft
    rows = train_pool(params).sample(frac=1.0, random_state=params.data.seed).head(cfg.n_prompts)
    examples = [{"prompt": json.loads(r["messages"]), "completion": [{"role": "assistant", "content": sol}]}
                for _, r in rows.iterrows() for sol in r["solutions"]]
    if not examples:
        raise ValueError(f"teacher_sft: the {len(rows)} train problems carry no reference solutions")
    base = prepare_smollm2(Path(params.models_dir))
    inputs = hashlib.sha256(json.dumps([cfg.model_dump(), examples, params.data.seed, read_manifest(base)],
                                       sort_keys=True).encode()).hexdigest()[:16]
    if (read_manifest(out) or {}).get("inputs") == inputs:
        return  # built from exactly these inputs already
    sft_train(base, examples, cfg, out, seed=params.data.seed, device=params.student.device,
              meta={"inputs": inputs})


def teacher_wanted(params: Params, df: pd.DataFrame) -> pd.DataFrame:
    """The prompts the teacher answers: the whole training pool, and the held-out ones evaluation judges."""
    held = df[df["split"] == "eval"].head(params.eval.rubric_prompts)
    return pd.concat([df[df["split"] == "train"], held])


def teacher(params: Params) -> None:
    """Teacher answers for the train prompts, and for the held-out prompts that evaluation judges."""
    paths = RunPaths(params)
    cfg = teacher_role(params)
    with run_lock(paths.run):
        wanted = teacher_wanted(params, read_prompts(paths))
        prompts = [TeacherPrompt(prompt_id=r["prompt_id"], question=r["question"], solutions=list(r["solutions"]))
                   for _, r in wanted.iterrows()]
        if cfg.provider == "dataset":
            dataset_index(prompts, cfg, params.teacher.m, paths.teacher)
            return
        questions = [p.question for p in prompts]
        budget_gate(params, "teacher", None, paths.run,
                    [("teacher", len(prompts) * params.teacher.m, lambda: teacher_size_usd(params, questions))])
        cache, limiter = judge_resources(params, "teacher")
        chat = make_chat("teacher", params.teacher.role, cache=cache, limiter=limiter)
        try:
            run_closing(build_index(prompts, chat, params.teacher.m, paths.teacher), chat)
        finally:
            cache.close()
