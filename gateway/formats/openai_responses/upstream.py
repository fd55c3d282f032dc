"""OpenAI Responses as the upstream format of a translated request (connections with `responses:
native`): `build_request` (canonical -> a Responses body), `parse_response` (a whole answer), `usage_from`,
`error_from` (an error event or failed response -> UpstreamError), `Decoder` (a Responses stream ->
canonical events) and `Upstream` (the `contracts.UpstreamFormat` of the OPENAI dialect's Responses API).
"""

from __future__ import annotations

from typing import Any

import orjson

from ...config.model import Connection
from ...contracts import Candidate, Dialect, UpstreamCall
from ...errors import UpstreamError
from ...sse import SSEEvent
from .. import canonical as c
from ..base import bad, count, parse_object, upstream_error
from ..canonical import Usage
from .client import reasoning_of

# --- constants and tables -------------------------------------------------------------------------

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


# --- functions ------------------------------------------------------------------------------------


def usage_from(usage: Any) -> Usage | None:
    """A Response object's `usage` as canonical usage; None when it has none."""
    if not isinstance(usage, dict):
        return None
    out_details = usage.get("output_tokens_details")
    in_details = usage.get("input_tokens_details")
    out_details = out_details if isinstance(out_details, dict) else {}
    in_details = in_details if isinstance(in_details, dict) else {}
    return Usage(
        input_tokens=count(usage, "input_tokens"),
        output_tokens=count(usage, "output_tokens"),
        reasoning_tokens=count(out_details, "reasoning_tokens"),
        cached_tokens=count(in_details, "cached_tokens"),
        cache_write_tokens=count(in_details, "cache_write_tokens"),
    )


def error_from(payload: dict[str, Any]) -> UpstreamError:
    """An error event, a `response.failed` event or a failed Response object -> its UpstreamError
    (through `base.upstream_error`), the status from the error's code: 429 for rate_limit or quota,
    400 for context_length, else 500."""
    error = payload.get("error")
    if not isinstance(error, dict):
        response = payload.get("response")
        error = response.get("error") if isinstance(response, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or payload.get("message") or "upstream error")
    code = str(error.get("code") or error.get("type") or payload.get("code") or "")
    status = 429 if "rate_limit" in code or "quota" in code else 400 if "context_length" in code else 500
    return upstream_error(message, status, code or None)


def _input_part(part: c.Part) -> dict[str, Any]:
    if isinstance(part, c.Text):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, c.Image):
        return {"type": "input_image", "image_url": part.url} | ({"detail": part.detail} if part.detail else {})
    return {"type": "input_file"} | {
        k: v for k, v in (("file_data", part.data), ("file_id", part.file_id), ("filename", part.filename)) if v
    }


def build_request(request: c.Request, model: str) -> dict[str, Any]:
    """The canonical request as a Responses body (the inverse of `parse_request`)."""
    messages = request.messages
    body: dict[str, Any] = {"model": model}
    if messages and messages[0].role == "system":
        body["instructions"] = messages[0].text()
        messages = messages[1:]
    items: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "tool":
            items.append({"type": "function_call_output", "call_id": message.tool_call_id, "output": message.text()})
        elif message.role == "assistant":
            if message.text():
                content = [{"type": "output_text", "text": message.text()}]
                items.append({"type": "message", "role": "assistant", "content": content})
            items += [
                {"type": "function_call", "call_id": call.id, "name": call.name, "arguments": call.arguments}
                for call in message.tool_calls
            ]
        else:
            content = [_input_part(p) for p in message.content]
            items.append({"type": "message", "role": message.role, "content": content})
    body["input"] = items
    if request.tools:
        # Responses makes function tools strict unless told otherwise: keep the client's meaning.
        body["tools"] = [
            {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
             "strict": bool(t.strict)}
            for t in request.tools
        ]  # fmt: skip
    if request.forced_tool:
        body["tool_choice"] = {"type": "function", "name": request.forced_tool}
    elif request.tool_choice:
        body["tool_choice"] = request.tool_choice
    for key in ("parallel_tool_calls", "max_output_tokens", "temperature", "top_p", "metadata", "user"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    fmt = request.output_format
    if fmt is not None:
        body["text"] = {"format": {"type": "json_object"}}
        if fmt.type == "json_schema":
            body["text"]["format"] = {"type": "json_schema", "name": fmt.name or "response", "schema": fmt.schema or {}}
            if fmt.strict is not None:
                body["text"]["format"]["strict"] = fmt.strict
    if request.reasoning_effort:
        body["reasoning"] = {"effort": request.reasoning_effort}
    body["store"] = False  # the gateway keeps conversation state itself
    if request.stream:
        body["stream"] = True
    return body


def _finish_of(response: dict[str, Any], calls: bool) -> c.Finish:
    if response.get("status") == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if calls else "stop"


def parse_response(body: bytes) -> c.Response:
    """A whole 2xx Response object -> the canonical answer. Raises UpstreamError for a failed response
    (`error_from`) or a body that is not a JSON object (bad_response)."""
    response = parse_object(body, "2xx response body")
    if response.get("status") == "failed" or (response.get("error") and not response.get("output")):
        raise error_from(response)
    out = c.Response(usage=usage_from(response.get("usage")), id=response.get("id"), model=response.get("model"))
    text: list[str] = []
    for item in response.get("output") or []:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            text += [p.get("text", "") for p in item.get("content") or [] if p.get("type") == "output_text"]
            refusals = [p.get("refusal", "") for p in item.get("content") or [] if p.get("type") == "refusal"]
            out.refusal = "".join(refusals) or out.refusal
        elif kind == "reasoning":
            out.reasoning += reasoning_of(item)
        elif kind == "function_call":
            out.tool_calls.append(
                c.ToolCall(str(item.get("call_id")), str(item.get("name")), str(item.get("arguments", "")))
            )
    out.text = "".join(text)
    out.finish = _finish_of(response, bool(out.tool_calls))
    return out


# --- classes --------------------------------------------------------------------------------------


class Decoder:
    """Responses stream events -> canonical events."""

    def __init__(self) -> None:
        self.calls = False
        self.terminal = False

    def feed(self, event: SSEEvent) -> list[c.Event]:
        if event.comment or event.data == b"[DONE]":
            return []
        payload = parse_object(event.data, "stream event")
        kind = payload.get("type")
        if kind in ("error", "response.failed"):
            raise error_from(payload)
        if kind == "response.output_text.delta":
            return [c.TextDelta(str(payload.get("delta", "")))]
        if kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            return [c.ReasoningDelta(str(payload.get("delta", "")))]
        index = payload.get("output_index", 0)
        item = payload.get("item") if isinstance(payload.get("item"), dict) else {}
        if kind == "response.output_item.added" and item.get("type") == "function_call":
            self.calls = True
            return [c.ToolCallStart(index, str(item.get("call_id")), str(item.get("name")))]
        if kind == "response.function_call_arguments.delta":
            return [c.ToolCallDelta(index, str(payload.get("delta", "")))]
        if kind in TERMINAL:
            self.terminal = True
            response = payload.get("response") if isinstance(payload.get("response"), dict) else {}
            events: list[c.Event] = [c.FinishEvent(_finish_of(response, self.calls))]
            usage = usage_from(response.get("usage"))
            return [*events, c.UsageEvent(usage)] if usage is not None else events
        return []

    def end(self) -> list[c.Event]:
        if not self.terminal:
            raise bad("stream ended before its terminal event")
        return []


class Upstream:
    """The Responses API as the upstream format, for connections that serve it (`responses: native`).
    A request with `stop` goes to Chat Completions instead: Responses has no stop sequences."""

    dialect = Dialect.OPENAI

    def accepts(self, connection: Connection, request: c.Request) -> bool:
        return connection.dialect is Dialect.OPENAI and connection.responses_native and not request.stop

    def call(self, request: c.Request, candidate: Candidate) -> UpstreamCall:
        body = orjson.dumps(build_request(request, candidate.model))
        return UpstreamCall("/responses", body, {"Content-Type": "application/json"})

    def parse(self, body: bytes, connection: Connection) -> c.Response:
        return parse_response(body)

    def decoder(self, connection: Connection) -> Decoder:
        return Decoder()
