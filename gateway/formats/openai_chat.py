"""OpenAI Chat Completions: the same-format fast path, and Chat <-> canonical.

Same format both ways (`OpenAIRelay`): bodies and stream events pass through as bytes; only `model` is
rewritten and streams ask for `stream_options.include_usage`. Each event is parsed, never re-encoded,
to see whether it carries content (the commit point), usage or an error.

As an upstream format for translated requests: `build_request`, `parse_response`, `ChatDecoder`.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson

from ..config import Connection
from ..contracts import Candidate, Dialect, UpstreamCall
from ..errors import UpstreamError
from ..sse import SSEEvent, encode_comment, encode_event, object_events
from . import canonical as c
from .base import (
    EachEvent,
    bad,
    count,
    error_from_payload,
    fold_stream,
    invalid_value,
    leftover_fields,
    not_a_stream,
    optional,
    parse_object,
    random_hex,
)
from .canonical import Usage

log = logging.getLogger("gateway.formats.chat")

DONE = b"data: [DONE]\n\n"
# Delta fields whose presence means the model has started answering.
CONTENT_FIELDS = (
    "content",
    "tool_calls",
    "reasoning_content",
    "reasoning",
    "reasoning_details",
    "refusal",
    "function_call",
)
FINISH_REASONS: dict[str, c.Finish] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def usage_from(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    completion = usage.get("completion_tokens_details")
    prompt = usage.get("prompt_tokens_details")
    return Usage(
        input_tokens=count(usage, "prompt_tokens"),
        output_tokens=count(usage, "completion_tokens"),
        reasoning_tokens=count(completion, "reasoning_tokens") if isinstance(completion, dict) else 0,
        cached_tokens=count(prompt, "cached_tokens") if isinstance(prompt, dict) else 0,
    )


# --- same format: the byte fast path ----------------------------------------------------------------


# A key a Chat stream relay must see after the commit point, with a value that is not null.
_NOTEWORTHY = re.compile(rb'"(?:error|usage|finish_reason)"\s*+:\s*+(?!null)')


class ChatStream(EachEvent):
    """One attempt's stream, passed through event by event."""

    __slots__ = ("committed", "done", "finished", "usage", "wants_usage")

    def __init__(self, wants_usage: bool) -> None:
        self.wants_usage = wants_usage
        self.usage: Usage | None = None
        self.committed = False  # past the first content: only finish, usage and errors matter now
        self.finished = False
        self.done = False

    def feed(self, event: SSEEvent) -> tuple[bytes, bool]:
        if event.comment:
            return encode_comment(event.data), False
        data = event.data
        if data == b"[DONE]":
            self.done = True
            return DONE, False
        if self.done:
            return b"", False
        if self.committed and data[:1] == b"{" and data[-1:] == b"}" and _NOTEWORTHY.search(data) is None:
            return b"data: " + data + b"\n\n", False  # content only: nothing here to parse for
        chunk = parse_object(data, "stream event")
        if chunk.get("error") is not None:
            raise error_from_payload(chunk["error"])
        usage = chunk.get("usage")
        if usage:
            self.usage = usage_from(usage)
        choices = chunk.get("choices")
        if not choices:
            # The usage-only chunk we asked for: only clients that asked themselves get it.
            return (encode_event(data), False) if self.wants_usage or not usage else (b"", False)
        commits = False
        for choice in choices:
            if not isinstance(choice, dict):
                raise bad("stream choice is not an object")
            if choice.get("finish_reason"):
                self.finished = commits = True
            elif not self.committed:
                delta = choice.get("delta")
                if choice.get("text") or (isinstance(delta, dict) and any(delta.get(f) for f in CONTENT_FIELDS)):
                    commits = True
        if commits and not self.committed:
            self.committed = True
            return encode_event(data), True
        return encode_event(data), False

    def content_prefix(self, chunk: bytes) -> int:
        """The leading events of a plain read that pass unparsed: JSON objects by their ends, up to the
        first naming an error, usage or a finish with a value other than null. (JSON spaced oddly
        only costs a parse; `[DONE]` is no object.)"""
        if self.done:
            return 0
        found = _NOTEWORTHY.search(chunk)
        end = len(chunk) if found is None else chunk.rfind(b"\n\n", 0, found.start()) + 2
        return end if object_events(chunk, end) else 0

    def end(self) -> bytes:
        if self.done:
            return b""
        if self.finished:  # some servers omit the terminator after a finish: add it
            self.done = True
            return DONE
        raise bad("stream ended before it finished")

    def error(self, error: UpstreamError, connection: str) -> bytes:
        return stream_error(error, connection)


def stream_error(error: UpstreamError, connection: str) -> bytes:
    """The event that ends a Chat stream after a failure (the openai SDK raises APIError on it)."""
    message = f"connection {connection} failed mid-stream: {error.reason} ({error.message})"
    return encode_event(
        orjson.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": error.reason}})
    )


class OpenAIRelay:
    """A Chat Completions, completions or embeddings request for OpenAI-format connections."""

    def __init__(self, path: str, body: dict[str, Any], *, same_model_only: bool = False) -> None:
        self.path = path
        self.body = body
        self.stream = body.get("stream") is True
        self.same_model_only = same_model_only
        options = body.get("stream_options")
        self.stream_options = options if isinstance(options, dict) else {}
        self.wants_usage = self.stream_options.get("include_usage") is True

    def serves(self, connection: Connection) -> bool:
        return connection.dialect is Dialect.OPENAI

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        body = dict(self.body)
        body["model"] = candidate.model
        if self.stream:
            body["stream_options"] = {**self.stream_options, "include_usage": True}
        return UpstreamCall(self.path, orjson.dumps(body), {"Content-Type": "application/json"})

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]:
        if event_stream:  # an upstream that streams although asked for JSON: answer with one JSON body
            response = aggregate(body, candidate.connection)
            return orjson.dumps(render_response(response, response.model or candidate.model)), response.usage
        parsed = parse_object(body, "2xx response body")
        if parsed.get("error") is not None and not parsed.get("choices") and not parsed.get("data"):
            raise error_from_payload(parsed["error"])
        return body, usage_from(parsed.get("usage"))

    def stream_relay(self, candidate: Candidate) -> ChatStream:
        return ChatStream(self.wants_usage)

    def parse(self, body: bytes, candidate: Candidate) -> c.Response:
        if self.path != "/chat/completions":
            raise not_a_stream(body)
        return parse_response(body, candidate.connection)

    def stream_body(self, candidate: Candidate, body: bytes) -> tuple[bytes, Usage | None]:
        """Completions and embeddings (chat goes through PerConnection and the bridge's encoder)."""
        raise not_a_stream(body)

    def features(self) -> c.Features:
        """Completions and embeddings use none of the gated features (chat goes through the bridge's)."""
        return c.Features()


# --- Chat Completions as an upstream format for translated requests ---------------------------------


def _content_part(part: c.Part) -> dict[str, Any]:
    if isinstance(part, c.Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, c.Image):
        image: dict[str, Any] = {"url": part.url}
        if part.detail:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    file = {k: v for k, v in (("file_data", part.data), ("file_id", part.file_id), ("filename", part.filename)) if v}
    return {"type": "file", "file": file}


def _message(message: c.Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.text()}
    if message.role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": message.text() or None}
        if message.tool_calls:
            out["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in message.tool_calls
            ]
        return out
    if message.role == "system" or all(isinstance(p, c.Text) for p in message.content):
        return {"role": message.role, "content": message.text()}
    return {"role": message.role, "content": [_content_part(p) for p in message.content]}


def build_request(request: c.Request, model: str, connection: Connection) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [_message(m) for m in request.messages]}
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    k: v
                    for k, v in (
                        ("name", tool.name),
                        ("description", tool.description),
                        ("parameters", tool.parameters),
                        ("strict", tool.strict),
                    )
                    if v is not None
                },
            }
            for tool in request.tools
        ]
    if request.forced_tool:
        body["tool_choice"] = {"type": "function", "function": {"name": request.forced_tool}}
    elif request.tool_choice:
        body["tool_choice"] = request.tool_choice
    if request.parallel_tool_calls is not None and request.tools:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.max_output_tokens is not None:
        body[connection.max_tokens_param] = request.max_output_tokens
    for key in ("temperature", "top_p", "stop", "reasoning_effort", "user"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if request.metadata:
        body["metadata"] = request.metadata
    fmt = request.output_format
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema = {"name": fmt.name or "response", "schema": fmt.schema or {}}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        if fmt.description:
            schema["description"] = fmt.description
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


REASONING_FIELDS = frozenset({"reasoning_content", "reasoning", "reasoning_details"})


def _reasoning_text(holder: dict[str, Any]) -> str:
    """Reasoning as OpenAI-compatible providers send it: reasoning_content, reasoning, reasoning_details."""
    for key in ("reasoning_content", "reasoning"):
        value = holder.get(key)
        if isinstance(value, str) and value:
            return value
    details = holder.get("reasoning_details")
    if isinstance(details, list):
        return "".join(
            d.get("text") or d.get("summary") or ""
            for d in details
            if isinstance(d, dict) and isinstance(d.get("text") or d.get("summary") or "", str)
        )
    return ""


def _finish(value: Any) -> c.Finish:
    if value == "error":
        raise bad("the upstream finished with an error")
    return FINISH_REASONS.get(value, "stop") if isinstance(value, str) else "stop"


def parse_response(body: bytes, connection: Connection) -> c.Response:
    parsed = parse_object(body, "2xx response body")
    if parsed.get("error") is not None and not parsed.get("choices"):
        raise error_from_payload(parsed["error"])
    choices = parsed.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise bad("response has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise bad("response choice has no message")
    text = message.get("content") if isinstance(message.get("content"), str) else ""
    reasoning = _reasoning_text(message)
    if connection.reasoning_tags and not reasoning:
        reasoning, text = split_think(text or "")
    calls = []
    for raw in message.get("tool_calls") or []:
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad("malformed tool call in response")
        arguments = function.get("arguments")
        calls.append(
            c.ToolCall(
                str(raw.get("id") or f"call_{len(calls)}"),
                function["name"],
                arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode(),
            )
        )
    return c.Response(
        text=text or "",
        reasoning=reasoning,
        tool_calls=calls,
        finish="tool_calls"
        if calls and choice.get("finish_reason") in (None, "stop")
        else _finish(choice.get("finish_reason")),
        usage=usage_from(parsed.get("usage")),
        refusal=message.get("refusal") if isinstance(message.get("refusal"), str) else None,
        id=parsed.get("id") if isinstance(parsed.get("id"), str) else None,
        model=parsed.get("model") if isinstance(parsed.get("model"), str) else None,
    )


def split_think(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a whole content string with a leading <think> block."""
    splitter = ThinkSplitter()
    reasoning, answer = splitter.split(text)
    rest_reasoning, rest_answer = splitter.flush()
    return reasoning + rest_reasoning, answer + rest_answer


class ThinkSplitter:
    """Separates a leading `<think>...</think>` from the answer, across arbitrary stream splits."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self.state = "start"  # start -> thinking -> answer
        self.pending = ""

    def split(self, text: str) -> tuple[str, str]:
        """(reasoning, answer) to emit for this piece of content."""
        buf, self.pending = self.pending + text, ""
        if self.state == "start":
            stripped = buf.lstrip()
            if stripped.startswith(self.OPEN):
                self.state = "thinking"
                buf = stripped[len(self.OPEN) :]
            elif self.OPEN.startswith(stripped):  # could still become the opening tag
                self.pending = buf
                return "", ""
            else:
                self.state = "answer"
                return "", buf
        reasoning = ""
        if self.state == "thinking":
            end = buf.find(self.CLOSE)
            if end < 0:
                keep = _partial_suffix(buf, self.CLOSE)  # hold what may be the start of </think>
                self.pending = buf[len(buf) - keep :]
                return buf[: len(buf) - keep], ""
            reasoning, buf = buf[:end], buf[end + len(self.CLOSE) :]
            self.state = "answer_start"
        if self.state == "answer_start":  # the blank lines after </think> are not the answer
            buf = buf.lstrip("\n")
            if buf:
                self.state = "answer"
        return reasoning, buf

    def flush(self) -> tuple[str, str]:
        pending, self.pending = self.pending, ""
        if self.state == "thinking":
            return pending, ""
        return "", pending


def _partial_suffix(text: str, tag: str) -> int:
    """How many trailing characters of `text` could begin `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ChatDecoder:
    """Chat Completions stream events -> canonical events."""

    def __init__(self, connection: Connection) -> None:
        self.splitter = ThinkSplitter() if connection.reasoning_tags else None
        self.started: set[int] = set()
        self.finished = False
        self.done = False

    def feed(self, event: SSEEvent) -> list[c.Event]:
        if event.comment or self.done:
            return []
        if event.data == b"[DONE]":
            self.done = True
            return []
        chunk = parse_object(event.data, "stream event")
        if chunk.get("error") is not None:
            raise error_from_payload(chunk["error"])
        out: list[c.Event] = []
        choices = chunk.get("choices")
        if choices:
            if not isinstance(choices, list) or not isinstance(choices[0], dict):
                raise bad("stream choice is not an object")
            choice = choices[0]  # n > 1 is not translated: the first choice is the answer
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise bad("stream delta is not an object")
            if not REASONING_FIELDS.isdisjoint(delta):
                reasoning = _reasoning_text(delta)
                if reasoning:
                    out.append(c.ReasoningDelta(reasoning))
            content = delta.get("content")
            if content and isinstance(content, str):
                self._content(content, out)
            tool_calls = delta.get("tool_calls")
            if tool_calls:
                if not isinstance(tool_calls, list):
                    raise bad("stream tool_calls is not an array")
                for raw in tool_calls:
                    self._tool_call(raw, out)
            if choice.get("finish_reason"):
                if self.splitter is not None:
                    self._flush(out)
                reason = _finish(choice["finish_reason"])
                out.append(c.FinishEvent("tool_calls" if self.started and reason == "stop" else reason))
                self.finished = True
        if chunk.get("usage") is not None:
            usage = usage_from(chunk["usage"])
            if usage is not None:
                out.append(c.UsageEvent(usage))
        return out

    def _content(self, content: str, out: list[c.Event]) -> None:
        if self.splitter is None:
            out.append(c.TextDelta(content))
            return
        reasoning, answer = self.splitter.split(content)
        if reasoning:
            out.append(c.ReasoningDelta(reasoning))
        if answer:
            out.append(c.TextDelta(answer))

    def _flush(self, out: list[c.Event]) -> None:
        assert self.splitter is not None
        reasoning, answer = self.splitter.flush()
        if reasoning:
            out.append(c.ReasoningDelta(reasoning))
        if answer:
            out.append(c.TextDelta(answer))

    def _tool_call(self, raw: Any, out: list[c.Event]) -> None:
        if not isinstance(raw, dict):
            raise bad("stream tool call is not an object")
        index = raw.get("index", 0)
        function = raw.get("function") or {}
        if not isinstance(index, int) or not isinstance(function, dict):
            raise bad("malformed stream tool call")
        if index not in self.started:
            name = function.get("name")
            if not isinstance(name, str) or not name:
                raise bad("stream tool call starts without a name")
            self.started.add(index)
            out.append(c.ToolCallStart(index, str(raw.get("id") or f"call_{index}"), name))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out.append(c.ToolCallDelta(index, arguments))

    def end(self) -> list[c.Event]:
        if not self.finished:
            raise bad("stream ended before it finished")
        return []


def aggregate(body: bytes, connection: Connection) -> c.Response:
    """A whole Chat SSE body -> one canonical Response."""
    return fold_stream(body, ChatDecoder(connection))


def render_response(response: c.Response, model: str) -> dict[str, Any]:
    """A canonical Response as a Chat Completions body."""
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
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


class ChatUpstream:
    """Chat Completions as the upstream format of a translated request."""

    dialect = Dialect.OPENAI

    def accepts(self, connection: Connection, request: c.Request) -> bool:
        return connection.dialect is self.dialect

    def call(self, request: c.Request, candidate: Candidate) -> UpstreamCall:
        body = build_request(request, candidate.model, candidate.connection)
        return UpstreamCall("/chat/completions", orjson.dumps(body), {"Content-Type": "application/json"})

    def parse(self, body: bytes, connection: Connection) -> c.Response:
        return parse_response(body, connection)

    def decoder(self, connection: Connection) -> ChatDecoder:
        return ChatDecoder(connection)


# --- Chat Completions as the client's format of a translated request --------------------------------

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
    reasoning = _reasoning_text(raw)
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


def parse_chat_request(body: dict[str, Any]) -> c.Request:
    """A Chat Completions body -> the canonical request (only when a translation needs it)."""
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


class ChatClient:
    """Chat Completions as the client's format: canonical answers -> chat bodies and chunks."""

    def __init__(self, model: str, wants_usage: bool) -> None:
        self.model = model
        self.wants_usage = wants_usage
        self.id = f"chatcmpl-{random_hex(12)}"
        self.created = int(time.time())

    def render(self, response: c.Response) -> bytes:
        body = render_response(response, self.model)
        body["id"], body["created"] = self.id, self.created
        return orjson.dumps(body)

    def encoder(self) -> ChatEncoder:
        return ChatEncoder(self)


class ChatEncoder:
    """Canonical stream events -> Chat Completions chunks: a role chunk first, tool calls by a
    contiguous index, the finish chunk, the usage chunk only for clients that asked, then [DONE]."""

    def __init__(self, client: ChatClient) -> None:
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
        out: list[bytes] = []
        self._start(out)
        finish = "tool_calls" if self.indexes and self.finish == "stop" else self.finish
        out.append(self._chunk({}, finish))
        if self.client.wants_usage and usage is not None:
            out.append(self._chunk({}, choices=[], usage=usage_object(usage)))
        out.append(DONE)
        return b"".join(out)

    def error(self, error: UpstreamError, connection: str) -> bytes:
        return stream_error(error, connection)
