from __future__ import annotations

import pytest
from pydantic import ValidationError

from ropd.rubric.schema import AnswerVerdict, Category, Criterion, Rubric, VerdictSheet


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
    assert AnswerVerdict.model_validate({"answer": 1, "verdicts": [True, False]}).verdicts == [True, False]
    for bad in ([1, 0], ["yes", "no"], [True, None]):
        with pytest.raises(ValidationError, match="not a JSON boolean"):
            AnswerVerdict.model_validate({"answer": 1, "verdicts": bad})


def sheet(rows: list[tuple[int, list[bool]]]) -> VerdictSheet:
    return VerdictSheet.model_validate({"answers": [{"answer": a, "verdicts": v} for a, v in rows]})


def test_sheet_matrix_in_order() -> None:
    s = sheet([(1, [True, False]), (2, [False, False]), (3, [True, True])])
    assert s.matrix(3, 2) == [[True, False], [False, False], [True, True]]


def test_sheet_wrong_answer_count() -> None:
    with pytest.raises(ValueError, match=r"one entry for each answer 1\.\.3"):
        sheet([(1, [True]), (2, [True])]).matrix(3, 1)
    with pytest.raises(ValueError, match="one entry for each answer"):
        sheet([(1, [True]), (1, [True]), (2, [True])]).matrix(3, 1)


def test_sheet_out_of_order() -> None:
    with pytest.raises(ValueError, match="in order"):
        sheet([(2, [True]), (1, [True])]).matrix(2, 1)


def test_sheet_wrong_verdict_length() -> None:
    with pytest.raises(ValueError, match="answer 2 has 1 verdicts, expected 2"):
        sheet([(1, [True, True]), (2, [True])]).matrix(2, 2)
