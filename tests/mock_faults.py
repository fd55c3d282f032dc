"""A raw TCP upstream that misbehaves on cue: resets, stalls, garbage instead of HTTP, cut bodies.

Each connection reads one HTTP request (head and Content-Length body), then plays a script of steps:
bytes are written (and drained), a float sleeps that many seconds, RESET closes with SO_LINGER 0 (the
peer gets a TCP RST), CLOSE closes cleanly (FIN), STALL waits until the server is closed. The mocks
drive the timing, so a fault always happens at the same point of the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

RESET = "reset"
CLOSE = "close"
STALL = "stall"
Step = bytes | float | str
LAST_CHUNK = b"0\r\n\r\n"


@dataclass
class RawRequest:
    head: bytes
    body: bytes

    @property
    def json(self) -> dict:
        return orjson.loads(self.body)


def head(status: int = 200, content_type: str = "text/event-stream", length: int | None = None, **extra: str) -> bytes:
    """A status line and headers: Content-Length when `length` is given, else chunked."""
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}", f"Content-Type: {content_type}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode()


def chunked(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def whole(body: bytes, content_type: str = "application/json", status: int = 200) -> list[Step]:
    """A complete response with a Content-Length body."""
    return [head(status, content_type, len(body)) + body, CLOSE]


def drip(data: bytes, piece: int, gap: float) -> list[Step]:
    """`data` as chunks of `piece` bytes, `gap` seconds apart."""
    steps: list[Step] = []
    for start in range(0, len(data), piece):
        steps += [gap, chunked(data[start : start + piece])]
    return steps


@dataclass
class FaultServer:
    """`script(request)` gives the steps to play for each request."""

    script: Callable[[RawRequest], Sequence[Step]]
    url: str = ""
    requests: list[RawRequest] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self, prefix: str = "/v1") -> FaultServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{prefix}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            request_head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in request_head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            request = RawRequest(request_head, await reader.readexactly(length))
            self.requests.append(request)
            for step in self.script(request):
                if isinstance(step, bytes):
                    writer.write(step)
                    await writer.drain()
                elif isinstance(step, float | int):
                    await asyncio.sleep(step)
                elif step == RESET:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                elif step == CLOSE:
                    break
                elif step == STALL:
                    await asyncio.sleep(3600)
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.transport.abort()  # the gateway gave up on this attempt: nothing more to play
        except asyncio.CancelledError:
            writer.transport.abort()  # the server is closing (a stall ends here)
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
