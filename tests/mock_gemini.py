"""A mock Gemini generateContent upstream replaying realistic answers (CRLF framing, as Google sends)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

USAGE = {"promptTokenCount": 12, "candidatesTokenCount": 6, "thoughtsTokenCount": 4, "totalTokenCount": 22,
         "cachedContentTokenCount": 2}  # fmt: skip


@dataclass
class Chunk:
    parts: list[dict[str, Any]]
    finish: str | None = None


def chunk_body(chunk: Chunk, last: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": chunk.parts}, "index": 0}
    if chunk.finish:
        candidate["finishReason"] = chunk.finish
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-x", "responseId": "r1"}
    if last:
        body["usageMetadata"] = USAGE
    return body


def whole(chunks: list[Chunk]) -> dict[str, Any]:
    """The non-streamed answer: all parts in one candidate (texts of one kind joined)."""
    parts: list[dict[str, Any]] = []
    for chunk in chunks:
        for part in chunk.parts:
            if parts and "text" in part and "text" in parts[-1] and part.get("thought") == parts[-1].get("thought"):
                parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
            else:
                parts.append(part)
    return chunk_body(Chunk(parts, chunks[-1].finish), last=True)


def gemini_handler(chunks: list[Chunk], crlf: bool = True):
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.endswith(":generateContent"):
            return web.json_response(whole(chunks))
        assert request.path.endswith(":streamGenerateContent") and request.query.get("alt") == "sse"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        end = b"\r\n" if crlf else b"\n"
        for i, chunk in enumerate(chunks):
            await response.write(b"data: " + orjson.dumps(chunk_body(chunk, i == len(chunks) - 1)) + end + end)
        return response

    return handler


def gemini_error(status: int, state: str, message: str):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": status, "message": message, "status": state}}, status=status)

    return handler
