"""The rollout stage: the round's sampling policy (the current one, or the one before it with `overlap`) draws n
answers per round prompt, seeded, so a rerun draws the same."""

from __future__ import annotations

import pandas as pd

from ropd.io import atomic_write_parquet
from ropd.params import Params
from ropd.pipeline.data import pool_too_small
from ropd.pipeline.launch import is_main, process_device, rank_world
from ropd.pipeline.lock import run_lock
from ropd.pipeline.resident import learner_config, sampling_policy
from ropd.pipeline.run import RunPaths, messages, not_used, read_prompts, require_policy, round_seed


def rollout(params: Params, r: int) -> None:
    from ropd.rollout.hf_sampler import TransformersSampler

    paths = RunPaths(params)
    with run_lock(paths.run):
        if not_used(params, "rollout", paths.round(r), ["rollouts.parquet"]):
            return
        if params.judge_check.enforce and not paths.judge_gate.is_file():
            raise ValueError(f"round {r}: judge_check.enforce is on and the judge check has not passed (no "
                             f"{paths.judge_gate}; see {paths.judge_check}): run `ropd stage judge_check` first")
        df = read_prompts(paths)
        mine = df[df["round"] == r]
        if mine.empty:
            pool = int((df["split"] == "train").sum())
            raise ValueError(f"round {r}: no prompts assigned. {pool_too_small(params, pool)}")
        device = process_device(params.student.device)
        policy = params.rounds[r].policy
        require_policy(params, paths, policy)
        sampling = params.student.sampling.model_copy(update={"seed": round_seed(params, r)})
        chats = {row["prompt_id"]: messages(row) for _, row in mine.iterrows()}
        rank, world = rank_world()
        with sampling_policy(paths.checkpoint(policy), device, learner_config(params)) as (model, tokenizer):
            sampler = TransformersSampler(model, tokenizer, device, params.student.chat_template_kwargs)
            rollouts = sampler.sample(chats, sampling, shard=(rank, world))
        if world > 1:  # every process sampled its share of the batches: the main one writes them all
            from accelerate import PartialState
            from accelerate.utils import gather_object

            PartialState(cpu=not device.startswith("cuda"))  # joins the launcher's process group
            order = {pid: k for k, pid in enumerate(chats)}
            rollouts = sorted(gather_object(rollouts), key=lambda ro: (order[ro.prompt_id], ro.sample_idx))
            if not is_main():
                return
        out = pd.DataFrame([{"run_id": params.run_id, "round": r, **ro.model_dump(), "policy": policy,
                             "checkpoint": paths.checkpoint(policy).name} for ro in rollouts])
        atomic_write_parquet(out, paths.round(r) / "rollouts.parquet")
