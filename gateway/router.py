"""Which connection serves a request, and when the gateway moves on to the next one.

- `plan` orders the candidate connections for a requested model.
- `falls_back` is the one rule that decides whether a failed attempt moves on.
- `verdict` is the answer when every attempt failed.
- `Router.serve` runs the chain within `server.deadline`, committing a stream only when its first
  content event arrives, so that any failure before that point can still fall back invisibly.

Nothing here knows a wire format: a `Relay` (one per inbound format) builds each upstream request
and turns the answer into the client's format.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import math
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field

import aiohttp
import orjson
from aiohttp import web

from .config import GLOB_CHARS, Config, Connection
from .contracts import Candidate, Dialect, Relay, StreamRelay, UpstreamCall
from .errors import ErrorKind, GatewayError, Reason, UpstreamError
from .formats.base import render_error
from .formats.canonical import Features
from .record import Attempt, RequestRecord
from .reliability import KEY_FAILURES, REFUSED, BreakerState, ConnectionState, retry_wait
from .transport import (
    EventReader,
    Transport,
    is_event_stream,
    read_body,
    relayable_headers,
    scrub,
)

# --- planning ------------------------------------------------------------------------------------


def route_targets(routes: Mapping[str, list[str]], model: str) -> list[str] | None:
    """Exact route names win over globs; among globs the first in config order wins."""
    exact = routes.get(model)
    if exact is not None:
        return exact
    for pattern, compiled in _globs(tuple(routes)):
        if compiled.match(model):
            return routes[pattern]
    return None


@functools.lru_cache(maxsize=16)
def _globs(patterns: tuple[str, ...]) -> list[tuple[str, re.Pattern[str]]]:
    """The glob patterns among the routes, compiled once per configuration."""
    return [(p, re.compile(fnmatch.translate(p))) for p in patterns if GLOB_CHARS.intersection(p)]


def no_connection_message(config: Config) -> str:
    why = "; ".join(f"{c.name}: {c.disabled_reason}" for c in config.connections)
    return f"No connection is enabled ({why or 'none is configured'}). Set the missing variables and restart."


def _pool(config: Config, model: str) -> list[tuple[Connection, str | None]]:
    """(connection, upstream model or None when it does not serve `model`) in order: an alias's list
    (with its model rewriting), else a matching route's list, else every enabled connection."""
    alias = config.aliases.get(model)
    if alias is not None:
        return [(config.connection(name), upstream) for name, upstream in alias]
    names = route_targets(config.routes, model)
    if names is None:
        connections = [c for c in config.connections if c.enabled]
        if not connections:
            raise GatewayError(503, no_connection_message(config), code="no_connection")
    else:
        connections = [config.connection(n) for n in names]
    return [(c, c.upstream_model(model)) for c in connections]


def plan(config: Config, model: str, relay: Relay) -> list[Candidate]:
    """The ordered candidates for `model`, each marked with why it is skipped if it must be."""
    candidates: list[Candidate] = []
    needs: Features | None = None
    for connection, upstream in _pool(config, model):
        if upstream is None:
            continue
        candidate = Candidate(connection, upstream)
        if not connection.enabled:
            candidate.skip = Reason.DISABLED
        elif not relay.serves(connection):
            candidate.skip = Reason.UNSUPPORTED
        elif connection.capabilities.restricted:
            needs = needs or relay.features()
            missing = needs.missing(connection.capabilities)
            if missing:  # never send a request whose features the connection would drop
                candidate.skip, candidate.why = Reason.UNSUPPORTED, f"no support for {', '.join(missing)}"
        candidates.append(candidate)
    if relay.same_model_only:
        first = next((c.model for c in candidates if c.skip is None), None)
        candidates = [c for c in candidates if c.skip is None and c.model == first]
    if not candidates:
        raise GatewayError(
            404, f"The model {model!r} is not served by any connection.", code="model_not_found", param="model"
        )
    return candidates


# --- the decisions -------------------------------------------------------------------------------


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


# --- running the chain ---------------------------------------------------------------------------

_PHASE_WORDS = {"headers": "response headers", "content": "first content event", "body": "complete response body"}


def _timeout(phase: str, seconds: float) -> UpstreamError:
    return UpstreamError(ErrorKind.TIMEOUT, Reason.TIMEOUT, f"no {_PHASE_WORDS[phase]} within {seconds:.3g} s")


def _note_failure(attempt: Attempt, error: UpstreamError, connection: Connection) -> None:
    """The attempt learns its outcome; the error's message loses any key the upstream echoed, since it
    may end up in the client's answer (`verdict`)."""
    error.message = scrub(error.message.encode(), connection).decode()
    attempt.reason = error.reason
    attempt.detail = error.message
    attempt.status = error.status or attempt.status


# The wire format whose error bodies each client API can read as its own.
_CLIENT_WIRE = {Dialect.OPENAI: Dialect.OPENAI, Dialect.ANTHROPIC: Dialect.ANTHROPIC,
                Dialect.GEMINI: Dialect.GEMINI}  # fmt: skip


def _as_is(error: UpstreamError, connection: Connection, client_api: Dialect) -> web.Response:
    """An upstream's own 4xx answer: unchanged (but for an echoed key) when the client speaks the
    connection's format, else its status and message in the client's own error format."""
    status = error.status or 400
    if _CLIENT_WIRE[client_api] is connection.dialect:
        content_type = error.content_type or "application/json"
        return web.Response(status=status, body=scrub(error.body, connection), headers={"Content-Type": content_type})
    message = _upstream_message(error.body) or error.message
    body = render_error(client_api, status, scrub(f"{connection.name}: {message}".encode(), connection).decode())
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


CAPTURE_LIMIT = 1 << 20


def _capture(buffer: bytearray | None, data: bytes) -> None:
    """With `logging.bodies: true` the record holds what the client was sent (bounded)."""
    if buffer is not None and len(buffer) < CAPTURE_LIMIT:
        buffer += data[: CAPTURE_LIMIT - len(buffer)]


async def _until_content(reader: EventReader, stream: StreamRelay, held: list[bytes]) -> None:
    """Read and hold until the first event that carries content (the commit point); the events that
    arrived with it are held too, from then on as `_relay_rest` takes them. Raises UpstreamError for a
    stream that ends or fails first."""
    while True:
        batch = await reader.read()
        if batch is None:
            raise UpstreamError(ErrorKind.PROTOCOL, Reason.BAD_RESPONSE, "stream ended before any content")
        for index, event in enumerate(batch):
            assert type(event) is not bytes  # only past the commit point
            out, commits = stream.feed(event)
            if out:
                held.append(out)
            if commits:
                held.append(stream.relay(batch[index + 1 :]))
                held.append(stream.relay(reader.commit(stream.content_prefix)))
                return


class Watchdog:
    """Cancels the task when no progress is noted for `idle` seconds, or at `end`. Noting progress is
    one float store; the timer moves only when it fires (a timeout rescheduled per stream event cost
    more than the rest of the relay). While `writing` (the client is slow to read, not the upstream to
    send) only `end` applies."""

    __slots__ = ("_end", "_expired", "_handle", "_idle", "_loop", "_task", "progress", "writing")

    def __init__(self, idle: float, end: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._idle, self._end = idle, end
        self._expired = False
        self.writing = False
        self.progress = self._loop.time()
        self._handle = self._loop.call_at(min(self.progress + idle, end), self._fire)

    def _fire(self) -> None:
        if self.writing:
            self.progress = self._loop.time()
        due = min(self.progress + self._idle, self._end)
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._fire)
            return
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    def extend(self, end: float) -> None:
        """A later `end` (taken up when the timer fires at the earlier one)."""
        self._end = end

    def claim(self) -> bool:
        """After a CancelledError: True when it was this watchdog's (then the task is uncancelled)."""
        if not self._expired:
            return False
        assert self._task is not None
        return self._task.uncancel() == 0

    def close(self) -> None:
        self._handle.cancel()


@dataclass(slots=True)
class _Chain:
    """One request's way through its candidates."""

    deadline: float  # loop time: server.deadline after the request arrived
    failures: list[tuple[str, UpstreamError]] = field(default_factory=list)
    skipped: list[Candidate] = field(default_factory=list)


ERROR_WRITE_SECONDS = 5.0  # the closing error event to a client that does not read it: then the connection is cut
STREAM_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Router:
    def __init__(self, config: Config, transport: Transport, states: dict[str, ConnectionState]) -> None:
        self.config = config
        self.transport = transport
        self.states = states  # this configuration's connections' keys, breakers and limits

    async def serve(
        self, request: web.Request, record: RequestRecord, relay: Relay, candidates: list[Candidate]
    ) -> web.StreamResponse:
        """Candidates in order until one answers; when every one was passed over only because its
        breaker is open, the one whose cooldown ends soonest is tried after all."""
        loop = asyncio.get_running_loop()
        chain = _Chain(record.started + self.config.server.deadline)
        for candidate in candidates:
            response = await self._candidate(request, record, relay, candidate, chain)
            if response is not None:
                return response
            if loop.time() >= chain.deadline:
                break
        held_back = [c for c in chain.skipped if c.skip is Reason.BREAKER_OPEN]
        if held_back and not chain.failures and loop.time() < chain.deadline:
            soonest = min(held_back, key=lambda c: self.states[c.connection.name].breaker.until)
            chain.skipped.remove(soonest)
            soonest.skip = None
            response = await self._candidate(request, record, relay, soonest, chain, forced=True)
            if response is not None:
                return response
        raise verdict(record.model or "", chain.failures, chain.skipped)

    async def _candidate(
        self,
        request: web.Request,
        record: RequestRecord,
        relay: Relay,
        candidate: Candidate,
        chain: _Chain,
        *,
        forced: bool = False,
    ) -> web.StreamResponse | None:
        """One connection: passed over (unsupported, breaker open, busy), or tried with its keys in
        turn and its retries; None when the chain should move on."""
        loop = asyncio.get_running_loop()
        name = candidate.connection.name
        state = self.states[name]
        call = None
        if candidate.skip is None:
            try:
                call = relay.upstream_call(candidate)
            except UpstreamError as err:  # the request cannot be expressed for this connection
                candidate.skip, candidate.why = err.reason, err.message
        admission = REFUSED
        if call is not None:
            now = loop.time()
            admission = state.breaker.force_probe(now) if forced else state.breaker.admit(now)
            if not admission:
                candidate.skip = Reason.BREAKER_OPEN
        limiter = None
        try:  # from here on, a probe that ends without an outcome (busy, cancelled, out of time) is released
            if candidate.skip is None and state.limiter is not None:
                wait = max(0.0, min(candidate.connection.reliability.queue_timeout, chain.deadline - loop.time()))
                if await state.limiter.acquire(wait):
                    limiter = state.limiter
                else:
                    candidate.skip, candidate.why = Reason.BUSY, f"{state.limiter.limit} requests in flight"
            if call is None or candidate.skip is not None:
                record.attempts.append(Attempt(name, candidate.skip or Reason.UNSUPPORTED, skipped=True))
                chain.skipped.append(candidate)
                return None
            return await self._tries(request, record, relay, candidate, call, state, chain)
        finally:
            if limiter is not None:
                limiter.release()
            state.breaker.release(admission)

    async def _tries(
        self,
        request: web.Request,
        record: RequestRecord,
        relay: Relay,
        candidate: Candidate,
        call: UpstreamCall,
        state: ConnectionState,
        chain: _Chain,
    ) -> web.StreamResponse | None:
        """Attempts at one connection: its next key after a key failure, a retry after a "later" answer."""
        loop = asyncio.get_running_loop()
        connection = candidate.connection
        tried: set[str] = set()
        retries = 0
        last: UpstreamError | None = None
        while loop.time() < chain.deadline:
            key = state.keys.pick(loop.time(), tried)
            attempt = Attempt(connection.name, Reason.OK)
            record.attempts.append(attempt)
            try:
                response = await self._attempt(request, record, relay, candidate, call, key, attempt, chain.deadline)
            except UpstreamError as err:
                last = err
                _note_failure(attempt, err, connection)
                state.breaker.record(err.reason, loop.time())
                more = state.breaker.state_at(loop.time()) is not BreakerState.OPEN  # open: no more tries here
                if err.reason in KEY_FAILURES and key is not None:
                    state.keys.penalize(key, err, loop.time())
                    tried.add(key)
                    if more and state.keys.another(loop.time(), tried):  # its next key before the next connection
                        attempt.rotated = True
                        continue
                wait = retry_wait(err, connection.reliability.retry, retries) if more else None
                if wait is not None and loop.time() + wait < chain.deadline:
                    retries += 1
                    attempt.retried = True
                    await asyncio.sleep(wait)
                    continue
                if not falls_back(err):
                    record.connection = connection.name
                    return _as_is(err, connection, record.client_api)
                break
            if attempt.reason is not Reason.OK:  # failed after the commit (the commit itself counted as a success)
                state.breaker.record(attempt.reason, loop.time())
            return response
        if last is not None:  # moving on (or out of time) after this connection's last failure
            chain.failures.append((connection.name, last))
        return None

    def _open(
        self,
        request: web.Request,
        record: RequestRecord,
        connection: Connection,
        method: str,
        call: UpstreamCall,
        key: str | None,
        chain_deadline: float,
    ) -> Awaitable[aiohttp.ClientResponse]:
        """Send one upstream request and wait for its headers; raises UpstreamError for a non-2xx.
        (Not a coroutine of its own: each level of awaiting costs every request.)"""
        remaining = chain_deadline - asyncio.get_running_loop().time()
        return self.transport.open(
            connection,
            method,
            call.path,
            call.body or None,
            key=key,
            connect_timeout=max(0.001, min(connection.timeout.connect, remaining)),
            headers=call.headers,
            client_headers=request.headers,
            request_id=record.request_id,
        )

    async def _attempt(
        self,
        request: web.Request,
        record: RequestRecord,
        relay: Relay,
        candidate: Candidate,
        call: UpstreamCall,
        key: str | None,
        attempt: Attempt,
        chain_deadline: float,
    ) -> web.StreamResponse:
        """One connection, until its answer is committed to the client (or it fails before that)."""
        loop = asyncio.get_running_loop()
        connection = candidate.connection
        limits = connection.timeout
        sent = loop.time()
        attempt_end = sent + limits.total
        commit_by = min(sent + limits.first_byte, chain_deadline, attempt_end)
        upstream: aiohttp.ClientResponse | None = None
        held: list[bytes] = []
        committed_at: float | None = None
        phase = "headers"
        # Until the commit point: headers, then the first content event or the whole body. One timer
        # (asyncio.timeout's context and its rescheduling cost 4% of a request's instructions).
        deadline = commit_by
        watchdog = Watchdog(math.inf, deadline)
        try:
            try:
                upstream = await self._open(request, record, connection, "POST", call, key, chain_deadline)
                attempt.status = upstream.status
                event_stream = is_event_stream(upstream)
                streaming = relay.stream and event_stream
                whole_body = relay.stream and not event_stream  # an upstream that ignored `stream: true`
                if whole_body:
                    phase = "body"
                    converted, usage = relay.stream_body(candidate, await read_body(upstream, limits.idle))
                    held.append(converted)
                elif streaming:
                    phase = "content"
                    stream = relay.stream_relay(candidate)
                    reader = EventReader(upstream)
                    await _until_content(reader, stream, held)
                else:
                    phase = "body"
                    attempt.ttfb = loop.time() - sent
                    deadline = attempt_end
                    watchdog.extend(deadline)
                    body = await read_body(upstream, limits.idle)
            except asyncio.CancelledError:
                if watchdog.claim():
                    raise _timeout(phase, deadline - sent) from None
                raise
            finally:
                watchdog.close()
            if not relay.stream:  # an unusable 200 still falls back
                payload, usage = relay.response_body(candidate, body, event_stream)

            # Committed: from here on the client sees this connection's answer.
            committed_at = loop.time()
            self.states[connection.name].breaker.record(Reason.OK, committed_at)
            attempt.waited = committed_at - sent
            record.connection = connection.name
            if not relay.stream:
                record.usage = usage
                _capture(record.response_body, payload)
                headers = relayable_headers(upstream.headers)
                headers["Content-Type"] = "application/json"
                if usage is not None and usage.estimated:
                    headers["x-gateway-usage"] = "estimated"
                return web.Response(status=upstream.status, body=payload, headers=headers)
            attempt.ttfb = committed_at - sent
            record.ttfb = committed_at - record.started
            response = web.StreamResponse(headers=STREAM_HEADERS | record.headers())
            await response.prepare(request)
            first = b"".join(held)
            try:
                await response.write(first)
            except ConnectionResetError:
                record.client_disconnected = True
                return response
            _capture(record.response_body, first)
            if whole_body:
                record.usage = usage
                return response
            stream_end = min(attempt_end, committed_at + self.config.limits.max_stream_seconds)
            await self._relay_rest(request, response, reader, stream, record, attempt, connection, stream_end)
            record.usage = stream.usage
            return response
        finally:
            attempt.duration = loop.time() - sent
            if committed_at is None:
                attempt.waited = attempt.duration
            if upstream is not None:
                upstream.close()

    async def _relay_rest(
        self,
        request: web.Request,
        response: web.StreamResponse,
        reader: EventReader,
        stream: StreamRelay,
        record: RequestRecord,
        attempt: Attempt,
        connection: Connection,
        stream_end: float,
    ) -> None:
        """After commit: everything one upstream read brings goes out in one write; a failure ends
        the stream with an error event in the client's format. The stream ends by `stream_end` (the
        attempt's `total`, `limits.max_stream_seconds`), however slowly the client reads."""
        loop = asyncio.get_running_loop()
        idle = connection.timeout.idle
        capture = record.response_body
        watchdog = Watchdog(idle, stream_end)
        started = loop.time()
        try:
            while True:
                waiting_since = loop.time()
                batch = await reader.read()
                now = watchdog.progress = loop.time()
                attempt.waited += now - waiting_since
                out = stream.end() if batch is None else stream.relay(batch)
                if out:
                    watchdog.writing = True  # a slow client is not an idle upstream
                    await response.write(out)
                    watchdog.writing = False
                    watchdog.progress = loop.time()
                    if capture is not None:
                        _capture(capture, out)
                if batch is None:
                    return
        except asyncio.CancelledError:
            if not watchdog.claim():
                raise
            if watchdog.writing:  # the client stopped reading: it cannot hold the stream open any longer
                record.client_disconnected = True
                if request.transport is not None:
                    request.transport.close()
                return
            stalled = loop.time() < stream_end - 0.001
            failure = UpstreamError(
                ErrorKind.TIMEOUT,
                Reason.TIMEOUT,
                f"stream idle for {idle:g} s" if stalled else f"stream exceeded {stream_end - started:.3g} s",
            )
        except UpstreamError as err:
            failure = err
        except ConnectionResetError:
            record.client_disconnected = True
            return
        finally:
            watchdog.close()
        try:  # the upstream had already sent its whole answer (then dropped or stalled): end cleanly
            trailing = stream.end()
        except UpstreamError:
            trailing = None
        if trailing is not None:
            try:
                await response.write(trailing)
            except ConnectionResetError:
                record.client_disconnected = True
            return
        _note_failure(attempt, failure, connection)
        record.failed_after_commit = True
        try:
            async with asyncio.timeout(ERROR_WRITE_SECONDS):
                await response.write(scrub(stream.error(failure, connection.name), connection))
        except (ConnectionResetError, TimeoutError):
            record.client_disconnected = True
            if request.transport is not None:
                request.transport.close()

    async def forward(self, request: web.Request, record: RequestRecord, path: str, body: bytes) -> web.StreamResponse:
        """Any other `/v1/*` request: as-is to the first enabled OpenAI-format connection, once.
        Files, batches and uploads are not idempotent, so there is no retry and no fallback."""
        connection = next(
            (c for c in self.config.connections if c.enabled and c.dialect is Dialect.OPENAI), None
        )
        if connection is None:
            raise GatewayError(503, no_connection_message(self.config), code="no_connection")
        loop = asyncio.get_running_loop()
        limits = connection.timeout
        chain_deadline = record.started + self.config.server.deadline
        attempt = Attempt(connection.name, Reason.OK)
        record.attempts.append(attempt)
        sent = loop.time()
        call = UpstreamCall(f"{path}?{request.query_string}" if request.query_string else path, body, {})
        try:
            try:
                async with asyncio.timeout_at(min(sent + limits.first_byte, chain_deadline)):
                    key = self.states[connection.name].keys.pick(loop.time(), set())
                    upstream = await self._open(request, record, connection, request.method, call, key, chain_deadline)
            except TimeoutError:
                raise _timeout("headers", limits.first_byte) from None
        except UpstreamError as err:
            attempt.duration = attempt.waited = loop.time() - sent
            _note_failure(attempt, err, connection)
            if err.kind is not ErrorKind.HTTP_STATUS:
                raise verdict(path, [(connection.name, err)], []) from None
            record.connection = connection.name
            return _as_is(err, connection, record.client_api)
        try:
            attempt.status = upstream.status
            attempt.ttfb = attempt.waited = loop.time() - sent
            record.connection = connection.name
            headers = relayable_headers(upstream.headers) | record.headers()
            response = web.StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
            try:
                while True:
                    waiting_since = loop.time()
                    async with asyncio.timeout(limits.idle):
                        chunk = await upstream.content.readany()
                    attempt.waited += loop.time() - waiting_since
                    if not chunk:
                        break
                    await response.write(chunk)
            except (TimeoutError, aiohttp.ClientError) as exc:
                attempt.reason = Reason.TIMEOUT if isinstance(exc, TimeoutError) else Reason.SERVER_ERROR
                record.failed_after_commit = True
                # Headers are out: the only honest signal left is to cut the connection.
                if request.transport is not None:
                    request.transport.close()
            except ConnectionResetError:
                record.client_disconnected = True
            return response
        finally:
            attempt.duration = loop.time() - sent
            upstream.close()
