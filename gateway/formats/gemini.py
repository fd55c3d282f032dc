"""Gemini generateContent <-> canonical (as the upstream format of translated requests).

The key travels in the `x-goog-api-key` header only: URLs end up in logs and exception messages.
Function calls carry a `thoughtSignature` that must come back unchanged with the function-call turn.
Clients of other formats have no field for it, so it rides inside the tool-call id
(`<id>__thought__<signature>`) and is split off again here; nothing outside this module sees it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..config import Connection
from ..contracts import Candidate, Dialect, UpstreamCall
from ..errors import ErrorKind, GatewayError, UpstreamError, classify_status
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

SIGNATURE_SEPARATOR = "__thought__"
THINKING_BUDGET = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768}
CONTENT_FILTER = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
)
# Finishes that mean the answer is broken, not finished: never reported as an empty `stop`.
FAILED = frozenset(
    {"MALFORMED_FUNCTION_CALL", "MISSING_THOUGHT_SIGNATURE", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"}
)
DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+);base64,(.*)$", re.DOTALL)


def join_signature(call_id: str, signature: str | None) -> str:
    return f"{call_id}{SIGNATURE_SEPARATOR}{signature}" if signature else call_id


def split_signature(call_id: str) -> tuple[str, str | None]:
    base, separator, signature = call_id.partition(SIGNATURE_SEPARATOR)
    return (base, signature) if separator else (call_id, None)


# --- requests ----------------------------------------------------------------------------------


def _part(part: c.Part) -> dict[str, Any]:
    if isinstance(part, c.Text):
        return {"text": part.text}
    url = part.url if isinstance(part, c.Image) else part.data or ""
    match = DATA_URL.match(url)
    if match:
        return {"inlineData": {"mimeType": match.group(1), "data": match.group(2)}}
    if isinstance(part, c.File) and part.data:
        return {"inlineData": {"mimeType": "application/pdf", "data": part.data}}
    raise unsupported("Gemini takes images and files inline: send a data: URL")


def _result(text: str) -> dict[str, Any]:
    """functionResponse.response must be an object: JSON objects pass, anything else is wrapped."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"result": text}


def _contents(request: c.Request) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(systemInstruction parts, contents), consecutive turns of one role merged."""
    system = [{"text": m.text()} for m in request.messages if m.role == "system" and m.text()]
    names = {call.id: call.name for m in request.messages for call in m.tool_calls}
    contents: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "system":
            continue
        if message.role == "tool":
            call_id, _ = split_signature(message.tool_call_id or "")
            response: dict[str, Any] = {
                "name": names.get(message.tool_call_id or "", "function"),
                "response": _result(message.text()),
            }
            if not call_id.startswith("gemini-"):
                response["id"] = call_id
            role, parts = "user", [{"functionResponse": response}]
        elif message.role == "user":
            role, parts = "user", [_part(p) for p in message.content if not (isinstance(p, c.Text) and not p.text)]
        else:
            role = "model"
            parts = [{"text": p.text} for p in message.content if isinstance(p, c.Text) and p.text]
            for call in message.tool_calls:
                call_id, signature = split_signature(call.id)
                function: dict[str, Any] = {"name": call.name, "args": call_arguments(call)}
                if not call_id.startswith("gemini-"):
                    function["id"] = call_id
                part: dict[str, Any] = {"functionCall": function}
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"] += parts
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def build_request(request: c.Request) -> dict[str, Any]:
    system, contents = _contents(request)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if request.tools:
        declarations = []
        for tool in request.tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description:
                declaration["description"] = tool.description
            if tool.parameters:
                declaration["parametersJsonSchema"] = tool.parameters
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
        mode = {"required": "ANY", "none": "NONE"}.get(request.tool_choice or "auto", "AUTO")
        config: dict[str, Any] = {"mode": "ANY" if request.forced_tool else mode}
        if request.forced_tool:
            config["allowedFunctionNames"] = [request.forced_tool]
        body["toolConfig"] = {"functionCallingConfig": config}
    generation: dict[str, Any] = {}
    for key, name in (("max_output_tokens", "maxOutputTokens"), ("temperature", "temperature"), ("top_p", "topP")):
        value = getattr(request, key)
        if value is not None:
            generation[name] = value
    if request.stop:
        generation["stopSequences"] = request.stop
    fmt = request.output_format
    if fmt is not None:
        generation["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema:
            generation["responseJsonSchema"] = fmt.schema
    effort = request.reasoning_effort
    if effort == "none":
        generation["thinkingConfig"] = {"thinkingBudget": 0}
    elif effort:
        generation["thinkingConfig"] = {"includeThoughts": True, "thinkingBudget": THINKING_BUDGET.get(effort, 8192)}
    if generation:
        body["generationConfig"] = generation
    return body


# --- answers -----------------------------------------------------------------------------------


def usage_from(metadata: Any) -> Usage | None:
    if not isinstance(metadata, dict):
        return None

    thoughts = count(metadata, "thoughtsTokenCount")
    return Usage(
        input_tokens=count(metadata, "promptTokenCount"),
        output_tokens=count(metadata, "candidatesTokenCount") + thoughts,
        reasoning_tokens=thoughts,
        cached_tokens=count(metadata, "cachedContentTokenCount"),
    )


def error_from(payload: dict[str, Any]) -> UpstreamError:
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    code = error.get("code") if isinstance(error.get("code"), int) else 500
    message = str(error.get("message") or error.get("status") or "upstream error")
    return UpstreamError(
        ErrorKind.PROTOCOL, classify_status(code, message.encode()), f"error from upstream: {message[:200]}"
    )


def _finish(reason: Any, has_calls: bool) -> c.Finish | None:
    if reason is None:
        return None
    if reason in FAILED:
        raise bad(f"the model's answer failed: finishReason {reason}")
    if reason in CONTENT_FILTER:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if has_calls else "stop"


class GeminiDecoder:
    """GenerateContentResponse chunks -> canonical events. Each functionCall arrives whole."""

    def __init__(self) -> None:
        self.calls = 0
        self.usage: Usage | None = None
        self.finished = False

    def chunk(self, payload: dict[str, Any]) -> list[c.Event]:
        if payload.get("error") is not None:
            raise error_from(payload)
        out: list[c.Event] = []
        candidates = payload.get("candidates")
        candidate = (
            candidates[0] if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict) else None
        )
        if candidate is None:
            feedback = payload.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                self.finished = True
                out.append(c.FinishEvent("content_filter"))
        else:
            content = candidate.get("content") if isinstance(candidate.get("content"), dict) else {}
            for part in content.get("parts") or []:
                out += self._part(part) if isinstance(part, dict) else []
            finish = _finish(candidate.get("finishReason"), self.calls > 0)
            if finish is not None:
                self.finished = True
                out.append(c.FinishEvent(finish))
        usage = usage_from(payload.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
            if self.finished:
                out.append(c.UsageEvent(usage))
        return out

    def _part(self, part: dict[str, Any]) -> list[c.Event]:
        call = part.get("functionCall")
        if isinstance(call, dict):
            index = self.calls
            self.calls += 1
            call_id = str(call.get("id") or f"gemini-{random_hex(8)}")
            signature = part.get("thoughtSignature")
            signature = signature if isinstance(signature, str) else None
            start = c.ToolCallStart(index, join_signature(call_id, signature), str(call.get("name")))
            return [start, c.ToolCallDelta(index, orjson.dumps(call.get("args") or {}).decode())]
        text = part.get("text")
        if isinstance(text, str) and text:
            return [c.ReasoningDelta(text) if part.get("thought") else c.TextDelta(text)]
        return []

    def feed(self, event: SSEEvent) -> list[c.Event]:
        return [] if event.comment else self.chunk(parse_object(event.data, "stream event"))

    def end(self) -> list[c.Event]:
        if not self.finished:
            raise bad("stream ended without a finishReason")
        return []


def parse_response(body: bytes) -> c.Response:
    decoder = GeminiDecoder()
    answer = c.Accumulator()
    answer.add(decoder.chunk(parse_object(body, "2xx response body")))
    answer.add(decoder.end())
    return answer.result()


class GeminiUpstream:
    """Gemini generateContent as the upstream format of a translated request."""

    dialect = Dialect.GEMINI

    def accepts(self, connection: Connection, request: c.Request) -> bool:
        return connection.dialect is self.dialect

    def call(self, request: c.Request, candidate: Candidate) -> UpstreamCall:
        method = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        body = orjson.dumps(build_request(request))
        model = candidate.model.removeprefix("models/")
        return UpstreamCall(f"/models/{model}:{method}", body, {"Content-Type": "application/json"})

    def parse(self, body: bytes, connection: Connection) -> c.Response:
        return parse_response(body)

    def decoder(self, connection: Connection) -> GeminiDecoder:
        return GeminiDecoder()


# --- Gemini as the client's format -------------------------------------------------------------

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


def camel(value: Any) -> Any:
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


def parse_generate_request(raw_body: dict[str, Any], stream: bool) -> c.Request:
    """A generateContent body -> the canonical request (only when a translation needs it)."""
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


def _usage_metadata(usage: Usage | None) -> dict[str, Any]:
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


class GeminiClient:
    """Gemini as the client's format: canonical answers -> GenerateContentResponse bodies and chunks."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = random_hex(12)

    def chunk(
        self, parts: list[dict[str, Any]], finish: str | None = None, usage: Usage | None = None
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        body: dict[str, Any] = {"candidates": [candidate], "modelVersion": self.model, "responseId": self.id}
        if finish:
            body["usageMetadata"] = _usage_metadata(usage)
        return body

    def render(self, response: c.Response) -> bytes:
        parts: list[dict[str, Any]] = []
        if response.reasoning:
            parts.append({"text": response.reasoning, "thought": True})
        if response.text:
            parts.append({"text": response.text})
        parts += [_call_part(call) for call in response.tool_calls]
        return orjson.dumps(self.chunk(parts, FINISH_TO_GEMINI[response.finish], response.usage))

    def encoder(self) -> GeminiEncoder:
        return GeminiEncoder(self)


class GeminiEncoder:
    """Canonical events -> streamGenerateContent SSE chunks. A function call goes out whole, once its
    arguments are complete (Gemini never streams partial arguments)."""

    def __init__(self, client: GeminiClient) -> None:
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


def stream_error(error: UpstreamError, connection: str) -> bytes:
    message = f"connection {connection} failed mid-stream: {error.reason} ({error.message})"
    return encode_event(orjson.dumps({"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}}))


# --- same format: the byte fast path ------------------------------------------------------------


class NativeGenerate:
    """A Gemini request to a Gemini connection: bytes pass through, the model in the path."""

    def __init__(self, body: dict[str, Any], stream: bool) -> None:
        self.body = body
        self.stream = stream

    def serves(self, connection: Connection) -> bool:
        return connection.dialect is Dialect.GEMINI

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        method = "streamGenerateContent?alt=sse" if self.stream else "generateContent"
        model = candidate.model.removeprefix("models/")
        return UpstreamCall(f"/models/{model}:{method}", orjson.dumps(self.body), {"Content-Type": "application/json"})

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]:
        if event_stream:  # streamed although asked for JSON: one GenerateContentResponse
            response = fold_stream(body, GeminiDecoder())
            return GeminiClient(candidate.model.removeprefix("models/")).render(response), response.usage
        decoder = GeminiDecoder()
        decoder.chunk(parse_object(body, "2xx response body"))  # raises for errors and failed finishes
        return body, decoder.usage

    def stream_relay(self, candidate: Candidate) -> DecodedPassthrough:
        return DecodedPassthrough(GeminiDecoder(), stream_error)

    def parse(self, body: bytes, candidate: Candidate) -> c.Response:
        return parse_response(body)


class NativeCountTokens(NativeGenerate):
    """`countTokens` to a Gemini connection: the body passes through, the answer comes back as it is."""

    same_model_only = False

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body, stream=False)

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        model = candidate.model.removeprefix("models/")
        headers = {"Content-Type": "application/json"}
        return UpstreamCall(f"/models/{model}:countTokens", orjson.dumps(self.body), headers)

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]:
        if event_stream:
            raise bad("a Gemini upstream streamed although asked for JSON")
        parse_object(body, "2xx response body")
        return body, None

    def features(self) -> c.Features:
        return c.Features()
