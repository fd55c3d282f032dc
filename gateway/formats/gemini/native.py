"""Gemini to a Gemini connection: the same-format byte fast path. The client's body goes as it came
(the model is in the path), answers are parsed only for errors, failed finishes and usage. Streams
pass through `base.DecodedPassthrough`."""

from __future__ import annotations

from typing import Any

import orjson

from ...config.model import Connection
from ...contracts import Candidate, Dialect, UpstreamCall
from .. import canonical as c
from ..base import DecodedPassthrough, bad, fold_stream, parse_object
from ..canonical import Usage
from .client import Renderer, as_array, stream_error
from .upstream import Decoder, model_path, parse_response

# --- classes -----------------------------------------------------------------------------------


class Native:
    """A Gemini request to a Gemini connection: bytes pass through, the model in the path. With
    `array` (`:streamGenerateContent` without `alt=sse`, asked of the upstream as generateContent)
    the answer is the one-chunk JSON array that method returns."""

    def __init__(self, body: dict[str, Any], stream: bool, array: bool = False) -> None:
        self.body = body
        self.stream = stream
        self.array = array

    def serves(self, connection: Connection) -> bool:
        return connection.dialect is Dialect.GEMINI

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        method = "streamGenerateContent?alt=sse" if self.stream else "generateContent"
        headers = {"Content-Type": "application/json"}
        return UpstreamCall(model_path(candidate.model, method), orjson.dumps(self.body), headers)

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]:
        """The client's body (as it came, or folded from a stream; an array with `array`) and the
        usage. Raises UpstreamError for an error in the body or a failed finish."""
        if event_stream:  # streamed although asked for JSON: one GenerateContentResponse
            response = fold_stream(body, Decoder())
            return Renderer(candidate.model.removeprefix("models/"), self.array).render(response), response.usage
        decoder = Decoder()
        decoder.chunk(parse_object(body, "2xx response body"))  # raises for errors and failed finishes
        return (as_array(body) if self.array else body), decoder.usage

    def stream_relay(self, candidate: Candidate) -> DecodedPassthrough:
        return DecodedPassthrough(Decoder(), stream_error)

    def parse(self, body: bytes, candidate: Candidate) -> c.Response:
        return parse_response(body)


class NativeCountTokens(Native):
    """`countTokens` to a Gemini connection: the body passes through, the answer comes back as it is."""

    same_model_only = False

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body, stream=False)

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        headers = {"Content-Type": "application/json"}
        return UpstreamCall(model_path(candidate.model, "countTokens"), orjson.dumps(self.body), headers)

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]:
        """The upstream's count as it came. Raises UpstreamError for a stream or a body that is not
        a JSON object."""
        if event_stream:
            raise bad("a Gemini upstream streamed although asked for JSON")
        parse_object(body, "2xx response body")
        return body, None

    def features(self) -> c.Features:
        return c.Features()
