"""Shared set-up for the benchmarks: the stand-in server in its own process, and synthetic groups.

The server runs as a separate process so that its request threads never compete with the client
for one GIL; the figures then measure the client, as they would against a remote endpoint.
"""

from __future__ import annotations

import argparse
import json
import selectors
import subprocess
import sys
from pathlib import Path

from ropd.config import LimitsConfig, RoleConfig
from ropd.llm.cache import CallCache
from ropd.llm.limits import CallLimiter
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.rubric.engine import Group

REPO = Path(__file__).resolve().parent.parent


def study_args(doc: str, presets: list[str], what: str, choices: list[str],
               params_help: str) -> tuple[argparse.Namespace, list[str]]:
    """The study benches' command line (--preset, --<what> a comma-separated subset of `choices`, --params,
    --work, --out), and the chosen subset in order."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(presets), default="small")
    ap.add_argument(f"--{what}", default=",".join(choices), help="comma-separated subset of " + ",".join(choices))
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml", help=params_help)
    ap.add_argument("--work", type=Path, default=REPO / "data" / "bench", help="runs, models and call caches")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results", help="where the JSON and PNG go")
    args = ap.parse_args()
    chosen = [c.strip() for c in getattr(args, what).split(",") if c.strip()]
    if unknown := set(chosen) - set(choices):
        ap.error(f"unknown {what} {sorted(unknown)}; choose from {', '.join(choices)}")
    return args, chosen


def start_server(latency: float, log_path: Path | None = None, *, stderr_path: Path | None = None,
                 timeout_s: float = 30.0, noise: float = 0.0) -> tuple[subprocess.Popen, str]:
    """Start `python -m ropd.testing.server` on a free loopback port; return the process and its base URL.

    `stderr_path` collects the server's stderr (any tracebacks from its request threads) instead of
    interleaving it with the benchmark's own output.
    """
    args = ["--port", "0", "--latency", str(latency), "--noise", str(noise)]
    if log_path is not None:
        args += ["--log", str(log_path)]
    cmd = [sys.executable, "-u", "-m", "ropd.testing.server", *args]
    err = stderr_path.open("ab") if stderr_path is not None else None  # None: inherit ours
    try:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    finally:
        if err is not None:
            err.close()  # the child holds its own copy
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(timeout_s)
    sel.close()
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith("http://127.0.0.1:"):
        stop_server(proc)
        raise RuntimeError(f"server did not announce a loopback URL within {timeout_s}s (got {line!r})")
    return proc, line


def stop_server(proc: subprocess.Popen) -> None:
    """Kill the server process we started (by its own handle) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


def role_configs(base_url: str) -> tuple[RoleConfig, RoleConfig]:
    """Rubricator and verifier settings as in `ropd demo`, pointed at the local server, no key needed."""
    rubricator = RoleConfig(base_url=base_url, api_key_env=None, temperature=0.7, max_tokens=2048)
    verifier = RoleConfig(base_url=base_url, api_key_env=None, temperature=0.0, max_tokens=2048)
    return rubricator, verifier


def make_judges(base_url: str, max_in_flight: int, cache: CallCache | None = None,
                ) -> tuple[OpenAICompatChat, OpenAICompatChat, CallLimiter]:
    """A rubricator and a verifier client sharing one in-flight limiter (and `cache`, if given)."""
    rub_cfg, ver_cfg = role_configs(base_url)
    limiter = CallLimiter(LimitsConfig(max_in_flight=max_in_flight))
    rubricator = OpenAICompatChat("rubricator", rub_cfg, cache=cache, limiter=limiter)
    verifier = OpenAICompatChat("verifier", ver_cfg, cache=cache, limiter=limiter)
    return rubricator, verifier, limiter


_NAMES = ["Mia", "Omar", "Lena", "Ravi", "Zoe", "Kofi", "Ines", "Tariq"]
_ITEMS = ["pencils", "apples", "stickers", "marbles", "cookies", "cards", "shells", "stamps"]


def make_groups(n: int) -> list[Group]:
    """`n` distinct arithmetic word problems, 2 teacher and 4 student answers each, sample-sized texts.

    Every number depends on the group index, so every rubric and verifier request is distinct and no
    two requests can share a cache entry or a server log key.
    """
    groups = []
    for i in range(n):
        name, item = _NAMES[i % len(_NAMES)], _ITEMS[(i // len(_NAMES)) % len(_ITEMS)]
        packs, per, given = 2 + i % 7, 10 + i, 1 + (7 * i) % 9
        total = packs * per
        left = total - given
        question = (f"{name} buys {packs} packs of {item} with {per} {item} in each pack. "
                    f"{name} gives {given} {item} to a friend. How many {item} are left?")
        teacher = [
            f"{item.capitalize()} bought: {packs} * {per} = {total}\nAfter giving some away: "
            f"{total} - {given} = {left}\nAnswer: {left}",
            f"Each pack has {per}, so {packs} packs hold {packs} * {per} = {total} {item}. "
            f"Giving away {given} leaves {total} - {given} = {left}.\nAnswer: {left}",
        ]
        student = [
            f"{packs} * {per} = {total}\n{total} - {given} = {left}\nAnswer: {left}",
            f"{packs} + {per} = {packs + per}, then {packs + per} - {given} = {packs + per - given}.\n"
            f"Answer: {packs + per - given}",
            f"I think there are maybe {left} {item} left.",
            f"{packs} * {per} = {total}. {total} - {given} = {left + 1}.\nAnswer: {left + 1}",
        ]
        groups.append(Group(group_id=f"g{i:04d}", question=question, teacher=teacher, student=student))
    return groups


def read_log(path: Path) -> list[dict]:
    """The server's JSON-lines request log (one object per request), tolerating a torn last line."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
