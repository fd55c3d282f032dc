"""A fault-injecting mock OpenAI upstream for the soak benchmark (tests/bench/soak.py).

Two providers on one port, both `POST /{name}/v1/chat/completions`:

- `primary`: on a share of attempts (`--before`, 0.30) fails before the first content event: a
  connection reset before any answer, a 500, a stall beyond the gateway's timeouts, and for streams
  also a reset or a stall right after the role-only chunk (which does not commit a stream). On a
  further share of streams (`--after`) it fails after content has gone out: a few content chunks,
  then a reset or a stall beyond the idle timeout. Every other attempt is served.
- `secondary`: always served (the healthy fallback; the soak also measures it directly).

Each answer is `--chunks` content chunks, chunk `i` of request `N` carrying the marker `<N.i>`; the
request id `N` is read from `soak-N` in the request body (it survives every translation, being in the
user's message). `GET /_soak/log` returns what was done to every request: `{"N": [[provider,
outcome], ...]}` (outcome `ok`, `before:KIND` or `after:KIND:SENT` with SENT content chunks sent).
Decisions come from one seeded random generator, in arrival order.

    python tests/bench/fault_upstream.py --port 9000 [--seed 1] [--before 0.3] [--after 0.15] [--stall 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re

from aiohttp import web

CREATED = 1_763_700_000
ID_RE = re.compile(rb"soak-(\d+)")
BEFORE_KINDS = ("reset", "status_500", "stall")
STREAM_BEFORE_KINDS = (*BEFORE_KINDS, "reset_after_role", "stall_after_role")
AFTER_KINDS = ("reset", "stall")
USAGE = {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}


def marker(request_id: str, i: int) -> str:
    return f"<{request_id}.{i}>"


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    payload = {
        "id": "chatcmpl-soak",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "soak-upstream",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _completion(text: str) -> bytes:
    message = {"role": "assistant", "content": text, "refusal": None}
    return json.dumps(
        {
            "id": "chatcmpl-soak",
            "object": "chat.completion",
            "created": CREATED,
            "model": "soak-upstream",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": USAGE,
        },
        separators=(",", ":"),
    ).encode()


def _usage_chunk() -> bytes:
    payload = {"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": CREATED,
               "model": "soak-upstream", "choices": [], "usage": USAGE}  # fmt: skip
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def create_app(seed: int, before: float, after: float, stall: float, chunks: int) -> web.Application:
    rng = random.Random(seed)
    log: dict[str, list[list[str]]] = {}
    stream_headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

    def decide(stream: bool) -> str:
        """What the primary does to this attempt."""
        roll = rng.random()
        if roll < before:
            return "before:" + rng.choice(STREAM_BEFORE_KINDS if stream else BEFORE_KINDS)
        if stream and roll < before + after:
            return "after:" + rng.choice(AFTER_KINDS)
        return "ok"

    async def abort(request: web.Request) -> None:
        await asyncio.sleep(0.02)  # what was written goes out first
        if request.transport is not None:
            request.transport.abort()

    async def chat(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        stream = body.get("stream") is True
        found = ID_RE.search(raw)
        request_id = found.group(1).decode() if found else "none"
        provider = request.match_info["provider"]
        outcome = decide(stream) if provider == "primary" else "ok"
        entry = [provider, outcome]
        log.setdefault(request_id, []).append(entry)
        markers = [marker(request_id, i) for i in range(chunks)]
        kind = outcome.partition(":")[2]
        if outcome.startswith("before:") and kind in ("reset", "status_500", "stall"):
            if kind == "stall":
                await asyncio.sleep(stall)
            if kind == "reset":
                await abort(request)
                return web.Response(status=500)
            return web.json_response({"error": {"message": "injected", "type": "server_error"}}, status=500)
        if not stream:
            return web.Response(body=_completion("".join(markers)), content_type="application/json")
        response = web.StreamResponse(headers=stream_headers)
        await response.prepare(request)
        await response.write(_chunk({"role": "assistant", "content": ""}))
        if outcome.startswith("before:"):  # after the role chunk, before any content
            if kind == "stall_after_role":
                await asyncio.sleep(stall)
            await abort(request)
            return response
        sent = rng.randint(1, chunks - 1) if outcome.startswith("after:") else chunks
        for text in markers[:sent]:
            await response.write(_chunk({"content": text}))
        if outcome.startswith("after:"):
            entry[1] = f"{outcome}:{sent}"
            if kind == "stall":
                await asyncio.sleep(stall)
            await abort(request)
            return response
        await response.write(_chunk({}, finish="stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(_usage_chunk())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def soak_log(request: web.Request) -> web.Response:
        return web.json_response(log)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{provider:primary|secondary}/v1/chat/completions", chat)
    app.router.add_get("/_soak/log", soak_log)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--before", type=float, default=0.30, help="share of primary attempts failed before content")
    parser.add_argument("--after", type=float, default=0.15, help="further share of primary streams failed after")
    parser.add_argument("--stall", type=float, default=3.0, help="seconds a stall lasts (beyond the timeouts)")
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per answer")
    args = parser.parse_args()
    app = create_app(args.seed, args.before, args.after, args.stall, args.chunks)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
