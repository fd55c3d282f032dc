"""Hostile upstreams: no answer makes the gateway hold more than its `limits:` caps.

Each hostile mock offers hundreds of MB (the same chunk object written again and again, so the test
itself stays cheap) and the caps are configured small; the gateway must stop reading at its cap, fall
back to the healthy spare before the commit point (`x-gateway-attempts` names `bad_response` first)
or end the stream with the client format's error event after it, or answer 502 in the client's format
when there is no spare. The gateway runs in the test process, so its RSS is read from /proc/self.
"""

from __future__ import annotations

import asyncio
import functools
import time
import zlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.config.reader import ConfigError
from gateway.config.sections import parse_config
from gateway.errors import UpstreamError
from gateway.sse import SSEParser
from tests.conftest import connection, gateway_config
from tests.mock_openai import chunk
from tests.test_faults import CLIENTS, FAST, PAUSE, SPARE_TEXT, Seen, call, spare_handler

CAP = 64 * 1024
OFFERED = 512 * 1024 * 1024  # what each hostile upstream tries to send
PIECE = 64 * 1024
RSS_BOUND = 64 * 1024 * 1024  # the gateway's growth while it is offered OFFERED
ROLE = b"data: " + orjson.dumps(chunk({"role": "assistant"})) + b"\n\n"
HEL = b"data: " + orjson.dumps(chunk({"content": "Hel"})) + b"\n\n"


def rss() -> int:
    """This process's resident set size in bytes (the gateway and the mocks run in it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def repeat(unit: bytes) -> bytes:
    """A piece of about PIECE bytes made of `unit` (the flood writes it again and again)."""
    return unit * max(1, PIECE // len(unit))


@functools.lru_cache(maxsize=1)
def gzip_bomb() -> tuple[bytes, int]:
    """(gzip of OFFERED zero bytes, OFFERED): about 500 KB that inflate to 512 MB, a valid gzip
    stream. Built from one compressed MiB repeated: once the window holds only zeros, each further
    MiB of zeros flushed on its own compresses to the same bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    first = packer.compress(zeros) + packer.flush(zlib.Z_SYNC_FLUSH)
    again = packer.compress(zeros) + packer.flush(zlib.Z_SYNC_FLUSH)
    crc = 0
    for _ in range(OFFERED >> 20):
        crc = zlib.crc32(zeros, crc)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final deflate block
    trailer = crc.to_bytes(4, "little") + (OFFERED & 0xFFFFFFFF).to_bytes(4, "little")
    return first + again * ((OFFERED >> 20) - 1) + end + trailer, OFFERED


class Flood:
    """An upstream answering every request with `first`, then `piece` until OFFERED bytes went out or
    the gateway hung up; `sent` counts what it managed to write."""

    def __init__(self, content_type: str, piece: bytes, first: bytes = b"", headers: dict[str, str] | None = None):
        self.content_type, self.piece, self.first = content_type, piece, first  # `first` is read on its own
        self.headers = headers or {}
        self.sent = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": self.content_type, **self.headers})
        await response.prepare(request)
        if self.first:
            await response.write(self.first)
            await asyncio.sleep(PAUSE)
        while self.sent < OFFERED:
            await response.write(self.piece)
            self.sent += len(self.piece)
        return response


class Bomb(Flood):
    """A JSON answer whose gzip body inflates to OFFERED bytes. The body is small enough for the
    kernel's socket buffers to take all of it, so `sent` stays 0: the RSS bound is the check."""

    def __init__(self) -> None:
        super().__init__("application/json", b"", headers={"Content-Encoding": "gzip"})

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        body, inflated = gzip_bomb()
        response = web.StreamResponse(headers={"Content-Type": self.content_type, **self.headers})
        await response.prepare(request)
        assert inflated == OFFERED
        for start in range(0, len(body), 16 * 1024):
            await response.write(body[start : start + 16 * 1024])
        return response


@pytest.fixture
async def hostile(start_upstream, start_gateway):
    """A gateway with small caps whose `primary` is the given hostile upstream: model `with-spare`
    falls back to a healthy `secondary`, model `alone` has only the primary."""

    async def _start(handler: Callable[[web.Request], Any], **limits: int):
        primary = await start_upstream(handler)
        spare = await start_upstream(spare_handler())
        caps = {"max_upstream_body_bytes": CAP, "max_event_bytes": CAP, "max_held_bytes": CAP, **limits}
        gw = await start_gateway(
            gateway_config(
                connection("primary", primary, timeout=FAST),
                connection("secondary", spare, priority=200),
                routes={"with-spare": ["primary", "secondary"], "alone": ["primary"]},
                reliability={"breaker": {"failures": 0}},
                limits=caps,
            )
        )
        return gw.url

    return _start


async def bounded(url: str, flood: Flood, model: str, stream: bool, client: str = "chat") -> Seen:
    """One request against the flood, asserting the gateway's RSS grew by less than RSS_BOUND, it
    stopped reading long before OFFERED, and it took under 3 s."""
    before, started = rss(), time.monotonic()
    seen = await call(url, CLIENTS[client], model, stream)
    assert time.monotonic() - started < 3.0
    assert rss() - before < RSS_BOUND, f"RSS grew by {(rss() - before) >> 20} MB"
    assert flood.sent < OFFERED // 4, f"the gateway read on: {flood.sent >> 20} MB sent"
    return seen


def fell_back(seen: Seen) -> None:
    assert (seen.status, seen.attempts, seen.connection) == (200, "primary:bad_response,secondary:ok", "secondary")
    assert (seen.text, seen.complete, seen.error) == (SPARE_TEXT, True, None)


@pytest.mark.parametrize(
    ("name", "make", "stream"),
    [
        ("huge JSON body", lambda: Flood("application/json", repeat(b"[" + b" " * 15)), False),
        ("gzip bomb", Bomb, False),
        ("SSE flood answering a non-stream request", lambda: Flood("text/event-stream", repeat(ROLE)), False),
        ("role-only chunks before the first content", lambda: Flood("text/event-stream", repeat(ROLE)), True),
        ("SSE without any newline", lambda: Flood("text/event-stream", repeat(b"x"), first=b"data: "), True),
        ("comments before the first content", lambda: Flood("text/event-stream", repeat(b": keep-alive\n\n")), True),
    ],
)
async def test_an_oversized_answer_before_the_commit_point_falls_back(hostile, name, make, stream):
    flood = make()
    url = await hostile(flood)
    fell_back(await bounded(url, flood, "with-spare", stream))


async def test_without_a_spare_the_client_gets_a_502_in_its_format_naming_too_large(hostile):
    flood = Flood("application/json", repeat(b"[" + b" " * 15))
    url = await hostile(flood)
    for client in ("chat", "anthropic"):
        seen = await bounded(url, flood, "alone", stream=False, client=client)
        assert (seen.status, seen.attempts) == (502, "primary:bad_response"), client
        assert seen.error is not None and "too_large" in seen.error["message"]
        assert f"over {CAP} bytes (limits.max_upstream_body_bytes)" in seen.error["message"]
        flood.sent = 0


@pytest.mark.parametrize("cap", ["max_event_bytes", "max_held_bytes"])
async def test_a_newline_less_flood_is_refused_by_each_cap_on_its_own(hostile, cap):
    flood = Flood("text/event-stream", repeat(b"x"), first=b"data: ")
    others = {key: 16 * CAP for key in ("max_event_bytes", "max_held_bytes") if key != cap}
    url = await hostile(flood, **others)
    seen = await bounded(url, flood, "alone", stream=True)
    assert (seen.status, seen.attempts) == (502, "primary:bad_response")
    assert seen.error is not None and f"(limits.{cap})" in seen.error["message"]


@pytest.mark.parametrize("client", ["chat", "anthropic"])
async def test_an_oversized_event_after_the_commit_point_ends_the_stream_with_an_error_event(hostile, client):
    flood = Flood("text/event-stream", repeat(b"x"), first=ROLE + HEL + b"data: ")
    url = await hostile(flood, max_held_bytes=16 * CAP)
    seen = await bounded(url, flood, "with-spare", stream=True, client=client)
    assert (seen.status, seen.attempts, seen.connection) == (200, "primary:ok", "primary")
    assert (seen.text, seen.complete) == ("Hel", False)
    assert seen.error is not None and "too_large" in seen.error["message"], seen.error


async def test_answers_just_under_the_caps_pass_unchanged(hostile):
    text = "y" * (CAP // 2)

    async def handler(request: web.Request) -> web.StreamResponse:
        if (await request.json()).get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for event in (ROLE, b"data: " + orjson.dumps(chunk({"content": text})) + b"\n\n"):
                for start in range(0, len(event), 1000):  # one event over many reads
                    await response.write(event[start : start + 1000])
            await response.write(b"data: " + orjson.dumps(chunk({}, finish="stop")) + b"\n\ndata: [DONE]\n\n")
            return response
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
        return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "m", **body})

    url = await hostile(handler)
    for stream in (False, True):
        seen = await call(url, CLIENTS["chat"], "alone", stream)
        assert (seen.status, seen.attempts, seen.text, seen.complete) == (200, "primary:ok", text, True), stream


# --- configuration --------------------------------------------------------------------------------


def test_the_caps_default_to_64_4_and_4_mib_and_refuse_values_below_1_kib():
    defaults = {"max_upstream_body_bytes": 64 << 20, "max_event_bytes": 4 << 20, "max_held_bytes": 4 << 20}
    limits = parse_config(gateway_config(connection("a", "http://127.0.0.1:9/v1")), "g.yaml").limits
    assert {key: getattr(limits, key) for key in defaults} == defaults
    for key, default in defaults.items():
        for bad, problem in ((10, "must be at least 1024 (bytes), got 10"), ("big", "must be a whole number")):
            with pytest.raises(ConfigError) as info:
                parse_config(gateway_config(connection("a", "http://127.0.0.1:9/v1"), limits={key: bad}), "g.yaml")
            assert str(info.value).startswith(f"g.yaml: limits.{key}: {problem}"), str(info.value)
            assert f"e.g. `{key}: {default}`" in str(info.value)


# --- SSEParser on its own --------------------------------------------------------------------------


def test_the_parser_refuses_an_unfinished_event_over_its_cap_however_it_is_split():
    for pieces in ([b"data: " + b"x" * 2000], [b"data: "] + [b"x" * 100] * 20, [b"data: a\n"] * 300):
        parser = SSEParser(1024)
        with pytest.raises(UpstreamError) as caught:
            for piece in pieces:
                parser.feed(piece)
        assert caught.value.reason == "bad_response" and "too_large" in caught.value.message
        assert "limits.max_event_bytes" in caught.value.message


def test_the_parser_refuses_a_whole_event_over_its_cap_in_one_read_and_passes_one_at_it():
    event = b"data: " + b"x" * 1000 + b"\n\n"
    assert SSEParser(len(event)).feed(event)[0].data == b"x" * 1000
    with pytest.raises(UpstreamError):
        SSEParser(len(event) - 10).feed(event + event)
    assert not SSEParser(len(event)).plain(event + event)  # too long to pass unparsed: feed checks it


def test_an_event_split_over_many_reads_parses_as_in_one_with_every_framing():
    events = b"data: one\n\n: c\n\nevent: e\ndata: two\ndata: 2\n\ndata: three\n\n"
    for framing in (b"\n", b"\r\n", b"\r"):
        stream = events.replace(b"\n", framing)
        one = SSEParser()
        whole = one.feed(stream) + one.close()
        for size in (1, 2, 3, 7):
            parser = SSEParser(64)
            got = [e for start in range(0, len(stream), size) for e in parser.feed(stream[start : start + size])]
            assert got + parser.close() == whole, (framing, size)


def test_the_parser_reads_a_long_event_in_linear_time():
    """8 MB in 1 KB reads with no line break: copying what is pending on every read (the old
    `tail + chunk`) is 32 GB of copies, many seconds; linear is milliseconds."""
    parser = SSEParser(16 << 20)
    piece = b"x" * 1024
    started = time.monotonic()
    assert parser.feed(b"data: ") == []
    for _ in range(8 * 1024):
        assert parser.feed(piece) == []
    assert parser.feed(b"\n\n")[0].data == piece * 8 * 1024
    assert time.monotonic() - started < 1.0
