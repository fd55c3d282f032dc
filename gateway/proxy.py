"""The HTTP(S) proxy listener: apps that hard-code api.openai.com reach the gateway with `HTTPS_PROXY`.

One connection at a time, the listener reads the request head and decides:

- `CONNECT host:443` to an intercepted host: answer 200, terminate TLS with a certificate for that host
  signed by the gateway CA (`gateway/ca.py`), then hand the decrypted connection to an aiohttp request
  handler. In `managed` mode that handler comes from the runner's own server, so the requests take the
  one request path of the reverse proxy (middleware, auth, routing, fallback, translation, metrics,
  log line). In `observe` mode it comes from a small server per host (`Observer`) that forwards each
  request unchanged to the real host and records it.
- `CONNECT host:port` listed under `proxy.tunnel`: a blind byte relay.
- A plain-HTTP absolute-URI request (`POST http://api.openai.com/v1/...`) to an intercepted host: the
  head is rewritten to origin form with `Connection: close` and the connection handed over the same way
  (one request per proxy connection, so every request passes the checks below).
- Anything else: 403. Missing or wrong proxy credentials: 407. Every refusal is an HTTP response.

Connections the proxy makes itself (tunnels, observe mode) go through `Targets`: `proxy.host_map`,
then DNS, then the address check (no loopback, link-local or private address unless
`proxy.allow_private`), and connect only to the addresses that were checked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import http
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client.core import CounterMetricFamily
from yarl import URL

from . import handlers
from .ca import CAError, CertificateAuthority, system_bundle
from .config.model import HOST_RE, Config, ProxyConfig
from .errors import GatewayError, Reason, classify_status
from .metrics import Counter
from .record import Attempt, RequestRecord
from .runtime import GATEWAY, Gateway

log = logging.getLogger("gateway.proxy")

HEAD_LIMIT = 64 * 1024  # request line and headers
HEAD_TIMEOUT = 30.0  # seconds to send them
CONNECT_TIMEOUT = 10.0  # to a real host (tunnels, observe mode)
HANDSHAKE_TIMEOUT = 10.0  # TLS with the proxy client
OBSERVE_ROUTE = "observe"
CONNECTION_ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
PROXY_AUTHENTICATE = 'Basic realm="ai-gateway", charset="UTF-8"'
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


class Refusal(Exception):
    """An answer to the proxy client instead of the connection it asked for."""

    def __init__(self, status: int, message: str, outcome: str, headers: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome  # the metric's fixed vocabulary
        self.headers = headers


class ProxyStartError(Exception):
    """The proxy listener cannot start (its CA, its address); the message says why."""


class PrivateAddress(OSError):
    """Every address the target resolves to is one the proxy must not connect to."""


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int] | None:
    """`host:port` / `[v6]:port` -> (lowercase host, port), or None when it is not one."""
    text = authority.strip().lower()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else "x")
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            return None
    host = host.rstrip(".")
    if not port_text:
        if default_port is None:
            return None
        port = default_port
    elif port_text.isdigit() and 0 < int(port_text) <= 65535:
        port = int(port_text)
    else:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOST_RE.match(host):
            return None
    return host, port


class Targets:
    """Where the proxy connects for a real host: host_map, DNS, then the private-address check."""

    def __init__(self, config: ProxyConfig) -> None:
        self.host_map = config.host_map
        self.allow_private = config.allow_private

    async def resolve(self, host: str, port: int) -> list[tuple[socket.AddressFamily, str, int]]:
        target, mapped_port = self.host_map.get(host, (host, None))
        port = mapped_port or port
        try:
            ip = ipaddress.ip_address(target)
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            found = [(family, str(ip), port)]
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(target, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            except socket.gaierror as exc:
                raise OSError(f"cannot resolve {host} ({exc.strerror})") from None
            found = [(socket.AddressFamily(info[0]), str(info[4][0]), port) for info in infos]
        allowed = list(dict.fromkeys(a for a in found if self.allow_private or _public(a[1])))
        if not allowed:
            raise PrivateAddress(
                f"{host} resolves only to loopback, link-local or private addresses, which this proxy does not "
                "connect to (proxy.allow_private: true allows them)"
            )
        return allowed

    async def connect(self, host: str, port: int, factory: Any) -> tuple[asyncio.Transport, Any]:
        """Connect to the first checked address that answers; refusals as `Refusal`."""
        try:
            addresses = await self.resolve(host, port)
        except PrivateAddress as exc:
            raise Refusal(403, str(exc), "private_address") from None
        except OSError as exc:
            raise Refusal(502, str(exc), "connect_error") from None
        loop = asyncio.get_running_loop()
        failure = "no address answered"
        for family, address, target_port in addresses:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    return await loop.create_connection(factory, address, target_port, family=family)
            except TimeoutError:
                failure = f"connect timed out after {CONNECT_TIMEOUT:g} s"
            except OSError as exc:
                failure = (exc.strerror or type(exc).__name__).lower()
        status = 504 if "timed out" in failure else 502
        raise Refusal(status, f"cannot connect to {host}:{port} ({failure})", "connect_error")


class _CheckedResolver(AbstractResolver):
    """aiohttp's resolver for observe mode: `Targets` decides; the host name stays the real one, so
    TLS verifies the real host's certificate."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=address, port=target_port, family=fam, proto=0, flags=0)
            for fam, address, target_port in await self.targets.resolve(host, port)
        ]

    async def close(self) -> None:
        return None


class _Collector:
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield self.counter.family()


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
        body = await self._body(request)
        if body:
            _note_request(record, body)
        authority = f"[{host}]" if ":" in host else host
        url = URL(f"https://{authority}{request.raw_path}", encoded=True)
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
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            record.ttfb = loop.time() - record.started
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except aiohttp.ClientError:
                attempt.reason = Reason.BAD_RESPONSE
                attempt.detail = "the answer was cut short"
                record.failed_after_commit = True
                assert request.transport is not None
                request.transport.close()  # the client must not take a cut answer for a whole one
                return response
            await response.write_eof()
            return response
        finally:
            attempt.duration = attempt.waited = loop.time() - sent
            upstream.release()

    async def _body(self, request: web.BaseRequest) -> bytes:
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


class ProxySite(web.BaseSite):
    """The proxy listener, registered with the gateway's runner: `runner.cleanup()` (and so `drain`)
    stops it with the main listener, and intercepted managed connections belong to the runner's server,
    so they drain like any other."""

    def __init__(self, runner: web.AppRunner, config: Config) -> None:
        super().__init__(runner)
        self.config = config
        self.settings = config.proxy
        self.gateway = runner.app[GATEWAY]
        self.targets = Targets(config.proxy)
        self.ca: CertificateAuthority | None = None
        self.observer: Observer | None = None
        self.observe_servers: dict[str, web.Server] = {}
        self.connections: set[ProxyProtocol] = set()
        self.counter = Counter(
            "gateway_proxy_connections", "Proxy connections and requests, by mode and outcome.", ["mode", "outcome"]
        )
        self._secrets = [secret.encode() for secret in config.proxy.auth]

    @property
    def name(self) -> str:
        return f"http://{self.settings.host}:{self.port} (proxy)"

    @property
    def port(self) -> int:
        if self._server is not None and self._server.sockets:  # type: ignore[attr-defined]
            return self._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.settings.port

    async def start(self) -> None:
        try:
            self.ca, created = CertificateAuthority.load_or_create(self.settings.ca_dir)
        except CAError as exc:
            raise ProxyStartError(str(exc)) from None
        if created:
            log.warning(
                "created the proxy CA %s: clients must trust it (python -m gateway ca export --bundle)",
                self.ca.directory,
            )
        await super().start()
        self.gateway.metrics.registry.register(_Collector(self.counter))
        observed = [host for host, mode in self.settings.intercept.items() if mode == "observe"]
        if observed:
            self.observer = Observer(self.config, self.gateway, self.targets)
            for host in observed:
                self.observe_servers[host] = web.Server(
                    functools.partial(self.observer.handle, host), handler_cancellation=True, access_log=None
                )
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: ProxyProtocol(self), self.settings.host, self.settings.port, reuse_address=True
            )
        except OSError as exc:
            where = f"{self.settings.host}:{self.settings.port}"
            raise ProxyStartError(f"cannot listen on {where} ({exc.strerror}): change proxy.port") from None
        log.info(
            "HTTP proxy on %s:%s intercepting %s; tunnelling %s",
            self.settings.host,
            self.port,
            ", ".join(f"{h} ({m})" for h, m in self.settings.intercept.items()) or "nothing",
            ", ".join(f"{h}:{p}" for h, p in sorted(self.settings.tunnel)) or "nothing",
        )

    async def stop(self) -> None:
        await super().stop()  # the listener closes
        for connection in list(self.connections):  # heads being read, tunnels
            connection.abort()
        for server in self.observe_servers.values():
            server.pre_shutdown()
        timeout = self.config.server.drain_timeout
        await asyncio.gather(*(server.shutdown(timeout) for server in self.observe_servers.values()))
        if self.observer is not None:
            await self.observer.close()

    def mode_for(self, host: str, port: int) -> str | None:
        if port == 443 and host in self.settings.intercept:
            return self.settings.intercept[host]
        if (host, port) in self.settings.tunnel:
            return "tunnel"
        return None

    def server_for(self, host: str, mode: str) -> web.Server:
        if mode == "observe":
            return self.observe_servers[host]
        server = self._runner.server
        if server is None:
            raise Refusal(503, "The gateway is shutting down.", "closed")
        return server  # type: ignore[return-value]

    def authorized(self, headers: list[tuple[str, str]]) -> bool:
        if not self._secrets:
            return True
        value = next((v for k, v in headers if k.lower() == "proxy-authorization"), "")
        scheme, _, credentials = value.strip().partition(" ")
        given: str | None = None
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                given = None
        elif scheme.lower() == "bearer":
            given = credentials.strip()
        if not given:
            return False
        matched = False
        for secret in self._secrets:  # every secret compared: the time taken says nothing about which
            matched |= hmac.compare_digest(secret, given.encode())
        return matched

    def count(self, mode: str, outcome: str) -> None:
        self.counter.add((mode, outcome))


class _Pending(asyncio.Protocol):
    """Holds what arrives between the end of the TLS handshake and the hand-over to the request handler."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class _TunnelEnd(asyncio.Protocol):
    """The real host's side of a blind tunnel."""

    def __init__(self, client: ProxyProtocol) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.received_from_peer(data)

    def eof_received(self) -> bool:
        client = self.client.transport
        if client is not None and not client.is_closing() and client.can_write_eof():
            client.write_eof()
        return True  # the other direction may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.peer_lost()

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None and not self.client.transport.is_closing():
            self.client.transport.resume_reading()


class ProxyProtocol(asyncio.Protocol):
    """One proxy client connection until it is handed over (to TLS and a request handler) or becomes a
    tunnel."""

    def __init__(self, site: ProxySite) -> None:
        self.site = site
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.state = "head"  # head -> dispatch -> tunnel | handed_over | closed
        self.peer: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.target = "-"
        self.mode = "none"
        self.opened = time.monotonic()
        self.sent = self.received = 0

    # --- asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.site.connections.add(self)
        self.timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self._head_timeout)

    def data_received(self, data: bytes) -> None:
        if self.state == "tunnel":
            assert self.peer is not None
            self.sent += len(data)
            self.peer.write(data)
            return
        if self.state != "head":
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > HEAD_LIMIT:
                self._refuse(Refusal(431, "The request head is larger than 64 KiB.", "bad_request"))
            return
        if end > HEAD_LIMIT:
            self._refuse(Refusal(431, "The request head is larger than 64 KiB.", "bad_request"))
            return
        self._cancel_timer()
        assert self.transport is not None
        self.transport.pause_reading()
        head, rest = bytes(self.buffer[:end]), bytes(self.buffer[end + 4 :])
        self.buffer = bytearray()
        self.state = "dispatch"
        self.task = asyncio.get_running_loop().create_task(self._dispatch(head, rest))

    def eof_received(self) -> bool:
        if self.state == "tunnel" and self.peer is not None and not self.peer.is_closing():
            if self.peer.can_write_eof():
                self.peer.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.state in ("handed_over", "closed"):
            return
        if self.state == "tunnel":
            self._log_tunnel()
        self.state = "closed"
        self.site.connections.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.peer is not None:
            self.peer.close()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.is_closing():
            self.peer.resume_reading()

    # --- tunnel plumbing --------------------------------------------------------------------------

    def received_from_peer(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.received += len(data)
            self.transport.write(data)

    def peer_lost(self) -> None:
        if self.transport is not None and self.state == "tunnel":
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self.peer is not None:
            self.peer.abort()

    # --- dispatch ---------------------------------------------------------------------------------

    async def _dispatch(self, head: bytes, rest: bytes) -> None:
        try:
            method, target, version, headers = _parse_head(head)
            if not self.site.authorized(headers):
                raise Refusal(
                    407,
                    "Proxy authentication required: send a proxy secret as the password of "
                    "Proxy-Authorization: Basic (any user name), or as Bearer.",
                    "auth_required",
                    (f"Proxy-Authenticate: {PROXY_AUTHENTICATE}",),
                )
            if method == "CONNECT":
                await self._connect(target, rest)
            else:
                self._plain(method, target, version, headers, rest)
        except Refusal as refusal:
            self._refuse(refusal)
        except Exception:  # an answer for the client, the details for the operator
            log.exception("proxy: internal error")
            self._refuse(Refusal(500, "Internal proxy error.", "error"))

    async def _connect(self, target: str, rest: bytes) -> None:
        parsed = _split_authority(target, None)
        if parsed is None:
            raise Refusal(400, "CONNECT needs host:port.", "bad_request")
        host, port = parsed
        self.target = f"{host}:{port}"
        mode = self.site.mode_for(host, port)
        if mode is None:
            raise Refusal(
                403,
                f"{host}:{port} is neither intercepted nor tunnelled by this proxy (proxy.intercept, proxy.tunnel).",
                "forbidden",
            )
        self.mode = mode
        if mode == "tunnel":
            await self._tunnel(host, port, rest)
        else:
            await self._intercept(host, mode, rest)

    async def _tunnel(self, host: str, port: int, rest: bytes) -> None:
        transport, _ = await self.site.targets.connect(host, port, lambda: _TunnelEnd(self))
        assert self.transport is not None
        if self.state != "dispatch":  # the client left while we connected
            transport.close()
            return
        self.peer = transport
        self.state = "tunnel"
        self.opened = time.monotonic()
        self.transport.write(CONNECTION_ESTABLISHED)
        if rest:
            self.sent += len(rest)
            transport.write(rest)
        self.transport.resume_reading()
        self.site.count("tunnel", "ok")

    async def _intercept(self, host: str, mode: str, rest: bytes) -> None:
        if rest:
            raise Refusal(400, "Send the TLS handshake after the 200 answer to CONNECT, not before.", "bad_request")
        assert self.site.ca is not None and self.transport is not None
        context = self.site.ca.server_context(host)
        server = self.site.server_for(host, mode)
        transport = self.transport
        self._hand_over()
        transport.write(CONNECTION_ESTABLISHED)
        pending = _Pending()
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport, pending, context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self.site.count(mode, "tls_error")
            log.warning(
                "proxy: TLS handshake for %s failed (%s): does the client trust the gateway CA? "
                "(python -m gateway ca export --bundle)",
                host,
                getattr(exc, "reason", None) or type(exc).__name__,
            )
            return
        if tls is None or pending.lost or tls.is_closing():
            return
        handler = server()
        tls.set_protocol(handler)
        handler.connection_made(tls)
        if pending.data:
            handler.data_received(bytes(pending.data))
        if pending.eof:
            handler.eof_received()
        self.site.count(mode, "ok")

    def _plain(self, method: str, target: str, version: str, headers: list[tuple[str, str]], rest: bytes) -> None:
        if target.startswith("/"):
            raise Refusal(
                400,
                "This is the gateway's proxy port: use it as HTTP(S)_PROXY, or send API requests to the server port.",
                "bad_request",
            )
        url = urlsplit(target)
        if url.scheme.lower() != "http":
            raise Refusal(400, f"A proxy request for {url.scheme or 'this'} URL needs CONNECT.", "bad_request")
        parsed = _split_authority(url.netloc.rpartition("@")[2], 80)
        if parsed is None:
            raise Refusal(400, "The request URL has no valid host.", "bad_request")
        host, port = parsed
        self.target = f"{host}:{port}"
        mode = self.site.settings.intercept.get(host) if port == 80 else None
        if mode is None:
            raise Refusal(403, f"Plain HTTP to {host}:{port} is not intercepted by this proxy.", "forbidden")
        self.mode = mode
        server = self.site.server_for(host, mode)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        connection_tokens = {
            token.strip().lower() for k, v in headers if k.lower() == "connection" for token in v.split(",")
        }
        kept = [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP | connection_tokens]
        # One request per proxy connection: the next one comes through this listener again (and its checks).
        new_head = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
        assert self.transport is not None
        transport = self.transport
        self._hand_over()
        handler = server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(new_head.encode("latin-1") + rest)
        transport.resume_reading()
        self.site.count(mode, "ok")

    # --- endings ----------------------------------------------------------------------------------

    def _hand_over(self) -> None:
        """From here on the connection belongs to TLS and a request handler, not to this protocol."""
        self.state = "handed_over"
        self.site.connections.discard(self)

    def _refuse(self, refusal: Refusal) -> None:
        self.site.count(self.mode, refusal.outcome)
        log.info("proxy refused %s with %d: %s", self.target, refusal.status, refusal.message)
        if self.transport is None or self.transport.is_closing():
            return
        body = (refusal.message + "\n").encode()
        phrase = http.HTTPStatus(refusal.status).phrase
        lines = [
            f"HTTP/1.1 {refusal.status} {phrase}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *refusal.headers,
            "",
            "",
        ]
        self.transport.write("\r\n".join(lines).encode("latin-1") + body)
        self.transport.close()
        self.state = "closed"
        self.site.connections.discard(self)

    def _head_timeout(self) -> None:
        if self.state == "head":
            self._refuse(Refusal(408, "The request head did not arrive in time.", "timeout"))

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _log_tunnel(self) -> None:
        log.info(
            "proxy tunnel to %s closed",
            self.target,
            extra={
                "fields": {
                    "target": self.target,
                    "bytes_up": self.sent,
                    "bytes_down": self.received,
                    "duration_ms": round((time.monotonic() - self.opened) * 1000, 3),
                }
            },
        )


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refusal(400, "Malformed request line.", "bad_request")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or line[0] in " \t":
            raise Refusal(400, "Malformed header line.", "bad_request")
        headers.append((name, value.strip()))
    return parts[0], parts[1], parts[2], headers
