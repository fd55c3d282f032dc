"""Hostile clients: no connection can take longer than its timeouts to send a head or a body, more memory
than the header caps, or a connection beyond `max_connections` (gateway/server.py). Raw sockets against
the real gateway, with the timeouts configured short; every test asserts the exact status, the error's
shape in the client's format, and that nothing reached the upstream."""

from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest

from gateway.config.model import ConfigError
from gateway.config.sections import parse_config
from gateway.server import TOO_MANY_HEADERS
from tests.conftest import CLIENT_KEY, connection, gateway_config
from tests.mock_openai import completion, json_handler

TIMEOUT = 0.5  # header_timeout, body_timeout, and keepalive_timeout where a test sets it
MARGIN = 1.0  # the linger after an answer is 1 s; a closed connection must be seen within this
CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
async def setup(start_upstream, start_gateway):
    upstream = await start_upstream(json_handler(completion()))
    limits = {"header_timeout": TIMEOUT, "body_timeout": TIMEOUT}
    gateway = await start_gateway(gateway_config(connection("main", upstream), limits=limits))
    return gateway, upstream


async def open_raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


def head(method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> bytes:
    fields = {"Host": "gateway", "Authorization": f"Bearer {CLIENT_KEY}", **(headers or {})}
    if body is not None:
        fields |= {"Content-Type": "application/json", "Content-Length": str(len(body))}
    return "".join([f"{method} {path} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in fields.items()), "\r\n"]).encode()


async def answer(reader: asyncio.StreamReader, timeout: float = 5) -> tuple[bytes, float]:
    """Everything the gateway sends until it closes (a reset after its answer counts as closing, and
    what came before it is kept); and when it closed (monotonic)."""
    data = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionResetError:
        pass
    return bytes(data), time.monotonic()


def parsed(data: bytes) -> tuple[int, dict[str, str], dict]:
    """(status, lower-case headers, JSON body) of one answer."""
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, orjson.loads(body)


def openai_error(body: dict, code: str) -> str:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float = 0.05) -> None:
    """One byte at a time until `data` is sent or the gateway has closed."""
    for i in range(len(data)):
        if writer.is_closing():
            return
        try:
            writer.write(data[i : i + 1])
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every)


async def test_a_slowloris_head_is_answered_408_and_closed_at_header_timeout(setup):
    gateway, upstream = setup
    reader, writer = await open_raw(gateway.url)
    started = time.monotonic()
    sender = asyncio.create_task(trickle(writer, head("POST", "/v1/chat/completions", body=CHAT) + CHAT))
    data, closed = await answer(reader)
    sender.cancel()
    assert TIMEOUT - 0.1 < closed - started < TIMEOUT + MARGIN
    status, headers, body = parsed(data)
    assert status == 408 and headers["connection"] == "close"
    assert "did not arrive within 0.5 s" in openai_error(body, "request_timeout")
    assert upstream.requests == []
    writer.close()


async def test_a_slowloris_body_is_answered_408_in_the_clients_format_and_closed_at_body_timeout(setup):
    gateway, upstream = setup
    body = orjson.dumps({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi" * 20}]})
    reader, writer = await open_raw(gateway.url)
    writer.write(head("POST", "/v1/messages", {"anthropic-version": "2023-06-01"}, body) + body[:10])
    started = time.monotonic()
    sender = asyncio.create_task(trickle(writer, body[10:]))
    data, closed = await answer(reader)
    sender.cancel()
    # body_timeout plus the declared length at body_min_rate (64 KiB/s: a few ms here)
    assert TIMEOUT - 0.1 < closed - started < TIMEOUT + MARGIN
    status, _, error = parsed(data)
    assert status == 408 and set(error) == {"type", "error"} and error["type"] == "error"  # Anthropic's shape
    assert "request body did not arrive in time" in error["error"]["message"]
    assert upstream.requests == []
    writer.close()


async def test_a_body_that_comes_in_pieces_within_the_timeout_is_served(setup):
    gateway, upstream = setup
    reader, writer = await open_raw(gateway.url)
    writer.write(head("POST", "/v1/chat/completions", {"Connection": "close"}, CHAT) + CHAT[:5])
    await asyncio.sleep(TIMEOUT / 2)
    writer.write(CHAT[5:])
    data, _ = await answer(reader)
    assert parsed(data)[0] == 200 and len(upstream.requests) == 1
    writer.close()


async def test_500_half_sent_heads_are_all_closed_at_header_timeout(setup):
    gateway, upstream = setup
    connections = [await open_raw(gateway.url) for _ in range(500)]
    started = time.monotonic()
    for _, writer in connections:
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n")
    answers = await asyncio.gather(*(answer(reader, TIMEOUT + MARGIN + 2) for reader, _ in connections))
    assert max(closed for _, closed in answers) - started < TIMEOUT + MARGIN + 0.5
    assert {parsed(data)[0] for data, _ in answers} == {408}
    assert upstream.requests == []
    for _, writer in connections:
        writer.close()


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


LINE_CAP = "A request header is longer than 8192 bytes."  # the parser's check
TOTAL_CAP = "Request headers are larger than the limit of 32768 bytes."  # the listener's, before the parser


# A 32 KB line crosses both caps: which one speaks depends on how the bytes arrive (in one read the
# total, in pieces the line's first). The smaller lines each cross one only.
@pytest.mark.parametrize(
    ("line_bytes", "messages"),
    [(32 * 1024, {LINE_CAP, TOTAL_CAP}), (16 * 1024, {LINE_CAP}), (4 * 1024, {TOTAL_CAP})],
)
async def test_50_connections_of_120_unfinished_header_lines_are_refused_early_in_bounded_memory(
    setup, line_bytes, messages
):
    gateway, upstream = setup
    line = b"x-pad: " + b"a" * (line_bytes - 9) + b"\r\n"

    async def attack() -> bytes:
        reader, writer = await open_raw(gateway.url)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n")
        reading = asyncio.create_task(answer(reader))
        for _ in range(120):  # until the gateway answers: what a real attacker would stop at too
            if reading.done():
                break
            try:
                writer.write(line)
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.001)
        data, _ = await reading
        writer.close()
        return data

    before = rss_kib()
    answers = await asyncio.gather(*(attack() for _ in range(50)))
    grown_mib = (rss_kib() - before) / 1024
    # Unbounded this was ~370 MB for the 32 KB lines; bounded it is the caps per connection (and the
    # client's own buffers, in the same process): about 2 MiB here.
    assert grown_mib < 20, grown_mib
    for data in answers:
        status, _, body = parsed(data)
        assert status == 431
        assert openai_error(body, "headers_too_large") in messages
    assert upstream.requests == []


@pytest.mark.parametrize(("size", "message"), [(40_000, TOTAL_CAP), (10_000, LINE_CAP)])
async def test_one_large_header_is_a_431_in_the_clients_format(setup, size, message):
    gateway, upstream = setup
    for path, extra in (("/v1/chat/completions", {}), ("/v1/messages", {"anthropic-version": "2023-06-01"})):
        reader, writer = await open_raw(gateway.url)
        writer.write(head("POST", path, {**extra, "x-big": "b" * size}, CHAT) + CHAT)
        data, _ = await answer(reader)
        status, headers, body = parsed(data)
        assert status == 431 and headers["content-type"] == "application/json"
        if path == "/v1/messages":
            assert body == {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
        else:
            assert openai_error(body, "headers_too_large") == message
        writer.close()
    assert upstream.requests == []


async def test_101_headers_are_a_431_and_100_are_served(setup):
    gateway, upstream = setup
    base = head("POST", "/v1/chat/completions", {"Connection": "close"}, CHAT).count(b"\r\n") - 2
    for count, expected in ((101, 431), (100, 200)):
        pads = {f"x-pad-{i}": "v" for i in range(count - base)}
        reader, writer = await open_raw(gateway.url)
        writer.write(head("POST", "/v1/chat/completions", {"Connection": "close", **pads}, CHAT) + CHAT)
        data, _ = await answer(reader)
        status, _, body = parsed(data)
        assert status == expected, body
        if expected == 431:
            assert openai_error(body, "too_many_headers") == "The request has more than 100 headers."
            assert upstream.requests == []
        writer.close()
    assert len(upstream.requests) == 1
    assert TOO_MANY_HEADERS == "Too many headers received"  # the parser's words the 431 is matched on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_beyond_max_connections_a_connection_gets_503_and_is_closed(start_upstream, start_gateway, tmp_path):
    upstream = await start_upstream(json_handler(completion()))
    proxy = {"host": "127.0.0.1", "port": free_port(), "max_connections": 2}
    gateway = await start_gateway(gateway_config(connection("main", upstream), limits={"max_connections": 5},
                                                 proxy=proxy, data_dir=str(tmp_path)))  # fmt: skip
    held = [await open_raw(gateway.url) for _ in range(5)]
    proxy_url = f"http://127.0.0.1:{proxy['port']}"
    proxied = [await open_raw(proxy_url) for _ in range(2)]  # counted apart: the server port is full
    for url in (gateway.url, proxy_url):
        reader, writer = await open_raw(url)
        data, _ = await answer(reader)
        status, headers, body = parsed(data)
        assert status == 503 and headers["connection"] == "close"
        assert openai_error(body, "too_many_connections").startswith("The gateway has too many open connections")
        assert body["error"]["type"] == "service_unavailable"
        writer.close()
    held[0][1].close()  # a slot frees when a connection ends
    await answer(held[0][0])
    await asyncio.sleep(0.05)
    reader, writer = await open_raw(gateway.url)
    writer.write(head("POST", "/v1/chat/completions", {"Connection": "close"}, CHAT) + CHAT)
    data, _ = await answer(reader)
    assert parsed(data)[0] == 200 and len(upstream.requests) == 1
    for _, w in held[1:] + proxied:
        w.close()


async def test_keepalive_timeout_closes_an_idle_keep_alive_connection(start_upstream, start_gateway):
    upstream = await start_upstream(json_handler(completion()))
    gateway = await start_gateway(gateway_config(connection("main", upstream), server={"keepalive_timeout": TIMEOUT}))
    reader, writer = await open_raw(gateway.url)
    for i in range(2):  # kept alive between requests that come in time
        if i:
            await asyncio.sleep(TIMEOUT / 2)
        writer.write(head("POST", "/v1/chat/completions", body=CHAT) + CHAT)
        status_line = await reader.readuntil(b"\r\n\r\n")
        length = int(next(v for k, _, v in (line.partition(b":") for line in status_line.split(b"\r\n"))
                          if k.lower() == b"content-length"))  # fmt: skip
        assert status_line.startswith(b"HTTP/1.1 200") and len(await reader.readexactly(length)) == length
    idle = time.monotonic()
    data, closed = await answer(reader)
    assert data == b"" and TIMEOUT - 0.2 < closed - idle < TIMEOUT + MARGIN
    assert len(upstream.requests) == 2
    writer.close()


def test_the_client_side_defaults_and_their_errors_at_load():
    config = parse_config(gateway_config(connection("a", "http://127.0.0.1:9/v1")), "g.yaml")
    limits = config.limits
    assert (limits.header_timeout, limits.body_timeout, limits.body_min_rate) == (10, 30, 64 * 1024)
    assert (limits.max_header_count, limits.max_header_line_bytes, limits.max_connections) == (100, 8192, 10_000)
    assert config.server.keepalive_timeout == 75 and config.proxy.max_connections == 10_000
    for section, message in (
        ({"limits": {"header_timeout": 0}}, "g.yaml: limits.header_timeout: must be greater than 0"),
        ({"limits": {"body_min_rate": 1.5}}, "g.yaml: limits.body_min_rate: must be a whole number"),
        ({"limits": {"max_header_count": 10}}, "g.yaml: limits.max_header_count: must be at least 32"),
        ({"limits": {"max_header_line_bytes": 100}}, "limits.max_header_line_bytes: must be at least 1024"),
        ({"limits": {"max_connections": -1}}, "g.yaml: limits.max_connections: must be greater than 0"),
        ({"server": {"keepalive_timeout": "long"}}, "g.yaml: server.keepalive_timeout: must be a number"),
        ({"proxy": {"max_connections": 0}}, "g.yaml: proxy.max_connections: must be greater than 0"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config(gateway_config(connection("a", "http://127.0.0.1:9/v1"), **section), "g.yaml")
        assert message in str(info.value) and "Fix: " in str(info.value), info.value
