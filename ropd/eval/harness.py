"""Held-out evaluation of a policy: pass@1 by math-verify, plus the rubric view of the same samples.

The same function serves the `evaluate` stage, `ropd eval CHECKPOINT` and the sample-efficiency
study, so a number in docs/results.md means the same thing as one in a run's history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel

from ropd.eval.correctness import Outcome, auc, grade
from ropd.rollout.base import Rollout
from ropd.rubric.engine import Group, GroupResult


class EvalResult(BaseModel):
    """One policy on the held-out split. `accuracy` is pass@1 averaged over k samples per problem."""

    policy: str
    n_problems: int
    k: int
    n_samples: int
    accuracy: float | None
    correct: int
    wrong: int
    unparseable: int
    no_reference: int
    rubric_prompts: int = 0
    rubric_judge_error_rate: float | None = None
    mean_rubric_score: float | None = None
    teacher_rubric_score: float | None = None
    reward_auc: float | None = None


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def accuracy_of(outcomes: Sequence[Outcome]) -> tuple[float | None, Counter]:
    counts = Counter(outcomes)
    graded = len(outcomes) - counts[Outcome.NO_REFERENCE]
    return (counts[Outcome.CORRECT] / graded if graded else None), counts


def eval_groups(samples: Sequence[Rollout], questions: dict[str, str], teacher: dict[str, list[str]],
                n_prompts: int) -> list[Group]:
    """One group per held-out prompt that has teacher answers, its k samples as the student side."""
    by_prompt: dict[str, list[Rollout]] = {}
    for s in samples:
        by_prompt.setdefault(s.prompt_id, []).append(s)
    groups = []
    for pid, rows in by_prompt.items():
        if len(groups) == n_prompts:
            break
        if teacher.get(pid):
            rows = sorted(rows, key=lambda r: r.sample_idx)
            groups.append(Group(group_id=f"eval:{pid}", question=questions[pid], teacher=teacher[pid],
                                student=[r.text for r in rows]))
    return groups


def summarize(policy: str, samples: Sequence[Rollout], references: dict[str, str], k: int,
              judged: Sequence[tuple[Group, GroupResult]] = ()) -> EvalResult:
    outcome = {(s.prompt_id, s.sample_idx): grade(s.text, references[s.prompt_id]) for s in samples}
    accuracy, counts = accuracy_of(list(outcome.values()))
    result = EvalResult(policy=policy, n_problems=len({s.prompt_id for s in samples}), k=k, n_samples=len(samples),
                        accuracy=accuracy, correct=counts[Outcome.CORRECT], wrong=counts[Outcome.WRONG],
                        unparseable=counts[Outcome.UNPARSEABLE], no_reference=counts[Outcome.NO_REFERENCE],
                        rubric_prompts=len(judged))
    if not judged:
        return result
    ok = [(g, r) for g, r in judged if r.ok]
    scores, labels, teacher_scores = [], [], []
    for g, r in ok:
        pid = g.group_id.removeprefix("eval:")
        teacher_scores += r.teacher_scores
        for i, score in enumerate(r.student_scores):
            o = outcome[(pid, i)]
            if o != Outcome.NO_REFERENCE:
                scores.append(score)
                labels.append(o == Outcome.CORRECT)
    return result.model_copy(update={
        "rubric_judge_error_rate": 1 - len(ok) / len(judged),
        "mean_rubric_score": _mean(scores), "teacher_rubric_score": _mean(teacher_scores),
        "reward_auc": auc(scores, labels) if scores else None})
