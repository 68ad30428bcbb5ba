"""The judge error taxonomy: every failure is a stage × type, so a dashboard can say what broke where."""

from __future__ import annotations

from enum import StrEnum


class ErrorType(StrEnum):
    TIMEOUT = "timeout"
    HTTP = "http"
    RATE_LIMIT = "rate_limit"
    PARSE = "parse"
    SCHEMA = "schema"
    VALIDATION = "validation"
    CIRCUIT_OPEN = "circuit_open"


TRANSPORT_RETRYABLE = {ErrorType.TIMEOUT, ErrorType.HTTP, ErrorType.RATE_LIMIT}
CONTENT_ERRORS = {ErrorType.PARSE, ErrorType.SCHEMA, ErrorType.VALIDATION}


class LLMError(Exception):
    """A classified failure of one LLM call (or of the repair loop around it)."""

    def __init__(
        self,
        type: ErrorType,
        message: str,
        *,
        stage: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.stage = stage
        self.retryable = type in TRANSPORT_RETRYABLE if retryable is None else retryable
        self.retry_after = retry_after
        self.status_code = status_code

    def __str__(self) -> str:
        where = f"{self.stage}/" if self.stage else ""
        return f"[{where}{self.type.value}] {self.message}"
