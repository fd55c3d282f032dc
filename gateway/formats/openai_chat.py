"""OpenAI Chat Completions (and legacy completions, embeddings) to OpenAI-format connections.

Same format both ways, so bodies and stream events pass through as bytes: only `model` is rewritten
and streams ask for `stream_options.include_usage`. Each event is parsed, never re-encoded, to see
whether it carries content (the commit point), usage or an error.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..config import Connection
from ..errors import ErrorKind, Reason, UpstreamError, classify_status
from ..presets import WireFormat
from ..record import Usage
from ..router import Candidate, UpstreamCall
from ..sse import SSEEvent, encode_comment, encode_event

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


def usage_from(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens")),
        output_tokens=_int(usage.get("completion_tokens")),
        reasoning_tokens=_int(reasoning),
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def error_from_payload(error: Any) -> UpstreamError:
    """An `{"error": ...}` object inside a 200 body or a stream event, as an UpstreamError."""
    if isinstance(error, dict):
        message = str(error.get("message") or "upstream error")
        code = error.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else None
        if status is None:
            kind = f"{error.get('type') or ''} {code or ''}".lower()
            status = 429 if "rate" in kind or "quota" in kind else 500
    else:
        message, status = str(error), 500
    reason = classify_status(status, message.encode())
    # The upstream's own text stays out of the reason vocabulary but may reach the client's error event.
    return UpstreamError(ErrorKind.PROTOCOL, reason, f"error event from upstream: {message[:200]}", status=None)


def _bad(message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.PROTOCOL, Reason.BAD_RESPONSE, message)


class ChatStream:
    """One attempt's stream, passed through event by event."""

    __slots__ = ("done", "finished", "usage", "wants_usage")

    def __init__(self, wants_usage: bool) -> None:
        self.wants_usage = wants_usage
        self.usage: Usage | None = None
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
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _bad("stream event is not JSON") from None
        if not isinstance(chunk, dict):
            raise _bad("stream event is not a JSON object")
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
                raise _bad("stream choice is not an object")
            if choice.get("finish_reason"):
                self.finished = commits = True
            delta = choice.get("delta")
            if choice.get("text") or (isinstance(delta, dict) and any(delta.get(f) for f in CONTENT_FIELDS)):
                commits = True
        return encode_event(data), commits

    def end(self) -> bytes:
        if self.done:
            return b""
        if self.finished:  # some servers omit the terminator after a finish: add it
            self.done = True
            return DONE
        raise _bad("stream ended before it finished")


class OpenAIRelay:
    """A Chat Completions, completions or embeddings request for OpenAI-format connections."""

    stream_content_type = "text/event-stream"

    def __init__(self, path: str, body: dict[str, Any], *, same_model_only: bool = False) -> None:
        self.path = path
        self.body = body
        self.stream = body.get("stream") is True
        self.same_model_only = same_model_only
        options = body.get("stream_options")
        self.stream_options = options if isinstance(options, dict) else {}
        self.wants_usage = self.stream_options.get("include_usage") is True

    def serves(self, connection: Connection) -> bool:
        return connection.wire_format is WireFormat.OPENAI

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        body = dict(self.body)
        body["model"] = candidate.model
        if self.stream:
            body["stream_options"] = {**self.stream_options, "include_usage": True}
        return UpstreamCall(self.path, orjson.dumps(body), {"Content-Type": "application/json"})

    def response_body(self, body: bytes) -> tuple[bytes, Usage | None]:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _bad("2xx response body is not JSON") from None
        if not isinstance(parsed, dict):
            raise _bad("2xx response body is not a JSON object")
        if parsed.get("error") is not None and not parsed.get("choices") and not parsed.get("data"):
            raise error_from_payload(parsed["error"])
        return body, usage_from(parsed.get("usage"))

    def stream_relay(self) -> ChatStream:
        return ChatStream(self.wants_usage)

    def stream_error(self, error: UpstreamError, connection: str) -> bytes:
        message = f"connection {connection} failed mid-stream: {error.reason} ({error.message})"
        return encode_event(
            orjson.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": error.reason}})
        )
