"""Rewards from verdicts: s = Σ w·v / Σ w, computed by us, never taken from the judge."""

from __future__ import annotations

from collections.abc import Sequence

from ropd.rubric.schema import Rubric


def weighted_score(rubric: Rubric, verdicts: list[bool]) -> float:
    """Weighted pass rate of one answer, in [0, 1]."""
    if len(verdicts) != len(rubric.criteria):
        raise ValueError(f"{len(verdicts)} verdicts for a rubric of {len(rubric.criteria)} criteria")
    return weighted_rate([c.points for c in rubric.criteria], verdicts)


def weighted_rate(weights: Sequence[float], verdicts: Sequence[bool]) -> float:
    """Σ w·v / Σ w for any non-negative weights: the reward, also for what-if weights (`ropd audit rescore`)."""
    return sum(w for w, v in zip(weights, verdicts, strict=True) if v) / sum(weights)


def raw_points(rubric: Rubric, verdicts: list[bool]) -> int:
    """Points earned, for the `score` column next to `max_score`."""
    return sum(c.points for c, v in zip(rubric.criteria, verdicts, strict=True) if v)


def category_pass_rates(rubric: Rubric, rows: list[list[bool]]) -> dict[str, float]:
    """Share of (answer, criterion) verdicts that pass, per category: the paper's Table 5 view."""
    totals: dict[str, list[int]] = {}
    for row in rows:
        for c, v in zip(rubric.criteria, row, strict=True):
            t = totals.setdefault(c.category.value, [0, 0])
            t[0] += int(v)
            t[1] += 1
    return {cat: passed / n for cat, (passed, n) in sorted(totals.items())}
