"""OpenAI-format clients served by Gemini connections; capability skipping; the three-provider chain."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_anthropic import anthropic_error
from .mock_gemini import Chunk, gemini_error, gemini_handler
from .mock_openai import error_handler, json_handler
from .responses_checks import answer_of, check_stream, parse_sse, validate_response

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
MESSAGES = [{"role": "user", "content": "Hi"}]
SIG = "c2lnLTE="
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]

ANSWERS = {
    "text": [Chunk([{"text": "Hel"}]), Chunk([{"text": "lo"}], finish="STOP")],
    "thought_then_text": [
        Chunk([{"text": "Pondering", "thought": True}]),
        Chunk([{"text": " more.", "thought": True}]),
        Chunk([{"text": "Answer."}], finish="STOP"),
    ],
    "function_calls": [
        Chunk(
            [
                {
                    "functionCall": {"id": "fc1", "name": "get_weather", "args": {"city": "Rome"}},
                    "thoughtSignature": "c2lnLTE=",
                }
            ]
        ),
        Chunk([{"functionCall": {"name": "get_time", "args": {}}}], finish="STOP"),
    ],
    "max_tokens": [Chunk([{"text": "Trunc"}], finish="MAX_TOKENS")],
    "safety": [Chunk([], finish="SAFETY")],
}
EXPECTED = {
    "text": ("Hello", "", [], "stop"),
    "thought_then_text": ("Answer.", "Pondering more.", [], "stop"),
    "function_calls": (None, "", ["get_weather", "get_time"], "tool_calls"),
    "max_tokens": ("Trunc", "", [], "length"),
    "safety": (None, "", [], "content_filter"),
}


def gemini(name: str, upstream, **extra: Any) -> dict[str, Any]:
    return connection(name, upstream, provider="gemini", **extra)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name", list(ANSWERS))
async def test_chat_client(start_upstream, start_gateway, name, stream):
    upstream = await start_upstream(gemini_handler(ANSWERS[name]))
    gw = await start_gateway(gateway_config(gemini("gem", upstream)))
    client = gw.client()
    text, reasoning, calls, finish = EXPECTED[name]
    if stream:
        chunks = [c async for c in await client.chat.completions.create(model="gemini-2.5-pro", messages=MESSAGES,
                                                                        stream=True)]  # fmt: skip
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        got_text = "".join(d.content or "" for d in deltas) or None
        got_reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        got_calls = [t.function.name for d in deltas for t in d.tool_calls or [] if t.function.name]
        got_finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert got_finish == [finish]
    else:
        raw = await client.chat.completions.with_raw_response.create(model="gemini-2.5-pro", messages=MESSAGES)
        completion = ChatCompletion.model_validate(orjson.loads(raw.content))
        message = completion.choices[0].message
        got_text, got_reasoning = message.content, getattr(message, "reasoning_content", None) or ""
        got_calls = [t.function.name for t in message.tool_calls or []]
        assert completion.choices[0].finish_reason == finish
        assert completion.usage.prompt_tokens == 12 and completion.usage.completion_tokens == 10
        assert completion.usage.completion_tokens_details.reasoning_tokens == 4
    assert (got_text, got_reasoning, got_calls) == (text, reasoning, calls)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name", ["text", "thought_then_text", "function_calls", "max_tokens"])
async def test_responses_client(start_upstream, start_gateway, name, stream):
    upstream = await start_upstream(gemini_handler(ANSWERS[name]))
    gw = await start_gateway(gateway_config(gemini("gem", upstream)))
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gw.url}/v1/responses", json={"model": "gemini-2.5-pro", "input": "Hi", "stream": stream},
                     headers=AUTH) as response,
    ):  # fmt: skip
        body = await response.text()
    final = check_stream(parse_sse(body)) if stream else validate_response(orjson.loads(body)).model_dump()
    got = answer_of(final)
    text, reasoning, calls, _ = EXPECTED[name]
    assert (got["text"], got["reasoning"], [n for _, n, _ in got["calls"]]) == (text, reasoning, calls)
    assert got["status"] == ("incomplete" if name == "max_tokens" else "completed")


async def test_exact_request_key_in_header_only_and_signature_round_trip(start_upstream, start_gateway):
    upstream = await start_upstream(gemini_handler(ANSWERS["function_calls"]))
    gw = await start_gateway(gateway_config(gemini("gem", upstream)))
    client = gw.client()
    first = await client.chat.completions.create(
        model="gemini-3-pro", tools=TOOLS, tool_choice="required", temperature=0.5, max_tokens=99, stop=["X"],
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        messages=[{"role": "system", "content": "Be exact."}, {"role": "user", "content": [
            {"type": "text", "text": "Look"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}}]}],
    )  # fmt: skip
    seen = upstream.requests[0]
    assert seen.path == "/models/gemini-3-pro:generateContent" and seen.query == ""
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["x-goog-api-key"] == "sk-upstream-secret-gem" and "authorization" not in headers
    assert "sk-upstream-secret" not in seen.path + seen.query
    assert seen.json == {
        "contents": [{"role": "user", "parts": [{"text": "Look"},
                                                {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/"}}]}],
        "systemInstruction": {"parts": [{"text": "Be exact."}]},
        "tools": [{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object"}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
        "generationConfig": {"maxOutputTokens": 99, "temperature": 0.5, "stopSequences": ["X"],
                             "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}},
    }  # fmt: skip
    calls = first.choices[0].message.tool_calls
    assert calls[0].function.arguments == '{"city":"Rome"}'
    # the client sends the turn back as it got it; Gemini gets its signature back on that part
    await client.chat.completions.create(
        model="gemini-3-pro",
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather?"},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp": 20}'},
            {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"},
        ],
    )
    replay = upstream.requests[1].json["contents"]
    assert replay[1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}, "id": "fc1"}, "thoughtSignature": SIG},
        {"functionCall": {"name": "get_time", "args": {}}}]}  # fmt: skip
    assert replay[2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 20}, "id": "fc1"}},
        {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}}]}  # fmt: skip


async def test_streaming_uses_sse_endpoint_and_crlf_framing(start_upstream, start_gateway):
    upstream = await start_upstream(gemini_handler(ANSWERS["thought_then_text"], crlf=True))
    gw = await start_gateway(gateway_config(gemini("gem", upstream)))
    stream = await gw.client().chat.completions.create(
        model="models/gemini-2.5-flash", messages=MESSAGES, stream=True, reasoning_effort="low"
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "Answer."
    seen = upstream.requests[0]
    assert seen.path == "/models/gemini-2.5-flash:streamGenerateContent" and seen.query == "alt=sse"
    assert seen.json["generationConfig"]["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 1024}


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_function_call_is_an_error_not_an_empty_stop(start_upstream, start_gateway, stream):
    broken = await start_upstream(gemini_handler([Chunk([], finish="MALFORMED_FUNCTION_CALL")]))
    spare = await start_upstream(gemini_handler(ANSWERS["text"]))
    gw = await start_gateway(gateway_config(gemini("a", broken), gemini("b", spare, priority=200)))
    raw = await gw.client().chat.completions.with_raw_response.create(model="g", messages=MESSAGES, stream=stream)
    assert raw.headers["x-gateway-attempts"] == "a:bad_response,b:ok"
    gw = await start_gateway(gateway_config(gemini("a", broken)))
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.client().chat.completions.create(model="g", messages=MESSAGES, stream=stream)
    assert caught.value.status_code == 502 and "MALFORMED_FUNCTION_CALL" in caught.value.message


async def test_503_before_the_first_event_falls_back(start_upstream, start_gateway):
    down = await start_upstream(gemini_error(503, "UNAVAILABLE", "The model is overloaded."))
    spare = await start_upstream(gemini_handler(ANSWERS["text"]))
    gw = await start_gateway(gateway_config(gemini("a", down), gemini("b", spare, priority=200)))
    raw = await gw.client().chat.completions.with_raw_response.create(model="g", messages=MESSAGES, stream=True)
    assert raw.headers["x-gateway-attempts"] == "a:server_error,b:ok"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("client_format", ["chat", "responses"])
async def test_chain_across_three_providers(start_upstream, start_gateway, client_format, stream):
    compat = await start_upstream(error_handler(500))
    claude = await start_upstream(anthropic_error(529, "overloaded_error", "Overloaded"))
    gem = await start_upstream(gemini_handler(ANSWERS["text"]))
    gw = await start_gateway(
        gateway_config(
            connection("compat", compat),
            connection("claude", claude, provider="anthropic", model="claude-sonnet-4-5", priority=200),
            gemini("gem", gem, model="gemini-2.5-pro", priority=300),
        )
    )
    client = gw.client()
    if client_format == "chat":
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, stream=stream)
        text = (
            "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
            if stream
            else raw.parse().choices[0].message.content
        )
    else:
        raw = await client.responses.with_raw_response.create(model="gpt-4o", input="Hi", stream=stream)
        text = [e async for e in raw.parse()][-1].response.output_text if stream else raw.parse().output_text
    assert text == "Hello"
    assert raw.headers["x-gateway-attempts"] == "compat:server_error,claude:server_error,gem:ok"
    assert raw.headers["x-gateway-connection"] == "gem"
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/metrics") as response:
        metrics = await response.text()
    assert 'gateway_fallbacks_total{from_connection="claude",reason="server_error",to_connection="gem"} 1.0' in metrics


async def test_connections_lacking_a_feature_are_skipped(start_upstream, start_gateway):
    no_tools = await start_upstream(json_handler())
    capable = await start_upstream(gemini_handler(ANSWERS["function_calls"]))
    gw = await start_gateway(
        gateway_config(
            connection("plain", no_tools, capabilities={"tools": False, "vision": False}),
            gemini("gem", capable, priority=200),
        )
    )
    raw = await gw.client().chat.completions.with_raw_response.create(model="m", messages=MESSAGES, tools=TOOLS)
    assert raw.headers["x-gateway-attempts"] == "plain:unsupported,gem:ok"
    assert no_tools.requests == []
    # a request without tools still goes to the first connection
    raw = await gw.client().chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    assert raw.headers["x-gateway-attempts"] == "plain:ok"
    # nothing can serve it: a 400 naming what is missing
    gw = await start_gateway(gateway_config(connection("plain", no_tools, capabilities={"tools": False})))
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client().chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS)
    assert "no support for tools" in caught.value.message


async def test_max_context_skips_small_connections(start_upstream, start_gateway):
    small = await start_upstream(json_handler())
    large = await start_upstream(gemini_handler(ANSWERS["text"]))
    gw = await start_gateway(
        gateway_config(
            connection("small", small, capabilities={"max_context": 100}), gemini("large", large, priority=200)
        )
    )
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "word " * 400}]
    )
    assert raw.headers["x-gateway-attempts"] == "small:unsupported,large:ok"


def test_api_version_shapes_the_preset_url_and_conflicts_with_base_url():
    from gateway.config.model import ConfigError
    from gateway.config.sections import parse_config

    def parse(**extra):
        return parse_config({"connections": [{"name": "g", "provider": "gemini", "api_key": "k", **extra}]})

    assert parse().connections[0].base_url == "https://generativelanguage.googleapis.com/v1beta"
    assert parse(api_version="v1").connections[0].base_url == "https://generativelanguage.googleapis.com/v1"
    with pytest.raises(ConfigError, match=r"connections\[0\]\.api_version: has no effect next to base_url"):
        parse(api_version="v1", base_url="https://proxy.example/v1beta")
