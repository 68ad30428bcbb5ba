"""The train stage: one GRPO update on the round's rewards (or a baseline's update) → the next policy."""

from __future__ import annotations

import pandas as pd

from ropd.params import Params
from ropd.pipeline.launch import is_main
from ropd.pipeline.lock import run_lock
from ropd.pipeline.resident import keep_learner, take_learner
from ropd.pipeline.run import (
    QualityGateStop,
    RunPaths,
    messages,
    publish_policy,
    read_prompts,
    require_policy,
    round_seed,
    stop,
    teacher_role,
    write_json,
)
from ropd.pipeline.timings import phase
from ropd.rng import seeded
from ropd.teacher import TeacherIndex, fingerprint


def train(params: Params, r: int) -> None:
    """One GRPO update on the round's rollouts → policy r+1; stop cleanly if the quality gate trips."""
    from ropd.rollout.base import Rollout
    from ropd.train.grpo import build_samples

    paths = RunPaths(params)
    rd = paths.round(r)
    with run_lock(paths.run):
        require_policy(params, paths, r)
        if params.method in ("sft", "lopd"):
            metrics = _train_baseline(params, paths, r)
            write_json({"round": r, "method": params.method, **metrics}, rd / "train_metrics.json")
            publish_policy(params, paths, r + 1)
            return
        rewards = pd.read_parquet(rd / "rewards.parquet")
        by_group = rewards.groupby("group_id")["status"].agg(lambda s: (s == "ok").all())
        failed_share = float((~by_group).mean()) if len(by_group) else 1.0
        if failed_share > params.quality_gate.max_failed_share:
            reason = (f"round {r}: {failed_share:.0%} of groups could not be judged, above the quality gate "
                      f"({params.quality_gate.max_failed_share:.0%}); the policy was not updated. Resume from "
                      f"{paths.checkpoint(r)} after fixing the judge (see {rd / 'rewards.parquet'}).")
            stop(QualityGateStop, rd / "stopped.json", reason, failed_share=failed_share)
        # A table written before a field existed (e.g. `logprobs`) leaves it at its default.
        rollouts = [Rollout.model_validate({k: row[k] for k in Rollout.model_fields if k in row})
                    for row in pd.read_parquet(rd / "rollouts.parquet").to_dict("records")]
        reward_map = {(str(x["prompt_id"]), int(x["sample_idx"])):
                      (None if pd.isna(x["reward"]) else float(x["reward"]), str(x["status"]))
                      for x in rewards.to_dict("records")}
        learner = take_learner(paths.checkpoint(r), params.grpo, params.student.device)
        prompts = read_prompts(paths)
        chats = {row["prompt_id"]: messages(row) for _, row in prompts[prompts["round"] == r].iterrows()}
        samples = build_samples(learner.tokenizer, chats, rollouts, reward_map,
                                scale_by_std=params.grpo.scale_adv_by_std,
                                chat_template_kwargs=params.student.chat_template_kwargs)
        try:  # seeded: dropout draws from torch's global generator, which a stage beside it may be sampling from
            with seeded(params.grpo.seed * 1_000_003 + r):
                metrics = learner.train_round(samples)
        except ValueError as exc:  # e.g. grpo.tis_cap on rollouts without sampler log-probs: name the round
            raise ValueError(f"round {r} ({rd / 'rollouts.parquet'}): {exc}") from exc
        with phase("policy_save"):
            learner.save(paths.checkpoint(r + 1))
        if not is_main():
            return
        ok = rewards[rewards["status"] == "ok"]["reward"]
        write_json({"round": r, "method": params.method, **metrics, "failed_share": failed_share,
                    "mean_reward": float(ok.mean()) if len(ok) else None}, rd / "train_metrics.json")
        publish_policy(params, paths, r + 1)
        keep_learner(paths.checkpoint(r + 1), learner)


def _train_baseline(params: Params, paths: RunPaths, r: int) -> dict[str, float]:
    """SFT on the round's teacher answers, or LOPD on the round's prompts: the same prompt budget as GRPO."""
    from ropd.tracking import trainer_reporting
    from ropd.train.baselines import lopd_train, sft_train

    prompts = read_prompts(paths)
    mine = prompts[prompts["round"] == r]
    chats = {row["prompt_id"]: messages(row) for _, row in mine.iterrows()}
    seed = round_seed(params, r)
    src, dst = paths.checkpoint(r), paths.checkpoint(r + 1)
    with trainer_reporting(params, r) as report_to:
        if params.method == "lopd":
            return lopd_train(src, params.lopd_teacher, list(chats.values()), params.lopd, dst, seed=seed,
                              device=params.student.device, report_to=report_to)
        index = TeacherIndex.load(paths.teacher, fingerprint(teacher_role(params)))
        examples = [{"prompt": chats[pid], "completion": [{"role": "assistant", "content": answer}]}
                    for pid in chats for answer in index.answers(pid)]
        return sft_train(src, examples, params.sft, dst, seed=seed, device=params.student.device,
                         report_to=report_to)
