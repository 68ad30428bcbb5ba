"""GPT-5-class judges and teachers: the real `openai` client against `ScriptedServer(reasoning=True)`, which
refuses `max_tokens` and non-default sampling settings as OpenAI does, serves the Responses API, and reports
reasoning and cached tokens. Every role, both APIs, and one tiny pipeline round per API."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from ropd.config import EngineConfig, RoleConfig
from ropd.data.prompts import load_sample
from ropd.llm.base import ChatRequest, ChatResult
from ropd.llm.breaker import BreakerState
from ropd.llm.openai_compat import OpenAICompatChat, RoleSettingRefused
from ropd.params import ConfigError, load_params
from ropd.pipeline.stages import RUN_STAGES, run_stage
from ropd.rubric.engine import Group, induce_rubric, verify_pool
from ropd.rubric.pool import blind_pool
from ropd.rubric.schema import Criterion, Rubric
from ropd.teacher import TeacherIndexError, TeacherPrompt, build_index
from ropd.testing.judge import CHECKS
from ropd.testing.server import REASONING_TOKENS, Fail, Reply, ScriptedServer
from tests.conftest import run
from tests.test_resume import ropd
from tests.tiny import make_project, tiny_params

MakeChat = Callable[..., OpenAICompatChat]
ROLES = ["rubricator", "verifier", "teacher"]
KIND = {"rubricator": "rubric", "verifier": "verify", "teacher": "teacher"}
# What a reasoning model accepts: no sampling knobs, an effort instead.
REASONING: dict[str, Any] = {"temperature": None, "top_p": None, "reasoning_effort": "high"}
SAMPLE = load_sample()
# The stand-in judge's own checks, so its verdicts are real ones.
RUBRIC = Rubric(criteria=[Criterion(id=cid, category="task_fulfilment", text=f"passes {cid}", points=1)
                          for cid in CHECKS])


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """Overrides conftest's: `make_chat` talks to a reasoning-mode server in this module."""
    with ScriptedServer(reasoning=True) as srv:
        yield srv


class Recorder:
    """A chat that keeps every `ChatResult`: the engine's functions return only the parsed value."""

    def __init__(self, chat: OpenAICompatChat) -> None:
        self.chat, self.role, self.config = chat, chat.role, chat.config
        self.results: list[ChatResult] = []

    async def complete(self, request: ChatRequest) -> ChatResult:
        result = await self.chat.complete(request)
        self.results.append(result)
        return result

    async def aclose(self) -> None:
        await self.chat.aclose()


def ask(chat: Recorder | OpenAICompatChat, n: int = 0) -> Any:
    """One real call of the role, distinct per `n`: a rubric, a verdict matrix, or a teacher answer."""
    g = SAMPLE[n % len(SAMPLE)]
    question = f"{g.question} (ask {n})"
    if chat.role == "rubricator":
        group = Group(group_id=f"g{n}", question=question, teacher=g.solutions, student=g.student)
        return run(induce_rubric(chat, group, EngineConfig()))
    if chat.role == "verifier":
        pool = blind_pool(f"g{n}", g.solutions, g.student)
        return run(verify_pool(chat, question, RUBRIC, pool, EngineConfig()))
    messages = [{"role": "system", "content": "You are a careful maths teacher."},
                {"role": "user", "content": question}]
    return run(chat.complete(ChatRequest.for_role(chat.role, chat.config, messages, seed=n)))


def check_answer(role: str, answer: Any, n: int = 0) -> None:
    """The judge's reply came through whole: the stand-in judge's 6 criteria, one verdict row per answer."""
    g = SAMPLE[n % len(SAMPLE)]
    if role == "rubricator":
        assert isinstance(answer, Rubric) and len(answer.criteria) == 6
    elif role == "verifier":
        assert len(answer) == len(g.solutions) + len(g.student) and all(len(row) == 6 for row in answer)
    else:
        assert "Answer:" in answer.content


@pytest.mark.parametrize("role", ROLES)
def test_token_limit_name_switches_once_and_is_remembered(make_chat: MakeChat, server: ScriptedServer,
                                                          role: str) -> None:
    chat = make_chat(role, **REASONING)
    for n in range(3):
        check_answer(role, ask(chat, n), n)
    sent = [(e["action"], e["token_param"]) for e in server.log]
    assert sent[0] == ("refuse_max_tokens", "max_tokens")
    assert [a for a, _ in sent].count("refuse_max_tokens") == 1
    assert all(name == "max_completion_tokens" for _, name in sent[1:])
    assert server.served(KIND[role]) == 3
    sent_params = [e["params"] for e in server.log if e["served"]]
    assert all("reasoning_effort" in p and "temperature" not in p and "top_p" not in p for p in sent_params)


@pytest.mark.parametrize("role", ROLES)
def test_token_limit_name_can_be_pinned(make_chat: MakeChat, server: ScriptedServer, role: str) -> None:
    check_answer(role, ask(make_chat(role, token_param="max_completion_tokens", **REASONING)))
    assert [e["action"] for e in server.log if not e["served"]].count("refuse_max_tokens") == 0


@pytest.mark.parametrize("role", ROLES)
def test_responses_round_trip(make_chat: MakeChat, server: ScriptedServer, role: str) -> None:
    chat = Recorder(make_chat(role, api="responses", **REASONING))
    for n in range(2):
        check_answer(role, ask(chat, n), n)
    assert {e["api"] for e in server.log} == {"responses"} and server.served(KIND[role]) == 2
    first = server.log[0]
    # structured output as `text.format`, the effort as `reasoning`, the limit as max_output_tokens, no seed
    assert first["format"] == ("json_schema" if role != "teacher" else None)
    assert {"instructions", "input", "reasoning", "max_output_tokens", "store"} <= set(first["params"])
    assert not {"seed", "temperature", "top_p", "messages"} & set(first["params"])
    results = [r for r in chat.results if not r.cached]
    assert [r.finish_reason for r in results] == ["stop", "stop"]
    assert all(r.tokens_reasoning == REASONING_TOKENS and r.tokens_out and r.tokens_out > REASONING_TOKENS
               for r in results)
    assert results[0].tokens_cached == 0 and results[1].tokens_cached  # the second shares the system prompt


def test_chat_usage_breakdown(make_chat: MakeChat, server: ScriptedServer) -> None:
    chat = Recorder(make_chat("verifier", **REASONING))
    ask(chat, 0), ask(chat, 1)
    assert [r.tokens_reasoning for r in chat.results] == [REASONING_TOKENS] * 2
    assert chat.results[0].tokens_cached == 0 and chat.results[1].tokens_cached


@pytest.mark.parametrize("role", ["rubricator", "verifier"])
@pytest.mark.parametrize(("reply", "finish"), [(Reply(finish_reason="length"), "length"), (Reply(content=""), "stop")],
                         ids=["incomplete", "no_output_text"])
def test_responses_cut_off_or_empty_is_repaired(make_chat: MakeChat, server: ScriptedServer, role: str,
                                                reply: Reply, finish: str) -> None:
    """`incomplete` (max_output_tokens) reads as finish_reason=length; a reply with only a reasoning item and
    no message reads as an empty completion; both are parse errors, repaired like any other."""
    server.push(reply, kind=KIND[role])
    chat = Recorder(make_chat(role, api="responses", **REASONING))
    check_answer(role, ask(chat))
    bad, repaired = chat.results
    assert bad.finish_reason == finish and (bad.content == "") == (finish == "stop")
    assert repaired.finish_reason == "stop" and server.served(KIND[role]) == 2


@pytest.mark.parametrize("reply", [Reply(finish_reason="length"), Reply(content="")], ids=["incomplete", "empty"])
def test_responses_cut_off_or_empty_teacher_answer_is_not_a_reference(make_chat: MakeChat, server: ScriptedServer,
                                                                      tmp_path: Path, reply: Reply) -> None:
    chat = make_chat("teacher", api="responses", **REASONING)
    prompts = [TeacherPrompt(prompt_id="p", question="What is 2 and 3?")]
    server.push(reply, kind="teacher", times=-1)
    with pytest.raises(TeacherIndexError, match="no usable teacher answer for 1 prompt"):
        run(build_index(prompts, chat, 2, tmp_path / "t.parquet"))
    server.clear()
    server.push(reply, kind="teacher")  # one of the two samples is cut off / empty: the other is the index
    df = run(build_index([TeacherPrompt(prompt_id="q", question="What is 4 and 5?")], chat, 2, tmp_path / "t.parquet"))
    assert list(df["text"]) == ["Add the quantities: 4 + 5 = 9\nAnswer: 9"]


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("role", ROLES)
def test_refused_temperature_is_one_line_naming_the_key(make_chat: MakeChat, server: ScriptedServer,
                                                        role: str, api: str) -> None:
    chat = make_chat(role, api=api, temperature=0.0, top_p=None, reasoning_effort="high")
    key = "teacher.role" if role == "teacher" else role
    with pytest.raises(RoleSettingRefused) as info:
        ask(chat)
    assert str(info.value) == (f"role {role}: the model refuses temperature=0.0 (reasoning models take only the "
                               f"default); set {key}.temperature: null")
    # the token switch (chat only), then the refusal: not retried, not a breaker failure, not repaired
    assert server.received() == (2 if api == "chat" else 1)
    assert chat.breaker.state is BreakerState.CLOSED and chat.breaker.failures == 0


def test_refused_effort_or_pinned_token_name_is_one_line_naming_the_key(make_chat: MakeChat,
                                                                       server: ScriptedServer) -> None:
    # what OpenAI answers when a model without reasoning is sent an effort
    server.push(Fail(400, body=json.dumps({"error": {
        "message": "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
        "type": "invalid_request_error", "param": "reasoning_effort", "code": "unsupported_parameter"}})))
    with pytest.raises(RoleSettingRefused) as info:
        ask(make_chat("verifier", token_param="max_completion_tokens", **REASONING))
    assert str(info.value) == ("role verifier: the model refuses reasoning_effort='high' (Unsupported parameter: "
                               "'reasoning_effort' is not supported with this model.); set verifier.reasoning_effort: "
                               "null")
    with pytest.raises(RoleSettingRefused) as info:
        ask(make_chat("teacher", token_param="max_tokens", **REASONING))
    assert str(info.value) == ("role teacher: the model refuses token_param='max_tokens' (it does not take the "
                               "max_tokens parameter); set teacher.role.token_param: auto")
    assert server.received() == 2


def test_bad_role_settings_name_the_key(tmp_path: Path) -> None:
    data = tiny_params("http://127.0.0.1:9/v1", tmp_path)
    for patch, needle in (({"api": "completions"}, r"verifier\.api: Input should be 'chat' or 'responses'"),
                          ({"reasoning_effort": "max"}, r"verifier\.reasoning_effort: Input should be 'none'"),
                          ({"token_param": "max_output"}, r"verifier\.token_param: Input should be 'auto'"),
                          ({"extra_body": {"temperature": 0}}, r"verifier\.extra_body: .*may not set temperature")):
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({**data, "verifier": {**data["verifier"], **patch}}))
        with pytest.raises(ConfigError, match=needle):
            load_params(path)


def test_extra_body_is_sent(make_chat: MakeChat, server: ScriptedServer) -> None:
    chat = make_chat("teacher", extra_body={"chat_template_kwargs": {"enable_thinking": False}}, **REASONING)
    ask(chat)
    assert "chat_template_kwargs" in server.log[-1]["params"]


# -- cache keys and fingerprints ------------------------------------------------------------------------

def fixed_request(**cfg: Any) -> ChatRequest:
    role = RoleConfig(**{"model": "gpt-x", "temperature": 0.0, "max_tokens": 512, **cfg})
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    return ChatRequest.for_role("verifier", role, messages, seed=3, json_schema={"type": "object"},
                                schema_name="ropd_x", template="v1")


def test_keys_of_requests_without_the_new_settings_are_unchanged() -> None:
    # computed with the code before reasoning_effort/extra_body/token_param/api existed
    assert fixed_request().key() == "6d2d2c5437f4d59acf1b17cace4a90e2de2ed1a06bd846546921e848d56f5aac"
    assert RoleConfig(model="gpt-x", temperature=0.0, max_tokens=512).fingerprint("v1") == "793708683294ea25"
    assert RoleConfig().fingerprint("teacher-v1") == "8a6eada459454c7a"


@pytest.mark.parametrize(("change", "same"), [
    ({"reasoning_effort": "high"}, False),
    ({"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}, False),
    ({"temperature": None}, False),
    ({"top_p": None}, False),
    ({"token_param": "max_completion_tokens"}, True),  # the limit's name, not its value
    ({"api": "responses"}, True),  # the same model answering the same messages
    ({"timeout_s": 5.0}, True),
])
def test_what_changes_the_output_changes_key_and_fingerprint(change: dict, same: bool) -> None:
    base, other = RoleConfig(model="gpt-x"), RoleConfig(model="gpt-x", **change)
    assert (fixed_request(**change).key() == fixed_request().key()) is same
    assert (other.fingerprint("v1") == base.fingerprint("v1")) is same


# -- one tiny pipeline round per API ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(module_tmp: Path, smollm2_dir: Path) -> Iterator[tuple[Path, ScriptedServer, Callable[..., None]]]:
    """One project, rolled out once; each test sets the judges' params and reruns teacher → verify."""
    with ScriptedServer(reasoning=True) as srv:
        proj = make_project(module_tmp, srv.base_url, smollm2_dir.parent)

        def configure(rubricator: dict[str, Any] | None = None, **role: Any) -> None:
            judge = {"provider": "openai", "base_url": srv.base_url, "model": "gpt-5-stand-in", "api_key_env": None,
                     "max_tokens": 512, "backoff_initial_s": 0.05, **REASONING, **role}
            overrides = {"rubricator": {**judge, **(rubricator or {})}, "verifier": judge, "teacher.role": judge}
            (proj / "params.yaml").write_text(yaml.safe_dump(tiny_params(srv.base_url, smollm2_dir.parent, overrides),
                                                             sort_keys=False))
            shutil.rmtree(proj / "data" / "cache", ignore_errors=True)  # every call goes to the server again
            srv.log.clear()

        configure()
        for name in ("demo_data", "prepare", "rollout"):
            in_process(proj, name)
        yield proj, srv, configure


def in_process(proj: Path, name: str) -> None:
    """One stage in this process (what `ropd stage` runs, without a new interpreter's imports each time)."""
    here = Path.cwd()
    os.chdir(proj)  # the stages' paths, the call cache included, are relative to the project
    try:
        params = load_params("params.yaml")
        run_stage(params, name, None if name in RUN_STAGES else 0)
    finally:
        os.chdir(here)


def judge_round(proj: Path) -> None:
    for name in ("teacher", "mine", "qa", "verify"):
        in_process(proj, name)
    rd = proj / "data" / "runs" / "tiny" / "round_0"
    assert pd.read_parquet(rd / "rubric_failures.parquet").empty
    rewards = pd.read_parquet(rd / "rewards.parquet")
    assert len(rewards) == 4 and set(rewards["status"]) == {"ok"}  # 2 prompts x 2 rollouts, no judge_error


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_tiny_round_with_reasoning_judges(tiny: tuple[Path, ScriptedServer, Callable[..., None]], api: str) -> None:
    proj, srv, configure = tiny
    configure(api=api)
    judge_round(proj)
    served = [e for e in srv.log if e["served"]]
    assert {e["kind"] for e in served} == {"teacher", "rubric", "verify"} and {e["api"] for e in served} == {api}
    # strict-mode schemas are taken on the first request: every judge call constrained, no ladder step-down
    assert {e["format"] for e in served if e["kind"] != "teacher"} == {"json_schema"}
    assert not [e["action"] for e in srv.log if not e["served"] and "max_tokens" not in e["action"]]
    effort = "reasoning_effort" if api == "chat" else "reasoning"
    assert all(effort in e["params"] and "temperature" not in e["params"] for e in served)
    if api == "chat":
        assert {e["token_param"] for e in served} == {"max_completion_tokens"}


def test_tiny_round_refused_temperature_stops_the_stage(tiny: tuple[Path, ScriptedServer, Callable[..., None]]
                                                        ) -> None:
    proj, srv, configure = tiny
    configure(rubricator={"temperature": 0.7})  # the teacher's settings, and so its index, stay valid
    done = ropd(proj, "mine", "--round", "0")
    assert done.returncode == 2
    line = ("role rubricator: the model refuses temperature=0.7 (reasoning models take only the default); set "
            "rubricator.temperature: null")
    assert line in " ".join(done.stdout.split()), done.stdout[-2000:]
    assert srv.served("rubric") == 0
