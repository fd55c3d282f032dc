"""Gemini generateContent as the CLIENT's format of a translated request: a client's body -> the
canonical request (`parse_request`), canonical answers -> GenerateContentResponse bodies and
streamGenerateContent chunks (`Renderer`, `Encoder`).

A function call's thoughtSignature rides inside the tool-call id (see `upstream.join_signature`).
`:streamGenerateContent` without `alt=sse` answers a JSON array of chunks: the `array` flag.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ...errors import GatewayError, UpstreamError
from ...sse import encode_event
from .. import canonical as c
from ..base import leftover_fields, loads_object, mid_stream_message, optional, random_hex
from ..canonical import Usage
from .upstream import join_signature, split_signature

# --- tables ------------------------------------------------------------------------------------

FINISH_TO_GEMINI = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}
EFFORT_FOR_BUDGET = ((1, "none"), (2048, "low"), (16384, "medium"), (10**9, "high"))
# The REST API accepts snake_case on input; the SDKs send camelCase. Structural keys only: never the
# keys inside schemas, function arguments or function responses.
SNAKE_TO_CAMEL = {
    key: re.sub(r"_(\w)", lambda m: m.group(1).upper(), key)
    for key in (
        "system_instruction", "generation_config", "max_output_tokens", "inline_data", "mime_type",
        "function_call", "function_response", "function_declarations", "tool_config", "function_calling_config",
        "allowed_function_names", "response_mime_type", "response_schema", "response_json_schema",
        "thinking_config", "thinking_budget", "thinking_level", "include_thoughts", "stop_sequences", "top_p",
        "top_k", "candidate_count", "parameters_json_schema", "thought_signature", "file_data", "file_uri",
        "safety_settings", "cached_content",
    )
}  # fmt: skip
OPAQUE = frozenset({"args", "response", "parameters", "parametersJsonSchema", "responseSchema", "responseJsonSchema"})
HANDLED = frozenset({"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "model"})
DROPPABLE = frozenset({"safetySettings", "cachedContent", "labels"})


# --- functions ---------------------------------------------------------------------------------


def camel(value: Any) -> Any:
    """`value` with its structural snake_case keys in camelCase (OPAQUE values left as they are)."""
    if isinstance(value, list):
        return [camel(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        key = SNAKE_TO_CAMEL.get(key, key)
        out[key] = item if key in OPAQUE else camel(item)
    return out


def _invalid(param: str, message: str) -> GatewayError:
    return GatewayError(400, f"Invalid value at '{param}': {message}", param=param)


def _object(body: dict[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
    """An optional object field of a request ({} when absent); anything else is a 400."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(prefix + key, "expected an object")
    return value


def _data_url(blob: dict[str, Any]) -> str:
    return f"data:{blob.get('mimeType')};base64,{blob.get('data')}"


def _content(raw: Any, where: str, ids: _CallIds, unsupported: list[str]) -> list[c.Message]:
    if not isinstance(raw, dict) or not isinstance(raw.get("parts"), list):
        raise _invalid(where, "a content needs a parts array")
    role = "assistant" if raw.get("role") == "model" else "user"
    message = c.Message(role)
    out: list[c.Message] = []
    reasoning: list[str] = []
    for i, part in enumerate(raw["parts"]):
        at = f"{where}.parts[{i}]"
        if not isinstance(part, dict):
            raise _invalid(at, "expected an object")
        if isinstance(part.get("text"), str):
            if part.get("thought"):
                reasoning.append(part["text"])
            else:
                message.content.append(c.Text(part["text"]))
        elif isinstance(part.get("inlineData"), dict):
            blob = part["inlineData"]
            url = _data_url(blob)
            message.content.append(c.Image(url) if str(blob.get("mimeType")).startswith("image/") else c.File(data=url))
        elif isinstance(part.get("functionCall"), dict):
            function = part["functionCall"]
            call_id = ids.call(function, part.get("thoughtSignature"))
            message.tool_calls.append(
                c.ToolCall(call_id, str(function.get("name")), orjson.dumps(function.get("args") or {}).decode())
            )
        elif isinstance(part.get("functionResponse"), dict):
            function = part["functionResponse"]
            result = orjson.dumps(function.get("response") or {}).decode()
            out.append(c.Message("tool", [c.Text(result)], tool_call_id=ids.response(function)))
        else:
            unsupported.append(f"{at}: this kind of part cannot be translated")
    if reasoning and role == "assistant":
        message.reasoning = "".join(reasoning)
    if message.content or message.tool_calls or message.reasoning:
        out.append(message)
    return out


def _effort_of(thinking: Any) -> str | None:
    if not isinstance(thinking, dict):
        return None
    level = thinking.get("thinkingLevel")
    if isinstance(level, str):
        return level.lower()
    budget = thinking.get("thinkingBudget")
    if not isinstance(budget, int) or budget < 0:  # -1: dynamic
        return "medium" if thinking.get("includeThoughts") else None
    return next((effort for limit, effort in EFFORT_FOR_BUDGET if budget < limit), "high")


def parse_request(raw_body: dict[str, Any], stream: bool) -> c.Request:
    """A generateContent body -> the canonical request (only when a translation needs it). Raises
    GatewayError(400) for a malformed field; what cannot be translated is listed in `unsupported`."""
    body = camel(raw_body)
    unsupported: list[str] = []
    messages: list[c.Message] = []
    system = _object(body, "systemInstruction")
    if system:
        parts = system.get("parts") or []
        if not isinstance(parts, list):
            raise _invalid("systemInstruction.parts", "expected an array of parts")
        texts = [p["text"] for p in parts if isinstance(p, dict) and "text" in p]
        if not all(isinstance(text, str) for text in texts):
            raise _invalid("systemInstruction.parts", "a part's text must be a string")
        text = "".join(texts)
        if text:
            messages.append(c.Message("system", [c.Text(text)]))
    contents = body.get("contents")
    if not isinstance(contents, list):
        raise _invalid("contents", "expected an array of contents")
    ids = _CallIds()
    for i, content in enumerate(contents):
        messages += _content(content, f"contents[{i}]", ids, unsupported)
    request = c.Request(messages, stream=stream)
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _invalid("tools", "expected an array of tools")
    for i, tool in enumerate(tools):
        declarations = tool.get("functionDeclarations") if isinstance(tool, dict) else None
        if not isinstance(declarations, list):
            unsupported.append(f"tools[{i}]: only function declarations can be translated")
            continue
        for j, declaration in enumerate(declarations):
            if not isinstance(declaration, dict):
                raise _invalid(f"tools[{i}].functionDeclarations[{j}]", "expected an object")
            parameters = declaration.get("parametersJsonSchema") or declaration.get("parameters")
            request.tools.append(c.Tool(str(declaration.get("name")), declaration.get("description"), parameters))
    config = _object(_object(body, "toolConfig"), "functionCallingConfig", "toolConfig.")
    mode = str(config.get("mode", "AUTO")).upper()
    allowed = config.get("allowedFunctionNames") or []
    if not isinstance(allowed, list):
        raise _invalid("toolConfig.functionCallingConfig.allowedFunctionNames", "expected an array of names")
    if mode in ("ANY", "VALIDATED") and len(allowed) == 1:
        request.forced_tool = allowed[0]
    elif mode in ("ANY", "NONE", "AUTO"):
        request.tool_choice = {"ANY": "required", "NONE": "none", "AUTO": "auto"}[mode]
    generation = _object(body, "generationConfig")
    for key, field, kinds, what in (
        ("max_output_tokens", "maxOutputTokens", int, "an integer"),
        ("temperature", "temperature", (int, float), "a number"),
        ("top_p", "topP", (int, float), "a number"),
        ("stop", "stopSequences", list, "an array of strings"),
    ):
        setattr(request, key, optional(generation, field, kinds, what, _invalid, f"generationConfig.{field}"))
    if generation.get("responseMimeType") == "application/json":
        schema = generation.get("responseJsonSchema") or generation.get("responseSchema")
        request.output_format = (
            c.OutputFormat("json_schema", "response", schema) if schema else c.OutputFormat("json_object")
        )
    request.reasoning_effort = _effort_of(generation.get("thinkingConfig"))
    if isinstance(generation.get("candidateCount"), int) and generation["candidateCount"] > 1:
        unsupported.append("generationConfig.candidateCount: several candidates cannot be translated")
    leftover_fields(body, HANDLED, DROPPABLE, unsupported, "Gemini")
    request.unsupported = unsupported
    return request


def usage_object(usage: Usage | None) -> dict[str, Any]:
    """`usage` as Gemini's `usageMetadata` (zeros when there is none)."""
    usage = usage or Usage()
    out = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": usage.output_tokens - usage.reasoning_tokens,
        "totalTokenCount": usage.input_tokens + usage.output_tokens,
    }
    if usage.reasoning_tokens:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    if usage.cached_tokens:
        out["cachedContentTokenCount"] = usage.cached_tokens
    return out


def _call_part(call: c.ToolCall) -> dict[str, Any]:
    call_id, signature = split_signature(call.id)
    function: dict[str, Any] = {"name": call.name, "args": loads_object(call.arguments) or {}}
    if not call_id.startswith("gemini-"):
        function["id"] = call_id
    part: dict[str, Any] = {"functionCall": function}
    if signature:
        part["thoughtSignature"] = signature
    return part


def as_array(body: bytes) -> bytes:
    """A GenerateContentResponse body as `:streamGenerateContent` without `alt=sse` answers it: a JSON
    array of chunks (here the one)."""
    return b"[" + body + b"]"


def stream_error(error: UpstreamError, connection: str) -> bytes:
    """The SSE event that ends a client's stream after a failure past the commit point (a 503)."""
    message = mid_stream_message(error, connection)
    return encode_event(orjson.dumps({"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}}))


# --- classes -----------------------------------------------------------------------------------


class _CallIds:
    """Gemini calls may come without ids: give them stable ones, matched to responses by name."""

    def __init__(self) -> None:
        self.count = 0
        self.open: dict[str, list[str]] = {}

    def call(self, function: dict[str, Any], signature: Any) -> str:
        base = function.get("id") or f"gemini-{self.count}"
        self.count += 1
        self.open.setdefault(str(function.get("name")), []).append(base)
        return join_signature(str(base), signature if isinstance(signature, str) else None)

    def response(self, function: dict[str, Any]) -> str:
        waiting = self.open.get(str(function.get("name"))) or []
        if function.get("id"):
            if function["id"] in waiting:
                waiting.remove(function["id"])
            return str(function["id"])
        return waiting.pop(0) if waiting else f"gemini-{function.get('name')}"


class Renderer:
    """Gemini as the client's format: canonical answers -> GenerateContentResponse bodies and chunks.
    With `array` (`:streamGenerateContent` without `alt=sse`) a whole answer is a one-chunk array."""

    def __init__(self, model: str, array: bool = False) -> None:
        self.model = model
        self.id = random_hex(12)
        self.array = array

    def chunk(
        self, parts: list[dict[str, Any]], finish: str | None = None, usage: Usage | None = None
    ) -> dict[str, Any]:
        """One GenerateContentResponse; the usage goes with the finish."""
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        body: dict[str, Any] = {"candidates": [candidate], "modelVersion": self.model, "responseId": self.id}
        if finish:
            body["usageMetadata"] = usage_object(usage)
        return body

    def render(self, response: c.Response) -> bytes:
        parts: list[dict[str, Any]] = []
        if response.reasoning:
            parts.append({"text": response.reasoning, "thought": True})
        if response.text:
            parts.append({"text": response.text})
        parts += [_call_part(call) for call in response.tool_calls]
        body = orjson.dumps(self.chunk(parts, FINISH_TO_GEMINI[response.finish], response.usage))
        return as_array(body) if self.array else body

    def encoder(self) -> Encoder:
        return Encoder(self)


class Encoder:
    """Canonical events -> streamGenerateContent SSE chunks. A function call goes out whole, once its
    arguments are complete (Gemini never streams partial arguments)."""

    def __init__(self, client: Renderer) -> None:
        self.client = client
        self.calls: dict[int, c.ToolCall] = {}
        self.finish: c.Finish = "stop"

    def _send(self, parts: list[dict[str, Any]], finish: str | None = None, usage: Usage | None = None) -> bytes:
        return encode_event(orjson.dumps(self.client.chunk(parts, finish, usage)))

    def _flush_calls(self) -> list[dict[str, Any]]:
        parts = [_call_part(self.calls[i]) for i in sorted(self.calls)]
        self.calls.clear()
        return parts

    def encode(self, events: list[c.Event]) -> bytes:
        parts: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, c.TextDelta) and event.text:
                parts.append({"text": event.text})
            elif isinstance(event, c.ReasoningDelta):
                parts.append({"text": event.text, "thought": True})
            elif isinstance(event, c.ToolCallStart):
                parts += self._flush_calls()
                self.calls[event.index] = c.ToolCall(event.id, event.name, "")
            elif isinstance(event, c.ToolCallDelta) and event.index in self.calls:
                self.calls[event.index].arguments += event.arguments
            elif isinstance(event, c.FinishEvent):
                self.finish = event.reason
        return self._send(parts) if parts else b""

    def finish_stream(self, usage: Usage | None) -> bytes:
        return self._send(self._flush_calls(), FINISH_TO_GEMINI[self.finish], usage)

    def error(self, error: UpstreamError, connection: str) -> bytes:
        return stream_error(error, connection)
