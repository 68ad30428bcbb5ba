"""Several endpoints per role (`base_urls`): the least-loaded healthy server takes each call, a dead one's
calls move to the others, and the role fails only when every endpoint's circuit is open."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from ropd.config import LimitsConfig, RoleConfig
from ropd.data.prompts import load_sample
from ropd.llm.base import ChatRequest
from ropd.llm.breaker import BreakerState
from ropd.llm.cache import CallCache
from ropd.llm.endpoints import EndpointPool
from ropd.llm.errors import ErrorType, LLMError
from ropd.llm.limits import CallLimiter
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.params import ConfigError, load_params
from ropd.rubric.engine import Group, GroupResult, score_groups
from ropd.testing.server import Reset, ScriptedServer
from tests.conftest import FAST, run


def fleet_chat(role: str, urls: list[str], cache: CallCache | None, limiter: CallLimiter,
               **overrides: object) -> OpenAICompatChat:
    cfg = RoleConfig(base_urls=urls, api_key_env=None, **{**FAST, **overrides})
    return OpenAICompatChat(role, cfg, cache=cache, limiter=limiter)


def twelve_groups() -> list[Group]:
    """The shipped sample twice over, each copy's question distinct so no two calls share a cache entry."""
    return [Group(group_id=f"{g.prompt_id}-{k}", question=f"{g.question} (copy {k})", teacher=g.solutions,
                  student=g.student) for k in range(2) for g in load_sample()]


def kill(srv: ScriptedServer) -> None:
    """The server goes down: new connections are refused and requests on open keep-alive connections
    are reset (`stop()` alone closes the listener but lets open connections keep being served)."""
    srv.push(Reset(), times=-1)
    srv.stop()


def test_a_dead_endpoint_mid_stage_fails_no_group(cache: CallCache) -> None:
    with ScriptedServer(latency=0.05) as a, ScriptedServer(latency=0.05) as b, ScriptedServer(latency=0.05) as c:
        urls = [a.base_url, b.base_url, c.base_url]
        limiter = CallLimiter(LimitsConfig(max_in_flight=16))
        rub = fleet_chat("rubricator", urls, cache, limiter, temperature=0.7)
        ver = fleet_chat("verifier", urls, cache, limiter)
        groups = twelve_groups()

        async def stage() -> list[GroupResult]:
            async def killer() -> None:
                while a.served() < 2:  # some of this stage's calls were served by `a` before it dies
                    await asyncio.sleep(0.005)
                kill(a)

            watch = asyncio.create_task(killer())
            try:
                return await score_groups(groups, rub, ver)
            finally:
                watch.cancel()

        results = run(stage(), rub, ver)
        total = 2 * len(groups)
        assert [r.error for r in results if not r.ok] == []
        assert b.served() > 0 and c.served() > 0
        assert 2 <= a.served() < total and a.served() + b.served() + c.served() == total
        # calls really went to the dead endpoint (refused or reset), and survivors answered every one of them
        assert rub.pool.endpoints[0].failed + ver.pool.endpoints[0].failed > 0


def test_least_loaded_endpoint_takes_the_next_call() -> None:
    cfg = RoleConfig(base_urls=["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1", "http://127.0.0.1:3/v1"],
                     api_key_env=None, breaker_threshold=2, breaker_reset_s=60)
    pool = EndpointPool.for_role("verifier", cfg)
    e0, e1, e2 = pool.endpoints
    calls = [pool.route() for _ in range(3)]
    assert [c.__enter__() for c in calls] == [e0, e1, e2]  # equally loaded: in turn
    calls[1].__exit__(None, None, None)  # e1's call returns; e0 and e2 still busy
    assert pool.pick() is e1  # the least loaded, though it is e0's turn
    with ExitStack() as more:
        assert more.enter_context(pool.route()) is e1
        assert [e.in_flight for e in pool.endpoints] == [1, 1, 1]
        assert more.enter_context(pool.route()) is e2  # a tie again: the turn, which moved past e1
        assert pool.pick(tried={0}) is e1  # a retry avoids the endpoint that failed it, though its turn
        assert pool.pick(tried={0, 1, 2}) is e0  # every one failed it: the least loaded of all (e2 has 2)
    calls[0].__exit__(None, None, None)
    calls[2].__exit__(None, None, None)
    assert [(e.in_flight, e.sent) for e in pool.endpoints] == [(0, 1), (0, 2), (0, 2)]
    for _ in range(2):
        e1.record_failure()
    assert e1.breaker.state is BreakerState.OPEN
    picks = []
    for _ in range(4):
        with pool.route() as ep:
            picks.append(ep)
    assert e1 not in picks and set(picks) == {e0, e2}  # an open breaker takes no calls, however idle


def test_all_endpoints_down_is_circuit_open(cache: CallCache) -> None:
    down = [ScriptedServer().start(), ScriptedServer().start()]
    urls = [s.base_url for s in down]
    for s in down:
        s.stop()  # nothing listens there any more: connection refused
    chat = fleet_chat("verifier", urls, cache, CallLimiter(), max_retries=6, breaker_threshold=1)
    request = ChatRequest.for_role("verifier", chat.config, [{"role": "user", "content": "anyone there?"}])
    with pytest.raises(LLMError) as info:
        run(chat.complete(request), chat)
    assert info.value.type is ErrorType.CIRCUIT_OPEN and "all 2 endpoints" in info.value.message
    # one attempt on each endpoint opened its breaker; the retries stopped there instead of running to six
    assert [(e.sent, e.failed, e.breaker.state) for e in chat.pool.endpoints] == [(1, 1, BreakerState.OPEN)] * 2


def test_the_url_is_not_part_of_the_cache_key(cache: CallCache) -> None:
    with ScriptedServer() as a, ScriptedServer() as b:
        limiter = CallLimiter()
        first = fleet_chat("verifier", [a.base_url], cache, limiter)
        second = fleet_chat("verifier", [b.base_url, a.base_url], cache, limiter)
        request = ChatRequest.for_role("verifier", first.config, [{"role": "user", "content": "same call"}])
        paid, replayed = run(first.complete(request), first), run(second.complete(request), second)
        assert replayed.content == paid.content and replayed.call_id == paid.call_id
        assert a.received() == 1 and b.received() == 0 and second.calls_sent == 0


@pytest.mark.parametrize(("block", "needle"), [
    ({"base_urls": ["http://127.0.0.1:8000/v1", "127.0.0.1:8001/v1"]},
     "verifier: Value error, base_urls[1] '127.0.0.1:8001/v1' is not http(s)://host[:port]/path"),
    ({"base_urls": ["ftp://judges.example/v1"]}, "verifier: Value error, base_urls[0] 'ftp://judges.example/v1'"),
    ({"base_urls": ["http://judge:80000/v1"]}, "verifier: Value error, base_urls[0] 'http://judge:80000/v1'"),
    ({"base_urls": ["http://judge/v1?key=1"]}, "verifier: Value error, base_urls[0] 'http://judge/v1?key=1'"),
    ({"base_urls": ["http://u:sk-hidden@judge/v1"]}, "verifier: Value error, base_urls[0] carries a user or password"),
    ({"base_urls": ["http://a/v1", "http://a/v1"]}, "base_urls[1] 'http://a/v1' is listed twice"),
    ({"base_urls": []}, "verifier: Value error, base_urls is empty"),
    ({"base_url": "http://a/v1", "base_urls": ["http://b/v1"]}, "verifier: Value error, base_url and base_urls are "
                                                                "both set"),
], ids=["no_scheme", "ftp", "bad_port", "query", "credentials", "twice", "empty", "both_set"])
def test_bad_base_urls_name_the_role_and_entry_in_one_line(block: dict, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"verifier": {"provider": "openai", **block}}))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert needle in message and "\n" not in message and "sk-hidden" not in message, message
