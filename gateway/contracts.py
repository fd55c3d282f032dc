"""The contracts between the gateway's parts: what routing asks of a request, and what a wire format
implements. A leaf: it imports nothing of the gateway but the canonical model, error values and
config types, so formats and routing both depend on it and never on each other.

How the parts meet (read top to bottom):

- routing (`gateway/routing/`) plans a request's `Candidate`s and drives one `Relay` through them:
  `upstream_call` for each attempt, then `response_body` (a whole answer), or `stream_relay` (a
  stream, event by event) or `stream_body` (a stream request answered with one body).
- a `Relay` is assembled from the pieces a format implements (`gateway/formats/relay.py`): the client
  side of the client's format (a `Renderer` and its `Encoder`), its same-format `Native` fast path,
  and the `UpstreamFormat`s of every other format (each with its `Decoder`).
- a `DialectApi` is what the gateway knows of a family of formats beyond one request: its error
  bodies, its model listings, the headers it forwards, the format a connection test speaks.

Each method says what it returns and what it raises, as Envoy AI Gateway's `Translator` does:
request body, response body (whole or event by event, with the end of the stream), error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from .errors import Reason, UpstreamError
from .formats import canonical as c
from .formats.canonical import Usage
from .sse import SSEEvent

if TYPE_CHECKING:  # config imports this module (a connection's dialect): the types only
    from .config.model import Connection
    from .presets import SamplingRule


class Dialect(StrEnum):
    """A family of wire formats sharing error bodies, model listings and auth: what a connection
    speaks, and what a client speaks (which decides the shape of every answer and error it gets)."""

    OPENAI = "openai"  # Chat Completions, Responses and the rest of api.openai.com's surface
    ANTHROPIC = "anthropic"  # Messages
    GEMINI = "gemini"  # generateContent


@dataclass(slots=True)
class Candidate:
    connection: Connection
    model: str  # the upstream model name this connection is sent
    skip: Reason | None = None  # set when the connection is passed over without a request
    why: str | None = None  # what made it skip, when that is more than the reason


@dataclass(slots=True)
class UpstreamCall:
    """What a relay asks of one connection; the transport adds the base URL, auth and common headers."""

    path: str  # appended to the connection's base URL, e.g. "/chat/completions"
    body: bytes
    headers: dict[str, str]  # format-specific extras


# --- what routing drives ----------------------------------------------------------------------------


class StreamRelay(Protocol):
    """Turns one attempt's upstream SSE events into client bytes."""

    usage: Usage | None
    # Past the commit point, for a relay that passes its own format through: how many leading bytes
    # of a plain read (`SSEParser.plain`) are whole events that hold only content, nothing it must see
    # (an error, usage, a finish, the end); `sse.object_events` checks the framing. Those go to the
    # client as they came, unparsed. None: every event is fed.
    content_prefix: Callable[[bytes], int] | None

    def feed(self, event: SSEEvent) -> tuple[bytes, bool]:
        """Bytes to send the client (may be empty) and whether the event carries content or a finish
        (the commit point). Raises UpstreamError for an error event. Until the commit point events
        come one at a time."""
        ...

    def relay(self, batch: list[SSEEvent | bytes]) -> bytes:
        """What the events of one read (and runs of them passed as bytes, see `content_prefix`) send
        the client; past the commit point. Raises UpstreamError for an error event."""
        ...

    def end(self) -> bytes:
        """The upstream closed: trailing bytes for the client. Raises UpstreamError if it was cut short."""
        ...

    def error(self, error: UpstreamError, connection: str) -> bytes:
        """The client-format events that end a stream after a failure past the commit point."""
        ...


class Relay(Protocol):
    """One inbound request in the client's format, as any connection can be asked for it."""

    stream: bool
    same_model_only: bool  # embeddings: vectors from different models must not mix

    def serves(self, connection: Connection) -> bool:
        """Whether the request can reach this connection's dialect at all."""
        ...

    def upstream_call(self, candidate: Candidate) -> UpstreamCall:
        """The request as this connection is sent it. Raises UpstreamError(unsupported) when it cannot
        be expressed for the connection (the candidate is skipped, nothing is sent)."""
        ...

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]:
        """A 2xx body (JSON, or SSE from an upstream that streams anyway) -> (the client's JSON body,
        the usage). Raises UpstreamError if it is unusable (the next connection may serve)."""
        ...

    def stream_relay(self, candidate: Candidate) -> StreamRelay:
        """A fresh relay for one attempt's stream."""
        ...

    def stream_body(self, candidate: Candidate, body: bytes) -> tuple[bytes, Usage | None]:
        """A stream request answered with one JSON body (some upstreams ignore `stream: true`): that
        answer as the client's whole stream. Raises UpstreamError (`not_a_stream`) if it is unusable."""
        ...

    def features(self) -> c.Features:
        """What the request needs from a connection; asked only when a candidate lacks something."""
        ...


# --- what a format implements ---------------------------------------------------------------------


class Decoder(Protocol):
    """An upstream's stream in its format -> canonical events."""

    def feed(self, event: SSEEvent) -> list[c.Event]:
        """The canonical events one upstream event carries (often none). Raises UpstreamError for an
        error event or a malformed one."""
        ...

    def end(self) -> list[c.Event]:
        """The upstream closed: events still held back. Raises UpstreamError for a stream cut short."""
        ...


class Encoder(Protocol):
    """Canonical events -> a client's stream in its format, for one answer."""

    def encode(self, events: list[c.Event]) -> bytes:
        """The client events for these canonical ones (may be empty: some are held, e.g. tool calls
        that must be sent whole). Raises UpstreamError when the events cannot be expressed."""
        ...

    def finish_stream(self, usage: Usage | None) -> bytes:
        """Everything that ends the stream: what was held, the finish, the usage, the terminator."""
        ...

    def error(self, error: UpstreamError, connection: str) -> bytes:
        """The events that end this stream after a failure past the commit point."""
        ...


class Renderer(Protocol):
    """The client side of a format, for one request: canonical answers in the client's shape."""

    def render(self, response: c.Response) -> bytes:
        """A whole answer as the client's JSON body."""
        ...

    def encoder(self) -> Encoder:
        """A fresh encoder for one attempt's stream."""
        ...


class UpstreamFormat(Protocol):
    """The upstream side of a format: how a translated (canonical) request reaches a connection."""

    dialect: Dialect

    def accepts(self, connection: Connection, request: c.Request) -> bool:
        """Whether this format is how `request` should reach `connection` (formats of one dialect are
        asked in the registry's order: native Responses before Chat Completions)."""
        ...

    def call(self, request: c.Request, candidate: Candidate) -> UpstreamCall:
        """The request body and path. Raises UpstreamError(unsupported) for what it cannot express."""
        ...

    def parse(self, body: bytes, connection: Connection) -> c.Response:
        """A whole 2xx JSON answer. Raises UpstreamError (an error inside a 200, an unusable body)."""
        ...

    def decoder(self, connection: Connection) -> Decoder:
        """A fresh decoder for one attempt's stream."""
        ...


class Native(Protocol):
    """A format's same-format fast path: the client's bytes go to a connection of its own format with
    only the model rewritten; answers are parsed only for the commit point, usage and errors."""

    def serves(self, connection: Connection) -> bool: ...

    def upstream_call(self, candidate: Candidate) -> UpstreamCall: ...

    def response_body(self, candidate: Candidate, body: bytes, event_stream: bool) -> tuple[bytes, Usage | None]: ...

    def stream_relay(self, candidate: Candidate) -> StreamRelay: ...

    def parse(self, body: bytes, candidate: Candidate) -> c.Response:
        """A whole JSON answer of the client's own format (one that answered a stream request).
        Raises UpstreamError (`not_a_stream`) where the format has no stream to make of it."""
        ...


class DialectApi(Protocol):
    """What the gateway knows of a dialect beyond one request."""

    dialect: Dialect

    def error_body(self, status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
        """The error JSON a client of this dialect expects for an HTTP `status`."""
        ...

    def forwarded_headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        """Client headers that mean something to this dialect's upstreams and go along (anthropic-beta)."""
        ...

    def listing_call(self, connection: Connection) -> tuple[str, dict[str, str]]:
        """Path and extra headers of a connection's model listing."""
        ...

    def listed_ids(self, body: bytes) -> list[str]:
        """Model ids from a listing body. Raises UpstreamError(bad_response) for an unusable one."""
        ...

    def model_object(self, model_id: str, owner: str, created: int) -> dict[str, Any]:
        """One listed model in this dialect's shape."""
        ...

    def model_list(self, models: list[dict[str, Any]]) -> dict[str, Any]:
        """The body of a model listing."""
        ...

    def probe_format(self, rules: list[SamplingRule]) -> UpstreamFormat:
        """The format a connection test of this dialect speaks."""
        ...
