"""Engine results as the tables of the data contract (design §3): rubrics, criteria, judgements, rewards,
rubric failures."""

from __future__ import annotations

import hashlib

import pandas as pd
from pydantic import BaseModel, ConfigDict

from ropd.rubric.engine import GroupResult
from ropd.rubric.schema import Rubric

RUBRIC_COLS = ["run_id", "round", "group_id", "prompt_id", "rubric_id", "n_criteria", "max_score",
               "rubricator_fingerprint", "rubric_json"]
CRITERIA_COLS = ["run_id", "round", "group_id", "prompt_id", "rubric_id", "position", "criterion_id", "category",
                 "text", "points", "rubricator_fingerprint"]
JUDGEMENT_COLS = ["run_id", "round", "group_id", "prompt_id", "rubric_id", "source", "answer_idx", "pool_position",
                  "criterion_id", "verdict"]
REWARD_COLS = ["run_id", "round", "group_id", "prompt_id", "sample_idx", "rubric_id", "score", "max_score", "reward",
               "status", "error_stage", "error_type"]
FAILURE_COLS = ["run_id", "round", "group_id", "prompt_id", "stage", "error_type", "message"]


class GroupMeta(BaseModel):
    """Where a group's student answers came from: one prompt, and the rollouts' sample indices in order."""

    model_config = ConfigDict(frozen=True)

    group_id: str
    prompt_id: str
    sample_indices: list[int]


def rubric_id(rubric: Rubric) -> str:
    """Content hash: the same rubric has the same id wherever it was mined."""
    return hashlib.sha256(rubric.model_dump_json(exclude={"max_score"}).encode()).hexdigest()[:16]


def rubric_frames(rubrics: list[tuple[GroupMeta, Rubric]], *, run_id: str, round: int,
                  rubricator_fingerprint: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, crit = [], []
    for meta, rubric in rubrics:
        base = {"run_id": run_id, "round": round, "group_id": meta.group_id, "prompt_id": meta.prompt_id,
                "rubric_id": rubric_id(rubric)}
        rows.append({**base, "n_criteria": len(rubric.criteria), "max_score": rubric.max_score,
                     "rubricator_fingerprint": rubricator_fingerprint, "rubric_json": rubric.model_dump_json()})
        crit += [{**base, "position": pos, "criterion_id": c.id, "category": c.category.value, "text": c.text,
                  "points": c.points, "rubricator_fingerprint": rubricator_fingerprint}
                 for pos, c in enumerate(rubric.criteria)]
    return pd.DataFrame(rows, columns=RUBRIC_COLS), pd.DataFrame(crit, columns=CRITERIA_COLS)


def verdict_frames(results: list[tuple[GroupMeta, GroupResult]], *, run_id: str,
                   round: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    judgements, rewards = [], []
    for meta, r in results:
        base = {"run_id": run_id, "round": round, "group_id": meta.group_id, "prompt_id": meta.prompt_id}
        rid = rubric_id(r.rubric) if r.rubric else None
        if r.rubric is not None:
            for pool_pos, (item, row) in enumerate(zip(r.pool, r.verdicts, strict=True)):
                answer_idx = meta.sample_indices[item.index] if item.source.value == "student" else item.index
                judgements += [{**base, "rubric_id": rid, "source": item.source.value, "answer_idx": answer_idx,
                                "pool_position": pool_pos, "criterion_id": c.id, "verdict": v}
                               for c, v in zip(r.rubric.criteria, row, strict=True)]
        for i, reward in enumerate(r.rewards):
            score, max_score = None, r.rubric.max_score if r.rubric else r.score_scale
            if r.rubric is not None and r.student_verdicts:
                score = sum(c.points for c, v in zip(r.rubric.criteria, r.student_verdicts[i], strict=True) if v)
            elif r.score_scale is not None and reward is not None:
                score = int(reward * r.score_scale + 0.5)  # `round` is shadowed by the parameter
            rewards.append({**base, "sample_idx": meta.sample_indices[i], "rubric_id": rid, "score": score,
                            "max_score": max_score, "reward": reward,
                            "status": r.status.value, "error_stage": r.error.stage if r.error else None,
                            "error_type": r.error.type if r.error else None})
    return pd.DataFrame(judgements, columns=JUDGEMENT_COLS), pd.DataFrame(rewards, columns=REWARD_COLS)


def failure_frame(results: list[tuple[GroupMeta, GroupResult]], *, run_id: str, round: int) -> pd.DataFrame:
    """rubric_failures: the groups whose rubric could not be induced (stage `rubric`), with the error's message;
    a failure at verification is in the rewards table only, as in a staged round."""
    rows = [{"run_id": run_id, "round": round, "group_id": meta.group_id, "prompt_id": meta.prompt_id,
             "stage": r.error.stage, "error_type": r.error.type, "message": r.error.message}
            for meta, r in results if r.error is not None and r.error.stage == "rubric"]
    return pd.DataFrame(rows, columns=FAILURE_COLS)


def result_frames(results: list[GroupResult], *, run_id: str, round: int, rubricator_fingerprint: str,
                  metas: list[GroupMeta] | None = None) -> dict[str, pd.DataFrame]:
    """All four tables from `score_groups` results (one group per prompt unless `metas` says otherwise)."""
    metas = metas or [GroupMeta(group_id=r.group_id, prompt_id=r.group_id, sample_indices=list(range(len(r.rewards))))
                      for r in results]
    rubrics, criteria = rubric_frames([(m, r.rubric) for m, r in zip(metas, results, strict=True) if r.rubric],
                                      run_id=run_id, round=round, rubricator_fingerprint=rubricator_fingerprint)
    judgements, rewards = verdict_frames(list(zip(metas, results, strict=True)), run_id=run_id, round=round)
    return {"rubrics": rubrics, "criteria": criteria, "judgements": judgements, "rewards": rewards}


def teacher_below_student_rate(results: list[GroupResult]) -> float | None:
    """Share of ok groups where the best student outscores the worst teacher answer: a diagnostic only."""
    ok = [r for r in results if r.ok and r.teacher_scores]
    if not ok:
        return None
    return sum(min(r.teacher_scores) < max(r.student_scores) for r in ok) / len(ok)
