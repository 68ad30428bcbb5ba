"""Sentence embeddings for near-duplicate criteria: the packaged all-MiniLM-L6-v2, mean-pooled, L2-normalised.

The model is loaded once per process: loading costs seconds, embedding a round's criteria a fraction of that.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ropd.models import minilm_dir

MAX_TOKENS = 256  # the model's training length; criteria are far shorter (≤ 600 chars)
DIM = 384


@lru_cache(maxsize=1)
def _model() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed(texts: list[str], batch: int = 64) -> np.ndarray:
    """Unit-norm float32 embeddings, one row per text (shape n × 384)."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    if not texts:
        return out
    import torch

    tokenizer, model = _model()
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=MAX_TOKENS,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[i:i + batch] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out
