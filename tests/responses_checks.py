"""Explicit checks of Responses bodies and event streams (the SDKs parse leniently)."""

from __future__ import annotations

from typing import Any

import openresponses_types as spec
import orjson
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

TERMINAL = {"response.completed", "response.incomplete", "response.failed"}
SDK_EVENT = TypeAdapter(ResponseStreamEvent)
SPEC_EVENTS: dict[str, Any] = {
    "response.created": spec.ResponseCreatedStreamingEvent,
    "response.in_progress": spec.ResponseInProgressStreamingEvent,
    "response.completed": spec.ResponseCompletedStreamingEvent,
    "response.incomplete": spec.ResponseIncompleteStreamingEvent,
    "response.failed": spec.ResponseFailedStreamingEvent,
    "response.output_item.added": spec.ResponseOutputItemAddedStreamingEvent,
    "response.output_item.done": spec.ResponseOutputItemDoneStreamingEvent,
    "response.content_part.added": spec.ResponseContentPartAddedStreamingEvent,
    "response.content_part.done": spec.ResponseContentPartDoneStreamingEvent,
    "response.output_text.delta": spec.ResponseOutputTextDeltaStreamingEvent,
    "response.output_text.done": spec.ResponseOutputTextDoneStreamingEvent,
    "response.function_call_arguments.delta": spec.ResponseFunctionCallArgumentsDeltaStreamingEvent,
    "response.function_call_arguments.done": spec.ResponseFunctionCallArgumentsDoneStreamingEvent,
    "error": spec.ErrorStreamingEvent,
    # Not here: the specification names reasoning deltas `response.reasoning.delta`; the live API and
    # the openai SDK use `response.reasoning_text.delta`, which the gateway follows (live API wins).
}


def validate_response(body: dict[str, Any]) -> SDKResponse:
    """A complete Response object, by the SDK's types and by the open specification's."""
    spec.ResponseResource.model_validate(body)
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "top_logprobs"):
        assert isinstance(body[key], int | float) and not isinstance(body[key], bool), key
    assert isinstance(body["store"], bool) and isinstance(body["background"], bool)
    assert isinstance(body["created_at"], int) and body["service_tier"] == "default"
    for item in body["output"]:
        assert item.get("phase", "absent") is not None, "optional item fields are absent, not null"
        assert item.get("status", "absent") is not None
        for part in item.get("content") or []:
            if part["type"] == "output_text":
                assert part["annotations"] == [] and part["logprobs"] == []
    if body["usage"] is not None:
        assert isinstance(body["usage"]["input_tokens_details"], dict)
        assert isinstance(body["usage"]["output_tokens_details"], dict)
    for tool in body["tools"]:
        assert "strict" in tool
    return SDKResponse.model_validate(body)


def parse_sse(raw: str) -> list[dict[str, Any]]:
    """Every event of a Responses stream; checks framing, `event:` == type and the final [DONE]."""
    assert raw.endswith("\n\n") and "\r" not in raw
    blocks = raw[:-2].split("\n\n")
    assert blocks[-1] == "data: [DONE]", "a Responses stream from the gateway ends with [DONE]"
    events = []
    for block in blocks[:-1]:
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        payload = orjson.loads(lines[1][6:])
        assert payload["type"] == lines[0][7:]
        events.append(payload)
    return events


def check_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The event order the SDK and the specification require; returns the terminal response."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[1]["type"] == "response.in_progress"
    response_id = events[0]["response"]["id"]
    terminals = [e for e in events if e["type"] in TERMINAL]
    assert len(terminals) == 1 and terminals[0] is events[-1], "exactly one terminal event, last"
    for event in events:
        if event["type"] != "error":
            SDK_EVENT.validate_python(event)  # the SDK's ResponseErrorEvent is flat: see the module note
        if event["type"] in SPEC_EVENTS:
            SPEC_EVENTS[event["type"]].model_validate(event)
        if "response" in event:
            assert event["response"]["id"] == response_id, "the response id is stable"
    items: dict[int, dict[str, Any]] = {}
    for position, event in enumerate(events[2:-1], start=2):
        kind = event["type"]
        if kind == "error":
            continue
        index = event["output_index"]
        if kind == "response.output_item.added":
            assert index == len(items), "output indexes are contiguous"
            assert all(item["done"] for item in items.values() if item["type"] == "reasoning"), "reasoning closes first"
            items[index] = {"id": event["item"]["id"], "type": event["item"]["type"], "deltas": [], "done": False}
            items[index]["part"] = False
            continue
        item = items[index]
        assert not item["done"], f"{kind} after its item was done"
        if kind == "response.output_item.done":
            assert event["item"]["id"] == item["id"]
            item.update(done=True, final=event["item"], closed_at=position)
            continue
        assert event["item_id"] == item["id"]
        if kind == "response.content_part.added":
            item["part"] = True
        elif kind.endswith(".delta"):
            assert item["part"] or kind == "response.function_call_arguments.delta", "delta before its part"
            item["deltas"].append(event["delta"])
        elif kind in ("response.output_text.done", "response.reasoning_text.done"):
            assert event["text"] == "".join(item["deltas"])
        elif kind == "response.content_part.done":
            assert event["part"]["text"] == "".join(item["deltas"])
        elif kind == "response.function_call_arguments.done":
            assert event["arguments"] == "".join(item["deltas"])
    final = terminals[0]["response"]
    if final["status"] != "failed":
        assert all(item["done"] for item in items.values()), "every item is done before the terminal event"
        validate_response(final)
        assert [o["id"] for o in final["output"]] == [items[i]["id"] for i in sorted(items)]
        for index, output in enumerate(final["output"]):
            joined = "".join(items[index]["deltas"])
            if output["type"] == "message":
                assert [p["text"] for p in output["content"]] == [joined]
            elif output["type"] == "reasoning":
                assert output["content"][0]["text"] == joined
            else:
                assert output["arguments"] == joined
    return final


def answer_of(response: dict[str, Any]) -> dict[str, Any]:
    """What a client sees: the one message's text, the reasoning, the calls."""
    messages = [o for o in response["output"] if o["type"] == "message"]
    calls = [o for o in response["output"] if o["type"] == "function_call"]
    assert len(messages) == 1 or (calls and not messages), "one message (none only beside tool calls)"
    assert all(len(m["content"]) == 1 for m in messages), "one output_text part"
    return {
        "text": messages[0]["content"][0]["text"] if messages else None,
        "reasoning": "".join(p["text"] for o in response["output"] if o["type"] == "reasoning" for p in o["content"]),
        "calls": [
            (o["call_id"], o["name"], o["arguments"]) for o in response["output"] if o["type"] == "function_call"
        ],
        "status": response["status"],
    }
