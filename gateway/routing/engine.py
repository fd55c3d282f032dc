"""The chain: a request's candidates in order until one answers, within `server.deadline`.

One `Exchange` per request carries what every step needs (the request, its record, its relay, the
deadline, what failed and what was skipped) and the end hook: callbacks that fire once when the
answer ends, however it ends, and read the outcome from the exchange (the serving candidate, the
record's status and usage). The Responses store subscribes to it; usage accounting will too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
import orjson
from aiohttp import web

from ..config.model import Config, Connection
from ..contracts import Candidate, Dialect, DialectApi, Relay, UpstreamCall
from ..errors import Reason, UpstreamError
from ..record import Attempt, RequestRecord
from ..state.base import KEY_FAILURES, REFUSED, Admission, BreakerState, ConnectionStates
from ..transport import Transport, scrub
from . import attempt as attempts
from .policy import falls_back, retry_wait, verdict

EndHook = Callable[["Exchange"], None]


class Exchange:
    """One client request on its way through its candidates."""

    __slots__ = (
        "_hooks", "deadline", "failures", "max_stream_seconds", "record", "relay", "request", "router", "served",
        "skipped", "states",
    )  # fmt: skip

    def __init__(
        self, router: Router, request: web.Request, record: RequestRecord, relay: Relay, on_end: EndHook | None
    ) -> None:
        self.router = router
        self.states = router.states
        self.request = request
        self.record = record
        self.relay = relay
        self.deadline = record.started + router.config.server.deadline  # loop time
        self.max_stream_seconds = router.config.limits.max_stream_seconds
        self.failures: list[tuple[str, UpstreamError]] = []
        self.skipped: list[Candidate] = []
        self.served: Candidate | None = None  # set at the commit point
        self._hooks = on_end

    def end(self) -> None:
        """The answer has ended (its last bytes are known, or nothing more will come): the end hook
        fires, once."""
        hook, self._hooks = self._hooks, None
        if hook is not None:
            hook(self)

    def open(
        self, connection: Connection, method: str, call: UpstreamCall, key: str | None
    ) -> Awaitable[aiohttp.ClientResponse]:
        """Send one upstream request and wait for its headers; raises UpstreamError for a non-2xx.
        (Not a coroutine of its own: each level of awaiting costs every request.)"""
        return self.router.open(self.request, self.record, connection, method, call, key, self.deadline)

    def as_is(self, error: UpstreamError, connection: Connection) -> web.Response:
        """An upstream's own 4xx answer: unchanged (but for an echoed key) when the client speaks the
        connection's dialect, else its status and message in the client's own error format."""
        self.record.connection = connection.name
        return self.router.as_is(error, connection, self.record.client_api)


class Router:
    """One configuration's engine: its connections' state, the transport, and the dialects' error shapes."""

    def __init__(
        self, config: Config, transport: Transport, states: ConnectionStates, apis: Mapping[Dialect, DialectApi]
    ) -> None:
        self.config = config
        self.transport = transport
        self.states = states  # this configuration's connections' keys, breakers and limits
        self.apis = apis

    async def serve(
        self,
        request: web.Request,
        record: RequestRecord,
        relay: Relay,
        candidates: list[Candidate],
        on_end: EndHook | None = None,
    ) -> web.StreamResponse:
        """Candidates in order until one answers; when every one was passed over only because its
        breaker is open, the one whose cooldown ends soonest is tried after all. Raises GatewayError
        (`verdict`) when none did. `on_end` fires once when the answer ends, however it ends."""
        exchange = Exchange(self, request, record, relay, on_end)
        loop = asyncio.get_running_loop()
        try:
            admissions = await self.states.admit(candidates, loop.time())
            for candidate, admission in zip(candidates, admissions, strict=True):
                response = await self._candidate(exchange, candidate, admission)
                if response is not None:
                    return response
                if loop.time() >= exchange.deadline:
                    break
            held_back = [c for c in exchange.skipped if c.skip is Reason.BREAKER_OPEN]
            if held_back and not exchange.failures and loop.time() < exchange.deadline:
                soonest = min(held_back, key=lambda c: self.states.reopens_at(c.connection.name))
                exchange.skipped.remove(soonest)
                soonest.skip = None
                response = await self._candidate(exchange, soonest, None)
                if response is not None:
                    return response
            raise verdict(record.model or "", exchange.failures, exchange.skipped)
        finally:
            exchange.end()

    async def _candidate(
        self, exchange: Exchange, candidate: Candidate, admission: Admission | None
    ) -> web.StreamResponse | None:
        """One connection: passed over (unsupported, breaker open, busy), or tried with its keys in
        turn and its retries; None when the chain should move on. `admission` None: the forced probe."""
        loop = asyncio.get_running_loop()
        states = self.states
        name = candidate.connection.name
        call = None
        if candidate.skip is None:
            try:
                call = exchange.relay.upstream_call(candidate)
            except UpstreamError as err:  # the request cannot be expressed for this connection
                candidate.skip, candidate.why = err.reason, err.message
        if call is None:
            admission = REFUSED
        elif admission is None or admission.half_open:
            admission = await states.claim_probe(name, loop.time(), forced=admission is None)
        if call is not None and not admission:
            candidate.skip = Reason.BREAKER_OPEN
        slot = False
        try:  # from here on, a probe that ends without an outcome (busy, cancelled, out of time) is released
            if candidate.skip is None and states.concurrency_limit(name) is not None:
                wait = max(0.0, min(candidate.connection.reliability.queue_timeout, exchange.deadline - loop.time()))
                slot = await states.acquire_slot(name, wait)
                if not slot:
                    candidate.skip, candidate.why = Reason.BUSY, f"{states.concurrency_limit(name)} requests in flight"
            if call is None or candidate.skip is not None:
                exchange.record.attempts.append(Attempt(name, candidate.skip or Reason.UNSUPPORTED, skipped=True))
                exchange.skipped.append(candidate)
                return None
            return await self._tries(exchange, candidate, call)
        finally:
            if slot:
                states.release_slot(name)
            if admission.probe:
                await states.release(name, admission)

    async def _tries(self, exchange: Exchange, candidate: Candidate, call: UpstreamCall) -> web.StreamResponse | None:
        """Attempts at one connection: its next key after a key failure, a retry after a "later" answer."""
        loop = asyncio.get_running_loop()
        states = self.states
        record = exchange.record
        connection = candidate.connection
        name = connection.name
        tried: set[str] = set()
        retries = 0
        last: UpstreamError | None = None
        while loop.time() < exchange.deadline:
            key = states.pick_key(name, loop.time(), tried)
            attempt = Attempt(name, Reason.OK)
            record.attempts.append(attempt)
            try:
                response = await attempts.run(exchange, candidate, call, key, attempt)
            except UpstreamError as err:
                last = err
                attempts.note_failure(attempt, err, connection)
                now = loop.time()
                await states.record(name, err.reason, now)
                more = states.breaker(name, now) is not BreakerState.OPEN  # open: no more tries here
                if err.reason in KEY_FAILURES and key is not None:
                    await states.penalize_key(name, key, err, now)
                    tried.add(key)
                    if more and states.has_another_key(name, now, tried):  # its next key before the next connection
                        attempt.rotated = True
                        continue
                wait = retry_wait(err, connection.reliability.retry, retries) if more else None
                if wait is not None and loop.time() + wait < exchange.deadline:
                    retries += 1
                    attempt.retried = True
                    await asyncio.sleep(wait)
                    continue
                if not falls_back(err):
                    return exchange.as_is(err, connection)
                break
            if attempt.reason is not Reason.OK:  # failed after the commit (the commit itself counted as a success)
                await states.record(name, attempt.reason, loop.time())
            return response
        if last is not None:  # moving on (or out of time) after this connection's last failure
            exchange.failures.append((name, last))
        return None

    def open(
        self,
        request: web.BaseRequest,
        record: RequestRecord,
        connection: Connection,
        method: str,
        call: UpstreamCall,
        key: str | None,
        deadline: float,
    ) -> Awaitable[aiohttp.ClientResponse]:
        """`call` sent to `connection` for the client's `request`, its connect bounded by `deadline`
        (loop time) too; the awaitable raises UpstreamError for a non-2xx."""
        remaining = deadline - asyncio.get_running_loop().time()
        client_headers = request.headers
        return self.transport.open(
            connection,
            method,
            call.path,
            call.body or None,
            key=key,
            connect_timeout=max(0.001, min(connection.timeout.connect, remaining)),
            headers=call.headers,
            client_headers=client_headers,
            forwarded=self.apis[connection.dialect].forwarded_headers(client_headers),
            request_id=record.request_id,
        )

    def as_is(self, error: UpstreamError, connection: Connection, client: Dialect) -> web.Response:
        """An upstream's 4xx for a client of dialect `client` (see `Exchange.as_is`)."""
        status = error.status or 400
        if client is connection.dialect:
            content_type = error.content_type or "application/json"
            body = scrub(error.body, connection)
            return web.Response(status=status, body=body, headers={"Content-Type": content_type})
        message = _upstream_message(error.body) or error.message
        text = scrub(f"{connection.name}: {message}".encode(), connection).decode()
        body = self.apis[client].error_body(status, text)
        return web.Response(status=status, body=body, headers={"Content-Type": "application/json"})


def _upstream_message(body: bytes) -> str | None:
    """`error.message` of an OpenAI, Anthropic or Gemini error body (they agree on that much)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message[:1000] if isinstance(message, str) and message else None
