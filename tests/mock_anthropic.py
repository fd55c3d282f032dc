"""A mock Anthropic Messages upstream replaying realistic answers, streamed or as one JSON message."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

USAGE_START = {"input_tokens": 25, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 5, "output_tokens": 1}


@dataclass
class Block:
    """One content block: its start, then its delta pieces."""

    kind: str  # text, thinking, tool_use
    pieces: list[str]
    tool_id: str = ""
    name: str = ""
    signature: str = ""


@dataclass
class Answer:
    blocks: list[Block]
    stop_reason: str = "end_turn"
    output_tokens: int = 17
    fail_after: int | None = None  # send an overloaded `event: error` after this many deltas
    extra: dict[str, Any] = field(default_factory=dict)

    def message(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for block in self.blocks:
            joined = "".join(block.pieces)
            if block.kind == "text":
                content.append({"type": "text", "text": joined})
            elif block.kind == "thinking":
                content.append({"type": "thinking", "thinking": joined, "signature": block.signature})
            else:
                content.append(
                    {"type": "tool_use", "id": block.tool_id, "name": block.name, "input": orjson.loads(joined or "{}")}
                )
        usage = {**USAGE_START, "output_tokens": self.output_tokens}
        return {"id": "msg_01mock", "type": "message", "role": "assistant", "model": "claude-x", "content": content,
                "stop_reason": self.stop_reason, "stop_sequence": None, "usage": usage}  # fmt: skip

    def events(self) -> list[bytes]:
        start = {"id": "msg_01mock", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
                 "stop_reason": None, "stop_sequence": None, "usage": USAGE_START}  # fmt: skip
        out = [event("message_start", {"type": "message_start", "message": start}), event("ping", {"type": "ping"})]
        deltas = 0
        for index, block in enumerate(self.blocks):
            if block.kind == "tool_use":
                opening = {"type": "tool_use", "id": block.tool_id, "name": block.name, "input": {}}
            elif block.kind == "thinking":
                opening = {"type": "thinking", "thinking": "", "signature": ""}
            else:
                opening = {"type": "text", "text": ""}
            out.append(event("content_block_start", {"type": "content_block_start", "index": index,
                                                      "content_block": opening}))  # fmt: skip
            for piece in block.pieces:
                if self.fail_after is not None and deltas == self.fail_after:
                    out.append(event("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                          "message": "Overloaded"}}))  # fmt: skip
                    return out
                delta = {"text": {"type": "text_delta", "text": piece},
                         "thinking": {"type": "thinking_delta", "thinking": piece},
                         "tool_use": {"type": "input_json_delta", "partial_json": piece}}[block.kind]  # fmt: skip
                out.append(
                    event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                )
                deltas += 1
            if block.signature:
                signature = {"type": "signature_delta", "signature": block.signature}
                out.append(event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                         "delta": signature}))  # fmt: skip
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        out.append(event("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                                           "usage": {"output_tokens": self.output_tokens}}))  # fmt: skip
        out.append(event("message_stop", {"type": "message_stop"}))
        return out


def event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\n".encode() + b"data: " + orjson.dumps(payload) + b"\n\n"


def anthropic_handler(answer: Answer):
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(answer.message())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for raw in answer.events():
            if raw.startswith(b"event: error"):
                await asyncio.sleep(0.05)  # a failure after the client has had content, not in the same read
            await response.write(raw)
        return response

    return handler


def anthropic_error(status: int, kind: str, message: str):
    async def handler(request: web.Request) -> web.Response:
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return web.json_response(body, status=status)

    return handler
