"""When the gateway falls back, when it does not, and what the client sees either way."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from .conftest import CLIENT_KEY, closed_port_url, connection, gateway_config
from .mock_openai import (
    chunk,
    completion,
    error_handler,
    json_handler,
    stall_handler,
    stream_handler,
    text_stream,
)

MESSAGES = [{"role": "user", "content": "Say hello"}]
FAST = {"connect": 1, "first_byte": 0.4, "idle": 0.4, "total": 5}


def event(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def raw_handler(status: int, body: bytes, content_type: str = "application/json"):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    return handler


PRIMARY_FAILURES = {
    "http_500": (error_handler(500), "server_error"),
    "http_503": (error_handler(503, "overloaded"), "server_error"),
    "http_429": (error_handler(429, "slow down", headers={"Retry-After": "1"}), "rate_limited"),
    "http_401": (error_handler(401, "Incorrect API key provided"), "auth_error"),
    "http_403": (error_handler(403, "forbidden"), "auth_error"),
    "http_408": (error_handler(408, "timeout"), "timeout"),
    "model_404": (error_handler(404, "The model `m` does not exist", code="model_not_found"), "not_found"),
    "context_400": (
        error_handler(400, "This model's maximum context length is 8192 tokens", code="context_length_exceeded"),
        "context_length",
    ),
    "unsupported_400": (
        error_handler(400, "Unsupported parameter: 'tools'", code="unsupported_parameter"),
        "unsupported",
    ),
    "timeout_before_headers": (stall_handler(), "timeout"),
    "invalid_json_200": (raw_handler(200, b"{not json"), "bad_response"),
    "error_in_200": (json_handler({"error": {"message": "upstream exploded", "code": 502}}), "server_error"),
}


@pytest.mark.parametrize("failure", list(PRIMARY_FAILURES))
async def test_non_streaming_falls_back(start_upstream, start_gateway, failure):
    handler, reason = PRIMARY_FAILURES[failure]
    primary = await start_upstream(handler)
    secondary = await start_upstream(json_handler(completion("from secondary")))
    gw = await start_gateway(
        gateway_config(connection("primary", primary, timeout=FAST), connection("secondary", secondary, priority=200))
    )
    raw = await gw.client().chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "from secondary"
    assert raw.headers["x-gateway-attempts"] == f"primary:{reason},secondary:ok"
    assert raw.headers["x-gateway-connection"] == "secondary"
    assert len(primary.requests) == 1 and len(secondary.requests) == 1


async def test_connect_refused_falls_back(start_upstream, start_gateway):
    secondary = await start_upstream(json_handler(completion("from secondary")))
    gw = await start_gateway(
        gateway_config(connection("dead", closed_port_url()), connection("secondary", secondary, priority=200))
    )
    raw = await gw.client().chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    assert raw.headers["x-gateway-attempts"] == "dead:connect_error,secondary:ok"


STREAM_FAILURES = {
    "http_500": (error_handler(500), "server_error"),
    # headers arrive, then only the role chunk: nothing to commit to before first_byte runs out
    "stall_after_headers": (
        stream_handler([event(chunk({"role": "assistant", "content": ""}))], then="stall"),
        "timeout",
    ),
    "keepalives_only": (stream_handler([b": ping\n\n"] * 3, delay=0.05, then="stall"), "timeout"),
    "reset_before_content": (stream_handler([event(chunk({"role": "assistant"}))], then="reset"), "bad_response"),
    "error_event_first": (stream_handler([event({"error": {"message": "overloaded", "code": 503}})]), "server_error"),
    "empty_stream": (stream_handler([b"data: [DONE]\n\n"]), "bad_response"),
    # content and an error in one read: nothing has reached the client yet, so another connection serves
    "content_then_error_in_one_read": (
        stream_handler(
            [event(chunk({"role": "assistant", "content": "par"})) + event({"error": {"message": "x", "code": 503}})]
        ),
        "server_error",
    ),
}


@pytest.mark.parametrize("failure", list(STREAM_FAILURES))
async def test_streaming_falls_back_before_commit(start_upstream, start_gateway, failure):
    handler, reason = STREAM_FAILURES[failure]
    primary = await start_upstream(handler)
    secondary = await start_upstream(stream_handler(text_stream(["from ", "secondary"])))
    gw = await start_gateway(
        gateway_config(connection("primary", primary, timeout=FAST), connection("secondary", secondary, priority=200))
    )
    raw = await gw.client().chat.completions.with_raw_response.create(model="m", messages=MESSAGES, stream=True)
    assert raw.headers["x-gateway-attempts"] == f"primary:{reason},secondary:ok"
    chunks = [c async for c in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "from secondary"  # nothing of the failed attempt leaked, nothing twice
    roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"]


async def test_plain_400_is_returned_as_is_without_fallback(start_upstream, start_gateway):
    primary = await start_upstream(error_handler(400, "messages[0].role is invalid", code="invalid_value"))
    secondary = await start_upstream(json_handler())
    gw = await start_gateway(gateway_config(connection("primary", primary), connection("secondary", secondary)))
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client().chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 400
    assert "messages[0].role is invalid" in caught.value.message
    assert caught.value.response.headers["x-gateway-attempts"] == "primary:client_error"
    assert secondary.requests == []


MID_STREAM = {
    "reset": dict(then="reset"),
    "error_event": dict(
        then="end", extra=[event({"error": {"message": "overloaded", "type": "server_error"}})], delay=0.05
    ),
    "idle_stall": dict(then="stall"),
    "truncated": dict(then="end"),  # clean close without finish or [DONE]
}


@pytest.mark.parametrize("how", list(MID_STREAM))
async def test_failure_after_commit_ends_with_error_not_clean_end(start_upstream, start_gateway, how):
    spec = MID_STREAM[how]
    events = [event(chunk({"role": "assistant", "content": ""})), event(chunk({"content": "partial"}))]
    events += spec.get("extra", [])
    primary = await start_upstream(stream_handler(events, then=spec["then"], delay=spec.get("delay", 0.0)))
    secondary = await start_upstream(stream_handler(text_stream(["never"])))
    gw = await start_gateway(
        gateway_config(connection("primary", primary, timeout=FAST), connection("secondary", secondary, priority=200))
    )
    stream = await gw.client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        async for c in stream:
            received.extend(ch.delta.content or "" for ch in c.choices)
    assert "".join(received) == "partial"
    assert "primary" in caught.value.message
    assert secondary.requests == []


async def test_client_disconnect_mid_stream_reaches_upstream(start_upstream, start_gateway):
    slow = [event(chunk({"role": "assistant", "content": "x"}))] + [event(chunk({"content": "y"}))] * 200
    primary = await start_upstream(stream_handler(slow, delay=0.02))
    gw = await start_gateway(gateway_config(connection("primary", primary)))
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        )
        await response.content.readany()
        response.close()
    await asyncio.wait_for(primary.disconnected.wait(), 3)


async def test_client_disconnect_while_waiting_reaches_upstream(start_upstream, start_gateway):
    primary = await start_upstream(stall_handler(20))
    gw = await start_gateway(gateway_config(connection("primary", primary, timeout={"first_byte": 20})))
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(
            session.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "m", "messages": MESSAGES},
                headers={"Authorization": f"Bearer {CLIENT_KEY}"},
            )
        )
        while not primary.requests:
            await asyncio.sleep(0.01)
        task.cancel()
    await asyncio.wait_for(primary.disconnected.wait(), 3)


async def test_deadline_bounds_the_whole_chain(start_upstream, start_gateway):
    slow_a = await start_upstream(stall_handler(20))
    slow_b = await start_upstream(stall_handler(20))
    never = await start_upstream(json_handler())
    gw = await start_gateway(
        gateway_config(
            connection("a", slow_a, timeout={"first_byte": 10}),
            connection("b", slow_b, timeout={"first_byte": 10}, priority=101),
            connection("c", never, priority=102),
            server={"deadline": 0.6},
        )
    )
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.client().chat.completions.create(model="m", messages=MESSAGES)
    elapsed = time.monotonic() - started
    assert caught.value.status_code == 504
    assert 0.5 < elapsed < 2.0
    assert caught.value.response.headers["x-gateway-attempts"] == "a:timeout"
    assert never.requests == []


async def test_all_rate_limited_gives_429_with_shortest_retry_after(start_upstream, start_gateway):
    a = await start_upstream(error_handler(429, "a busy", headers={"Retry-After": "7"}))
    b = await start_upstream(error_handler(429, "b busy", headers={"retry-after-ms": "2500"}))
    gw = await start_gateway(gateway_config(connection("a", a), connection("b", b)))
    with pytest.raises(openai.RateLimitError) as caught:
        await gw.client().chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.response.headers["Retry-After"] == "3"
    assert caught.value.response.headers["x-gateway-attempts"] == "a:rate_limited,b:rate_limited"
    body = caught.value.response.json()
    assert body["error"]["code"] == "rate_limited"


async def test_all_not_found_gives_404_and_mixed_gives_502(start_upstream, start_gateway):
    missing = await start_upstream(error_handler(404, "no such model", code="model_not_found"))
    broken = await start_upstream(error_handler(500))
    gw = await start_gateway(gateway_config(connection("a", missing), connection("b", missing)))
    with pytest.raises(openai.NotFoundError):
        await gw.client().chat.completions.create(model="m", messages=MESSAGES)
    gw = await start_gateway(gateway_config(connection("a", missing), connection("b", broken)))
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.client().chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 502
    message = caught.value.response.json()["error"]["message"]
    assert "a: not_found" in message and "b: server_error" in message
    assert "sk-upstream-secret" not in message and "127.0.0.1" not in message


async def test_embeddings_fall_back_only_to_the_same_model(start_upstream, start_gateway):
    failing = await start_upstream(error_handler(500))
    other_model = await start_upstream(json_handler())
    same_model = await start_upstream(
        json_handler({"object": "list", "data": [], "model": "emb", "usage": {"prompt_tokens": 1, "total_tokens": 1}})
    )
    gw = await start_gateway(
        gateway_config(
            connection("a", failing, model="emb-large"),
            connection("b", other_model, model="emb-small", priority=101),
            connection("c", same_model, model="emb-large", priority=102),
        )
    )
    raw = await gw.client().embeddings.with_raw_response.create(model="anything", input="hi")
    assert raw.headers["x-gateway-attempts"] == "a:server_error,c:ok"
    assert other_model.requests == []


async def test_an_upstream_client_error_reaches_a_translated_client_in_its_own_format(start_upstream, start_gateway):
    upstream = await start_upstream(error_handler(400, "messages[0].content: bad value sk-upstream-secret-main"))
    gateway = await start_gateway(gateway_config(connection("main", upstream)))
    async with aiohttp.ClientSession() as session:
        anthropic_request = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
        headers = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
        async with session.post(f"{gateway.url}/v1/messages", json=anthropic_request, headers=headers) as response:
            assert response.status == 400
            body = await response.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"] == "main: messages[0].content: bad value [redacted]"
        gemini_request = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
        url = f"{gateway.url}/v1beta/models/m:generateContent"
        async with session.post(url, json=gemini_request, headers={"x-goog-api-key": CLIENT_KEY}) as response:
            assert response.status == 400
            body = await response.json()
        assert body["error"]["status"] == "INVALID_ARGUMENT" and body["error"]["code"] == 400
        assert "bad value [redacted]" in body["error"]["message"]
        async with session.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        ) as response:  # the same format: the upstream's own body, unchanged but for the key
            assert response.status == 400
            assert (await response.json())["error"]["message"] == "messages[0].content: bad value [redacted]"
