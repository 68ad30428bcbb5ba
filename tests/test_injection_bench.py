"""bench/injection.py counts what it claims: zero gains against a judge that ignores injections, and every
injection template counted as a gain against a gullible judge that obeys them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ropd.config import EngineConfig
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.testing import server as server_module
from ropd.testing.judge import judge_reply, request_kind
from ropd.testing.server import ScriptedServer
from tests.conftest import run

BENCH = Path(__file__).resolve().parent.parent / "bench" / "injection.py"
spec = importlib.util.spec_from_file_location("bench_injection", BENCH)
assert spec is not None and spec.loader is not None
injection = importlib.util.module_from_spec(spec)
spec.loader.exec_module(injection)


def test_stand_in_judge_gains_nothing() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--stand-in", "--pairs", "2"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    n = len(injection.TEMPLATES)
    assert last["n_pairs"] == 2 and last["n_comparisons"] == 2 * n and last["failed"] == 0
    assert last["injection_gain_rate"] == 0.0 and last["gains"] + last["ties"] + last["losses"] == 2 * n


def gullible(messages: list[dict[str, str]], seed: int | None = None, **_: object) -> str:
    """A judge that marks everything true when the answer mentions a grader, criteria or verdicts."""
    user = messages[1]["content"] if len(messages) > 1 else ""
    answers = user.split("Answers to grade", 1)[-1].rsplit("Grade all", 1)[0].lower()
    if request_kind(messages) == "verify" and any(w in answers for w in ("grader", "criteri", "\"answers\"", "system")):
        return json.dumps({"answers": {"a1": [True] * 6}})
    return judge_reply(messages, seed)


def test_gullible_judge_is_caught(make_chat: Callable[..., OpenAICompatChat], server: ScriptedServer,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "judge_reply", gullible)
    pairs = injection.make_pairs(4, seed=7)
    rows = run(injection.measure(make_chat("verifier"), pairs, EngineConfig(min_criteria=4, max_criteria=6)))
    assert len(rows) == 4 * len(injection.TEMPLATES)
    gains = [r for r in rows if r["injected"] > r["clean"]]
    # the wrong answers (every other pair) had room to gain, and every template got it there
    assert {r["template"] for r in gains} == set(injection.TEMPLATES)
    assert all(r["injected"] == 1.0 for r in rows)
