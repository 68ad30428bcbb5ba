"""The local `ChatModel`: a transformers model in this process, batched, schema-constrained by xgrammar.

Any role can be local. Concurrent `complete` calls are gathered into batches (same sampling
settings) and generated together, with one xgrammar grammar per row, so every structured reply
parses and validates by construction. Replies go through the same call cache as remote ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from ropd.config import RoleConfig
from ropd.llm.base import ChatRequest, ChatResult
from ropd.llm.cache import CallCache
from ropd.llm.errors import ErrorType, LLMError
from ropd.llm.strict_schema import tighten_for_local
from ropd.rng import seeded


class LocalLM:
    """A loaded causal LM plus its tokenizer and grammar compiler; one per (path, device), shared by roles."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import torch
        import xgrammar as xgr
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = path
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        vocab = self.model.config.vocab_size
        self._info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab,
                                                        stop_token_ids=[self.tokenizer.eos_token_id])
        self._compiler = xgr.GrammarCompiler(self._info, max_threads=2)
        self._grammars: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _grammar(self, schema: dict[str, Any]) -> Any:
        """The request's strict schema, tightened once for this decoder (`tighten_for_local`), compiled."""
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            # Compact separators: the default any-whitespace grammar costs ~58% more tokens.
            self._grammars[key] = self._compiler.compile_json_schema(
                json.dumps(tighten_for_local(schema)), any_whitespace=False, separators=(",", ":"))
        return self._grammars[key]

    def generate(self, requests: list[ChatRequest]) -> list[tuple[str, str, int, int]]:
        """Generate for requests that share sampling settings → (text, finish_reason, tokens_in, tokens_out)."""
        import torch
        import xgrammar as xgr

        first = requests[0]
        texts = [self.tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
                 for r in requests]
        with self._lock:
            enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
            processors = []
            if first.json_schema is not None:
                processors.append(xgr.contrib.hf.LogitsProcessor([self._grammar(r.json_schema or {})
                                                                  for r in requests]))
            seed = int(hashlib.sha256("".join(r.key() for r in requests).encode()).hexdigest()[:8], 16)
            sample = (first.temperature or 0.0) > 0  # None (not set) decodes greedily, like 0
            with seeded(seed), torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=first.max_tokens,
                    do_sample=sample,
                    temperature=first.temperature if sample else None,
                    top_p=first.top_p if sample else None,
                    top_k=None,
                    logits_processor=processors or None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
        new = out[:, enc["input_ids"].shape[1] :]
        results = []
        eos = self.tokenizer.eos_token_id
        for i in range(len(requests)):
            row = new[i].tolist()
            finished = eos in row
            n_out = row.index(eos) + 1 if finished else len(row)
            text = self.tokenizer.decode(row[:n_out], skip_special_tokens=True)
            n_in = int(enc["attention_mask"][i].sum())
            results.append((text, "stop" if finished else "length", n_in, n_out))
        return results


@lru_cache(maxsize=4)
def load_local(path: str, device: str = "cpu") -> LocalLM:
    return LocalLM(Path(path), device)


def _gen_key(r: ChatRequest) -> tuple:
    return (r.temperature, r.top_p, r.max_tokens, r.json_schema is None)


class LocalChat:
    """`ChatModel` over a local transformers model; concurrent calls are micro-batched."""

    def __init__(self, role: str, config: RoleConfig, *, cache: CallCache | None = None,
                 batch_wait_s: float = 0.02) -> None:
        if config.model_path is None:
            from ropd.models import prepare_smollm2

            config = config.model_copy(update={"model_path": str(prepare_smollm2())})
        self.role = role
        self.config = config
        self.cache = cache
        self.batch_wait_s = batch_wait_s
        self.lm = load_local(str(config.model_path), config.device)
        self._pending: list[tuple[ChatRequest, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.calls_sent = 0
        self.batches: list[int] = []

    async def complete(self, request: ChatRequest) -> ChatResult:
        if self.cache is not None and (hit := self.cache.get(request)) is not None:
            return hit
        t0 = time.monotonic()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((request, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        try:
            text, finish, n_in, n_out = await fut
        except LLMError as err:
            if self.cache is not None:
                self.cache.put_error(request, err.type.value, err.message, time.monotonic() - t0)
            raise
        result = ChatResult(call_id=request.key(), content=text, finish_reason=finish, tokens_in=n_in,
                            tokens_out=n_out, latency_s=time.monotonic() - t0,
                            response_format="grammar" if request.json_schema is not None else "text")
        if self.cache is not None:
            self.cache.put_ok(request, result, {"backend": "local", "model_path": Path(self.lm.path).name})
        return result

    async def aclose(self) -> None:
        """Nothing to release: the model stays loaded for other roles and rounds."""

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(self.batch_wait_s)  # let concurrent callers join the batch
            key = _gen_key(self._pending[0][0])
            batch = [p for p in self._pending if _gen_key(p[0]) == key][: self.config.batch_size]
            for p in batch:
                self._pending.remove(p)
            self.calls_sent += len(batch)
            self.batches.append(len(batch))
            try:
                outs = await asyncio.to_thread(self.lm.generate, [r for r, _ in batch])
            except Exception as exc:  # a local failure (OOM, bad template) fails this batch, not the process
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(LLMError(ErrorType.HTTP, f"local generation failed: {exc!r}",
                                                   retryable=False))
                continue
            for (_, fut), out in zip(batch, outs, strict=True):
                if not fut.done():
                    fut.set_result(out)
