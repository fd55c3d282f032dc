"""Circuit breakers, same-connection retries with Retry-After, concurrency limits, request limits."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.config.model import BreakerSettings, ConfigError, RetrySettings
from gateway.config.sections import parse_config
from gateway.errors import ErrorKind, Reason, UpstreamError
from gateway.routing.policy import retry_wait
from gateway.state.base import PASS, BreakerState
from gateway.state.memory import Breaker

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_openai import completion, error_handler, stream_handler
from .test_observability import scrape, value

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


async def post(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body or CHAT, headers={**AUTH, **(headers or {})}) as response,
    ):
        return response.status, dict(response.headers), orjson.loads(await response.read())


def answers(*handlers):
    """A mock that answers its n-th request with the n-th handler (the last one repeats)."""
    calls = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        index = min(calls["n"], len(handlers) - 1)
        calls["n"] += 1
        return await handlers[index](request)

    return handler


def ok(text: str = "fine"):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(completion(text))

    return handler


def slow_ok(seconds: float):
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.json_response(completion("slow"))

    return handler


# --- the circuit breaker --------------------------------------------------------------------------


async def test_breaker_opens_skips_half_opens_and_closes(start_upstream, start_gateway):
    healthy = {"yes": False}

    async def primary_handler(request: web.Request) -> web.Response:
        if healthy["yes"]:
            return web.json_response(completion("primary"))
        return await error_handler(500, "down")(request)

    primary = await start_upstream(primary_handler)
    secondary = await start_upstream(ok("secondary"))
    breaker = {"failures": 2, "window": 10, "cooldown": 0.3}
    gw = await start_gateway(
        gateway_config(connection("primary", primary, priority=1, breaker=breaker), connection("secondary", secondary))
    )
    for _ in range(2):
        status, headers, _ = await post(gw.url)
        assert status == 200 and headers["x-gateway-attempts"] == "primary:server_error,secondary:ok"
    samples = await scrape(gw)
    assert value(samples, "gateway_breaker_state", connection="primary") == 2
    assert value(samples, "gateway_connection_up", connection="primary") == 0
    assert value(samples, "gateway_connection_up", connection="secondary") == 1

    status, headers, body = await post(gw.url)  # open: skipped without a request
    assert status == 200 and headers["x-gateway-attempts"] == "primary:breaker_open,secondary:ok"
    assert len(primary.requests) == 2
    assert value(await scrape(gw), "gateway_fallbacks_total", from_connection="primary", to_connection="secondary",
                 reason="breaker_open") == 1  # fmt: skip

    await asyncio.sleep(0.35)  # cooldown over: half-open, one probe
    assert value(await scrape(gw), "gateway_breaker_state", connection="primary") == 1
    status, headers, _ = await post(gw.url)
    assert headers["x-gateway-attempts"] == "primary:server_error,secondary:ok"  # the probe failed: open again
    assert len(primary.requests) == 3
    status, headers, _ = await post(gw.url)
    assert headers["x-gateway-attempts"] == "primary:breaker_open,secondary:ok"

    healthy["yes"] = True
    await asyncio.sleep(0.35)
    status, headers, body = await post(gw.url)  # the probe succeeds: closed
    assert headers["x-gateway-connection"] == "primary" and body["choices"][0]["message"]["content"] == "primary"
    assert value(await scrape(gw), "gateway_breaker_state", connection="primary") == 0
    status, headers, _ = await post(gw.url)
    assert headers["x-gateway-attempts"] == "primary:ok"


async def test_half_open_lets_a_single_probe_through(start_upstream, start_gateway):
    primary = await start_upstream(answers(error_handler(500), slow_ok(0.4)))
    secondary = await start_upstream(ok("secondary"))
    breaker = {"failures": 1, "window": 10, "cooldown": 0.2}
    gw = await start_gateway(
        gateway_config(connection("primary", primary, priority=1, breaker=breaker), connection("secondary", secondary))
    )
    await post(gw.url)  # opens it
    await asyncio.sleep(0.25)
    probe = asyncio.create_task(post(gw.url))
    await asyncio.sleep(0.1)  # the probe is in flight at the primary
    _, headers, _ = await post(gw.url)
    assert headers["x-gateway-attempts"] == "primary:breaker_open,secondary:ok"
    _, headers, body = await probe
    assert headers["x-gateway-attempts"] == "primary:ok" and body["choices"][0]["message"]["content"] == "slow"
    assert len(primary.requests) == 2


async def test_failures_outside_the_window_do_not_open_it(start_upstream, start_gateway):
    primary = await start_upstream(error_handler(500))
    secondary = await start_upstream(ok())
    breaker = {"failures": 2, "window": 0.2, "cooldown": 30}
    gw = await start_gateway(
        gateway_config(connection("primary", primary, priority=1, breaker=breaker), connection("secondary", secondary))
    )
    await post(gw.url)
    await asyncio.sleep(0.25)
    await post(gw.url)
    _, headers, _ = await post(gw.url)  # the second and third are in one window: now it opens
    assert headers["x-gateway-attempts"] == "primary:server_error,secondary:ok"
    _, headers, _ = await post(gw.url)
    assert headers["x-gateway-attempts"] == "primary:breaker_open,secondary:ok"


async def test_client_errors_do_not_count_against_a_connection(start_upstream, start_gateway):
    primary = await start_upstream(error_handler(400, "bad request from the client"))
    gw = await start_gateway(gateway_config(connection("primary", primary, breaker={"failures": 1})))
    for _ in range(3):
        status, headers, _ = await post(gw.url)
        assert status == 400 and headers["x-gateway-attempts"] == "primary:client_error"
    assert len(primary.requests) == 3


async def test_when_every_breaker_is_open_the_soonest_to_close_is_tried(start_upstream, start_gateway):
    first = await start_upstream(error_handler(500))
    second = await start_upstream(answers(error_handler(500), ok("second recovered")))
    gw = await start_gateway(
        gateway_config(
            connection("first", first, priority=1, breaker={"failures": 1, "cooldown": 30}),
            connection("second", second, priority=2, breaker={"failures": 1, "cooldown": 20}),
        )
    )
    status, headers, _ = await post(gw.url)
    assert status == 502 and headers["x-gateway-attempts"] == "first:server_error,second:server_error"
    status, headers, body = await post(gw.url)  # both open: second's cooldown ends sooner, so it is probed
    assert status == 200 and body["choices"][0]["message"]["content"] == "second recovered"
    assert headers["x-gateway-attempts"] == "first:breaker_open,second:breaker_open,second:ok"
    assert len(first.requests) == 1


def test_breaker_unit_behaviour():
    breaker = Breaker(BreakerSettings(failures=2, window=10, cooldown=5))
    assert breaker.admit(0)
    breaker.record(Reason.RATE_LIMITED, 0)  # key trouble: neutral
    breaker.record(Reason.TIMEOUT, 1)
    breaker.record(Reason.OK, 2)  # a success clears the count
    breaker.record(Reason.CONNECT_ERROR, 3)
    assert breaker.state_at(3) is BreakerState.CLOSED
    breaker.record(Reason.BAD_RESPONSE, 4)
    assert breaker.state_at(4) is BreakerState.OPEN and not breaker.admit(8.9)
    assert breaker.state_at(9) is BreakerState.HALF_OPEN
    probe = breaker.admit(9)
    assert probe.probe and not breaker.admit(9.1)  # one probe at a time
    breaker.release(PASS)  # a request that was not the probe ends: the probe is still out
    breaker.record(Reason.RATE_LIMITED, 9.12)  # nor does key trouble (of any request) free it
    assert not breaker.admit(9.15)
    breaker.release(probe)  # the probe's client left: another may probe
    second = breaker.admit(9.2)
    assert second.probe and second.probe != probe.probe
    breaker.release(probe)  # a stale release does not free the new probe
    assert not breaker.admit(9.3)
    breaker.record(Reason.SERVER_ERROR, 9.5)
    assert breaker.until == 14.5 and not breaker.admit(14)
    off = Breaker(BreakerSettings(failures=0))
    for t in range(10):
        off.record(Reason.TIMEOUT, t)
    assert off.admit(10)


# --- retries on the same connection ---------------------------------------------------------------


async def test_retry_honours_each_answers_own_retry_after(start_upstream, start_gateway):
    primary = await start_upstream(
        answers(
            error_handler(429, "slow down", headers={"Retry-After": "0.2"}),
            error_handler(503, "unavailable", headers={"retry-after-ms": "150"}),
            ok("third time"),
        )
    )
    secondary = await start_upstream(ok("secondary"))
    gw = await start_gateway(
        gateway_config(
            connection("primary", primary, priority=1, retry={"attempts": 2, "max_wait": 1}),
            connection("secondary", secondary),
        )
    )
    started = time.monotonic()
    status, headers, body = await post(gw.url)
    elapsed = time.monotonic() - started
    assert status == 200 and body["choices"][0]["message"]["content"] == "third time"
    assert headers["x-gateway-attempts"] == "primary:rate_limited,primary:server_error,primary:ok"
    assert elapsed >= 0.35  # 0.2 s, then 0.15 s: each answer's own wait
    assert not secondary.requests
    assert value(await scrape(gw), "gateway_retries_total", connection="primary", reason="rate_limited") == 1


async def test_a_wait_above_max_wait_falls_back_instead(start_upstream, start_gateway):
    primary = await start_upstream(error_handler(429, "slow down", headers={"Retry-After": "5"}))
    secondary = await start_upstream(ok("secondary"))
    gw = await start_gateway(
        gateway_config(
            connection("primary", primary, priority=1, retry={"attempts": 3, "max_wait": 1}),
            connection("secondary", secondary),
        )
    )
    started = time.monotonic()
    _, headers, _ = await post(gw.url)
    assert time.monotonic() - started < 1
    assert headers["x-gateway-attempts"] == "primary:rate_limited,secondary:ok"


async def test_retries_stay_within_the_deadline_and_only_for_later_answers(start_upstream, start_gateway):
    primary = await start_upstream(error_handler(503, "unavailable", headers={"Retry-After": "0.8"}))
    failing = await start_upstream(error_handler(500, "broken"))
    secondary = await start_upstream(ok("secondary"))
    retry = {"attempts": 3, "max_wait": 2}
    gw = await start_gateway(
        gateway_config(
            connection("primary", primary, priority=1, retry=retry),
            connection("failing", failing, priority=2, retry=retry),
            connection("secondary", secondary, priority=3),
            server={"deadline": 0.5},
        )
    )
    status, headers, _ = await post(gw.url)
    assert status == 200
    assert headers["x-gateway-attempts"] == "primary:server_error,failing:server_error,secondary:ok"
    assert len(primary.requests) == 1 and len(failing.requests) == 1  # a 500 is not "later"


async def test_other_keys_are_tried_before_waiting(start_upstream, start_gateway):
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        key = request.headers["Authorization"]
        seen.append(key[-1])
        if len(seen) <= 2:
            return await error_handler(429, "slow down", headers={"Retry-After": "0.1"})(request)
        return web.json_response(completion("after the wait"))

    upstream = await start_upstream(handler)
    gw = await start_gateway(
        gateway_config(
            connection("main", upstream, api_keys=["sk-key-1", "sk-key-2"], retry={"attempts": 1, "max_wait": 1})
        )
    )
    status, headers, body = await post(gw.url)
    assert status == 200 and body["choices"][0]["message"]["content"] == "after the wait"
    assert seen[:2] == ["1", "2"] and len(seen) == 3
    assert headers["x-gateway-attempts"] == "main:rate_limited,main:rate_limited,main:ok"


def test_retry_wait_rules():
    settings = RetrySettings(attempts=2, max_wait=3)

    def error(reason: Reason, status: int | None = None, retry_after: float | None = None, message: str = "x"):
        return UpstreamError(ErrorKind.HTTP_STATUS, reason, message, status=status, retry_after=retry_after)

    assert retry_wait(error(Reason.RATE_LIMITED, 429, 1.5), settings, 0) == 1.5
    assert retry_wait(error(Reason.RATE_LIMITED, 429), settings, 1) == 0.5  # no Retry-After: backoff
    assert retry_wait(error(Reason.RATE_LIMITED, 429, 1), settings, 2) is None  # attempts used up
    assert retry_wait(error(Reason.SERVER_ERROR, 529), settings, 0) == 0.25
    assert retry_wait(error(Reason.SERVER_ERROR, None, message="overloaded_error: Overloaded"), settings, 0) == 0.25
    assert retry_wait(error(Reason.SERVER_ERROR, 500), settings, 0) is None
    assert retry_wait(error(Reason.TIMEOUT), settings, 0) is None
    assert retry_wait(error(Reason.RATE_LIMITED, 429, 4), settings, 0) is None  # above max_wait
    assert retry_wait(error(Reason.RATE_LIMITED, 429, 1), RetrySettings(), 0) is None  # off by default


# --- concurrency limits ---------------------------------------------------------------------------


async def test_a_full_connection_is_skipped_as_busy(start_upstream, start_gateway):
    primary = await start_upstream(slow_ok(0.5))
    secondary = await start_upstream(ok("secondary"))
    gw = await start_gateway(
        gateway_config(
            connection("primary", primary, priority=1, max_concurrent=1, queue_timeout=0.1),
            connection("secondary", secondary),
        )
    )
    first = asyncio.create_task(post(gw.url))
    await asyncio.sleep(0.1)
    _, headers, body = await post(gw.url)
    assert headers["x-gateway-attempts"] == "primary:busy,secondary:ok"
    _, headers, body = await first
    assert headers["x-gateway-attempts"] == "primary:ok" and body["choices"][0]["message"]["content"] == "slow"


async def test_a_request_waits_for_a_slot_within_the_queue_timeout(start_upstream, start_gateway):
    primary = await start_upstream(slow_ok(0.2))
    gw = await start_gateway(
        gateway_config(connection("primary", primary), reliability={"max_concurrent": 1, "queue_timeout": 2})
    )
    results = await asyncio.gather(post(gw.url), post(gw.url), post(gw.url))
    assert [status for status, _, _ in results] == [200, 200, 200]
    assert len(primary.requests) == 3


async def test_every_connection_busy_answers_429_with_retry_after(start_upstream, start_gateway):
    primary = await start_upstream(slow_ok(0.5))
    gw = await start_gateway(gateway_config(connection("primary", primary, max_concurrent=1, queue_timeout=0.05)))
    first = asyncio.create_task(post(gw.url))
    await asyncio.sleep(0.1)
    status, headers, body = await post(gw.url)
    assert status == 429 and headers["Retry-After"] == "1"
    assert body["error"]["code"] == "busy" and body["error"]["type"] == "rate_limit_error"
    async with aiohttp.ClientSession() as session:
        request = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
        headers = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
        async with session.post(f"{gw.url}/v1/messages", json=request, headers=headers) as response:
            assert response.status == 429 and response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["type"] == "rate_limit_error"
    assert (await first)[0] == 200


# --- limits ---------------------------------------------------------------------------------------


async def test_oversized_headers_get_431_in_the_clients_format(start_upstream, start_gateway):
    upstream = await start_upstream(ok())
    gw = await start_gateway(gateway_config(connection("main", upstream), limits={"max_header_bytes": 2048}))
    status, _, body = await post(gw.url, headers={f"x-pad-{i}": "v" * 200 for i in range(12)})
    assert status == 431 and "2048" in body["error"]["message"]
    status, _, _ = await post(gw.url)
    assert status == 200 and len(upstream.requests) == 1


async def test_a_stream_ends_at_max_stream_seconds(start_upstream, start_gateway):
    from .mock_openai import chunk

    events = [b"data: " + orjson.dumps(chunk({"content": f"piece {i} "})) + b"\n\n" for i in range(40)]
    upstream = await start_upstream(stream_handler(events, delay=0.05))
    gw = await start_gateway(gateway_config(connection("main", upstream), limits={"max_stream_seconds": 0.5}))
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH) as r,
    ):
        text = (await r.read()).decode()
    assert 0.4 < time.monotonic() - started < 1.5
    assert "piece 0" in text and "piece 39" not in text
    last = [line for line in text.splitlines() if line.startswith("data: ")][-1]
    assert "error" in orjson.loads(last[6:]) and "exceeded" in last


async def test_a_client_that_stops_reading_cannot_hold_the_stream(start_upstream, start_gateway):
    from .mock_openai import chunk

    big = b"data: " + orjson.dumps(chunk({"content": "x" * 65536})) + b"\n\n"
    upstream = await start_upstream(stream_handler([big] * 2000))  # ~130 MB if anyone read it all
    gw = await start_gateway(gateway_config(connection("main", upstream), limits={"max_stream_seconds": 0.5}))
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = orjson.dumps({**CHAT, "stream": True})
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {CLIENT_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")  # headers arrive; then this client reads nothing more
    await asyncio.wait_for(upstream.disconnected.wait(), 3)  # the gateway let go of the upstream
    received = 0
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        while True:  # what is left in the socket buffers, then the end: the gateway cut the connection
            chunk_ = await asyncio.wait_for(reader.read(1 << 20), 3)
            if not chunk_:
                raise asyncio.IncompleteReadError(b"", None)
            received += len(chunk_)
    assert received < 50 * 1024 * 1024
    writer.close()


# --- configuration --------------------------------------------------------------------------------


def test_reliability_defaults_and_per_connection_overrides():
    config = parse_config(
        gateway_config(
            connection("a", "http://127.0.0.1:9/v1"),
            connection("b", "http://127.0.0.1:9/v1", breaker={"failures": 2}, retry={"attempts": 1}, max_concurrent=4),
            reliability={"breaker": {"cooldown": 60}, "retry": {"max_wait": 3}, "queue_timeout": 0.5},
            limits={"max_header_bytes": 4096, "max_stream_seconds": 120},
        ),
        "g.yaml",
    )
    a, b = config.connection("a").reliability, config.connection("b").reliability
    assert a.breaker == BreakerSettings(failures=5, window=30, cooldown=60)
    assert b.breaker == BreakerSettings(failures=2, window=30, cooldown=60)
    assert a.retry == RetrySettings(attempts=0, max_wait=3) and b.retry == RetrySettings(attempts=1, max_wait=3)
    assert a.max_concurrent is None and b.max_concurrent == 4 and b.queue_timeout == 0.5
    assert config.limits.max_header_bytes == 4096 and config.limits.max_stream_seconds == 120


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"reliability": {"breaker": {"failures": -1}}}, "reliability.breaker.failures: must not be negative"),
        ({"reliability": {"retry": {"attempts": "two"}}}, "reliability.retry.attempts: must be a whole number"),
        ({"reliability": {"breaker": {"cooldwn": 3}}}, "did you mean `cooldown`"),
        ({"reliability": {"max_concurrent": 0}}, "reliability.max_concurrent: must be greater than 0"),
        ({"limits": {"max_header_bytes": 10}}, "limits.max_header_bytes: must be at least 1024"),
        ({"limits": {"max_stream_secs": 10}}, "did you mean `max_stream_seconds`"),
    ],
)
def test_reliability_config_errors(section, message):
    with pytest.raises(ConfigError) as info:
        parse_config(gateway_config(connection("a", "http://127.0.0.1:9/v1"), **section), "g.yaml")
    assert message in str(info.value) and "g.yaml" in str(info.value)


async def test_a_probe_whose_client_leaves_frees_the_next_probe(start_upstream, start_gateway):
    primary = await start_upstream(answers(error_handler(500), slow_ok(0.5), ok("primary back")))
    secondary = await start_upstream(ok("secondary"))
    breaker = {"failures": 1, "cooldown": 0.2}
    gw = await start_gateway(
        gateway_config(connection("primary", primary, priority=1, breaker=breaker), connection("secondary", secondary))
    )
    await post(gw.url)  # opens the breaker
    await asyncio.sleep(0.25)
    with pytest.raises(TimeoutError):  # the probe waits on a slow primary; its client gives up meanwhile
        await asyncio.wait_for(post(gw.url), 0.2)
    await asyncio.wait_for(primary.disconnected.wait(), 1)
    _, headers, body = await post(gw.url)
    assert headers["x-gateway-attempts"] == "primary:ok" and body["choices"][0]["message"]["content"] == "primary back"
