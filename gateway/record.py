"""What happened to one client request: every attempt and its outcome.

The router fills it in; the response headers, the request log line and the metrics all read it, so
there is one place that sees every attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ClientApi, Reason


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


@dataclass(slots=True)
class Attempt:
    connection: str
    reason: Reason
    duration: float = 0.0  # seconds, request sent -> outcome
    status: int | None = None  # upstream HTTP status, when one arrived
    ttfb: float | None = None  # request sent -> headers (streams: -> first content event)
    detail: str | None = None  # what went wrong, free of keys and URLs


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    route: str
    client_api: ClientApi
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

    def attempts_header(self) -> str:
        return ",".join(f"{a.connection}:{a.reason}" for a in self.attempts)
