"""Chat Completions as the client's format of a translated request: a Chat body -> canonical, and
canonical answers -> Chat bodies and chunks."""

from __future__ import annotations

import time
from typing import Any

import orjson

from ...errors import UpstreamError
from ...sse import encode_event
from .. import canonical as c
from ..base import invalid_value, leftover_fields, mid_stream_message, optional, random_hex
from ..canonical import Usage
from .upstream import reasoning_text

# --- tables -----------------------------------------------------------------------------------------

DONE = b"data: [DONE]\n\n"
# Fields that tune delivery or sampling details other formats lack: dropped with a debug log.
DROPPABLE = frozenset(
    {"seed", "frequency_penalty", "presence_penalty", "logit_bias", "service_tier", "store", "top_logprobs",
     "prediction", "stream_options", "prompt_cache_key", "safety_identifier", "verbosity", "top_k"}
)  # fmt: skip
HANDLED = frozenset(
    {"model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens", "max_completion_tokens",
     "temperature", "top_p", "stop", "reasoning_effort", "user", "metadata", "response_format", "stream", "n",
     "logprobs"}
)  # fmt: skip


# --- functions --------------------------------------------------------------------------------------


def _chat_parts(content: Any, where: str, unsupported: list[str]) -> list[c.Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [c.Text(content)]
    if not isinstance(content, list):
        raise invalid_value(where, "expected a string or an array of content parts")
    parts: list[c.Part] = []
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise invalid_value(f"{at}.text", "expected a string")
            parts.append(c.Text(text))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise invalid_value(f"{at}.image_url", "expected an object with a url")
            parts.append(c.Image(url, image.get("detail") if isinstance(image, dict) else None))
        elif kind == "file":
            file = part.get("file") if isinstance(part.get("file"), dict) else {}
            parts.append(c.File(file.get("file_data"), file.get("file_id"), file.get("filename")))
        elif isinstance(part, dict):
            unsupported.append(f"{at}: content type {kind!r} cannot be translated")
        else:
            raise invalid_value(at, "expected an object")
    return parts


def _chat_message(raw: Any, where: str, unsupported: list[str]) -> c.Message:
    if not isinstance(raw, dict):
        raise invalid_value(where, "expected an object")
    role = raw.get("role")
    if role in ("system", "developer", "user"):
        return c.Message(
            "user" if role == "user" else "system", _chat_parts(raw.get("content"), f"{where}.content", unsupported)
        )
    if role == "tool":
        if not isinstance(raw.get("tool_call_id"), str):
            raise invalid_value(f"{where}.tool_call_id", "expected a string")
        text = "".join(
            p.text for p in _chat_parts(raw.get("content"), f"{where}.content", unsupported) if isinstance(p, c.Text)
        )
        return c.Message("tool", [c.Text(text)], tool_call_id=raw["tool_call_id"])
    if role != "assistant":
        raise invalid_value(f"{where}.role", "expected system, developer, user, assistant or tool")
    message = c.Message("assistant", _chat_parts(raw.get("content"), f"{where}.content", unsupported))
    reasoning = reasoning_text(raw)
    message.reasoning = reasoning or None
    for j, call in enumerate(raw.get("tool_calls") or []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid_value(f"{where}.tool_calls[{j}]", "expected a function call with a name")
        arguments = function.get("arguments", "")
        message.tool_calls.append(
            c.ToolCall(
                str(call.get("id") or f"call_{j}"), function["name"], arguments if isinstance(arguments, str) else ""
            )
        )
    return message


def _chat_format(raw: Any) -> c.OutputFormat | None:
    if not isinstance(raw, dict) or raw.get("type") in (None, "text"):
        return None
    if raw["type"] == "json_object":
        return c.OutputFormat("json_object")
    if raw["type"] != "json_schema":
        raise invalid_value("response_format.type", "expected text, json_object or json_schema")
    spec = raw.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid_value("response_format.json_schema", "expected an object")
    if "schema" not in spec:  # some clients send the bare schema in place of {name, schema}
        return c.OutputFormat("json_schema", "response", spec)
    return c.OutputFormat(
        "json_schema", spec.get("name"), spec.get("schema"), spec.get("strict"), spec.get("description")
    )


def parse_request(body: dict[str, Any]) -> c.Request:
    """A Chat Completions body -> the canonical request (only when a translation needs it), with what
    cannot be translated listed in `unsupported`. Raises GatewayError (400, OpenAI's wording) for a
    field of the wrong type."""
    unsupported: list[str] = []
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise invalid_value("messages", "expected an array")
    request = c.Request([_chat_message(m, f"messages[{i}]", unsupported) for i, m in enumerate(raw_messages)])
    for i, tool in enumerate(optional(body, "tools", list, "an array", invalid_value) or []):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            unsupported.append(f"tools[{i}]: only function tools can be translated")
            continue
        request.tools.append(
            c.Tool(function["name"], function.get("description"), function.get("parameters"), function.get("strict"))
        )
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        request.tool_choice = choice
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        request.forced_tool = choice["function"].get("name")
    request.parallel_tool_calls = body.get("parallel_tool_calls")
    request.max_output_tokens = optional(body, "max_completion_tokens", int, "an integer", invalid_value) or optional(
        body, "max_tokens", int, "an integer", invalid_value
    )
    for key, kinds, what in (
        ("temperature", (int, float), "a number"),
        ("top_p", (int, float), "a number"),
        ("reasoning_effort", str, "a string"),
        ("user", str, "a string"),
        ("metadata", dict, "an object"),
    ):
        setattr(request, key, optional(body, key, kinds, what, invalid_value))
    stop = body.get("stop")
    request.stop = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else None
    request.output_format = _chat_format(body.get("response_format"))
    request.stream = body.get("stream") is True
    if isinstance(body.get("n"), int) and body["n"] > 1:
        unsupported.append("n: several choices cannot be translated")
    if body.get("logprobs"):
        unsupported.append("logprobs: cannot be translated")
    leftover_fields(body, HANDLED, DROPPABLE, unsupported, "Chat Completions")
    request.unsupported = unsupported
    return request


def render_response(response: c.Response, model: str) -> dict[str, Any]:
    """A canonical Response as a Chat Completions body (a dict, with a fresh `created`)."""
    message: dict[str, Any] = {"role": "assistant", "content": response.text or None, "refusal": response.refusal}
    if response.reasoning:
        message["reasoning_content"] = response.reasoning
    if response.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in response.tool_calls
        ]
    body: dict[str, Any] = {
        "id": response.id or "chatcmpl-gateway",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": response.finish}],
    }
    if response.usage is not None:
        body["usage"] = usage_object(response.usage)
    return body


def usage_object(usage: Usage) -> dict[str, Any]:
    """Canonical usage as a Chat `usage` object."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def stream_error(error: UpstreamError, connection: str) -> bytes:
    """The event that ends a Chat stream after a failure (the openai SDK raises APIError on it)."""
    message = mid_stream_message(error, connection)
    return encode_event(
        orjson.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": error.reason}})
    )


# --- classes ----------------------------------------------------------------------------------------


class Renderer:
    """Chat Completions as the client's format: canonical answers -> chat bodies and chunks."""

    def __init__(self, model: str, wants_usage: bool) -> None:
        self.model = model
        self.wants_usage = wants_usage
        self.id = f"chatcmpl-{random_hex(12)}"
        self.created = int(time.time())

    def render(self, response: c.Response) -> bytes:
        """A whole answer as a Chat Completions JSON body, with this request's id and timestamp."""
        body = render_response(response, self.model)
        body["id"], body["created"] = self.id, self.created
        return orjson.dumps(body)

    def encoder(self) -> Encoder:
        """A fresh encoder for one attempt's stream."""
        return Encoder(self)


class Encoder:
    """Canonical stream events -> Chat Completions chunks: a role chunk first, tool calls by a
    contiguous index, the finish chunk, the usage chunk only for clients that asked, then [DONE]."""

    def __init__(self, client: Renderer) -> None:
        self.client = client
        self.started = False
        self.indexes: dict[int, int] = {}  # upstream tool index -> the client's contiguous index
        self.finish: c.Finish = "stop"

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        chunk = {
            "id": self.client.id,
            "object": "chat.completion.chunk",
            "created": self.client.created,
            "model": self.client.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }
        return encode_event(orjson.dumps(chunk))

    def _start(self, out: list[bytes]) -> None:
        if not self.started:
            self.started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))

    def encode(self, events: list[c.Event]) -> bytes:
        """The Chat chunks for these canonical events (the finish is held for `finish_stream`)."""
        out: list[bytes] = []
        for event in events:
            if isinstance(event, c.TextDelta) and event.text:
                self._start(out)
                out.append(self._chunk({"content": event.text}))
            elif isinstance(event, c.ReasoningDelta):
                self._start(out)
                out.append(self._chunk({"reasoning_content": event.text}))
            elif isinstance(event, c.ToolCallStart):
                self._start(out)
                index = self.indexes[event.index] = len(self.indexes)
                call = {
                    "index": index,
                    "id": event.id,
                    "type": "function",
                    "function": {"name": event.name, "arguments": ""},
                }
                out.append(self._chunk({"tool_calls": [call]}))
            elif isinstance(event, c.ToolCallDelta):
                index = self.indexes[event.index]
                out.append(self._chunk({"tool_calls": [{"index": index, "function": {"arguments": event.arguments}}]}))
            elif isinstance(event, c.FinishEvent):
                self.finish = event.reason
        return b"".join(out)

    def finish_stream(self, usage: Usage | None) -> bytes:
        """The finish chunk, the usage chunk (for clients that asked) and [DONE]."""
        out: list[bytes] = []
        self._start(out)
        finish = "tool_calls" if self.indexes and self.finish == "stop" else self.finish
        out.append(self._chunk({}, finish))
        if self.client.wants_usage and usage is not None:
            out.append(self._chunk({}, choices=[], usage=usage_object(usage)))
        out.append(DONE)
        return b"".join(out)

    def error(self, error: UpstreamError, connection: str) -> bytes:
        """The error event that ends this stream after a failure past the commit point."""
        return stream_error(error, connection)
