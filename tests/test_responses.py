"""POST /v1/responses on Chat-only connections (downgraded) and native ones, streamed and not."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_openai import CREATED, chunk, error_handler
from .responses_checks import answer_of, check_stream, parse_sse, validate_response

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
USAGE = {
    "prompt_tokens": 21,
    "completion_tokens": 7,
    "total_tokens": 28,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def call(index: int, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict[str, Any]:
    """A Chat tool-call delta: the first carries id and name, later ones only argument pieces."""
    fn: dict[str, Any] = {"arguments": arguments}
    entry: dict[str, Any] = {"index": index, "function": fn}
    if call_id:
        entry.update(id=call_id, type="function")
        fn["name"] = name
    return entry


@dataclass
class Scenario:
    """A Chat upstream's answer, as deltas: streamed as chunks, or folded into one JSON body."""

    deltas: list[dict[str, Any]]
    finish: str = "stop"
    usage: bool = True
    expect: dict[str, Any] = field(default_factory=dict)

    def chunks(self, crlf: bool = False) -> bytes:
        events = [chunk({"role": "assistant", "content": ""})] + [chunk(d) for d in self.deltas]
        events.append(chunk({}, finish=self.finish))
        if self.usage:
            events.append({**chunk({}), "choices": [], "usage": USAGE})
        end = b"\r\n" if crlf else b"\n"
        raw = b"".join(b"data: " + orjson.dumps(e) + end + end for e in events)
        return raw + b"data: [DONE]" + end + end

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(d.get("content", "") for d in self.deltas)}
        reasoning = "".join(d.get("reasoning_content", "") + d.get("reasoning", "") for d in self.deltas)
        if reasoning:
            message["reasoning_content"] = reasoning
        calls: dict[int, dict[str, Any]] = {}
        for delta in self.deltas:
            for piece in delta.get("tool_calls", []):
                entry = calls.setdefault(
                    piece["index"],
                    {"id": piece.get("id"), "type": "function", "function": {"name": None, "arguments": ""}},
                )
                entry["function"]["name"] = entry["function"]["name"] or piece["function"].get("name")
                entry["function"]["arguments"] += piece["function"]["arguments"]
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        body = {"id": "chatcmpl-1", "object": "chat.completion", "created": CREATED, "model": "up",
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish}]}  # fmt: skip
        if self.usage:
            body["usage"] = USAGE
        return body


SCENARIOS = {
    "text": Scenario(
        [{"content": "Hel"}, {"content": "lo, "}, {"content": "world"}], expect={"text": "Hello, world", "calls": []}
    ),
    "reasoning_then_text": Scenario(
        [{"reasoning_content": "The user "}, {"reasoning_content": "greets."}, {"content": "Hi!"}],
        expect={"text": "Hi!", "reasoning": "The user greets."},
    ),
    "reasoning_field": Scenario(  # OpenRouter / Groq style
        [{"reasoning": "Think."}, {"content": "Done."}], expect={"text": "Done.", "reasoning": "Think."}
    ),
    "text_and_tool_call": Scenario(
        [
            {"content": "Let me check."},
            {"tool_calls": [call(0, "call_w", "get_weather")]},
            {"tool_calls": [call(0, arguments='{"city":')]},
            {"tool_calls": [call(0, arguments='"Paris"}')]},
        ],
        finish="tool_calls",
        expect={"text": "Let me check.", "calls": [("call_w", "get_weather", '{"city":"Paris"}')]},
    ),
    "parallel_tool_calls": Scenario(
        [
            {"tool_calls": [call(0, "call_a", "get_weather", '{"city":"Oslo"}')]},
            {"tool_calls": [call(1, "call_b", "get_time")]},
            {"tool_calls": [call(1, arguments='{"tz":"CET"}')]},
        ],
        finish="tool_calls",
        expect={
            "text": None,
            "calls": [("call_a", "get_weather", '{"city":"Oslo"}'), ("call_b", "get_time", '{"tz":"CET"}')],
        },
    ),
    "length": Scenario(
        [{"content": "A very long"}], finish="length", expect={"text": "A very long", "status": "incomplete"}
    ),
    "no_usage": Scenario([{"content": "No usage here."}], usage=False, expect={"text": "No usage here."}),
}


def chat_upstream(scenario: Scenario, *, always_stream: bool = False, crlf: bool = False, split: int = 0):
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream") and not always_stream:
            return web.json_response(scenario.completion())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        raw = scenario.chunks(crlf)
        step = split or len(raw)
        for i in range(0, len(raw), step):
            await response.write(raw[i : i + step])
        await response.write_eof()
        return response

    return handler


async def post_raw(gw, body: dict[str, Any]) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.post(f"{gw.url}/v1/responses", json=body, headers=AUTH) as r:
        return r.status, dict(r.headers), await r.text()


def expect(answer: dict[str, Any], scenario: Scenario) -> None:
    for key, value in scenario.expect.items():
        assert answer[key] == value, key
    if "status" not in scenario.expect:
        assert answer["status"] == "completed"


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_downgraded_non_streaming(start_upstream, start_gateway, name):
    scenario = SCENARIOS[name]
    upstream = await start_upstream(chat_upstream(scenario))
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    status, headers, text = await post_raw(gw, {"model": "gpt-x", "input": "Hi", "max_output_tokens": 50})
    assert status == 200, text
    body = orjson.loads(text)
    validate_response(body)
    expect(answer_of(body), scenario)
    assert body["model"] == "gpt-x" and body["id"].startswith("resp_")
    if scenario.usage:
        assert body["usage"]["input_tokens"] == 21 and body["usage"]["output_tokens_details"]["reasoning_tokens"] == 2
        assert body["usage"]["input_tokens_details"]["cached_tokens"] == 4 and "x-gateway-usage" not in headers
    else:
        assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
        assert headers["x-gateway-usage"] == "estimated"
    if name == "length":
        assert body["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_downgraded_streaming(start_upstream, start_gateway, name):
    scenario = SCENARIOS[name]
    upstream = await start_upstream(chat_upstream(scenario))
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    status, headers, text = await post_raw(gw, {"model": "gpt-x", "input": "Hi", "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    final = check_stream(parse_sse(text))
    expect(answer_of(final), scenario)
    assert final["usage"]["total_tokens"] > 0
    assert upstream.requests[0].json["stream_options"] == {"include_usage": True}


async def test_sdk_stream_helper_and_create(start_upstream, start_gateway):
    scenario = SCENARIOS["text_and_tool_call"]
    upstream = await start_upstream(chat_upstream(scenario))
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    client = gw.client()
    async with client.responses.stream(model="gpt-x", input="Weather?") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "Let me check."
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [("call_w", "get_weather", '{"city":"Paris"}')]
    created = await client.responses.create(model="gpt-x", input="Weather?")
    assert created.output_text == "Let me check." and created.status == "completed"


async def test_think_tags_become_reasoning(start_upstream, start_gateway):
    pieces = ["<thi", "nk>Weigh", "ing it</th", "ink>\n\n", "The answer", " is 4."]
    scenario = Scenario([{"content": p} for p in pieces])
    upstream = await start_upstream(chat_upstream(scenario))
    gw = await start_gateway(gateway_config(connection("chat", upstream, reasoning_tags=True)))
    _, _, text = await post_raw(gw, {"model": "m", "input": "2+2?", "stream": True})
    answer = answer_of(check_stream(parse_sse(text)))
    assert answer["reasoning"] == "Weighing it" and answer["text"] == "The answer is 4."
    _, _, text = await post_raw(gw, {"model": "m", "input": "2+2?"})
    answer = answer_of(orjson.loads(text))
    assert answer["reasoning"] == "Weighing it" and answer["text"] == "The answer is 4."


async def test_crlf_framing_split_across_reads(start_upstream, start_gateway):
    scenario = SCENARIOS["text_and_tool_call"]
    upstream = await start_upstream(chat_upstream(scenario, crlf=True, split=7))
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    _, _, text = await post_raw(gw, {"model": "m", "input": "Hi", "stream": True})
    expect(answer_of(check_stream(parse_sse(text))), scenario)


async def test_sse_answer_to_json_request_is_aggregated(start_upstream, start_gateway):
    scenario = SCENARIOS["reasoning_then_text"]
    upstream = await start_upstream(chat_upstream(scenario, always_stream=True))
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    _, _, text = await post_raw(gw, {"model": "m", "input": "Hi"})
    expect(answer_of(validate_response(orjson.loads(text)).model_dump()), scenario)
    raw = await gw.client().chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Hi"}]
    )
    completion = ChatCompletion.model_validate(orjson.loads(raw.content))
    assert completion.choices[0].message.content == "Hi!" and completion.usage.total_tokens == 28
    assert raw.headers["Content-Type"] == "application/json"


async def test_failure_after_commit_ends_with_error_then_failed(start_upstream, start_gateway):
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta in ({"role": "assistant", "content": ""}, {"content": "partial"}):
            await response.write(b"data: " + orjson.dumps(chunk(delta)) + b"\n\n")
        request.transport.abort()
        return response

    failing = await start_upstream(handler)
    spare = await start_upstream(chat_upstream(SCENARIOS["text"]))
    gw = await start_gateway(gateway_config(connection("chat", failing), connection("spare", spare, priority=200)))
    _, _, text = await post_raw(gw, {"model": "m", "input": "Hi", "stream": True})
    events = parse_sse(text)
    final = check_stream(events)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["error"]["code"] == "bad_response" and "chat" in events[-2]["error"]["message"]
    assert final["status"] == "failed" and final["error"]["code"] == "server_error"
    assert spare.requests == []
    with pytest.raises(openai.APIError):
        async with gw.client().responses.stream(model="m", input="Hi") as stream:
            async for _ in stream:
                pass


async def test_request_downgrade_exact_chat_body(start_upstream, start_gateway):
    upstream = await start_upstream(chat_upstream(SCENARIOS["text"]))
    gw = await start_gateway(
        gateway_config(connection("a", upstream), connection("b", upstream, max_tokens_param="max_completion_tokens"))
    )
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    body = {
        "model": "gpt-4o-mini",
        "instructions": "You are terse.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"},
                                         {"type": "input_image", "image_url": "https://img/x.png", "detail": "low"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Need a tool."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 21}'},
            {"role": "developer", "content": "Answer in JSON."},
        ],
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather", "parameters": schema,
                   "strict": True}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
        "max_output_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "reasoning": {"effort": "low"},
        "metadata": {"app": "wp"},
        "user": "u-1",
        "store": False,
        "truncation": "disabled",
    }  # fmt: skip
    status, _, text = await post_raw(gw, body)
    assert status == 200, text
    sent = upstream.requests[0].json
    assert sent == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris?"},
                {"type": "image_url", "image_url": {"url": "https://img/x.png", "detail": "low"}},
            ]},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
            {"role": "system", "content": "Answer in JSON."},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                    "parameters": schema, "strict": True}}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "reasoning_effort": "low",
        "user": "u-1",
        "metadata": {"app": "wp"},
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
    }  # fmt: skip
    echoed = orjson.loads(text)
    assert echoed["tools"][0]["strict"] is True and echoed["temperature"] == 0.2
    assert echoed["text"]["format"]["type"] == "json_schema" and echoed["instructions"] == "You are terse."

    await post_raw(gw, {**body, "model": "pinned"} | {"max_output_tokens": 5})
    assert "max_tokens" in upstream.requests[-1].json
    gw_b = await start_gateway(gateway_config(connection("b", upstream, max_tokens_param="max_completion_tokens")))
    await post_raw(gw_b, {"model": "o4-mini", "input": "Hi", "max_output_tokens": 64})
    assert upstream.requests[-1].json["max_completion_tokens"] == 64 and "max_tokens" not in upstream.requests[-1].json


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ],
)
async def test_inexpressible_request_is_400_naming_the_field(start_upstream, start_gateway, extra, fragment):
    upstream = await start_upstream(chat_upstream(SCENARIOS["text"]))
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    status, headers, text = await post_raw(gw, {"model": "m", "input": "Hi", **extra})
    error = orjson.loads(text)["error"]
    assert status == 400 and fragment in error["message"] and error["code"] == "unsupported"
    assert headers["x-gateway-attempts"] == "chat:unsupported" and upstream.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "input"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": "x", "tools": {"a": 1}}, "tools"),
        ({"model": "m", "input": "x", "temperature": "hot"}, "temperature"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ],
)
async def test_malformed_responses_body_is_400(start_upstream, start_gateway, body, param):
    upstream = await start_upstream(chat_upstream(SCENARIOS["text"]))
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    status, _, text = await post_raw(gw, body)
    error = orjson.loads(text)["error"]
    assert status == 400 and error["param"] == param and error["type"] == "invalid_request_error"


def native_upstream(events: list[dict[str, Any]], done: bool = False):
    """A native Responses upstream replaying `events` (a stream) or the terminal response (JSON)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(events[-1]["response"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(f"event: {event['type']}\n".encode() + b"data: " + orjson.dumps(event) + b"\n\n")
        if done:
            await response.write(b"data: [DONE]\n\n")
        return response

    return handler


async def native_events(start_upstream, start_gateway) -> list[dict[str, Any]]:
    """A real Responses event sequence, produced by the gateway's own downgrade of the text scenario."""
    upstream = await start_upstream(chat_upstream(SCENARIOS["text"]))
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    _, _, text = await post_raw(gw, {"model": "m", "input": "Hi", "stream": True})
    return parse_sse(text)


async def test_native_passthrough_keeps_bytes_and_adds_done(start_upstream, start_gateway):
    events = await native_events(start_upstream, start_gateway)
    native = await start_upstream(native_upstream(events))  # like live OpenAI: no [DONE]
    gw = await start_gateway(gateway_config(connection("native", native, responses="native")))
    status, headers, text = await post_raw(gw, {"model": "gpt-5", "input": "Hi", "stream": True, "store": True})
    assert status == 200 and headers["x-gateway-connection"] == "native"
    assert parse_sse(text) == events
    sent = native.requests[0]
    assert sent.path == "/responses" and sent.json == {"model": "gpt-5", "input": "Hi", "stream": True, "store": True}
    _, _, text = await post_raw(gw, {"model": "gpt-5", "input": "Hi"})
    assert orjson.loads(text) == events[-1]["response"]


@pytest.mark.parametrize("stream", [False, True])
async def test_native_falls_back_to_downgraded(start_upstream, start_gateway, stream):
    native = await start_upstream(error_handler(503, "overloaded"))
    chat = await start_upstream(chat_upstream(SCENARIOS["text_and_tool_call"]))
    gw = await start_gateway(
        gateway_config(connection("native", native, responses="native"), connection("chat", chat, priority=200))
    )
    status, headers, text = await post_raw(gw, {"model": "m", "input": "Hi", "stream": stream})
    assert status == 200 and headers["x-gateway-attempts"] == "native:server_error,chat:ok"
    final = check_stream(parse_sse(text)) if stream else validate_response(orjson.loads(text)).model_dump()
    expect(answer_of(final), SCENARIOS["text_and_tool_call"])


async def test_native_error_event_before_content_falls_back(start_upstream, start_gateway):
    events = await native_events(start_upstream, start_gateway)
    error = {"type": "error", "sequence_number": 2,
             "error": {"type": "server_error", "code": "server_error", "message": "boom", "param": None}}  # fmt: skip
    native = await start_upstream(native_upstream([*events[:2], error]))
    chat = await start_upstream(chat_upstream(SCENARIOS["text"]))
    gw = await start_gateway(
        gateway_config(connection("native", native, responses="native"), connection("chat", chat, priority=200))
    )
    _, headers, text = await post_raw(gw, {"model": "m", "input": "Hi", "stream": True})
    assert headers["x-gateway-attempts"] == "native:server_error,chat:ok"
    assert answer_of(check_stream(parse_sse(text)))["text"] == "Hello, world"


@pytest.mark.parametrize("stream", [False, True])
async def test_native_usage_of_the_wrong_type_is_not_a_crash(start_upstream, start_gateway, stream):
    events = await native_events(start_upstream, start_gateway)
    odd = {"input_tokens": "many", "output_tokens": None, "output_tokens_details": [], "total_tokens": 3}
    events[-1] = {**events[-1], "response": {**events[-1]["response"], "usage": odd}}
    native = await start_upstream(native_upstream(events))
    gw = await start_gateway(gateway_config(connection("native", native, responses="native")))
    status, _, text = await post_raw(gw, {"model": "gpt-5", "input": "Hi", "stream": stream})
    assert status == 200 and "Hello, world" in text
