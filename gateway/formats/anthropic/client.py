"""Anthropic Messages as the CLIENT's format of a translated request: a client's body -> the canonical
request (`parse_request`), canonical answers -> Message bodies and stream events (`Renderer`,
`Encoder`), and the `error` event that ends a stream after a failure (`stream_error`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ...errors import GatewayError, Reason, UpstreamError
from ...sse import encode_event
from .. import canonical as c
from ..base import bad, leftover_fields, loads_object, mid_stream_message, optional, random_hex
from ..canonical import Usage

# --- tables ------------------------------------------------------------------------------------

FINISH_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
EFFORT_FOR_BUDGET = ((2048, "low"), (8192, "medium"), (10**9, "high"))
DROPPABLE = frozenset({"top_k", "service_tier", "container", "context_management", "inference_geo"})
HANDLED = frozenset(
    {"model", "max_tokens", "messages", "system", "tools", "tool_choice", "stop_sequences", "temperature", "top_p",
     "metadata", "thinking", "output_config", "stream"}
)  # fmt: skip


# --- functions ---------------------------------------------------------------------------------


def _invalid(param: str, message: str) -> GatewayError:
    return GatewayError(400, f"{param}: {message}", code="invalid_request_error", param=param)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
    if not all(isinstance(text, str) for text in texts):
        raise _invalid(where, "a text block's text must be a string")
    return "".join(texts)


def _client_part(block: dict[str, Any], where: str, unsupported: list[str]) -> c.Part | None:
    kind = block.get("type")
    if kind == "text":
        return c.Text(str(block.get("text", "")))
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = str(source.get("url"))
    else:
        unsupported.append(f"{where}: {kind} blocks of source {source.get('type')!r} cannot be translated")
        return None
    if kind == "image":
        return c.Image(url)
    if kind == "document":
        return c.File(data=url, filename=block.get("title"))
    unsupported.append(f"{where}: {kind} blocks cannot be translated")
    return None


def _client_turn(raw: Any, where: str, unsupported: list[str]) -> list[c.Message]:
    """One Anthropic turn -> canonical messages (a user turn's tool results become tool messages)."""
    if not isinstance(raw, dict) or raw.get("role") not in ("user", "assistant"):
        raise _invalid(f"{where}.role", "expected user or assistant")
    content = raw.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(blocks, list):
        raise _invalid(f"{where}.content", "expected a string or an array of content blocks")
    out: list[c.Message] = []
    message = c.Message(raw["role"])
    for i, block in enumerate(blocks):
        at = f"{where}.content.{i}"
        if not isinstance(block, dict):
            raise _invalid(at, "expected an object")
        kind = block.get("type")
        if kind == "tool_result":
            text = _text_of(block.get("content"), f"{at}.content")
            out.append(c.Message("tool", [c.Text(text)], tool_call_id=block.get("tool_use_id")))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            message.tool_calls.append(c.ToolCall(str(block.get("id")), str(block.get("name")), arguments))
        elif kind == "thinking":
            message.reasoning = str(block.get("thinking", ""))
            message.reasoning_signature = block.get("signature")
        elif kind == "redacted_thinking":
            continue  # only Claude can read it, and only with its signature chain: dropped when translating
        else:
            part = _client_part(block, at, unsupported)
            if part is not None:
                message.content.append(part)
    if message.content or message.tool_calls or message.reasoning:
        out.append(message)
    return out


def _effort(thinking: Any, output_config: Any) -> str | None:
    if not isinstance(thinking, dict):
        return None
    if thinking.get("type") == "disabled":
        return "none"
    if thinking.get("type") == "adaptive":
        effort = output_config.get("effort") if isinstance(output_config, dict) else None
        return effort if isinstance(effort, str) else "medium"
    budget = thinking.get("budget_tokens") if isinstance(thinking.get("budget_tokens"), int) else 8192
    return next((effort for limit, effort in EFFORT_FOR_BUDGET if budget < limit), "high")


def parse_request(body: dict[str, Any]) -> c.Request:
    """An Anthropic Messages body -> the canonical request (only when a translation needs it); what
    cannot be translated is listed in its `unsupported`. Raises GatewayError (400,
    invalid_request_error) for a body of the wrong shape."""
    unsupported: list[str] = []
    messages: list[c.Message] = []
    system = body.get("system")
    if system:
        messages.append(c.Message("system", [c.Text(_text_of(system, "system"))]))
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise _invalid("messages", "expected an array")
    for i, turn in enumerate(raw):
        messages += _client_turn(turn, f"messages.{i}", unsupported)
    request = c.Request(messages)
    for i, tool in enumerate(optional(body, "tools", list, "an array", _invalid) or []):
        if not isinstance(tool, dict) or "input_schema" not in tool:
            unsupported.append(
                f"tools.{i}: server tools ({tool.get('type') if isinstance(tool, dict) else tool}) cannot be translated"
            )
            continue
        request.tools.append(c.Tool(str(tool.get("name")), tool.get("description"), tool.get("input_schema")))
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        request.tool_choice = {"any": "required", "auto": "auto", "none": "none"}.get(str(kind))
        if kind == "tool":
            request.forced_tool = choice.get("name")
        if choice.get("disable_parallel_tool_use"):
            request.parallel_tool_calls = False
    request.max_output_tokens = body.get("max_tokens")
    request.temperature = optional(body, "temperature", (int, float), "a number", _invalid)
    request.top_p = optional(body, "top_p", (int, float), "a number", _invalid)
    request.stop = optional(body, "stop_sequences", list, "an array of strings", _invalid)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        request.user = metadata["user_id"]
    output_config = body.get("output_config")
    request.reasoning_effort = _effort(body.get("thinking"), output_config)
    fmt = output_config.get("format") if isinstance(output_config, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        request.output_format = c.OutputFormat("json_schema", "response", fmt.get("schema"))
    request.stream = body.get("stream") is True
    leftover_fields(body, HANDLED, DROPPABLE, unsupported, "Anthropic Messages")
    request.unsupported = unsupported
    return request


def usage_object(usage: Usage | None) -> dict[str, Any]:
    """Canonical usage as a Messages `usage` object: input without the cached part, which is counted
    apart (read and written); all zero for None."""
    usage = usage or Usage()
    return {
        "input_tokens": usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def new_message_id() -> str:
    """A fresh Message id ("msg_" and 24 hex digits)."""
    return f"msg_{random_hex(12)}"


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps({"type": kind, **payload}), kind)


def stream_error(error: UpstreamError, connection: str) -> bytes:
    """The `error` event that ends a Messages stream after a failure past the commit point: an
    overloaded_error for what may pass (a server error, a rate limit), else an api_error."""
    kind = "overloaded_error" if error.reason in (Reason.SERVER_ERROR, Reason.RATE_LIMITED) else "api_error"
    return _sse("error", {"error": {"type": kind, "message": mid_stream_message(error, connection)}})


# --- classes -----------------------------------------------------------------------------------


class Renderer:
    """Anthropic Messages as the client's format: canonical answers -> Message bodies and streams."""

    def __init__(self, model: str, request: Callable[[], c.Request]) -> None:
        self.model = model
        self.request = request  # for the input estimate message_start needs before usage is known
        self.id = new_message_id()

    def render(self, response: c.Response) -> bytes:
        content: list[dict[str, Any]] = []
        if response.reasoning:
            content.append(
                {"type": "thinking", "thinking": response.reasoning, "signature": response.reasoning_signature or ""}
            )
        if response.text:
            content.append({"type": "text", "text": response.text})
        for call in response.tool_calls:
            content.append(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": loads_object(call.arguments) or {}}
            )
        message = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
            "stop_reason": FINISH_TO_STOP[response.finish], "stop_sequence": None,
            "usage": usage_object(response.usage),
        }  # fmt: skip
        return orjson.dumps(message)

    def encoder(self) -> Encoder:
        return Encoder(self)


class Encoder:
    """Canonical events -> Messages stream events. Blocks open, stream and close one at a time with
    contiguous indexes; message_start carries usage and message_delta the output tokens.

    A tool call that starts while another one streams waits, whole, for the end of the message:
    upstreams may interleave the arguments of parallel calls, and a closed block cannot take more."""

    def __init__(self, client: Renderer) -> None:
        self.client = client
        self.started = False
        self.index = -1  # of the open block
        self.open: str | None = None  # its kind: text, thinking, tool_use
        self.tool_block: dict[int, int] = {}  # upstream tool index -> block index
        self.waiting: dict[int, tuple[str, str, list[str]]] = {}  # upstream tool index -> id, name, arguments
        self.finish: c.Finish = "stop"

    def _begin(self, out: list[bytes]) -> None:
        if self.started:
            return
        self.started = True
        estimate = c.estimate_tokens(c.request_chars(self.client.request()))
        message = {
            "id": self.client.id, "type": "message", "role": "assistant", "model": self.client.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": estimate, "output_tokens": 1},
        }  # fmt: skip
        out.append(_sse("message_start", {"message": message}))

    def _block(self, kind: str, out: list[bytes], start: dict[str, Any]) -> None:
        self._close(out)
        self.index += 1
        self.open = kind
        out.append(_sse("content_block_start", {"index": self.index, "content_block": start}))

    def _close(self, out: list[bytes]) -> None:
        if self.open is not None:
            out.append(_sse("content_block_stop", {"index": self.index}))
            self.open = None

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _sse("content_block_delta", {"index": self.index, "delta": delta})

    def encode(self, events: list[c.Event]) -> bytes:
        out: list[bytes] = []
        for event in events:
            if isinstance(event, c.TextDelta) and event.text:
                self._begin(out)
                if self.open != "text":
                    self._block("text", out, {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": event.text}))
            elif isinstance(event, c.ReasoningDelta):
                self._begin(out)
                if self.open != "thinking":
                    self._block("thinking", out, {"type": "thinking", "thinking": "", "signature": ""})
                out.append(self._delta({"type": "thinking_delta", "thinking": event.text}))
            elif isinstance(event, c.ReasoningSignature) and self.open == "thinking":
                out.append(self._delta({"type": "signature_delta", "signature": event.signature}))
            elif isinstance(event, c.ToolCallStart):
                self._begin(out)
                if self.open == "tool_use":
                    self.waiting[event.index] = (event.id, event.name, [])
                else:
                    self._tool_block(event.id, event.name, out)
                    self.tool_block[event.index] = self.index
            elif isinstance(event, c.ToolCallDelta):
                waiting = self.waiting.get(event.index)
                if waiting is not None:
                    waiting[2].append(event.arguments)
                elif self.tool_block.get(event.index) != self.index or self.open != "tool_use":
                    raise bad("tool call arguments after their block was closed by text or reasoning")
                else:
                    out.append(self._delta({"type": "input_json_delta", "partial_json": event.arguments}))
            elif isinstance(event, c.FinishEvent):
                self.finish = event.reason
        return b"".join(out)

    def _tool_block(self, call_id: str, name: str, out: list[bytes]) -> None:
        self._block("tool_use", out, {"type": "tool_use", "id": call_id, "name": name, "input": {}})

    def finish_stream(self, usage: Usage | None) -> bytes:
        out: list[bytes] = []
        self._begin(out)
        for call_id, name, arguments in self.waiting.values():  # the calls that waited, each whole
            self._tool_block(call_id, name, out)
            if arguments:
                out.append(self._delta({"type": "input_json_delta", "partial_json": "".join(arguments)}))
        self._close(out)
        delta = {"stop_reason": FINISH_TO_STOP[self.finish], "stop_sequence": None}
        out.append(_sse("message_delta", {"delta": delta, "usage": usage_object(usage)}))
        out.append(_sse("message_stop", {}))
        return b"".join(out)

    def error(self, error: UpstreamError, connection: str) -> bytes:
        return stream_error(error, connection)
