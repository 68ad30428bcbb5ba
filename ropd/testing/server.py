"""A real OpenAI-compatible HTTP server on 127.0.0.1, scripted per test.

It implements `POST /v1/chat/completions` and `POST /v1/responses` over HTTP/1.1 with keep-alive, so the
real `openai` client talks to it exactly as it talks to an API or a vLLM server; `reasoning=True` adds what
a GPT-5-class model at OpenAI refuses and reports. Faults are scripted as a queue of actions
(per request kind or for any request); with nothing scripted it answers with the deterministic judge
in `ropd.testing.judge`.

Run it stand-alone for demos and benchmarks:
    python -m ropd.testing.server --port 8000 --latency 0.2 --log served.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ropd.llm.strict_schema import strict_violations
from ropd.testing.judge import judge_reply, request_kind


@dataclass
class Reply:
    """A normal completion; `content=None` means the judge's answer."""

    content: str | None = None
    finish_reason: str = "stop"


@dataclass
class Fail:
    status: int
    body: str = '{"error": {"message": "scripted failure", "type": "server_error"}}'
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """Answer only after `seconds`, longer than the client's timeout."""

    seconds: float


@dataclass
class Reset:
    """Send headers and part of the body, then reset the connection."""


@dataclass
class RawBody:
    """A 200 with an arbitrary body (empty, not JSON, or JSON that is not a completion)."""

    body: bytes


Action = Reply | Fail | Hang | Reset | RawBody


# What llama-cpp-python's server (0.3.x) answers to `response_format: {"type": "json_schema", ...}`.
LLAMACPP_FORMAT_REFUSAL = json.dumps({"error": {
    "message": "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be 'text' "
               "or 'json_object' [type=literal_error, input_value='json_schema', input_type=str]",
    "type": "internal_server_error"}}).encode()


def auth_digest(header: str) -> str:
    """What the request log keeps of an Authorization header."""
    return hashlib.sha256(header.encode()).hexdigest()[:16]


class ScriptedServer:
    """Context manager: `with ScriptedServer() as srv: srv.base_url ...`."""

    def __init__(self, latency: float = 0.0, reject_json_schema: bool = False, log_path: Path | None = None,
                 reasoning: bool = False, llamacpp_formats: bool = False, noise: float = 0.0):
        """`reasoning=True` behaves like a GPT-5-class model at OpenAI: it refuses `max_tokens`, non-default
        sampling settings, schemas strict mode rejects and unknown Responses parameters, and reports hidden
        reasoning and prompt-cache tokens in usage.

        `noise` = ε makes a judge of known quality: each verdict of the rule judge is flipped with
        probability ε (0.5 is a coin-flip judge), seeded by the request's hash, so a reply stays
        deterministic and cacheable."""
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be a probability in [0, 1], got {noise}")
        self.noise = noise
        self.latency = latency
        self.reject_json_schema = reject_json_schema
        # llama.cpp's server: `json_schema` refused with a 500, a schema taken inside `json_object`.
        self.llamacpp_formats = llamacpp_formats
        self.reasoning = reasoning
        self._last_prompt = ""
        self.log_path = log_path
        self._queues: dict[str | None, deque[list[Any]]] = {}
        self._lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ---------------------------------------------------------------------------
    def push(self, action: Action, *, kind: str | None = None, times: int = 1) -> None:
        """Queue `action` for the next `times` requests of `kind` (`rubric`, `verify`, `teacher`, None = any).

        `times=-1` repeats it until `clear()`.
        """
        with self._lock:
            self._queues.setdefault(kind, deque()).append([action, times])

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()

    def _next_action(self, kind: str) -> Action:
        with self._lock:
            for k in (kind, None):
                q = self._queues.get(k)
                if q:
                    entry = q[0]
                    if entry[1] > 0:
                        entry[1] -= 1
                        if entry[1] == 0:
                            q.popleft()
                    return entry[0]
        return Reply()

    def served(self, kind: str | None = None) -> int:
        """Completions delivered (status 200 with a body), optionally of one kind."""
        with self._lock:
            return sum(1 for e in self.log if e["served"] and (kind is None or e["kind"] == kind))

    def received(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for e in self.log if kind is None or e["kind"] == kind)

    def _prompt_cache(self, messages: list[dict[str, str]]) -> int:
        """Input tokens a prompt cache would serve: the prompt's prefix shared with the previous request's."""
        prompt = "\n".join(m["content"] for m in messages)
        with self._lock:
            last, self._last_prompt = self._last_prompt, prompt
        shared = next((i for i, (a, b) in enumerate(zip(last, prompt, strict=False)) if a != b),
                      min(len(last), len(prompt)))
        return shared // 4

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.log.append(entry)
            if self.log_path is not None:
                with self.log_path.open("a") as f:
                    f.write(json.dumps(entry) + "\n")

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, port: int = 0) -> ScriptedServer:
        server = self

        class Handler(_Handler):
            owner = server

        class Httpd(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512
            allow_reuse_address = True

        self._httpd = Httpd(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: later connections are refused, as with an endpoint that went down."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    owner: ScriptedServer

    def log_message(self, format: str, *args: Any) -> None:  # silence per-request stderr lines
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _client_gone_within(self, seconds: float) -> bool:
        """Wait up to `seconds`; True if the client hung up meanwhile (as vLLM aborts such requests)."""
        if seconds <= 0:
            return False
        readable, _, _ = select.select([self.connection], [], [], seconds)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [{"id": "stand-in-judge", "object": "model"}]})
                       .encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        owner = self.owner
        expected = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(expected)
        if len(raw) < expected:  # the client died while sending: nothing to answer, nothing served
            self.owner._record({"kind": "unknown", "key": None, "served": False, "t": time.time(),
                                "action": "client_gone"})
            self.close_connection = True
            return
        path = self.path.rstrip("/")
        api = "chat" if path.endswith("/chat/completions") else "responses" if path.endswith("/responses") else None
        if api is None:
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        try:
            req = json.loads(raw)
            messages = req["messages"] if api == "chat" else responses_messages(req)
            kind = request_kind(messages)
        except (ValueError, KeyError, TypeError, AttributeError):
            what = "chat completion" if api == "chat" else "responses"
            self._send(400, f'{{"error": {{"message": "body is not a {what} request"}}}}'.encode())
            return
        auth = self.headers.get("Authorization")
        # a digest, not the header: the log may go to a file, and a test can still check which key arrived
        entry: dict[str, Any] = {"kind": kind, "key": hashlib.sha256(raw).hexdigest(), "served": False,
                                 "t": time.time(), "auth": auth_digest(auth) if auth else None, "api": api,
                                 "token_param": next((k for k in _TOKEN_PARAMS if k in req), None),
                                 "params": sorted(req)}
        fmt = (req.get("response_format") or {}) if api == "chat" else ((req.get("text") or {}).get("format") or {})
        ftype = fmt.get("type")
        entry["format"] = f"{ftype}+schema" if ftype == "json_object" and "schema" in fmt else ftype
        if owner.llamacpp_formats and fmt.get("type") == "json_schema":
            entry["action"] = "llamacpp_500"
            owner._record(entry)
            self._send(500, LLAMACPP_FORMAT_REFUSAL)
            return
        if owner.reject_json_schema and fmt.get("type") == "json_schema":
            entry["action"] = "reject_json_schema"
            owner._record(entry)
            self._send(400, b'{"error": {"message": "response_format json_schema is not supported"}}')
            return
        if owner.reasoning and (refusal := reasoning_refusal(api, req, fmt)):
            entry["action"] = f"refuse_{refusal['param']}"
            owner._record(entry)
            self._send(400, json.dumps({"error": refusal}).encode())
            return
        action = owner._next_action(kind)
        entry["action"] = type(action).__name__
        if isinstance(action, Fail):
            owner._record(entry)
            self._send(action.status, action.body.encode(), action.headers)
            return
        if isinstance(action, Hang):
            owner._record(entry)
            self._client_gone_within(action.seconds)
            self.close_connection = True
            return
        if isinstance(action, Reset):
            owner._record(entry)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4096")
            self.end_headers()
            self.wfile.write(b'{"id": "chatcmpl-reset", "choi')
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if self._client_gone_within(owner.latency):
            entry["action"] = "client_gone"
            owner._record(entry)
            self.close_connection = True
            return
        if isinstance(action, RawBody):
            entry["served"] = True
            owner._record(entry)
            self._send(200, action.body)
            return
        content = action.content if action.content is not None else judge_reply(
            messages, req.get("seed"), noise=owner.noise, noise_seed=entry["key"])
        tokens_in, tokens_out = len(raw) // 4, len(content) // 4
        cached = owner._prompt_cache(messages) if owner.reasoning else 0
        reasoning = REASONING_TOKENS if owner.reasoning else 0
        model = req.get("model", "stand-in-judge")
        rid = entry["key"][:12]
        if api == "chat":
            usage: dict[str, Any] = {"prompt_tokens": tokens_in, "completion_tokens": tokens_out + reasoning,
                                     "total_tokens": tokens_in + tokens_out + reasoning}
            if owner.reasoning:  # as OpenAI reports them; vLLM-like default mode leaves the breakdown out
                usage["prompt_tokens_details"] = {"cached_tokens": cached}
                usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
            body: dict[str, Any] = {
                "id": "chatcmpl-" + rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": action.finish_reason}],
                "usage": usage,
            }
        else:
            body = responses_object(rid, model, content, action.finish_reason, reasoning=owner.reasoning)
            body["usage"] = {"input_tokens": tokens_in, "output_tokens": tokens_out + reasoning,
                             "total_tokens": tokens_in + tokens_out + reasoning,
                             "input_tokens_details": {"cached_tokens": cached},
                             "output_tokens_details": {"reasoning_tokens": reasoning}}
        entry["served"] = True
        owner._record(entry)
        self._send(200, json.dumps(body).encode())


_TOKEN_PARAMS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
REASONING_TOKENS = 64
"""Hidden reasoning tokens a reasoning-mode reply reports (counted in its output tokens, as OpenAI does)."""
# The Responses parameters OpenAI accepts (the ones ropd could send); reasoning mode refuses any other.
_RESPONSES_PARAMS = frozenset({"model", "input", "instructions", "max_output_tokens", "temperature", "top_p",
                               "reasoning", "text", "store", "metadata", "prompt_cache_key", "service_tier",
                               "truncation", "user", "include", "parallel_tool_calls", "tools", "tool_choice",
                               "previous_response_id", "stream", "background"})


def responses_messages(req: dict[str, Any]) -> list[dict[str, str]]:
    """A Responses request as the chat messages the judge reads: `instructions` first, as the system turn."""
    items = req["input"]
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    messages = [{"role": "system", "content": req["instructions"]}] if req.get("instructions") else []
    for item in items:
        content = item["content"]
        if not isinstance(content, str):  # content parts: input_text (user), output_text (assistant)
            content = "".join(part["text"] for part in content if part.get("type") in ("input_text", "output_text"))
        messages.append({"role": item["role"], "content": content})
    return messages


def _error(message: str, param: str, code: str | None) -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error", "param": param, "code": code}


def reasoning_refusal(api: str, req: dict[str, Any], fmt: dict[str, Any]) -> dict[str, Any] | None:
    """What a GPT-5-class reasoning model answers 400 to, as OpenAI words it; None when it accepts the body."""
    if api == "chat" and "max_tokens" in req:
        return _error("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                      "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
    if api == "responses" and (unknown := sorted(req.keys() - _RESPONSES_PARAMS)):
        return _error(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    for name in ("temperature", "top_p"):
        if api == "responses" and name in req:  # the Responses API refuses the sampling knobs outright
            return _error(f"Unsupported parameter: '{name}' is not supported with this model.", name,
                          "unsupported_parameter")
        if req.get(name, 1) != 1:
            return _error(f"Unsupported value: '{name}' does not support {req[name]} with this model. Only the "
                          "default (1) value is supported.", name, "unsupported_value")
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema", {}) if api == "chat" else fmt
        if spec.get("strict") and (problems := strict_violations(spec.get("schema") or {})):
            return _error(f"Invalid schema for response_format '{spec.get('name')}': {problems[0]}",
                          "response_format" if api == "chat" else "text.format.schema",
                          None if api == "chat" else "invalid_json_schema")
    return None


def responses_object(rid: str, model: str, content: str, finish_reason: str, *, reasoning: bool) -> dict[str, Any]:
    """A Responses API object without usage. `finish_reason="length"` makes it `incomplete` (max_output_tokens),
    with the partial text; empty content leaves no message at all, as when a reasoning model spends the whole
    budget thinking."""
    output: list[dict[str, Any]] = []
    if reasoning:
        output.append({"id": "rs_" + rid, "type": "reasoning", "summary": []})
    incomplete = finish_reason == "length"
    if content:
        output.append({"id": "msg_" + rid, "type": "message", "role": "assistant",
                       "status": "incomplete" if incomplete else "completed",
                       "content": [{"type": "output_text", "text": content, "annotations": []}]})
    return {"id": "resp_" + rid, "object": "response", "created_at": int(time.time()), "model": model,
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "error": None, "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="scripted OpenAI-compatible stand-in server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each normal reply")
    ap.add_argument("--log", type=Path, default=None, help="append one JSON line per request here")
    ap.add_argument("--reasoning", action="store_true", help="refuse and report as an OpenAI reasoning model")
    ap.add_argument("--noise", type=float, default=0.0, help="flip each verdict with this probability")
    args = ap.parse_args(argv)
    srv = ScriptedServer(latency=args.latency, log_path=args.log, reasoning=args.reasoning,
                         noise=args.noise).start(args.port)
    print(srv.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
