"""The OpenAI-compatible backend: OpenAI, vLLM, or any server speaking `POST /v1/chat/completions`.

Retries (tenacity, exponential backoff with jitter, `Retry-After` honoured), the per-role circuit
breaker, the shared limiter and the call cache all sit here, around the `openai` async client, whose
own retries are switched off so that there is exactly one retry policy.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

from ropd.config import RoleConfig
from ropd.llm.base import ChatRequest, ChatResult
from ropd.llm.breaker import CircuitBreaker
from ropd.llm.cache import CallCache
from ropd.llm.errors import ErrorType, LLMError
from ropd.llm.limits import CallLimiter

_FORMAT_LADDER = ("json_schema", "json_object", "text")


def _retry_after_seconds(headers: Any) -> float | None:
    """Parse `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def classify(exc: BaseException) -> LLMError:
    """Map an `openai` exception onto our taxonomy."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return LLMError(ErrorType.TIMEOUT, f"request timed out: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        return LLMError(ErrorType.HTTP, f"connection failed: {exc.__cause__ or exc}")
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        retry_after = _retry_after_seconds(exc.response.headers)
        body = (exc.response.text or "")[:300]
        if code == 429:
            return LLMError(ErrorType.RATE_LIMIT, f"HTTP 429: {body}", retry_after=retry_after, status_code=code)
        retryable = code >= 500 or code in (408, 409)
        return LLMError(ErrorType.HTTP, f"HTTP {code}: {body}", retryable=retryable, retry_after=retry_after,
                        status_code=code)
    if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError):
        return LLMError(ErrorType.HTTP, f"malformed response body: {exc}")
    return LLMError(ErrorType.HTTP, f"{type(exc).__name__}: {exc}")


class _RetryAfterOrBackoff(wait_base):
    """Wait what the server asked for (capped), else exponential backoff with jitter."""

    def __init__(self, cfg: RoleConfig) -> None:
        self.cap = cfg.retry_after_cap_s
        self.backoff = wait_exponential_jitter(multiplier=cfg.backoff_initial_s, max=cfg.backoff_max_s,
                                               jitter=cfg.backoff_initial_s)

    def __call__(self, retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, LLMError) and exc.retry_after is not None:
            return min(exc.retry_after, self.cap)
        return self.backoff(retry_state)


class OpenAICompatChat:
    """`ChatModel` over an OpenAI-compatible endpoint, for one role."""

    def __init__(
        self,
        role: str,
        config: RoleConfig,
        *,
        cache: CallCache | None = None,
        limiter: CallLimiter | None = None,
    ) -> None:
        if not config.base_url and config.api_key() == "EMPTY":
            raise ValueError(
                f"role {role!r}: no base_url and no API key in ${config.api_key_env}; set one of them"
            )
        self.role = role
        self.config = config
        self.cache = cache
        self.limiter = limiter or CallLimiter()
        self.breaker = CircuitBreaker(role, config.breaker_threshold, config.breaker_reset_s)
        self._clients: dict[int, openai.AsyncOpenAI] = {}
        # Where the server refused a structured-output mode, remember it for the rest of the run.
        auto = config.response_format == "auto"
        self._format_floor = 0 if auto else _FORMAT_LADDER.index(config.response_format)
        self.calls_sent = 0

    def _client(self) -> openai.AsyncOpenAI:
        """One client per event loop: pooled connections are bound to the loop that opened them, and
        callers such as Prefect tasks or repeated `asyncio.run` start a fresh loop each time."""
        loop_id = id(asyncio.get_running_loop())
        client = self._clients.get(loop_id)
        if client is None:
            # aiohttp transport: the SDK's recommended one for concurrency; it halves per-call client CPU.
            client = openai.AsyncOpenAI(base_url=self.config.base_url, api_key=self.config.api_key(),
                                        timeout=self.config.timeout_s, max_retries=0,
                                        http_client=openai.DefaultAioHttpClient(timeout=self.config.timeout_s))
            self._clients = {loop_id: client}
        return client

    async def aclose(self) -> None:
        """Close this event loop's connections; call it before the loop ends."""
        client = self._clients.pop(id(asyncio.get_running_loop()), None)
        if client is not None:
            await client.close()

    async def complete(self, request: ChatRequest) -> ChatResult:
        if self.cache is not None and (hit := self.cache.get(request)) is not None:
            return hit
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=_RetryAfterOrBackoff(self.config),
            retry=retry_if_exception(lambda e: isinstance(e, LLMError) and e.retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(request)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, request: ChatRequest) -> ChatResult:
        self.breaker.before_call()
        t0 = time.monotonic()
        try:
            async with self.limiter.slot(request.est_tokens()):
                result, raw = await self._send(request)
        except Exception as exc:
            err = classify(exc)
            if err.type in (ErrorType.TIMEOUT, ErrorType.RATE_LIMIT) or (
                err.type == ErrorType.HTTP and err.retryable
            ):
                self.breaker.record_failure()
            if self.cache is not None:
                self.cache.put_error(request, err.type.value, err.message, time.monotonic() - t0)
            raise err from exc
        self.breaker.record_success()
        if self.cache is not None:
            self.cache.put_ok(request, result, raw)
        return result

    async def _send(self, request: ChatRequest) -> tuple[ChatResult, dict[str, Any]]:
        """Send once, stepping down the structured-output ladder when the server rejects a mode."""
        while True:
            mode = _FORMAT_LADDER[self._format_floor] if request.json_schema is not None else "text"
            body: dict[str, Any] = {}
            messages = request.messages
            if mode == "json_schema":
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": request.schema_name or "reply", "schema": request.json_schema,
                                    "strict": True},
                }
            elif mode == "json_object":
                body["response_format"] = {"type": "json_object"}
            if mode != "json_schema" and request.json_schema is not None:
                messages = _with_schema_hint(messages, request.json_schema)
            if request.seed is not None:
                body["seed"] = request.seed
            t0 = time.monotonic()
            self.calls_sent += 1
            try:
                # `post` is the SDK's documented raw route: same client, auth, errors and response model,
                # without the typed-param transformer that walks every message and the JSON schema.
                resp = await self._client().post(
                    "/chat/completions",
                    cast_to=ChatCompletion,
                    body={"model": request.model, "messages": messages, "temperature": request.temperature,
                          "top_p": request.top_p, "max_tokens": request.max_tokens, **body},
                )
            except openai.BadRequestError as exc:
                if mode != "text" and self.config.response_format == "auto" and _mentions_format(exc):
                    self._format_floor += 1
                    continue
                raise
            latency = time.monotonic() - t0
            if not getattr(resp, "choices", None):
                raise LLMError(ErrorType.HTTP, "response has no choices (empty or malformed body)")
            choice = resp.choices[0]
            # An empty completion is the model's answer, not a transport fault: the parse step rejects it.
            content = (choice.message.content if choice.message else None) or ""
            usage = resp.usage
            result = ChatResult(
                call_id=request.key(),
                content=content,
                finish_reason=choice.finish_reason,
                tokens_in=usage.prompt_tokens if usage else None,
                tokens_out=usage.completion_tokens if usage else None,
                latency_s=latency,
                response_format=mode,
            )
            return result, {"id": resp.id, "model": resp.model, "finish_reason": choice.finish_reason}


def _mentions_format(exc: openai.BadRequestError) -> bool:
    text = (exc.response.text or "").lower()
    return any(w in text for w in ("response_format", "json_schema", "json_object", "structured"))


def _with_schema_hint(messages: list[dict[str, str]], schema: dict[str, Any]) -> list[dict[str, str]]:
    """Without server-side schema support, state the schema in the prompt; validation still decides."""
    hint = "\n\nYour reply must be one JSON object valid under this JSON schema:\n" + json.dumps(
        schema, separators=(",", ":")
    )
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] += hint
    else:
        out.insert(0, {"role": "system", "content": hint.strip()})
    return out
