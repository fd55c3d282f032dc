"""OpenAI Responses to a connection that serves /responses itself: the same-format byte fast path.

`Native` sends the client's body (model rewritten, or the conversation rebuilt from the gateway's
store) and reads the answer only for errors, usage and the final response; `Passthrough` relays one
attempt's stream event by event as it came, and ends a failed one with the gateway's own error events.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...config.model import Connection
from ...contracts import Candidate, Dialect, UpstreamCall
from ...errors import UpstreamError
from ...sse import SSEEvent, encode_comment, encode_event, events_of
from .. import canonical as c
from ..base import EachEvent, bad, parse_object
from ..canonical import Usage
from .client import DONE, ResponseContext, stream_error
from .upstream import TERMINAL, error_from, parse_response, usage_from

# --- constants and tables -------------------------------------------------------------------------

# Upstream events that mean the model has answered (the commit point of a native stream).
CONTENT_TYPES = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.output_item.done",
        "response.completed",
        "response.incomplete",
    }
)


# --- classes --------------------------------------------------------------------------------------


class Passthrough(EachEvent):
    """One attempt's native Responses stream, passed through event by event."""

    content_prefix = None  # every event is decoded

    def __init__(self, context: ResponseContext) -> None:
        self.context = context
        self.committed = False
        self.terminal = False
        self.done = False
        self.last_sequence = -1
        self.snapshot: dict[str, Any] | None = None
        self.usage: Usage | None = None

    def feed(self, event: SSEEvent) -> tuple[bytes, bool]:
        if event.comment:
            return encode_comment(event.data), False
        if event.data == b"[DONE]":
            self.done = True
            return DONE, False
        payload = parse_object(event.data, "stream event")
        kind = payload.get("type")
        if kind in ("error", "response.failed"):
            # before the commit the next connection may serve; after it the gateway ends the stream with
            # its own error events (the upstream's could echo its key), numbered on from the last one sent
            raise error_from(payload)
        if isinstance(payload.get("sequence_number"), int):
            self.last_sequence = payload["sequence_number"]
        response = payload.get("response")
        if kind == "response.created" and isinstance(response, dict):
            self.snapshot = response
        if kind in TERMINAL:
            self.terminal = True
            if isinstance(response, dict):
                self.usage = usage_from(response.get("usage"))
                self.context.finalize(response)
        commits = kind in CONTENT_TYPES
        self.committed = self.committed or commits
        return encode_event(event.data, event.event or (kind if isinstance(kind, str) else None)), commits

    def end(self) -> bytes:
        if self.done:
            return b""
        if self.terminal:  # live OpenAI sends no [DONE]; the open specification asks for it
            self.done = True
            return DONE
        raise bad("stream ended before its terminal event")

    def error(self, error: UpstreamError, connection: str) -> bytes:
        """`stream_error` with the response the stream began with, numbered on from the last event sent."""
        return stream_error(error, connection, self.last_sequence + 1, self.snapshot)


class Native:
    """A Responses request to a connection that serves /responses itself: bytes pass through.

    With `previous_response_id`, the id goes through only to the native connection that produced it;
    any other connection is sent the conversation rebuilt from the gateway's store."""

    def __init__(
        self, context: ResponseContext, rebuilt: dict[str, Any] | None = None, producer: str | None = None
    ) -> None:
        self.context = context
        self.rebuilt = rebuilt if rebuilt is not None else context.body
        self.producer = producer  # the native connection that knows the previous response id

    def serves(self, connection: Connection) -> bool:
        return connection.dialect is Dialect.OPENAI and connection.responses_native

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        body = dict(self.context.body if candidate.connection.name == self.producer else self.rebuilt)
        body["model"] = candidate.model
        return UpstreamCall("/responses", orjson.dumps(body), {"Content-Type": "application/json"})

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]:
        if event_stream:  # the terminal event carries the whole response
            final = None
            for event in events_of(body):
                if event.data != b"[DONE]" and not event.comment:
                    payload = parse_object(event.data, "stream event")
                    if payload.get("type") in ("error", "response.failed"):
                        raise error_from(payload)
                    if payload.get("type") in TERMINAL:
                        final = payload.get("response")
            if not isinstance(final, dict):
                raise bad("stream ended before its terminal event")
            self.context.finalize(final)
            return orjson.dumps(final), usage_from(final.get("usage"))
        parsed = parse_object(body, "2xx response body")
        if parsed.get("status") == "failed" or (parsed.get("error") and not parsed.get("output")):
            raise error_from(parsed)
        self.context.finalize(parsed)
        return body, usage_from(parsed.get("usage"))

    def stream_relay(self, candidate: Candidate) -> Passthrough:
        return Passthrough(self.context)

    def parse(self, body: bytes, candidate: Candidate) -> c.Response:
        """The streamed answer keeps the upstream's response id: it is the one a later
        previous_response_id must name to reach this connection's own conversation state."""
        response = parse_response(body)
        if isinstance(response.id, str) and response.id:
            self.context.id = response.id
        return response
