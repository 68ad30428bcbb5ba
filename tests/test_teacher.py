from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from ropd.config import RoleConfig
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.teacher import (
    COLUMNS,
    TeacherIndex,
    TeacherIndexError,
    TeacherPrompt,
    build_index,
    dataset_index,
    fingerprint,
)
from ropd.testing.server import Fail, Reply, ScriptedServer
from tests.conftest import run

MakeChat = Callable[..., OpenAICompatChat]
PROMPTS = [TeacherPrompt(prompt_id=f"p{i}", question=f"What is {i} plus {i + 1}?",
                         solutions=[f"{i} + {i + 1} = {2 * i + 1}", f"{i} + {i + 1} = {2 * i + 1}", "alt"])
           for i in range(3)]


def test_fingerprint_ignores_urls_and_timeouts() -> None:
    a = RoleConfig(base_url="http://a/v1", model="m", temperature=0.7, timeout_s=10, max_retries=1)
    b = RoleConfig(base_url="https://b.example/v1", model="m", temperature=0.7, timeout_s=600, max_retries=9,
                   api_key_env="OTHER")
    assert fingerprint(a) == fingerprint(b)
    for change in ({"model": "m2"}, {"temperature": 1.0}, {"top_p": 0.9}, {"max_tokens": 99},
                   {"system_prompt": "be brief"}):
        assert fingerprint(a.model_copy(update=change)) != fingerprint(a), change


def test_dataset_provider_dedups_and_caps(tmp_path: Path) -> None:
    cfg = RoleConfig(provider="dataset", model="demo")
    df = dataset_index(PROMPTS, cfg, m=4, out=tmp_path / "t.parquet")
    assert list(df.columns) == COLUMNS
    assert df.groupby("prompt_id").size().tolist() == [2, 2, 2]  # the exact duplicate is dropped
    idx = TeacherIndex.load(tmp_path / "t.parquet", fingerprint(cfg))
    assert idx.answers("p1") == ["1 + 2 = 3", "alt"]
    assert len(dataset_index(PROMPTS, cfg, m=1, out=tmp_path / "t1.parquet")) == 3


def test_dataset_provider_needs_solutions(tmp_path: Path) -> None:
    with pytest.raises(TeacherIndexError, match="prompt px: no reference solutions"):
        dataset_index([TeacherPrompt(prompt_id="px", question="q")], RoleConfig(provider="dataset"), 2,
                      tmp_path / "t.parquet")


def test_build_index_from_endpoint(make_chat: MakeChat, server: ScriptedServer, tmp_path: Path) -> None:
    chat = make_chat("teacher", temperature=1.0)
    out = tmp_path / "teacher.parquet"
    df = run(build_index(PROMPTS, chat, m=3, out=out))
    assert server.served("teacher") == 9
    assert df.groupby("prompt_id").size().tolist() == [3, 3, 3]
    assert set(df["teacher_fingerprint"]) == {fingerprint(chat.config)}
    pd.testing.assert_frame_equal(pd.read_parquet(out), df)
    # a rebuild costs nothing: every sample is in the call cache
    run(build_index(PROMPTS, chat, m=3, out=out))
    assert server.received("teacher") == 9


def test_build_index_drops_exact_duplicates(make_chat: MakeChat, server: ScriptedServer, tmp_path: Path) -> None:
    server.push(Reply("same answer"), kind="teacher", times=2)
    df = run(build_index(PROMPTS[:1], make_chat("teacher"), m=3, out=tmp_path / "t.parquet"))
    assert df["text"].tolist().count("same answer") == 1 and len(df) == 2
    assert df["answer_idx"].tolist() == [0, 1]


def test_build_index_failure_names_prompts_and_writes_nothing(make_chat: MakeChat, server: ScriptedServer,
                                                              tmp_path: Path) -> None:
    server.push(Fail(400, body='{"error": {"message": "model not found"}}'), kind="teacher", times=1)
    out = tmp_path / "teacher.parquet"
    with pytest.raises(TeacherIndexError, match=r"failed for 1 prompt\(s\): p\d: .*model not found"):
        run(build_index(PROMPTS, make_chat("teacher"), m=2, out=out))
    assert not out.exists()
    assert server.served("teacher") == 5  # the other answers are paid for and kept in the cache
    run(build_index(PROMPTS, make_chat("teacher"), m=2, out=out))
    assert server.received("teacher") == 7  # only the failed sample was asked again


def test_missing_prompt_and_wrong_fingerprint_are_named(tmp_path: Path) -> None:
    cfg = RoleConfig(provider="dataset", model="demo")
    dataset_index(PROMPTS, cfg, 2, tmp_path / "t.parquet")
    idx = TeacherIndex.load(tmp_path / "t.parquet", fingerprint(cfg))
    with pytest.raises(TeacherIndexError, match="prompt nope: no teacher answers"):
        idx.answers("nope")
    other = TeacherIndex.load(tmp_path / "t.parquet", "0000000000000000")
    with pytest.raises(TeacherIndexError, match=r"prompt p0: .*fingerprint .* expects 0000000000000000"):
        other.answers("p0")


def test_index_with_missing_columns(tmp_path: Path) -> None:
    with pytest.raises(TeacherIndexError, match="lacks columns"):
        TeacherIndex(pd.DataFrame({"prompt_id": ["a"], "text": ["t"]}))
