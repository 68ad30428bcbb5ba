"""The paper's trained baselines on TRL: SFT on teacher answers, and logit-based on-policy distillation.

Each call trains one round from a checkpoint and writes the next checkpoint atomically, in the same
layout GRPO writes, so rollout, evaluation and the report treat every method alike. A fresh
optimizer per round is a simplification against GRPO's carried optimizer state; recorded in
docs/results.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ropd.io import atomic_dir
from ropd.models import write_manifest
from ropd.train.config import LOPDSettings, SFTSettings
from ropd.train.grpo import LOAD_ERRORS, CheckpointError

BASELINE_STATE = "baseline_state.json"


def _common_args(lr: float, batch_size: int, seed: int, device: str, out: str,
                 report_to: list[str]) -> dict[str, Any]:
    cpu = not device.startswith("cuda")
    return {"output_dir": out, "learning_rate": lr, "per_device_train_batch_size": batch_size, "seed": seed,
            "data_seed": seed, "use_cpu": cpu, "bf16": not cpu, "report_to": report_to, "save_strategy": "no",
            "logging_steps": 1, "activation_checkpointing": False, "disable_tqdm": True,
            "lr_scheduler_type": "constant"}


def _load(path: Path, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a full model checkpoint (no config.json); SFT and LOPD train full "
                              "weights, LoRA checkpoints are GRPO-only")
    try:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except LOAD_ERRORS as exc:
        raise CheckpointError(f"{path}: cannot load the model ({exc})") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _finish(trainer: Any, tokenizer: Any, out: Path, state: dict[str, Any]) -> dict[str, float]:
    logs = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {"loss": float(sum(h["loss"] for h in logs) / len(logs)) if logs else float("nan"),
               "steps": float(trainer.state.global_step)}
    with atomic_dir(out) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / BASELINE_STATE).write_text(json.dumps({**state, **metrics}, indent=2))
        write_manifest(tmp, name=out.name, trained_by=state["method"], **state.get("meta", {}))
    return metrics


def sft_train(policy: Path, examples: list[dict[str, Any]], cfg: SFTSettings, out: Path, *, seed: int,
              device: str = "cpu", meta: dict[str, Any] | None = None,
              report_to: list[str] | None = None) -> dict[str, float]:
    """Fine-tune on `examples` ({"prompt": messages, "completion": messages}); loss on completions only.
    `report_to` is the trainer's (ropd.tracking.trainer_reporting); none by default."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise ValueError(f"SFT into {out}: no training examples")
    model, tokenizer = _load(policy, device)
    with tempfile.TemporaryDirectory(prefix="ropd-sft-") as scratch:
        args = SFTConfig(**_common_args(cfg.lr, cfg.batch_size, seed, device, scratch, report_to or []),
                         num_train_epochs=cfg.epochs, max_length=cfg.max_length, completion_only_loss=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer)
        trainer.train()
        return _finish(trainer, tokenizer, out, {"method": "sft", "examples": len(examples), "from": str(policy),
                                                 "meta": meta or {}})


def lopd_train(policy: Path, teacher: Path, prompts: list[list[dict[str, str]]], cfg: LOPDSettings, out: Path, *,
               seed: int, device: str = "cpu", report_to: list[str] | None = None) -> dict[str, float]:
    """One pass of on-policy distillation over `prompts` (chat messages) against the teacher's logits."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    if not prompts:
        raise ValueError(f"LOPD into {out}: no prompts")
    model, tokenizer = _load(policy, device)
    teacher_model, teacher_tok = _load(teacher, device)
    if teacher_tok.get_vocab() != tokenizer.get_vocab():
        raise CheckpointError(f"LOPD needs a teacher with the student's tokenizer; {teacher} and {policy} differ")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # the trainer generates, left-padded
    with tempfile.TemporaryDirectory(prefix="ropd-lopd-") as scratch:
        args = DistillationConfig(**_common_args(cfg.lr, cfg.batch_size, seed, device, scratch, report_to or []),
                                  num_train_epochs=1, beta=cfg.beta, temperature=cfg.temperature,
                                  max_completion_length=cfg.max_completion_length)
        trainer = DistillationTrainer(model=model, teacher_model=teacher_model, args=args,
                                      train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                                      processing_class=tokenizer)
        trainer.train()
        tokenizer.padding_side = side
        return _finish(trainer, tokenizer, out, {"method": "lopd", "prompts": len(prompts), "from": str(policy),
                                                 "teacher": str(teacher)})
