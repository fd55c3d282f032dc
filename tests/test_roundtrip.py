"""Property: a canonical request survives to-format / from-format for all four wire formats."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.sections import parse_config
from gateway.formats import canonical as c
from gateway.formats.anthropic import client as anthropic_client
from gateway.formats.anthropic import upstream as anthropic_upstream
from gateway.formats.gemini import client as gemini_client
from gateway.formats.gemini import upstream as gemini_upstream
from gateway.formats.openai_chat import client as chat_client
from gateway.formats.openai_chat import upstream as chat_upstream
from gateway.formats.openai_responses import client as responses_client
from gateway.formats.openai_responses import upstream as responses_upstream
from gateway.presets import SamplingRule

CONNECTION = parse_config({"connections": [{"name": "x", "provider": "openai_compatible", "base_url": "http://h/v1"}]})
CONNECTION_X = CONNECTION.connections[0]

words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30)
names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | words,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6,
)
json_objects = st.dictionaries(names, json_values, max_size=4)
images = st.builds(
    lambda data: c.Image(f"data:image/png;base64,{data}"), st.from_regex(r"[A-Za-z0-9+/]{4,40}", fullmatch=True)
)


@st.composite
def requests(draw: st.DrawFn) -> c.Request:
    """Alternating user / assistant turns, one optional leading system prompt; an assistant turn may
    call tools, and then every call is answered, in order, before the next user turn."""
    messages: list[c.Message] = []
    if draw(st.booleans()):
        messages.append(c.Message("system", [c.Text(draw(words))]))
    call_count = 0
    for _ in range(draw(st.integers(1, 4))):
        parts: list[c.Part] = [c.Text(draw(words))]
        if draw(st.booleans()):
            parts.append(draw(images))
        messages.append(c.Message("user", parts))
        calls = [
            c.ToolCall(f"call_{call_count + i}", draw(names), orjson.dumps(draw(json_objects)).decode())
            for i in range(draw(st.integers(0, 2)))
        ]
        call_count += len(calls)
        text = draw(st.one_of(st.just(""), words)) if calls else draw(words)
        messages.append(c.Message("assistant", [c.Text(text)] if text else [], tool_calls=calls))
        for call in calls:
            messages.append(
                c.Message("tool", [c.Text(orjson.dumps(draw(json_objects)).decode())], tool_call_id=call.id)
            )
    tools = [
        c.Tool(
            name,
            draw(words),
            {"type": "object", "properties": {p: {"type": "string"} for p in draw(st.lists(names, max_size=3))}},
        )
        for name in draw(st.lists(names, max_size=3, unique=True))
    ]
    return c.Request(messages, tools=tools)


def shape(request: c.Request) -> dict[str, Any]:
    """What must survive: every message's role, text, images, tool calls and tool results, and the tools.
    JSON texts (arguments, results) compare as values: formats may re-encode them."""

    def value(text: str) -> Any:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text

    messages = []
    for m in request.messages:
        base = m.tool_call_id.split(gemini_upstream.SIGNATURE_SEPARATOR)[0] if m.tool_call_id else None
        messages.append(
            (
                m.role,
                value(m.text()) if m.role == "tool" else m.text(),
                [p.url for p in m.content if isinstance(p, c.Image)],
                [(t.id, t.name, value(t.arguments)) for t in m.tool_calls],
                base,
            )
        )
    return {"messages": messages, "tools": [(t.name, t.description, t.parameters) for t in request.tools]}


def via_chat(request: c.Request) -> c.Request:
    return chat_client.parse_request(chat_upstream.build_request(request, "m", CONNECTION_X))


def via_responses(request: c.Request) -> c.Request:
    return responses_client.parse_request(responses_upstream.build_request(request, "m"))


def via_anthropic(request: c.Request) -> c.Request:
    body = anthropic_upstream.build_request(request, "claude-x", CONNECTION_X, SamplingRule())
    return anthropic_client.parse_request(body)


def via_gemini(request: c.Request) -> c.Request:
    return gemini_client.parse_request(gemini_upstream.build_request(request), stream=False)


ROUND_TRIPS = {"chat": via_chat, "responses": via_responses, "anthropic": via_anthropic, "gemini": via_gemini}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_requests_survive_every_format(request: c.Request) -> None:
    expected = shape(request)
    for name, round_trip in ROUND_TRIPS.items():
        back = round_trip(request)
        assert not back.unsupported, (name, back.unsupported)
        assert shape(back) == expected, name


@settings(max_examples=60, deadline=None)
@given(requests())
def test_round_trips_compose(request: c.Request) -> None:
    """Through every format one after another (as a conversation crossing providers would)."""
    current = request
    for round_trip in (via_anthropic, via_gemini, via_responses, via_chat, via_anthropic):
        current = round_trip(current)
    assert shape(current) == shape(request)
