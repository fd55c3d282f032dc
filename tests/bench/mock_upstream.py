"""A fast mock OpenAI upstream for the benchmark: `POST /v1/chat/completions` only.

Non-streaming: a small fixed `chat.completion`. With `"stream": true`: 20 content chunks, a finish
chunk, a usage chunk (`choices: []`) and `data: [DONE]`, each written as its own chunk as fast as
possible (no sleeps). Every answer is pre-encoded at start, so the mock costs as little as it can.

    python tests/bench/mock_upstream.py --port 9000 [--host 127.0.0.1] [--chunks 20]
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

CREATED = 1_763_700_000
MODEL = "bench-upstream"


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


USAGE = {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29}

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    },
    separators=(",", ":"),
).encode()


def stream_events(chunks: int) -> list[bytes]:
    """`chunks` content chunks (the first also carries the role), finish, usage, [DONE]."""
    events = [
        _sse(_chunk({"role": "assistant", "content": "Hello"})),
        *(_sse(_chunk({"content": f" word{i}"})) for i in range(1, chunks)),
    ]
    events.append(_sse(_chunk({}, finish="stop")))
    usage = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED, "model": MODEL}
    events.append(_sse({**usage, "choices": [], "usage": USAGE}))
    events.append(b"data: [DONE]\n\n")
    return events


def create_app(chunks: int = 20) -> web.Application:
    events = stream_events(chunks)
    stream_headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if body.get("stream") is not True:
            return web.Response(body=COMPLETION, content_type="application/json")
        response = web.StreamResponse(headers=stream_headers)
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    args = parser.parse_args()
    web.run_app(create_app(args.chunks), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
