"""Several OpenAI-compatible servers behind one role (a fleet of vLLM judges, say).

Each endpoint has its own circuit breaker, so one dead server is cut off while the others keep
serving, and the next call goes to the least-loaded endpoint whose breaker lets a call out: fewest
calls in flight, ties taken in turn. A retry prefers endpoints that have not yet failed that call,
so a call that hit the dead server moves to a live one. The role fails with `circuit_open` only when
every endpoint's breaker is open. The URL is routing, not identity: the call cache never sees it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ropd.config import RoleConfig
from ropd.llm.breaker import CircuitBreaker
from ropd.llm.errors import ErrorType, LLMError


@dataclass(eq=False)
class Endpoint:
    """One server of a role, with its own breaker and load figures."""

    index: int
    base_url: str | None  # None: the SDK's default (api.openai.com)
    breaker: CircuitBreaker
    in_flight: int = 0
    sent: int = 0  # attempts routed here
    failed: int = 0  # of those, transport failures (the ones the breaker counts)

    def record_failure(self) -> None:
        """A transport failure (timeout, connection, 5xx, 429): the breaker counts it."""
        self.failed += 1
        self.breaker.record_failure()

    def record_success(self) -> None:
        self.breaker.record_success()


@dataclass(eq=False)
class EndpointPool:
    """A role's endpoints; `route` picks one per attempt and counts it in flight until it returns."""

    role: str
    endpoints: list[Endpoint]
    _turn: int = field(default=0, repr=False)

    @classmethod
    def for_role(cls, role: str, config: RoleConfig) -> EndpointPool:
        """`base_urls` when set, else the single `base_url` (None: the SDK's default host)."""
        urls: list[str | None] = list(config.base_urls) if config.base_urls else [config.base_url]
        return cls(role, [Endpoint(i, url, CircuitBreaker(role, config.breaker_threshold, config.breaker_reset_s))
                          for i, url in enumerate(urls)])

    def check(self) -> None:
        """Raise `circuit_open` unless some endpoint would take a call now (before waiting for a slot)."""
        if not any(ep.breaker.allows_call() for ep in self.endpoints):
            raise self._all_open()

    def pick(self, tried: Collection[int] = ()) -> Endpoint:
        """The least-loaded endpoint whose breaker lets a call out, avoiding those in `tried` (indices
        that already failed this call) while another is available; its breaker is told a call is going."""
        live = [ep for ep in self.endpoints if ep.breaker.allows_call()]
        if not live:
            raise self._all_open()
        fresh = [ep for ep in live if ep.index not in tried]
        n = len(self.endpoints)
        ep = min(fresh or live, key=lambda e: (e.in_flight, (e.index - self._turn) % n))
        self._turn = (ep.index + 1) % n
        ep.breaker.before_call()
        return ep

    @contextmanager
    def route(self, tried: Collection[int] = ()) -> Iterator[Endpoint]:
        """`pick` an endpoint and hold it in flight for the duration of the block."""
        ep = self.pick(tried)
        ep.in_flight += 1
        ep.sent += 1
        try:
            yield ep
        finally:
            ep.in_flight -= 1

    def _all_open(self) -> LLMError:
        where = "" if len(self.endpoints) == 1 else f" on all {len(self.endpoints)} endpoints"
        return LLMError(ErrorType.CIRCUIT_OPEN, f"circuit for role {self.role!r} is open{where}", retryable=False)
