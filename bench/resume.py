"""Kill -9 half-way through a judge run, resume it, and count what the endpoint was asked to do twice.

The call cache promises that a paid call is never paid for again: each response is written the
moment it arrives, so after a crash the rerun sends only what is missing. This checks the promise
end to end with real processes: a child runs the engine over G groups and SIGKILLs itself once half
of the expected calls are cached; a second child reruns to completion with the same cache file.
The server's request log, split at the boundary between the two runs, says which calls were served
in each run.

    .venv/bin/python bench/resume.py [--groups 64] [--latency 0.2] [--concurrency 16]

The last stdout line is one JSON object:
{"calls_first": a, "calls_second": b, "repeated": r, "distinct": d, "lost_in_transit": t}.
Target: repeated == 0 and a + b == distinct.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import make_groups, make_judges, read_log, start_server, stop_server

from ropd.config import EngineConfig
from ropd.llm.base import run_closing
from ropd.llm.cache import CallCache
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.rubric.engine import score_groups

# -- child: one engine run, optionally killed -----------------------------------------------------


def _kill_when_cached(cache: CallCache, target: int, poll_s: float = 0.01) -> None:
    """Watcher thread: SIGKILL this process once `target` successful calls are in the cache.

    SIGKILL, not an exception: nothing gets to flush, close or clean up, as with an OOM kill or a
    pre-empted node.
    """
    while cache.count("ok") < target:
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGKILL)


async def _run_engine(rubricator: OpenAICompatChat, verifier: OpenAICompatChat, cache: CallCache,
                      groups: int) -> dict:
    t0 = time.perf_counter()
    results = await score_groups(make_groups(groups), rubricator, verifier, EngineConfig())
    return {
        "groups": len(results),
        "ok": sum(r.ok for r in results),
        "errors": sorted({f"{r.error.stage}/{r.error.type}" for r in results if r.error is not None}),
        "calls_sent": rubricator.calls_sent + verifier.calls_sent,
        "cache_hits": cache.hits,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def child(args: argparse.Namespace) -> None:
    """Run the engine once against `--base-url` with the cache at `--cache`; print a JSON summary."""
    cache = CallCache(args.cache)
    if args.kill_at > 0:
        threading.Thread(target=_kill_when_cached, args=(cache, args.kill_at), daemon=True).start()
    try:
        rubricator, verifier, _ = make_judges(args.base_url, args.concurrency, cache)
        summary = run_closing(_run_engine(rubricator, verifier, cache, args.groups), rubricator, verifier)
    finally:
        cache.close()
    print(json.dumps(summary), flush=True)


# -- parent: orchestrate, then count from the server's log ------------------------------------------


def _spawn_child(base_url: str, cache: Path, groups: int, concurrency: int, kill_at: int) -> tuple[int, dict | None]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--base-url", base_url, "--cache", str(cache),
           "--groups", str(groups), "--concurrency", str(concurrency), "--kill-at", str(kill_at)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.stderr.strip():
        print(proc.stderr.rstrip(), file=sys.stderr)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else None)


def _settled_line_count(log: Path, quiet_s: float) -> int:
    """Line count of the log once it has not grown for `quiet_s` (aborted requests are still being logged)."""
    count, since = len(read_log(log)), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.05)
        now = len(read_log(log))
        if now != count:
            count, since = now, time.monotonic()
    return count


def _ok_rows(cache_path: Path) -> int:
    cache = CallCache(cache_path)
    try:
        return cache.count("ok")
    finally:
        cache.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2, help="server seconds per call (L)")
    ap.add_argument("--concurrency", type=int, default=16, help="max_in_flight")
    ap.add_argument("--kill-fraction", type=float, default=0.5,
                    help="run 1 kills itself once this fraction of the expected calls is cached")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base-url", help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--kill-at", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return

    expected = 2 * args.groups  # one rubric and one verifier call per group (6 short answers fit one chunk)
    kill_at = max(1, min(expected - 1, round(expected * args.kill_fraction)))
    with tempfile.TemporaryDirectory(prefix="ropd-resume-") as tmp:
        log, cache, server_err = Path(tmp) / "served.jsonl", Path(tmp) / "calls.sqlite", Path(tmp) / "server.err"
        proc, base_url = start_server(args.latency, log, stderr_path=server_err)
        try:
            print(f"server {base_url}  G={args.groups}, {expected} distinct calls expected, L={args.latency}s, "
                  f"C={args.concurrency}; run 1 kills itself at {kill_at} cached calls")
            rc1, first = _spawn_child(base_url, cache, args.groups, args.concurrency, kill_at)
            if rc1 != -signal.SIGKILL:
                raise RuntimeError(f"run 1 was not killed (exit {rc1}, summary {first})")
            boundary = _settled_line_count(log, quiet_s=2 * args.latency + 0.2)
            cached_after_first = _ok_rows(cache)
            rc2, second = _spawn_child(base_url, cache, args.groups, args.concurrency, 0)
            if rc2 != 0 or second is None:
                raise RuntimeError(f"run 2 failed (exit {rc2})")
            total_lines = _settled_line_count(log, quiet_s=0.2)
        finally:
            stop_server(proc)
        rows = read_log(log)[:total_lines]
        cached_final = _ok_rows(cache)
        server_tracebacks = server_err.read_text(errors="replace").count("Traceback")

    run1, run2 = rows[:boundary], rows[boundary:]
    served1 = [r["key"] for r in run1 if r["served"]]
    served2 = [r["key"] for r in run2 if r["served"]]
    keys1, keys2 = set(served1), set(served2)
    aborted1 = sum(1 for r in run1 if not r["served"])
    calls_first, calls_second = len(served1), len(served2)
    repeated, distinct = len(keys1 & keys2), len(keys1 | keys2)
    lost = calls_first - cached_after_first  # served to run 1 but never written to its cache
    complete = second["ok"] == second["groups"] == args.groups

    print(f"run 1 (SIGKILLed): {calls_first} calls served, {aborted1} aborted by the server when the client died, "
          f"{cached_after_first} in the cache, lost in transit {lost}")
    print(f"run 2 (resumed):   {calls_second} calls served, {second['cache_hits']} cache hits, "
          f"{second['calls_sent']} sent, {second['seconds']:.2f}s")
    if server_tracebacks:
        print(f"warning: server stderr has {server_tracebacks} traceback(s) (expected 0)")
    print(f"repeated keys (served in both runs) {repeated}; distinct served keys {distinct} (expected {expected}); "
          f"cache rows ok {cached_final}/{expected}")
    if len(served1) != len(keys1) or len(served2) != len(keys2):
        print("warning: a key was served twice within one run (a retry?)")
    if repeated != lost:
        print(f"warning: repeated ({repeated}) != lost in transit ({lost}); every lost response should be resent")
    print(f"final results: {second['ok']}/{second['groups']} groups ok"
          f"{'' if complete else ' — INCOMPLETE, errors: ' + ', '.join(second['errors'])}")
    print(f"target repeated == 0 and calls_first + calls_second == distinct: "
          f"{'met' if repeated == 0 and calls_first + calls_second == distinct else 'NOT met'}")
    print(json.dumps({"calls_first": calls_first, "calls_second": calls_second, "repeated": repeated,
                      "distinct": distinct, "lost_in_transit": lost}))
    if not complete:
        sys.exit(1)


if __name__ == "__main__":
    main()
