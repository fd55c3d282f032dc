"""The same-format fast path for Chat Completions, completions and embeddings: bodies and stream
events pass through as bytes; only `model` is rewritten and streams ask for
`stream_options.include_usage`. Each event is parsed, never re-encoded, to see whether it carries
content (the commit point), usage or an error."""

from __future__ import annotations

import re
from typing import Any

import orjson

from ...config.model import Connection
from ...contracts import Candidate, Dialect, UpstreamCall
from ...errors import UpstreamError
from ...sse import SSEEvent, encode_comment, encode_event, object_events
from .. import canonical as c
from ..base import EachEvent, bad, not_a_stream, parse_object
from ..canonical import Usage
from .client import DONE, render_response, stream_error
from .upstream import aggregate, error_from, parse_response, usage_from

# --- tables -----------------------------------------------------------------------------------------

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
# A key a Chat stream relay must see after the commit point, with a value that is not null.
_NOTEWORTHY = re.compile(rb'"(?:error|usage|finish_reason)"\s*+:\s*+(?!null)')


# --- classes ----------------------------------------------------------------------------------------


class Passthrough(EachEvent):
    """One attempt's stream, passed through event by event."""

    __slots__ = ("committed", "done", "finished", "usage", "wants_usage")

    def __init__(self, wants_usage: bool) -> None:
        self.wants_usage = wants_usage
        self.usage: Usage | None = None
        self.committed = False  # past the first content: only finish, usage and errors matter now
        self.finished = False
        self.done = False

    def feed(self, event: SSEEvent) -> tuple[bytes, bool]:
        """The event's bytes for the client and whether it commits. Raises UpstreamError for an error
        event or a malformed one."""
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
            raise error_from(chunk["error"])
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
        """[DONE] when a finished stream lacked it. Raises UpstreamError for a stream cut short."""
        if self.done:
            return b""
        if self.finished:  # some servers omit the terminator after a finish: add it
            self.done = True
            return DONE
        raise bad("stream ended before it finished")

    def error(self, error: UpstreamError, connection: str) -> bytes:
        """The error event that ends the stream after a failure past the commit point."""
        return stream_error(error, connection)


class Native:
    """A Chat Completions, completions or embeddings request for OpenAI-format connections
    (`contracts.Native`)."""

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
        """The upstream's body as it came (or one JSON body made of an SSE answer) and its usage.
        Raises UpstreamError for an error inside the 200 or an unusable body."""
        if event_stream:  # an upstream that streams although asked for JSON: answer with one JSON body
            response = aggregate(body, candidate.connection)
            return orjson.dumps(render_response(response, response.model or candidate.model)), response.usage
        parsed = parse_object(body, "2xx response body")
        if parsed.get("error") is not None and not parsed.get("choices") and not parsed.get("data"):
            raise error_from(parsed["error"])
        return body, usage_from(parsed.get("usage"))

    def stream_relay(self, candidate: Candidate) -> Passthrough:
        return Passthrough(self.wants_usage)

    def parse(self, body: bytes, candidate: Candidate) -> c.Response:
        """A whole Chat body that answered a stream request, as canonical. Raises UpstreamError
        (`not_a_stream` for completions and embeddings, which have no stream made of a body)."""
        if self.path != "/chat/completions":
            raise not_a_stream(body)
        return parse_response(body, candidate.connection)

    def stream_body(self, candidate: Candidate, body: bytes) -> tuple[bytes, Usage | None]:
        """Completions and embeddings (chat goes through PerConnection and the bridge's encoder):
        always raises UpstreamError (`not_a_stream`)."""
        raise not_a_stream(body)

    def features(self) -> c.Features:
        """Completions and embeddings use none of the gated features (chat goes through the bridge's)."""
        return c.Features()
