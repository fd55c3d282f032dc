"""The same-format Chat stream's byte path: after the commit point, reads of plain content events go
to the client as they came, unparsed; everything a relay must see (errors, usage, finish, the end)
is still parsed."""

from __future__ import annotations

import logging

import aiohttp
import orjson
import pytest

from gateway.formats.openai_chat import native
from gateway.formats.openai_chat.native import Passthrough
from gateway.routing.attempt import until_content
from gateway.sse import SSEParser, object_events
from gateway.transport import EventReader
from tests.conftest import CLIENT_KEY, connection, gateway_config
from tests.mock_openai import chunk, stream_handler, text_stream, usage_chunk


def sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


CONTENT = sse(chunk({"content": "Hello"})) + sse(chunk({"content": " world"}))
FINISH = sse(chunk({}, finish="stop"))
USAGE = sse(usage_chunk())
DONE = b"data: [DONE]\n\n"


def started_parser() -> SSEParser:
    parser = SSEParser()
    assert parser.feed(sse(chunk({"role": "assistant", "content": ""})))
    return parser


def test_plain_reads_begin_with_data_and_end_with_a_blank_line_with_nothing_pending() -> None:
    parser = started_parser()
    assert parser.plain(CONTENT) and parser.plain(DONE)
    for not_plain in (
        CONTENT[:-1],  # the last event unfinished
        CONTENT.replace(b"\n", b"\r\n"),  # CRLF framing
        CONTENT[:-2] + b"\r\n",  # a bare CR anywhere is a line break to SSE
        b": keep-alive\n\n" + CONTENT,  # a comment first
        b"event: message\n" + CONTENT,  # a named event first
    ):
        assert not parser.plain(not_plain), not_plain
    assert parser.feed(CONTENT[:10]) == []  # an event pending from an earlier read
    assert not parser.plain(CONTENT)
    assert SSEParser().plain(CONTENT) and not SSEParser().plain(b"\xef\xbb\xbf" + CONTENT)  # the first read


def test_object_events_are_single_line_data_objects_and_nothing_else() -> None:
    assert object_events(CONTENT, len(CONTENT)) and object_events(CONTENT + DONE, len(CONTENT))
    first = CONTENT.index(b"\n\n") + 2
    assert object_events(CONTENT, first) and not object_events(CONTENT, first - 1)
    for not_objects in (
        CONTENT + DONE,  # [DONE] is no object
        CONTENT + b": keep-alive\n\n",  # a comment
        CONTENT.replace(b"\n\ndata", b"\nevent: message\n\ndata", 1),  # a named event
        CONTENT.replace(b"\n\ndata", b"\nid: 7\n\ndata", 1),
        b"data: {\ndata: }\n\n",  # multi-line data
        b"data: {}\n\n\n",  # an extra blank line
        b"data: {}\n\n\ndata: {}\n\n",
        b"data: {not json\n\n",
        b"data: [1, 2]\n\n",
    ):
        assert not object_events(not_objects, len(not_objects)), not_objects


def test_content_prefix_stops_before_what_the_relay_must_see() -> None:
    stream = Passthrough(wants_usage=False)
    assert stream.content_prefix(CONTENT) == len(CONTENT)
    assert stream.content_prefix(CONTENT + FINISH + USAGE + DONE) == len(CONTENT)
    error = sse({"error": {"message": "boom", "type": "server_error"}})
    assert stream.content_prefix(CONTENT + error + CONTENT) == len(CONTENT)
    assert stream.content_prefix(FINISH + CONTENT) == 0
    assert stream.content_prefix(CONTENT + b": keep-alive\n\n" + FINISH) == 0  # anything but objects: parsed
    assert stream.content_prefix(USAGE) == 0 and stream.content_prefix(DONE) == 0
    # Events that are not JSON objects by their ends: parsed (and refused there).
    assert stream.content_prefix(CONTENT + b"data: {not json\n\n") == 0
    assert stream.content_prefix(b"data: [1, 2]\n\n") == 0
    # Spaced JSON: a null finish and null usage are still plain; a real finish is not.
    spaced = b'data: {"choices": [{"delta": {"content": "x"}, "finish_reason": null}], "usage": null}\n\n'
    assert stream.content_prefix(spaced) == len(spaced)
    assert stream.content_prefix(spaced.replace(b"null}]", b'"stop"}]')) == 0
    # Inside a string the key's quotes are escaped: content that talks about errors is content.
    talk = sse(chunk({"content": 'say "error": no, "usage": yes'}))
    assert stream.content_prefix(talk) == len(talk)
    stream.done = True
    assert stream.content_prefix(CONTENT) == 0


@pytest.mark.parametrize("wants_usage", [False, True])
@pytest.mark.parametrize("arrival", ["spaced", "one_write"])
async def test_content_passes_verbatim_and_usage_is_still_seen(
    start_upstream, start_gateway, caplog, monkeypatch, wants_usage, arrival
):
    events = text_stream([f"piece {i} " for i in range(12)])
    if arrival == "spaced":  # one read per event
        upstream = await start_upstream(stream_handler(events, delay=0.01))
    else:  # the whole stream in one read: content after the commit point passes from within it
        upstream = await start_upstream(stream_handler([b"".join(events)]))
    gw = await start_gateway(gateway_config(connection("main", upstream)))
    fed = []
    feed = Passthrough.feed
    monkeypatch.setattr(native.Passthrough, "feed", lambda self, event: fed.append(event) or feed(self, event))
    caplog.set_level(logging.INFO, logger="gateway.request")
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    if wants_usage:
        body["stream_options"] = {"include_usage": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gw.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}
        ) as response,
    ):
        received = await response.read()
    # Byte for byte what the upstream sent; the usage chunk only for a client that asked for it.
    expected = [e for e in events if wants_usage or b'"usage"' not in e]
    assert received == b"".join(expected)
    # Most content events never reached the parser; the finish, the usage and [DONE] did.
    assert len(fed) < len(events) / 2
    assert [e.data for e in fed[-3:]] == [FINISH[6:-2], USAGE[6:-2], b"[DONE]"]
    (line,) = [r for r in caplog.records if r.name == "gateway.request"]
    assert line.fields["tokens"] == {"input": 9, "output": 3, "reasoning": 0} and line.fields["status"] == 200


class _Reads:
    """An upstream response's body as a fixed list of network reads."""

    def __init__(self, reads: list[bytes]) -> None:
        self.content = self
        self._reads = list(reads)

    async def readany(self) -> bytes:
        return self._reads.pop(0) if self._reads else b""


async def _relay(reads: list[bytes], wants_usage: bool) -> tuple[bytes, Passthrough]:
    """What the router's commit-then-relay loop sends a client for these upstream reads."""
    reader = EventReader(_Reads(reads))  # type: ignore[arg-type]
    stream = Passthrough(wants_usage)
    held: list[bytes] = []
    await until_content(reader, stream, held)
    out = b"".join(held)
    while (batch := await reader.read()) is not None:
        out += stream.relay(batch)
    return out + stream.end(), stream


ODD_EVENTS = [
    b": keep-alive\n\n",  # a comment between content events
    b"data: {\"choices\": [{\"delta\": {\"content\": \"x\"},\n"  # multi-line data
    b"data:  \"finish_reason\": null}]}\n\n",
    b"\n",  # an extra blank line
]


@pytest.mark.parametrize("odd", [None, *ODD_EVENTS])
@pytest.mark.parametrize("wants_usage", [False, True])
async def test_relayed_bytes_do_not_depend_on_how_the_stream_was_read(odd, wants_usage) -> None:
    events = text_stream([f"piece {i} " for i in range(6)])
    if odd is not None:
        events.insert(3, odd)
    whole = b"".join(events)
    expected, first = await _relay([e for e in events], wants_usage)  # one read per event
    assert first.usage is not None and first.done
    if odd is None:  # (odd events are passed on as the parser reads them, not byte for byte)
        assert expected == b"".join(e for e in events if wants_usage or b'"usage"' not in e)
    for cut_a in range(0, len(whole), 37):
        for cut_b in (cut_a + 1, cut_a + 211, len(whole)):
            reads = [r for r in (whole[:cut_a], whole[cut_a:cut_b], whole[cut_b:]) if r]
            out, stream = await _relay(reads, wants_usage)
            assert out == expected, reads
            assert stream.usage == first.usage and stream.done
