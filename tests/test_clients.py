"""Anthropic and Gemini clients (their official SDKs) against every kind of connection."""

from __future__ import annotations

from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from anthropic.types import Message
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_anthropic import Answer, Block, anthropic_error, anthropic_handler
from .mock_gemini import Chunk, gemini_error, gemini_handler
from .mock_openai import chunk, completion, error_handler, stream_handler

WEATHER_TOOL = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}


def openai_upstream(text: str = "Hello there!", call: tuple[str, str, str] | None = None):
    """A Chat upstream answering text, or one tool call; streamed when asked."""

    async def handler(request):
        from aiohttp import web

        body = await request.json()
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if call:
            deltas.append({"tool_calls": [{"index": 0, "id": call[0], "type": "function",
                                           "function": {"name": call[1], "arguments": ""}}]})  # fmt: skip
            deltas += [
                {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in (call[2][:5], call[2][5:])
            ]
        else:
            deltas += [{"content": text[:4]}, {"content": text[4:]}]
        finish = "tool_calls" if call else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
            if call:
                message["tool_calls"] = [{"id": call[0], "type": "function",
                                          "function": {"name": call[1], "arguments": call[2]}}]  # fmt: skip
            answer = completion(text, finish=finish)
            answer["choices"][0]["message"] = message
            return web.json_response(answer)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta in deltas:
            await response.write(b"data: " + orjson.dumps(chunk(delta)) + b"\n\n")
        await response.write(b"data: " + orjson.dumps(chunk({}, finish=finish)) + b"\n\n")
        usage = {**chunk({}), "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}
        await response.write(b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
        return response

    return handler


def upstream_kinds(call: bool):
    """(connection kwargs, handler) for each provider, answering text or a get_weather call."""
    args = '{"city": "Paris"}'
    return {
        "openai": ({}, openai_upstream(call=("call_1", "get_weather", args) if call else None)),
        "anthropic": (
            {"provider": "anthropic"},
            anthropic_handler(
                Answer([Block("tool_use", [args[:6], args[6:]], tool_id="call_1", name="get_weather")], "tool_use")
                if call
                else Answer([Block("text", ["Hello", " there!"])])
            ),
        ),
        "gemini": (
            {"provider": "gemini"},
            gemini_handler(
                [Chunk([{"functionCall": {"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}}}], "STOP")]
                if call
                else [Chunk([{"text": "Hello"}]), Chunk([{"text": " there!"}], finish="STOP")]
            ),
        ),
    }


def claude(gw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0, timeout=10)


async def claude_stream(gw, **request: Any) -> tuple[list[Any], Message]:
    """A streamed Messages request through the anthropic SDK: its events and the final message, valid."""
    client = claude(gw)
    try:
        async with client.messages.stream(
            model="m", max_tokens=100, messages=[{"role": "user", "content": "Hi"}], **request
        ) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_message()
    finally:
        await client.close()
    Message.model_validate(final.model_dump())
    return events, final


def google(gw, api_version: str = "v1beta") -> genai.Client:
    options = genai_types.HttpOptions(base_url=gw.url + "/", api_version=api_version)
    return genai.Client(api_key=CLIENT_KEY, http_options=options)


# --- Anthropic clients -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_anthropic_sdk_text_and_tool_round_trip(start_upstream, start_gateway, kind):
    extra, handler = upstream_kinds(call=False)[kind]
    text_up = await start_upstream(handler)
    extra_call, call_handler = upstream_kinds(call=True)[kind]
    call_up = await start_upstream(call_handler)
    gw = await start_gateway(
        gateway_config(connection("text", text_up, **extra), connection("tools", call_up, **extra_call),
                       routes={"chat-model": ["text"], "tool-model": ["tools"]})
    )  # fmt: skip
    client = claude(gw)
    try:
        message = await client.messages.create(
            model="chat-model", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        )
        Message.model_validate(message.model_dump())
        assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Hello there!"
        assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0

        asked = [{"role": "user", "content": "Weather in Paris?"}]
        message = await client.messages.create(model="tool-model", max_tokens=100, messages=asked, tools=[WEATHER_TOOL])
        (use,) = [b for b in message.content if b.type == "tool_use"]
        assert (use.id, use.name, use.input, message.stop_reason) == (
            "call_1",
            "get_weather",
            {"city": "Paris"},
            "tool_use",
        )
        # the round trip: the tool's result goes back, and reaches the upstream in its own format
        follow_up = [
            *asked,
            {"role": "assistant", "content": [b.model_dump() for b in message.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "21C"}]},
        ]
        await client.messages.create(model="tool-model", max_tokens=100, messages=follow_up, tools=[WEATHER_TOOL])
        sent = call_up.requests[-1].json
        if kind == "openai":
            assert sent["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "21C"}
        elif kind == "gemini":
            assert sent["contents"][-1]["parts"][0]["functionResponse"]["id"] == "call_1"
        else:  # same format: the bytes pass through, model rewritten only
            assert sent["messages"] == follow_up
    finally:
        await client.close()


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("call", [False, True])
async def test_anthropic_sdk_stream_and_final_message(start_upstream, start_gateway, kind, call):
    extra, handler = upstream_kinds(call)[kind]
    upstream = await start_upstream(handler)
    gw = await start_gateway(gateway_config(connection("up", upstream, **extra)))
    events, final = await claude_stream(gw, tools=[WEATHER_TOOL])
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    starts = [e.index for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == stops == list(range(len(final.content))), "blocks open and close in order, indexes contiguous"
    start = next(e for e in events if e.type == "message_start")
    assert start.message.usage is not None
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.usage.output_tokens > 0
    if call:
        (use,) = final.content
        assert use.type == "tool_use" and use.input == {"city": "Paris"} and final.stop_reason == "tool_use"
    else:
        assert [b.text for b in final.content] == ["Hello there!"] and final.stop_reason == "end_turn"


async def test_anthropic_passthrough_keeps_the_clients_headers(start_upstream, start_gateway):
    upstream = await start_upstream(anthropic_handler(Answer([Block("text", ["ok"])])))
    gw = await start_gateway(gateway_config(connection("claude", upstream, provider="anthropic", model="claude-real")))
    client = claude(gw)
    try:
        await client.messages.create(
            model="alias", max_tokens=50, messages=[{"role": "user", "content": "Hi"}], extra_body={"temperature": 0.5},
            extra_headers={"anthropic-beta": "fancy-2099"},
        )  # fmt: skip
    finally:
        await client.close()
    seen = upstream.requests[0]
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION
    assert headers["anthropic-beta"] == "fancy-2099" and headers["x-api-key"] == "sk-upstream-secret-claude"
    assert seen.json == {"model": "claude-real", "max_tokens": 50, "temperature": 0.5,
                         "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_client_falls_back_to_another_provider(start_upstream, start_gateway, stream):
    down = await start_upstream(anthropic_error(529, "overloaded_error", "Overloaded"))
    openai_up = await start_upstream(openai_upstream())
    gw = await start_gateway(gateway_config(connection("claude", down, provider="anthropic"),
                                            connection("compat", openai_up, priority=200)))  # fmt: skip
    async with aiohttp.ClientSession() as session, session.post(
        f"{gw.url}/v1/messages", headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"},
        json={"model": "m", "max_tokens": 10, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]},
    ) as response:  # fmt: skip
        assert response.headers["x-gateway-attempts"] == "claude:server_error,compat:ok"
        text = await response.text()
    if stream:
        assert all(block.startswith("event: ") for block in text.strip().split("\n\n")), (
            "every event has its event: line"
        )
    else:
        assert Message.model_validate(orjson.loads(text)).content[0].text == "Hello there!"


async def test_anthropic_errors_in_anthropic_shape(start_upstream, start_gateway):
    upstream = await start_upstream(error_handler(500))
    gw = await start_gateway(gateway_config(connection("compat", upstream)))
    bad_key = anthropic.AsyncAnthropic(base_url=gw.url, api_key="wrong", max_retries=0)
    client = claude(gw)
    try:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await bad_key.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "authentication_error"
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens="many")  # type: ignore[arg-type]
        assert caught.value.body["error"]["type"] == "invalid_request_error"
        with pytest.raises(anthropic.InternalServerError) as caught:
            await client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert caught.value.status_code == 502 and caught.value.body["error"]["type"] == "api_error"
    finally:
        await client.close()
        await bad_key.close()


async def test_anthropic_models_list_and_count_tokens(start_upstream, start_gateway):
    async def counter(request):
        from aiohttp import web

        return web.json_response({"input_tokens": 42})

    claude_up = await start_upstream(counter)
    gw = await start_gateway(gateway_config(connection("compat", "http://127.0.0.1:9/v1", model="gpt-x"),
                                            connection("claude", claude_up, provider="anthropic",
                                                       models={"claude-y": "claude-real"})))  # fmt: skip
    client = claude(gw)
    try:
        models = [m async for m in client.models.list()]
        assert [(m.id, m.type) for m in models] == [("gpt-x", "model"), ("claude-y", "model")]
        estimate = await client.messages.count_tokens(
            model="gpt-only", messages=[{"role": "user", "content": "x" * 400}]
        )
        assert estimate.input_tokens == 100  # no Anthropic connection serves it: the estimate
        counted = await client.messages.count_tokens(model="claude-y", messages=[{"role": "user", "content": "x"}])
        assert counted.input_tokens == 42
        assert claude_up.requests[0].path == "/messages/count_tokens"
        assert claude_up.requests[0].json["model"] == "claude-real"
    finally:
        await client.close()
    async with aiohttp.ClientSession() as session, session.get(
        f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"}
    ) as response:  # fmt: skip
        assert (await response.json())["object"] == "list"  # no anthropic-version: OpenAI's shape


# --- Gemini clients ----------------------------------------------------------------------------


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_genai_sdk_generate_and_stream(start_upstream, start_gateway, kind, api_version):
    extra, handler = upstream_kinds(call=False)[kind]
    upstream = await start_upstream(handler)
    gw = await start_gateway(gateway_config(connection("up", upstream, **extra)))
    client = google(gw, api_version)
    answer = await client.aio.models.generate_content(model="gemini-any", contents="Hi")
    assert answer.text == "Hello there!" and answer.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert answer.usage_metadata.prompt_token_count > 0
    pieces = [c.text async for c in await client.aio.models.generate_content_stream(model="gemini-any", contents="Hi")]
    assert "".join(p or "" for p in pieces) == "Hello there!"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_genai_sdk_tool_round_trip(start_upstream, start_gateway, kind, stream):
    extra, handler = upstream_kinds(call=True)[kind]
    upstream = await start_upstream(handler)
    gw = await start_gateway(gateway_config(connection("up", upstream, **extra)))
    client = google(gw)
    tool = genai_types.Tool(function_declarations=[genai_types.FunctionDeclaration(
        name="get_weather", description="Weather", parameters_json_schema={"type": "object"})])  # fmt: skip
    config = genai_types.GenerateContentConfig(tools=[tool])
    if stream:
        chunks = [c async for c in await client.aio.models.generate_content_stream(
            model="g", contents="Weather in Paris?", config=config)]  # fmt: skip
        answer = next(c for c in chunks if c.function_calls)
    else:
        answer = await client.aio.models.generate_content(model="g", contents="Weather in Paris?", config=config)
    (call,) = answer.function_calls
    assert (call.name, call.args) == ("get_weather", {"city": "Paris"})
    contents = [
        genai_types.Content(role="user", parts=[genai_types.Part(text="Weather in Paris?")]),
        answer.candidates[0].content,
        genai_types.Content(role="user", parts=[genai_types.Part(function_response=genai_types.FunctionResponse(
            id=call.id, name="get_weather", response={"temp": 21}))]),
    ]  # fmt: skip
    await client.aio.models.generate_content(model="g", contents=contents, config=config)
    sent = upstream.requests[-1].json
    if kind == "openai":
        assert sent["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": '{"temp":21}'}
    elif kind == "anthropic":
        assert sent["messages"][-1]["content"] == [{"type": "tool_result", "tool_use_id": call.id,
                                                    "content": '{"temp":21}'}]  # fmt: skip
    else:  # same format: passed through
        assert sent["contents"][-1]["parts"][0]["functionResponse"]["response"] == {"temp": 21}


async def test_genai_falls_back_and_errors_in_gemini_shape(start_upstream, start_gateway):
    down = await start_upstream(gemini_error(503, "UNAVAILABLE", "overloaded"))
    spare = await start_upstream(openai_upstream())
    gw = await start_gateway(gateway_config(connection("gem", down, provider="gemini"),
                                            connection("compat", spare, priority=200)))  # fmt: skip
    answer = await google(gw).aio.models.generate_content(model="g", contents="Hi")
    assert answer.text == "Hello there!"
    bad = genai.Client(
        api_key="wrong", http_options=genai_types.HttpOptions(base_url=gw.url + "/", api_version="v1beta")
    )
    with pytest.raises(genai_errors.ClientError) as caught:
        await bad.aio.models.generate_content(model="g", contents="Hi")
    assert caught.value.code == 401 and caught.value.status == "UNAUTHENTICATED"
    async with aiohttp.ClientSession() as session, session.post(
        f"{gw.url}/v1beta/models/g:generateContent?key={CLIENT_KEY}", data=b"{broken"
    ) as response:  # fmt: skip
        body = await response.json()
        assert response.status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    async with aiohttp.ClientSession() as session, session.post(
        f"{gw.url}/v1beta/models/g:streamGenerateContent?key={CLIENT_KEY}", json={"contents": [
            {"role": "user", "parts": [{"text": "Hi"}]}]}
    ) as response:  # fmt: skip
        array = await response.json()
        assert isinstance(array, list) and array[0]["candidates"][0]["content"]["parts"][0]["text"] == "Hello there!"


async def test_genai_models_list(start_upstream, start_gateway):
    gw = await start_gateway(gateway_config(connection("a", "http://127.0.0.1:9/v1", model="gpt-x"),
                                            connection("b", "http://127.0.0.1:9/v1", model="gemini-z")))  # fmt: skip
    names = [m.name async for m in await google(gw).aio.models.list()]
    assert names == ["models/gpt-x", "models/gemini-z"]


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_client_reaches_a_native_responses_connection_through_its_api(
    start_upstream, start_gateway, stream
):
    """A native Responses connection is asked through /responses (reasoning kept), and through
    Chat Completions when the request needs what Responses lacks (stop sequences)."""
    from .responses_checks import parse_sse
    from .test_responses import SCENARIOS, chat_upstream

    produced = await start_upstream(chat_upstream(SCENARIOS["reasoning_then_text"]))
    helper = await start_gateway(gateway_config(connection("chat", produced)))
    async with aiohttp.ClientSession() as session, session.post(
        f"{helper.url}/v1/responses", headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "m", "input": "Hi", "stream": True},
    ) as response:  # fmt: skip
        events = parse_sse(await response.text())  # a real Responses event sequence to replay

    async def native(request):
        from aiohttp import web

        body = await request.json()
        if request.path.endswith("/chat/completions"):
            return await chat_upstream(SCENARIOS["text"])(request)
        if not body.get("stream"):
            return web.json_response(events[-1]["response"])
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for event in events:
            await out.write(f"event: {event['type']}\n".encode() + b"data: " + orjson.dumps(event) + b"\n\n")
        return out

    upstream = await start_upstream(native)
    gw = await start_gateway(gateway_config(connection("openai", upstream, responses="native")))
    client = claude(gw)
    try:
        kwargs = {"model": "gpt-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
        if stream:
            async with client.messages.stream(**kwargs) as s:
                message = await s.get_final_message()
        else:
            message = await client.messages.create(**kwargs)
        assert [b.type for b in message.content] == ["thinking", "text"]
        assert message.content[0].thinking == "The user greets." and message.content[1].text == "Hi!"
        sent = upstream.requests[0]
        assert sent.path == "/responses" and sent.json["store"] is False and sent.json["max_output_tokens"] == 64
        assert sent.json["input"] == [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
        ]
        await client.messages.create(**kwargs, stop_sequences=["END"])
        assert upstream.requests[-1].path == "/chat/completions" and upstream.requests[-1].json["stop"] == ["END"]
    finally:
        await client.close()


@pytest.mark.parametrize("order", ["interleaved", "one_after_another"])
async def test_anthropic_sdk_gets_parallel_tool_calls_whose_arguments_interleave(start_upstream, start_gateway, order):
    """A Chat upstream may send the arguments of parallel calls interleaved; Anthropic blocks close in
    order, so the second call waits, whole, for the end of the message."""

    def sse(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps(chunk(delta, finish=finish)) + b"\n\n"

    def start(index: int, name: str) -> bytes:
        call = {"index": index, "id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": ""}}
        return sse({"tool_calls": [call]})

    def args(index: int, piece: str) -> bytes:
        return sse({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})

    if order == "interleaved":
        events = [start(0, "get_weather"), start(1, "get_time"), args(0, '{"city": '), args(1, '{"tz": '),
                  args(0, '"Paris"}'), args(1, '"CET"}')]  # fmt: skip
    else:
        events = [start(0, "get_weather"), args(0, '{"city": '), args(0, '"Paris"}'),
                  start(1, "get_time"), args(1, '{"tz": '), args(1, '"CET"}')]  # fmt: skip
    events += [sse({}, finish="tool_calls"), b"data: [DONE]\n\n"]
    upstream = await start_upstream(stream_handler(events))
    gw = await start_gateway(gateway_config(connection("up", upstream)))
    events_seen, final = await claude_stream(gw, tools=[WEATHER_TOOL])
    starts = [e.index for e in events_seen if e.type == "content_block_start"]
    stops = [e.index for e in events_seen if e.type == "content_block_stop"]
    assert starts == stops == [0, 1]
    assert [(b.id, b.name, b.input) for b in final.content] == [
        ("call_0", "get_weather", {"city": "Paris"}),
        ("call_1", "get_time", {"tz": "CET"}),
    ]
    assert final.stop_reason == "tool_use"
