"""The evaluation harness on a crafted set: right, wrong, unparseable and reference-less answers."""

from __future__ import annotations

import pytest

from ropd.eval.correctness import Outcome, grade
from ropd.eval.harness import eval_groups, summarize
from ropd.rollout.base import Rollout
from ropd.rubric.engine import Group, GroupResult, GroupStatus

REFS = {"p1": "\\boxed{12}", "p2": "3/4", "p3": "a proof with no closed form"}


def rollout(pid: str, i: int, text: str) -> Rollout:
    return Rollout(prompt_id=pid, sample_idx=i, text=text, token_ids=[1], n_tokens=1, finish_reason="stop")


SAMPLES = [
    rollout("p1", 0, "5 + 7 = 12. Answer: \\boxed{12}"),  # right
    rollout("p1", 1, "<think>maybe \\boxed{12}</think> I get \\boxed{13}"),  # wrong: the reasoning does not count
    rollout("p2", 0, "The result is 0.75"),  # right, in another form
    rollout("p2", 1, "I cannot solve this."),  # unparseable
    rollout("p3", 0, "\\boxed{4}"),  # no usable reference: not graded
    rollout("p3", 1, "\\boxed{5}"),
]


@pytest.mark.parametrize(("text", "ref", "expected"), [
    ("so \\boxed{5}", "5", Outcome.CORRECT), ("it is 6", "5", Outcome.WRONG),
    ("I do not know", "5", Outcome.UNPARSEABLE), ("5", "not an answer", Outcome.NO_REFERENCE),
])
def test_grade(text: str, ref: str, expected: Outcome) -> None:
    assert grade(text, ref) == expected


def test_accuracy_counts_unparseable_as_wrong_and_leaves_out_missing_references() -> None:
    res = summarize("ckpt", SAMPLES, REFS, k=2)
    assert (res.correct, res.wrong, res.unparseable, res.no_reference) == (2, 1, 1, 2)
    assert res.accuracy == pytest.approx(2 / 4)
    assert res.n_problems == 3 and res.n_samples == 6 and res.mean_rubric_score is None


def test_rubric_view_scores_and_auc() -> None:
    questions = {"p1": "5 + 7?", "p2": "3 / 4?", "p3": "prove it"}
    groups = eval_groups(SAMPLES, questions, {"p1": ["12"], "p2": ["0.75"]}, n_prompts=5)
    assert [g.group_id for g in groups] == ["eval:p1", "eval:p2"]  # p3 has no teacher answers
    assert groups[0].student == [SAMPLES[0].text, SAMPLES[1].text]

    def ok(g: Group, student: list[float]) -> GroupResult:
        return GroupResult(group_id=g.group_id, status=GroupStatus.OK, student_scores=student,
                           teacher_scores=[1.0], rewards=list(student))

    judged = [(groups[0], ok(groups[0], [0.9, 0.2])), (groups[1], ok(groups[1], [0.6, 0.6]))]
    res = summarize("ckpt", SAMPLES, REFS, k=2, judged=judged)
    assert res.mean_rubric_score == pytest.approx((0.9 + 0.2 + 0.6 + 0.6) / 4)
    assert res.teacher_rubric_score == 1.0 and res.rubric_judge_error_rate == 0.0
    # positives (right) 0.9, 0.6; negatives 0.2 (wrong), 0.6 (unparseable): pairs 1 + 1 + 1 + 0.5 of 4
    assert res.reward_auc == pytest.approx(3.5 / 4)

    failed = GroupResult(group_id="eval:p2", status=GroupStatus.JUDGE_ERROR, rewards=[None, None])
    res = summarize("ckpt", SAMPLES, REFS, k=2, judged=[judged[0], (groups[1], failed)])
    assert res.rubric_judge_error_rate == 0.5 and res.reward_auc == 1.0  # failed groups are left out, not zeroed
