"""The packaged SmolLM2 as Rubricator and Verifier, constrained by xgrammar: every reply must validate."""

from __future__ import annotations

import json
from pathlib import Path

import xgrammar as xgr

from ropd.config import EngineConfig, RoleConfig
from ropd.llm.base import run_closing
from ropd.llm.cache import CallCache
from ropd.llm.local import LocalChat, load_local
from ropd.rubric.engine import Group, score_groups
from ropd.rubric.prompts import rubric_json_schema, verdict_json_schema

ITEMS = ["apples", "pencils", "stickers", "marbles", "books"]  # one batch of 5: 135M generation is the cost


def groups() -> list[Group]:
    out = []
    for i, item in enumerate(ITEMS):
        a, b = 3 + i, 12 + 2 * i
        out.append(Group(
            group_id=f"g{i}",
            question=f"Sam has {a} boxes with {b} {item} each. How many {item} does he have?",
            teacher=[f"{a} * {b} = {a * b}\nAnswer: {a * b}"],
            student=[f"{a} + {b} = {a + b}\nAnswer: {a + b}", f"He has {a * b} {item}.\nAnswer: {a * b}"],
        ))
    return out


def test_local_judge_is_schema_valid_for_a_batch_of_5_prompts(smollm2_dir: Path, tmp_path: Path) -> None:
    base = RoleConfig(provider="local", model="smollm2-135m-instruct", model_path=str(smollm2_dir),
                      api_key_env=None, batch_size=5, max_repairs=0)
    cache = CallCache(tmp_path / "calls.sqlite")
    rubricator = LocalChat("rubricator", base.model_copy(update={"temperature": 0.7, "max_tokens": 400}), cache=cache)
    verifier = LocalChat("verifier", base.model_copy(update={"temperature": 0.0, "max_tokens": 200}), cache=cache)
    cfg = EngineConfig(min_criteria=4, max_criteria=4, max_criterion_chars=60)
    results = run_closing(score_groups(groups(), rubricator, verifier, cfg))
    failures = [(r.group_id, r.error) for r in results if not r.ok]
    assert failures == []  # with max_repairs=0, any parse/schema/validation failure would show here
    assert rubricator.calls_sent == 5 and verifier.calls_sent == 5
    assert rubricator.batches == [5] and verifier.batches == [5]  # one batched generate per stage
    for r in results:
        assert r.rubric is not None and len(r.rubric.criteria) == 4
        assert len(r.verdicts) == 3 and all(len(row) == 4 for row in r.verdicts)
    assert cache.count("ok") == 10 and cache.count("error") == 0
    # the local backend shares the call cache: a rerun generates nothing
    rerun_r = LocalChat("rubricator", rubricator.config, cache=cache)
    rerun_v = LocalChat("verifier", verifier.config, cache=cache)
    again = run_closing(score_groups(groups(), rerun_r, rerun_v, cfg))
    assert rerun_r.calls_sent == rerun_v.calls_sent == 0
    assert [r.rewards for r in again] == [r.rewards for r in results]


def test_local_grammar_enforces_the_bounds_the_strict_schema_states_in_words(smollm2_dir: Path) -> None:
    """The one strict schema, tightened for xgrammar: text length and row length hold by construction."""
    lm = load_local(str(smollm2_dir))

    def accepts(schema: dict, reply: dict) -> bool:
        matcher = xgr.GrammarMatcher(lm._grammar(schema))
        return matcher.accept_string(json.dumps(reply, separators=(",", ":"))) and matcher.accept_token(
            lm.tokenizer.eos_token_id)

    crit = {"category": "task_fulfilment", "text": "x" * 20, "points": 3}
    reply = {"criteria": {**{f"c{k}": crit for k in range(1, 5)}, "c5": None, "c6": None}}
    schema = rubric_json_schema(4, 6, 20)
    assert accepts(schema, reply)
    assert not accepts(schema, {"criteria": {**reply["criteria"], "c2": {**crit, "text": "x" * 21}}})  # too long
    assert not accepts(schema, {"criteria": {**reply["criteria"], "c4": None}})  # fewer than min_k
    assert not accepts(schema, {"criteria": {**reply["criteria"], "c1": {**crit, "points": 7}}})
    rows = {"a1": [True, False, True], "a2": [False, False, False]}
    assert accepts(verdict_json_schema(2, 3), {"answers": rows})
    assert not accepts(verdict_json_schema(2, 3), {"answers": {**rows, "a2": [False, False]}})  # row too short
