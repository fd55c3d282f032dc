"""Observe mode: intercepted requests go unchanged to the real host, and the gateway records them.

`Observer` is the request handler behind each observed host's small aiohttp server (the listener,
`listener.py`, hands it the decrypted connections); `_CheckedResolver` makes its client session
connect only where `Targets` allows.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import aiohttp
import orjson
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .. import handlers, paths
from ..ca import system_bundle
from ..config.model import Config
from ..errors import GatewayError, Reason, classify_status
from ..record import Attempt, RequestRecord
from ..routing.passthrough import pump
from ..runtime import Gateway
from .targets import CONNECT_TIMEOUT, PrivateAddress, Targets

OBSERVE_ROUTE = "observe"
# Headers that belong to one hop: never passed on by the proxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# aiohttp adds these to a request when absent; observe mode sends only what the client sent.
AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class _CheckedResolver(AbstractResolver):
    """aiohttp's resolver for observe mode: `Targets` decides; the host name stays the real one, so
    TLS verifies the real host's certificate."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """`Targets.resolve`'s addresses (whatever `family` asks), each under the real host name.

        Raises what `Targets.resolve` raises: `PrivateAddress`, `OSError`.
        """
        return [
            ResolveResult(hostname=host, host=address, port=target_port, family=fam, proto=0, flags=0)
            for fam, address, target_port in await self.targets.resolve(host, port)
        ]

    async def close(self) -> None:
        return None


class Observer:
    """Observe mode: each decrypted request goes unchanged (the client's own credentials included) to
    the real host, verified against the system trust store or `proxy.upstream_ca_file`; the gateway
    records metrics and the log line, labelled with the configured host name."""

    def __init__(self, config: Config, gateway: Gateway, targets: Targets) -> None:
        self.config = config
        self.gateway = gateway
        cafile = config.proxy.upstream_ca_file
        if cafile is None:
            system = system_bundle()
            cafile = str(system) if system is not None else None
        context = ssl.create_default_context(cafile=cafile)
        connector = aiohttp.TCPConnector(resolver=_CheckedResolver(targets), ssl=context, limit=0)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)

    async def close(self) -> None:
        await self.session.close()

    async def handle(self, host: str, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one decrypted request for `host` from the real host, between the record's begin and
        finish; return the response (sent already). A `GatewayError` becomes the error answer for the
        client's API; a cancellation (the client left) is marked on the record and raised again."""
        loop = asyncio.get_running_loop()
        record = RequestRecord(
            request_id=handlers.request_id(request),
            route=OBSERVE_ROUTE,
            client_api=handlers.client_api_for(request, OBSERVE_ROUTE),
            started=loop.time(),
        )
        self.gateway.begin(record)
        response: web.StreamResponse | None = None
        try:
            response = await self._forward(host, request, record)
        except GatewayError as err:
            response = handlers.error_response(record.client_api, err)
        except asyncio.CancelledError:
            record.client_disconnected = True
            raise
        finally:
            self.gateway.finish(record, response)
        return response

    async def _forward(self, host: str, request: web.BaseRequest, record: RequestRecord) -> web.StreamResponse:
        """Send the request to `host` and stream the answer back; return the prepared response.

        Raises `GatewayError`: 413 for a body over the limit, `_upstream_failure`'s error when no answer
        came from `host`. An answer cut short closes the client connection instead.
        """
        body = await self._body(request)
        if body:
            _note_request(record, body)
        authority = f"[{host}]" if ":" in host else host
        # The same path rules as the reverse proxy's (`paths.canonical`): merged slashes, no dot segment.
        path = paths.canonical(request.raw_path, request.method) or request.raw_path.partition("?")[0]
        query = f"?{request.query_string}" if request.query_string else ""
        url = URL(f"https://{authority}{path}{query}", encoded=True)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}]
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]  # aiohttp frames the body
        loop = asyncio.get_running_loop()
        sent = loop.time()
        attempt = Attempt(connection=host, reason=Reason.OK)
        record.attempts.append(attempt)
        try:
            upstream = await self.session.request(
                request.method,
                url,
                headers=headers,
                data=body if body or request.body_exists else None,
                allow_redirects=False,
                skip_auto_headers=AUTO_HEADERS,
                timeout=self.timeout,
            )
        except aiohttp.ClientError as exc:
            attempt.duration = attempt.waited = loop.time() - sent
            raise _upstream_failure(host, exc, attempt) from None
        try:
            attempt.ttfb = loop.time() - sent
            attempt.status = upstream.status
            record.connection = host
            if upstream.status >= 400:
                attempt.reason = classify_status(upstream.status, b"")
            headers = [(name, value) for name, value in upstream.headers.items() if name.lower() not in HOP_BY_HOP]
            return await pump(request, upstream, headers, record, attempt, idle=None)
        finally:
            attempt.duration = attempt.waited = loop.time() - sent
            upstream.release()

    async def _body(self, request: web.BaseRequest) -> bytes:
        """The whole request body; raises `GatewayError` 413 once it is over `server.max_body_bytes`."""
        limit = self.config.server.max_body_bytes
        too_large = GatewayError(413, f"Request body is larger than the limit of {limit} bytes.")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)


def _note_request(record: RequestRecord, body: bytes) -> None:
    """The model and stream flag for the log line, when the body says them."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if isinstance(parsed, dict):
        if isinstance(parsed.get("model"), str):
            record.model = parsed["model"][:200]
        record.stream = parsed.get("stream") is True


def _upstream_failure(host: str, exc: aiohttp.ClientError, attempt: Attempt) -> GatewayError:
    """The error for the client when no answer came from `host` (returned for the caller to raise);
    the attempt gets the matching reason and detail."""
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else None
    if isinstance(cause, PrivateAddress):
        attempt.reason, attempt.detail = Reason.CONNECT_ERROR, "private address refused"
        return GatewayError(403, str(cause), code="private_address")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        attempt.reason, attempt.detail = Reason.CONNECT_ERROR, "TLS verification failed"
        return GatewayError(
            502,
            f"The certificate of {host} did not verify against the trust store "
            "(proxy.upstream_ca_file sets another one).",
            code="upstream_tls_error",
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        attempt.reason, attempt.detail = Reason.TIMEOUT, "connect timed out"
        return GatewayError(504, f"Connecting to {host} timed out after {CONNECT_TIMEOUT:g} s.", code="timeout")
    attempt.reason, attempt.detail = Reason.CONNECT_ERROR, type(exc).__name__
    return GatewayError(502, f"Cannot reach {host} ({type(exc).__name__}).", code="upstream_unreachable")
