from __future__ import annotations

import json
from collections.abc import Callable

import jsonschema
import pytest
from pydantic import ValidationError

from ropd.config import EngineConfig
from ropd.llm.errors import LLMError
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.llm.strict_schema import strict_violations
from ropd.rubric.engine import Group, induce_rubric
from ropd.rubric.prompts import render_rubricator, render_verifier, rubric_json_schema, verdict_json_schema
from ropd.rubric.schema import (
    MAX_CRITERIA,
    MAX_POINTS,
    MIN_CRITERIA,
    MIN_POINTS,
    Category,
    Criterion,
    Rubric,
    VerdictSheet,
    criterion_slots,
)
from ropd.rubric.tjudge import ScoreSheet, render_tjudge, score_json_schema
from ropd.testing.judge import rubric_reply, tjudge_reply, verdict_reply
from ropd.testing.server import Reply, ScriptedServer
from tests.conftest import run

ENGINE = EngineConfig(min_criteria=4, max_criteria=6, max_criterion_chars=80)


def crit(i: int, points: int = 2, category: str = "task_fulfilment", text: str = "Checks a thing.") -> dict:
    return {"id": f"c{i}", "category": category, "text": text, "points": points}


def rubric(n: int = 4, **kw: object) -> dict:
    return {"criteria": [crit(i, **kw) for i in range(n)]}  # type: ignore[arg-type]


def test_valid_rubric_and_max_score_recomputed() -> None:
    data = rubric(5, points=3)
    data["max_score"] = 999  # a self-reported total is ignored
    r = Rubric.model_validate(data)
    assert r.max_score == 15
    assert r.ids == ["c0", "c1", "c2", "c3", "c4"]
    assert r.criteria[0].category is Category.TASK


@pytest.mark.parametrize("n", [0, 3, 13])
def test_criteria_count_bounds(n: int) -> None:
    with pytest.raises(ValidationError, match="criteria"):
        Rubric.model_validate(rubric(n))


@pytest.mark.parametrize("n", [4, 12])
def test_criteria_count_edges_accepted(n: int) -> None:
    assert len(Rubric.model_validate(rubric(n)).criteria) == n


def test_duplicate_ids_rejected() -> None:
    data = rubric(4)
    data["criteria"][2]["id"] = "c0"
    with pytest.raises(ValidationError, match="duplicate criterion id 'c0'"):
        Rubric.model_validate(data)


@pytest.mark.parametrize("points", [0, 6, -1, 2.5, "3", True, None])
def test_points_must_be_int_1_to_5(points: object) -> None:
    with pytest.raises(ValidationError):
        Criterion.model_validate(crit(0, points=points))  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "   "])
def test_text_nonempty(text: str) -> None:
    with pytest.raises(ValidationError):
        Criterion.model_validate(crit(0, text=text))


def test_category_must_be_one_of_three() -> None:
    assert {c.value for c in Category} == {"task_fulfilment", "response_quality", "reasoning_quality"}
    with pytest.raises(ValidationError):
        Criterion.model_validate(crit(0, category="style"))


def test_unknown_criterion_field_rejected() -> None:
    with pytest.raises(ValidationError):
        Criterion.model_validate({**crit(0), "weight": 3})


def test_verdicts_must_be_json_booleans() -> None:
    assert VerdictSheet.model_validate({"answers": {"a1": [True, False]}}).matrix(1, 2) == [[True, False]]
    for bad in ([1, 0], ["yes", "no"], [True, None]):
        with pytest.raises(ValidationError, match=r"a1: verdict .* is not a JSON boolean"):
            VerdictSheet.model_validate({"answers": {"a1": bad}})


def sheet(rows: dict[str, list[bool]]) -> VerdictSheet:
    return VerdictSheet.model_validate({"answers": rows})


def test_sheet_matrix_in_answer_order() -> None:
    # rows come back in answer order whatever order the JSON object lists them in
    s = sheet({"a3": [True, True], "a1": [True, False], "a2": [False, False]})
    assert s.matrix(3, 2) == [[True, False], [False, False], [True, True]]


def test_sheet_wrong_answer_keys() -> None:
    with pytest.raises(ValueError, match=r"each answer 1\.\.3, under keys a1\.\.a3; missing \['a3'\], unexpected \[\]"):
        sheet({"a1": [True], "a2": [True]}).matrix(3, 1)
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['a3'\]"):
        sheet({"a1": [True], "a2": [True], "a3": [True]}).matrix(2, 1)
    with pytest.raises(ValidationError):
        VerdictSheet.model_validate({"answers": [{"answer": 1, "verdicts": [True]}]})  # the old list shape


def test_sheet_wrong_verdict_length() -> None:
    with pytest.raises(ValueError, match="answer a2 has 1 verdicts, expected 2"):
        sheet({"a1": [True, True], "a2": [True]}).matrix(2, 2)


# --- strict mode: every reply schema is in the subset OpenAI's strict structured outputs accept ---

def root(prop: dict) -> dict:
    """A strict root object with one property `x`: the crafted schemas below break one rule inside it."""
    return {"type": "object", "properties": {"x": prop}, "required": ["x"], "additionalProperties": False}


STRING_LIST = {"type": "array", "items": {"type": "string"}}
# rule → (schema breaking it, the message naming its path)
VIOLATIONS: dict[str, tuple[dict, str]] = {
    "prefixItems": (root({**STRING_LIST, "prefixItems": [{"type": "string"}]}),
                    "In context=('properties', 'x'), 'prefixItems' is not permitted."),
    "items_false": (root({"type": "array", "items": False}),
                    "In context=('properties', 'x'), 'items' must be a schema, not false."),
    "const": (root({"type": "integer", "const": 1}), "In context=('properties', 'x'), 'const' is not permitted."),
    "minItems": (root({**STRING_LIST, "minItems": 1}), "In context=('properties', 'x'), 'minItems' is not permitted."),
    "maxItems": (root({**STRING_LIST, "maxItems": 3}), "In context=('properties', 'x'), 'maxItems' is not permitted."),
    "minLength": (root({"type": "string", "minLength": 1}),
                  "In context=('properties', 'x'), 'minLength' is not permitted."),
    "maxLength": (root({"type": "string", "maxLength": 9}),
                  "In context=('properties', 'x'), 'maxLength' is not permitted."),
    "minimum": (root({"type": "integer", "minimum": 1}), "In context=('properties', 'x'), 'minimum' is not permitted."),
    "maximum": (root({"type": "integer", "maximum": 5}), "In context=('properties', 'x'), 'maximum' is not permitted."),
    "pattern": (root({"type": "string", "pattern": "^a$"}),
                "In context=('properties', 'x'), 'pattern' is not permitted."),
    "default": (root({"type": "string", "default": "a"}),
                "In context=('properties', 'x'), 'default' is not permitted."),
    "additionalProperties": (
        {"type": "object", "properties": {"x": {"type": "object", "properties": {"y": {"type": "string"}},
                                                "required": ["y"]}}, "required": ["x"], "additionalProperties": False},
        "In context=('properties', 'x'), 'additionalProperties' is required to be supplied and to be false."),
    "all_required": (
        root({"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"},
                                                                           "b": {"type": "string"}},
                                         "required": ["a"], "additionalProperties": False}}),
        "In context=('properties', 'x', 'items'), 'required' is required to be supplied and to be an array "
        "including every key in properties. Missing 'b'."),
    "anyOf_branch": (root({"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]}),
                     "In context=('properties', 'x', 'anyOf', '0'), 'maxLength' is not permitted."),
    "root_object": ({"anyOf": [{"type": "string"}]}, "In context=(), the root schema must be of type 'object'."),
    "ref": (root({"$ref": "#/$defs/missing"}), "In context=('properties', 'x'), '$ref' '#/$defs/missing' does not "
            "resolve to an entry of the root '$defs'."),
    "defs": ({**root({"$ref": "#/$defs/d"}), "$defs": {"d": {"type": "integer", "minimum": 0}}},
             "In context=('$defs', 'd'), 'minimum' is not permitted."),
}


@pytest.mark.parametrize("rule", list(VIOLATIONS))
def test_strict_violations_names_each_rule_and_its_path(rule: str) -> None:
    schema, message = VIOLATIONS[rule]
    assert message in strict_violations(schema)
    # the same property, made strict, passes: each crafted schema breaks exactly the rule it names
    assert strict_violations(root({"type": "string"})) == []


def test_nesting_limit() -> None:
    deep: dict = {"type": "string"}
    for _ in range(11):
        deep = root(deep)
    assert any("nested 11 deep" in p for p in strict_violations(deep))
    assert not any("nested" in p for p in strict_violations(root(root({"type": "string"}))))


# the rubric reply's criterion item and list before strict mode: const ids, length and range bounds, prefixItems
LEGACY_ITEM = {"type": "object", "properties": {
    "id": {"type": "string", "const": "c1"}, "category": {"type": "string", "enum": [c.value for c in Category]},
    "text": {"type": "string", "minLength": 1, "maxLength": 300},
    "points": {"type": "integer", "minimum": MIN_POINTS, "maximum": MAX_POINTS}},
    "required": ["id", "category", "text", "points"], "additionalProperties": False}
LEGACY_LIST = {"type": "array", "prefixItems": [LEGACY_ITEM] * 12, "items": False, "minItems": 4, "maxItems": 12}


def test_the_former_schemas_are_refused() -> None:
    assert strict_violations(root(LEGACY_LIST)) == [
        f"In context=('properties', 'x'), {rule}" for rule in (
            "'prefixItems' is not permitted.", "'minItems' is not permitted.", "'maxItems' is not permitted.",
            "'items' must be a schema, not false.")]
    at = "In context=('properties', 'x', 'properties', "
    assert strict_violations(root(LEGACY_ITEM)) == [
        f"{at}'id'), 'const' is not permitted.", f"{at}'text'), 'minLength' is not permitted.",
        f"{at}'text'), 'maxLength' is not permitted.", f"{at}'points'), 'minimum' is not permitted.",
        f"{at}'points'), 'maximum' is not permitted."]


@pytest.mark.parametrize("min_k", range(MIN_CRITERIA, MAX_CRITERIA + 1))
def test_rubric_schema_is_strict_at_every_size(min_k: int) -> None:
    for max_k in range(min_k, MAX_CRITERIA + 1):
        for chars in (20, 80, 600):
            assert strict_violations(rubric_json_schema(min_k, max_k, chars)) == []


def test_verdict_and_score_schemas_are_strict_at_every_size() -> None:
    for n in range(1, 21):
        assert strict_violations(score_json_schema(n)) == []
        for k in range(1, MAX_CRITERIA + 1):
            assert strict_violations(verdict_json_schema(n, k)) == []


# --- replies in the strict shape parse into the same Python objects ---

RUBRIC5 = Rubric.model_validate({"criteria": [
    {"id": f"c{i}", "category": cat, "text": f"Checks thing {i}.", "points": p}
    for i, cat, p in [(1, "task_fulfilment", 5), (2, "task_fulfilment", 2), (3, "reasoning_quality", 4),
                      (4, "response_quality", 1), (5, "reasoning_quality", 3)]]})


def reply_of(rubric: Rubric, max_k: int) -> dict:
    """`rubric` as the Rubricator writes it under `rubric_json_schema(..., max_k)`: slots, unused ones null."""
    slots: dict = dict.fromkeys(criterion_slots(max_k))
    slots.update({c.id: {"category": c.category.value, "text": c.text, "points": c.points} for c in rubric.criteria})
    return {"criteria": slots}


def test_rubric_reply_round_trip() -> None:
    reply = reply_of(RUBRIC5, 6)
    jsonschema.validate(reply, rubric_json_schema(4, 6, 80))  # the reply is what the schema allows
    assert Rubric.from_reply(reply, min_k=4, max_k=6, max_chars=80) == RUBRIC5
    # slot order decides criterion order, whatever order the JSON object lists the slots in
    shuffled = {"criteria": dict(reversed(list(reply["criteria"].items())))}
    assert Rubric.from_reply(shuffled, min_k=4, max_k=6) == RUBRIC5
    # a trailing slot left out reads as null; a reported total is ignored
    assert Rubric.from_reply({"criteria": reply_of(RUBRIC5, 5)["criteria"], "max_score": 99}, max_k=6) == RUBRIC5


def test_stand_in_judge_replies_in_the_strict_shapes() -> None:
    messages = render_rubricator("Ana has 3 bags of 12 apples and eats 9. How many are left?", ["27"], ["15"],
                                 min_k=4, max_k=6)
    reply = rubric_reply(messages)
    jsonschema.validate(reply, rubric_json_schema(4, 6, 80))
    rubric = Rubric.from_reply(reply, min_k=4, max_k=6, max_chars=80)
    assert rubric.ids == [f"c{k}" for k in range(1, 7)]
    answers = ["3 * 12 = 36\n36 - 9 = 27\nAnswer: 27", "Answer: 15", "maybe 20"]
    verdicts = verdict_reply(render_verifier("Ana has 3 bags of 12 apples and eats 9?", rubric, answers))
    jsonschema.validate(verdicts, verdict_json_schema(3, 6))
    assert VerdictSheet.model_validate(verdicts).matrix(3, 6)[1][0] is True  # answer 2 states one final answer
    scores = tjudge_reply(render_tjudge("Q 3 12 9?", ["27"], answers))
    jsonschema.validate(scores, score_json_schema(3))
    assert len(ScoreSheet.model_validate(scores).ordered(3)) == 3


def slot(text: str = "Checks a thing.", points: object = 2, category: str = "task_fulfilment") -> dict:
    return {"category": category, "text": text, "points": points}


# malformed reply → (error type, message the repair turn shows the model)
MALFORMED: dict[str, tuple[dict, str, str]] = {
    "gap": ({"criteria": {"c1": slot(), "c2": None, "c3": slot(), "c4": slot(), "c5": slot()}}, "validation",
            "slot c2 is empty but c5 is filled: fill the slots in order from c1"),
    "missing_slot": ({"criteria": {"c1": slot(), "c3": slot(), "c4": slot(), "c5": slot()}}, "validation",
                     "slot c2 is empty but c5 is filled"),
    "too_few": ({"criteria": {f"c{k}": slot() for k in range(1, 4)}}, "validation",
                "3 criteria, at least 4 are required (slots c1..c4)"),
    "unknown_slot": ({"criteria": {f"c{k}": slot() for k in range(1, 8)}}, "validation",
                     "unknown criterion slots ['c7']: at most 6 criteria, in slots c1..c6"),
    "text_too_long": ({"criteria": {f"c{k}": slot("x" * (81 if k == 2 else 10)) for k in range(1, 5)}},
                      "validation", "criterion c2 text is 81 characters, at most 80 are allowed"),
    "point_7": ({"criteria": {f"c{k}": slot(points=7 if k == 3 else 2) for k in range(1, 5)}}, "schema",
                "criteria.c3.points: Input should be less than or equal to 5"),
    "wrong_type": ({"criteria": {f"c{k}": slot(points="3" if k == 1 else 2) for k in range(1, 5)}}, "schema",
                   "criteria.c1.points: Input should be a valid integer"),
    "old_list_shape": ({"criteria": [{"id": "c1", **slot()}]}, "schema",
                       "criteria: Input should be a valid dictionary"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_rubric_reply_is_reported_by_the_repair_loop(case: str, make_chat: Callable[..., OpenAICompatChat],
                                                               server: ScriptedServer) -> None:
    reply, error_type, message = MALFORMED[case]
    group = Group(group_id="g", question="Sam has 3 boxes of 12 pens. How many pens?", teacher=["36"],
                  student=["15"])
    server.push(Reply(json.dumps(reply)), kind="rubric", times=-1)
    with pytest.raises(LLMError) as info:
        run(induce_rubric(make_chat("rubricator", max_repairs=0), group, ENGINE))
    assert (info.value.stage, info.value.type.value) == ("rubric", error_type)
    assert message in info.value.message
    # the same bad reply once, then the stand-in judge's: the repair turn fixes it
    server.clear()
    server.push(Reply(json.dumps(reply)), kind="rubric")
    group = group.model_copy(update={"group_id": "g2", "question": group.question + " (again)"})
    rubric = run(induce_rubric(make_chat("rubricator", max_repairs=1), group, ENGINE))
    assert rubric.ids == [f"c{k}" for k in range(1, 7)] and server.served("rubric") == 3
