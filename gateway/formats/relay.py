"""How one request reaches every kind of connection: the `Relay` routing drives.

A connection of the client's own format takes the format's byte fast path (`Native`); any other is
reached through the canonical model: the client's request parsed once, sent in the first of the
registry's upstream formats that accepts the connection, the answer decoded and rendered back by
the client side (`Renderer`). Format-agnostic: it imports no format.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config.model import Connection
from ..contracts import Candidate, Decoder, Encoder, Native, Renderer, StreamRelay, UpstreamCall, UpstreamFormat
from ..sse import SSEEvent
from . import canonical as c
from .base import fold_stream, unsupported
from .canonical import Usage


class TranslatedStream:
    """One attempt translated: upstream events -> canonical events -> client events."""

    content_prefix = None  # every event is decoded

    def __init__(self, decoder: Decoder, encoder: Encoder, request: c.Request) -> None:
        self.decoder = decoder
        self.encoder = encoder
        self.request = request
        self.usage: Usage | None = None
        self.committed = False
        # Only for a usage estimate when the upstream reports none: characters of answer, reasoning.
        self.answer_chars = self.reasoning_chars = 0

    def feed(self, event: SSEEvent) -> tuple[bytes, bool]:
        events = self.decoder.feed(event)
        if not events:
            return b"", False
        self._note(events)
        commits = not self.committed and c.carries_content(events)
        self.committed = self.committed or commits
        return self.encoder.encode(events), commits

    def relay(self, batch: list[SSEEvent | bytes]) -> bytes:
        """A read's events decoded together and encoded in one pass (nothing comes as bytes: every
        event is decoded)."""
        decode = self.decoder.feed
        events: list[c.Event] = []
        for event in batch:
            assert isinstance(event, SSEEvent)
            events += decode(event)
        if not events:
            return b""
        self._note(events)
        return self.encoder.encode(events)

    def _note(self, events: list[c.Event]) -> None:
        for event in events:
            kind = type(event)  # (canonical events are final classes: an identity test is enough)
            if kind is c.TextDelta:
                self.answer_chars += len(event.text)  # type: ignore[union-attr]
            elif kind is c.ReasoningDelta:
                self.reasoning_chars += len(event.text)  # type: ignore[union-attr]
            elif kind is c.ToolCallDelta:
                self.answer_chars += len(event.arguments)  # type: ignore[union-attr]
            elif kind is c.ToolCallStart:
                self.answer_chars += len(event.name)  # type: ignore[union-attr]
            elif kind is c.UsageEvent:
                self.usage = event.usage  # type: ignore[union-attr]

    def end(self) -> bytes:
        events = self.decoder.end()
        self._note(events)
        out = self.encoder.encode(events)
        if self.usage is None:
            self.usage = c.estimate_usage(self.request, self.answer_chars, self.reasoning_chars)
        return out + self.encoder.finish_stream(self.usage)

    def error(self, error, connection: str) -> bytes:
        return self.encoder.error(error, connection)


class FormatRelay:
    """A request in one format, for every connection: the fast path where the connection speaks it,
    else translated. The canonical request and the renderer are made on first use: traffic that only
    takes the fast path never pays for them (and is never refused for a shape only a translation
    would need)."""

    def __init__(
        self,
        native: Native,
        renderer: Callable[[], Renderer],
        parse: Callable[[], c.Request],
        upstreams: list[UpstreamFormat],
        *,
        stream: bool,
    ) -> None:
        self.native = native
        self._renderer_factory = renderer
        self._renderer: Renderer | None = None
        self._parse = parse
        self._request: c.Request | None = None
        self.upstreams = upstreams  # in preference order: the first that accepts a connection is used
        self.stream = stream
        self.same_model_only = False

    @property
    def request(self) -> c.Request:
        """The client's request in the canonical model. Raises GatewayError for a malformed one."""
        if self._request is None:
            self._request = self._parse()
        return self._request

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            self._renderer = self._renderer_factory()
        return self._renderer

    def serves(self, connection: Connection) -> bool:
        return self.native.serves(connection) or any(u.dialect is connection.dialect for u in self.upstreams)

    def _upstream(self, connection: Connection) -> UpstreamFormat:
        request = self.request
        return next(u for u in self.upstreams if u.accepts(connection, request))

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        if self.native.serves(candidate.connection):
            return self.native.upstream_call(candidate)
        if self.request.unsupported:
            raise unsupported("; ".join(self.request.unsupported))
        return self._upstream(candidate.connection).call(self.request, candidate)

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]:
        connection = candidate.connection
        if self.native.serves(connection):
            return self.native.response_body(candidate, body, event_stream)
        upstream = self._upstream(connection)
        # An upstream that streamed although asked for JSON: its stream folded into one answer.
        response = fold_stream(body, upstream.decoder(connection)) if event_stream else upstream.parse(body, connection)
        self._estimate(response)
        return self.renderer.render(response), response.usage

    def stream_relay(self, candidate: Candidate) -> StreamRelay:
        connection = candidate.connection
        if self.native.serves(connection):
            return self.native.stream_relay(candidate)
        decoder = self._upstream(connection).decoder(connection)
        return TranslatedStream(decoder, self.renderer.encoder(), self.request)

    def stream_body(self, candidate: Candidate, body: bytes) -> tuple[bytes, Usage | None]:
        """An upstream that ignored `stream: true`: its whole answer, as the client's stream."""
        connection = candidate.connection
        if self.native.serves(connection):
            response = self.native.parse(body, candidate)
        else:
            response = self._upstream(connection).parse(body, connection)
        self._estimate(response)
        encoder = self.renderer.encoder()
        return encoder.encode(c.events_of(response)) + encoder.finish_stream(response.usage), response.usage

    def _estimate(self, response: c.Response) -> None:
        if response.usage is None:
            response.usage = c.estimate_usage(self.request, c.answer_chars(response), len(response.reasoning))

    def features(self) -> c.Features:
        return c.features(self.request)
