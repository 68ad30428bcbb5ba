"""One tiny round end to end on whatever device is there: the check to run the day a GPU is lent.

    .venv/bin/python bench/gpu_smoke.py [--device cuda|cpu] [--dtype bf16|fp32]

A small Llama built from a config and a byte-level tokenizer trained here (no download, no model
package), rollouts through the transformers sampler (and vLLM when it is installed), the scripted
stand-in judge on 127.0.0.1 (rubric, blind verification, rewards), and one GRPO step. It asserts
nothing about speed; the last line is JSON: device, dtype, the steps' seconds, peak memory.
docs/scale.md says how to run it on a GPU machine without network.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

CORPUS = [f"What is {a} + {b}? The answer is {a + b}." for a in range(40) for b in range(0, 40, 7)]
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_tokenizer() -> Any:
    """A byte-level BPE trained on a few hundred sentences: real tokenization, no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=512, special_tokens=["<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    fast.chat_template = CHAT
    return fast


def tiny_model(vocab: int, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def smoke(device: str, dtype: torch.dtype, n: int = 4, tokens: int = 16) -> dict[str, Any]:
    from ropd.config import EngineConfig, LimitsConfig, RoleConfig
    from ropd.llm.base import run_closing
    from ropd.llm.limits import CallLimiter
    from ropd.llm.openai_compat import OpenAICompatChat
    from ropd.rollout.base import SamplingParams
    from ropd.rollout.hf_sampler import TransformersSampler
    from ropd.rubric.engine import Group, score_groups
    from ropd.testing.server import ScriptedServer
    from ropd.train.config import GRPOConfig
    from ropd.train.grpo import GRPOLearner, build_samples

    figures: dict[str, Any] = {"device": device, "dtype": str(dtype).removeprefix("torch.")}
    if device.startswith("cuda"):
        figures["gpu"] = torch.cuda.get_device_name(device)
        torch.cuda.reset_peak_memory_stats()
    tokenizer = tiny_tokenizer()
    learner = GRPOLearner(tiny_model(len(tokenizer), dtype).to(device), tokenizer,
                          GRPOConfig(lr=1e-4, micro_batch_size=n))
    questions = {"p0": ("What is 3 + 4?", 7), "p1": ("What is 12 + 5?", 17)}
    prompts = {pid: [{"role": "user", "content": q}] for pid, (q, _) in questions.items()}
    sampling = SamplingParams(n=n, max_new_tokens=tokens, seed=0, batch_size=2 * n)
    t0 = time.perf_counter()
    rollouts = TransformersSampler(learner.model, tokenizer, device).sample(prompts, sampling)
    figures["rollout_s"] = round(time.perf_counter() - t0, 3)
    if importlib.util.find_spec("vllm") is not None and device.startswith("cuda"):
        from ropd.rollout.vllm_sampler import VLLMSampler

        with tempfile.TemporaryDirectory() as tmp:
            learner.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            t0 = time.perf_counter()
            figures["vllm_rollouts"] = len(VLLMSampler(Path(tmp)).sample(prompts, sampling))
            figures["vllm_rollout_s"] = round(time.perf_counter() - t0, 3)
    with ScriptedServer() as srv:
        limiter = CallLimiter(LimitsConfig(max_in_flight=8))
        rub, ver = (OpenAICompatChat(role, RoleConfig(base_url=srv.base_url, api_key_env=None, model="smoke",
                                                      temperature=t), limiter=limiter)
                    for role, t in (("rubricator", 0.7), ("verifier", 0.0)))
        groups = [Group(group_id=pid, question=q, teacher=[f"{q} The answer is {answer}."],
                        student=[r.text for r in rollouts if r.prompt_id == pid])
                  for pid, (q, answer) in questions.items()]
        t0 = time.perf_counter()
        results = run_closing(score_groups(groups, rub, ver, EngineConfig(min_criteria=4, max_criteria=6)), rub, ver)
        figures["judge_s"] = round(time.perf_counter() - t0, 3)
    rewards = {(g.group_id, i): (reward, "ok" if res.ok else "judge_error")
               for g, res in zip(groups, results, strict=True) for i, reward in enumerate(res.rewards)}
    figures["judged_groups"] = sum(res.ok for res in results)
    t0 = time.perf_counter()
    metrics = learner.train_round(build_samples(tokenizer, prompts, rollouts, rewards))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    figures["step_s"] = round(time.perf_counter() - t0, 3)
    figures.update(steps=metrics["steps"], tokens=metrics["tokens"], loss=metrics["loss"],
                   peak_memory_mb=round(peak_memory_mb(device), 1))
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    args = ap.parse_args()
    print(json.dumps(smoke(args.device, torch.bfloat16 if args.dtype == "bf16" else torch.float32)))


if __name__ == "__main__":
    main()
