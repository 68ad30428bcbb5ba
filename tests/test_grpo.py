"""GRPO on the real SmolLM2: advantages, masking, mini-batches, dual-clip, TIS, resume, LoRA, KL. That the
loop learns, through the whole pipeline, is tests/test_learning.py."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from ropd.train.advantages import group_advantages
from ropd.train.config import GRPOConfig, LoraSettings
from ropd.train.grpo import (
    OPTIM_FILE,
    CheckpointError,
    GRPOLearner,
    TrainSample,
    prompt_mini_batches,
    surrogate_loss,
)

PROMPT = [1, 2, 3, 4]


def params(learner: GRPOLearner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}


def test_group_advantages_mask_failed_groups() -> None:
    adv, mask = group_advantages([1.0, 0.0, 0.5, None, 0.2, 0.9], ["a", "a", "a", "b", "b", "c"],
                                 [True, True, True, False, False, True])
    assert adv[:3] == pytest.approx([0.5, -0.5, 0.0])
    assert mask == [True, True, True, False, False, True]
    assert adv[3:5] == [0.0, 0.0] and adv[5] == 0.0  # a group of one has no signal
    scaled, _ = group_advantages([1.0, 0.0], ["a", "a"], [True, True], scale_by_std=True)
    assert scaled[0] == pytest.approx(0.5 / (0.5**0.5 + 1e-4))
    # a group with one missing reward is masked whole: its mean would not be comparable
    _, m = group_advantages([1.0, None], ["a", "a"], [True, True])
    assert m == [False, False]


def test_masked_tokens_get_exactly_zero_gradient() -> None:
    logp = torch.randn(2, 6, requires_grad=True)
    batch = {"loss_mask": torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.float32),
             "advantages": torch.tensor([0.7, -1.3])}
    loss, _ = surrogate_loss(logp, logp.detach(), batch, GRPOConfig(), n_tokens=3)
    loss.backward()
    assert torch.count_nonzero(logp.grad[1]) == 0 and torch.count_nonzero(logp.grad[0, :2]) == 0
    assert torch.count_nonzero(logp.grad[0, 2:5]) == 3


def one_token_batch(ratios: list[list[float]], advantages: list[float]) -> tuple[torch.Tensor, dict]:
    """logp = log r against old_logp = 0, every position in the loss: the ratio is exactly `ratios`."""
    logp = torch.tensor(ratios).log().requires_grad_(True)
    return logp, {"loss_mask": torch.ones_like(logp), "advantages": torch.tensor(advantages)}


def test_dual_clip_matches_hand_computation() -> None:
    """ε = 0.2/0.28, c = 3. A = −1: min(max(r, clip r), 3); A = +1: max(−r, −clip r)."""
    ratios = [[0.5, 1.1, 2.0, 5.0], [0.5, 1.1, 1.5, 5.0]]
    logp, batch = one_token_batch(ratios, [-1.0, 1.0])
    # A < 0: 0.8 (low clip), 1.1, 2.0, 3.0 (dual clip; 5.0 without). A > 0: −0.5, −1.1, −1.28, −1.28 (high clip)
    loss, stats = surrogate_loss(logp, torch.zeros_like(logp), batch, GRPOConfig(dual_clip=3.0), n_tokens=8)
    assert loss.item() == pytest.approx((0.8 + 1.1 + 2.0 + 3.0 - 0.5 - 1.1 - 1.28 - 1.28) / 8)
    assert (stats["clip_low_sum"], stats["clip_high_sum"], stats["clip_dual_sum"]) == (1, 2, 1)
    assert stats["ratio_sum"] == pytest.approx(16.7) and stats["ratio_max"] == pytest.approx(5.0)
    loss.backward()
    # d/d log r of r·|A|/8 is r/8 where the ratio branch is taken; 0 where a bound binds
    expected = torch.tensor([[0.0, 1.1, 2.0, 0.0], [-0.5, -1.1, 0.0, 0.0]]) / 8
    assert torch.allclose(logp.grad, expected)
    off, off_stats = surrogate_loss(logp, torch.zeros_like(logp), batch, GRPOConfig(), n_tokens=8)
    assert off.item() == pytest.approx((0.8 + 1.1 + 2.0 + 5.0 - 0.5 - 1.1 - 1.28 - 1.28) / 8)
    assert off_stats["clip_dual_sum"] == 0


def test_tis_weight_matches_hand_computation() -> None:
    """w = min(exp(old − sampler), 2), detached; the masked last position counts nowhere."""
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    logp = old.clone().requires_grad_(True)  # ratio 1: the loss is −A·w per token
    batch = {"loss_mask": torch.tensor([[1.0, 1.0, 1.0, 0.0]]), "advantages": torch.tensor([1.0]),
             "sampler_logp": torch.tensor([[-1.0, -2.0, -0.5, -30.0]])}
    w = [1.0, 2.0, math.exp(-0.5)]  # e^0, e^1 truncated to 2, e^-0.5
    loss, stats = surrogate_loss(logp, old, batch, GRPOConfig(tis_cap=2.0), n_tokens=3)
    assert loss.item() == pytest.approx(-sum(w) / 3)
    assert stats["tis_weight_sum"] == pytest.approx(sum(w)) and stats["tis_truncated_sum"] == 1
    loss.backward()
    assert torch.allclose(logp.grad, -torch.tensor([[*w, 0.0]]) / 3)  # the weight carries no gradient


def test_mini_batches_never_split_a_group() -> None:
    order = ["a", "b", "a", "c", "b", "d", "c", "d", "a"]
    live = [TrainSample(prompt_id=p, prompt_ids=PROMPT, completion_ids=[i], advantage=0.0)
            for i, p in enumerate(order)]
    for per_step, expected in [(None, [["a", "b", "c", "d"]]), (1, [["a"], ["b"], ["c"], ["d"]]),
                               (2, [["a", "b"], ["c", "d"]]), (3, [["a", "b", "c"], ["d"]])]:
        minis = prompt_mini_batches(live, per_step)
        assert [sorted({s.prompt_id for s in m}) for m in minis] == expected
        assert sorted(s.completion_ids[0] for m in minis for s in m) == list(range(len(order)))  # each once
    assert [s.completion_ids[0] for s in prompt_mini_batches(live, 1)[0]] == [0, 2, 8]  # order within a group


def four_groups() -> list[TrainSample]:
    """4 prompts × 2 rollouts; the winners share one completion, the losers another, so a step on one
    prompt moves every other prompt's ratios the same way."""
    return [TrainSample(prompt_id=f"p{g}", prompt_ids=[*PROMPT, 40 + g], completion_ids=ids, advantage=a)
            for g in range(4) for ids, a in (([20, 21, 22], 0.5), ([30, 31, 32], -0.5))]


def test_later_mini_batches_are_off_policy_and_clip(smollm2_dir: Path) -> None:
    # LoRA keeps each of the 5 optimizer steps cheap on CPU; the schedule is the same as full fine-tuning.
    cfg = GRPOConfig(lr=3e-3, micro_batch_size=8, tis_cap=2.0, lora=LoraSettings(r=4))
    one = GRPOLearner.load(smollm2_dir, cfg)
    with pytest.raises(ValueError, match="tis_cap is set, but a rollout of prompt 'p0' has no sampler log-probs"):
        one.train_round(four_groups())
    assert one.step == 0
    # A sampler that gave every token probability e^-50: every weight is truncated to the cap.
    far = [s.model_copy(update={"sampler_logprobs": [-50.0] * len(s.completion_ids)}) for s in four_groups()]
    m1 = one.train_round(far)
    assert m1["steps"] == 1 and m1["ratio_mean"] == 1.0 and m1["ratio_max"] == 1.0  # one step: on-policy
    assert m1["clip_frac"] == m1["clip_low_frac"] == m1["clip_high_frac"] == 0.0
    assert m1["tis_truncated_frac"] == 1.0 and m1["tis_weight_mean"] == pytest.approx(2.0)
    split = GRPOLearner.load(smollm2_dir, cfg.model_copy(update={"mini_batch_prompts": 1, "tis_cap": None,
                                                                 "dual_clip": 3.0}))
    m4 = split.train_round(four_groups())
    assert m4["steps"] == 4 and split.step == 4 and m4["tokens"] == 24
    # steps 2-4 use the round's starting log-probs: winners' ratios rose past 1 + ε_high, losers' fell
    assert m4["clip_high_frac"] > 0 and m4["clip_low_frac"] > 0, m4
    assert m4["clip_frac"] == pytest.approx(m4["clip_low_frac"] + m4["clip_high_frac"])
    assert m4["ratio_max"] > 1.28 and "tis_weight_mean" not in m4


def samples(masked_group: bool) -> list[TrainSample]:
    ok = [TrainSample(prompt_id="p", prompt_ids=PROMPT, completion_ids=[10, 11, 12], advantage=0.5),
          TrainSample(prompt_id="p", prompt_ids=PROMPT, completion_ids=[13, 14], advantage=-0.5)]
    failed = [TrainSample(prompt_id="f", prompt_ids=[5, 6], completion_ids=[20, 21, 22, 23], advantage=0.0,
                          mask=False),
              TrainSample(prompt_id="f", prompt_ids=[5, 6], completion_ids=[24], advantage=0.0, mask=False)]
    return ok + failed if masked_group else ok


def test_judge_error_group_contributes_zero_gradient(smollm2_dir: Path) -> None:
    cfg = GRPOConfig(lr=1e-3, micro_batch_size=2)
    a, b = GRPOLearner.load(smollm2_dir, cfg), GRPOLearner.load(smollm2_dir, cfg)
    start = params(a)
    ma = a.train_round(samples(masked_group=True))
    b.train_round(samples(masked_group=False))
    assert ma["masked_samples"] == 2 and ma["steps"] == 1
    pa, pb = params(a), params(b)
    assert all(torch.equal(pa[n], pb[n]) for n in pa)  # identical update with or without the failed group
    assert any(not torch.equal(pa[n], start[n]) for n in pa)
    # a round where every group failed takes no step at all
    c = GRPOLearner.load(smollm2_dir, cfg)
    mc = c.train_round(samples(masked_group=True)[2:])
    assert mc["steps"] == 0 and c.step == 0 and all(torch.equal(v, start[n]) for n, v in params(c).items())


def test_checkpoint_resume_is_exact(smollm2_dir: Path, tmp_path: Path) -> None:
    cfg = GRPOConfig(lr=1e-4, micro_batch_size=4)
    learner = GRPOLearner.load(smollm2_dir, cfg)
    learner.train_round(samples(masked_group=False))
    ckpt = learner.save(tmp_path / "ckpt")
    loaded = GRPOLearner.load(ckpt)
    assert loaded.step == 1 and loaded.cfg == cfg
    ids = torch.tensor([[*PROMPT, 10, 11, 12]])
    with torch.no_grad():
        la = learner.model(input_ids=ids).logits
        lb = loaded.model(input_ids=ids).logits
    assert torch.equal(la, lb)
    sa, sb = learner.optimizer.state_dict()["state"], loaded.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    # and the next step is identical too, which needs the optimizer moments
    learner.train_round(samples(masked_group=False))
    loaded.train_round(samples(masked_group=False))
    pa, pb = params(learner), params(loaded)
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    # A run resumed with other settings (`ropd rounds 4` after raising grpo.lr) steps at them, with the moments
    # it kept: torch's load_state_dict alone would restore the saved rate.
    faster = GRPOLearner.load(ckpt, cfg.model_copy(update={"lr": 3e-4, "weight_decay": 0.5}))
    assert [(g["lr"], g["weight_decay"]) for g in faster.optimizer.param_groups] == [(3e-4, 0.5)]
    kept = torch.load(ckpt / OPTIM_FILE, weights_only=True)["state"][0]["exp_avg"]
    assert torch.equal(faster.optimizer.state_dict()["state"][0]["exp_avg"], kept)


def test_corrupt_checkpoint_is_named(smollm2_dir: Path, tmp_path: Path) -> None:
    learner = GRPOLearner.load(smollm2_dir, GRPOConfig())
    ckpt = learner.save(tmp_path / "ckpt")
    (ckpt / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"trainer_state\.json: unreadable"):
        GRPOLearner.load(ckpt)
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        GRPOLearner.load(tmp_path)


def test_lora_trains_adapters_only_and_resumes(smollm2_dir: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    learner = GRPOLearner.load(smollm2_dir, GRPOConfig(lr=1e-3, lora=LoraSettings(r=4)))
    trainable = params(learner)
    assert trainable and all("lora_" in n for n in trainable)
    learner.train_round(samples(masked_group=False))
    assert any(not torch.equal(v, trainable[n]) for n, v in params(learner).items())
    ckpt = learner.save(tmp_path / "lora")
    assert (ckpt / "adapter_config.json").is_file()
    loaded = GRPOLearner.load(ckpt)
    assert all(torch.equal(v, params(learner)[n]) for n, v in params(loaded).items())
    assert loaded.optimizer.state_dict()["state"]  # the AdamW moments came back
    (ckpt / "optimizer.pt").unlink()  # pruned to save disk: the weights load, a fresh AdamW is announced
    with caplog.at_level(logging.WARNING, logger="ropd.train.grpo"):
        fresh = GRPOLearner.load(ckpt)
    assert not fresh.optimizer.state_dict()["state"]
    assert f"{ckpt}: no optimizer.pt" in caplog.text


def test_kl_to_reference(smollm2_dir: Path) -> None:
    with pytest.raises(ValueError, match="reference"):
        GRPOLearner(*_model_and_tokenizer(smollm2_dir), GRPOConfig(beta=0.1))
    learner = GRPOLearner.load(smollm2_dir, GRPOConfig(beta=0.1, lr=1e-3))
    assert learner.ref_model is not None
    m = learner.train_round(samples(masked_group=False))
    assert m["steps"] == 1


def _model_and_tokenizer(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
