"""The upstream side: one shared client session, building and sending requests, classifying failures.

Nothing here knows about fallback; everything that goes wrong leaves as an `UpstreamError` with a
kind and a reason, and with a message that holds no key and no URL.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable, Mapping
from urllib.parse import quote

import aiohttp
from yarl import URL

from .config.model import Connection, LimitsConfig
from .errors import ErrorKind, Reason, UpstreamError, classify_status, parse_retry_after, too_large
from .presets import auth_headers
from .sse import SSEEvent, SSEParser

# Client headers worth passing upstream; everything else (credentials, OpenAI-Organization /
# -Project, cookies, hop-by-hop headers, Accept-Encoding) stays behind.
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "user-agent", "x-request-id")
# Upstream response headers never relayed: hop-by-hop, and framing that aiohttp recomputes
# (bodies arrive decompressed, so their Content-Encoding / Content-Length no longer apply).
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-encoding",
        "content-length",
        "set-cookie",
        "date",
        "server",
    }
)
ERROR_BODY_LIMIT = 64 * 1024
DEFAULT_LIMITS = LimitsConfig()  # for the gateway's own reads (model listings, connection tests)


# What may stand unquoted in a path segment (RFC 3986 pchar); everything else is percent-encoded.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"


@functools.lru_cache(maxsize=1024)
def join_url(base_url: str, path: str) -> URL:
    """The connection's base URL (prefixes such as `/openai/v1` kept) with `path` below it: each
    segment percent-quoted, so nothing in it (a model name, a passthrough path) can leave the base
    path or add a query; a query the gateway itself adds (`?alt=sse`) follows the first `?`. Built
    encoded, so yarl does not resolve it again. Raises UpstreamError(unsupported) for a dot segment.
    (Cached: a handful of paths serve almost every request.)"""
    path, _, query = path.partition("?")
    segments = path.strip("/").split("/")
    if any(segment in (".", "..") for segment in segments):
        raise UpstreamError(ErrorKind.PROTOCOL, Reason.UNSUPPORTED, "a path with a dot segment cannot be sent upstream")
    encoded = "/".join(quote(segment, safe=_SEGMENT_SAFE) for segment in segments)
    url = base_url.rstrip("/") + "/" + encoded
    return URL(f"{url}?{query}" if query else url, encoded=True)


def upstream_headers(
    connection: Connection,
    client_headers: Mapping[str, str],
    request_id: str,
    key: str | None,
    forwarded: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Allow-listed client headers and those the connection's dialect forwards (`forwarded`), the
    connection's own headers, then its credentials (which win)."""
    headers = {h: client_headers[h] for h in FORWARDED_REQUEST_HEADERS if h in client_headers}
    if forwarded:
        headers.update(forwarded)
    headers["x-request-id"] = request_id
    headers.update(connection.headers)
    headers.update(auth_headers(connection.auth, key))
    return headers


def scrub(data: bytes, connection: Connection) -> bytes:
    """An upstream may echo the key it was sent; it must never reach a client or a log."""
    for key in connection.api_keys:
        if data.find(key.encode()) >= 0:  # (not `in`: see the note at the end of sse.py)
            data = data.replace(key.encode(), b"[redacted]")
    return data


def scrub_text(text: str, connection: Connection) -> str:
    return scrub(text.encode(), connection).decode()


def relayable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in DROPPED_RESPONSE_HEADERS}


def is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return response.content_type == "text/event-stream"


class Transport:
    """Owns the single upstream ClientSession for the life of the process."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}  # per connect value: reused, not rebuilt

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, family=socket.AF_UNSPEC)
        # trust_env=False: a sidecar's HTTPS_PROXY may point at this gateway; never loop through it.
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), trust_env=False, auto_decompress=True
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(
        self,
        connection: Connection,
        method: str,
        path: str,
        body: bytes | None,
        *,
        key: str | None,
        connect_timeout: float,
        headers: Mapping[str, str] | None = None,
        client_headers: Mapping[str, str] | None = None,
        forwarded: Mapping[str, str] | None = None,
        request_id: str = "gateway",
    ) -> aiohttp.ClientResponse:
        """Send one request to a connection and wait for its headers (the caller bounds the wait: the
        first-byte deadline); a non-2xx raises its UpstreamError."""
        assert self._session is not None, "transport not started"
        all_headers = upstream_headers(connection, client_headers or {}, request_id, key, forwarded)
        all_headers.update(headers or {})
        try:
            response = await self._session.request(
                method,
                join_url(connection.base_url or "", path),
                headers=all_headers,
                data=body,
                timeout=self._timeout(connect_timeout),
                allow_redirects=False,
                skip_auto_headers=("Content-Type",) if body is None else (),
            )
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamError(
                ErrorKind.TIMEOUT, Reason.TIMEOUT, f"connect timed out after {connect_timeout:g} s"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(
                ErrorKind.CONNECT, Reason.CONNECT_ERROR, f"cannot connect ({_os_reason(exc)})"
            ) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise UpstreamError(
                ErrorKind.CONNECT, Reason.CONNECT_ERROR, f"connection lost before the response ({type(exc).__name__})"
            ) from None
        except aiohttp.ClientResponseError as exc:  # malformed status line or headers
            raise UpstreamError(ErrorKind.PROTOCOL, Reason.BAD_RESPONSE, f"malformed response ({exc.status})") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                ErrorKind.PROTOCOL, Reason.BAD_RESPONSE, f"request failed ({type(exc).__name__})"
            ) from None
        if response.status >= 400:
            raise await http_error(response)
        return response

    async def fetch(
        self,
        connection: Connection,
        method: str,
        path: str,
        *,
        key: str | None,
        timeout: float,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        request_id: str = "gateway",
    ) -> bytes:
        """One whole request to a connection on the gateway's own account (a model listing, a connection
        test), bounded by `timeout` from sending to the last byte; a non-2xx raises its UpstreamError."""
        try:
            async with asyncio.timeout(timeout):
                connect_timeout = min(connection.timeout.connect, timeout)
                response = await self.open(
                    connection, method, path, body, key=key, connect_timeout=connect_timeout, headers=headers,
                    request_id=request_id,
                )  # fmt: skip
                try:
                    return await read_body(response, connection.timeout.idle)
                finally:
                    response.close()
        except TimeoutError:
            raise UpstreamError(ErrorKind.TIMEOUT, Reason.TIMEOUT, f"no complete answer within {timeout:g} s") from None

    def _timeout(self, connect: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(connect)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect)
            if len(self._timeouts) < 64:  # the configured values; deadline-capped ones are one-offs
                self._timeouts[connect] = timeout
        return timeout


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    err = exc.os_error
    return (err.strerror or type(err).__name__).lower() if err is not None else "unreachable"


async def http_error(response: aiohttp.ClientResponse) -> UpstreamError:
    """Turn a non-2xx response into an error value, keeping its body for a client-facing 4xx."""
    try:
        body = await response.content.read(ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, asyncio.IncompleteReadError):
        body = b""
    finally:
        response.release()
    reason = classify_status(response.status, body)
    return UpstreamError(
        ErrorKind.HTTP_STATUS,
        reason,
        f"HTTP {response.status}",
        status=response.status,
        body=body,
        content_type=response.headers.get("content-type"),
        retry_after=parse_retry_after(response.headers),
    )


def _body_error(exc: aiohttp.ClientError, where: str) -> UpstreamError:
    """A failure while reading an answer whose headers already arrived."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(ErrorKind.PROTOCOL, Reason.BAD_RESPONSE, f"{where} cut short")
    return UpstreamError(
        ErrorKind.CONNECT, Reason.SERVER_ERROR, f"connection lost in the {where} ({type(exc).__name__})"
    )


async def read_body(
    response: aiohttp.ClientResponse, idle: float, limit: int = DEFAULT_LIMITS.max_upstream_body_bytes
) -> bytes:
    """The whole body, decompressed. Raises UpstreamError: timeout for a gap of `idle` seconds between
    two reads (the caller bounds the total), bad_response (too_large) past `limit` bytes."""
    content = response.content
    chunks = []
    size = 0
    try:
        while True:
            # Counted as aiohttp hands the bytes out, after decompression, which it does as it is
            # read (a bounded amount per network read): a gzip bomb stops growing at `limit`.
            if content.is_eof():  # the rest is here already (small bodies arrive with their headers)
                chunk = content.read_nowait()
                if size + len(chunk) > limit:
                    break
                chunks.append(chunk)
                return b"".join(chunks)
            async with asyncio.timeout(idle):
                chunk = await content.readany()
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                break
            chunks.append(chunk)
    except TimeoutError:
        raise UpstreamError(ErrorKind.TIMEOUT, Reason.TIMEOUT, f"response body idle for {idle:g} s") from None
    except aiohttp.ClientError as exc:
        raise _body_error(exc, "body") from None
    raise too_large("response body", limit, "max_upstream_body_bytes")


class EventReader:
    """The SSE events each network read completes. Whole reads, not single events, so a relay can
    turn everything that arrived together into one write to its client.

    Before the commit point a plain read (`SSEParser.plain`) is taken one event at a time, the rest
    kept unparsed: when the commit comes, what follows it in that read can pass as it came.

    Bounded: one event at most `max_event` bytes, and what arrives before the commit point (held
    until it, or dropped: role-only chunks, comments, empty events) at most `max_held` bytes."""

    __slots__ = ("_committed", "_content", "_done", "_held", "_max_held", "_parser", "_pending", "_verbatim")

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        max_event: int = DEFAULT_LIMITS.max_event_bytes,
        max_held: int = DEFAULT_LIMITS.max_held_bytes,
    ) -> None:
        self._content = response.content
        self._parser = SSEParser(max_event)
        self._done = False
        self._committed = False
        self._verbatim: Callable[[bytes], int] | None = None  # see `commit`
        self._pending = b""  # before the commit point: the unparsed rest of a plain read
        self._held = 0  # the bytes read before the commit point
        self._max_held = max_held

    async def read(self) -> list[SSEEvent | bytes] | None:
        """The next read's events (possibly none yet), past the commit point with the leading run of
        them that `verbatim` passes as the bytes they came in; None once the stream has ended. Raises
        UpstreamError: for a failed read, and bad_response (too_large) past a cap."""
        if self._pending:
            return self._next_pending()
        if self._done:
            return None
        try:
            chunk = await self._content.readany()
        except aiohttp.ClientError as exc:
            raise _body_error(exc, "stream") from None
        if not chunk:
            self._done = True
            return self._parser.close()
        if not self._committed:
            self._held += len(chunk)
            if self._held > self._max_held:
                raise too_large("stream before its first content", self._max_held, "max_held_bytes")
            if self._parser.plain(chunk):
                self._pending = chunk
                return self._next_pending()
        elif self._verbatim is not None and self._parser.plain(chunk):
            return self._passed(chunk)
        return self._parser.feed(chunk)

    def _next_pending(self) -> list[SSEEvent | bytes]:
        """The first event of the pending plain read (or, if it is not a single `data:` line, all of them)."""
        chunk = self._pending
        end = chunk.find(b"\n\n")  # a plain read ends with a blank line
        block = chunk[:end]
        if block.startswith(b"data: ") and block.find(b"\n") < 0:
            self._pending = chunk[end + 2 :]
            return [SSEEvent(block[6:])]
        self._pending = b""
        return self._parser.feed(chunk)

    def _passed(self, chunk: bytes) -> list[SSEEvent | bytes]:
        """A plain read past the commit point: its leading content as it came, the rest parsed."""
        assert self._verbatim is not None
        length = self._verbatim(chunk)
        if length == len(chunk):
            return [chunk]
        if length:
            return [chunk[:length], *self._parser.feed(chunk[length:])]
        return self._parser.feed(chunk)

    def commit(self, verbatim: Callable[[bytes], int] | None) -> list[SSEEvent | bytes]:
        """The commit point has come. From now on `verbatim` (`StreamRelay.content_prefix`) may pass
        runs of plain events through unparsed; returns the rest of the read the commit came in, as
        `read` would give it now."""
        self._committed, self._verbatim = True, verbatim
        pending, self._pending = self._pending, b""
        if not pending:
            return []
        return self._passed(pending) if verbatim is not None else self._parser.feed(pending)
