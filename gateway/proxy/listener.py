"""The proxy listener: reads each client connection's request head and decides what it becomes.

- `CONNECT host:443` to an intercepted host: answer 200, terminate TLS with a certificate for that host
  signed by the gateway CA (`gateway/ca.py`), then hand the decrypted connection to an aiohttp request
  handler: the runner's own server in `managed` mode, the host's `Observer` server in `observe` mode.
- `CONNECT host:port` listed under `proxy.tunnel`: a blind byte relay to the address `Targets` checked.
- A plain-HTTP absolute-URI request to an intercepted host: the head is rewritten to origin form with
  `Connection: close` and the connection handed over the same way.
- Anything else: 403. Missing or wrong proxy credentials: 407. Every refusal is an HTTP response
  (`Refusal`), counted in `gateway_proxy_connections` by mode and outcome.
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
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client.core import CounterMetricFamily

from ..ca import CAError, CertificateAuthority
from ..config.model import HOST_RE, Config
from ..metrics import Counter
from ..runtime import GATEWAY
from ..server import ConnectionCap, GuardedHandler, guarded
from .observe import HOP_BY_HOP, Observer
from .targets import PrivateAddress, Targets

log = logging.getLogger("gateway.proxy")  # the name operators filter on, kept from the single module

HEAD_LIMIT = 64 * 1024  # request line and headers (limits.header_timeout is the time to send them)
HANDSHAKE_TIMEOUT = 10.0  # TLS with the proxy client
CONNECTION_ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
PROXY_AUTHENTICATE = 'Basic realm="ai-gateway", charset="UTF-8"'


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


class _Collector:
    """Hands the proxy's counter to the gateway's Prometheus registry."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield self.counter.family()


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
        self.cap = ConnectionCap("proxy.max_connections", config.proxy.max_connections)
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
        """Load (or create) the CA, start the observe servers, listen.

        Raises `ProxyStartError` when the CA cannot be loaded or created, or the address is not free.
        """
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
                    functools.partial(self.observer.handle, host), handler_cancellation=True
                )
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: self.cap.admit(functools.partial(ProxyProtocol, self)),
                self.settings.host,
                self.settings.port,
                reuse_address=True,
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
        """Close the listener, abort connections still its own, drain the observe servers."""
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
        """What a CONNECT to `host:port` becomes: the intercept mode (`managed`, `observe`), `tunnel`,
        or None when the proxy does neither."""
        if port == 443 and host in self.settings.intercept:
            return self.settings.intercept[host]
        if (host, port) in self.settings.tunnel:
            return "tunnel"
        return None

    def handler_for(self, host: str, mode: str) -> Callable[..., GuardedHandler]:
        """The factory of the request handler (with the client-side bounds) that takes an intercepted
        connection for `host`: the observe server's, or the runner's.

        Raises `Refusal` 503 when the runner's server is gone (the gateway is shutting down).
        """
        server = self.observe_servers[host] if mode == "observe" else self._runner.server
        if server is None:
            raise Refusal(503, "The gateway is shutting down.", "closed")
        return guarded(server, self.config)  # type: ignore[arg-type]

    def authorized(self, headers: list[tuple[str, str]]) -> bool:
        """True when no proxy secret is configured, or `Proxy-Authorization` carries one (as the
        password of Basic, or as Bearer)."""
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

    def __init__(self, site: ProxySite, release: Callable[[], None]) -> None:
        self.site = site
        self._release: Callable[[], None] | None = release  # the connection cap's: once, when it ends
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
        timeout = self.site.config.limits.header_timeout
        self.timer = asyncio.get_running_loop().call_later(timeout, self._head_timeout)

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
        if self.state == "handed_over":  # the request handler releases the connection
            return
        self.release()
        if self.state == "closed":
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
        """Turn the connection into what its head asks for, or answer with the refusal; never raises
        (a cancellation aside)."""
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
        """CONNECT: a tunnel or an interception. Raises `Refusal` 400 for a target that is not host:port,
        403 for one neither intercepted nor tunnelled, and what `_tunnel` and `_intercept` raise."""
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
        """Connect to the real host and relay bytes; raises `Refusal` when it cannot be reached
        (403 private address, 504 timeout, 502 otherwise)."""
        try:
            transport, _ = await self.site.targets.connect(host, port, lambda: _TunnelEnd(self))
        except PrivateAddress as exc:
            raise Refusal(403, str(exc), "private_address") from None
        except TimeoutError as exc:
            raise Refusal(504, str(exc), "connect_error") from None
        except OSError as exc:  # the host does not resolve, or no address answered
            raise Refusal(502, str(exc), "connect_error") from None
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
        """Terminate TLS and hand the connection to the request handler. Raises `Refusal` 400 when data
        came before the 200, 503 when shutting down; a failed handshake is counted and logged only."""
        if rest:
            raise Refusal(400, "Send the TLS handshake after the 200 answer to CONNECT, not before.", "bad_request")
        assert self.site.ca is not None and self.transport is not None
        context = self.site.ca.server_context(host)
        make_handler = self.site.handler_for(host, mode)
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
            self.release()
            return
        if tls is None or pending.lost or tls.is_closing():
            self.release()
            return
        handler = make_handler(self.release)
        tls.set_protocol(handler)
        handler.connection_made(tls)
        if pending.data:
            handler.data_received(bytes(pending.data))
        if pending.eof:
            handler.eof_received()
        self.site.count(mode, "ok")

    def _plain(self, method: str, target: str, version: str, headers: list[tuple[str, str]], rest: bytes) -> None:
        """A plain-HTTP proxy request: rewritten to origin form and handed to the request handler.

        Raises `Refusal`: 400 for an origin-form or non-http target or one without a valid host, 403 for
        a host not intercepted, 503 when shutting down.
        """
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
        make_handler = self.site.handler_for(host, mode)
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
        handler = make_handler(self.release)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(new_head.encode("latin-1") + rest)
        transport.resume_reading()
        self.site.count(mode, "ok")

    # --- endings ----------------------------------------------------------------------------------

    def release(self) -> None:
        """Count the connection out of `proxy.max_connections` (once; later calls do nothing)."""
        if self._release is not None:
            self._release()
            self._release = None

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


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(method, target, version, headers) of a request head without its final blank line; raises
    `Refusal` 400 for a malformed request line or header line."""
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
