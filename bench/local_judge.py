"""The packaged SmolLM2 as a schema-constrained judge: validity, tokens/s and seconds per group.

    .venv/bin/python bench/local_judge.py --quick      # 5 prompts of the shipped sample
    .venv/bin/python bench/local_judge.py              # all 6, 2 teacher + 4 student answers each

Every reply is constrained by xgrammar and then parsed and validated like a remote one, with no
repair allowed, so `valid_rate` counts first-try successes. Last line:
{"valid_rate": v, "tok_per_s": t, "seconds_per_group": s}.

    .venv/bin/python bench/local_judge.py --llamacpp /path/to/llama-venv/bin/python

also judges the same groups, in the same run, through llama.cpp's server on the same packaged GGUF
(an OpenAI-compatible judge; see docs/models.md), and adds its figures and the speed ratio:
{..., "llamacpp": {...}, "llamacpp_speedup": seconds_transformers / seconds_llamacpp}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ropd.config import EngineConfig, LimitsConfig, RoleConfig
from ropd.data.prompts import load_sample
from ropd.llm.base import ChatModel, run_closing
from ropd.llm.cache import CallCache
from ropd.llm.limits import CallLimiter
from ropd.llm.local import LocalChat
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.models import SMOLLM2, packaged_file
from ropd.rubric.engine import Group, score_groups
from ropd.testing.llamacpp import llamacpp_server


def judge(groups: list[Group], rubricator: ChatModel, verifier: ChatModel, engine: EngineConfig,
          cache: CallCache) -> dict[str, float]:
    """Score the groups once (no repairs) and print each; validity, tokens/s and seconds per group."""
    t0 = time.perf_counter()
    results = run_closing(score_groups(groups, rubricator, verifier, engine), rubricator, verifier)
    elapsed = time.perf_counter() - t0
    tokens = sum(u["tokens_out"] for u in cache.usage().values())
    calls = rubricator.calls_sent + verifier.calls_sent  # type: ignore[attr-defined]
    invalid = sum(1 for r in results if r.error is not None and r.error.type in ("parse", "schema", "validation"))
    for g, r in zip(groups, results, strict=True):
        crit = "; ".join(c.text for c in r.rubric.criteria)[:110] if r.rubric else f"FAILED {r.error}"
        print(f"{g.question[:40]}… rewards={[round(x, 2) if x is not None else None for x in r.rewards]} | {crit}")
    print(f"{len(groups)} groups, {calls} calls in {elapsed:.1f} s; {tokens} generated tokens")
    return {"valid_rate": round((calls - invalid) / calls, 3), "tok_per_s": round(tokens / elapsed, 1),
            "seconds_per_group": round(elapsed / len(groups), 1), "seconds": round(elapsed, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="5 prompts, 1 teacher + 3 student answers each")
    ap.add_argument("--max-criteria", type=int, default=6)
    ap.add_argument("--llamacpp", metavar="PYTHON", help="also judge through llama.cpp's server, run by this python")
    args = ap.parse_args()
    sample = load_sample()[:5] if args.quick else load_sample()
    n_teacher, n_student = (1, 3) if args.quick else (2, 4)
    groups = [Group(group_id=g.prompt_id, question=g.question, teacher=g.solutions[:n_teacher],
                    student=g.student[:n_student]) for g in sample]
    base = RoleConfig(provider="local", model="smollm2-135m-instruct", api_key_env=None, batch_size=len(groups),
                      max_repairs=0)
    engine = EngineConfig(min_criteria=4, max_criteria=args.max_criteria, max_criterion_chars=80)
    settings = {"rubricator": {"temperature": 0.7, "max_tokens": 160 * args.max_criteria},
                "verifier": {"temperature": 0.0, "max_tokens": 400}}
    with tempfile.TemporaryDirectory() as tmp:
        cache = CallCache(Path(tmp) / "calls.sqlite")
        local = [LocalChat(role, base.model_copy(update=kw), cache=cache) for role, kw in settings.items()]
        figures: dict[str, Any] = judge(groups, *local, engine, cache)
        cache.close()
        if args.llamacpp:
            with llamacpp_server(args.llamacpp, packaged_file(SMOLLM2), log=Path(tmp) / "llamacpp.log") as url:
                cache = CallCache(Path(tmp) / "llamacpp.sqlite")
                remote = base.model_copy(update={"provider": "openai", "base_url": url, "model": "smollm2"})
                limiter = CallLimiter(LimitsConfig(max_in_flight=len(groups)))
                chats = [OpenAICompatChat(role, remote.model_copy(update=kw), cache=cache, limiter=limiter)
                         for role, kw in settings.items()]
                figures["llamacpp"] = {**judge(groups, *chats, engine, cache),
                                       "response_format": chats[1].format_mode}
                cache.close()
            figures["llamacpp_speedup"] = round(figures["seconds"] / figures["llamacpp"]["seconds"], 2)
    print(json.dumps(figures))

if __name__ == "__main__":
    main()
