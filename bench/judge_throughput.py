"""Judge-stage throughput: the async engine under a shared in-flight cap vs. a 4-thread baseline.

Every judge call costs latency L at the endpoint, so the stage is latency-bound: with C calls in
flight, G groups of 2 sequential calls cannot finish sooner than max(2L, 2·G·L/C). This measures
how close `score_groups` gets to that bound, and how it compares with the official code's pattern
(4 worker threads, each group's calls one after the other, the synchronous `openai` client).

With `--endpoints 3` the top C also runs with each role spread over 3 servers (`base_urls`), each as
slow as the one: the bound is unchanged, so the figure shows what the endpoint pool costs or loses.

    .venv/bin/python bench/judge_throughput.py [--groups 64] [--latency 0.2] [--concurrency 4 16 64] [--endpoints 3]

The last stdout line is one JSON object: {"efficiency_c64": ..., "speedup_vs_4_inflight": ...}, plus
"efficiency_c64_3_endpoints" and "calls_per_endpoint" with `--endpoints 3`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import openai
from _common import make_groups, make_judges, role_configs, start_server, stop_server

from ropd.config import EngineConfig, LimitsConfig, RoleConfig
from ropd.llm.base import ChatRequest, run_closing
from ropd.llm.limits import CallLimiter
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.rubric.engine import Group, score_groups
from ropd.rubric.pool import blind_pool
from ropd.rubric.prompts import render_rubricator, render_verifier, rubric_json_schema, verdict_json_schema
from ropd.rubric.schema import Rubric


@dataclass
class EngineRun:
    concurrency: int
    wall_s: float
    cpu_s: float  # this process's CPU time over the timed region
    calls: int
    ok: int
    peak_in_flight: int


def latency_bound(groups: int, latency: float, concurrency: int) -> float:
    """Best possible wall time: the 2-call chain of one group, or the total call-time spread over C slots."""
    return max(2 * latency, 2 * groups * latency / concurrency)


async def _warm_up(chat: OpenAICompatChat, tag: str) -> None:
    """One tiny call, so connection set-up and lazy imports are not in the timed region."""
    request = ChatRequest.for_role(chat.role, chat.config, [{"role": "user", "content": f"warm-up {tag}"}])
    await chat.complete(request)


async def _timed_run(rubricator: OpenAICompatChat, verifier: OpenAICompatChat, limiter: CallLimiter,
                     groups: list[Group], concurrency: int) -> EngineRun:
    """Warm both clients up, then time `score_groups` alone (wall and this process's CPU)."""
    await asyncio.gather(_warm_up(rubricator, f"r{concurrency}"), _warm_up(verifier, f"v{concurrency}"))
    sent0 = rubricator.calls_sent + verifier.calls_sent
    limiter.peak_in_flight = 0
    t0, c0 = time.perf_counter(), time.process_time()
    results = await score_groups(groups, rubricator, verifier, EngineConfig())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    calls = rubricator.calls_sent + verifier.calls_sent - sent0
    return EngineRun(concurrency, wall, cpu, calls, sum(r.ok for r in results), limiter.peak_in_flight)


def run_engine(base_url: str, groups: list[Group], concurrency: int) -> EngineRun:
    """A fresh client pair sharing one limiter, no cache, in its own event loop; time `score_groups` alone."""
    rubricator, verifier, limiter = make_judges(base_url, concurrency)
    return run_closing(_timed_run(rubricator, verifier, limiter, groups, concurrency), rubricator, verifier)


def run_fleet(urls: list[str], groups: list[Group], concurrency: int) -> tuple[EngineRun, list[int]]:
    """As `run_engine`, but each role spreads its calls over all `urls`; also the attempts each endpoint got
    (warm-up calls included)."""
    rub_cfg, ver_cfg = (RoleConfig.model_validate({**cfg.model_dump(), "base_url": None, "base_urls": urls})
                        for cfg in role_configs(urls[0]))
    limiter = CallLimiter(LimitsConfig(max_in_flight=concurrency))
    rubricator = OpenAICompatChat("rubricator", rub_cfg, limiter=limiter)
    verifier = OpenAICompatChat("verifier", ver_cfg, limiter=limiter)
    run = run_closing(_timed_run(rubricator, verifier, limiter, groups, concurrency), rubricator, verifier)
    return run, [r.sent + v.sent for r, v in zip(rubricator.pool.endpoints, verifier.pool.endpoints, strict=True)]


def _create(client: openai.OpenAI, cfg: RoleConfig, messages: list[dict[str, str]], schema: dict[str, Any],
            name: str) -> str:
    resp = client.chat.completions.create(
        model=cfg.model, messages=messages, temperature=cfg.temperature, top_p=cfg.top_p,  # type: ignore[arg-type]
        max_tokens=cfg.max_tokens,
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
    )
    return resp.choices[0].message.content or ""


def run_baseline(base_url: str, groups: list[Group], threads: int = 4) -> float:
    """The official pattern: a 4-thread pool, each group's rubric then verification call in sequence."""
    rub_cfg, ver_cfg = role_configs(base_url)
    cfg = EngineConfig()
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=rub_cfg.timeout_s)

    def one(group: Group) -> int:
        messages = render_rubricator(group.question, group.teacher, group.student, min_k=cfg.min_criteria,
                                     max_k=cfg.max_criteria, max_answer_chars=cfg.max_answer_chars)
        rubric = Rubric.from_reply(json.loads(_create(client, rub_cfg, messages,
                                                      rubric_json_schema(cfg.min_criteria, cfg.max_criteria),
                                                      "ropd_rubric")))
        pool = blind_pool(group.group_id, group.teacher, group.student)
        messages = render_verifier(group.question, rubric, [it.text for it in pool],
                                   max_answer_chars=cfg.max_answer_chars)
        reply = _create(client, ver_cfg, messages, verdict_json_schema(len(pool), len(rubric.criteria)),
                        "ropd_verdicts")
        return len(json.loads(reply)["answers"])

    try:
        with ThreadPoolExecutor(threads) as pool:  # warm one connection per worker, outside the clock
            list(pool.map(lambda i: client.chat.completions.create(
                model=rub_cfg.model, messages=[{"role": "user", "content": f"warm-up baseline {i}"}]),
                range(threads)))
            t0 = time.perf_counter()
            graded = list(pool.map(one, groups))
            wall = time.perf_counter() - t0
    finally:
        client.close()
    if graded != [len(g.teacher) + len(g.student) for g in groups]:
        raise RuntimeError("baseline: a verifier reply did not grade every answer")
    return wall


def probe_call_time(base_url: str, n: int = 5) -> float:
    """Mean seconds of one lone call (sync client, warm connection): what the server really costs per call."""
    with openai.OpenAI(base_url=base_url, api_key="EMPTY", max_retries=0) as client:
        client.chat.completions.create(model="stand-in-judge", messages=[{"role": "user", "content": "probe"}])
        t0 = time.perf_counter()
        for i in range(n):
            client.chat.completions.create(model="stand-in-judge", messages=[{"role": "user", "content": f"p{i}"}])
        return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2, help="server seconds per call (L)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 64], help="max_in_flight values (C)")
    ap.add_argument("--endpoints", type=int, default=1, help="also run the top C over this many servers")
    args = ap.parse_args(argv)
    groups = make_groups(args.groups)
    n_calls = 2 * args.groups
    c_top = 64 if 64 in args.concurrency else max(args.concurrency)

    proc, base_url = start_server(args.latency)
    extra: list[tuple[Any, str]] = []  # the fleet's other servers (process, URL)
    fleet: tuple[EngineRun, list[int]] | None = None
    try:
        print(f"server {base_url}  G={args.groups} groups, {n_calls} calls, L={args.latency}s")
        per_call = probe_call_time(base_url)
        print(f"one lone call takes {per_call * 1000:.1f} ms (L = {args.latency * 1000:.0f} ms; "
              f"excess {1000 * (per_call - args.latency):.1f} ms per call is server + client overhead)")
        print(f"{'C':>4} {'wall s':>8} {'bound s':>8} {'efficiency':>10} {'calls':>6} {'ok':>4} {'peak':>5} "
              f"{'client CPU ms/call':>19}")
        runs: dict[int, EngineRun] = {}
        for c in args.concurrency:
            run = run_engine(base_url, groups, c)
            runs[c] = run
            bound = latency_bound(args.groups, args.latency, c)
            print(f"{c:>4} {run.wall_s:>8.3f} {bound:>8.3f} {bound / run.wall_s:>10.3f} {run.calls:>6} "
                  f"{run.ok:>4} {run.peak_in_flight:>5} {1000 * run.cpu_s / max(run.calls, 1):>19.2f}")
            if run.ok != args.groups or run.calls != n_calls:
                raise RuntimeError(f"C={c}: {run.ok}/{args.groups} groups ok, {run.calls}/{n_calls} calls")
        if args.endpoints > 1:
            for _ in range(args.endpoints - 1):
                extra.append(start_server(args.latency))
            fleet = run_fleet([base_url, *(url for _, url in extra)], groups, c_top)
            run, bound = fleet[0], latency_bound(args.groups, args.latency, c_top)
            print(f"{c_top:>4} {run.wall_s:>8.3f} {bound:>8.3f} {bound / run.wall_s:>10.3f} {run.calls:>6} "
                  f"{run.ok:>4} {run.peak_in_flight:>5} {1000 * run.cpu_s / max(run.calls, 1):>19.2f}  "
                  f"<- {args.endpoints} endpoints, attempts per endpoint {fleet[1]}")
            if run.ok != args.groups or run.calls != n_calls:
                raise RuntimeError(f"{args.endpoints} endpoints: {run.ok}/{args.groups} groups ok, "
                                   f"{run.calls}/{n_calls} calls")
        base = run_baseline(base_url, groups)
        base_bound = latency_bound(args.groups, args.latency, 4)
        print(f"baseline (ThreadPoolExecutor(4), sync openai client): {base:.3f} s "
              f"(bound {base_bound:.3f} s, efficiency {base_bound / base:.3f})")
    finally:
        for p, _ in extra:
            stop_server(p)
        stop_server(proc)

    top, top_bound = runs[c_top], latency_bound(args.groups, args.latency, c_top)
    eff, speedup = top_bound / top.wall_s, base / top.wall_s
    print(f"C={c_top}: efficiency {eff:.3f} (target >= 0.8), speed-up vs 4 in flight {speedup:.2f}x (target >= 8)")
    slack = top_bound * (1 / 0.8 - 1)
    print(f"client CPU at C={c_top}: {top.cpu_s:.3f} s for {top.calls} calls on one event loop; efficiency 0.8 allows "
          f"only {slack:.3f} s over the bound, and this CPU is mostly on the critical path (a wave of replies "
          "arrives together and is processed one by one)")
    excess = per_call - args.latency
    if excess > 0.02:
        print(f"note: each call costs {1000 * excess:.0f} ms beyond L before any client concurrency matters; "
              "the bound assumes calls cost exactly L")
    figures: dict[str, object] = {f"efficiency_c{c_top}": round(eff, 3), "speedup_vs_4_inflight": round(speedup, 2)}
    if fleet is not None:
        fleet_eff = top_bound / fleet[0].wall_s
        print(f"C={c_top} over {args.endpoints} endpoints: efficiency {fleet_eff:.3f} against {eff:.3f} with one "
              f"({fleet_eff / eff:.2f}x); attempts per endpoint {fleet[1]}")
        figures |= {f"efficiency_c{c_top}_{args.endpoints}_endpoints": round(fleet_eff, 3),
                    "calls_per_endpoint": fleet[1]}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
