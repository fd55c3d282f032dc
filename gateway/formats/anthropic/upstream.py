"""Anthropic Messages as the UPSTREAM format of a translated request: canonical -> Messages, and back.

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
from dataclasses import dataclass
from typing import Any

import orjson

from ...config.model import Connection
from ...contracts import Candidate, Dialect, UpstreamCall
from ...errors import UpstreamError
from ...presets import SamplingRule
from ...sse import SSEEvent
from .. import canonical as c
from ..base import bad, call_arguments, count, parse_object, unsupported, upstream_error
from ..canonical import Usage

log = logging.getLogger("gateway.formats.anthropic")

# --- tables ------------------------------------------------------------------------------------

STOP_REASONS: dict[str, c.Finish] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "pause_turn": "length",  # the turn is not finished: the client must continue it
    "refusal": "content_filter",
}
# An error event's or body's `type` -> the HTTP status it stands for (classified as that status is).
ERROR_STATUS = {
    "rate_limit_error": 429,
    "overloaded_error": 529,
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
}
THINKING_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
MIN_THINKING_BUDGET = 1024
DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+);base64,(.*)$", re.DOTALL)


# --- functions ---------------------------------------------------------------------------------


def rule_for(rules: list[SamplingRule], model: str, version: str) -> SamplingRule:
    """The sampling rule for a model: a rule naming the API version wins; then the longest model
    prefix; else the safest rule (`SamplingRule()`)."""
    for rule in rules:
        if rule.anthropic_version and rule.anthropic_version == version:
            return rule
    matches = [r for r in rules if r.prefix and model.startswith(r.prefix)]
    return max(matches, key=lambda r: len(r.prefix or "")) if matches else SamplingRule()


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
    """The Messages body (a dict, not yet serialized) for `request` sent as `model`. Raises
    UpstreamError(unsupported) for what Messages cannot express (a file by id, tool arguments that
    are not an object)."""
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


def usage_from(usage: Any) -> Usage | None:
    """A Messages `usage` object -> canonical usage (input counts the cached input too), or None when
    there is none."""
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
    """An error body or `error` event -> the UpstreamError it stands for (returned, not raised): its
    reason from the status its `type` maps to (`ERROR_STATUS`, else 500); its message names the type
    ("overloaded_error: Overloaded"), which the retry policy reads. A 400 inside a stream is still
    this connection's failure (`in_stream`)."""
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    kind = str(error.get("type") or "api_error")
    message = str(error.get("message") or kind)
    return upstream_error(message, ERROR_STATUS.get(kind, 500), kind, in_stream=True)


def parse_response(body: bytes) -> c.Response:
    """A whole 2xx Message body -> the canonical response. Raises UpstreamError: the error it holds
    (`type: error`), or bad_response when it is not a Message."""
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


# --- classes -----------------------------------------------------------------------------------


@dataclass
class _Block:
    """What the decoder remembers of an open content block."""

    kind: str
    has_input: bool = False


class Decoder:
    """Messages stream events -> canonical events, block by block."""

    def __init__(self) -> None:
        self.blocks: dict[int, _Block] = {}
        self.usage = Usage()
        self.finish: c.Finish | None = None
        self.stopped = False

    def feed(self, event: SSEEvent) -> list[c.Event]:
        """The canonical events one Messages event carries. Raises UpstreamError for an `error` event
        (see `error_from`) or an event that is not a JSON object."""
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
        """Nothing is held back; raises UpstreamError(bad_response) for a stream without message_stop."""
        if not self.stopped:
            raise bad("stream ended before message_stop")
        return []


class Upstream:
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

    def decoder(self, connection: Connection) -> Decoder:
        return Decoder()
