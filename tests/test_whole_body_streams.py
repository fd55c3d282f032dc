"""Upstreams that ignore `stream: true` and answer with one JSON body: the client still gets a stream,
complete and valid in its own format, carrying that answer (no fallback needed); an error body in a
200 still falls back."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from anthropic.types import Message
from google.genai import types as genai_types
from openai.types.chat import ChatCompletionChunk

from .conftest import connection, gateway_config
from .mock_anthropic import Answer, Block
from .mock_gemini import USAGE, Chunk, chunk_body
from .mock_openai import json_handler
from .responses_checks import check_stream, parse_sse
from .test_clients import claude, claude_stream, google, upstream_kinds


class AsIfNotStreamed:
    """What a mock provider's handler reads of a request (its JSON, path and query), as if the
    client had not asked for a stream."""

    def __init__(self, body: dict[str, Any], path: str) -> None:
        self._body, self.path, self.query = {**body, "stream": False}, path, {}

    async def json(self) -> dict[str, Any]:
        return self._body


def never_streams(handler):
    """The same provider, but asked for a stream it answers with its JSON body."""

    async def whole(request: web.Request) -> web.StreamResponse:
        path = request.path.replace(":streamGenerateContent", ":generateContent")
        return await handler(AsIfNotStreamed(await request.json(), path))

    return whole


async def upstream_gateway(start_upstream, start_gateway, kind: str, call: bool = False):
    extra, handler = upstream_kinds(call)[kind]
    upstream = await start_upstream(never_streams(handler))
    gw = await start_gateway(gateway_config(connection("up", upstream, **extra)))
    return upstream, gw


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("call", [False, True])
async def test_chat_client_gets_a_stream_of_the_whole_answer(start_upstream, start_gateway, kind, call):
    upstream, gw = await upstream_gateway(start_upstream, start_gateway, kind, call)
    client = gw.client()
    raw = await client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Hi"}], stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-gateway-attempts"] == "up:ok" and raw.headers["content-type"] == "text/event-stream"
    chunks = [ChatCompletionChunk.model_validate(c.model_dump()) async for c in raw.parse()]
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls" if call else "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    if call:
        calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
        assert calls[0].id == "call_1" and calls[0].function.name == "get_weather"
        assert orjson.loads("".join(t.function.arguments or "" for t in calls)) == {"city": "Paris"}
    else:
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"
    asked = upstream.requests[0]  # it was asked for a stream
    assert "streamGenerateContent" in asked.path if kind == "gemini" else asked.json["stream"] is True


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_responses_client_gets_a_valid_event_sequence(start_upstream, start_gateway, kind):
    _, gw = await upstream_gateway(start_upstream, start_gateway, kind)
    client = gw.client()
    async with client.responses.with_streaming_response.create(model="m", input="Hi", stream=True) as raw:
        events = parse_sse((await raw.read()).decode())
    final = check_stream(events)  # created first, lifecycles in order, one terminal event, deltas == done text
    assert final["status"] == "completed" and final["output"][-1]["content"][0]["text"] == "Hello there!"
    stored = await client.responses.retrieve(final["id"])
    assert stored.output_text == "Hello there!"


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_anthropic_client_gets_a_valid_message_stream(start_upstream, start_gateway, kind):
    _, gw = await upstream_gateway(start_upstream, start_gateway, kind)
    events, final = await claude_stream(gw)
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert [b.text for b in final.content] == ["Hello there!"] and final.stop_reason == "end_turn"


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_gemini_client_gets_a_stream(start_upstream, start_gateway, kind):
    _, gw = await upstream_gateway(start_upstream, start_gateway, kind)
    chunks = [c async for c in await google(gw).aio.models.generate_content_stream(model="gemini-any", contents="Hi")]
    assert "".join(c.text or "" for c in chunks) == "Hello there!"
    assert chunks[-1].candidates[0].finish_reason is not None and chunks[-1].usage_metadata is not None


async def test_an_error_body_in_a_200_still_falls_back(start_upstream, start_gateway):
    broken = await start_upstream(json_handler({"error": {"message": "overloaded", "type": "server_error"}}))
    spare = await start_upstream(never_streams(upstream_kinds(False)["openai"][1]))
    gw = await start_gateway(gateway_config(connection("broken", broken), connection("spare", spare)))
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    assert raw.headers["x-gateway-attempts"] == "broken:server_error,spare:ok"
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text == "Hello there!"


async def test_a_native_responses_answer_keeps_its_own_id(start_upstream, start_gateway):
    """Streamed from a native connection's JSON answer, the response id is the upstream's: a follow-up's
    previous_response_id then still reaches that connection's own conversation state."""
    answer: dict[str, Any] = {
        "id": "resp_upstream_1", "object": "response", "created_at": 1, "status": "completed", "model": "m",
        "output": [{"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "native", "annotations": []}]}],
        "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
    }  # fmt: skip
    upstream = await start_upstream(json_handler(answer))
    gw = await start_gateway(gateway_config(connection("native", upstream, responses="native")))
    client = gw.client()
    async with client.responses.with_streaming_response.create(model="m", input="Hi", stream=True) as raw:
        final = check_stream(parse_sse((await raw.read()).decode()))
    assert final["id"] == "resp_upstream_1" and final["output"][-1]["content"][0]["text"] == "native"
    await client.responses.create(model="m", input="again", previous_response_id="resp_upstream_1")
    assert upstream.requests[-1].json["previous_response_id"] == "resp_upstream_1"


# --- the other way: an Anthropic or Gemini upstream that streams although asked for JSON -----------


def sse_only(body: bytes):
    """A provider that streams every answer, whatever it was asked for."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/event-stream")

    return handler


async def test_anthropic_client_gets_one_message_from_an_always_streaming_anthropic_upstream(
    start_upstream, start_gateway
):
    events = Answer([Block("thinking", ["Let me ", "think."]), Block("text", ["Hello", " there!"])]).events()
    upstream = await start_upstream(sse_only(b"".join(events)))
    gw = await start_gateway(gateway_config(connection("up", upstream, provider="anthropic")))
    client = claude(gw)
    try:
        raw = await client.messages.with_raw_response.create(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        )
    finally:
        await client.close()
    assert raw.headers["x-gateway-attempts"] == "up:ok" and raw.headers["content-type"] == "application/json"
    message = Message.model_validate(orjson.loads(raw.http_response.content))
    assert [b.type for b in message.content] == ["thinking", "text"] and message.content[1].text == "Hello there!"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0


async def test_gemini_client_gets_one_answer_from_an_always_streaming_gemini_upstream(start_upstream, start_gateway):
    chunks = [Chunk([{"text": "Hello"}]), Chunk([{"text": " there!"}], finish="STOP")]
    body = b"".join(b"data: " + orjson.dumps(chunk_body(c, i == 1)) + b"\r\n\r\n" for i, c in enumerate(chunks))
    upstream = await start_upstream(sse_only(body))
    gw = await start_gateway(gateway_config(connection("up", upstream, provider="gemini")))
    answer = await google(gw).aio.models.generate_content(model="gemini-any", contents="Hi")
    assert answer.text == "Hello there!" and answer.usage_metadata.prompt_token_count == USAGE["promptTokenCount"]
    assert answer.candidates[0].finish_reason == genai_types.FinishReason.STOP
