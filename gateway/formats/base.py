"""Helpers every format module needs: error values, JSON objects, counts, fields left over."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from ..errors import ErrorKind, GatewayError, Reason, UpstreamError, classify_status
from ..sse import SSEEvent, encode_event, events_of
from . import canonical as c

log = logging.getLogger("gateway.formats")


def bad(message: str) -> UpstreamError:
    """An upstream answer the gateway cannot use (the next connection may serve)."""
    return UpstreamError(ErrorKind.PROTOCOL, Reason.BAD_RESPONSE, message)


def unsupported(message: str) -> UpstreamError:
    """A request this connection's format cannot express (the connection is skipped)."""
    return UpstreamError(ErrorKind.PROTOCOL, Reason.UNSUPPORTED, message)


def parse_object(data: bytes, what: str) -> dict[str, Any]:
    """An upstream's JSON object, or bad_response."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise bad(f"{what} is not JSON") from None
    if not isinstance(parsed, dict):
        raise bad(f"{what} is not a JSON object")
    return parsed


def loads_object(text: str) -> dict[str, Any] | None:
    """A JSON object from text, or None."""
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def call_arguments(call: c.ToolCall) -> dict[str, Any]:
    """A tool call's arguments as the object formats with structured arguments need."""
    value = loads_object(call.arguments)
    if value is None:
        raise unsupported(f"tool call {call.id} has arguments that are not a JSON object")
    return value


def optional(
    body: Mapping[str, Any],
    key: str,
    kinds: type | tuple[type, ...],
    what: str,
    invalid: Callable[[str, str], GatewayError],
    param: str | None = None,
) -> Any:
    """An optional field of a client's request, checked before a translation relies on its type: its
    value (None when absent), else the format's 400 naming `param` (default `key`). A boolean is a
    number only where `kinds` lists bool."""
    value = body.get(key)
    if value is None:
        return None
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):
        return value
    raise invalid(param or key, f"expected {what}")


def count(mapping: Mapping[str, Any], key: str) -> int:
    """An integer count from an upstream's usage object (anything else counts as 0)."""
    value = mapping.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def leftover_fields(
    body: Mapping[str, Any],
    handled: Iterable[str],
    droppable: Iterable[str],
    unsupported_list: list[str],
    format_name: str,
) -> None:
    """Fields a parser did not read: dropped with a debug log when they only tune delivery,
    otherwise listed as unsupported (dropping them would change the meaning)."""
    droppable = frozenset(droppable)
    for key in body.keys() - frozenset(handled):
        if key in droppable:
            log.debug("dropping %s field %r when translating", format_name, key)
        else:
            unsupported_list.append(f"{key}: cannot be translated")


def listed_ids(body: bytes, list_key: str, id_key: str, prefix: str = "") -> list[str]:
    """The non-empty string ids (`body[list_key][].id_key`, without `prefix`) of a model listing.
    Raises UpstreamError(bad_response) for a body that is not JSON or has no such list."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad("model listing is not JSON") from None
    items = parsed.get(list_key) if isinstance(parsed, dict) else None
    if not isinstance(items, list):
        raise bad("model listing has no list of models")
    ids = []
    for item in items:
        value = item.get(id_key) if isinstance(item, dict) else None
        if isinstance(value, str) and value:
            ids.append(value.removeprefix(prefix))
    return ids


def invalid_value(param: str, message: str) -> GatewayError:
    """A 400 worded as OpenAI's APIs word a bad parameter (Chat Completions and Responses clients)."""
    return GatewayError(400, f"Invalid '{param}': {message}.", code="invalid_value", param=param)


class _Entropy:
    """`os.urandom` drawn 4 KiB at a time. Ids stay unguessable (stored responses are fetched by id),
    while the system call, which costs tens of microseconds on some VMs, is paid once per ~200 ids."""

    __slots__ = ("_buffer", "_offset")

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    def hex(self, nbytes: int) -> str:
        end = self._offset + nbytes
        if end > len(self._buffer):
            self._buffer, self._offset, end = os.urandom(4096), 0, nbytes
        piece = self._buffer[self._offset : end]
        self._offset = end
        return piece.hex()


random_hex = _Entropy().hex


def upstream_error(message: str, status: int, kind: str | None = None, *, in_stream: bool = False) -> UpstreamError:
    """The one way an error an upstream sent inside a body or an event becomes an UpstreamError: its
    reason from the status (and, for a 4xx, the message's words), its message bounded. In a stream a
    plain 400 is still that connection's failure (the request was accepted)."""
    reason = classify_status(status, f"{kind or ''} {message}".encode())
    if in_stream and reason is Reason.CLIENT_ERROR:
        reason = Reason.SERVER_ERROR
    what = f"{kind}: {message}" if kind else message
    return UpstreamError(ErrorKind.PROTOCOL, reason, f"error from upstream: {what[:200]}")


def error_from_payload(error: object) -> UpstreamError:
    """An `{"error": ...}` object inside a 200 body or a stream event. OpenAI, Anthropic and Gemini
    error objects all carry `message`; the status comes from a numeric `code` (Gemini) or, from `type`
    / `code` words, 429 for rate and quota errors, else 500."""
    if not isinstance(error, dict):
        return upstream_error(str(error), 500)
    message = str(error.get("message") or "upstream error")
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else None
    if status is None:
        words = f"{error.get('type') or ''} {code or ''}".lower()
        status = 429 if "rate" in words or "quota" in words else 500
    return upstream_error(message, status)


def mid_stream_message(error: UpstreamError, connection: str) -> str:
    """What every format's closing error event says after a failure past the commit point."""
    return f"connection {connection} failed mid-stream: {error.reason} ({error.message})"


def not_a_stream(body: bytes) -> UpstreamError:
    """A whole body where a stream was asked for: the error it names (a 200 can carry one), else
    `bad_response`, so the next connection may stream the answer."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("error") is not None:
        return error_from_payload(parsed["error"])
    return UpstreamError(ErrorKind.PROTOCOL, Reason.BAD_RESPONSE, "asked for a stream, answered with a whole body")


class EachEvent:
    """`StreamRelay.relay` for a relay that takes the events of a read one by one."""

    __slots__ = ()

    def relay(self, batch: list[SSEEvent | bytes]) -> bytes:
        feed = self.feed  # type: ignore[attr-defined]
        return b"".join([item if type(item) is bytes else feed(item)[0] for item in batch])


def fold_stream(body: bytes, decoder: Any) -> c.Response:
    """A whole SSE body (an upstream that streamed although asked for JSON) -> one canonical Response,
    through the format's own stream decoder."""
    answer = c.Accumulator()
    for event in events_of(body):
        answer.add(decoder.feed(event))
    answer.add(decoder.end())
    return answer.result()


class DecodedPassthrough(EachEvent):
    """One attempt's stream in the client's own format, passed through event by event; decoded only for
    the commit point, errors (an error event raises) and usage."""

    content_prefix = None  # every event is decoded

    def __init__(self, decoder: Any, error: Callable[[UpstreamError, str], bytes]) -> None:
        self.decoder = decoder  # the format's own decoder, with a `usage` attribute
        self._error = error
        self.usage = None

    def feed(self, event: SSEEvent) -> tuple[bytes, bool]:
        if event.comment:
            return b"", False
        commits = c.carries_content(self.decoder.feed(event))
        self.usage = self.decoder.usage
        return encode_event(event.data, event.event), commits

    def end(self) -> bytes:
        self.decoder.end()  # raises for a stream cut short
        return b""

    def error(self, error: UpstreamError, connection: str) -> bytes:
        return self._error(error, connection)
