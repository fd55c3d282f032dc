"""Other `/v1/*` paths (files, batches, uploads, ...): as-is to one connection, once, streamed through
as bytes. `pump` is also how the HTTPS proxy's observe mode relays a real host's answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web

from ..config.model import Config
from ..contracts import Dialect, UpstreamCall
from ..errors import ErrorKind, GatewayError, Reason, UpstreamError
from ..record import Attempt, RequestRecord
from ..transport import relayable_headers
from .attempt import note_failure, timeout_error
from .engine import Router
from .plan import no_connection_message
from .policy import verdict


async def forward(
    router: Router, request: web.Request, record: RequestRecord, path: str, body: bytes
) -> web.StreamResponse:
    """Any other `/v1/*` request: as-is to the first enabled OpenAI-dialect connection, once. Files,
    batches and uploads are not idempotent, so there is no retry and no fallback. Raises
    GatewayError when no connection is enabled or the upstream could not be reached."""
    config: Config = router.config
    connection = next((c for c in config.connections if c.enabled and c.dialect is Dialect.OPENAI), None)
    if connection is None:
        raise GatewayError(503, no_connection_message(config), code="no_connection")
    loop = asyncio.get_running_loop()
    limits = connection.timeout
    chain_deadline = record.started + config.server.deadline
    attempt = Attempt(connection.name, Reason.OK)
    record.attempts.append(attempt)
    sent = loop.time()
    # The client's query re-encoded from its parsed parameters (`?purpose=`, `?after=`): nothing in it
    # can end the query or start a fragment.
    query = urlencode(list(request.query.items()), quote_via=quote)
    call = UpstreamCall(f"{path}?{query}" if query else path, body, {})
    try:
        try:
            async with asyncio.timeout_at(min(sent + limits.first_byte, chain_deadline)):
                key = router.states.pick_key(connection.name, loop.time(), set())
                upstream = await router.open(request, record, connection, request.method, call, key, chain_deadline)
        except TimeoutError:
            raise timeout_error("headers", limits.first_byte) from None
    except UpstreamError as err:
        attempt.duration = attempt.waited = loop.time() - sent
        note_failure(attempt, err, connection)
        if err.kind is not ErrorKind.HTTP_STATUS:
            raise verdict(path, [(connection.name, err)], []) from None
        record.connection = connection.name
        return router.as_is(err, connection, record.client_api)
    try:
        attempt.status = upstream.status
        attempt.ttfb = attempt.waited = loop.time() - sent
        record.connection = connection.name
        headers = relayable_headers(upstream.headers) | record.headers()
        return await pump(request, upstream, headers.items(), record, attempt, limits.idle)
    finally:
        attempt.duration = loop.time() - sent
        upstream.close()


async def pump(
    request: web.BaseRequest,
    upstream: aiohttp.ClientResponse,
    headers: Iterable[tuple[str, str]],
    record: RequestRecord,
    attempt: Attempt,
    idle: float | None,
) -> web.StreamResponse:
    """An upstream's answer to the client as the bytes it came in, with `headers`; a gap of `idle`
    seconds between two reads ends it. Once the headers are out a failure can only cut the
    connection: the client must not take a cut answer for a whole one."""
    loop = asyncio.get_running_loop()
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for name, value in headers:
        response.headers.add(name, value)
    await response.prepare(request)
    record.ttfb = loop.time() - record.started
    try:
        while True:
            waiting_since = loop.time()
            async with asyncio.timeout(idle):
                chunk = await upstream.content.readany()
            attempt.waited += loop.time() - waiting_since
            if not chunk:
                break
            await response.write(chunk)
    except (TimeoutError, aiohttp.ClientError) as exc:
        failure = (
            UpstreamError(ErrorKind.TIMEOUT, Reason.TIMEOUT, f"response body idle for {idle:g} s")
            if isinstance(exc, TimeoutError)
            else UpstreamError(ErrorKind.PROTOCOL, Reason.BAD_RESPONSE, "the answer was cut short")
            if isinstance(exc, aiohttp.ClientPayloadError)
            else UpstreamError(ErrorKind.CONNECT, Reason.SERVER_ERROR, f"connection lost ({type(exc).__name__})")
        )
        attempt.reason, attempt.detail = failure.reason, failure.message
        record.failed_after_commit = True
        if request.transport is not None:
            request.transport.close()
        return response
    except ConnectionResetError:
        record.client_disconnected = True
        return response
    await response.write_eof()
    return response
