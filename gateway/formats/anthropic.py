"""Anthropic Messages <-> canonical (as the upstream format of translated requests).

Requests: system, alternating user/assistant turns of text / image / document / tool_use /
tool_result / thinking blocks (a thinking block only with its signature: Claude rejects reasoning it
cannot verify), tools, tool_choice, stop sequences, max_tokens (required), thinking and
output_config. Sampling parameters follow `anthropic_sampling_rules` (data, not branches): a
parameter the model would reject is dropped before sending, so a 400 never wastes an attempt.
Answers and streams map event by event onto canonical events; stop reasons map honestly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import Connection
from ..contracts import Candidate, Dialect, UpstreamCall
from ..errors import ErrorKind, GatewayError, Reason, UpstreamError, classify_status
from ..presets import SamplingRule
from ..sse import SSEEvent, encode_event
from . import canonical as c
from .base import (
    DecodedPassthrough,
    bad,
    call_arguments,
    count,
    fold_stream,
    leftover_fields,
    loads_object,
    optional,
    parse_object,
    random_hex,
    unsupported,
)
from .canonical import Usage

log = logging.getLogger("gateway.formats.anthropic")

STOP_REASONS: dict[str, c.Finish] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "pause_turn": "length",  # the turn is not finished: the client must continue it
    "refusal": "content_filter",
}
THINKING_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
MIN_THINKING_BUDGET = 1024
DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+);base64,(.*)$", re.DOTALL)


def rule_for(rules: list[SamplingRule], model: str, version: str) -> SamplingRule:
    """A rule naming the API version wins; then the longest model prefix; else the safest rule."""
    for rule in rules:
        if rule.anthropic_version and rule.anthropic_version == version:
            return rule
    matches = [r for r in rules if r.prefix and model.startswith(r.prefix)]
    return max(matches, key=lambda r: len(r.prefix or "")) if matches else SamplingRule()


# --- requests ----------------------------------------------------------------------------------


def _source(url: str) -> dict[str, Any]:
    match = DATA_URL.match(url)
    if match:
        return {"type": "base64", "media_type": match.group(1), "data": match.group(2)}
    return {"type": "url", "url": url}


def _block(part: c.Part) -> dict[str, Any]:
    if isinstance(part, c.Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, c.Image):
        return {"type": "image", "source": _source(part.url)}
    if part.data:
        source = _source(part.data) if part.data.startswith("data:") else {
            "type": "base64", "media_type": "application/pdf", "data": part.data
        }  # fmt: skip
        block: dict[str, Any] = {"type": "document", "source": source}
        if part.filename:
            block["title"] = part.filename
        return block
    raise unsupported("a file by file_id cannot be sent to Anthropic")


def _turn(message: c.Message) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        return "user", [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text()}]
    if message.role == "user":
        return "user", [_block(p) for p in message.content if not (isinstance(p, c.Text) and not p.text)]
    blocks: list[dict[str, Any]] = []
    if message.reasoning and message.reasoning_signature:
        blocks.append({"type": "thinking", "thinking": message.reasoning, "signature": message.reasoning_signature})
    blocks += [{"type": "text", "text": p.text} for p in message.content if isinstance(p, c.Text) and p.text]
    blocks += [{"type": "tool_use", "id": t.id, "name": t.name, "input": call_arguments(t)} for t in message.tool_calls]
    return "assistant", blocks


def _messages(request: c.Request) -> tuple[str, list[dict[str, Any]]]:
    """(system, turns): system prompts become the top-level `system`; consecutive turns of one role
    merge (Claude wants strict alternation, tool results in the user turn that follows the call)."""
    system = "\n\n".join(m.text() for m in request.messages if m.role == "system" and m.text())
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "system":
            continue
        role, blocks = _turn(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _thinking(request: c.Request, rule: SamplingRule, body: dict[str, Any]) -> bool:
    """Map reasoning effort onto Claude's thinking; True when thinking is on."""
    effort = request.reasoning_effort
    if not effort or effort == "none":
        return False
    if rule.thinking == "adaptive":
        body["thinking"] = {"type": "adaptive"}
        body.setdefault("output_config", {})["effort"] = "high" if effort == "xhigh" else effort
        return True
    budget = min(THINKING_BUDGET.get(effort, THINKING_BUDGET["medium"]), body["max_tokens"] - 1)
    if budget < MIN_THINKING_BUDGET:
        log.debug("max_tokens %s leaves no room for thinking; sending without", body["max_tokens"])
        return False
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return True


def _samplers(request: c.Request, rule: SamplingRule, thinking: bool, body: dict[str, Any]) -> None:
    """Only what the rule allows; with thinking on, temperature must be 1 or absent, top_p >= 0.95."""
    temperature, top_p = request.temperature, request.top_p
    if temperature is not None and "temperature" in rule.samplers and (not thinking or temperature == 1):
        body["temperature"] = temperature
    allowed_top_p = top_p is not None and "top_p" in rule.samplers and (not thinking or top_p >= 0.95)
    if allowed_top_p and not (rule.one_of and "temperature" in body):
        body["top_p"] = top_p


def build_request(request: c.Request, model: str, connection: Connection, rule: SamplingRule) -> dict[str, Any]:
    system, turns = _messages(request)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_output_tokens or connection.max_tokens_default,
        "messages": turns,
    }
    if system:
        body["system"] = system
    if request.tools:
        body["tools"] = [
            {"name": t.name, "input_schema": t.parameters or {"type": "object", "properties": {}}}
            | ({"description": t.description} if t.description else {})
            for t in request.tools
        ]
        choice: dict[str, Any] | None = None
        if request.forced_tool:
            choice = {"type": "tool", "name": request.forced_tool}
        elif request.tool_choice in ("auto", "none", "required"):
            choice = {"type": {"required": "any"}.get(request.tool_choice, request.tool_choice)}
        if request.parallel_tool_calls is False:
            choice = (choice or {"type": "auto"}) | {"disable_parallel_tool_use": True}
        if choice is not None:
            body["tool_choice"] = choice
    if request.stop:
        body["stop_sequences"] = request.stop
    fmt = request.output_format
    if fmt is not None:
        schema = fmt.schema if fmt.type == "json_schema" and fmt.schema else {"type": "object"}
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    thinking = _thinking(request, rule, body)
    _samplers(request, rule, thinking, body)
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.stream:
        body["stream"] = True
    return body


# --- answers -----------------------------------------------------------------------------------


def usage_from(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None

    read, write = count(usage, "cache_read_input_tokens"), count(usage, "cache_creation_input_tokens")
    return Usage(
        input_tokens=count(usage, "input_tokens") + read + write,  # Anthropic counts cached input apart
        output_tokens=count(usage, "output_tokens"),
        cached_tokens=read,
        cache_write_tokens=write,
    )


def error_from(payload: dict[str, Any]) -> UpstreamError:
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    kind = str(error.get("type") or "api_error")
    message = str(error.get("message") or kind)
    status = {"rate_limit_error": 429, "overloaded_error": 529, "invalid_request_error": 400,
              "authentication_error": 401, "permission_error": 403, "not_found_error": 404}.get(kind, 500)  # fmt: skip
    reason = classify_status(status, message.encode())
    if reason is Reason.CLIENT_ERROR:  # a 400 inside a stream is still this connection's failure
        reason = Reason.SERVER_ERROR
    return UpstreamError(ErrorKind.PROTOCOL, reason, f"{kind}: {message[:200]}")


def parse_response(body: bytes) -> c.Response:
    message = parse_object(body, "2xx response body")
    if message.get("type") == "error":
        raise error_from(message)
    blocks = message.get("content")
    if not isinstance(blocks, list):
        raise bad("message has no content")
    response = c.Response(id=message.get("id"), model=message.get("model"), usage=usage_from(message.get("usage")))
    text: list[str] = []
    reasoning: list[str] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(str(block.get("text", "")))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking", "")))
            response.reasoning_signature = block.get("signature") or response.reasoning_signature
        elif kind == "tool_use":
            response.tool_calls.append(
                c.ToolCall(
                    str(block.get("id")), str(block.get("name")), orjson.dumps(block.get("input") or {}).decode()
                )
            )
    response.text, response.reasoning = "".join(text), "".join(reasoning)
    response.finish = STOP_REASONS.get(str(message.get("stop_reason")), "stop")
    return response


@dataclass
class _Block:
    kind: str
    has_input: bool = False


class AnthropicDecoder:
    """Messages stream events -> canonical events, block by block."""

    def __init__(self) -> None:
        self.blocks: dict[int, _Block] = {}
        self.usage = Usage()
        self.finish: c.Finish | None = None
        self.stopped = False

    def feed(self, event: SSEEvent) -> list[c.Event]:
        if event.comment:
            return []
        payload = parse_object(event.data, "stream event")
        kind = payload.get("type") or event.event
        if kind == "error":
            raise error_from(payload)
        if kind == "message_start":
            message = payload.get("message") if isinstance(payload.get("message"), dict) else {}
            self.usage = usage_from(message.get("usage")) or Usage()
            return []
        index = payload.get("index")
        if kind == "content_block_start" and isinstance(index, int):
            block = payload.get("content_block") if isinstance(payload.get("content_block"), dict) else {}
            self.blocks[index] = _Block(str(block.get("type")))
            if block.get("type") == "tool_use":
                return [c.ToolCallStart(index, str(block.get("id")), str(block.get("name")))]
            if block.get("type") == "text" and block.get("text"):
                return [c.TextDelta(block["text"])]
            return []
        if kind == "content_block_delta" and isinstance(index, int):
            return self._delta(index, payload.get("delta") if isinstance(payload.get("delta"), dict) else {})
        if kind == "content_block_stop" and isinstance(index, int):
            block = self.blocks.get(index)
            if block is not None and block.kind == "tool_use" and not block.has_input:
                return [c.ToolCallDelta(index, "{}")]  # a call without arguments still has an object
            return []
        if kind == "message_delta":
            delta = payload.get("delta") if isinstance(payload.get("delta"), dict) else {}
            usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
            if isinstance(usage.get("output_tokens"), int):
                self.usage.output_tokens = usage["output_tokens"]
            if delta.get("stop_reason"):
                self.finish = STOP_REASONS.get(str(delta["stop_reason"]), "stop")
                return [c.FinishEvent(self.finish)]
            return []
        if kind == "message_stop":
            self.stopped = True
            return [c.UsageEvent(self.usage)]
        return []  # ping, and event types added later

    def _delta(self, index: int, delta: dict[str, Any]) -> list[c.Event]:
        kind = delta.get("type")
        if kind == "text_delta":
            return [c.TextDelta(str(delta.get("text", "")))]
        if kind == "thinking_delta":
            return [c.ReasoningDelta(str(delta.get("thinking", "")))]
        if kind == "signature_delta" and delta.get("signature"):
            return [c.ReasoningSignature(str(delta["signature"]))]
        if kind == "input_json_delta":
            partial = str(delta.get("partial_json", ""))
            if partial and index in self.blocks:
                self.blocks[index].has_input = True
                return [c.ToolCallDelta(index, partial)]
        return []

    def end(self) -> list[c.Event]:
        if not self.stopped:
            raise bad("stream ended before message_stop")
        return []


class AnthropicUpstream:
    """Anthropic Messages as the upstream format of a translated request."""

    dialect = Dialect.ANTHROPIC

    def __init__(self, rules: list[SamplingRule]) -> None:
        self.rules = rules

    def accepts(self, connection: Connection, request: c.Request) -> bool:
        return connection.dialect is self.dialect

    def call(self, request: c.Request, candidate: Candidate) -> UpstreamCall:
        connection = candidate.connection
        version = connection.anthropic_version
        body = build_request(request, candidate.model, connection, rule_for(self.rules, candidate.model, version))
        headers = {"Content-Type": "application/json", "anthropic-version": version}
        return UpstreamCall("/messages", orjson.dumps(body), headers)

    def parse(self, body: bytes, connection: Connection) -> c.Response:
        return parse_response(body)

    def decoder(self, connection: Connection) -> AnthropicDecoder:
        return AnthropicDecoder()


# --- Anthropic Messages as the client's format ---------------------------------------------------

FINISH_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
EFFORT_FOR_BUDGET = ((2048, "low"), (8192, "medium"), (10**9, "high"))
DROPPABLE = frozenset({"top_k", "service_tier", "container", "context_management", "inference_geo"})
HANDLED = frozenset(
    {"model", "max_tokens", "messages", "system", "tools", "tool_choice", "stop_sequences", "temperature", "top_p",
     "metadata", "thinking", "output_config", "stream"}
)  # fmt: skip


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


def parse_messages_request(body: dict[str, Any]) -> c.Request:
    """An Anthropic Messages body -> the canonical request (only when a translation needs it)."""
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


def _usageparse_object(usage: Usage | None) -> dict[str, Any]:
    usage = usage or Usage()
    return {
        "input_tokens": usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def new_message_id() -> str:
    return f"msg_{random_hex(12)}"


class AnthropicClient:
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
            "usage": _usageparse_object(response.usage),
        }  # fmt: skip
        return orjson.dumps(message)

    def encoder(self) -> AnthropicEncoder:
        return AnthropicEncoder(self)


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps({"type": kind, **payload}), kind)


class AnthropicEncoder:
    """Canonical events -> Messages stream events. Blocks open, stream and close one at a time with
    contiguous indexes; message_start carries usage and message_delta the output tokens.

    A tool call that starts while another one streams waits, whole, for the end of the message:
    upstreams may interleave the arguments of parallel calls, and a closed block cannot take more."""

    def __init__(self, client: AnthropicClient) -> None:
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
        out.append(_sse("message_delta", {"delta": delta, "usage": _usageparse_object(usage)}))
        out.append(_sse("message_stop", {}))
        return b"".join(out)

    def error(self, error: UpstreamError, connection: str) -> bytes:
        return stream_error(error, connection)


def stream_error(error: UpstreamError, connection: str) -> bytes:
    kind = "overloaded_error" if error.reason in (Reason.SERVER_ERROR, Reason.RATE_LIMITED) else "api_error"
    message = f"connection {connection} failed mid-stream: {error.reason} ({error.message})"
    return _sse("error", {"error": {"type": kind, "message": message}})


# --- same format: the byte fast path ------------------------------------------------------------


class NativeMessages:
    """An Anthropic Messages request to an Anthropic connection: bytes pass through, with the
    client's anthropic-version and anthropic-beta."""

    same_model_only = False

    def __init__(self, body: dict[str, Any], client_headers: Mapping[str, str], path: str = "/messages") -> None:
        self.body = body
        self.path = path
        self.stream = body.get("stream") is True
        self.headers = {"Content-Type": "application/json"}
        version = client_headers.get("anthropic-version")
        if version:
            self.headers["anthropic-version"] = version

    def serves(self, connection: Connection) -> bool:
        return connection.dialect is Dialect.ANTHROPIC

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        body = dict(self.body)
        body["model"] = candidate.model
        headers = {"anthropic-version": candidate.connection.anthropic_version, **self.headers}
        return UpstreamCall(self.path, orjson.dumps(body), headers)

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]:
        if event_stream and self.path == "/messages":  # streamed although asked for JSON: one Message
            response = fold_stream(body, AnthropicDecoder())
            client = AnthropicClient(str(self.body.get("model")), lambda: parse_messages_request(self.body))
            return client.render(response), response.usage
        if event_stream:
            raise bad("an Anthropic upstream streamed although asked for JSON")
        message = parse_object(body, "2xx response body")
        if message.get("type") == "error":
            raise error_from(message)
        return body, usage_from(message.get("usage"))

    def stream_relay(self, candidate: Candidate) -> DecodedPassthrough:
        return DecodedPassthrough(AnthropicDecoder(), stream_error)

    def parse(self, body: bytes, candidate: Candidate) -> c.Response:
        return parse_response(body)

    def features(self) -> c.Features:
        """Used alone (count_tokens) nothing is gated; as a fast path the bridge answers for the request."""
        return c.Features()
