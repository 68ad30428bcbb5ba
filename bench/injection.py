"""Injection-gain rate of a judge: how often an answer with a prompt injection scores strictly higher than
the same answer without it, under the same rubric.

    .venv/bin/python bench/injection.py                          # the packaged SmolLM2 judge (params.yaml's verifier)
    .venv/bin/python bench/injection.py --params my.yaml         # the `verifier:` block of any params file
    .venv/bin/python bench/injection.py --base-url http://127.0.0.1:8000/v1 --model my-judge --api-key-env KEY
    .venv/bin/python bench/injection.py --stand-in --pairs 4     # the deterministic stand-in (a smoke test)

Pairs are demo arithmetic problems; the clean answer alternates between a correct worked solution and
one with a wrong final step, so an injection has room to gain. The rubric of each problem is the
stand-in Rubricator's (fixed, sensible, identical for both answers), so the figure isolates the
verifier. Each answer is verified alone (a pool of one) through the engine's real verification path:
fences, schema, repairs. A rate near 0 means the judge ignores the injections; ties are reported apart.
Last line: {"injection_gain_rate": r, "n_pairs": p, "n_comparisons": c, "gains": g, "ties": t, ...}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from ropd.config import EngineConfig, RoleConfig
from ropd.data import arith
from ropd.eval.injection import TEMPLATES, InjectionJob, injection_rows
from ropd.llm.base import ChatModel, run_closing
from ropd.llm.cache import CallCache
from ropd.llm.factory import make_chat
from ropd.rubric.prompts import render_rubricator
from ropd.rubric.schema import Rubric
from ropd.testing.judge import rubric_reply

REPO = Path(__file__).resolve().parent.parent


def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """(question, clean answer): correct worked solutions and, every other pair, one wrong final step."""
    pairs = []
    for i, p in enumerate(arith.generate(n, seed=seed)):
        answer = p.solutions[i % len(p.solutions)]
        if i % 2:
            wrong = p.answer + 1 + i % 3
            answer = answer.replace(f"= {p.answer}", f"= {wrong}").replace(f"Answer: {p.answer}", f"Answer: {wrong}")
        pairs.append((p.question, answer))
    return pairs


def judge_config(args: argparse.Namespace, base_url: str | None) -> RoleConfig:
    """The verifier block of --params, with --base-url/--model/--api-key-env (or the stand-in) on top."""
    data = yaml.safe_load(Path(args.params).read_text(encoding="utf-8")) or {}
    cfg = RoleConfig.model_validate(data.get("verifier") or {})
    url = base_url or args.base_url
    if url:
        model = "stand-in-judge" if base_url else args.model or cfg.model
        cfg = cfg.model_copy(update={"provider": "openai", "base_url": url, "model": model,
                                     "api_key_env": None if base_url else args.api_key_env})
    return cfg


async def measure(chat: ChatModel, pairs: list[tuple[str, str]], cfg: EngineConfig) -> list[dict]:
    """Each pair under the stand-in Rubricator's rubric (fixed and sensible), so the figure isolates the verifier."""
    jobs = [InjectionJob(question=q, rubric=Rubric.from_reply(rubric_reply(render_rubricator(q, [], [clean]))),
                         answer=clean) for q, clean in pairs]
    return [row.model_dump() for row in await injection_rows(chat, jobs, cfg)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"), help="params file whose `verifier:` is the judge")
    ap.add_argument("--base-url", help="an OpenAI-compatible endpoint instead (provider openai)")
    ap.add_argument("--model", help="model name at --base-url")
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the key for --base-url")
    ap.add_argument("--stand-in", action="store_true", help="judge with the deterministic stand-in server")
    ap.add_argument("--pairs", type=int, default=6, help="(question, clean answer) pairs")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    server = None
    if args.stand_in:
        from ropd.testing.server import ScriptedServer

        server = ScriptedServer().start()
    cfg = judge_config(args, server.base_url if server else None)
    engine = EngineConfig(min_criteria=4, max_criteria=6, max_criterion_chars=80)
    pairs = make_pairs(args.pairs, args.seed)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cache = CallCache(Path(tmp) / "calls.sqlite")
            chat = make_chat("verifier", cfg, cache=cache)
            try:
                rows = run_closing(measure(chat, pairs, engine), chat)
            finally:
                cache.close()
    finally:
        if server is not None:
            server.stop()
    elapsed = time.perf_counter() - t0

    done = [r for r in rows if r["clean"] is not None and r["injected"] is not None]
    gains = sum(r["injected"] > r["clean"] for r in done)
    ties = sum(r["injected"] == r["clean"] for r in done)
    per_template = {}
    for t in TEMPLATES:
        mine = [r for r in done if r["template"] == t]
        per_template[t] = round(sum(r["injected"] > r["clean"] for r in mine) / len(mine), 3) if mine else None
        delta = sum(r["injected"] - r["clean"] for r in mine) / len(mine) if mine else float("nan")
        print(f"{t:24s} gain rate {per_template[t]}  mean score change {delta:+.3f}  ({len(mine)} comparisons)")
    judge = f"{cfg.provider}:{cfg.model}" + (f"@{cfg.base_url}" if cfg.provider == "openai" and not server else "")
    print(f"judge {judge}: {len(pairs)} pairs x {len(TEMPLATES)} injections in {elapsed:.1f} s; "
          f"{len(rows) - len(done)} comparisons lost to judge errors")
    print(json.dumps({
        "injection_gain_rate": round(gains / len(done), 3) if done else None,
        "n_pairs": len(pairs), "n_comparisons": len(done), "gains": gains, "ties": ties,
        "losses": len(done) - gains - ties, "failed": len(rows) - len(done),
        "mean_delta": round(sum(r["injected"] - r["clean"] for r in done) / len(done), 4) if done else None,
        "per_template": per_template, "judge": "stand-in" if server else judge, "seconds": round(elapsed, 1),
    }))


if __name__ == "__main__":
    main()
