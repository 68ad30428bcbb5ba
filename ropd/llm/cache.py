"""A persistent, content-addressed cache of LLM calls (SQLite, WAL).

Every response is written the moment it arrives, before anything parses it, so a kill -9 loses no
paid call. A repeated request is answered from here and never reaches the endpoint. Failed calls are
recorded for audit but never served: the next run tries them again.

Cost accounting: a row records the call's usage (input, cached input, output and reasoning tokens)
and, from the `CallTag` of the cache that first paid for it, the run, round and stage it was paid
in. A replay (a hit, or a resumed stage) never re-tags a row, so each paid call counts once, in the
round that paid for it, whichever later stages or runs replay it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

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
# Columns added after the first release: a file written before them gains them when opened (NULL in old rows).
_ADDED_COLUMNS = {"tokens_cached": "INTEGER", "tokens_reasoning": "INTEGER", "run_id": "TEXT", "round": "INTEGER",
                  "stage": "TEXT"}


class CallTag(BaseModel):
    """Where the calls a cache pays for are accounted: a run, a round (None for run-level stages) and a stage."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    round: int | None = None
    stage: str


class TokenCounts(BaseModel):
    """Summed usage of paid calls. `unmetered` counts calls whose server reported no usage."""

    calls: int = 0
    unmetered: int = 0
    tokens_in: int = 0
    tokens_cached: int = 0
    tokens_out: int = 0
    tokens_reasoning: int = 0


class CallCache:
    """Thread-safe; one connection per process. The file can be shared by successive runs."""

    def __init__(self, path: Path | str, tag: CallTag | None = None) -> None:
        self.path = Path(path)
        self.tag = tag
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(_SCHEMA)
        self._migrate()
        self.hits = 0
        self.misses = 0

    def _migrate(self) -> None:
        """Add the columns an older file lacks; under a write lock, so concurrent openers add each once."""
        self._con.execute("BEGIN IMMEDIATE")
        try:
            have = {row[1] for row in self._con.execute("PRAGMA table_info(llm_calls)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in have:
                    self._con.execute(f"ALTER TABLE llm_calls ADD COLUMN {name} {kind}")
            self._con.execute("CREATE INDEX IF NOT EXISTS llm_calls_run ON llm_calls (run_id, round, stage)")
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise

    def _tag_values(self) -> tuple[str | None, int | None, str | None]:
        tag = self.tag
        return (tag.run_id, tag.round, tag.stage) if tag is not None else (None, None, None)

    def get(self, request: ChatRequest) -> ChatResult | None:
        key = request.key()
        with self._lock:
            row = self._con.execute(
                "SELECT content, finish_reason, tokens_in, tokens_out, tokens_cached, tokens_reasoning, latency_s,"
                " response FROM llm_calls "
                "WHERE call_id = ? AND status = 'ok'",
                (key,),
            ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        content, finish, t_in, t_out, t_cached, t_reasoning, latency, response = row
        mode = json.loads(response).get("response_format") if response else None
        return ChatResult(
            call_id=key,
            content=content,
            finish_reason=finish,
            tokens_in=t_in,
            tokens_out=t_out,
            tokens_cached=t_cached,
            tokens_reasoning=t_reasoning,
            latency_s=latency or 0.0,
            cached=True,
            response_format=mode,
        )

    def put_ok(self, request: ChatRequest, result: ChatResult, raw_response: dict | None = None) -> None:
        """Record a paid reply. A row that already holds a success (two identical requests in flight at once)
        keeps its usage and tag, so a call is never accounted twice."""
        response = json.dumps({"response_format": result.response_format, "raw": raw_response}, ensure_ascii=False)
        paid = "CASE WHEN llm_calls.status = 'ok' THEN llm_calls.{0} ELSE excluded.{0} END"
        kept = ", ".join(f"{c}={paid.format(c)}" for c in ("tokens_in", "tokens_out", "tokens_cached",
                                                            "tokens_reasoning", "run_id", "round", "stage"))
        with self._lock:
            self._con.execute(
                "INSERT INTO llm_calls (call_id, role, model, template, request, response, content, finish_reason,"
                " status, error_type, error, latency_s, tokens_in, tokens_out, tokens_cached, tokens_reasoning,"
                " run_id, round, stage, attempts, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'ok', NULL, NULL, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)"
                f" ON CONFLICT(call_id) DO UPDATE SET {kept}, response=excluded.response, content=excluded.content,"
                " finish_reason=excluded.finish_reason, status='ok', error_type=NULL, error=NULL,"
                " latency_s=excluded.latency_s, attempts=llm_calls.attempts + 1",
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
                    result.tokens_cached,
                    result.tokens_reasoning,
                    *self._tag_values(),
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
        """Per role: calls, ok calls, tokens (in, cached, out, reasoning) and total latency, for summaries and
        benches. Every row of the file, whichever run paid it; `paid` gives one run's calls."""
        with self._lock:
            rows = self._con.execute(
                "SELECT role, count(*), sum(status = 'ok'), coalesce(sum(tokens_in), 0), "
                "coalesce(sum(tokens_cached), 0), coalesce(sum(tokens_out), 0), coalesce(sum(tokens_reasoning), 0), "
                "coalesce(sum(latency_s), 0) FROM llm_calls GROUP BY role"
            ).fetchall()
        keys = ("calls", "ok", "tokens_in", "tokens_cached", "tokens_out", "tokens_reasoning", "latency_s")
        return {role: dict(zip(keys, vals, strict=True)) for role, *vals in rows}

    def paid(self, run_id: str) -> list[tuple[CallTag, str, TokenCounts]]:
        """The successful calls `run_id` paid for, summed per (round, stage) tag and role.

        Failed attempts are left out: they carry no usage. Rows written before tags existed belong to no run.
        """
        with self._lock:
            rows = self._con.execute(
                "SELECT round, stage, role, count(*), sum(tokens_in IS NULL), coalesce(sum(tokens_in), 0),"
                " coalesce(sum(tokens_cached), 0), coalesce(sum(tokens_out), 0), coalesce(sum(tokens_reasoning), 0)"
                " FROM llm_calls WHERE status = 'ok' AND run_id = ? GROUP BY round, stage, role"
                " ORDER BY round NULLS FIRST, stage, role",
                (run_id,),
            ).fetchall()
        keys = ("calls", "unmetered", "tokens_in", "tokens_cached", "tokens_out", "tokens_reasoning")
        return [(CallTag(run_id=run_id, round=rnd, stage=stage or "unknown"), role,
                 TokenCounts(**dict(zip(keys, vals, strict=True)))) for rnd, stage, role, *vals in rows]

    def close(self) -> None:
        with self._lock:
            self._con.close()
