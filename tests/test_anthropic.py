"""OpenAI-format clients (Chat Completions and Responses) served by Anthropic connections."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_anthropic import Answer, Block, anthropic_error, anthropic_handler
from .mock_openai import error_handler
from .responses_checks import answer_of, check_stream, parse_sse, validate_response

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
MESSAGES = [{"role": "user", "content": "Hi"}]

ANSWERS = {
    "text": Answer([Block("text", ["Hel", "lo!"])]),
    "tool_use": Answer(
        [
            Block("text", ["Checking."]),
            Block("tool_use", ['{"ci', 'ty": "Pa', 'ris"}'], tool_id="toolu_01", name="get_weather"),
        ],
        stop_reason="tool_use",
    ),
    "thinking": Answer([Block("thinking", ["Let me ", "think."], signature="sig-abc"), Block("text", ["Four."])]),
    "parallel_tools": Answer(
        [
            Block("tool_use", ['{"city":', '"Oslo"}'], tool_id="toolu_a", name="get_weather"),
            Block("tool_use", ['{"tz":"CET"}'], tool_id="toolu_b", name="get_time"),
        ],
        stop_reason="tool_use",
    ),
    "max_tokens": Answer([Block("text", ["Cut"])], stop_reason="max_tokens"),
    "no_arguments": Answer([Block("tool_use", [], tool_id="toolu_n", name="ping")], stop_reason="tool_use"),
}
EXPECTED = {
    "text": {"text": "Hello!", "reasoning": "", "calls": [], "finish": "stop"},
    "tool_use": {
        "text": "Checking.",
        "reasoning": "",
        "calls": [("toolu_01", "get_weather", '{"city": "Paris"}')],
        "finish": "tool_calls",
    },
    "thinking": {"text": "Four.", "reasoning": "Let me think.", "calls": [], "finish": "stop"},
    "parallel_tools": {
        "text": None,
        "reasoning": "",
        "calls": [("toolu_a", "get_weather", '{"city":"Oslo"}'), ("toolu_b", "get_time", '{"tz":"CET"}')],
        "finish": "tool_calls",
    },
    "max_tokens": {"text": "Cut", "reasoning": "", "calls": [], "finish": "length"},
    "no_arguments": {"text": None, "reasoning": "", "calls": [("toolu_n", "ping", "{}")], "finish": "tool_calls"},
}


def anthropic(name: str, upstream, **extra: Any) -> dict[str, Any]:
    return connection(name, upstream, provider="anthropic", **extra)


def same_json(a: str, b: str) -> bool:
    return orjson.loads(a) == orjson.loads(b)


@pytest.mark.parametrize("name", list(ANSWERS))
async def test_chat_client_non_streaming(start_upstream, start_gateway, name):
    upstream = await start_upstream(anthropic_handler(ANSWERS[name]))
    gw = await start_gateway(gateway_config(anthropic("claude", upstream)))
    raw = await gw.client().chat.completions.with_raw_response.create(model="claude-sonnet-4-5", messages=MESSAGES)
    completion = ChatCompletion.model_validate(orjson.loads(raw.content))
    expected = EXPECTED[name]
    message = completion.choices[0].message
    assert message.content == expected["text"]
    assert (getattr(message, "reasoning_content", None) or "") == expected["reasoning"]
    calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert [(i, n) for i, n, _ in calls] == [(i, n) for i, n, _ in expected["calls"]]
    assert all(same_json(a, b) for (_, _, a), (_, _, b) in zip(calls, expected["calls"], strict=True))
    assert completion.choices[0].finish_reason == expected["finish"]
    assert completion.usage.prompt_tokens == 40 and completion.usage.prompt_tokens_details.cached_tokens == 10
    assert completion.usage.completion_tokens == 17


@pytest.mark.parametrize("name", list(ANSWERS))
async def test_chat_client_streaming(start_upstream, start_gateway, name):
    upstream = await start_upstream(anthropic_handler(ANSWERS[name]))
    gw = await start_gateway(gateway_config(anthropic("claude", upstream)))
    stream = await gw.client().chat.completions.create(
        model="claude-sonnet-4-5", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [ChatCompletionChunk.model_validate(c.model_dump()) async for c in stream]
    expected = EXPECTED[name]
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    text = "".join(d.content or "" for d in deltas)
    assert text == (expected["text"] or "")
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning == expected["reasoning"]
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        for call in delta.tool_calls or []:
            if call.id:
                assert call.index == len(calls), "tool call indexes are contiguous from 0"
                calls[call.index] = [call.id, call.function.name, ""]
            calls[call.index][2] += call.function.arguments or ""
    assert [(i, n) for i, n, _ in calls.values()] == [(i, n) for i, n, _ in expected["calls"]]
    for (_, _, got), (_, _, want) in zip(calls.values(), expected["calls"], strict=True):
        assert same_json(got, want), "argument pieces join into the whole JSON"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [expected["finish"]]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 57


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name", ["text", "tool_use", "thinking", "parallel_tools", "max_tokens"])
async def test_responses_client(start_upstream, start_gateway, name, stream):
    upstream = await start_upstream(anthropic_handler(ANSWERS[name]))
    gw = await start_gateway(gateway_config(anthropic("claude", upstream)))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gw.url}/v1/responses", json={"model": "claude-opus-4-7", "input": "Hi", "stream": stream}, headers=AUTH
        ) as response,
    ):
        text = await response.text()
    final = check_stream(parse_sse(text)) if stream else validate_response(orjson.loads(text)).model_dump()
    got, expected = answer_of(final), EXPECTED[name]
    assert got["text"] == expected["text"] and got["reasoning"] == expected["reasoning"]
    assert [(i, n) for i, n, _ in got["calls"]] == [(i, n) for i, n, _ in expected["calls"]]
    assert got["status"] == ("incomplete" if name == "max_tokens" else "completed")
    if name == "thinking":  # the signature rides along, so the client can replay the reasoning
        reasoning = next(o for o in final["output"] if o["type"] == "reasoning")
        assert reasoning["encrypted_content"] == "sig-abc"


async def test_exact_request_body_system_tools_and_results(start_upstream, start_gateway):
    upstream = await start_upstream(anthropic_handler(ANSWERS["text"]))
    gw = await start_gateway(gateway_config(anthropic("claude", upstream, max_tokens_default=1234)))
    await gw.client().chat.completions.create(
        model="claude-3-5-haiku",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
                {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "12C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "10:00"},
            {"role": "user", "content": "Thanks"},
        ],
        tools=[{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                 "parameters": {"type": "object"}}}],
        tool_choice="required",
        parallel_tool_calls=False,
        stop=["END"],
        temperature=0.3,
        top_p=0.8,
        user="u-9",
        extra_headers={"anthropic-beta": "tools-2099"},
    )  # fmt: skip
    (seen,) = upstream.requests
    assert seen.path == "/messages"
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["x-api-key"] == "sk-upstream-secret-claude" and "authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01" and headers["anthropic-beta"] == "tools-2099"
    assert seen.json == {
        "model": "claude-3-5-haiku",
        "max_tokens": 1234,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": "iVBOR"}}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "10:00"},
                {"type": "text", "text": "Thanks"}]},
        ],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}, "description": "Weather"}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "top_p": 0.8,
        "metadata": {"user_id": "u-9"},
    }  # fmt: skip


SAMPLING = [
    # model, connection's anthropic_version, reasoning effort -> the sampling fields sent
    ("claude-3-5-haiku-20241022", "2023-06-01", None, {"temperature": 0.3, "top_p": 0.8}),
    ("claude-sonnet-4-5-20250929", "2023-06-01", None, {"temperature": 0.3}),
    ("claude-opus-4-1", "2023-06-01", None, {"temperature": 0.3}),
    ("claude-opus-4-7", "2023-06-01", None, {}),
    ("claude-future-9", "2023-06-01", None, {}),
    ("claude-3-5-haiku-20241022", "2026-10-21", None, {}),
    ("claude-sonnet-4-5", "2023-06-01", "low", {"thinking": {"type": "enabled", "budget_tokens": 2048}}),
    ("claude-opus-4-7", "2023-06-01", "high", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}}),
]


@pytest.mark.parametrize(("model", "version", "effort", "sent"), SAMPLING)
async def test_sampling_rules_per_model_prefix_and_api_version(
    start_upstream, start_gateway, model, version, effort, sent
):
    upstream = await start_upstream(anthropic_handler(ANSWERS["text"]))
    gw = await start_gateway(gateway_config(anthropic("claude", upstream, anthropic_version=version)))
    extra = {"reasoning_effort": effort} if effort else {}
    await gw.client().chat.completions.create(
        model=model, messages=MESSAGES, temperature=0.3, top_p=0.8, max_tokens=4000, **extra
    )
    body = upstream.requests[0].json
    keys = ("temperature", "top_p", "top_k", "thinking", "output_config")
    assert {k: body[k] for k in keys if k in body} == sent
    assert upstream.requests[0].headers["anthropic-version"] == version


async def test_sampling_rules_are_overridable(start_upstream, start_gateway):
    upstream = await start_upstream(anthropic_handler(ANSWERS["text"]))
    rules = [{"prefix": "claude-opus-4-7", "samplers": ["top_p"]}]
    gw = await start_gateway(gateway_config(anthropic("claude", upstream), anthropic_sampling_rules=rules))
    await gw.client().chat.completions.create(model="claude-opus-4-7", messages=MESSAGES, temperature=0.3, top_p=0.8)
    body = upstream.requests[0].json
    assert "temperature" not in body and body["top_p"] == 0.8


async def test_thinking_is_replayed_with_its_signature(start_upstream, start_gateway):
    upstream = await start_upstream(anthropic_handler(ANSWERS["thinking"]))
    gw = await start_gateway(gateway_config(anthropic("claude", upstream)))
    first = await gw.client().responses.create(model="claude-opus-4-7", input="2+2?")
    await gw.client().responses.create(model="claude-opus-4-7", input="And 3+3?", previous_response_id=first.id)
    replay = upstream.requests[1].json["messages"]
    thinking = {"type": "thinking", "thinking": "Let me think.", "signature": "sig-abc"}
    assert replay[1] == {"role": "assistant", "content": [thinking, {"type": "text", "text": "Four."}]}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("client_format", ["chat", "responses"])
async def test_chain_openai_compatible_500_then_anthropic(start_upstream, start_gateway, stream, client_format):
    failing = await start_upstream(error_handler(500))
    claude = await start_upstream(anthropic_handler(ANSWERS["tool_use"]))
    gw = await start_gateway(
        gateway_config(
            connection("compat", failing), anthropic("claude", claude, priority=200, model="claude-sonnet-4-5")
        )
    )
    client = gw.client()
    if client_format == "chat":
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, stream=stream)
        assert raw.headers["x-gateway-attempts"] == "compat:server_error,claude:ok"
        if stream:
            text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
        else:
            text = raw.parse().choices[0].message.content
        assert text == "Checking."
    else:
        raw = await client.responses.with_raw_response.create(model="gpt-4o", input="Hi", stream=stream)
        assert raw.headers["x-gateway-attempts"] == "compat:server_error,claude:ok"
        if stream:
            events = [e async for e in raw.parse()]
            final = events[-1].response
        else:
            final = raw.parse()
        assert final.output_text == "Checking." and final.output[-1].type == "function_call"
    assert claude.requests[0].json["model"] == "claude-sonnet-4-5"


async def test_overloaded_before_first_event_falls_back(start_upstream, start_gateway):
    overloaded = await start_upstream(anthropic_error(529, "overloaded_error", "Overloaded"))
    spare = await start_upstream(anthropic_handler(ANSWERS["text"]))
    gw = await start_gateway(gateway_config(anthropic("a", overloaded), anthropic("b", spare, priority=200)))
    raw = await gw.client().chat.completions.with_raw_response.create(model="claude-x", messages=MESSAGES, stream=True)
    assert raw.headers["x-gateway-attempts"] == "a:server_error,b:ok"
    assert "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices]) == "Hello!"


async def test_overloaded_error_event_before_content_falls_back(start_upstream, start_gateway):
    overloaded = await start_upstream(anthropic_handler(Answer([Block("text", ["never"])], fail_after=0)))
    spare = await start_upstream(anthropic_handler(ANSWERS["text"]))
    gw = await start_gateway(gateway_config(anthropic("a", overloaded), anthropic("b", spare, priority=200)))
    raw = await gw.client().chat.completions.with_raw_response.create(model="claude-x", messages=MESSAGES, stream=True)
    assert raw.headers["x-gateway-attempts"] == "a:server_error,b:ok"


@pytest.mark.parametrize("client_format", ["chat", "responses"])
async def test_overloaded_after_first_event_ends_the_stream_with_an_error(start_upstream, start_gateway, client_format):
    overloaded = await start_upstream(anthropic_handler(Answer([Block("text", ["Hel", "lo"])], fail_after=1)))
    spare = await start_upstream(anthropic_handler(ANSWERS["text"]))
    gw = await start_gateway(gateway_config(anthropic("a", overloaded), anthropic("b", spare, priority=200)))
    client = gw.client()
    received = []
    with pytest.raises(openai.APIError) as caught:
        if client_format == "chat":
            stream = await client.chat.completions.create(model="claude-x", messages=MESSAGES, stream=True)
            async for c in stream:
                received.extend(ch.delta.content or "" for ch in c.choices)
        else:
            async with client.responses.stream(model="claude-x", input="Hi") as stream:
                async for event in stream:
                    if event.type == "response.output_text.delta":
                        received.append(event.delta)
    assert "".join(received) == "Hel" and "overloaded_error" in str(caught.value.message)
    assert spare.requests == []


async def test_context_too_long_400_falls_back_and_plain_400_does_not(start_upstream, start_gateway):
    too_long = await start_upstream(anthropic_error(400, "invalid_request_error", "prompt is too long: 300000 tokens"))
    spare = await start_upstream(anthropic_handler(ANSWERS["text"]))
    gw = await start_gateway(gateway_config(anthropic("a", too_long), anthropic("b", spare, priority=200)))
    raw = await gw.client().chat.completions.with_raw_response.create(model="claude-x", messages=MESSAGES)
    assert raw.headers["x-gateway-attempts"] == "a:context_length,b:ok"
    bad = await start_upstream(anthropic_error(400, "invalid_request_error", "messages.0.content: field required"))
    gw = await start_gateway(gateway_config(anthropic("a", bad), anthropic("b", spare, priority=200)))
    with pytest.raises(openai.BadRequestError):
        await gw.client().chat.completions.create(model="claude-x", messages=MESSAGES)
