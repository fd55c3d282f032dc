"""Chat Completions as the upstream format of a translated request: canonical -> a Chat body, and a
Chat answer (whole, or streamed) -> canonical."""

from __future__ import annotations

from typing import Any

import orjson

from ...config.model import Connection
from ...contracts import Candidate, Dialect, UpstreamCall
from ...errors import UpstreamError
from ...sse import SSEEvent
from .. import canonical as c
from ..base import bad, count, error_from_payload, fold_stream, parse_object
from ..canonical import Usage

# --- tables -----------------------------------------------------------------------------------------

FINISH_REASONS: dict[str, c.Finish] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
REASONING_FIELDS = frozenset({"reasoning_content", "reasoning", "reasoning_details"})


# --- functions --------------------------------------------------------------------------------------


def usage_from(usage: Any) -> Usage | None:
    """A Chat `usage` object -> canonical Usage; None when it is not an object."""
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


def error_from(error: object) -> UpstreamError:
    """The `error` member of a Chat body or stream event -> the UpstreamError to raise. OpenAI-compatible
    servers word it loosely (a string, a numeric `code`, rate words in `type`), which is what the
    shared `base.error_from_payload` (built on `base.upstream_error`) reads."""
    return error_from_payload(error)


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
    """The canonical request as a Chat Completions body for `model` (the output budget under the
    connection's `max_tokens_param`). Raises nothing: every canonical field has a Chat form."""
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


def reasoning_text(holder: dict[str, Any]) -> str:
    """Reasoning as OpenAI-compatible providers send it: reasoning_content, reasoning, reasoning_details
    (of a message or a delta); "" when there is none."""
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
    """A whole 2xx Chat body -> canonical Response (the first choice). Raises UpstreamError for an
    error inside the 200 or a body without a usable choice."""
    parsed = parse_object(body, "2xx response body")
    if parsed.get("error") is not None and not parsed.get("choices"):
        raise error_from(parsed["error"])
    choices = parsed.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise bad("response has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise bad("response choice has no message")
    text = message.get("content") if isinstance(message.get("content"), str) else ""
    reasoning = reasoning_text(message)
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


def aggregate(body: bytes, connection: Connection) -> c.Response:
    """A whole Chat SSE body (an upstream that streamed although asked for JSON) -> one canonical
    Response. Raises UpstreamError as the Decoder does."""
    return fold_stream(body, Decoder(connection))


def split_think(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a whole content string with a leading <think> block."""
    splitter = ThinkSplitter()
    reasoning, answer = splitter.split(text)
    rest_reasoning, rest_answer = splitter.flush()
    return reasoning + rest_reasoning, answer + rest_answer


def _partial_suffix(text: str, tag: str) -> int:
    """How many trailing characters of `text` could begin `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


# --- classes ----------------------------------------------------------------------------------------


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
        """(reasoning, answer) still held back when the content ends."""
        pending, self.pending = self.pending, ""
        if self.state == "thinking":
            return pending, ""
        return "", pending


class Decoder:
    """Chat Completions stream events -> canonical events."""

    def __init__(self, connection: Connection) -> None:
        self.splitter = ThinkSplitter() if connection.reasoning_tags else None
        self.started: set[int] = set()
        self.finished = False
        self.done = False

    def feed(self, event: SSEEvent) -> list[c.Event]:
        """The canonical events of one Chat chunk. Raises UpstreamError for an error event or a
        malformed chunk."""
        if event.comment or self.done:
            return []
        if event.data == b"[DONE]":
            self.done = True
            return []
        chunk = parse_object(event.data, "stream event")
        if chunk.get("error") is not None:
            raise error_from(chunk["error"])
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
                reasoning = reasoning_text(delta)
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
        """Nothing is held back. Raises UpstreamError when the stream ended before a finish."""
        if not self.finished:
            raise bad("stream ended before it finished")
        return []


class Upstream:
    """Chat Completions as the upstream format of a translated request (`contracts.UpstreamFormat`)."""

    dialect = Dialect.OPENAI

    def accepts(self, connection: Connection, request: c.Request) -> bool:
        return connection.dialect is self.dialect

    def call(self, request: c.Request, candidate: Candidate) -> UpstreamCall:
        body = build_request(request, candidate.model, candidate.connection)
        return UpstreamCall("/chat/completions", orjson.dumps(body), {"Content-Type": "application/json"})

    def parse(self, body: bytes, connection: Connection) -> c.Response:
        return parse_response(body, connection)

    def decoder(self, connection: Connection) -> Decoder:
        return Decoder(connection)
