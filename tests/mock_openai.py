"""Realistic OpenAI Chat Completions answers for mock upstreams."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

CREATED = 1_763_700_000


def completion(text: str = "Hello there!", model: str = "upstream-model", finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-mock1",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }


def chunk(delta: dict[str, Any], finish: str | None = None, model: str = "upstream-model") -> dict[str, Any]:
    return {
        "id": "chatcmpl-mock1",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk() -> dict[str, Any]:
    return {
        "id": "chatcmpl-mock1",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "upstream-model",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }


def text_stream(pieces: list[str], usage: bool = True, done: bool = True) -> list[bytes]:
    """Role chunk, one chunk per piece, finish chunk, usage chunk, [DONE] — as api.openai.com sends."""
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in pieces]
    events.append(chunk({}, finish="stop"))
    if usage:
        events.append(usage_chunk())
    out = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events]
    if done:
        out.append(b"data: [DONE]\n\n")
    return out


def json_handler(payload: dict[str, Any] | None = None, status: int = 200, headers: dict[str, str] | None = None):
    async def handler(request: web.Request) -> web.Response:
        body = payload if payload is not None else completion()
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)

    return handler


def error_handler(status: int, message: str = "boom", code: str | None = None, headers: dict[str, str] | None = None):
    body = {"error": {"message": message, "type": "error", "param": None, "code": code}}
    return json_handler(body, status=status, headers=headers)


def stream_handler(events: list[bytes], delay: float = 0.0, then: str = "end", stall: float = 30.0):
    """Send `events` (optionally spaced by `delay`), then `end` cleanly, `reset` the connection or `stall`."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
            if delay:
                await asyncio.sleep(delay)
        if then == "reset":
            assert request.transport is not None
            request.transport.abort()
            return response
        if then == "stall":
            await asyncio.sleep(stall)
        await response.write_eof()
        return response

    return handler


def stall_handler(seconds: float = 30.0):
    """Accept the request and never answer (a timeout before headers)."""

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.Response(status=500)

    return handler
