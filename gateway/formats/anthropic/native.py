"""Anthropic Messages to an Anthropic connection: the same-format byte fast path. The client's body
goes through with only the model rewritten (and the client's anthropic-version); answers are parsed
only for usage and errors, streams decoded only for the commit point, usage and errors
(`base.DecodedPassthrough`). `/v1/messages/count_tokens` uses it alone, with its own `path`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ...config.model import Connection
from ...contracts import Candidate, Dialect, UpstreamCall
from .. import canonical as c
from ..base import DecodedPassthrough, bad, fold_stream, parse_object
from ..canonical import Usage
from .client import Renderer, parse_request, stream_error
from .upstream import Decoder, error_from, parse_response, usage_from

# --- classes -----------------------------------------------------------------------------------


class Native:
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
        """The upstream's body as it came (a stream folded into one Message), and its usage. Raises
        UpstreamError: the error a 200 holds, or bad_response for a body it cannot use."""
        if event_stream and self.path == "/messages":  # streamed although asked for JSON: one Message
            response = fold_stream(body, Decoder())
            client = Renderer(str(self.body.get("model")), lambda: parse_request(self.body))
            return client.render(response), response.usage
        if event_stream:
            raise bad("an Anthropic upstream streamed although asked for JSON")
        message = parse_object(body, "2xx response body")
        if message.get("type") == "error":
            raise error_from(message)
        return body, usage_from(message.get("usage"))

    def stream_relay(self, candidate: Candidate) -> DecodedPassthrough:
        return DecodedPassthrough(Decoder(), stream_error)

    def parse(self, body: bytes, candidate: Candidate) -> c.Response:
        return parse_response(body)

    def features(self) -> c.Features:
        """Used alone (count_tokens) nothing is gated; as a fast path the bridge answers for the request."""
        return c.Features()
