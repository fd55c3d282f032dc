"""One attempt at one connection: send, wait for the commit point, then write the answer.

Until the commit point (the headers and the whole body of a JSON answer; the first content event of a
stream) any failure can still fall back invisibly. From it on the client sees this connection's
answer, and a failure ends the stream with an error event in the client's format.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from ..config.model import Connection
from ..contracts import Candidate, StreamRelay, UpstreamCall
from ..errors import ErrorKind, Reason, UpstreamError
from ..record import Attempt
from ..transport import EventReader, is_event_stream, read_body, relayable_headers, scrub

if TYPE_CHECKING:
    from .engine import Exchange

ERROR_WRITE_SECONDS = 5.0  # the closing error event to a client that does not read it: then the connection is cut
STREAM_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CAPTURE_LIMIT = 1 << 20
_PHASE_WORDS = {"headers": "response headers", "content": "first content event", "body": "complete response body"}


def timeout_error(phase: str, seconds: float) -> UpstreamError:
    """The timeout of one phase of an attempt, naming the deadline that applied."""
    return UpstreamError(ErrorKind.TIMEOUT, Reason.TIMEOUT, f"no {_PHASE_WORDS[phase]} within {seconds:.3g} s")


def note_failure(attempt: Attempt, error: UpstreamError, connection: Connection) -> None:
    """The attempt learns its outcome; the error's message loses any key the upstream echoed, since it
    may end up in the client's answer (`verdict`)."""
    error.message = scrub(error.message.encode(), connection).decode()
    attempt.reason = error.reason
    attempt.detail = error.message
    attempt.status = error.status or attempt.status


def capture(buffer: bytearray | None, data: bytes) -> None:
    """With `logging.bodies: true` the record holds what the client was sent (bounded)."""
    if buffer is not None and len(buffer) < CAPTURE_LIMIT:
        buffer += data[: CAPTURE_LIMIT - len(buffer)]


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


async def until_content(reader: EventReader, stream: StreamRelay, held: list[bytes]) -> None:
    """Read and hold until the first event that carries content (the commit point); the events that
    arrived with it are held too, from then on as `relay_rest` takes them. Raises UpstreamError for a
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


async def run(
    exchange: Exchange, candidate: Candidate, call: UpstreamCall, key: str | None, attempt: Attempt
) -> web.StreamResponse:
    """One connection, until its answer is committed to the client and written (a stream), or handed
    back to be written (a whole body). Raises UpstreamError for a failure before the commit point."""
    loop = asyncio.get_running_loop()
    relay, record = exchange.relay, exchange.record
    connection = candidate.connection
    limits = connection.timeout
    caps = exchange.router.config.limits  # what this answer may make the gateway hold
    sent = loop.time()
    attempt_end = sent + limits.total
    commit_by = min(sent + limits.first_byte, exchange.deadline, attempt_end)
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
            upstream = await exchange.open(connection, "POST", call, key)
            attempt.status = upstream.status
            event_stream = is_event_stream(upstream)
            streaming = relay.stream and event_stream
            whole_body = relay.stream and not event_stream  # an upstream that ignored `stream: true`
            if whole_body:
                phase = "body"
                whole = await read_body(upstream, limits.idle, caps.max_upstream_body_bytes)
                converted, usage = relay.stream_body(candidate, whole)
                held.append(converted)
            elif streaming:
                phase = "content"
                stream = relay.stream_relay(candidate)
                reader = EventReader(upstream, caps.max_event_bytes, caps.max_held_bytes)
                await until_content(reader, stream, held)
            else:
                phase = "body"
                attempt.ttfb = loop.time() - sent
                deadline = attempt_end
                watchdog.extend(deadline)
                body = await read_body(upstream, limits.idle, caps.max_upstream_body_bytes)
        except asyncio.CancelledError:
            if watchdog.claim():
                raise timeout_error(phase, deadline - sent) from None
            raise
        finally:
            watchdog.close()
        if not relay.stream:  # an unusable 200 still falls back
            payload, usage = relay.response_body(candidate, body, event_stream)

        # Committed: from here on the client sees this connection's answer.
        committed_at = loop.time()
        await exchange.states.record(connection.name, Reason.OK, committed_at)
        attempt.waited = committed_at - sent
        record.connection = connection.name
        exchange.served = candidate
        if not relay.stream:
            record.usage = usage
            capture(record.response_body, payload)
            headers = relayable_headers(upstream.headers)
            headers["Content-Type"] = "application/json"
            if usage is not None and usage.estimated:
                headers["x-gateway-usage"] = "estimated"
            exchange.end()
            return web.Response(status=upstream.status, body=payload, headers=headers)
        attempt.ttfb = committed_at - sent
        record.ttfb = committed_at - record.started
        response = web.StreamResponse(headers=STREAM_HEADERS | record.headers())
        await response.prepare(exchange.request)
        first = b"".join(held)
        if whole_body:
            record.usage = usage
            exchange.end()
        try:
            await response.write(first)
        except ConnectionResetError:
            record.client_disconnected = True
            return response
        capture(record.response_body, first)
        if whole_body:
            return response
        stream_end = min(attempt_end, committed_at + exchange.max_stream_seconds)
        await relay_rest(exchange, response, reader, stream, attempt, connection, stream_end)
        record.usage = stream.usage  # (also when the client left mid-stream: what it was sent)
        return response
    finally:
        attempt.duration = loop.time() - sent
        if committed_at is None:
            attempt.waited = attempt.duration
        if upstream is not None:
            upstream.close()


async def relay_rest(
    exchange: Exchange,
    response: web.StreamResponse,
    reader: EventReader,
    stream: StreamRelay,
    attempt: Attempt,
    connection: Connection,
    stream_end: float,
) -> None:
    """After commit: everything one upstream read brings goes out in one write; a failure ends the
    stream with an error event in the client's format. The stream ends by `stream_end` (the attempt's
    `total`, `limits.max_stream_seconds`), however slowly the client reads. The answer ends (the
    exchange's end hook) before its last bytes are written."""
    loop = asyncio.get_running_loop()
    record = exchange.record
    idle = connection.timeout.idle
    buffer = record.response_body
    watchdog = Watchdog(idle, stream_end)
    started = loop.time()
    try:
        while True:
            waiting_since = loop.time()
            batch = await reader.read()
            now = watchdog.progress = loop.time()
            attempt.waited += now - waiting_since
            if batch is None:
                out = stream.end()
                _ended(exchange, stream)
            else:
                out = stream.relay(batch)
            if out:
                watchdog.writing = True  # a slow client is not an idle upstream
                await response.write(out)
                watchdog.writing = False
                watchdog.progress = loop.time()
                if buffer is not None:
                    capture(buffer, out)
            if batch is None:
                return
    except asyncio.CancelledError:
        if not watchdog.claim():
            raise
        if watchdog.writing:  # the client stopped reading: it cannot hold the stream open any longer
            record.client_disconnected = True
            _cut(exchange.request)
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
        _ended(exchange, stream)
        try:
            await response.write(trailing)
        except ConnectionResetError:
            record.client_disconnected = True
        return
    note_failure(attempt, failure, connection)
    record.failed_after_commit = True
    _ended(exchange, stream)
    try:
        async with asyncio.timeout(ERROR_WRITE_SECONDS):
            await response.write(scrub(stream.error(failure, connection.name), connection))
    except (ConnectionResetError, TimeoutError):
        record.client_disconnected = True
        _cut(exchange.request)


def _ended(exchange: Exchange, stream: StreamRelay) -> None:
    """The stream's answer is complete (or failed): its usage is known, the end hook may fire."""
    exchange.record.usage = stream.usage
    exchange.end()


def _cut(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
