"""The policy a long-lived runner keeps between stages (`ropd/pipeline/resident.py`): what it hands on is exactly
the checkpoint on disk, it is never handed on for a checkpoint that has changed since, and outside a runner
nothing is kept.

That a whole run gives the same bytes with it as `dvc repro` gives without it (one process per stage, every
policy from disk) is tested end to end in tests/test_pipeline_e2e.py (the Prefect flow against a forced
`dvc repro` of the stages it ran from memory), and tests/test_learning.py checks that a 3-round `ropd run`
loads the policy from disk once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ropd.pipeline import timings
from ropd.pipeline.checkpoints import manifest_path, publish
from ropd.pipeline.resident import keep_learner, policy_in_memory, sampling_policy, take_learner
from ropd.rollout.base import SamplingParams
from ropd.rollout.hf_sampler import TransformersSampler
from ropd.train.config import GRPOConfig
from ropd.train.grpo import GRPOLearner, build_samples, load_policy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from gpu_smoke import CHAT, tiny_model, tiny_tokenizer

CFG = GRPOConfig(lr=1e-3, micro_batch_size=4)
CHATS = {"p0": [{"role": "user", "content": "What is 3 + 4?"}], "p1": [{"role": "user", "content": "What is 9 + 2?"}]}
SAMPLING = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=7)


def sample(model: object, tokenizer: object) -> list[tuple[str, list[float] | None]]:
    return [(s.text, s.logprobs) for s in TransformersSampler(model, tokenizer, "cpu").sample(CHATS, SAMPLING)]


@pytest.fixture
def trained(tmp_path: Path) -> tuple[GRPOLearner, Path]:
    """A learner one real GRPO step past its start, saved and published as round 1."""
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT
    learner = GRPOLearner(tiny_model(len(tokenizer), torch.float32), tokenizer, CFG)
    rollouts = TransformersSampler(learner.model, tokenizer, "cpu").sample(CHATS, SAMPLING)
    rewards = {(ro.prompt_id, ro.sample_idx): (float(ro.sample_idx), "ok") for ro in rollouts}
    assert learner.train_round(build_samples(tokenizer, CHATS, rollouts, rewards))["grad_norm"] > 0
    ckpt = tmp_path / "checkpoints" / "round_1"
    learner.save(ckpt)
    publish(ckpt, 1)
    return learner, ckpt


def test_the_kept_policy_samples_as_its_checkpoint_and_trains_on_with_its_adamw_state(
        trained: tuple[GRPOLearner, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    learner, ckpt = trained
    monkeypatch.setattr(timings, "_first_stage", False)
    lines = tmp_path / "timings.jsonl"
    side = learner.tokenizer.padding_side
    with policy_in_memory():
        keep_learner(ckpt, learner)
        with timings.timed_stage(lines, "rollout", 1), sampling_policy(ckpt, "cpu", CFG) as (model, tokenizer):
            assert model is learner.model and tokenizer is not learner.tokenizer  # the sampler pads its own copy
            from_memory = sample(model, tokenizer)
        with timings.timed_stage(lines, "train", 1):
            assert take_learner(ckpt, CFG, "cpu") is learner
        assert take_learner(ckpt, CFG, "cpu") is not learner  # taken out: the update owns it until it is kept again
    assert [json.loads(line)["phases"] for line in lines.read_text().splitlines()] == [{}, {}]  # no loads
    assert (learner.tokenizer.padding_side, tokenizer.padding_side) == (side, "left")
    assert from_memory == sample(*load_policy(ckpt, "cpu"))  # the same draws, to the last log-probability bit
    loaded = GRPOLearner.load(ckpt, CFG, device="cpu")
    kept, disk = learner.optimizer.state_dict()["state"], loaded.optimizer.state_dict()["state"]
    assert kept.keys() == disk.keys() and all(torch.equal(kept[k]["exp_avg_sq"], disk[k]["exp_avg_sq"]) for k in kept)


def test_a_changed_checkpoint_other_settings_or_no_runner_get_a_load_from_disk(
        trained: tuple[GRPOLearner, Path]) -> None:
    learner, ckpt = trained
    keep_learner(ckpt, learner)  # outside a runner (a `ropd stage` process): nothing is kept
    assert take_learner(ckpt, CFG, "cpu") is not learner
    with policy_in_memory(enabled=False):  # checkpoints.in_memory: false
        keep_learner(ckpt, learner)
        assert take_learner(ckpt, CFG, "cpu") is not learner
    with policy_in_memory():
        keep_learner(ckpt, learner)
        assert take_learner(ckpt, CFG.model_copy(update={"lr": 2e-3}), "cpu") is not learner
        keep_learner(ckpt, learner)
        publish(ckpt, 1)  # the same files: still the same checkpoint
        assert take_learner(ckpt, CFG, "cpu") is learner
        keep_learner(ckpt, learner)
        (ckpt / "generation_config.json").write_text('{"do_sample": true}\n')  # rewritten by hand, or by a launched
        publish(ckpt, 1)                                                         # stage in processes of its own
        assert manifest_path(ckpt).is_file()
        with sampling_policy(ckpt, "cpu") as (model, _):
            assert model is not learner.model
        assert take_learner(ckpt, CFG, "cpu") is not learner
