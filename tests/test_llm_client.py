"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1, through the real `openai` package."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ropd.config import LimitsConfig, RoleConfig
from ropd.llm.base import ChatRequest, ChatResult
from ropd.llm.breaker import BreakerState
from ropd.llm.cache import CallCache
from ropd.llm.errors import ErrorType, LLMError
from ropd.llm.limits import CallLimiter
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.llm.structured import complete_structured
from ropd.rubric.prompts import render_verifier, verdict_json_schema
from ropd.rubric.schema import Rubric, VerdictSheet
from ropd.testing.server import Fail, Hang, RawBody, Reply, Reset, ScriptedServer
from tests.conftest import run

MakeChat = Callable[..., OpenAICompatChat]


def req(chat: OpenAICompatChat, text: str = "hello", **kw: object) -> ChatRequest:
    return ChatRequest.for_role(chat.role, chat.config, [{"role": "user", "content": text}], **kw)


def test_normal_response(make_chat: MakeChat, server: ScriptedServer) -> None:
    chat = make_chat("teacher")
    res = run(chat.complete(req(chat, "What is 2 and 3?")))
    assert "Answer: 5" in res.content
    assert res.finish_reason == "stop" and res.tokens_out and not res.cached
    assert server.served() == 1


def test_repeat_is_served_from_cache_even_after_reopen(make_chat: MakeChat, server: ScriptedServer,
                                                       tmp_path: Path) -> None:
    chat = make_chat("teacher")
    first = run(chat.complete(req(chat)))
    again = run(chat.complete(req(chat)))
    assert again.cached and again.content == first.content
    assert server.received() == 1
    # a new process opening the same file: still no call
    cache2 = CallCache(chat.cache.path)  # type: ignore[union-attr]
    chat2 = OpenAICompatChat("teacher", chat.config, cache=cache2)
    assert run(chat2.complete(req(chat2)), chat2).cached
    assert server.received() == 1 and chat2.calls_sent == 0
    # a different request (other seed) is a different entry
    run(chat.complete(req(chat, seed=1)))
    assert server.received() == 2


def test_429_with_retry_after_is_honoured(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Fail(429, headers={"Retry-After": "0.6"}))
    chat = make_chat("teacher", backoff_initial_s=0.0, backoff_max_s=0.0)
    t0 = time.monotonic()
    res = run(chat.complete(req(chat)))
    assert time.monotonic() - t0 >= 0.6
    assert "Answer" in res.content and server.received() == 2


def test_429_without_retry_after_backs_off(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Fail(429), times=2)
    chat = make_chat("teacher")
    assert "Answer" in run(chat.complete(req(chat))).content
    assert server.received() == 3


def test_429_exhausted_is_rate_limit(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Fail(429), times=-1)
    chat = make_chat("teacher", max_retries=2, breaker_threshold=10)
    with pytest.raises(LLMError) as info:
        run(chat.complete(req(chat)))
    assert info.value.type is ErrorType.RATE_LIMIT and server.received() == 3


def test_500_is_retried_then_succeeds(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Fail(500))
    server.push(Fail(503))
    chat = make_chat("teacher")
    assert "Answer" in run(chat.complete(req(chat))).content
    assert server.received() == 3


def test_4xx_is_not_retried(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Fail(401, body='{"error": {"message": "bad key"}}'))
    chat = make_chat("teacher")
    with pytest.raises(LLMError) as info:
        run(chat.complete(req(chat)))
    assert info.value.type is ErrorType.HTTP and info.value.status_code == 401 and server.received() == 1


def test_timeout_is_classified_and_retried(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Hang(3.0))
    chat = make_chat("teacher", timeout_s=0.4, max_retries=0)
    with pytest.raises(LLMError) as info:
        run(chat.complete(req(chat)))
    assert info.value.type is ErrorType.TIMEOUT
    server.push(Hang(3.0))
    chat = make_chat("teacher", timeout_s=0.4, max_retries=1)
    assert "Answer" in run(chat.complete(req(chat, "other"))).content


def test_connection_reset_mid_body(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Reset())
    chat = make_chat("teacher", max_retries=0)
    with pytest.raises(LLMError) as info:
        run(chat.complete(req(chat)))
    assert info.value.type is ErrorType.HTTP and info.value.retryable
    server.push(Reset())
    chat = make_chat("teacher", max_retries=1)
    assert "Answer" in run(chat.complete(req(chat, "again"))).content


@pytest.mark.parametrize("body", [b"", b"<html>bad gateway</html>", b'{"unexpected": true}'])
def test_empty_or_broken_body_is_http_error(make_chat: MakeChat, server: ScriptedServer, body: bytes) -> None:
    server.push(RawBody(body), times=-1)
    chat = make_chat("teacher", max_retries=1, breaker_threshold=10)
    with pytest.raises(LLMError) as info:
        run(chat.complete(req(chat)))
    assert info.value.type is ErrorType.HTTP


RUBRIC = Rubric.model_validate({"criteria": [
    {"id": f"c{i}", "category": "reasoning_quality", "text": f"C{i}", "points": 1} for i in range(4)
]})


def verify(chat: OpenAICompatChat, answers: list[str]) -> list[list[bool]]:
    messages = render_verifier("Q?", RUBRIC, answers)
    request = ChatRequest.for_role(chat.role, chat.config, messages, json_schema=verdict_json_schema(len(answers), 4),
                                   schema_name="ropd_verdicts")
    return run(complete_structured(chat, request, lambda d: VerdictSheet.model_validate(d).matrix(len(answers), 4),
                                   stage="verify"), chat)


def sheet(n: int, k: int = 4) -> str:
    return json.dumps({"answers": {f"a{i + 1}": [True] * k for i in range(n)}})


def test_malformed_json_is_repaired(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Reply('{"answers": {"a1": [tru'))
    server.push(Reply(sheet(2)))
    chat = make_chat()
    assert verify(chat, ["a", "b"]) == [[True] * 4, [True] * 4]
    # the repair request shows the model its own bad reply and the reason
    assert server.received() == 2


def test_malformed_json_exhausts_repairs(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Reply("no json here"), times=-1)
    chat = make_chat(max_repairs=2)
    with pytest.raises(LLMError) as info:
        verify(chat, ["a", "b"])
    assert (info.value.stage, info.value.type) == ("verify", ErrorType.PARSE)
    assert server.received() == 3


def test_wrong_schema_is_schema_error(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Reply('{"answers": {"a1": ["yes", "no", "yes", "no"]}}'), times=-1)
    with pytest.raises(LLMError) as info:
        verify(make_chat(max_repairs=0), ["a"])
    assert info.value.type is ErrorType.SCHEMA and "JSON boolean" in info.value.message


def test_wrong_answer_count_is_validation_error(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Reply(sheet(2)), times=-1)  # schema-valid, but 3 answers were asked for
    with pytest.raises(LLMError) as info:
        verify(make_chat(max_repairs=1), ["a", "b", "c"])
    assert info.value.type is ErrorType.VALIDATION and "1..3" in info.value.message
    assert server.received() == 2


def test_wrong_verdict_length_is_validation_error(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Reply(sheet(2, k=3)), times=-1)
    with pytest.raises(LLMError) as info:
        verify(make_chat(max_repairs=0), ["a", "b"])
    assert info.value.type is ErrorType.VALIDATION and "expected 4" in info.value.message


def test_finish_reason_length_is_parse_error(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Reply(sheet(1), finish_reason="length"), times=-1)
    with pytest.raises(LLMError) as info:
        verify(make_chat(max_repairs=0), ["a"])
    assert info.value.type is ErrorType.PARSE and "finish_reason=length" in info.value.message


def test_circuit_breaker_opens_and_recovers(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Fail(503), times=-1)
    chat = make_chat("rubricator", max_retries=10, breaker_threshold=3, breaker_reset_s=0.5)
    with pytest.raises(LLMError) as info:
        run(chat.complete(req(chat)))
    assert info.value.type is ErrorType.CIRCUIT_OPEN
    assert server.received() == 3  # the breaker stopped the retries after three failures
    with pytest.raises(LLMError) as info:  # still open: fails fast, no request
        run(chat.complete(req(chat, "second")))
    assert info.value.type is ErrorType.CIRCUIT_OPEN and server.received() == 3
    server.clear()
    time.sleep(0.6)
    assert "Answer" in run(chat.complete(req(chat, "third"))).content  # half-open probe succeeds
    assert chat.breaker.state is BreakerState.CLOSED
    assert chat.breaker.transitions == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_breakers_are_per_role(make_chat: MakeChat, server: ScriptedServer) -> None:
    server.push(Fail(503), kind="teacher", times=-1)
    teacher = make_chat("teacher", max_retries=5, breaker_threshold=2)
    verifier = make_chat("verifier", max_retries=0)
    with pytest.raises(LLMError):
        run(teacher.complete(req(teacher)))
    assert teacher.breaker.state is BreakerState.OPEN
    assert verify(verifier, ["Answer: 1"])  # the verifier's circuit is untouched
    assert verifier.breaker.state is BreakerState.CLOSED


def test_json_schema_rejected_falls_back_to_json_object(tmp_path: Path) -> None:
    with ScriptedServer(reject_json_schema=True) as srv:
        cfg = RoleConfig(base_url=srv.base_url, api_key_env=None)
        chat = OpenAICompatChat("verifier", cfg)
        assert verify(chat, ["Answer: 3"]) and len(srv.log) == 2
        assert [e["action"] for e in srv.log] == ["reject_json_schema", "Reply"]
        verify(chat, ["Answer: 4"])  # the downgrade is remembered: no second rejection
        assert len(srv.log) == 3


def test_concurrent_rejections_step_down_once() -> None:
    """Eight calls refused json_schema at once move the ladder one step (json_object), not eight."""
    with ScriptedServer(reject_json_schema=True) as srv:
        chat = OpenAICompatChat("teacher", RoleConfig(base_url=srv.base_url, api_key_env=None))

        async def many() -> list[ChatResult]:
            return list(await asyncio.gather(*(chat.complete(req(chat, f"q{i}", json_schema={"type": "object"}))
                                               for i in range(8))))

        results = run(many(), chat)
        assert {r.response_format for r in results} == {"json_object_schema"}
        assert [e["action"] for e in srv.log].count("reject_json_schema") == 8


def test_llamacpp_500_format_refusal_steps_down_once_to_its_dialect() -> None:
    """llama.cpp's server answers `json_schema` with a 500 naming the format: that is a refusal to step down
    from, once and for the run, to its schema-in-`json_object` dialect; not a fault to retry until the
    breaker opens."""
    with ScriptedServer(llamacpp_formats=True) as srv:
        chat = OpenAICompatChat("verifier", RoleConfig(base_url=srv.base_url, api_key_env=None,
                                                       backoff_initial_s=0.01))
        assert verify(chat, ["Answer: 3"]) and verify(chat, ["Answer: 4"])
        assert [(e["action"], e["format"]) for e in srv.log] == [
            ("llamacpp_500", "json_schema"), ("Reply", "json_object+schema"), ("Reply", "json_object+schema")]
        assert chat.breaker.state is BreakerState.CLOSED
        srv.push(Fail(500))  # a 500 that does not name the format is still a server fault, retried
        assert verify(chat, ["Answer: 5"]) and srv.log[-2]["action"] == "Fail"


def test_unset_sampling_settings_are_not_sent(make_chat: MakeChat, server: ScriptedServer) -> None:
    chat = make_chat("teacher", temperature=None, top_p=None)
    run(chat.complete(req(chat)))
    assert {"model", "messages", "max_tokens"} <= set(server.log[-1]["params"])
    assert not {"temperature", "top_p", "reasoning_effort"} & set(server.log[-1]["params"])


def test_limiter_caps_calls_in_flight(server: ScriptedServer, cache: CallCache) -> None:
    server.latency = 0.1
    limiter = CallLimiter(LimitsConfig(max_in_flight=3))
    chat = OpenAICompatChat("teacher", RoleConfig(base_url=server.base_url, api_key_env=None), limiter=limiter)

    async def many() -> None:
        await asyncio.gather(*(chat.complete(req(chat, f"q {i}")) for i in range(9)))

    run(many(), chat)
    assert limiter.peak_in_flight == 3 and server.served() == 9


def test_secret_never_reaches_the_cache(server: ScriptedServer, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "sk-canary-7d1f0c5e9b2a4c88"
    monkeypatch.setenv("ROPD_TEST_KEY", canary)
    cache = CallCache(tmp_path / "c.sqlite")
    chat = OpenAICompatChat("teacher", RoleConfig(base_url=server.base_url, api_key_env="ROPD_TEST_KEY"),
                            cache=cache)
    server.push(Fail(500))
    run(chat.complete(req(chat)), chat)
    cache.close()
    assert server.log[-1]["auth"]  # the key was sent to the server...
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert canary.encode() not in blob  # ...and stored nowhere
    assert canary not in req(chat).canonical()


def test_key_from_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROPD_DOTENV_KEY", raising=False)
    (tmp_path / ".env").write_text("ROPD_DOTENV_KEY=from-file\n")
    cfg = RoleConfig(api_key_env="ROPD_DOTENV_KEY")
    assert cfg.api_key(tmp_path / ".env") == "from-file"
    monkeypatch.setenv("ROPD_DOTENV_KEY", "from-env")
    assert cfg.api_key(tmp_path / ".env") == "from-env"


def test_no_endpoint_and_no_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROPD_MISSING_KEY", raising=False)
    with pytest.raises(ValueError, match=r"role 'verifier'.*ROPD_MISSING_KEY"):
        OpenAICompatChat("verifier", RoleConfig(api_key_env="ROPD_MISSING_KEY"))


def test_failed_attempts_are_recorded_not_served(make_chat: MakeChat, server: ScriptedServer,
                                                 cache: CallCache) -> None:
    server.push(Fail(400, body='{"error": {"message": "nope"}}'))
    chat = make_chat("teacher")
    with pytest.raises(LLMError):
        run(chat.complete(req(chat)))
    assert cache.count("error") == 1 and cache.count("ok") == 0
    assert "Answer" in run(chat.complete(req(chat))).content  # retried on the next run, not replayed
    assert cache.count("ok") == 1 and cache.count() == 1


def test_cache_usage_per_role(make_chat: MakeChat, server: ScriptedServer, cache: CallCache) -> None:
    chat = make_chat("teacher")
    run(chat.complete(req(chat, "a")))
    run(chat.complete(req(chat, "b")))
    u = cache.usage()["teacher"]
    assert u["calls"] == 2 and u["ok"] == 2 and u["tokens_out"] > 0
