"""Incremental Server-Sent Events parsing and writing.

Upstreams frame with LF or CRLF (or bare CR), split events across any number of reads, send comment
keep-alives and multi-line data. The parser is fed raw chunks and returns whole events; the writer
emits each event as one `\\n`-terminated block so it goes to the client in a single write.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import too_large

UNBOUNDED = 1 << 62  # no cap on an event: a whole body already read (and bounded) by its reader


@dataclass(slots=True)
class SSEEvent:
    data: bytes  # data lines joined with b"\n"
    event: str | None = None  # the `event:` field, if any
    comment: bool = False  # a `:` comment line (keep-alive); data holds its text


class SSEParser:
    """Feed bytes, get complete events. Keeps only the unfinished event between calls, at most
    `max_event` bytes of it (beyond, `feed` raises UpstreamError(bad_response, too_large)), and
    reads each byte a bounded number of times however the event is split across reads: an event
    that grows over many reads is kept as a list of its pieces, searched only in the new one."""

    __slots__ = ("_data", "_event", "_head", "_held", "_max", "_started", "_tail")

    def __init__(self, max_event: int = UNBOUNDED) -> None:
        self._max = max_event
        self._tail = b""  # the unfinished event (its last piece, when `_head` holds the earlier ones)
        self._head: list[bytes] = []  # earlier pieces of it, each without an event boundary
        self._held = 0  # the bytes in `_head`
        self._data: list[bytes] = []  # the event of the block being parsed
        self._event: str | None = None
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events `chunk` completes. Raises UpstreamError (bad_response, too_large) for an event
        longer than `max_event`."""
        if self._tail:
            buf = self._resume(chunk)
            if buf is None:
                return []
        else:
            buf = chunk
        if not self._started:  # the spec strips one leading UTF-8 BOM from the stream
            if len(buf) < 3 and b"\xef\xbb\xbf".startswith(buf):
                self._tail = buf
                return []
            self._started = True
            if buf.startswith(b"\xef\xbb\xbf"):
                buf = buf[3:]
        if buf.find(b"\r") >= 0:  # (not `in`: see the note at the end)
            buf = _lf(buf)
        # Whole events, nearly always of one `data:` line: that shape is taken as it is, anything
        # else in a block goes through the line-by-line rules of `_line`.
        blocks = buf.split(b"\n\n")
        self._tail = blocks.pop()  # an unfinished event: read again with the next chunk
        if len(buf) > self._max:  # (only then can one event in it be too long)
            self._check(blocks)
        events: list[SSEEvent] = []
        for block in blocks:
            if block.startswith(b"data: ") and block.find(b"\n") < 0:
                events.append(SSEEvent(block[6:]))
            elif block:
                for line in block.split(b"\n"):
                    self._line(line, events)
                self._line(b"", events)
        return events

    def _resume(self, chunk: bytes) -> bytes | None:
        """With an event unfinished: None while `chunk` does not end it (then it is kept as one more
        piece), else all of it up to and with `chunk`, `\\n` framed up to a final CR (which may be the
        first half of a CRLF). Raises UpstreamError (too_large) when the unfinished event outgrows
        `max_event`."""
        tail = self._tail
        if not self._started or not chunk:  # a partial BOM (at most 2 bytes), or nothing new
            self._tail = b""
            return tail + chunk
        if tail[-1] == 0x0D:  # a held CR: it and the new bytes are normalized together
            tail, chunk = tail[:-1], b"\r" + chunk
        if chunk.find(b"\r") >= 0:
            chunk = _lf(chunk)
        # One LF is searched first: a one-byte search is memchr, several times faster than the search
        # for two over a long run without line breaks (the flood this guards against).
        last = tail[-1:] or (self._head[-1][-1:] if self._head else b"")
        ends = chunk.find(b"\n") >= 0 and (chunk.find(b"\n\n") >= 0 or (chunk[0] == 0x0A and last == b"\n"))
        if not ends:
            if tail:
                self._head.append(tail)
                self._held += len(tail)
            self._tail = chunk
            if self._held + len(chunk) > self._max:
                raise too_large("SSE event", self._max, "max_event_bytes")
            return None
        buf = b"".join([*self._head, tail, chunk]) if self._head else tail + chunk
        self._tail, self._head, self._held = b"", [], 0
        return buf

    def _check(self, blocks: list[bytes]) -> None:
        """Raises UpstreamError (too_large) when the unfinished event or one of `blocks` is longer
        than `max_event`."""
        if len(self._tail) > self._max or any(len(block) > self._max for block in blocks):
            raise too_large("SSE event", self._max, "max_event_bytes")

    def plain(self, chunk: bytes) -> bool:
        """Whether `chunk` can be relayed or split without this parser: it begins with a `data: `
        line and ends with a blank line, with `\\n` framing only and nothing pending from earlier
        reads. (What lies between is for the caller to check, see `object_events`; a plain first
        read also tells the parser the stream began without a BOM.)"""
        if self._tail or len(chunk) > self._max:
            return False
        if chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") and chunk.find(b"\r") < 0:
            self._started = True
            return True
        return False

    def close(self) -> list[SSEEvent]:
        """End of stream: an event without its final blank line is still delivered (lenient)."""
        events: list[SSEEvent] = []
        tail = b"".join([*self._head, self._tail]) if self._head else self._tail
        self._tail, self._head, self._held = b"", [], 0
        if tail:  # whole lines of an unfinished event may wait here
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


def _lf(buf: bytes) -> bytes:
    """`buf` with `\\n` line breaks for CRLF and bare CR, but a CR at its very end (it may be the first
    half of a CRLF whose LF comes with the next read)."""
    hold = buf.endswith(b"\r")
    if hold:
        buf = buf[:-1]
    buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return buf + b"\r" if hold else buf


def events_of(body: bytes) -> list[SSEEvent]:
    """The events of a whole SSE body (an upstream that streamed although asked for JSON); no cap on
    one event: the body was read whole, within `limits.max_upstream_body_bytes`."""
    parser = SSEParser()
    return parser.feed(body) + parser.close()


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
