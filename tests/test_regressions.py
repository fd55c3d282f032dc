"""Regressions from the review of #10-#12: breaker probes that were never released or doubled, retries on an
open breaker, keys echoed into verdicts and connection tests, config files that are not UTF-8."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson
from aiohttp import web

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_openai import completion, error_handler
from .test_reliability import answers
from .test_reload import (
    file_gateway,  # noqa: F401  (fixture)
    two_connections,
)

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
ADMIN_TOKEN = "admin-token-review"


async def post(url: str, body: dict | None = None) -> tuple[int, dict, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body or CHAT, headers=AUTH) as response,
    ):
        return response.status, dict(response.headers), orjson.loads(await response.read())


def ok(text: str, delay: float = 0.0):
    async def handler(request: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        return web.json_response(completion(text))

    return handler


async def slow_upload(url: str, body: bytes, pause: float) -> int:
    """A client whose request body arrives `pause` seconds after its headers."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(head + body[:5])
    await writer.drain()
    await asyncio.sleep(pause)
    writer.write(body[5:])
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return int(status_line.split()[1])


# --- 1. a half-open probe admitted after the deadline is never released ----------------------------


async def test_probe_admitted_past_the_deadline_is_released(start_upstream, start_gateway):
    """serve() is entered with chain.deadline already past (slow upload): _candidate admits the
    half-open probe, _tries' while-loop never runs, nothing records or releases: the breaker stays
    half-open with `probing=True` forever and the healthy primary is skipped for good."""
    primary = await start_upstream(answers(error_handler(500, "down"), ok("primary")))
    secondary = await start_upstream(ok("secondary"))
    breaker = {"failures": 1, "window": 10, "cooldown": 0.2}
    gw = await start_gateway(
        gateway_config(
            connection("primary", primary, priority=1, breaker=breaker),
            connection("secondary", secondary),
            server={"deadline": 0.6},
        )
    )
    _, headers, _ = await post(gw.url)  # opens the primary's breaker
    assert headers["x-gateway-attempts"] == "primary:server_error,secondary:ok"
    await asyncio.sleep(0.3)  # cooldown over: half-open
    assert await slow_upload(gw.url, orjson.dumps(CHAT), pause=0.8) == 504  # deadline passed while reading
    await asyncio.sleep(0.5)  # long past the cooldown
    _status, headers, _body = await post(gw.url)
    # expected: the (healthy) primary gets its probe and answers; actual: skipped as breaker_open forever
    assert headers["x-gateway-attempts"] == "primary:ok", headers["x-gateway-attempts"]


# --- 2. a non-probe request's release() clears the flag of the probe in flight ----------------------


async def test_cancelled_non_probe_request_does_not_admit_a_second_probe(start_upstream, start_gateway):
    """Breaker.release() (and record() of a key failure) set `probing = False` whoever calls them. A
    request admitted while the breaker was closed and cancelled later (client hung up) clears the flag
    of the half-open probe in flight, so the next request becomes a second concurrent probe."""
    primary = await start_upstream(
        answers(ok("x", delay=3), error_handler(500, "down"), ok("probe", delay=1.5), ok("second probe"))
    )
    secondary = await start_upstream(ok("secondary"))
    breaker = {"failures": 1, "window": 10, "cooldown": 0.3}
    gw = await start_gateway(
        gateway_config(connection("primary", primary, priority=1, breaker=breaker), connection("secondary", secondary))
    )
    x = asyncio.create_task(post(gw.url))  # admitted while closed; slow
    await asyncio.sleep(0.2)
    _, headers, _ = await post(gw.url)  # 500: opens the breaker
    assert headers["x-gateway-attempts"] == "primary:server_error,secondary:ok"
    await asyncio.sleep(0.4)  # half-open
    probe = asyncio.create_task(post(gw.url))  # the single probe, in flight
    await asyncio.sleep(0.2)
    x.cancel()  # the first client hangs up: its handler is cancelled -> Breaker.release()
    await asyncio.gather(x, return_exceptions=True)
    await asyncio.sleep(0.2)
    _, headers, _ = await post(gw.url)
    await probe
    # expected: the probe is still in flight, so this request skips the primary
    assert headers["x-gateway-attempts"] == "primary:breaker_open,secondary:ok", headers["x-gateway-attempts"]
    assert len(primary.requests) == 3


async def test_key_failure_of_a_non_probe_request_does_not_admit_a_second_probe(start_upstream, start_gateway):
    """Breaker.record() of a key failure (429/401/403) sets `probing = False` whoever reports it: a request
    admitted while the breaker was closed that gets its 429 after the breaker went half-open frees a
    second concurrent probe (still so after fa72791, which only fixed release())."""

    async def late_429(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return await error_handler(429, "slow down")(request)

    primary = await start_upstream(
        answers(late_429, error_handler(500, "down"), ok("probe", delay=1.5), ok("second probe"))
    )
    secondary = await start_upstream(ok("secondary"))
    breaker = {"failures": 1, "window": 10, "cooldown": 0.3}
    gw = await start_gateway(
        gateway_config(connection("primary", primary, priority=1, breaker=breaker), connection("secondary", secondary))
    )
    x = asyncio.create_task(post(gw.url))  # admitted while closed; its 429 comes at t=1.0
    await asyncio.sleep(0.1)
    _, headers, _ = await post(gw.url)  # 500: opens the breaker
    assert headers["x-gateway-attempts"] == "primary:server_error,secondary:ok"
    await asyncio.sleep(0.4)  # half-open
    probe = asyncio.create_task(post(gw.url))  # the single probe, in flight until about t=2.1
    await x  # the 429 arrived while the probe is in flight
    _, headers, _ = await post(gw.url)
    await probe
    assert headers["x-gateway-attempts"] == "primary:breaker_open,secondary:ok", headers["x-gateway-attempts"]
    assert len(primary.requests) == 3


async def test_probe_cancelled_while_queued_for_a_slot_is_released(start_upstream, start_gateway):
    """_candidate: the probe is admitted, then waits for a limiter slot; its client leaving there raises
    CancelledError out of `limiter.acquire` before the try/except that releases the admission. With
    fa72791 nothing else clears the flag (the slot holders were admitted while closed), so the breaker
    stays half-open with a phantom probe and the connection is skipped for good."""

    async def fail_slowly(request: web.Request) -> web.Response:
        await asyncio.sleep(0.4)
        return await error_handler(500, "down")(request)

    primary = await start_upstream(answers(ok("h1", delay=5), fail_slowly, ok("h2", delay=5), ok("primary")))
    secondary = await start_upstream(ok("secondary"))
    breaker = {"failures": 1, "window": 10, "cooldown": 0.2}
    primary_conn = connection("primary", primary, priority=1, breaker=breaker, max_concurrent=2, queue_timeout=5)
    primary_conn["timeout"] = {"connect": 2, "first_byte": 8, "idle": 8, "total": 10}
    gw = await start_gateway(gateway_config(primary_conn, connection("secondary", secondary)))
    h1 = asyncio.create_task(post(gw.url))  # slot 1 (closed)
    await asyncio.sleep(0.1)
    f = asyncio.create_task(post(gw.url))  # slot 2; fails at ~0.5 and opens the breaker
    await asyncio.sleep(0.1)
    h2 = asyncio.create_task(post(gw.url))  # admitted while closed, queued; gets slot 2 once f is done
    await f
    await asyncio.sleep(0.4)  # cooldown over: half-open; both slots busy (h1, h2)
    assert len(primary.requests) == 3
    p = asyncio.create_task(post(gw.url))  # admitted as the probe, queued for a slot
    await asyncio.sleep(0.2)
    p.cancel()  # its client leaves while it waits
    await asyncio.gather(p, return_exceptions=True)
    for task in (h1, h2):  # the slot holders' clients leave too
        task.cancel()
    await asyncio.gather(h1, h2, return_exceptions=True)
    await asyncio.sleep(0.5)
    _, headers, _ = await post(gw.url)
    # expected: primary probed (and healthy); actual: breaker_open forever
    assert headers["x-gateway-attempts"] == "primary:ok", headers["x-gateway-attempts"]


async def test_no_same_connection_retry_once_its_breaker_has_opened(start_upstream, start_gateway):
    """_tries records the failure (which opens the breaker) and then retries the same connection anyway:
    with `failures: 1` and `retry.attempts: 2` one request sends three requests to a connection whose
    breaker is open, instead of falling back at once."""
    primary = await start_upstream(error_handler(503, "unavailable", headers={"Retry-After": "0"}))
    secondary = await start_upstream(ok("secondary"))
    gw = await start_gateway(
        gateway_config(
            connection(
                "primary",
                primary,
                priority=1,
                breaker={"failures": 1, "window": 10, "cooldown": 30},
                retry={"attempts": 2, "max_wait": 1},
            ),
            connection("secondary", secondary),
        )
    )
    status, headers, _ = await post(gw.url)
    assert status == 200
    assert len(primary.requests) == 1, headers["x-gateway-attempts"]


# --- 3. upstream keys leak into client and admin bodies ---------------------------------------------

SECRET = "sk-upstream-secret-primary"  # conftest.connection's key for "primary"


def echoes_key_in_200():
    """A 200 carrying an error object that echoes the key it was sent (some proxies and providers do)."""

    async def handler(request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if request.method == "GET":
            return web.json_response({"object": "list", "data": [{"id": "model-a", "object": "model"}]})
        return web.json_response({"error": {"message": f"Incorrect API key provided: {key}", "type": "server_error"}})

    return handler


async def test_verdict_message_does_not_leak_the_upstream_key(start_upstream, start_gateway):
    """router.verdict() joins every failure's raw `err.message` into the client-facing error; only
    Attempt.detail is scrubbed (_note_failure), so an error event echoing the key reaches the client."""
    upstream = await start_upstream(echoes_key_in_200())
    gw = await start_gateway(gateway_config(connection("primary", upstream)))
    status, _, body = await post(gw.url)
    assert status == 502
    assert SECRET not in orjson.dumps(body).decode(), body


async def test_admin_connection_test_does_not_leak_the_upstream_key(start_upstream, start_gateway):
    """probe.probe_connection() puts the raw UpstreamError message in `detail` (no _scrub)."""
    upstream = await start_upstream(echoes_key_in_200())
    gw = await start_gateway(gateway_config(connection("primary", upstream), admin={"token": ADMIN_TOKEN}))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gw.url}/admin/connections/primary/test", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as response,
    ):
        result = await response.json()
    assert result["status"] != "ok"
    assert SECRET not in orjson.dumps(result).decode(), result


# --- 4. a config file that is not UTF-8 escapes reload() --------------------------------------------


async def test_admin_reload_of_a_non_utf8_file_is_a_400(start_upstream, file_gateway, tmp_path):  # noqa: F811
    """_read_yaml catches OSError and YAMLError but not UnicodeDecodeError: POST /admin/reload
    answers 500 instead of the 400 bad_config that any other invalid file gets."""
    a, b = await start_upstream(ok("a")), await start_upstream(ok("b"))
    gw = await file_gateway().start(two_connections(a.url, b.url, 1, tmp_path, server={"watch_interval": 0}))
    gw.path.write_bytes(b"server:\n  port: \xff\xfe\n")
    status, body = await gw.admin_reload()
    assert status == 400, (status, body)
    assert await gw.served_by() == "a"


async def test_watcher_survives_a_non_utf8_file(start_upstream, file_gateway, tmp_path):  # noqa: F811
    """The same exception kills ConfigWatcher._watch: later (valid) edits of the file are never applied."""
    a, b = await start_upstream(ok("a")), await start_upstream(ok("b"))
    server = {"watch_interval": 0.05}
    gw = await file_gateway().start(two_connections(a.url, b.url, 1, tmp_path, server=server))
    gw.path.write_bytes(b"server:\n  port: \xff\xfe\n")  # an editor saving in the wrong encoding
    await asyncio.sleep(0.3)
    gw.write(two_connections(a.url, b.url, 3, tmp_path, server=server))  # fixed: b now comes first
    await asyncio.sleep(0.3)
    assert await gw.served_by() == "b"


# --- found by the benchmark: a client gone before its answer is written is not an internal error ----


async def test_client_gone_before_the_answer_is_written_is_no_internal_error(
    start_upstream, start_gateway, caplog, monkeypatch
):
    upstream = await start_upstream(ok("hello"))
    gw = await start_gateway(gateway_config(connection("main", upstream)))
    write_eof = web.Response.write_eof

    async def closed_transport(self, data=b""):
        if self.headers.get("x-gateway-connection") == "main":  # only the gateway's answer to the client
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        return await write_eof(self, data)

    monkeypatch.setattr(web.Response, "write_eof", closed_transport)
    caplog.set_level("INFO")
    with contextlib.suppress(aiohttp.ClientError):
        await post(gw.url)
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    (line,) = [r for r in caplog.records if r.name == "gateway.request"]
    assert line.fields["client_disconnected"] is True and line.fields["connection"] == "main"
