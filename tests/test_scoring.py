from __future__ import annotations

import pytest

from ropd.rubric.schema import Rubric
from ropd.rubric.scoring import category_pass_rates, raw_points, weighted_score

RUBRIC = Rubric.model_validate({"criteria": [
    {"id": "a", "category": "task_fulfilment", "text": "A", "points": 5},
    {"id": "b", "category": "reasoning_quality", "text": "B", "points": 3},
    {"id": "c", "category": "response_quality", "text": "C", "points": 1},
    {"id": "d", "category": "task_fulfilment", "text": "D", "points": 1},
]})


@pytest.mark.parametrize(("verdicts", "expected"), [
    ([True, True, True, True], 1.0),
    ([False, False, False, False], 0.0),
    ([True, False, False, False], 0.5),
    ([False, True, True, False], 0.4),
    ([False, False, True, True], 0.2),
])
def test_weighted_pass_rate(verdicts: list[bool], expected: float) -> None:
    assert RUBRIC.max_score == 10
    assert weighted_score(RUBRIC, verdicts) == pytest.approx(expected)
    assert raw_points(RUBRIC, verdicts) == round(expected * 10)


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="3 verdicts for a rubric of 4"):
        weighted_score(RUBRIC, [True, True, True])


def test_category_pass_rates() -> None:
    rows = [[True, False, True, False], [True, True, False, False]]
    assert category_pass_rates(RUBRIC, rows) == {
        "reasoning_quality": 0.5, "response_quality": 0.5, "task_fulfilment": 0.5,
    }
