"""A persistent, content-addressed cache of LLM calls (SQLite, WAL).

Every response is written the moment it arrives, before anything parses it, so a kill -9 loses no
paid call. A repeated request is answered from here and never reaches the endpoint. Failed calls are
recorded for audit but never served: the next run tries them again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from ropd.llm.base import ChatRequest, ChatResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS llm_calls (
    call_id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    template TEXT,
    request TEXT NOT NULL,
    response TEXT,
    content TEXT,
    finish_reason TEXT,
    status TEXT NOT NULL,
    error_type TEXT,
    error TEXT,
    latency_s REAL,
    tokens_in INTEGER,
    tokens_out INTEGER,
    attempts INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL
)
"""


class CallCache:
    """Thread-safe; one connection per process. The file can be shared by successive runs."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(_SCHEMA)
        self.hits = 0
        self.misses = 0

    def get(self, request: ChatRequest) -> ChatResult | None:
        key = request.key()
        with self._lock:
            row = self._con.execute(
                "SELECT content, finish_reason, tokens_in, tokens_out, latency_s, response FROM llm_calls "
                "WHERE call_id = ? AND status = 'ok'",
                (key,),
            ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        content, finish, t_in, t_out, latency, response = row
        mode = json.loads(response).get("response_format") if response else None
        return ChatResult(
            call_id=key,
            content=content,
            finish_reason=finish,
            tokens_in=t_in,
            tokens_out=t_out,
            latency_s=latency or 0.0,
            cached=True,
            response_format=mode,
        )

    def put_ok(self, request: ChatRequest, result: ChatResult, raw_response: dict | None = None) -> None:
        response = json.dumps({"response_format": result.response_format, "raw": raw_response}, ensure_ascii=False)
        with self._lock:
            self._con.execute(
                "INSERT INTO llm_calls (call_id, role, model, template, request, response, content, finish_reason,"
                " status, error_type, error, latency_s, tokens_in, tokens_out, attempts, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'ok', NULL, NULL, ?, ?, ?, 1, ?)"
                " ON CONFLICT(call_id) DO UPDATE SET response=excluded.response, content=excluded.content,"
                " finish_reason=excluded.finish_reason, status='ok', error_type=NULL, error=NULL,"
                " latency_s=excluded.latency_s, tokens_in=excluded.tokens_in, tokens_out=excluded.tokens_out,"
                " attempts=llm_calls.attempts + 1",
                (
                    result.call_id,
                    request.role,
                    request.model,
                    request.template,
                    request.canonical(),
                    response,
                    result.content,
                    result.finish_reason,
                    result.latency_s,
                    result.tokens_in,
                    result.tokens_out,
                    time.time(),
                ),
            )

    def put_error(self, request: ChatRequest, error_type: str, error: str, latency_s: float) -> None:
        """Record a failed attempt; a success recorded earlier for the same request is never overwritten."""
        with self._lock:
            self._con.execute(
                "INSERT INTO llm_calls (call_id, role, model, template, request, status, error_type, error,"
                " latency_s, attempts, created_at) VALUES (?, ?, ?, ?, ?, 'error', ?, ?, ?, 1, ?)"
                " ON CONFLICT(call_id) DO UPDATE SET error_type=excluded.error_type, error=excluded.error,"
                " latency_s=excluded.latency_s, attempts=llm_calls.attempts + 1"
                " WHERE llm_calls.status != 'ok'",
                (request.key(), request.role, request.model, request.template, request.canonical(), error_type,
                 error[:2000], latency_s, time.time()),
            )

    def count(self, status: str | None = None) -> int:
        with self._lock:
            if status is None:
                return self._con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
            return self._con.execute("SELECT count(*) FROM llm_calls WHERE status = ?", (status,)).fetchone()[0]

    def usage(self) -> dict[str, dict[str, float]]:
        """Per role: calls, ok calls, tokens in/out and total latency, for run summaries and benches."""
        with self._lock:
            rows = self._con.execute(
                "SELECT role, count(*), sum(status = 'ok'), coalesce(sum(tokens_in), 0), "
                "coalesce(sum(tokens_out), 0), coalesce(sum(latency_s), 0) FROM llm_calls GROUP BY role"
            ).fetchall()
        keys = ("calls", "ok", "tokens_in", "tokens_out", "latency_s")
        return {role: dict(zip(keys, vals, strict=True)) for role, *vals in rows}

    def close(self) -> None:
        with self._lock:
            self._con.close()
