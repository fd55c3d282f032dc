"""Translation between a client's format and a connection's format, through the canonical model.

A `Bridge` pairs one client format (how answers are rendered for the client) with the upstream
formats it can reach (how requests are built and answers read). `PerConnection` sends each
candidate either through a same-format byte fast path or through the bridge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .config import Connection
from .contracts import Candidate, Dialect, StreamRelay, UpstreamCall
from .errors import UpstreamError
from .formats import canonical as c
from .formats.base import fold_stream, unsupported
from .formats.canonical import Usage
from .sse import SSEEvent


class Decoder(Protocol):
    def feed(self, event: SSEEvent) -> list[c.Event]: ...

    def end(self) -> list[c.Event]: ...


class UpstreamFormat(Protocol):
    dialect: Dialect

    def accepts(self, connection: Connection, request: c.Request) -> bool:
        """Whether this format is how `request` should reach `connection`."""
        ...

    def call(self, request: c.Request, candidate: Candidate) -> UpstreamCall: ...

    def parse(self, body: bytes, connection: Connection) -> c.Response: ...

    def decoder(self, connection: Connection) -> Decoder: ...


class Encoder(Protocol):
    def encode(self, events: list[c.Event]) -> bytes: ...

    def finish_stream(self, usage: Usage | None) -> bytes: ...

    def error(self, error: UpstreamError, connection: str) -> bytes: ...


class ClientFormat(Protocol):
    def render(self, response: c.Response) -> bytes: ...

    def encoder(self) -> Encoder: ...


class BridgeStream:
    """One attempt: upstream events -> canonical events -> client events."""

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

    def error(self, error: UpstreamError, connection: str) -> bytes:
        return self.encoder.error(error, connection)


class Bridge:
    """A request in one format, served by connections of other formats through the canonical model.

    The canonical request is built on first use: traffic that only takes the byte fast path never
    pays for it (and is never refused for a shape only a translation would need)."""

    def __init__(
        self,
        client: ClientFormat,
        parse: Callable[[], c.Request],
        upstreams: list[UpstreamFormat],
        *,
        stream: bool,
    ) -> None:
        self.client = client
        self._parse = parse
        self._request: c.Request | None = None
        self.upstreams = upstreams  # in preference order: the first that accepts a connection is used
        self.stream = stream
        self.same_model_only = False

    @property
    def request(self) -> c.Request:
        if self._request is None:
            self._request = self._parse()
        return self._request

    def serves(self, connection: Connection) -> bool:
        return any(u.dialect is connection.dialect for u in self.upstreams)

    def _upstream(self, connection: Connection) -> UpstreamFormat:
        request = self.request
        return next(u for u in self.upstreams if u.accepts(connection, request))

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        if self.request.unsupported:
            raise unsupported("; ".join(self.request.unsupported))
        return self._upstream(candidate.connection).call(self.request, candidate)

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]:
        if event_stream:  # the upstream streamed although asked for JSON: fold it into one answer
            response = fold_stream(body, self._upstream(candidate.connection).decoder(candidate.connection))
        else:
            response = self.parse(body, candidate)
        self._estimate(response)
        return self.client.render(response), response.usage

    def parse(self, body: bytes, candidate: Candidate) -> c.Response:
        """A connection's whole JSON answer, in its own format."""
        return self._upstream(candidate.connection).parse(body, candidate.connection)

    def stream_of(self, response: c.Response) -> tuple[bytes, Usage | None]:
        """A whole answer as the client's complete stream."""
        self._estimate(response)
        encoder = self.client.encoder()
        return encoder.encode(c.events_of(response)) + encoder.finish_stream(response.usage), response.usage

    def _estimate(self, response: c.Response) -> None:
        if response.usage is None:
            response.usage = c.estimate_usage(self.request, c.answer_chars(response), len(response.reasoning))

    def features(self) -> c.Features:
        return c.features(self.request)

    def stream_relay(self, candidate: Candidate) -> StreamRelay:
        upstream = self._upstream(candidate.connection)
        return BridgeStream(upstream.decoder(candidate.connection), self.client.encoder(), self.request)


class SameFormat(Protocol):
    def serves(self, connection: Connection) -> bool: ...

    def parse(self, body: bytes, candidate: Candidate) -> c.Response:
        """A whole JSON answer of the client's own format (one that answered a stream request)."""
        ...

    def upstream_call(self, candidate: Candidate) -> UpstreamCall: ...

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]: ...

    def stream_relay(self, candidate: Candidate) -> StreamRelay: ...


class PerConnection:
    """Each candidate through the byte fast path where it speaks the client's format, else the bridge
    (built on first use: most requests never leave the fast path)."""

    def __init__(self, same_format: SameFormat, bridge: Bridge | Callable[[], Bridge], *, stream: bool) -> None:
        self.same_format = same_format
        self._bridge = bridge
        self.stream = stream
        self.same_model_only = False

    @property
    def bridge(self) -> Bridge:
        if not isinstance(self._bridge, Bridge):
            self._bridge = self._bridge()
        return self._bridge

    def _for(self, connection: Connection) -> SameFormat | Bridge:
        return self.same_format if self.same_format.serves(connection) else self.bridge

    def serves(self, connection: Connection) -> bool:
        return self.same_format.serves(connection) or self.bridge.serves(connection)

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        return self._for(candidate.connection).upstream_call(candidate)

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]:
        return self._for(candidate.connection).response_body(candidate, body, event_stream)

    def stream_relay(self, candidate: Candidate) -> StreamRelay:
        return self._for(candidate.connection).stream_relay(candidate)

    def stream_body(self, candidate: Candidate, body: bytes) -> tuple[bytes, Usage | None]:
        """An upstream that ignored `stream: true`: its whole answer, as the client's stream."""
        return self.bridge.stream_of(self._for(candidate.connection).parse(body, candidate))

    def features(self) -> c.Features:
        return self.bridge.features()
