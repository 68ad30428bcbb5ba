"""`ropd audit rescore`: what a round's rewards and advantages would have been under other rubric weights.

Everything is recomputed from the stored verdicts (no judge call): the reward of a rollout is
Σ w·v / Σ w over the criteria its group was judged with (`weighted_rate`'s formula, as the engine scores), and
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
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ropd.io import atomic_write_parquet
from ropd.rubric.schema import Category
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
    `ropd store rebuild` does not take for a run (as with `.locks` and `.timings`).

    The rewards are recomputed in DuckDB: a round of a million criteria has millions of verdicts, too many
    to carry through Python one by one."""
    with finished_run(run_dir, [rnd]) as (con, _):
        _criteria(con, rnd, options.ignore_merges)
        _check_drops(con, options.drop)
        frame = _rewards(con, rnd, options)
    groups = frame["prompt_id"].tolist()
    ok = (frame["status"] == "ok").to_numpy()
    stored, fresh = (frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in ("reward", "new_reward"))
    adv, mask = group_advantages(stored, groups, ok.tolist())
    new_adv, new_mask = group_advantages(fresh, groups, (ok & frame["new_reward"].notna().to_numpy()).tolist())
    adv_a, new_a = np.array(adv), np.array(new_adv)
    mask_a, new_mask_a = np.array(mask, dtype=bool), np.array(new_mask, dtype=bool)
    frame["delta"] = frame["new_reward"] - frame["reward"]  # NaN (null in the file) where either is missing
    frame["advantage"] = np.where(mask_a, adv_a, np.nan)
    frame["new_advantage"] = np.where(new_mask_a, new_a, np.nan)
    frame["sign_flip"] = mask_a & new_mask_a & (adv_a * new_a < 0)
    frame.insert(0, "round", rnd)
    frame.insert(0, "run_id", run_dir.name)
    frame["options"] = options.model_dump_json()
    path = rescore_dir(run_dir) / f"round_{rnd}_{options.digest()}.parquet"
    atomic_write_parquet(frame, path)
    return RescoreResult(run_id=run_dir.name, round=rnd, options=options, prompts=per_prompt(frame), path=path)


def rescore_dir(run_dir: Path) -> Path:
    return run_dir.parent / ".rescore" / run_dir.name


class RescoreSummary(BaseModel):
    """One rescore file in a line, for the report: how far the rewards moved and whether the update would differ."""

    model_config = ConfigDict(frozen=True)

    file: str
    round: int
    options: str  # the options that differ from the defaults, as JSON
    rollouts: int
    changed: int  # rollouts whose reward moved (null counts as a move to or from a number)
    mean_abs_delta: float | None
    sign_flips: int
    prompts_flipped: int
    min_spearman: float | None


def rescore_summaries(run_dir: Path) -> list[RescoreSummary]:
    """Every `ropd audit rescore` written for the run, oldest option set first by name (round, digest)."""
    out = []
    for path in sorted(rescore_dir(run_dir).glob("round_*.parquet")):
        frame = pd.read_parquet(path)
        prompts = per_prompt(frame)
        moved = (frame["delta"].abs() > 1e-12) | (frame["reward"].isna() != frame["new_reward"].isna())
        rhos = [p.spearman for p in prompts if p.spearman is not None]
        options = RescoreOptions.model_validate_json(frame["options"].iloc[0]) if len(frame) else RescoreOptions()
        out.append(RescoreSummary(
            file=path.name, round=int(path.stem.split("_")[1]), options=options.model_dump_json(exclude_defaults=True),
            rollouts=len(frame), changed=int(moved.sum()),
            mean_abs_delta=float(frame["delta"].abs().mean()) if frame["delta"].notna().any() else None,
            sign_flips=int(frame["sign_flip"].sum()), prompts_flipped=sum(p.sign_flips > 0 for p in prompts),
            min_spearman=min(rhos) if rhos else None))
    return out


def _criteria(con: duckdb.DuckDBPyConnection, rnd: int, ignore_merges: bool) -> None:
    """Table `judged`: one row per (group, student rollout, criterion it was judged on): points, category, verdict."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE judged AS
        SELECT group_id, rubric_id, answer_idx AS sample_idx, position, criterion_id, category, points, verdict
        FROM criterion_verdicts WHERE round = $r AND source = 'student'""", {"r": rnd})
    if ignore_merges:
        # A merged-away criterion of a rubric that was judged clean, back with its absorber's verdicts.
        con.execute("""
            INSERT INTO judged
            SELECT v.group_id, v.rubric_id, v.answer_idx, 1000 + raw.position, m.dropped_criterion_id, raw.category,
                   m.dropped_points, v.verdict
            FROM merges m
            JOIN criterion_verdicts v ON v.run_id = m.run_id AND v.round = m.round AND v.group_id = m.group_id
                 AND v.rubric_id = m.rubric_id AND v.criterion_id = m.kept_criterion_id AND v.source = 'student'
            JOIN criteria raw ON raw.run_id = m.run_id AND raw.round = m.round AND raw.group_id = m.group_id
                 AND raw.rubric_id = m.raw_rubric_id AND raw.criterion_id = m.dropped_criterion_id
            WHERE m.round = $r""", {"r": rnd})


_DROPPED = ("list_contains($drop::VARCHAR[], criterion_id) "
            "OR list_contains($drop::VARCHAR[], group_id || ':' || criterion_id)")


def _check_drops(con: duckdb.DuckDBPyConnection, drop: list[str]) -> None:
    if not drop:
        return
    hits = con.execute(f"SELECT DISTINCT criterion_id, group_id || ':' || criterion_id FROM judged WHERE {_DROPPED}",
                       {"drop": drop}).fetchall()
    known = {x for row in hits for x in row}
    if unknown := [d for d in drop if d not in known]:
        raise StoreError(f"--drop-criterion {', '.join(unknown)}: no such criterion in this round "
                         "(give ID, e.g. c3, or GROUP:ID)")


def _rewards(con: duckdb.DuckDBPyConnection, rnd: int, options: RescoreOptions) -> pd.DataFrame:
    """The round's rewards (group, prompt, sample, stored reward, status) with `new_reward` under `options`: Σ w·v / Σ w
    over the criteria left (null where no weight is left, or the group was not judged)."""
    weights, caps = sorted(options.weights.items()), sorted(options.caps.items())
    params = {"r": rnd, "drop": list(options.drop),
              "cats": [c.value for c, _ in weights], "factors": [float(f) for _, f in weights],
              "cap_cats": [c.value for c, _ in caps], "caps": [float(x) for _, x in caps]}
    return con.execute(f"""
        WITH kept AS (
          SELECT group_id, sample_idx, criterion_id, category, verdict,
                 points::DOUBLE * coalesce(list_extract($factors::DOUBLE[], list_position($cats::VARCHAR[], category)),
                                           1.0) AS weight
          FROM judged WHERE NOT ({_DROPPED})
        ), capped AS (  -- a rubric's points in a capped category, counted once per criterion, scaled down to the cap
          SELECT group_id, category,
                 least(1.0, list_extract($caps::DOUBLE[], list_position($cap_cats::VARCHAR[], category)) / sum(weight))
                   AS scale
          FROM (SELECT DISTINCT group_id, criterion_id, category, weight FROM kept)
          WHERE list_contains($cap_cats::VARCHAR[], category) GROUP BY group_id, category
        ), scored AS (
          SELECT group_id, sample_idx, sum(w) FILTER (WHERE verdict) AS won, sum(w) AS total
          FROM (SELECT k.group_id, k.sample_idx, k.verdict, k.weight * coalesce(c.scale, 1.0) AS w
                FROM kept k LEFT JOIN capped c USING (group_id, category))
          GROUP BY group_id, sample_idx
        )
        SELECT w.group_id, w.prompt_id, w.sample_idx, w.reward, w.status,
               CASE WHEN w.status = 'ok' AND s.total > 0 THEN coalesce(s.won, 0) / s.total END AS new_reward
        FROM rewards w LEFT JOIN scored s USING (group_id, sample_idx)
        WHERE w.round = $r ORDER BY w.prompt_id, w.group_id, w.sample_idx""", params).df()


def per_prompt(frame: pd.DataFrame) -> list[PromptChange]:
    """Per prompt (the frame is sorted by prompt), vectorised: its deltas in order, sign flips and Spearman's rho
    (Pearson's r of the ranks, ties sharing their mean rank; NaN when either side is constant)."""
    if frame.empty:
        return []
    pids = frame["prompt_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, pids[1:] != pids[:-1]])
    both = frame.loc[frame["reward"].notna() & frame["new_reward"].notna(), ["prompt_id", "reward", "new_reward"]]
    by = both["prompt_id"]
    ranks = both[["reward", "new_reward"]].astype(float).groupby(by).rank()
    dev = ranks - ranks.groupby(by).transform("mean")
    with np.errstate(invalid="ignore", divide="ignore"):
        sq = (dev**2).groupby(by).sum()
        rho = (dev["reward"] * dev["new_reward"]).groupby(by).sum() / np.sqrt(sq["reward"] * sq["new_reward"])
    rho = rho.where(by.value_counts() > 1).reindex(pids[starts])
    deltas = np.split(frame["delta"].astype(object).where(frame["delta"].notna(), None).to_numpy(), starts[1:])
    flips = np.add.reduceat(frame["sign_flip"].to_numpy().astype(int), starts)
    # model_construct: the values are built here, typed already; validating 100k of them would cost a second
    return [PromptChange.model_construct(prompt_id=str(pid), deltas=d.tolist(), sign_flips=int(n),
                                         spearman=None if pd.isna(r) else float(r))
            for pid, d, n, r in zip(pids[starts], deltas, flips, rho.to_numpy(), strict=True)]
