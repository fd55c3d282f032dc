"""Test harness: real aiohttp servers on loopback for the upstreams and for the gateway itself."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from gateway.app import start
from gateway.config.model import Config
from gateway.config.sections import parse_config

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CLIENT_KEY = "gw-client-key-123"


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    raw_path: str = ""  # as it came on the request line (path and query, still encoded)

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Upstream:
    """A mock provider: records every request, answers with `handler`."""

    handler: Handler
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Received(request.method, request.path, request.query_string, dict(request.headers), body, request.raw_path)
        )
        try:
            return await self.handler(request)
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected.set()
            raise


@pytest.fixture
async def start_upstream():
    runners: list[web.AppRunner] = []

    async def _start(handler: Handler, prefix: str = "") -> Upstream:
        upstream = Upstream(handler)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", upstream.dispatch)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        upstream.url = f"http://127.0.0.1:{port}{prefix}"
        return upstream

    yield _start
    for runner in runners:
        await runner.cleanup()


@dataclass
class RunningGateway:
    url: str
    config: Config
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """The official SDK pointed at the gateway, without retries (a retry would hide a failure)."""
        kwargs.setdefault("api_key", CLIENT_KEY)
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", max_retries=0, timeout=10, **kwargs)
        self.clients.append(client)
        return client


@pytest.fixture
async def start_gateway(tmp_path):
    runners: list[web.AppRunner] = []
    gateways: list[RunningGateway] = []

    async def _start(config: dict[str, Any]) -> RunningGateway:
        config = {"store": {"path": str(tmp_path / f"responses-{len(runners)}.db")}, **config}
        parsed = parse_config(config, "test.yaml")
        runner = await start(parsed, "127.0.0.1", 0)
        runners.append(runner)
        gateways.append(RunningGateway(f"http://127.0.0.1:{runner.addresses[0][1]}", parsed))
        return gateways[-1]

    yield _start
    for gateway in gateways:
        for client in gateway.clients:
            await client.close()
    for runner in runners:
        await runner.cleanup()


def connection(name: str, upstream: Upstream | str, **extra: Any) -> dict[str, Any]:
    """An openai_compatible connection to a mock upstream, with short test timeouts."""
    url = upstream if isinstance(upstream, str) else upstream.url
    base = {
        "name": name,
        "provider": "openai_compatible",
        "base_url": url,
        "api_key": f"sk-upstream-secret-{name}",
        "timeout": {"connect": 2, "first_byte": 2, "idle": 2, "total": 10},
    }
    if "api_keys" in extra:
        del base["api_key"]
    base.update(extra)
    return base


def gateway_config(*connections: dict[str, Any], **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"auth": {"client_keys": [CLIENT_KEY]}, "connections": list(connections)}
    config.update(sections)
    return config


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connect refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
