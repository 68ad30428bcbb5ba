from __future__ import annotations

import pytest

from ropd.llm.errors import ErrorType, LLMError
from ropd.llm.structured import parse_json_object


@pytest.mark.parametrize("text", [
    '{"a": 1}',
    '```json\n{"a": 1}\n```',
    'Here you go: {"a": 1} hope that helps',
    '  \n{"a": 1}\n',
])
def test_accepts_one_object(text: str) -> None:
    assert parse_json_object(text) == {"a": 1}


@pytest.mark.parametrize(("text", "needle"), [
    ("", "empty completion"),
    ("not json at all", "not JSON"),
    ('{"a": 1', "not JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_rejects_with_parse_error(text: str, needle: str) -> None:
    with pytest.raises(LLMError) as info:
        parse_json_object(text)
    assert info.value.type is ErrorType.PARSE and needle in info.value.message


def test_request_key_is_cached_but_copies_get_their_own() -> None:
    from ropd.llm.base import ChatRequest

    r = ChatRequest(role="v", provider="openai", model="m", messages=[{"role": "user", "content": "x"}],
                    temperature=0.0, max_tokens=5)
    assert r.key() == r.key() == ChatRequest.model_validate(r.model_dump()).key()
    other = r.model_copy(update={"messages": [{"role": "user", "content": "y"}]})
    assert other.key() != r.key() and other.key() == ChatRequest.model_validate(other.model_dump()).key()
