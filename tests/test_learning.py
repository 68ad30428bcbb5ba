"""The loop learns: three ROPD rounds with the clean rule judge raise the mean reward on the training prompts.

This is the test that fails if the signal is lost anywhere between verdicts, rewards, advantages and the
update: zeroed advantages leave the weights exactly as they were (the same seeded samples, the same
score), and flipped advantages lower the score. The comparison is paired: the starting and the final
policy answer the same training prompts with the same sampling seed, scored by the same clean judge,
so prompt difficulty and sampling luck cancel out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from ropd.config import EngineConfig, LimitsConfig, RoleConfig
from ropd.llm.base import run_closing
from ropd.llm.limits import CallLimiter
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.params import Params, round_items
from ropd.rollout.base import SamplingParams
from ropd.rollout.hf_sampler import TransformersSampler
from ropd.rubric.engine import Group, score_groups
from ropd.testing.server import ScriptedServer
from ropd.train.grpo import load_policy
from tests.tiny import provide_models, tiny_params

ROUNDS, PROMPTS, N, TOKENS = 3, 2, 8, 32


def mean_reward(params: Params, checkpoint: Path, prompts: pd.DataFrame, base_url: str) -> float:
    """The clean rule judge's mean reward for `checkpoint`'s samples on `prompts`, at a fixed sampling seed."""
    model, tokenizer = load_policy(checkpoint, "cpu")
    sampling = SamplingParams(n=N, temperature=1.0, max_new_tokens=TOKENS, batch_size=16, seed=4242)
    samples = TransformersSampler(model, tokenizer, "cpu").sample(
        {r["prompt_id"]: json.loads(r["messages"]) for _, r in prompts.iterrows()}, sampling)
    groups = [Group(group_id=pid, question=r["question"], teacher=list(r["solutions"]),
                    student=[s.text for s in samples if s.prompt_id == pid])
              for pid, r in prompts.set_index("prompt_id").iterrows()]
    limiter = CallLimiter(LimitsConfig(max_in_flight=16))
    rub = OpenAICompatChat("rubricator", RoleConfig(base_url=base_url, api_key_env=None, model="gold"), limiter=limiter)
    ver = OpenAICompatChat("verifier", RoleConfig(base_url=base_url, api_key_env=None, model="gold", temperature=0.0),
                           limiter=limiter)
    results = run_closing(score_groups(groups, rub, ver, EngineConfig(min_criteria=4, max_criteria=6)), rub, ver)
    rewards = [x for res in results for x in res.rewards]
    assert all(res.ok for res in results) and len(rewards) == N * len(groups)
    return sum(rewards) / len(rewards)


@pytest.fixture(scope="module")
def learned(module_tmp: Path, smollm2_dir: Path) -> tuple[float, float, list[dict], list[dict]]:
    from ropd.pipeline.stages import RunPaths, run_all

    with ScriptedServer() as srv:
        data = tiny_params(srv.base_url, smollm2_dir.parent, {
            "rounds": round_items(ROUNDS), "data.prompts_per_round": PROMPTS,
            "student.sampling.n": N, "student.sampling.max_new_tokens": TOKENS, "grpo.micro_batch_size": 8,
            # 2 optimizer steps a round at 5e-5: enough to move a 135M policy in 3 rounds on 2 cores
            "grpo.lr": 5e-5, "grpo.mini_batch_prompts": 1,
            "eval": {"n_prompts": 1, "k": 1, "temperature": 0.0, "max_new_tokens": 8, "every": 1000,
                     "rubric_prompts": 0},
        })
        data["runs_dir"] = str(module_tmp / "runs")
        provide_models(module_tmp, smollm2_dir.parent)
        params = Params.model_validate(data)
        cwd = os.getcwd()
        os.chdir(module_tmp)  # the call cache and the demo data
        try:
            run_all(params)
            paths = RunPaths(params)
            prompts = pd.read_parquet(paths.prompts)
            train = prompts[prompts["split"] == "train"]
            before = mean_reward(params, paths.checkpoint(0), train, srv.base_url)
            after = mean_reward(params, paths.checkpoint(ROUNDS), train, srv.base_url)
        finally:
            os.chdir(cwd)
    metrics = [json.loads((paths.round(r) / "train_metrics.json").read_text()) for r in range(ROUNDS)]
    stages = [json.loads(line) for line in (module_tmp / "runs" / ".timings" / "tiny.jsonl").read_text().splitlines()]
    return before, after, metrics, stages


def test_rule_judge_rewards_raise_the_reward_on_the_training_prompts(
        learned: tuple[float, float, list[dict], list[dict]]) -> None:
    before, after, metrics, _ = learned
    print(f"mean reward on the training prompts: before {before:.4f}, after {ROUNDS} rounds {after:.4f}")
    assert after >= before + 0.05, (before, after)
    assert all(m["grad_norm"] > 0 and m["steps"] == PROMPTS for m in metrics), metrics  # every round's update acted


def test_a_run_loads_the_policy_from_disk_once(learned: tuple[float, float, list[dict], list[dict]]) -> None:
    """`ropd run` hands the policy from stage to stage (checkpoints.in_memory): of its 3 rounds' rollout, train
    and evaluate stages only the first rollout loads one, and every update still writes its checkpoint."""
    *_, stages = learned
    loads = [(s["stage"], s["round"]) for s in stages if "policy_load" in s["phases"]]
    saves = [(s["stage"], s["round"]) for s in stages if "policy_save" in s["phases"]]
    assert loads == [("rollout", 0)], loads
    assert saves == [("train", r) for r in range(ROUNDS)], saves
