from __future__ import annotations

from pathlib import Path

from ropd.rollout import SamplingParams, make_sampler
from ropd.rollout.hf_sampler import TransformersSampler

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
