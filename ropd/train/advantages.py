"""Group-relative advantages. A group whose judging failed is masked, never scored 0."""

from __future__ import annotations

import math
from collections import defaultdict


def group_advantages(
    rewards: list[float | None], groups: list[str], ok: list[bool], *, scale_by_std: bool = False, eps: float = 1e-4
) -> tuple[list[float], list[bool]]:
    """A_i = r_i − mean(r_group) (÷ std when asked) → (advantages, mask).

    A rollout is masked when its group is not `ok` or its reward is missing; a masked rollout gets
    advantage 0 and must contribute no gradient.
    """
    if not len(rewards) == len(groups) == len(ok):
        raise ValueError("rewards, groups and ok must have one entry per rollout")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    adv = [0.0] * len(rewards)
    mask = [False] * len(rewards)
    for idx in members.values():
        if not all(ok[i] and rewards[i] is not None for i in idx):
            continue  # a partly judged group is not comparable: mask the whole group
        vals = [float(rewards[i]) for i in idx]  # type: ignore[arg-type]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1))
        for i, v in zip(idx, vals, strict=True):
            adv[i] = (v - mean) / (std + eps) if scale_by_std else v - mean
            mask[i] = True
    return adv, mask
