"""Demo generator and the user-dataset loader: deterministic data, and bad rows named by number."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ropd.data import arith
from ropd.data.load import DatasetError, load_prompts


def test_generator_is_seeded_distinct_and_correct() -> None:
    a, b = arith.generate(600, seed=3), arith.generate(600, seed=3)
    assert a == b and len({p.question for p in a}) == 600
    assert arith.generate(5, seed=4) != arith.generate(5, seed=3)
    for p in a[:200]:
        assert len(set(p.solutions)) == 3  # three different styles
        assert all(s.endswith(f"Answer: {p.answer}") for s in p.solutions)
        for line in p.solutions[2].splitlines()[:-1]:  # every written equation is true
            lhs, rhs = line.split("=")
            assert eval(lhs) == int(rhs)


def test_demo_split_has_no_overlap() -> None:
    train = load_prompts("demo", "train", n=500, seed=0)
    held = load_prompts("demo", "eval", n=100, seed=1, exclude=set(train["question"]))
    assert len(train) == 500 and len(held) == 100
    assert not set(train["prompt_id"]) & set(held["prompt_id"])
    assert json.loads(train["messages"][0]) == [{"role": "user", "content": train["question"][0]}]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_user_jsonl_and_parquet(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "What is 2+2?", "reference_answer": 4},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3*3?"}]},
        {"question": "Capital of France?", "solutions": ["Paris.\nAnswer: Paris"]},
    ])
    df = load_prompts(str(f), "train")
    assert list(df["question"]) == ["What is 2+2?", "3*3?", "Capital of France?"]
    assert df["reference_answer"][0] == "4" and pd.isna(df["reference_answer"][1])
    df.drop(columns=["prompt_id", "split", "source"]).assign(
        messages=lambda d: [json.loads(m) for m in d["messages"]]).to_parquet(tmp_path / "p.parquet")
    again = load_prompts(str(tmp_path / "p.parquet"), "train")
    assert list(again["prompt_id"]) == list(df["prompt_id"])


@pytest.mark.parametrize(("rows", "needle"), [
    ([{"prompt": "ok"}, {"answer": "no prompt column"}], r"line 2: .*needs one of the columns"),
    ([{"prompt": "ok"}, {"prompt": "   "}], r"line 2: .*the prompt is empty"),
    ([{"prompt": "ok"}, {"prompt": 3}], r"line 2: prompt: Input should be a valid string"),
    ([{"prompt": "ok"}, "{not json"], r"line 2: not JSON"),
    ([{"prompt": "ok"}, [1, 2]], r"line 2: expected a JSON object"),
    ([{"prompt": "same"}, {"prompt": "x"}, {"prompt": "same"}],
     r"line 3: duplicate prompt \(same messages as .*line 1\)"),
    ([{"messages": [{"role": "assistant", "content": "hi"}]}], r"line 1: .*no non-empty user turn"),
])
def test_bad_rows_are_named(tmp_path: Path, rows: list, needle: str) -> None:
    with pytest.raises(DatasetError, match=needle):
        load_prompts(str(write_jsonl(tmp_path / "bad.jsonl", rows)), "train")


def test_non_utf8_and_missing_files(tmp_path: Path) -> None:
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"line 2: not UTF-8"):
        load_prompts(str(f), "train")
    with pytest.raises(DatasetError, match="file not found"):
        load_prompts(str(tmp_path / "nope.jsonl"), "train")
    with pytest.raises(DatasetError, match="unsupported format"):
        load_prompts(str(_touch(tmp_path / "x.csv")), "train")
    pd.DataFrame({"prompt": ["a", None]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DatasetError, match=r"p\.parquet: row 1: .*needs one of the columns"):
        load_prompts(str(tmp_path / "p.parquet"), "train")


def _touch(p: Path) -> Path:
    p.write_text("x")
    return p
