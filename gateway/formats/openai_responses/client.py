"""OpenAI Responses as the client's format of a translated request.

`parse_request` reads a Responses body into the canonical request; `Renderer` turns a canonical answer
into a whole Response object and `Encoder` canonical stream events into the exact Responses event
sequence; `ResponseContext` is what all of one request's answers share (the fields they echo, their
stable ids, where a finished answer goes), on the translated path and the native one (`native.py`).

Shapes follow the live API, then the open specification (`openresponses-types`), then the openai SDK's
types; where they disagree the choice is noted (reasoning deltas: the live API's
`response.reasoning_text.delta`, not the specification's `response.reasoning.delta`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ...errors import UpstreamError
from ...sse import encode_event
from .. import canonical as c
from ..base import bad, invalid_value, leftover_fields, mid_stream_message, optional, random_hex
from ..canonical import Usage

# --- constants and tables -------------------------------------------------------------------------

DONE = b"data: [DONE]\n\n"
# Request fields that only tune delivery or bookkeeping: dropped when downgrading, with a debug log.
DROPPABLE = frozenset(
    {"include", "truncation", "service_tier", "prompt_cache_key", "safety_identifier", "store", "stream_options",
     "max_tool_calls", "top_logprobs", "context_management", "prompt_cache_retention"}
)  # fmt: skip
HANDLED = frozenset(
    {"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text", "reasoning",
     "max_output_tokens", "temperature", "top_p", "metadata", "user", "stream", "previous_response_id",
     "background"}
)  # fmt: skip
_NUMBER_DEFAULTS = (("temperature", 1.0), ("top_p", 1.0), ("presence_penalty", 0.0), ("frequency_penalty", 0.0))
_DELTA_EVENTS = {
    "message": "response.output_text.delta",
    "reasoning": "response.reasoning_text.delta",
    "function_call": "response.function_call_arguments.delta",
}


# --- functions ------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """A fresh, unguessable id of a Response object or item, e.g. `resp_...`."""
    return f"{prefix}_{random_hex(24)}"


def _parts(content: Any, param: str, unsupported: list[str]) -> list[c.Part]:
    if isinstance(content, str):
        return [c.Text(content)]
    if not isinstance(content, list):
        raise invalid_value(param, "expected a string or an array of content parts")
    parts: list[c.Part] = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise invalid_value(where, "expected an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "refusal"):
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise invalid_value(f"{where}.text", "expected a string")
            parts.append(c.Text(text))
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, str) and url:
                parts.append(c.Image(url, part.get("detail")))
            elif part.get("file_id"):
                unsupported.append(f"{where}: an image by file_id needs a native Responses connection")
            else:
                raise invalid_value(where, "an input_image needs image_url or file_id")
        elif kind == "input_file":
            if part.get("file_url"):
                unsupported.append(f"{where}: a file by file_url needs a native Responses connection")
            parts.append(c.File(part.get("file_data"), part.get("file_id"), part.get("filename")))
        else:
            unsupported.append(f"{where}: content type {kind!r} needs a native Responses connection")
    return parts


def _output_text(output: Any, param: str, unsupported: list[str]) -> str:
    parts = _parts(output, param, unsupported)
    if any(not isinstance(p, c.Text) for p in parts):
        unsupported.append(f"{param}: a function output with images or files needs a native Responses connection")
    return "".join(p.text for p in parts if isinstance(p, c.Text))


def reasoning_of(item: dict[str, Any]) -> str:
    """The text of a reasoning item (its content, else its summary parts), one part a line."""
    pieces = [p.get("text", "") for key in ("content", "summary") for p in item.get(key) or [] if isinstance(p, dict)]
    return "\n".join(p for p in pieces if isinstance(p, str) and p)


def _messages(body: dict[str, Any], unsupported: list[str]) -> list[c.Message]:
    messages: list[c.Message] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append(c.Message("system", [c.Text(instructions)]))
    elif instructions is not None and not isinstance(instructions, str):
        raise invalid_value("instructions", "expected a string")
    items = body.get("input")
    if isinstance(items, str):
        messages.append(c.Message("user", [c.Text(items)]))
        return messages
    if not isinstance(items, list):
        raise invalid_value("input", "expected a string or an array of input items")
    pending_reasoning: tuple[str, str | None] | None = None  # a reasoning item awaiting its assistant turn
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid_value(where, "expected an object")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise invalid_value(f"{where}.role", "expected one of user, assistant, system, developer")
            message = c.Message(
                "system" if role == "developer" else role, _parts(item.get("content"), f"{where}.content", unsupported)
            )
            if role == "assistant" and pending_reasoning:
                message.reasoning, message.reasoning_signature = pending_reasoning
                pending_reasoning = None
            messages.append(message)
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "")
            if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, str):
                raise invalid_value(where, "a function_call needs string call_id, name and arguments")
            last = messages[-1] if messages else None
            if last is None or last.role != "assistant":
                last = c.Message("assistant")
                if pending_reasoning:
                    last.reasoning, last.reasoning_signature = pending_reasoning
                pending_reasoning = None
                messages.append(last)
            last.tool_calls.append(c.ToolCall(call_id, name, arguments))
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise invalid_value(f"{where}.call_id", "expected a string")
            output = _output_text(item.get("output", ""), f"{where}.output", unsupported)
            messages.append(c.Message("tool", [c.Text(output)], tool_call_id=call_id))
        elif kind == "reasoning":
            signature = item.get("encrypted_content")
            pending_reasoning = (reasoning_of(item), signature if isinstance(signature, str) else None)
        else:
            unsupported.append(f"{where}: input item type {kind!r} needs a native Responses connection")
    return messages


def _tools(body: dict[str, Any], unsupported: list[str]) -> list[c.Tool]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise invalid_value("tools", "expected an array")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise invalid_value(f"tools[{i}]", "expected an object")
        if tool.get("type") != "function":
            unsupported.append(
                f"tools[{i}]: the built-in tool {tool.get('type')!r} needs a native Responses connection"
            )
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_value(f"tools[{i}].name", "expected a non-empty string")
        out.append(c.Tool(name, tool.get("description"), tool.get("parameters"), tool.get("strict")))
    return out


def _output_format(body: dict[str, Any]) -> c.OutputFormat | None:
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        raise invalid_value("text", "expected an object")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise invalid_value("text.format.type", "expected text, json_object or json_schema")
    if fmt["type"] == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise invalid_value("text.format.schema", "expected a JSON schema object")
        return c.OutputFormat("json_schema", fmt.get("name"), fmt["schema"], fmt.get("strict"), fmt.get("description"))
    return None if fmt["type"] == "text" else c.OutputFormat("json_object")


def parse_request(body: dict[str, Any]) -> c.Request:
    """A Responses request body -> the canonical request. Malformed input is a 400 GatewayError; valid
    input a Chat upstream cannot express is listed in `unsupported` (such connections are skipped)."""
    unsupported: list[str] = []
    request = c.Request(messages=_messages(body, unsupported), tools=_tools(body, unsupported))
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise invalid_value("tool_choice", "expected auto, none, required or a function choice")
        request.tool_choice = choice
    elif isinstance(choice, dict):
        if choice.get("type") == "function" and isinstance(choice.get("name"), str):
            request.forced_tool = choice["name"]
        else:
            unsupported.append(f"tool_choice: {choice.get('type')!r} needs a native Responses connection")
    request.output_format = _output_format(body)
    for key, kinds in (("temperature", (int, float)), ("top_p", (int, float)), ("max_output_tokens", int)):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise invalid_value(key, "expected a number")
        setattr(request, key, value)
    for key in ("parallel_tool_calls", "metadata", "user"):
        setattr(request, key, body.get(key))
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        request.reasoning_effort = optional(reasoning, "effort", str, "a string", invalid_value, "reasoning.effort")
    request.stream = body.get("stream") is True
    if body.get("background"):
        unsupported.append("background: background responses need a native Responses connection")
    leftover_fields(body, HANDLED, DROPPABLE, unsupported, "Responses")
    request.unsupported = unsupported
    return request


def usage_object(usage: Usage) -> dict[str, Any]:
    """`usage` as a Response object's `usage`."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str, text: str | None, signature: str | None = None) -> dict[str, Any]:
    content = [] if text is None else [{"type": "reasoning_text", "text": text}]
    item = {"id": item_id, "type": "reasoning", "summary": [], "content": content}
    if signature:  # replayed by the client, it lets a provider verify its own reasoning (Anthropic)
        item["encrypted_content"] = signature
    return item


def _message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call: c.ToolCall, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    }


def _echo_tools(tools: Any) -> list[dict[str, Any]]:
    echoed = []
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and tool.get("type") == "function":
            echoed.append(
                {
                    "type": "function",
                    "name": tool.get("name"),
                    "description": tool.get("description"),
                    "parameters": tool.get("parameters"),
                    "strict": tool.get("strict"),
                }
            )
        elif isinstance(tool, dict):
            echoed.append(tool)
    return echoed


def _status(finish: c.Finish) -> tuple[str, str | None]:
    """(response status, incomplete reason) for a finish reason."""
    if finish == "length":
        return "incomplete", "max_output_tokens"
    if finish == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def stream_error(
    error: UpstreamError, connection: str, sequence: int = 0, response: dict[str, Any] | None = None
) -> bytes:
    """The events that end a Responses stream after a failure past the commit point: `error` as the live
    API sends it, `response.failed` with `response` (the answer so far; else a bare one) marked failed,
    numbered on from `sequence` (the next number the client has not seen), then [DONE]."""
    message = mid_stream_message(error, connection)
    failed = dict(response or {"id": new_id("resp"), "object": "response", "output": []})
    failed.update(status="failed", error={"code": "server_error", "message": message})
    events = [
        {
            "type": "error",
            "sequence_number": sequence,
            "error": {"type": "server_error", "code": error.reason.value, "message": message, "param": None},
        },
        {"type": "response.failed", "sequence_number": sequence + 1, "response": failed},
    ]
    return b"".join(encode_event(orjson.dumps(e), e["type"]) for e in events) + DONE


# --- classes --------------------------------------------------------------------------------------


@dataclass
class ResponseContext:
    """What every Response object of one request echoes, its stable ids, and where finals go."""

    body: dict[str, Any]
    model: str
    stored: bool = False  # echoed as `store`: the gateway keeps this answer for previous_response_id
    final: dict[str, Any] | None = None  # the finished (completed or incomplete) Response, once there is one
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    _echo: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def finalize(self, response: dict[str, Any]) -> None:
        """A finished answer, whoever produced it (the Renderer, the Encoder, the native path): kept as
        `final` when it completed, for the request's end hook to store."""
        if response.get("status") in ("completed", "incomplete"):
            self.final = response

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None,
        *,
        error: dict[str, Any] | None = None,
        incomplete: str | None = None,
    ) -> dict[str, Any]:
        """A whole Response object: what this answer says, in the request's echoed fields (built once:
        a stream sends three of these)."""
        if self._echo is None:
            self._echo = self._echoed()
        obj = dict(self._echo)
        obj["completed_at"] = int(time.time()) if status in ("completed", "incomplete") else None
        obj["status"] = status
        obj["incomplete_details"] = {"reason": incomplete} if incomplete else None
        obj["output"] = output
        obj["error"] = error
        obj["usage"] = usage_object(usage) if usage is not None else None
        return obj

    def _echoed(self) -> dict[str, Any]:
        """Every field of a Response object in order, with what the request sets (the answer's own
        fields are placeholders, filled in by `response`)."""
        body = self.body
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        text = body.get("text") if isinstance(body.get("text"), dict) else {}
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": None,
            "status": None,
            "incomplete_details": None,
            "model": self.model,
            "previous_response_id": body.get("previous_response_id"),
            "instructions": body.get("instructions") if isinstance(body.get("instructions"), str) else None,
            "output": None,
            "error": None,
            "tools": _echo_tools(body.get("tools")),
            "tool_choice": body.get("tool_choice") or "auto",
            "truncation": body.get("truncation") or "disabled",
            "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
            "text": {"format": text.get("format") or {"type": "text"}}
            | ({"verbosity": text["verbosity"]} if text.get("verbosity") else {}),
            "top_logprobs": body.get("top_logprobs") or 0,
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "user": body.get("user"),
            "usage": None,
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "store": self.stored,
            "background": False,
            "service_tier": "default",
            "metadata": body.get("metadata") or {},
            "safety_identifier": body.get("safety_identifier"),
            "prompt_cache_key": body.get("prompt_cache_key"),
        }
        for key, default in _NUMBER_DEFAULTS:
            value = body.get(key)
            obj[key] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
        return obj


class Renderer:
    """The Responses API as the client's format: canonical answers -> Responses bodies and streams."""

    def __init__(self, context: ResponseContext) -> None:
        self.context = context

    def render(self, response: c.Response) -> bytes:
        status, incomplete = _status(response.finish)
        output: list[dict[str, Any]] = []
        if response.reasoning:
            output.append(_reasoning_item(new_id("rs"), response.reasoning, response.reasoning_signature))
        if response.text or response.refusal or not response.tool_calls:
            text = response.text or response.refusal or ""
            output.append(_message_item(new_id("msg"), text, "incomplete" if incomplete else "completed"))
        output += [_call_item(new_id("fc"), call, "completed") for call in response.tool_calls]
        final = self.context.response(status, output, response.usage, incomplete=incomplete)
        self.context.finalize(final)
        return orjson.dumps(final)

    def encoder(self) -> Encoder:
        return Encoder(self.context)


@dataclass
class _Item:
    kind: str  # reasoning, message, function_call
    id: str
    index: int  # output_index
    parts: list[str] = field(default_factory=list)
    call: c.ToolCall | None = None
    signature: str | None = None
    done: bool = False
    # This item's delta event up to its sequence number, and from there to the delta's text: the
    # event most often sent, built from bytes rather than as a dict to serialize.
    delta_head: bytes = field(init=False)
    delta_fields: bytes = field(init=False)

    def __post_init__(self) -> None:
        name = _DELTA_EVENTS[self.kind]
        self.delta_head = f'event: {name}\ndata: {{"type":"{name}","sequence_number":'.encode()
        fields = f',"item_id":"{self.id}","output_index":{self.index}'
        if self.kind != "function_call":
            fields += ',"content_index":0'
        if self.kind == "message":
            fields += ',"logprobs":[]'
        self.delta_fields = (fields + ',"delta":').encode()

    def text(self) -> str:
        return "".join(self.parts)


class Encoder:
    """Canonical stream events -> the Responses event sequence, one state machine per attempt.

    response.created, response.in_progress, then per item: output_item.added, its content part and
    deltas, and (when the next item starts, or at the end) its done events; reasoning is closed before
    the answer starts; exactly one terminal event; then `data: [DONE]`.
    """

    def __init__(self, context: ResponseContext) -> None:
        self.context = context
        self.sequence = 0
        self.items: list[_Item] = []
        self.reasoning: _Item | None = None
        self.message: _Item | None = None
        self.calls: dict[int, _Item] = {}
        self.finish: c.Finish = "stop"

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return encode_event(orjson.dumps(payload), kind)

    def _begin(self, out: list[bytes]) -> None:
        if self.sequence == 0:  # both events carry the same snapshot: serialized once
            snapshot = orjson.Fragment(orjson.dumps(self.context.response("in_progress", [], None)))
            out.append(self._event("response.created", response=snapshot))
            out.append(self._event("response.in_progress", response=snapshot))

    def _open(self, kind: str, prefix: str, out: list[bytes], call: c.ToolCall | None = None) -> _Item:
        item = _Item(kind, new_id(prefix), len(self.items), call=call)
        self.items.append(item)
        if kind == "reasoning":
            added = _reasoning_item(item.id, None)
            part: dict[str, Any] | None = {"type": "reasoning_text", "text": ""}
        elif kind == "message":
            added, part = _message_item(item.id, None, "in_progress"), _text_part("")
        else:
            assert call is not None
            added, part = _call_item(item.id, call, "in_progress"), None
        out.append(self._event("response.output_item.added", output_index=item.index, item=added))
        if part is not None:
            out.append(self._part_event("response.content_part.added", item, part))
        return item

    def _delta(self, item: _Item, delta: str) -> bytes:
        item.parts.append(delta)
        sequence = self.sequence
        self.sequence += 1
        return b"".join((item.delta_head, str(sequence).encode(), item.delta_fields, orjson.dumps(delta), b"}\n\n"))

    def _part_event(self, kind: str, item: _Item, part: dict[str, Any]) -> bytes:
        return self._event(kind, item_id=item.id, output_index=item.index, content_index=0, part=part)

    def _close(self, item: _Item, out: list[bytes]) -> None:
        if item.done:
            return
        item.done = True
        text = item.text()
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "reasoning":
            out.append(self._event("response.reasoning_text.done", **where, content_index=0, text=text))
            out.append(self._part_event("response.content_part.done", item, {"type": "reasoning_text", "text": text}))
            done = _reasoning_item(item.id, text, item.signature)
        elif item.kind == "message":
            out.append(self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]))
            out.append(self._part_event("response.content_part.done", item, _text_part(text)))
            done = _message_item(item.id, text, self._item_status())
        else:
            assert item.call is not None
            item.call.arguments = text
            out.append(
                self._event("response.function_call_arguments.done", **where, arguments=text, name=item.call.name)
            )
            done = _call_item(item.id, item.call, "completed")
        out.append(self._event("response.output_item.done", output_index=item.index, item=done))

    def _item_status(self) -> str:
        return "incomplete" if _status(self.finish)[1] else "completed"

    def encode(self, events: list[c.Event]) -> bytes:
        out: list[bytes] = []
        for event in events:
            if isinstance(event, c.TextDelta):
                if not event.text:
                    continue
                message = self.message
                if message is None or message.done or (self.reasoning is not None and not self.reasoning.done):
                    self._begin(out)
                    if self.reasoning is not None:
                        self._close(self.reasoning, out)
                    if message is None or message.done:
                        message = self.message = self._open("message", "msg", out)
                out.append(self._delta(message, event.text))
            elif isinstance(event, c.ReasoningDelta):
                self._begin(out)
                if self.reasoning is None or self.reasoning.done:
                    self.reasoning = self._open("reasoning", "rs", out)
                out.append(self._delta(self.reasoning, event.text))
            elif isinstance(event, c.ReasoningSignature):
                if self.reasoning is not None:
                    self.reasoning.signature = event.signature
            elif isinstance(event, c.ToolCallStart):
                self._begin(out)
                for item in (self.reasoning, self.message):  # items run one after another, as live
                    if item is not None:
                        self._close(item, out)
                self.calls[event.index] = self._open("function_call", "fc", out, c.ToolCall(event.id, event.name, ""))
            elif isinstance(event, c.ToolCallDelta):
                item = self.calls.get(event.index)
                if item is None:
                    raise bad("tool call arguments before its start")
                out.append(self._delta(item, event.arguments))
            elif isinstance(event, c.FinishEvent):
                self._begin(out)
                self.finish = event.reason
        return b"".join(out)

    def finish_stream(self, usage: Usage | None) -> bytes:
        """The upstream finished: close every item, the one terminal event, then [DONE]."""
        out: list[bytes] = []
        self._begin(out)
        if self.message is None and not self.calls:  # clients read the first message: always give one
            self.message = self._open("message", "msg", out)
        for item in self.items:
            self._close(item, out)
        status, incomplete = _status(self.finish)
        response = self.context.response(status, self._output(), usage, incomplete=incomplete)
        self.context.finalize(response)
        out.append(self._event(f"response.{status}", response=response))
        out.append(DONE)
        return b"".join(out)

    def _output(self) -> list[dict[str, Any]]:
        output = []
        for item in self.items:
            if item.kind == "reasoning":
                output.append(_reasoning_item(item.id, item.text(), item.signature))
            elif item.kind == "message":
                output.append(_message_item(item.id, item.text(), self._item_status() if item.done else "incomplete"))
            else:
                assert item.call is not None
                item.call.arguments = item.text()
                output.append(_call_item(item.id, item.call, "completed" if item.done else "incomplete"))
        return output

    def error(self, error: UpstreamError, connection: str) -> bytes:
        """A failure after the stream started: `stream_error` with the items so far, numbered on."""
        out: list[bytes] = []
        self._begin(out)
        so_far = self.context.response("failed", self._output(), None)
        out.append(stream_error(error, connection, self.sequence, so_far))
        self.sequence += 2
        return b"".join(out)
