"""What happened to one client request: every attempt and its outcome.

The router fills it in; the response headers, the request log line and the metrics all read it, so
there is one place that sees every attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .contracts import Dialect
from .errors import Reason
from .formats.canonical import Usage


@dataclass(slots=True)
class Attempt:
    connection: str
    reason: Reason
    duration: float = 0.0  # seconds, request sent -> outcome
    status: int | None = None  # upstream HTTP status, when one arrived
    ttfb: float | None = None  # request sent -> headers (streams: -> first content event)
    detail: str | None = None  # what went wrong, free of keys and URLs
    waited: float = 0.0  # of `duration`, the time spent awaiting the upstream (the rest is overhead)
    skipped: bool = False  # passed over without a request (disabled, unsupported, breaker open, busy)
    rotated: bool = False  # the failure set this key aside and the connection was tried with its next key
    retried: bool = False  # the answer said "later": the same connection was tried again after a wait


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    route: str
    client_api: Dialect
    started: float  # loop time
    model: str | None = None
    stream: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    connection: str | None = None  # the connection that served the answer
    status: int | None = None
    ttfb: float | None = None  # request received -> first byte to the client
    usage: Usage | None = None
    client_disconnected: bool = False
    failed_after_commit: bool = False
    # Only with `logging.bodies: true`: the parsed request, and the answer's bytes as sent (bounded).
    request_body: Any = None
    response_body: bytearray | None = None

    def headers(self) -> dict[str, str]:
        """What every answer tells its client about this request: its id, the connection that served
        it, and each attempt with its outcome."""
        return {
            "x-request-id": self.request_id,
            "x-gateway-connection": self.connection or "none",
            "x-gateway-attempts": ",".join([f"{a.connection}:{a.reason}" for a in self.attempts]),
        }
