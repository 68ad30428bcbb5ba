"""A circuit breaker per endpoint: stop hammering a server that keeps failing, probe it after a pause."""

from __future__ import annotations

import time
from enum import StrEnum

from ropd.llm.errors import ErrorType, LLMError


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed → open after `threshold` consecutive transport failures; one probe after `reset_s`.

    A success while half-open closes it; a failure re-opens it for another `reset_s`. Content errors
    (bad JSON from a healthy server) do not count: the endpoint answered.
    """

    def __init__(self, role: str, threshold: int, reset_s: float) -> None:
        self.role = role
        self.threshold = threshold
        self.reset_s = reset_s
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probe_out = False
        self.transitions: list[BreakerState] = []

    def _set(self, state: BreakerState) -> None:
        if state != self.state:
            self.state = state
            self.transitions.append(state)

    def allows_call(self) -> bool:
        """Whether `before_call` would let a call out now, without changing state: an endpoint pool
        asks every breaker, then spends the half-open probe only on the one it picks."""
        if self.state == BreakerState.OPEN:
            return time.monotonic() - self.opened_at >= self.reset_s
        return not (self.state == BreakerState.HALF_OPEN and self._probe_out)

    def before_call(self) -> None:
        """Raise `circuit_open` unless a call may go out now."""
        if self.state == BreakerState.OPEN:
            if time.monotonic() - self.opened_at < self.reset_s:
                raise LLMError(ErrorType.CIRCUIT_OPEN, f"circuit for role {self.role!r} is open", retryable=False)
            self._set(BreakerState.HALF_OPEN)
            self._probe_out = False
        if self.state == BreakerState.HALF_OPEN:
            if self._probe_out:
                raise LLMError(ErrorType.CIRCUIT_OPEN, f"circuit for role {self.role!r} is half-open, probing",
                               retryable=False)
            self._probe_out = True

    def record_success(self) -> None:
        self.failures = 0
        self._probe_out = False
        self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self.failures += 1
        self._probe_out = False
        if self.state == BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.opened_at = time.monotonic()
            self._set(BreakerState.OPEN)
