"""Ground truth for the diagnostics: math-verify correctness, the hand-rolled AUC, the reference's final answer."""

from __future__ import annotations

import threading

import duckdb
import pytest

from ropd.eval.correctness import auc, final_answer, is_correct, quote_pattern


def test_auc_matches_a_hand_computation() -> None:
    # positives 0.8, 0.6, 0.6; negatives 0.6, 0.3. Pairs won: 0.8 beats both (2); each 0.6 ties 0.6 (½) and
    # beats 0.3 (1) → 1.5 each. AUC = (2 + 1.5 + 1.5) / (3 · 2) = 5/6.
    assert auc([0.8, 0.6, 0.6, 0.6, 0.3], [True, True, True, False, False]) == pytest.approx(5 / 6)
    assert auc([0.1, 0.9], [False, True]) == 1.0
    assert auc([0.1, 0.9], [True, False]) == 0.0
    assert auc([0.5, 0.5, 0.5], [True, False, True]) == 0.5  # all tied: no information


def test_auc_is_undefined_for_one_class() -> None:
    assert auc([0.1, 0.2], [True, True]) is None
    assert auc([], []) is None
    with pytest.raises(ValueError, match="2 scores for 1 labels"):
        auc([0.1, 0.2], [True])


@pytest.mark.parametrize(("answer", "reference", "expected"), [
    ("3 * 12 = 36, 36 - 9 = 27. Answer: \\boxed{27}", "27", True),
    ("The answer is 0.5", "\\frac{1}{2}", True),
    ("so x = 1/2", "0.5", True),
    ("<think>it is 26</think> The answer is \\boxed{27}", "27", True),  # reasoning before </think> is dropped
    ("Answer: 28", "27", False),
    ("I am not sure.", "27", False),  # no answer at all is a wrong answer
    ("Answer: 27", "see the figure", None),  # no ground truth
])
def test_is_correct(answer: str, reference: str, expected: bool | None) -> None:
    assert is_correct(answer, reference) is expected


def test_is_correct_off_the_main_thread() -> None:
    """math-verify's timeout uses SIGALRM, which only the main thread may set (Prefect runs tasks in threads)."""
    out: list[bool | None] = []
    t = threading.Thread(target=lambda: out.append(is_correct("Answer: \\boxed{4}", "4")))
    t.start()
    t.join()
    assert out == [True]


@pytest.mark.parametrize(("reference", "expected"), [
    ("27", "27"), ("so \\boxed{\\frac{1}{2}} in the end", "\\frac{1}{2}"), ("work...\n#### 72", "72"),
    ("$5$.", "5"), ("x" * 200, None), ("", None),
])
def test_final_answer(reference: str, expected: str | None) -> None:
    assert final_answer(reference) == expected


@pytest.mark.parametrize(("answer", "text", "hit"), [
    ("27", "The final answer is 27.", True),
    ("27", "It uses 270 pencils", False),
    ("27", "Computes 2.27 per pack", False),
    ("27", "27 pencils", True),
    ("x_1 + 2", "gives x_1+2 exactly", True),
    ("(1, 2]", "the interval (1, 2] holds", True),
    ("Paris", "the capital is paris", True),
])
def test_quote_pattern_is_a_token_match_in_duckdb(answer: str, text: str, hit: bool) -> None:
    with duckdb.connect() as con:
        assert con.execute("SELECT regexp_matches(?, ?)", [text, quote_pattern(answer)]).fetchone()[0] is hit
