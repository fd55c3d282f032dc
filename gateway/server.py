"""The client side of every listener: how long a request head and body may take, how large a head may
grow, and how many connections may be open at once.

aiohttp's request handler has no read timeouts of its own (one byte a second keeps a connection for
ever) and bounds a head only line by line, so `GuardedHandler` puts these bounds around it:

- the head must arrive within `limits.header_timeout`, counted from the connect for the first request
  and from its first byte for the later ones of a keep-alive connection (the idle time between them is
  `server.keepalive_timeout`); else a 408 and the connection closed;
- a head that is not finished within `limits.max_header_bytes` is refused (431) before the parser holds
  more; more than `limits.max_header_count` headers or one over `limits.max_header_line_bytes` is a 431
  from the parser's own checks, in the client's error format;
- a body must arrive within `limits.body_timeout` plus the time its declared length needs at
  `limits.body_min_rate` (a chunked body: the time `server.max_body_bytes` needs), else the handler
  reading it gets a 408 (`BodyTimeout`) and the connection is closed after that answer.

`ClientSite` is the server port's listener; it and the proxy listener each admit at most their
`max_connections` through a `ConnectionCap`; one more gets a 503 (`Refused`) and is closed.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict
from yarl import URL

from . import handlers
from .config.model import Config
from .contracts import Dialect
from .errors import GatewayError
from .formats import registry

log = logging.getLogger("gateway")

# Seconds a connection we answered and refused stays open, reading and dropping what the client still
# sends: closed with unread data, the socket would send a reset, and the client could lose our answer.
LINGER = 1.0
# The parser's own words for a head with one header more than max_headers (it has no class of its own;
# tests/security/test_client_bounds.py fails if aiohttp changes them).
TOO_MANY_HEADERS = "Too many headers received"

_HEAD, _BODY, _CLOSING = 0, 1, 2  # GuardedHandler._phase


class BodyTimeout(GatewayError, TimeoutError):
    """The request body did not arrive in time. A GatewayError, so the handler reading it answers 408 in
    the client's format; a TimeoutError, so aiohttp's lingering read after the answer ends quietly and
    closes the connection (any other exception there is logged as unhandled)."""


def headers_too_large(limit: int) -> GatewayError:
    """The 431 for a head over `limits.max_header_bytes` (the middleware's check and the listener's)."""
    return GatewayError(431, f"Request headers are larger than the limit of {limit} bytes.", code="headers_too_large")


def raw_response(status: int, body: bytes) -> bytes:
    """An HTTP/1.1 answer with a JSON `body` that closes the connection, as bytes for a transport."""
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Head:
    """What `handlers.client_api_for` reads of a request (its path and headers), for a head that never
    became a request."""

    def __init__(self, path: str, headers: CIMultiDict[str]) -> None:
        self.path = path
        self.headers = headers


def client_api_of(start: bytes) -> Dialect:
    """The API a client speaks, judged from the start of a head the parser never finished (its request
    line and the header lines that came with it); OpenAI's when not even the request line came."""
    line, _, rest = start.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3:
        return Dialect.OPENAI
    headers: CIMultiDict[str] = CIMultiDict()
    for header in rest.split(b"\r\n")[:-1]:  # the last line may be unfinished
        name, colon, value = header.partition(b":")
        if colon:
            headers.add(name.decode("latin-1").strip(), value.decode("latin-1").strip())
    try:
        path = URL(parts[1].decode("latin-1"), encoded=True).path
    except ValueError:
        return Dialect.OPENAI
    return handlers.client_api_for(_Head(path, headers), "unmatched")  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Bounds:
    """One listener's client-side limits, from the configuration it started with."""

    header_timeout: float
    body_timeout: float
    body_min_rate: int
    max_body_bytes: int
    max_header_bytes: int
    max_header_count: int
    max_header_line_bytes: int
    keepalive_timeout: float

    @classmethod
    def of(cls, config: Config) -> Bounds:
        limits = config.limits
        return cls(
            limits.header_timeout,
            limits.body_timeout,
            limits.body_min_rate,
            config.server.max_body_bytes,
            limits.max_header_bytes,
            limits.max_header_count,
            limits.max_header_line_bytes,
            config.server.keepalive_timeout,
        )


class GuardedHandler(RequestHandler):
    """aiohttp's request handler for one client connection, with the bounds of the module docstring."""

    __slots__ = ("_body", "_bounds", "_clock", "_deadline", "_head_bytes", "_phase", "_release", "_start", "_timer")

    def __init__(self, server: web.Server, bounds: Bounds, release: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(
            server,
            loop=loop,
            keepalive_timeout=bounds.keepalive_timeout,
            access_log=None,
            max_line_size=bounds.max_header_bytes,  # the request line
            max_field_size=bounds.max_header_line_bytes,  # one header's name and value
            max_headers=bounds.max_header_count,
        )
        self._bounds = bounds
        self._clock = loop
        self._release = release
        self._phase = _HEAD
        self._head_bytes = 0  # of the head being read, in the data that came before this call
        self._start = b""  # the first data of that head: its request line says the client's API
        self._body: Any = None  # the payload (StreamReader) being read
        self._deadline: float | None = None  # of the head or body being read, or of the linger
        self._timer: asyncio.TimerHandle | None = None

    # --- the asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm(self._clock.time() + self._bounds.header_timeout)  # the first head counts from the connect

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _CLOSING:
            return  # answered: what else comes is dropped
        seen = 0
        if phase == _HEAD:
            seen = self._head_bytes + len(data)
            if not self._start:
                self._start = data
                if self._deadline is None:  # a later request of a keep-alive connection: from its first byte
                    self._arm(self._clock.time() + self._bounds.header_timeout)
            budget = self._bounds.max_header_bytes + 2  # the raw head, with the blank line that ends it
            if seen > budget and data.find(b"\r\n\r\n", 0, max(0, budget - self._head_bytes)) < 0:
                self._answer(headers_too_large(self._bounds.max_header_bytes))
                return
        # Private: aiohttp says nowhere else when a head has been parsed (its request factory runs only
        # when the handler takes the request, later for pipelined ones); its queue grows by one then.
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) != queued:
            self._parsed()
        elif phase == _HEAD:
            self._head_bytes = seen

    def _parsed(self) -> None:
        """A head was parsed (or refused): time its body, or wait for the next head."""
        message, payload = self._messages[-1]
        if not hasattr(message, "chunked"):  # the parser refused the head: aiohttp answers (handle_error), closes
            self._phase = _CLOSING
            self._arm(self._clock.time() + LINGER)
            return
        if payload.is_eof():  # no body, or all of it came with the head
            self._next_head()
            return
        bounds = self._bounds
        length = bounds.max_body_bytes  # chunked: the most a body may be
        if not message.chunked:
            length = min(int(message.headers.get(hdrs.CONTENT_LENGTH) or 0), length)
        self._phase, self._body, self._start = _BODY, payload, b""
        self._arm(self._clock.time() + bounds.body_timeout + length / bounds.body_min_rate)
        payload.on_eof(self._body_done)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = None
        if self._release is not None:
            self._release()
            self._release = None
        super().connection_lost(exc)

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """aiohttp's answer to a head its parser refused, but a 431 in the client's format when the head
        had too many headers or too long a line. Returns the response (closing the connection)."""
        error = self._overflow(exc)
        if error is None:
            return super().handle_error(request, status, exc, message)
        log.info("refused a request head with 431: %s", error.message)
        response = handlers.error_response(client_api_of(self._start), error)
        response.force_close()
        return response

    # --- the bounds ------------------------------------------------------------------------------

    def _overflow(self, exc: BaseException | None) -> GatewayError | None:
        """The 431 for a parser error that is a header overflow, else None."""
        if isinstance(exc, LineTooLong):
            limit = exc.args[1]
            if limit == self.max_line_size and limit != self.max_field_size:
                return GatewayError(431, f"The request line is longer than {limit} bytes.", code="headers_too_large")
            return GatewayError(431, f"A request header is longer than {limit} bytes.", code="headers_too_large")
        if isinstance(exc, BadHttpMessage) and exc.message == TOO_MANY_HEADERS:
            return GatewayError(431, f"The request has more than {self.max_headers} headers.", code="too_many_headers")
        return None

    def _arm(self, deadline: float) -> None:
        """Expire at `deadline`. One timer per connection, moved only when the deadline comes earlier
        (when it fires too early it sets itself again), so a request costs no new timer."""
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._clock.call_at(deadline, self._expire)

    def _next_head(self) -> None:
        self._phase, self._body, self._start = _HEAD, None, b""
        self._head_bytes = 0
        self._deadline = None  # the next head's clock starts at its first byte

    def _body_done(self) -> None:
        if self._phase == _BODY and self.transport is not None:
            self._next_head()

    def _expire(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.transport is None:
            return
        if self._clock.time() < deadline:
            self._timer = self._clock.call_at(deadline, self._expire)
            return
        self._deadline = None
        if self._phase == _CLOSING:
            self.force_close()
        elif self._phase == _BODY:
            bounds = self._bounds
            message = (
                f"The request body did not arrive in time ({bounds.body_timeout:g} s plus its length at "
                f"{bounds.body_min_rate} bytes a second)."
            )
            log.info("closing a connection whose request body did not arrive in time")
            self._body.set_exception(BodyTimeout(408, message, code="request_timeout"))
            self._phase = _CLOSING  # the handler answers the 408; aiohttp closes after it, or the linger
            self._arm(self._clock.time() + LINGER)
        elif not self._start and not self._head_bytes:
            self.force_close()  # connected and never said anything: nobody to answer
        else:
            message = f"The request head did not arrive within {self._bounds.header_timeout:g} s."
            self._answer(GatewayError(408, message, code="request_timeout"))

    def _answer(self, error: GatewayError) -> None:
        """Write `error` in the client's format, half-close, and close after the linger; only closes when
        a handler is still answering an earlier (pipelined) request on this connection."""
        transport = self.transport
        if transport is None:
            return
        # Private: whether a handler is writing, so our answer would land inside its response.
        if self._request_in_progress:
            self.force_close()
            return
        api = client_api_of(self._start)
        body = registry.APIS[api].error_body(error.status, error.message, error.code)
        transport.write(raw_response(error.status, body))
        if transport.can_write_eof():
            transport.write_eof()
        log.info("refused a connection with %d: %s", error.status, error.message)
        self._phase = _CLOSING
        self._arm(self._clock.time() + LINGER)


def guarded(server: web.Server, config: Config) -> Callable[..., GuardedHandler]:
    """The protocol factory of `server` with the client-side bounds of `config`; called with an
    optional `release`, run once when the connection ends."""
    return functools.partial(GuardedHandler, server, Bounds.of(config))


class Refused(asyncio.Protocol):
    """A connection beyond its listener's cap: a 503 in OpenAI's error shape (nothing of the request is
    read, so its API is unknown), a half-close, and the connection closed after the linger."""

    def __init__(self) -> None:
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        body = registry.APIS[Dialect.OPENAI].error_body(
            503, "The gateway has too many open connections; try again shortly.", "too_many_connections"
        )
        transport.write(raw_response(503, body))  # type: ignore[attr-defined]
        if transport.can_write_eof():  # type: ignore[attr-defined]
            transport.write_eof()  # type: ignore[attr-defined]
        self.timer = asyncio.get_running_loop().call_later(LINGER, transport.close)

    def eof_received(self) -> bool:
        return False  # the client is done too: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


class ConnectionCap:
    """The open connections of one listener: at most `limit`, the rest `Refused`."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name  # the setting, for the log line
        self.limit = limit
        self.open = 0
        self._warned = 0.0

    def admit(self, make: Callable[[Callable[[], None]], asyncio.Protocol]) -> asyncio.Protocol:
        """`make(release)`, counted until `release` is called (once), or `Refused` when full."""
        if self.open >= self.limit:
            now = time.monotonic()
            if now - self._warned > 60:  # a flood must not flood the log too
                self._warned = now
                log.warning("refusing connections with 503: %d open (%s)", self.open, self.name)
            return Refused()
        self.open += 1
        return make(self.release)

    def release(self) -> None:
        self.open -= 1


class ClientSite(web.BaseSite):
    """The server port: `GuardedHandler`s of the runner's server, at most `limits.max_connections`."""

    def __init__(self, runner: web.AppRunner, config: Config, host: str, port: int) -> None:
        super().__init__(runner)
        self.host, self.port = host, port
        self.cap = ConnectionCap("limits.max_connections", config.limits.max_connections)
        self.config = config

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        make = guarded(server, self.config)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self.cap.admit(make), self.host, self.port, reuse_address=True
        )
