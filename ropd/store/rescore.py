"""`ropd audit rescore`: what a round's rewards and advantages would have been under other rubric weights.

Everything is recomputed from the stored verdicts (no judge call): the reward of a rollout is
Σ w·v / Σ w over the criteria its group was judged with (`weighted_rate`, as the engine scores), and
advantages are the trainer's own group advantages (`group_advantages`, grouped by prompt as
`build_samples` groups them). With no option the stored rewards come back exactly.

Options, applied in this order: `ignore_merges` puts back each criterion QA merged away (it was never
judged: it takes the verdict of the criterion that absorbed it, a duplicate by construction) with its
own points; `drop` removes criteria; `weights` multiplies the points of a category; `caps` scales a
category's points down so that they add up to at most the cap in each rubric.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import duckdb
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ropd.io import atomic_write_parquet
from ropd.rubric.schema import Category
from ropd.rubric.scoring import weighted_rate
from ropd.store.audit import run_query
from ropd.store.export import finished_run
from ropd.store.tables import StoreError
from ropd.train.advantages import group_advantages


class RescoreOptions(BaseModel):
    """`drop`: criterion ids, each `ID` (in every rubric of the round) or `GROUP:ID` (in one group)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drop: list[str] = []
    weights: dict[Category, float] = Field(default_factory=dict)
    caps: dict[Category, float] = Field(default_factory=dict)
    ignore_merges: bool = False

    def digest(self) -> str:
        canon = {"drop": sorted(set(self.drop)), "weights": {k.value: v for k, v in sorted(self.weights.items())},
                 "caps": {k.value: v for k, v in sorted(self.caps.items())}, "ignore_merges": self.ignore_merges}
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:12]


class PromptChange(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt_id: str
    deltas: list[float | None]  # new − stored reward per rollout, in sample order; None where either is missing
    sign_flips: int  # rollouts whose advantage changed sign (strictly: one positive, the other negative)
    spearman: float | None  # rank correlation of new with stored rewards; None when either is constant


class RescoreResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    round: int
    options: RescoreOptions
    prompts: list[PromptChange]
    path: Path


def parse_category_values(items: list[str], what: str) -> dict[Category, float]:
    """`category=F` pairs from the command line; a name that is not a category lists the ones there are."""
    out: dict[Category, float] = {}
    names = ", ".join(c.value for c in Category)
    for item in items:
        name, sep, raw = item.partition("=")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not sep or name not in {c.value for c in Category} or not value >= 0:
            raise StoreError(f"{what} {item!r}: expected CATEGORY=NUMBER (≥ 0), CATEGORY one of {names}")
        out[Category(name)] = value
    return out


def rescore(run_dir: Path, rnd: int, options: RescoreOptions) -> RescoreResult:
    """Rescore one finished round. The rows go to `<runs>/.rescore/<run>/round_<r>_<digest>.parquet`: outside the
    run directory, which DVC's summarize and report stages hash as a whole, and in a dot directory, which
    `ropd store rebuild` does not take for a run (as with `.locks` and `.timings`)."""
    with finished_run(run_dir, [rnd]) as (con, _):
        rows = _criteria(con, rnd, options.ignore_merges)
        rewards = run_query(con, "SELECT group_id, prompt_id, sample_idx, reward, status FROM rewards "
                                 "WHERE round = $r ORDER BY prompt_id, group_id, sample_idx", {"r": rnd}).records()
    _check_drops(options.drop, rows)
    new = _rewards(rows, options)
    frame = pd.DataFrame(rewards, columns=["group_id", "prompt_id", "sample_idx", "reward", "status"])
    frame["new_reward"] = [new.get((g, s)) if st == "ok" else None
                           for g, s, st in zip(frame["group_id"], frame["sample_idx"], frame["status"], strict=True)]
    groups = frame["prompt_id"].tolist()
    ok = (frame["status"] == "ok").tolist()
    stored = [None if pd.isna(x) else float(x) for x in frame["reward"]]
    fresh = [None if x is None or pd.isna(x) else float(x) for x in frame["new_reward"]]
    adv, mask = group_advantages(stored, groups, ok)
    new_adv, new_mask = group_advantages(fresh, groups, [o and f is not None for o, f in zip(ok, fresh, strict=True)])
    frame["delta"] = [None if a is None or b is None else b - a for a, b in zip(stored, fresh, strict=True)]
    frame["advantage"] = [a if m else None for a, m in zip(adv, mask, strict=True)]
    frame["new_advantage"] = [a if m else None for a, m in zip(new_adv, new_mask, strict=True)]
    frame["sign_flip"] = [bool(m and n and a * b < 0) for a, b, m, n in zip(adv, new_adv, mask, new_mask, strict=True)]
    frame.insert(0, "round", rnd)
    frame.insert(0, "run_id", run_dir.name)
    frame["options"] = options.model_dump_json()
    path = run_dir.parent / ".rescore" / run_dir.name / f"round_{rnd}_{options.digest()}.parquet"
    atomic_write_parquet(frame, path)
    return RescoreResult(run_id=run_dir.name, round=rnd, options=options, prompts=_per_prompt(frame), path=path)


def _criteria(con: duckdb.DuckDBPyConnection, rnd: int, ignore_merges: bool) -> pd.DataFrame:
    """One row per (group, student rollout, criterion it was judged on): points, category, verdict."""
    judged = run_query(con, """
        SELECT group_id, rubric_id, answer_idx AS sample_idx, position, criterion_id, category, points, verdict
        FROM criterion_verdicts WHERE round = $r AND source = 'student'""", {"r": rnd}).records()
    frame = pd.DataFrame(judged, columns=["group_id", "rubric_id", "sample_idx", "position", "criterion_id",
                                          "category", "points", "verdict"])
    if not ignore_merges:
        return frame
    # A merged-away criterion of a rubric that was judged clean, back with its absorber's verdicts.
    restored = run_query(con, """
        SELECT v.group_id, v.rubric_id, v.answer_idx AS sample_idx, 1000 + raw.position AS position,
               m.dropped_criterion_id AS criterion_id, raw.category, m.dropped_points AS points, v.verdict
        FROM merges m
        JOIN criterion_verdicts v ON v.run_id = m.run_id AND v.round = m.round AND v.group_id = m.group_id
             AND v.rubric_id = m.rubric_id AND v.criterion_id = m.kept_criterion_id AND v.source = 'student'
        JOIN criteria raw ON raw.run_id = m.run_id AND raw.round = m.round AND raw.group_id = m.group_id
             AND raw.rubric_id = m.raw_rubric_id AND raw.criterion_id = m.dropped_criterion_id
        WHERE m.round = $r""", {"r": rnd}).records()
    return pd.concat([frame, pd.DataFrame(restored, columns=frame.columns)], ignore_index=True)


def _check_drops(drop: list[str], rows: pd.DataFrame) -> None:
    known = set(rows["criterion_id"]) | {f"{g}:{c}" for g, c in zip(rows["group_id"], rows["criterion_id"],
                                                                      strict=True)}
    if unknown := [d for d in drop if d not in known]:
        raise StoreError(f"--drop-criterion {', '.join(unknown)}: no such criterion in this round "
                         "(give ID, e.g. c3, or GROUP:ID)")


def _rewards(rows: pd.DataFrame, options: RescoreOptions) -> dict[tuple[str, int], float | None]:
    """(group, sample) → reward under `options`; None where no weight is left."""
    drop = set(options.drop)
    keep = [c not in drop and f"{g}:{c}" not in drop for g, c in zip(rows["group_id"], rows["criterion_id"],
                                                                     strict=True)]
    rows = rows[keep].sort_values(["group_id", "sample_idx", "position"], kind="stable").copy()
    rows["weight"] = [float(p) * options.weights.get(Category(c), 1.0)
                      for p, c in zip(rows["points"], rows["category"], strict=True)]
    for category, cap in options.caps.items():
        # A rubric's points in the category, counted once per criterion (every rollout sees the same rubric).
        per = rows[rows["category"] == category.value].drop_duplicates(["group_id", "criterion_id"])
        total = per.groupby("group_id")["weight"].sum()
        scale = (cap / total).clip(upper=1.0)
        hit = rows["category"] == category.value
        rows.loc[hit, "weight"] *= rows.loc[hit, "group_id"].map(scale).fillna(1.0)
    out: dict[tuple[str, int], float | None] = {}
    for (g, s), part in rows.groupby(["group_id", "sample_idx"], sort=True):
        weights, verdicts = part["weight"].tolist(), part["verdict"].astype(bool).tolist()
        out[(str(g), int(s))] = weighted_rate(weights, verdicts) if sum(weights) > 0 else None
    return out


def _per_prompt(frame: pd.DataFrame) -> list[PromptChange]:
    out = []
    for pid, part in frame.groupby("prompt_id", sort=True):
        both = part.dropna(subset=["reward", "new_reward"])
        # Spearman's rho: Pearson's r of the ranks (ties share their mean rank); NaN when either side is constant.
        rho = both["reward"].astype(float).rank().corr(both["new_reward"].astype(float).rank()) \
            if len(both) > 1 else math.nan
        out.append(PromptChange(prompt_id=str(pid), deltas=[None if pd.isna(d) else float(d) for d in part["delta"]],
                                sign_flips=int(part["sign_flip"].sum()), spearman=None if pd.isna(rho) else rho))
    return out
