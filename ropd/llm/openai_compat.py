"""The OpenAI-compatible backend: OpenAI, vLLM, or any server speaking `POST /v1/chat/completions` or,
per role (`api: responses`), `POST /v1/responses`.

Retries (tenacity, exponential backoff with jitter, `Retry-After` honoured), the endpoint pool (a
circuit breaker per server), the shared limiter and the call cache all sit here, around the `openai` async client, whose
own retries are switched off so that there is exactly one retry policy.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import json
import time
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from pydantic import BaseModel
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

from ropd.config import RoleConfig
from ropd.llm.base import ChatRequest, ChatResult
from ropd.llm.cache import CallCache
from ropd.llm.endpoints import Endpoint, EndpointPool
from ropd.llm.errors import ErrorType, LLMError
from ropd.llm.limits import CallLimiter
from ropd.llm.strict_schema import tighten_for_local

# Structured-output modes, strongest first. `json_object_schema` is llama.cpp's dialect: a schema inside
# `{"type": "json_object", "schema": ...}`, for servers that refuse `json_schema` but still constrain.
_FORMAT_LADDER = ("json_schema", "json_object_schema", "json_object", "text")
# The endpoint the current attempt was routed to, read by `_client()`; set per attempt, so concurrent
# calls (each its own task, each its own context) never see each other's choice.
_ROUTE: contextvars.ContextVar[Endpoint | None] = contextvars.ContextVar("ropd_endpoint", default=None)
# The endpoints that already failed the current call, kept across its retries (same task, same context).
_TRIED: contextvars.ContextVar[tuple[ChatRequest, frozenset[int]] | None] = contextvars.ContextVar(
    "ropd_tried", default=None)


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
    """Map an `openai` exception onto our taxonomy. A refused role setting is no call failure: it passes
    through unclassified, so no retry, breaker count or per-group record hides it."""
    if isinstance(exc, RoleSettingRefused):
        raise exc
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
        if not config.base_url and not config.base_urls and config.api_key() == "EMPTY":
            raise ValueError(
                f"role {role!r}: no base_url and no API key in ${config.api_key_env}; set one of them"
            )
        self.role = role
        self.config = config
        self.cache = cache
        self.limiter = limiter or CallLimiter()
        self.pool = EndpointPool.for_role(role, config)
        self.breaker = self.pool.endpoints[0].breaker  # the role's only breaker when it has one endpoint
        # event loop id -> endpoint index -> client
        self._clients: dict[int, dict[int, openai.AsyncOpenAI]] = {}
        # Where the server refused a structured-output mode, remember it for the rest of the run.
        auto = config.response_format == "auto"
        self._format_floor = 0 if auto else _FORMAT_LADDER.index(config.response_format)
        self.calls_sent = 0

    def _client(self) -> openai.AsyncOpenAI:
        """The client of the endpoint this attempt was routed to (the first one outside `_attempt`).

        One client per endpoint per event loop: pooled connections are bound to the loop that opened
        them, and callers such as Prefect tasks or repeated `asyncio.run` start a fresh loop each time.
        """
        ep = _ROUTE.get()
        if ep is None or ep not in self.pool.endpoints:  # outside `_attempt`, or another role's route
            ep = self.pool.endpoints[0]
        loop_id = id(asyncio.get_running_loop())
        clients = self._clients.get(loop_id)
        if clients is None:
            clients = {}
            self._clients = {loop_id: clients}
        client = clients.get(ep.index)
        if client is None:
            # aiohttp transport: the SDK's recommended one for concurrency; it halves per-call client CPU.
            client = openai.AsyncOpenAI(base_url=ep.base_url, api_key=self.config.api_key(),
                                        timeout=self.config.timeout_s, max_retries=0,
                                        http_client=openai.DefaultAioHttpClient(timeout=self.config.timeout_s))
            clients[ep.index] = client
        return client

    async def aclose(self) -> None:
        """Close this event loop's connections to every endpoint; call it before the loop ends."""
        for client in self._clients.pop(id(asyncio.get_running_loop()), {}).values():
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
        """One request to one endpoint: the least-loaded healthy one, preferring those that have not
        failed this call yet, so a retry after a dead server's failure lands on a live one."""
        prev = _TRIED.get()
        tried = prev[1] if prev is not None and prev[0] is request else frozenset()
        self.pool.check()  # all circuits open: fail now, without waiting for a slot
        t0 = time.monotonic()
        ep: Endpoint | None = None
        try:
            async with self.limiter.slot(request.est_tokens()):
                with self.pool.route(tried) as ep:
                    token = _ROUTE.set(ep)
                    try:
                        result, raw = await self._send(request)
                    finally:
                        _ROUTE.reset(token)
        except Exception as exc:
            if ep is None:  # every circuit opened while this call waited for a slot: nothing was sent
                raise
            err = classify(exc)
            if err.type in (ErrorType.TIMEOUT, ErrorType.RATE_LIMIT) or (
                err.type == ErrorType.HTTP and err.retryable
            ):
                ep.record_failure()
            _TRIED.set((request, tried | {ep.index}))
            if self.cache is not None:
                self.cache.put_error(request, err.type.value, err.message, time.monotonic() - t0)
            raise err from exc
        _TRIED.set(None)
        ep.record_success()
        if self.cache is not None:
            self.cache.put_ok(request, result, raw)
        return result

    # Set when the server refused `max_tokens` under token_param auto; kept for the rest of the run.
    _max_tokens_refused: bool = False

    @property
    def format_mode(self) -> str:
        """The structured-output mode this role sends now, after any step-down the server forced."""
        return _FORMAT_LADDER[self._format_floor]

    def _token_name(self) -> str:
        """The chat API's name for the token limit: pinned by the role, or `max_tokens` until refused."""
        if self.config.token_param != "auto":
            return self.config.token_param
        return "max_completion_tokens" if self._max_tokens_refused else "max_tokens"

    async def _send(self, request: ChatRequest) -> tuple[ChatResult, dict[str, Any]]:
        """Send once, adapting to what the server refuses and remembering it for the rest of the run: a
        structured-output mode (step down the ladder) or the token limit's name (switch once). One loop for
        both APIs: only the body and the reading of the reply differ."""
        while True:
            mode = _FORMAT_LADDER[self._format_floor] if request.json_schema is not None else "text"
            messages = request.messages
            if mode != "json_schema" and request.json_schema is not None:
                messages = _with_schema_hint(messages, request.json_schema)
            token_name = self._token_name()
            responses = self.config.api == "responses"
            t0 = time.monotonic()
            self.calls_sent += 1
            try:
                # `post` is the SDK's documented raw route: same client, auth, errors and response model,
                # without the typed-param transformer that walks every message and the JSON schema.
                if responses:
                    resp: Any = await self._client().post("/responses", cast_to=Response,
                                                          body=_responses_body(request, messages, mode))
                else:
                    resp = await self._client().post("/chat/completions", cast_to=ChatCompletion,
                                                     body=_chat_body(request, messages, mode, token_name))
            except openai.APIStatusError as exc:
                if self._adapt(exc, request, mode, token_name):
                    continue
                raise
            latency = time.monotonic() - t0
            reply = _read_response(resp) if responses else _read_chat(resp)
            result = ChatResult(call_id=request.key(), content=reply.content, finish_reason=reply.finish_reason,
                                tokens_in=reply.tokens_in, tokens_out=reply.tokens_out,
                                tokens_cached=reply.tokens_cached, tokens_reasoning=reply.tokens_reasoning,
                                latency_s=latency, response_format=mode)
            return result, {"id": reply.id, "model": reply.model, "finish_reason": reply.finish_reason}

    def _adapt(self, exc: openai.APIStatusError, request: ChatRequest, mode: str, token_name: str) -> bool:
        """True when a refusal names something this client can change and send again; raises
        `RoleSettingRefused` when a 400 names a setting only the user can change.

        A refused output format is recognised whatever the status: OpenAI says 400, others 422, and
        llama.cpp's server a 500 whose body names the format. Stepping down is then the fix, and retrying
        the same request as a server fault would only open the breaker."""
        if mode != "text" and self.config.response_format == "auto" and _refuses_format(exc):
            # max(), not +=: concurrent calls refused for the same mode step down once, not once each.
            self._format_floor = max(self._format_floor, _FORMAT_LADDER.index(mode) + 1)
            return True
        if not isinstance(exc, openai.BadRequestError):
            return False
        param = _refused_param(exc)
        if param in ("max_tokens", "max_completion_tokens") and self.config.api == "chat":
            if param == token_name == "max_tokens" and self.config.token_param == "auto":
                self._max_tokens_refused = True
                return True
            raise RoleSettingRefused(self.role, "token_param", self.config.token_param,
                                     f"it does not take the {param} parameter",
                                     "auto" if param == "max_tokens" else "max_tokens")
        if param in _SETTING_OF_PARAM:
            setting = _SETTING_OF_PARAM[param]
            hint = ("reasoning models take only the default" if setting in ("temperature", "top_p")
                    else _server_message(exc))
            raise RoleSettingRefused(self.role, setting, getattr(request, setting), hint, "null")
        return False


class RoleSettingRefused(ValueError):
    """The model refuses one of the role's settings (e.g. temperature on a reasoning model).

    Every call would fail alike, so this is a configuration error, not a call failure: it is not retried,
    not counted by the breaker, not recorded per group; it stops the stage with one line naming the key.
    """

    def __init__(self, role: str, setting: str, value: object, why: str, fix: str) -> None:
        key = f"{_PARAMS_BLOCK.get(role, role)}.{setting}"
        super().__init__(f"role {role}: the model refuses {setting}={value!r} ({why}); set {key}: {fix}")


# Where a role's block sits in params.yaml, when it is not the role's name.
_PARAMS_BLOCK = {"teacher": "teacher.role"}
# Request parameters (either API) that come from a role setting the user chose.
_SETTING_OF_PARAM = {"temperature": "temperature", "top_p": "top_p", "reasoning_effort": "reasoning_effort",
                     "reasoning": "reasoning_effort", "reasoning.effort": "reasoning_effort"}


def _server_message(exc: openai.BadRequestError) -> str:
    """The error body's own message (the SDK's `message` prefixes the status and repeats the whole body)."""
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("message") or exc.message)[:200]


def _refused_param(exc: openai.BadRequestError) -> str | None:
    """The parameter a 400 refuses, from OpenAI's `unsupported_parameter` / `unsupported_value` errors."""
    if exc.code in ("unsupported_parameter", "unsupported_value") and exc.param:
        return exc.param
    return None


class _Reply(BaseModel):
    """What either API's reply says, in one shape for `ChatResult` and the cache's raw record."""

    content: str
    finish_reason: str | None
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_cached: int | None = None
    tokens_reasoning: int | None = None
    id: str | None = None
    model: str | None = None


def _chat_body(request: ChatRequest, messages: list[dict[str, str]], mode: str, token_name: str) -> dict[str, Any]:
    """`POST /chat/completions`. Keys keep their historical order, so default requests are byte-identical."""
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    body[token_name] = request.max_tokens
    if mode == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": request.schema_name or "reply", "schema": request.json_schema, "strict": True},
        }
    elif mode == "json_object_schema":
        # A grammar-constrained server (llama.cpp) takes length keywords, as xgrammar does: the same schema,
        # tightened in the one place that derives grammars, so a small model cannot write a short row.
        body["response_format"] = {"type": "json_object", "schema": tighten_for_local(request.json_schema)}
    elif mode == "json_object":
        body["response_format"] = {"type": "json_object"}
    if request.seed is not None:
        body["seed"] = request.seed
    if request.reasoning_effort is not None:
        body["reasoning_effort"] = request.reasoning_effort
    return {**body, **request.extra_body}  # RoleConfig forbids extra_body keys that collide with these


def _responses_body(request: ChatRequest, messages: list[dict[str, str]], mode: str) -> dict[str, Any]:
    """`POST /responses`: the system prompt as `instructions`, the rest as `input`.

    No `seed` (the Responses API has none; the request's seed still keys the cache), and `store: false`:
    a judge call is stateless and its transcript has no reason to stay on the provider's side.
    """
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    body: dict[str, Any] = {"model": request.model, "input": messages[1:] if system is not None else messages,
                            "max_output_tokens": request.max_tokens, "store": False}
    if system is not None:
        body["instructions"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.reasoning_effort is not None:
        body["reasoning"] = {"effort": request.reasoning_effort}
    if mode == "json_schema":
        body["text"] = {"format": {"type": "json_schema", "name": request.schema_name or "reply",
                                   "schema": request.json_schema, "strict": True}}
    elif mode in ("json_object", "json_object_schema"):  # the Responses API has no schema-in-json_object dialect
        body["text"] = {"format": {"type": "json_object"}}
    return {**body, **request.extra_body}


def _read_chat(resp: Any) -> _Reply:
    if not getattr(resp, "choices", None):
        raise LLMError(ErrorType.HTTP, "response has no choices (empty or malformed body)")
    choice = resp.choices[0]
    usage = resp.usage
    # An empty completion is the model's answer, not a transport fault: the parse step rejects it.
    return _Reply(
        content=(choice.message.content if choice.message else None) or "",
        finish_reason=choice.finish_reason,
        tokens_in=usage.prompt_tokens if usage else None,
        tokens_out=usage.completion_tokens if usage else None,
        tokens_cached=_detail(usage, "prompt_tokens_details", "cached_tokens"),
        tokens_reasoning=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
        id=resp.id, model=resp.model,
    )


def _read_response(resp: Any) -> _Reply:
    """A Responses object. `incomplete` for the token limit reads as finish_reason `length`, so the repair
    loop and the teacher treat it exactly like a cut-off chat completion; no output text reads as an empty
    completion (a parse error for a judge, an unusable sample for the teacher)."""
    if getattr(resp, "object", None) != "response" or getattr(resp, "output", None) is None:
        raise LLMError(ErrorType.HTTP, "response has no output (empty or malformed body)")
    if resp.status == "failed":
        message = resp.error.message if getattr(resp, "error", None) else "no detail"
        raise LLMError(ErrorType.HTTP, f"response failed: {message}", retryable=True)
    finish = "stop"
    if resp.status == "incomplete":
        reason = getattr(resp.incomplete_details, "reason", None)
        finish = "length" if reason == "max_output_tokens" else (reason or "incomplete")
    usage = resp.usage
    return _Reply(
        content=resp.output_text,
        finish_reason=finish,
        tokens_in=usage.input_tokens if usage else None,
        tokens_out=usage.output_tokens if usage else None,
        tokens_cached=_detail(usage, "input_tokens_details", "cached_tokens"),
        tokens_reasoning=_detail(usage, "output_tokens_details", "reasoning_tokens"),
        id=resp.id, model=resp.model,
    )


def _detail(usage: Any, group: str, field: str) -> int | None:
    """A usage breakdown figure, where the server reports one (vLLM often leaves the groups out)."""
    value = getattr(getattr(usage, group, None), field, None)
    return value if isinstance(value, int) else None


def _refuses_format(exc: openai.APIStatusError) -> bool:
    """A refusal of the requested output format: a 400 or 422, or a 5xx, whose error names the format."""
    return (exc.status_code in (400, 422) or exc.status_code >= 500) and _mentions_format(exc)


def _mentions_format(exc: openai.APIStatusError) -> bool:
    if (getattr(exc, "param", None) or "").startswith(("response_format", "text.format")):
        return True
    text = (exc.response.text or "").lower()
    return any(w in text for w in ("response_format", "text.format", "json_schema", "json_object", "structured"))


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
