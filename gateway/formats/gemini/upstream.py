"""Gemini generateContent as the UPSTREAM of a translated request: canonical request -> body and path,
answers and stream chunks -> canonical. Also the thoughtSignature helpers, which the client side
(`client.py`) uses as well.

The key travels in the `x-goog-api-key` header only: URLs end up in logs and exception messages.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ...config.model import Connection
from ...contracts import Candidate, Dialect, UpstreamCall
from ...errors import UpstreamError
from ...sse import SSEEvent
from .. import canonical as c
from ..base import bad, call_arguments, count, parse_object, random_hex, unsupported, upstream_error
from ..canonical import Usage

# --- tables ------------------------------------------------------------------------------------

# A function call's thoughtSignature must come back unchanged with the function-call turn. Clients of
# other formats have no field for it, so it rides inside the tool-call id (`<id>__thought__<signature>`)
# and is split off again by this folder; nothing outside it sees it.
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
# A model name goes into the URL (`/models/{model}:method`): only what Gemini's ids are made of.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


# --- functions ---------------------------------------------------------------------------------


def model_path(model: str, method: str) -> str:
    """`/models/{model}:{method}` for a model name with or without its `models/` prefix. Raises
    UpstreamError(unsupported) for a name that is not a Gemini model id (nothing a client names may
    change the URL's path or query)."""
    name = model.removeprefix("models/")
    if MODEL_NAME.fullmatch(name) is None:
        raise unsupported(f"the model name {name[:100]!r} is not a Gemini model id")
    return f"/models/{name}:{method}"


def join_signature(call_id: str, signature: str | None) -> str:
    """The tool-call id a client is given: `call_id`, with the signature appended when there is one."""
    return f"{call_id}{SIGNATURE_SEPARATOR}{signature}" if signature else call_id


def split_signature(call_id: str) -> tuple[str, str | None]:
    """(the call's own id, its thoughtSignature or None) of an id made by `join_signature`."""
    base, separator, signature = call_id.partition(SIGNATURE_SEPARATOR)
    return (base, signature) if separator else (call_id, None)


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
    """The generateContent body of a canonical request. Raises UpstreamError(unsupported) for what
    Gemini cannot express (an image or file by URL, tool-call arguments that are not an object)."""
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


def usage_from(metadata: Any) -> Usage | None:
    """The usage of a `usageMetadata` object (thoughts count as output), or None when there is none."""
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
    """The UpstreamError of an `{"error": {code, message, status}}` body or chunk: its reason from the
    numeric `code` (500 when there is none) and the message (or the status word)."""
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    code = error.get("code") if isinstance(error.get("code"), int) else 500
    return upstream_error(str(error.get("message") or error.get("status") or "upstream error"), code)


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


def parse_response(body: bytes) -> c.Response:
    """A whole GenerateContentResponse -> the canonical answer. Raises UpstreamError for an error in
    the body, a failed finish, or a body that is not a JSON object."""
    decoder = Decoder()
    answer = c.Accumulator()
    answer.add(decoder.chunk(parse_object(body, "2xx response body")))
    answer.add(decoder.end())
    return answer.result()


# --- classes -----------------------------------------------------------------------------------


class Decoder:
    """GenerateContentResponse chunks -> canonical events. Each functionCall arrives whole."""

    def __init__(self) -> None:
        self.calls = 0
        self.usage: Usage | None = None
        self.finished = False

    def chunk(self, payload: dict[str, Any]) -> list[c.Event]:
        """The canonical events of one chunk. Raises UpstreamError for an error or a failed finish."""
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


class Upstream:
    """Gemini generateContent as the upstream format of a translated request."""

    dialect = Dialect.GEMINI

    def accepts(self, connection: Connection, request: c.Request) -> bool:
        return connection.dialect is self.dialect

    def call(self, request: c.Request, candidate: Candidate) -> UpstreamCall:
        method = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        body = orjson.dumps(build_request(request))
        return UpstreamCall(model_path(candidate.model, method), body, {"Content-Type": "application/json"})

    def parse(self, body: bytes, connection: Connection) -> c.Response:
        return parse_response(body)

    def decoder(self, connection: Connection) -> Decoder:
        return Decoder()
