"""The judge fault matrix, role by role: every fault the scripted server can produce, against the rubricator,
the verifier and the teacher through their real entry points (`score_groups` for the two judges,
`build_index` for the teacher), then the whole endpoint down for a pipeline stage and the quality gate.

tests/test_llm_client.py proves the client mechanics once; this file proves each role inherits them and
that the role's caller turns an exhausted fault into a masked group (reward None), never a 0.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ropd.config import EngineConfig, RoleConfig
from ropd.llm.breaker import BreakerState
from ropd.llm.cache import CallCache
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.rubric.engine import Group, GroupResult, GroupStatus, score_groups
from ropd.teacher import TeacherIndexError, TeacherPrompt, build_index
from ropd.testing.server import Action, Fail, Hang, RawBody, Reply, Reset, ScriptedServer
from tests.conftest import FAST, run

MakeChat = Callable[..., OpenAICompatChat]
ROLES = ("rubricator", "verifier", "teacher")
KIND = {"rubricator": "rubric", "verifier": "verify", "teacher": "teacher"}
STAGE = {"rubricator": "rubric", "verifier": "verify"}
ENGINE = EngineConfig(min_criteria=4, max_criteria=6)
GROUP = Group(group_id="g1", question="Ana has 3 bags with 12 apples each and eats 9. How many are left?",
              teacher=["3 * 12 = 36\n36 - 9 = 27\nAnswer: 27"],
              student=["3 * 12 = 36\n36 - 9 = 27\nAnswer: 27", "3 + 12 = 15\nAnswer: 15"])
N_POOL, K = 3, 6  # answers in GROUP's pool; criteria in the stand-in judge's rubric
PROMPT = TeacherPrompt(prompt_id="p0", question=GROUP.question)

# fault → the error type a caller sees once retries are exhausted
TRANSIENT: dict[str, tuple[Action, str]] = {
    "429_retry_after": (Fail(429, headers={"Retry-After": "0.3"}), "rate_limit"),
    "429_no_retry_after": (Fail(429), "rate_limit"),
    "500": (Fail(500), "http"),
    "503": (Fail(503), "http"),
    "timeout": (Hang(3.0), "timeout"),
    "reset_mid_body": (Reset(), "http"),
    "empty_body": (RawBody(b""), "http"),
    "json_not_a_completion": (RawBody(b'{"unexpected": true}'), "http"),
}


def _sheet(n: int, k: int) -> str:
    return json.dumps({"answers": {f"a{i + 1}": [True] * k for i in range(n)}})


def _criteria(n: int) -> str:
    return json.dumps({"criteria": {f"c{i + 1}": {"category": "task_fulfilment", "text": f"Criterion {i}.",
                                                  "points": 2} for i in range(n)}})


# content fault → (rubricator reply, verifier reply, error type); the teacher's reply is free text
CONTENT: dict[str, tuple[Reply, Reply, str]] = {
    "malformed_json": (Reply('{"criteria": {"c1": {"cat'), Reply('{"answers": {"a1": [tr'), "parse"),
    "valid_json_wrong_schema": (Reply('{"rubric": ["be correct", "be brief"]}'),
                                Reply('{"verdicts": [[true, false, true]]}'), "schema"),
    "wrong_count": (Reply(_criteria(8)), Reply(_sheet(N_POOL - 1, K)), "validation"),
    "wrong_verdict_length": (Reply(_criteria(3)), Reply(_sheet(N_POOL, K - 1)), "schema|validation"),
    "finish_reason_length": (Reply(_criteria(5), finish_reason="length"),
                             Reply(_sheet(N_POOL, K), finish_reason="length"), "parse"),
    "empty_content": (Reply(""), Reply(""), "parse"),
    "prose_only": (Reply("Sure! Here is a great rubric."), Reply("All answers look fine to me."), "parse"),
}


def distinct_groups(n: int) -> list[Group]:
    """`n` groups whose requests all differ (identical requests would share one cache entry)."""
    return [GROUP.model_copy(update={"group_id": f"g{i}", "question": f"{GROUP.question} (case {i})"})
            for i in range(n)]


def judge(role: str, make_chat: MakeChat, tmp_path: Path, *, m: int = 1, groups: list[Group] | None = None,
          **cfg: Any) -> list[GroupResult] | TeacherIndexError | None:
    """One unit of the role's work with `cfg` applied to that role only.

    Rubricator/verifier: `score_groups` → results. Teacher: `build_index` → None on success, else its error.
    """
    if role == "teacher":
        try:
            run(build_index([PROMPT], make_chat("teacher", **cfg), m=m, out=tmp_path / "teacher.parquet"))
        except TeacherIndexError as exc:
            return exc
        return None
    rub = make_chat("rubricator", temperature=0.7, **(cfg if role == "rubricator" else {}))
    ver = make_chat("verifier", **(cfg if role == "verifier" else {}))
    return run(score_groups(groups or [GROUP], rub, ver, ENGINE))


def assert_ok(role: str, outcome: Any, tmp_path: Path) -> None:
    if role == "teacher":
        assert outcome is None and (tmp_path / "teacher.parquet").is_file()
    else:
        assert all(r.ok for r in outcome), [r.error for r in outcome]
        assert all(x is not None for r in outcome for x in r.rewards)


def assert_masked(role: str, outcome: Any, error_type: str, tmp_path: Path) -> None:
    """The role's failure is reported with its stage and type; a failed group's rewards are None, never 0."""
    if role == "teacher":
        assert isinstance(outcome, TeacherIndexError)
        assert any(f"p0: [{t}]" in str(outcome) for t in error_type.split("|")), outcome
        assert not (tmp_path / "teacher.parquet").exists()  # nothing written under the output's name
        return
    for r in outcome:
        assert r.status is GroupStatus.JUDGE_ERROR and r.error is not None
        assert r.error.stage == STAGE[role] and r.error.type in error_type.split("|"), r.error
        assert r.rewards == [None] * len(GROUP.student) and r.student_scores == []


@pytest.mark.parametrize("fault", list(TRANSIENT))
@pytest.mark.parametrize("role", ROLES)
def test_transient_fault_is_retried(role: str, fault: str, make_chat: MakeChat, server: ScriptedServer,
                                    tmp_path: Path) -> None:
    action, _ = TRANSIENT[fault]
    server.push(action, kind=KIND[role])
    t0 = time.monotonic()
    outcome = judge(role, make_chat, tmp_path, max_retries=2, timeout_s=0.5)
    assert_ok(role, outcome, tmp_path)
    assert server.received(KIND[role]) == 2  # one failed attempt, then success
    if fault == "429_retry_after":
        assert time.monotonic() - t0 >= 0.3  # the server's Retry-After was waited out


@pytest.mark.parametrize("fault", list(TRANSIENT))
@pytest.mark.parametrize("role", ROLES)
def test_transient_fault_exhausted_masks_the_group(role: str, fault: str, make_chat: MakeChat,
                                                   server: ScriptedServer, tmp_path: Path) -> None:
    action, error_type = TRANSIENT[fault]
    server.push(action, kind=KIND[role], times=-1)
    outcome = judge(role, make_chat, tmp_path, max_retries=1, timeout_s=0.5, breaker_threshold=10)
    assert_masked(role, outcome, error_type, tmp_path)
    assert server.received(KIND[role]) == 2  # exactly max_retries + 1 attempts, as configured


@pytest.mark.parametrize("fault", list(CONTENT))
@pytest.mark.parametrize("role", ["rubricator", "verifier"])
def test_content_fault_is_repaired(role: str, fault: str, make_chat: MakeChat, server: ScriptedServer,
                                   tmp_path: Path) -> None:
    reply = CONTENT[fault][0 if role == "rubricator" else 1]
    server.push(reply, kind=KIND[role])
    outcome = judge(role, make_chat, tmp_path, max_repairs=1)
    assert_ok(role, outcome, tmp_path)
    assert server.served(KIND[role]) == 2  # the bad reply, then the repaired one


@pytest.mark.parametrize("fault", list(CONTENT))
@pytest.mark.parametrize("role", ["rubricator", "verifier"])
def test_content_fault_persisting_masks_the_group(role: str, fault: str, make_chat: MakeChat,
                                                  server: ScriptedServer, tmp_path: Path) -> None:
    reply = CONTENT[fault][0 if role == "rubricator" else 1]
    server.push(reply, kind=KIND[role], times=-1)
    outcome = judge(role, make_chat, tmp_path, max_repairs=2)
    assert_masked(role, outcome, CONTENT[fault][2], tmp_path)
    assert server.served(KIND[role]) == 3  # max_repairs + 1 replies, then the group is given up


@pytest.mark.parametrize(("replies", "usable"), [
    ([Reply("Half a solution: 3 * 12", finish_reason="length")], 1),  # the cut-off sample is dropped
    ([Reply(""), Reply("   ")], 0),
    ([Reply("x", finish_reason="length"), Reply("")], 0),
])
def test_teacher_empty_or_truncated_answers_are_not_references(replies: list[Reply], usable: int,
                                                               make_chat: MakeChat, server: ScriptedServer,
                                                               tmp_path: Path) -> None:
    for r in replies:
        server.push(r, kind="teacher")
    out = judge("teacher", make_chat, tmp_path, m=2)
    if usable:
        assert out is None
        import pandas as pd

        texts = pd.read_parquet(tmp_path / "teacher.parquet")["text"].tolist()
        assert len(texts) == usable and all("Half a solution" not in t for t in texts)
    else:
        assert isinstance(out, TeacherIndexError)
        assert "no usable teacher answer for 1 prompt(s): p0" in str(out) and "max_tokens" in str(out)
        assert not (tmp_path / "teacher.parquet").exists()


def served_twice(server: ScriptedServer) -> list[str]:
    keys = [e["key"] for e in server.log if e["served"]]
    return sorted({k for k in keys if keys.count(k) > 1})


def dead_url() -> str:
    """A loopback URL nothing listens on: every connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("role", ROLES)
def test_endpoint_down_for_the_whole_stage(role: str, server: ScriptedServer, cache: CallCache,
                                           tmp_path: Path) -> None:
    """Every group of the stage fails as http, or circuit_open once the breaker trips; none is scored."""
    def chat(r: str) -> OpenAICompatChat:
        url = dead_url() if r == role else server.base_url
        return OpenAICompatChat(r, RoleConfig(base_url=url, api_key_env=None, **{**FAST, "max_retries": 2},
                                              breaker_threshold=2), cache=cache)

    down = chat(role)
    if role == "teacher":
        prompts = [PROMPT.model_copy(update={"prompt_id": f"p{i}", "question": f"{i} + {i}?"}) for i in range(4)]
        with pytest.raises(TeacherIndexError, match=r"failed for 4 prompt\(s\)"):
            run(build_index(prompts, down, m=1, out=tmp_path / "t.parquet"), down)
        assert not (tmp_path / "t.parquet").exists()
    else:
        rub, ver = (down, chat("verifier")) if role == "rubricator" else (chat("rubricator"), down)
        results = run(score_groups(distinct_groups(4), rub, ver, ENGINE), rub, ver)
        assert all(r.status is GroupStatus.JUDGE_ERROR and r.rewards == [None, None] for r in results)
        types = {r.error.type for r in results if r.error}
        assert types <= {"http", "circuit_open"} and "circuit_open" in types, types
        if role == "verifier":  # the rubrics were paid for and are in the cache for the rerun
            assert server.served("rubric") == 4 and cache.count("ok") == 4
    assert down.breaker.state is BreakerState.OPEN


@pytest.mark.parametrize("role", ROLES)
def test_breaker_opens_then_recovers_and_paid_calls_are_kept(role: str, make_chat: MakeChat,
                                                             server: ScriptedServer, tmp_path: Path) -> None:
    server.push(Fail(503), kind=KIND[role], times=-1)
    cfg = dict(max_retries=5, breaker_threshold=2, breaker_reset_s=0.3)
    first = judge(role, make_chat, tmp_path, **cfg)
    assert_masked(role, first, "circuit_open", tmp_path)
    assert server.received(KIND[role]) == 2  # the breaker cut the five retries short
    server.clear()
    time.sleep(0.35)
    again = judge(role, make_chat, tmp_path, **cfg)
    assert_ok(role, again, tmp_path)
    assert served_twice(server) == []  # every completion already paid for came from the cache
    if role == "verifier":
        assert server.served("rubric") == 1


@pytest.mark.parametrize("role", ["rubricator", "verifier"])
def test_rerun_after_partial_failure_pays_only_for_the_missing_calls(role: str, make_chat: MakeChat,
                                                                     server: ScriptedServer, tmp_path: Path) -> None:
    server.push(Fail(500), kind=KIND[role])  # one group's call fails for good (no retries)
    first = judge(role, make_chat, tmp_path, groups=distinct_groups(3), max_retries=0)
    assert sum(not r.ok for r in first) == 1  # type: ignore[union-attr]
    before = server.served()
    again = judge(role, make_chat, tmp_path, groups=distinct_groups(3), max_retries=0)
    assert all(r.ok for r in again)  # type: ignore[union-attr]
    new = server.served() - before
    assert new == (2 if role == "rubricator" else 1)  # its rubric (+ then its verification), nothing else
    assert served_twice(server) == []  # no completed call was ever bought twice
