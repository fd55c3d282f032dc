"""A small streaming load generator: N concurrent workers, each sending one streamed request after
another and reading it to the end, for a fixed duration (or until a fixed count is done).

Prints one JSON line: streams, streams/s, p50/p99 of full-stream latency (request sent -> last byte),
total SSE events received, errors. Used by tests/bench/run.py; runs on its own too:

    python tests/bench/streamload.py --url http://127.0.0.1:8080/v1/chat/completions \\
        --body '{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}' \\
        --concurrency 32 --duration 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time

import aiohttp


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def run(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float, count: int | None
) -> dict:
    latencies: list[float] = []
    events = 0
    errors = 0
    error_samples: list[str] = []
    remaining = count if count is not None else math.inf
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal events, errors, remaining
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                sent = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        data = await response.read()
                        ok = response.status == 200 and data.endswith(b"data: [DONE]\n\n")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok, data = False, repr(exc).encode()
                if ok:
                    latencies.append(time.perf_counter() - sent)
                    events += data.count(b"\n\n")
                else:
                    errors += 1
                    if len(error_samples) < 3:
                        error_samples.append(data[:300].decode("utf-8", "replace"))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "streams": len(latencies),
        "errors": errors,
        "elapsed": elapsed,
        "rate": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "events": events,
        "error_samples": error_samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Streaming load: N workers for a fixed duration.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help='the JSON request body (with "stream": true)')
    parser.add_argument("--header", action="append", default=[], help="extra header, `Name: value` (repeatable)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds (an upper bound with --count)")
    parser.add_argument("--count", type=int, help="stop after this many streams in total")
    args = parser.parse_args()
    if not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        sys.exit("streamload: only loopback targets are allowed")
    headers = {"Content-Type": "application/json"}
    for line in args.header:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    result = asyncio.run(run(args.url, args.body.encode(), headers, args.concurrency, args.duration, args.count))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
