"""The decisions, in one place: whether a failed attempt falls back, whether (and how long) to wait
and retry the same connection, and the answer when every attempt failed."""

from __future__ import annotations

import math

from ..config.model import RetrySettings
from ..contracts import Candidate
from ..errors import GatewayError, Reason, UpstreamError

RETRY_BACKOFF = 0.25  # seconds before the first same-connection retry when the answer named no wait


def falls_back(error: UpstreamError) -> bool:
    """THE fallback rule. Every failure specific to the connection moves on to the next one:
    connect errors, timeouts, 408/409/425/429/5xx, 401/403 (that connection's key), 404 model not
    found, and 400s naming context length or an unsupported parameter. A plain 4xx is the client's
    own mistake: another connection would refuse it too, so it is returned as-is."""
    return error.reason is not Reason.CLIENT_ERROR


BUSY_RETRY_AFTER = 1  # seconds a client is told to wait when every connection's concurrency limit is reached
_SAME_WAY = {
    Reason.NOT_FOUND: (404, "model_not_found"),
    Reason.CONTEXT_LENGTH: (400, "context_length_exceeded"),
    Reason.UNSUPPORTED: (400, "unsupported_parameter"),
}


def verdict(model: str, failures: list[tuple[str, UpstreamError]], skipped: list[Candidate]) -> GatewayError:
    """The answer when no attempt succeeded: the common client-meaningful failure, else 502/504."""
    detail = "; ".join(
        [f"{name}: {err.reason} ({err.message})" for name, err in failures]
        + [f"{c.connection.name}: {c.skip}" + (f" ({c.why})" if c.why else "") for c in skipped]
    )
    if not failures:
        if skipped and all(c.skip is Reason.BUSY for c in skipped):
            return GatewayError(
                429, f"Every connection is busy: {detail}.", code="busy", headers={"Retry-After": str(BUSY_RETRY_AFTER)}
            )
        if skipped and all(c.skip is Reason.UNSUPPORTED for c in skipped):
            return GatewayError(400, f"No connection can serve this request: {detail}.", code="unsupported")
        if skipped:
            return GatewayError(503, f"No connection is available for {model!r}: {detail}.", code="no_connection")
        return GatewayError(504, "The request deadline passed before any connection was tried.", code="timeout")
    reasons = {err.reason for _, err in failures}
    if len(reasons) == 1:
        reason = reasons.pop()
        if reason is Reason.RATE_LIMITED:
            waits = [err.retry_after for _, err in failures if err.retry_after is not None]
            headers = {"Retry-After": str(math.ceil(min(waits)))} if waits else {}
            return GatewayError(
                429, f"Every connection is rate limited: {detail}.", code="rate_limited", headers=headers
            )
        if reason in _SAME_WAY:
            status, code = _SAME_WAY[reason]
            return GatewayError(status, f"Every connection refused the request: {detail}.", code=code)
    if failures[-1][1].reason is Reason.TIMEOUT:
        return GatewayError(504, f"All connections failed; the last timed out: {detail}.", code="upstream_timeout")
    return GatewayError(502, f"All connections failed: {detail}.", code="upstream_error")


def retry_wait(error: UpstreamError, settings: RetrySettings, retries_done: int) -> float | None:
    """Seconds to wait before trying the same connection again, or None to move on. Only for answers
    that say "later" (429, 503, overloaded); the answer's own Retry-After is honoured, and a wait longer
    than `max_wait` is not worth it when another connection may answer now."""
    if retries_done >= settings.attempts:
        return None
    later = (
        error.reason is Reason.RATE_LIMITED or error.status in (503, 529) or "overloaded" in error.message.lower()
    )
    if not later:
        return None
    wait = error.retry_after if error.retry_after is not None else RETRY_BACKOFF * 2**retries_done
    return wait if wait <= settings.max_wait else None
