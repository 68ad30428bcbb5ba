"""Seeded generation that stays reproducible when stages run side by side in one process (`overlap`).

`generate()` draws from torch's global generator and takes no generator of its own, so two threads
sampling at once would interleave their draws. Each seeded generation holds one process-wide lock from
reseeding to its last draw, and so draws exactly what it would alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ropd.params import Params

_GLOBAL_RNG = threading.Lock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    import torch

    with _GLOBAL_RNG:
        torch.manual_seed(seed)
        yield


def round_seed(params: Params, r: int) -> int:
    """Round r's sampling seed: a new draw each round, moved by `data.seed` and `student.sampling.seed`.

    `student.sampling.seed` enters with a factor that `data.seed · 1000 + r` never reaches in practice,
    so its default (0) keeps every earlier run's seeds and any other value gives a run of its own.
    """
    return params.student.sampling.seed * 1_000_003 + params.data.seed * 1000 + r
