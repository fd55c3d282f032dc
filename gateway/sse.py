"""Incremental Server-Sent Events parsing and writing.

Upstreams frame with LF or CRLF (or bare CR), split events across any number of reads, send comment
keep-alives and multi-line data. The parser is fed raw chunks and returns whole events; the writer
emits each event as one `\\n`-terminated block so it goes to the client in a single write.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    data: bytes  # data lines joined with b"\n"
    event: str | None = None  # the `event:` field, if any
    comment: bool = False  # a `:` comment line (keep-alive); data holds its text


class SSEParser:
    """Feed bytes, get complete events. Keeps only the unfinished part between calls."""

    __slots__ = ("_data", "_event", "_started", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._tail + chunk if self._tail else chunk
        if not self._started:  # the spec strips one leading UTF-8 BOM from the stream
            if len(buf) < 3 and b"\xef\xbb\xbf".startswith(buf):
                self._tail = buf
                return []
            self._started = True
            if buf.startswith(b"\xef\xbb\xbf"):
                buf = buf[3:]
        if buf.find(b"\r") >= 0:  # (not `in`: see the note at the end)
            # A CR at the very end may be the first half of CRLF: keep it until the next read.
            hold = buf.endswith(b"\r")
            if hold:
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if hold:
                buf += b"\r"
        events: list[SSEEvent] = []
        if not self._data and self._event is None:
            # Fast path, for the shape nearly every server sends: whole events of one `data:` line.
            # Anything else in a block goes through the line-by-line rules below.
            blocks = buf.split(b"\n\n")
            self._tail = blocks.pop()  # an unfinished event: read again with the next chunk
            for block in blocks:
                if block.startswith(b"data: ") and block.find(b"\n") < 0:
                    events.append(SSEEvent(block[6:]))
                elif block:
                    for line in block.split(b"\n"):
                        self._line(line, events)
                    self._line(b"", events)
            return events
        lines = buf.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            self._line(line, events)
        return events

    def plain(self, chunk: bytes) -> bool:
        """Whether `chunk` can be relayed or split without this parser: it begins with a `data: `
        line and ends with a blank line, with `\\n` framing only and nothing pending from earlier
        reads. (What lies between is for the caller to check, see `object_events`; a plain first
        read also tells the parser the stream began without a BOM.)"""
        if self._tail or self._data or self._event is not None:
            return False
        if chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") and chunk.find(b"\r") < 0:
            self._started = True
            return True
        return False

    def close(self) -> list[SSEEvent]:
        """End of stream: an event without its final blank line is still delivered (lenient)."""
        events: list[SSEEvent] = []
        tail, self._tail = self._tail, b""
        if tail:  # the fast path may leave whole lines of an unfinished event here
            for line in tail.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
                self._line(line, events)
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(b"\n".join(self._data), self._event))
            self._data = []
            self._event = None
            return
        if line[0] == 0x3A:  # ":" comment
            events.append(SSEEvent(line[1:].strip(), comment=True))
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        # `id` and `retry` carry nothing the gateway uses


def object_events(chunk: bytes, end: int) -> bool:
    """Whether `chunk[:end]` is whole events of one `data: {...}` line each, `\\n` framed: then every
    line break in it is part of an `}\\n\\ndata: {` between two events or the final `}\\n\\n`. Two
    scans in C, for a relay that passes such events on unparsed."""
    return (
        end >= 10
        and chunk.startswith(b"data: {")
        and chunk.startswith(b"}\n\n", end - 3)
        and chunk.count(b"\n", 0, end) == 2 * chunk.count(b"}\n\ndata: {", 0, end - 3) + 2
    )


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """One SSE event as bytes, `\\n` line endings, ready for a single write."""
    if data.find(b"\n") >= 0:
        body = b"".join(b"data: " + line + b"\n" for line in data.split(b"\n"))
    else:
        body = b"data: " + data + b"\n"
    if event:
        return b"event: " + event.encode() + b"\n" + body + b"\n"
    return body + b"\n"


def encode_comment(text: bytes) -> bytes:
    return b": " + text + b"\n\n"


# A note on `bytes.find(x) >= 0` where `x in data` would read better: CPython 3.11's bytes.__contains__
# first tries `x` as an integer, and for a bytes `x` that raises and clears a TypeError with a formatted
# message each time (about 1,500 instructions; callgrind showed 60,000 per translated stream).
