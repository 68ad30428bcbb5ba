"""One shared limiter for all judge calls: a cap on calls in flight plus RPM and TPM budgets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiolimiter import AsyncLimiter

from ropd.config import LimitsConfig


class CallLimiter:
    """Shared by every role's client, so one stage cannot exceed the account's budget whatever the mix."""

    def __init__(self, cfg: LimitsConfig | None = None) -> None:
        self.cfg = cfg or LimitsConfig()
        self._slots = asyncio.Semaphore(self.cfg.max_in_flight)
        self._rpm = AsyncLimiter(self.cfg.rpm, 60) if self.cfg.rpm else None
        self._tpm = AsyncLimiter(self.cfg.tpm, 60) if self.cfg.tpm else None
        self.in_flight = 0
        self.peak_in_flight = 0

    @asynccontextmanager
    async def slot(self, est_tokens: int = 0) -> AsyncIterator[None]:
        if self._rpm is not None:
            await self._rpm.acquire(1)
        if self._tpm is not None and est_tokens > 0:
            await self._tpm.acquire(min(est_tokens, self.cfg.tpm or est_tokens))
        async with self._slots:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1
