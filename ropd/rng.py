"""Seeded generation that stays reproducible when stages run side by side in one process (`overlap`).

`generate()` draws from torch's global generator and takes no generator of its own, so two threads
sampling at once would interleave their draws. Each seeded generation holds one process-wide lock from
reseeding to its last draw, and so draws exactly what it would alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_GLOBAL_RNG = threading.Lock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    import torch

    with _GLOBAL_RNG:
        torch.manual_seed(seed)
        yield
