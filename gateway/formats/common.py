"""Helpers every format module needs: error values, JSON objects, counts, fields left over."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from ..errors import ErrorKind, GatewayError, Reason, UpstreamError
from ..router import EachEvent
from ..sse import SSEEvent, SSEParser, encode_event
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


def fold_stream(body: bytes, decoder: Any) -> c.Response:
    """A whole SSE body (an upstream that streamed although asked for JSON) -> one canonical Response,
    through the format's own stream decoder."""
    parser = SSEParser()
    answer = c.Accumulator()
    for event in parser.feed(body) + parser.close():
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
