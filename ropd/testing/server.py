"""A real OpenAI-compatible HTTP server on 127.0.0.1, scripted per test.

It implements `POST /v1/chat/completions` over HTTP/1.1 with keep-alive, so the real `openai` client
talks to it exactly as it talks to an API or a vLLM server. Faults are scripted as a queue of actions
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


def auth_digest(header: str) -> str:
    """What the request log keeps of an Authorization header."""
    return hashlib.sha256(header.encode()).hexdigest()[:16]


class ScriptedServer:
    """Context manager: `with ScriptedServer() as srv: srv.base_url ...`."""

    def __init__(self, latency: float = 0.0, reject_json_schema: bool = False, log_path: Path | None = None):
        self.latency = latency
        self.reject_json_schema = reject_json_schema
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
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        try:
            req = json.loads(raw)
            messages = req["messages"]
        except (ValueError, KeyError):
            self._send(400, b'{"error": {"message": "body is not a chat completion request"}}')
            return
        kind = request_kind(messages)
        auth = self.headers.get("Authorization")
        # a digest, not the header: the log may go to a file, and a test can still check which key arrived
        entry: dict[str, Any] = {"kind": kind, "key": hashlib.sha256(raw).hexdigest(), "served": False,
                                 "t": time.time(), "auth": auth_digest(auth) if auth else None}
        rf = (req.get("response_format") or {}).get("type")
        if owner.reject_json_schema and rf == "json_schema":
            entry["action"] = "reject_json_schema"
            owner._record(entry)
            self._send(400, b'{"error": {"message": "response_format json_schema is not supported"}}')
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
        content = action.content if action.content is not None else judge_reply(messages, req.get("seed"))
        body = {
            "id": "chatcmpl-" + entry["key"][:12],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model", "stand-in-judge"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": action.finish_reason}],
            "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": len(raw) // 4 + len(content) // 4},
        }
        entry["served"] = True
        owner._record(entry)
        self._send(200, json.dumps(body).encode())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="scripted OpenAI-compatible stand-in server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each normal reply")
    ap.add_argument("--log", type=Path, default=None, help="append one JSON line per request here")
    args = ap.parse_args(argv)
    srv = ScriptedServer(latency=args.latency, log_path=args.log).start(args.port)
    print(srv.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
