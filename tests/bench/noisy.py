"""The noisy neighbour: a healthy client's stream latency while another client's upstream floods SSE
without a single newline (an event that never ends), against the same client measured quietly.

As a server, the flooding upstream (the bench starts it on the load core):

    python tests/bench/noisy.py --port 9002

Every POST gets `text/event-stream` and `data: ` followed by `x` without end, until the gateway hangs
up (at its `limits.max_event_bytes` / `max_held_bytes`, 4 MiB by default) or FLOOD_LIMIT is reached.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

FLOOD_PIECE = b"x" * 65536
FLOOD_LIMIT = 1 << 30  # per answer: nothing runs forever, even against a gateway that reads on
FLOOD_MODEL = "noisy-flood"
SECONDS = 2.0  # each phase (quiet, noisy)


def create_app() -> web.Application:
    async def flood(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: ")
        sent = 0
        try:
            while sent < FLOOD_LIMIT:
                await response.write(FLOOD_PIECE)
                sent += len(FLOOD_PIECE)
        except ConnectionError:  # the gateway hung up: what it should do
            pass
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", flood)
    return app


@dataclass
class NoisyResult:
    quiet_p50_ms: float
    quiet_p99_ms: float
    noisy_p50_ms: float
    noisy_p99_ms: float
    quiet_streams: int
    noisy_streams: int
    flood_requests: int  # the neighbour's requests answered meanwhile (each refused at a cap)

    @property
    def p99_ratio(self) -> float:
        return self.noisy_p99_ms / self.quiet_p99_ms


def _latencies(stream_once: Callable[[], None], seconds: float) -> list[float]:
    """Whole-stream latencies (ms) of back-to-back streams for `seconds`."""
    out: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        stream_once()
        out.append((time.perf_counter() - began) * 1000)
    return out


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def measure(
    host: str, port: int, path: str, flood_body: bytes, stream_once: Callable[[], None], seconds: float = SECONDS
) -> NoisyResult:
    """The healthy client (`stream_once`: one whole stream) alone, then while one neighbour sends
    `flood_body` (to the flooding connection) back to back on its own connection."""
    quiet = _latencies(stream_once, seconds)
    stop = threading.Event()
    floods = [0]

    def neighbour() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            while not stop.is_set():
                conn.request("POST", path, body=flood_body, headers={"Content-Type": "application/json"})
                conn.getresponse().read()
                floods[0] += 1
        finally:
            conn.close()

    thread = threading.Thread(target=neighbour, daemon=True)
    thread.start()
    try:
        time.sleep(0.1)  # the flood under way
        noisy = _latencies(stream_once, seconds)
    finally:
        stop.set()
        thread.join(timeout=35)
    return NoisyResult(
        statistics.median(quiet), _p99(quiet), statistics.median(noisy), _p99(noisy), len(quiet), len(noisy), floods[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
