"""Configuration reload: SIGHUP, POST /admin/reload and a changed file swap the configuration at once;
in-flight requests finish on the old one; an invalid file leaves the old one serving."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from gateway.app import start
from gateway.config.load import load_config

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_openai import chunk, completion, error_handler, stream_handler

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
ADMIN = {"Authorization": "Bearer admin-secret"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def named(name: str):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(completion(f"from {name}"))

    return handler


class FileGateway:
    """A gateway started from a config file, as `python -m gateway serve` starts it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runner: web.AppRunner | None = None
        self.url = ""

    def write(self, config: dict) -> None:
        self.path.write_text(yaml.safe_dump(config))

    async def start(self, config: dict) -> FileGateway:
        self.write(config)
        self.runner = await start(load_config(self.path), "127.0.0.1", 0, str(self.path))
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def served_by(self) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/v1/chat/completions", json=CHAT, headers=AUTH) as response,
        ):
            assert response.status == 200, await response.text()
            return response.headers["x-gateway-connection"]

    async def admin_reload(self) -> tuple[int, dict]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/admin/reload", headers=ADMIN) as response,
        ):
            return response.status, await response.json()


@pytest.fixture
async def file_gateway(tmp_path):
    gateways: list[FileGateway] = []

    def make() -> FileGateway:
        gateways.append(FileGateway(tmp_path / f"gateway-{len(gateways)}.yaml"))
        return gateways[-1]

    yield make
    for gateway in gateways:
        if gateway.runner is not None:
            await gateway.runner.cleanup()


def two_connections(a_url: str, b_url: str, a_priority: int, tmp_path: Path, **sections) -> dict:
    return gateway_config(
        connection("a", a_url, priority=a_priority),
        connection("b", b_url, priority=2),
        admin={"token": "admin-secret"},
        store={"path": str(tmp_path / "responses.db")},
        **sections,
    )


async def test_a_changed_priority_takes_effect_on_the_next_request(start_upstream, file_gateway, tmp_path):
    a, b = await start_upstream(named("a")), await start_upstream(named("b"))
    gw = await file_gateway().start(two_connections(a.url, b.url, 1, tmp_path, server={"watch_interval": 0}))
    assert await gw.served_by() == "a"
    gw.write(two_connections(a.url, b.url, 3, tmp_path, server={"watch_interval": 0}))
    assert await gw.served_by() == "a"  # not watching: nothing changes until asked
    assert await gw.admin_reload() == (200, {"reloaded": True})
    assert await gw.served_by() == "b"


async def test_a_changed_file_is_picked_up_by_the_watcher(start_upstream, file_gateway, tmp_path):
    a, b = await start_upstream(named("a")), await start_upstream(named("b"))
    gw = await file_gateway().start(two_connections(a.url, b.url, 1, tmp_path, server={"watch_interval": 0.05}))
    assert await gw.served_by() == "a"
    gw.write(two_connections(a.url, b.url, 3, tmp_path, server={"watch_interval": 0.05}))
    deadline = time.monotonic() + 3
    while await gw.served_by() != "b":
        assert time.monotonic() < deadline, "the watcher never reloaded the changed file"
        await asyncio.sleep(0.05)


async def test_a_stream_in_flight_completes_on_the_old_configuration(start_upstream, file_gateway, tmp_path):
    pieces = [f"piece{i} " for i in range(10)]
    events = [b"data: " + orjson.dumps(chunk({"content": p})) + b"\n\n" for p in pieces] + [b"data: [DONE]\n\n"]
    a = await start_upstream(stream_handler(events, delay=0.05))
    b = await start_upstream(named("b"))
    gw = await file_gateway().start(two_connections(a.url, b.url, 1, tmp_path, server={"watch_interval": 0}))
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH) as r,
    ):
        assert r.headers["x-gateway-connection"] == "a"
        first = await r.content.readany()
        # the new configuration no longer has connection `a` at all
        gw.write(
            gateway_config(
                connection("b", b.url),
                admin={"token": "admin-secret"},
                store={"path": str(tmp_path / "responses.db")},
            )
        )
        assert (await gw.admin_reload())[0] == 200
        assert await gw.served_by() == "b"
        rest = await r.read()
    text = (first + rest).decode()
    content = "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in text.splitlines()
        if line.startswith("data: {")
    )
    assert content == "".join(pieces) and text.rstrip().endswith("data: [DONE]")


async def test_an_invalid_file_leaves_the_old_configuration_serving(start_upstream, file_gateway, tmp_path, caplog):
    a, b = await start_upstream(named("a")), await start_upstream(named("b"))
    gw = await file_gateway().start(two_connections(a.url, b.url, 1, tmp_path, server={"watch_interval": 0.05}))
    caplog.set_level(logging.ERROR, logger="gateway.reload")
    gw.path.write_text("connections:\n  - name: a\n    provider: no-such-provider\n")
    deadline = time.monotonic() + 3
    while not any("rejected" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the invalid file was never read"
        await asyncio.sleep(0.05)
    message = next(r.getMessage() for r in caplog.records if "rejected" in r.getMessage())
    assert "no-such-provider" in message and str(gw.path) in message
    assert await gw.served_by() == "a"
    status, body = await gw.admin_reload()
    assert status == 400 and body["error"]["code"] == "bad_config"
    assert await gw.served_by() == "a"
    gw.path.write_text("connections: [")  # not even YAML
    assert (await gw.admin_reload())[0] == 400
    assert await gw.served_by() == "a"


async def test_unchanged_connections_keep_their_breaker_state(start_upstream, file_gateway, tmp_path):
    a = await start_upstream(error_handler(500, "down"))
    b = await start_upstream(named("b"))
    c = await start_upstream(named("c"))
    sections = {"server": {"watch_interval": 0}, "reliability": {"breaker": {"failures": 1, "cooldown": 30}}}
    gw = await file_gateway().start(two_connections(a.url, b.url, 1, tmp_path, **sections))
    assert await gw.served_by() == "b"  # a failed once: its breaker opened
    assert len(a.requests) == 1
    config = two_connections(a.url, b.url, 1, tmp_path, **sections)
    config["connections"].append(connection("c", c.url, priority=0))
    config["connections"][1]["priority"] = 5
    gw.write(config)
    assert (await gw.admin_reload())[0] == 200
    assert await gw.served_by() == "c"
    config["connections"].pop()  # c removed; a unchanged, still open
    gw.write(config)
    assert (await gw.admin_reload())[0] == 200
    assert await gw.served_by() == "b"
    assert len(a.requests) == 1


async def test_admin_reload_needs_a_config_file(start_upstream, start_gateway):
    upstream = await start_upstream(named("a"))
    gw = await start_gateway(gateway_config(connection("a", upstream), admin={"token": "admin-secret"}))
    async with aiohttp.ClientSession() as session, session.post(f"{gw.url}/admin/reload", headers=ADMIN) as response:
        assert response.status == 400
        async with session.post(f"{gw.url}/admin/reload", headers=AUTH) as response:
            assert response.status == 401  # a client key is not an admin token


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX")
async def test_sighup_reloads_a_running_process(start_upstream, tmp_path):
    a, b = await start_upstream(named("a")), await start_upstream(named("b"))
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(two_connections(a.url, b.url, 1, tmp_path, server={"watch_interval": 0})))
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    gw = FileGateway(path)
    gw.url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert await gw.served_by() == "a"
                break
            except aiohttp.ClientConnectorError:
                assert time.monotonic() < deadline and process.poll() is None, "the gateway did not start"
                await asyncio.sleep(0.1)
        gw.write(two_connections(a.url, b.url, 3, tmp_path, server={"watch_interval": 0}))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while await gw.served_by() != "b":
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            await asyncio.sleep(0.05)
        assert process.poll() is None  # reloaded, still running
    finally:
        process.send_signal(signal.SIGTERM)
        stderr = await asyncio.to_thread(process.communicate, timeout=10)
    assert process.returncode == 0
    assert b"config reloaded (SIGHUP)" in stderr[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
