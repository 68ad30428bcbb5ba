from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ropd.params import Params, StudentParams
from ropd.pipeline.run import round_seed
from ropd.rollout import Rollout, SamplingParams, make_sampler
from ropd.rollout.base import encode_prompt
from ropd.rollout.hf_sampler import TransformersSampler
from ropd.train.grpo import _pad_batch, build_samples, token_logprobs

PROMPTS = {
    "p1": [{"role": "user", "content": "What is 3 times 12?"}],
    "p2": [{"role": "user", "content": "Name a colour."}],
}


def test_n_samples_per_prompt_with_metadata(smollm2_dir: Path) -> None:
    sampler = make_sampler(smollm2_dir)
    assert isinstance(sampler, TransformersSampler)  # no vLLM on CPU
    params = SamplingParams(n=3, max_new_tokens=12, seed=7, batch_size=4)
    out = sampler.sample(PROMPTS, params)
    assert [(r.prompt_id, r.sample_idx) for r in out] == [("p1", 0), ("p1", 1), ("p1", 2),
                                                         ("p2", 0), ("p2", 1), ("p2", 2)]
    eos = sampler.tokenizer.eos_token_id
    for r in out:
        assert r.n_tokens == len(r.token_ids) <= 12
        assert r.finish_reason == ("stop" if r.token_ids[-1] == eos else "length")
        assert r.text == sampler.tokenizer.decode(r.token_ids, skip_special_tokens=True)
    # seed control: same seed, same rollouts; another seed, different ones
    again = sampler.sample(PROMPTS, params)
    assert [r.text for r in again] == [r.text for r in out]
    other = sampler.sample(PROMPTS, params.model_copy(update={"seed": 8}))
    assert [r.text for r in other] != [r.text for r in out]


NO_THINK = "{% if enable_thinking is defined and not enable_thinking %}/no_think {% endif %}"


def test_chat_template_kwargs_reach_the_template(smollm2_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.chat_template = NO_THINK + "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    msgs = PROMPTS["p2"]
    assert tok.decode(encode_prompt(tok, msgs)) == "Name a colour."
    assert tok.decode(encode_prompt(tok, msgs, {"enable_thinking": False})) == "/no_think Name a colour."
    assert StudentParams(chat_template_kwargs={"enable_thinking": False}).chat_template_kwargs == {
        "enable_thinking": False}


def test_recorded_logprobs_match_teacher_forcing(smollm2_dir: Path) -> None:
    """The sampler records the raw model distribution (not the temperature-scaled one), so with the same
    weights its log-probs equal the trainer's teacher-forced ones. Prompts go through a template that
    depends on `enable_thinking`: were the kwargs dropped on either side, the contexts would differ."""
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.chat_template = NO_THINK + tok.chat_template
    kwargs = {"enable_thinking": False}
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    sampler = TransformersSampler(model, tok, chat_template_kwargs=kwargs)
    for temperature in (1.0, 0.7):
        out = sampler.sample(PROMPTS, SamplingParams(n=2, temperature=temperature, max_new_tokens=8, seed=3,
                                                     batch_size=4))
        samples = build_samples(tok, PROMPTS, out, {(r.prompt_id, r.sample_idx): (0.0, "ok") for r in out},
                                chat_template_kwargs=kwargs)
        assert samples[0].prompt_ids == encode_prompt(tok, PROMPTS["p1"], kwargs) != encode_prompt(tok, PROMPTS["p1"])
        with torch.no_grad():
            forced = token_logprobs(model, _pad_batch(samples, tok.pad_token_id, torch.device("cpu")))
        for i, s in enumerate(samples):
            assert s.sampler_logprobs is not None and len(s.sampler_logprobs) == len(s.completion_ids)
            start = len(s.prompt_ids)
            want = forced[i, start : start + len(s.completion_ids)]
            assert torch.allclose(torch.tensor(s.sampler_logprobs), want, atol=1e-4), (temperature, i)


def test_rollouts_survive_the_parquet_table(tmp_path: Path) -> None:
    """The rollout stage writes `model_dump()` rows; the train stage reads them back, logprobs included."""
    rows = [Rollout(prompt_id="p", sample_idx=0, text="a", token_ids=[5, 6], n_tokens=2, finish_reason="stop",
                    logprobs=[-0.25, -1.5]),
            Rollout(prompt_id="p", sample_idx=1, text="b", token_ids=[7], n_tokens=1, finish_reason="length")]
    pd.DataFrame([{"round": 0, **r.model_dump()} for r in rows]).to_parquet(tmp_path / "rollouts.parquet")
    back = [Rollout.model_validate({k: row[k] for k in Rollout.model_fields if k in row})
            for row in pd.read_parquet(tmp_path / "rollouts.parquet").to_dict("records")]
    assert back == rows
    with pytest.raises(ValueError, match="1 log-probs for 2 tokens"):
        Rollout(prompt_id="p", sample_idx=0, text="a", token_ids=[5, 6], n_tokens=2, finish_reason="stop",
                logprobs=[-0.25])


def test_round_seeds_follow_both_seed_keys_and_keep_the_default_runs() -> None:
    """`student.sampling.seed` used to be overwritten by the rollout stage, so setting it changed nothing."""
    def seeds(data_seed: int, sampling_seed: int) -> set[int]:
        p = Params.model_validate({"data": {"seed": data_seed}, "student": {"sampling": {"seed": sampling_seed}}})
        return {round_seed(p, r) for r in range(500)}

    assert seeds(3, 0) == {3000 + r for r in range(500)}  # the default keeps every earlier run's rollouts
    runs = [seeds(d, s) for d in (0, 1) for s in (0, 1, 7)]
    assert all(len(run) == 500 for run in runs)
    assert len(set().union(*runs)) == 500 * len(runs)  # no round of one run shares a draw with another run
