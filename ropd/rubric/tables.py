"""Engine results as the tables of the data contract (design §3): rubrics, criteria, judgements, rewards."""

from __future__ import annotations

import hashlib

import pandas as pd

from ropd.rubric.engine import GroupResult
from ropd.rubric.schema import Rubric


def rubric_id(rubric: Rubric) -> str:
    """Content hash: the same rubric has the same id wherever it was mined."""
    return hashlib.sha256(rubric.model_dump_json(exclude={"max_score"}).encode()).hexdigest()[:16]

def result_frames(results: list[GroupResult], *, run_id: str, round: int, rubricator_fingerprint: str,
                  prompt_ids: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """`prompt_ids` maps group id → prompt id where they differ (several groups per prompt)."""
    prompt_ids = prompt_ids or {}
    rubrics, criteria, judgements, rewards = [], [], [], []
    for r in results:
        pid = prompt_ids.get(r.group_id, r.group_id)
        base = {"run_id": run_id, "round": round, "prompt_id": pid}
        rid = rubric_id(r.rubric) if r.rubric else None
        if r.rubric is not None:
            rubrics.append({**base, "rubric_id": rid, "n_criteria": len(r.rubric.criteria),
                            "max_score": r.rubric.max_score, "rubricator_fingerprint": rubricator_fingerprint,
                            "rubric_json": r.rubric.model_dump_json()})
            for pos, c in enumerate(r.rubric.criteria):
                criteria.append({**base, "rubric_id": rid, "position": pos, "criterion_id": c.id,
                                 "category": c.category.value, "text": c.text, "points": c.points,
                                 "rubricator_fingerprint": rubricator_fingerprint})
            for pool_pos, (item, row) in enumerate(zip(r.pool, r.verdicts, strict=True)):
                for c, v in zip(r.rubric.criteria, row, strict=True):
                    judgements.append({**base, "rubric_id": rid, "source": item.source.value,
                                       "answer_idx": item.index, "pool_position": pool_pos,
                                       "criterion_id": c.id, "verdict": v})
        for i, reward in enumerate(r.rewards):
            score = None
            if r.rubric is not None:
                score = sum(c.points for c, v in zip(r.rubric.criteria, r.student_verdicts[i], strict=True) if v)
            rewards.append({**base, "sample_idx": i, "rubric_id": rid, "score": score,
                            "max_score": r.rubric.max_score if r.rubric else None, "reward": reward,
                            "status": r.status.value,
                            "error_stage": r.error.stage if r.error else None,
                            "error_type": r.error.type if r.error else None})
    judg_cols = ["run_id", "round", "prompt_id", "rubric_id", "source", "answer_idx", "pool_position",
                 "criterion_id", "verdict"]
    return {
        "rubrics": pd.DataFrame(rubrics),
        "criteria": pd.DataFrame(criteria),
        "judgements": pd.DataFrame(judgements, columns=judg_cols),
        "rewards": pd.DataFrame(rewards),
    }

def teacher_below_student_rate(results: list[GroupResult]) -> float | None:
    """Share of ok groups where the best student outscores the worst teacher answer: a diagnostic only."""
    ok = [r for r in results if r.ok and r.teacher_scores]
    if not ok:
        return None
    return sum(min(r.teacher_scores) < max(r.student_scores) for r in ok) / len(ok)
