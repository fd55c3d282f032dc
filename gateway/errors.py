"""Errors as values: the reason vocabulary, upstream failures, and their rendering per client API.

One fixed vocabulary of reasons is used everywhere (the `x-gateway-attempts` header, logs, metrics),
so label values never come from what a client or an upstream sent.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from enum import StrEnum


class Reason(StrEnum):
    OK = "ok"
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    AUTH_ERROR = "auth_error"
    NOT_FOUND = "not_found"
    CONTEXT_LENGTH = "context_length"
    UNSUPPORTED = "unsupported"
    CLIENT_ERROR = "client_error"
    BAD_RESPONSE = "bad_response"
    # connections skipped without sending a request
    BREAKER_OPEN = "breaker_open"
    BUSY = "busy"
    DISABLED = "disabled"


class ErrorKind(StrEnum):
    """What went wrong at the transport level; the reason says what it means for routing."""

    TIMEOUT = "timeout"
    CONNECT = "connect"
    HTTP_STATUS = "http_status"
    PROTOCOL = "protocol"


class UpstreamError(Exception):
    """One failed attempt at one connection. The message never holds keys or URLs."""

    def __init__(
        self,
        kind: ErrorKind,
        reason: Reason,
        message: str,
        *,
        status: int | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.message = message
        self.status = status
        self.body = body
        self.content_type = content_type
        self.retry_after = retry_after


def too_large(what: str, limit: int, key: str) -> UpstreamError:
    """An upstream answer past one of the `limits:` caps (`key`): bad_response, which falls back
    before the commit point and ends the stream after it; `too_large` in the log."""
    message = f"{what} too_large: over {limit} bytes (limits.{key})"
    return UpstreamError(ErrorKind.PROTOCOL, Reason.BAD_RESPONSE, message)


class GatewayError(Exception):
    """An answer the gateway itself gives (bad input, no connection, every attempt failed)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})


# Markers in an upstream's 4xx body that make the failure specific to that connection, so another
# connection may still serve the request. Lower-case substrings; first table that matches wins.
_BODY_MARKERS: tuple[tuple[Reason, tuple[str, ...]], ...] = (
    (
        Reason.CONTEXT_LENGTH,
        (
            "context_length_exceeded",
            "context length",
            "context_length",
            "context window",
            "maximum context",
            "prompt is too long",
            "too many tokens",
            "reduce the length",
            "input is too long",
        ),
    ),
    (
        Reason.NOT_FOUND,
        ("model_not_found", "does not exist", "not a valid model", "unknown model", "invalid model", "no such model"),
    ),
    (
        Reason.UNSUPPORTED,
        (
            "unsupported_parameter",
            "unsupported_value",
            "unsupported parameter",
            "not supported",
            "does not support",
            "unrecognized request argument",
            "unknown parameter",
        ),
    ),
)


def classify_status(status: int, body: bytes) -> Reason:
    """Map an upstream HTTP error status (and, for 400s, its body) to a reason."""
    if status == 429:
        return Reason.RATE_LIMITED
    if status in (401, 403):
        return Reason.AUTH_ERROR
    if status == 408:
        return Reason.TIMEOUT
    if status >= 500 or status in (409, 425):
        return Reason.SERVER_ERROR
    if status == 413:
        return Reason.CONTEXT_LENGTH
    text = body[:8192].decode("utf-8", "replace").lower()
    for reason, markers in _BODY_MARKERS:
        if any(m in text for m in markers):
            return reason
    if status == 404:
        return Reason.NOT_FOUND
    return Reason.CLIENT_ERROR


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, `Retry-After` (seconds or an HTTP date)."""
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _seconds(value: str | None) -> float | None:
    """A finite, non-negative number from a header value (an upstream may send anything)."""
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return max(0.0, number) if math.isfinite(number) else None
