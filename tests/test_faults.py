"""Fault injection: every way an upstream can misbehave, and what each kind of client sees.

The faulty upstream is a raw TCP server (tests/mock_faults.py) whose script decides every byte and
every pause, so each fault happens at the same point every time. Timeouts are short (FAST). Checked:

(a) a fault before the commit point, with a healthy spare connection: a normal, complete answer from
    the spare, and `x-gateway-attempts` naming the fault's reason;
(b) the same fault with no spare: 502 / 504 (429 when the upstream said "rate limited") in the
    client's own error format, never a 500, never a hang;
(c) a stream fault after the first content event: the stream ends with the client format's error
    event, with no clean terminal event, no duplicated content and no fallback.

Clients: Chat Completions, Responses, Anthropic Messages and Gemini, each as raw HTTP (every payload
validated explicitly) and through its official SDK (no retries). Every test also checks that no
upstream key reaches a client and that the gateway still serves a normal request afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from anthropic.types import Message, RawMessageStreamEvent
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from gateway.errors import Reason

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_anthropic import Answer, Block
from .mock_anthropic import event as anthropic_event
from .mock_faults import CLOSE, LAST_CHUNK, RESET, STALL, FaultServer, RawRequest, Step, chunked, drip, head, whole
from .mock_gemini import Chunk, chunk_body
from .mock_openai import chunk, completion, stream_handler, text_stream, usage_chunk
from .responses_checks import answer_of, check_stream, parse_sse, validate_response

KEY = "sk-upstream-secret-primary"  # what conftest.connection() gives the faulty connection
FAST = {"connect": 0.5, "first_byte": 0.5, "idle": 0.5, "total": 3}
BOUND = 5.0  # no client waits longer than this for anything
SPARE_TEXT = "from secondary"
# Between what a fault server sends and the fault itself: the gateway reads what came first on its own. (One
# event loop runs everything, and a read that is ready is handled before a timer that expires.)
PAUSE = 0.02
ANTHROPIC_EVENT = TypeAdapter(RawMessageStreamEvent)
# The gateway speaks plain HTTP: an empty TLS context spares each SDK client loading the CA store (~20 ms).
NO_CA = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# --- the clients: one driver per format --------------------------------------------------------


@dataclass
class Seen:
    """What a client got: the status, the gateway's headers, and the answer or error it could read."""

    status: int
    attempts: str
    connection: str | None
    text: str = ""
    error: dict[str, Any] | None = None  # the error body, or the stream's error event
    complete: bool = False  # a clean end: the finish / terminal event


def openai_sdk(url: str) -> openai.AsyncOpenAI:
    http = openai.DefaultAsyncHttpxClient(verify=NO_CA)
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=BOUND, http_client=http)


class ChatClient:
    name = "chat"

    def request(self, model: str, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
        return "/v1/chat/completions", {"Authorization": f"Bearer {CLIENT_KEY}"}, body

    def answer(self, body: dict[str, Any], seen: Seen) -> None:
        choice = ChatCompletion.model_validate(body).choices[0]
        seen.text, seen.complete = choice.message.content or "", choice.finish_reason == "stop"

    def events(self, raw: bytes, seen: Seen) -> None:
        blocks = split_events(raw)
        finished = done = False
        for position, block in enumerate(blocks):
            assert block.startswith(b"data: ") and b"\n" not in block, block
            assert not done, "nothing after [DONE]"
            if block == b"data: [DONE]":
                done = True
                continue
            payload = orjson.loads(block[6:])
            if "error" in payload:
                assert position == len(blocks) - 1, "the error event is the last one"
                seen.error = payload["error"]
                assert set(seen.error) == {"message", "type", "param", "code"}, seen.error
                continue
            parsed = ChatCompletionChunk.model_validate(payload)
            for choice in parsed.choices:
                seen.text += choice.delta.content or ""
                finished = finished or choice.finish_reason is not None
        seen.complete = finished and done

    def error(self, body: dict[str, Any], status: int) -> dict[str, Any]:
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == {502: "api_error", 504: "timeout", 429: "rate_limit_error"}[status]
        return error

    async def sdk(self, url: str, model: str, stream: bool, text: list[str]) -> None:
        async with openai_sdk(url) as sdk:
            messages: Any = [{"role": "user", "content": "Hi"}]
            if not stream:
                answer = await sdk.chat.completions.create(model=model, messages=messages)
                text.append(answer.choices[0].message.content or "")
                return
            async for piece in await sdk.chat.completions.create(model=model, messages=messages, stream=True):
                text += [c.delta.content or "" for c in piece.choices]


class ResponsesClient(ChatClient):
    name = "responses"

    def request(self, model: str, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
        return (
            "/v1/responses",
            {"Authorization": f"Bearer {CLIENT_KEY}"},
            {"model": model, "input": "Hi", "stream": stream},
        )

    def answer(self, body: dict[str, Any], seen: Seen) -> None:
        validate_response(body)
        answer = answer_of(body)
        seen.text, seen.complete = answer["text"], answer["status"] == "completed"

    def events(self, raw: bytes, seen: Seen) -> None:
        events = parse_sse(raw.decode())  # the framing, and the final [DONE]
        final = check_stream(events)  # the order, exactly one terminal event, each event's schema
        seen.text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        seen.complete = final["status"] == "completed"
        if final["status"] == "failed":
            assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
            seen.error = events[-2]["error"]
            assert final["error"]["message"] == seen.error["message"]

    async def sdk(self, url: str, model: str, stream: bool, text: list[str]) -> None:
        async with openai_sdk(url) as sdk:
            if not stream:
                text.append((await sdk.responses.create(model=model, input="Hi")).output_text)
                return
            async for event in await sdk.responses.create(model=model, input="Hi", stream=True):
                text += [event.delta] if event.type == "response.output_text.delta" else []


class AnthropicClient:
    name = "anthropic"

    def request(self, model: str, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
        body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
        return "/v1/messages", {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}, body

    def answer(self, body: dict[str, Any], seen: Seen) -> None:
        message = Message.model_validate(body)
        seen.text = "".join(b.text for b in message.content if b.type == "text")
        seen.complete = message.stop_reason == "end_turn"

    def events(self, raw: bytes, seen: Seen) -> None:
        blocks = split_events(raw)
        for position, block in enumerate(blocks):
            name, data = block.split(b"\n")
            assert name.startswith(b"event: ") and data.startswith(b"data: "), block
            payload = orjson.loads(data[6:])
            assert payload["type"] == name[7:].decode(), "every event has its event: line"
            assert not seen.complete, "nothing after message_stop"
            if payload["type"] == "error":
                assert position == len(blocks) - 1, "the error event is the last one"
                seen.error = payload["error"]
                assert seen.error["type"] in ("api_error", "overloaded_error") and seen.error["message"]
            elif payload["type"] != "ping":
                parsed = ANTHROPIC_EVENT.validate_python(payload)
                if parsed.type == "content_block_delta" and parsed.delta.type == "text_delta":
                    seen.text += parsed.delta.text
                seen.complete = parsed.type == "message_stop"

    def error(self, body: dict[str, Any], status: int) -> dict[str, Any]:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        assert body["error"]["type"] == {502: "api_error", 504: "timeout_error", 429: "rate_limit_error"}[status]
        return body["error"]

    async def sdk(self, url: str, model: str, stream: bool, text: list[str]) -> None:
        http = anthropic.DefaultAsyncHttpxClient(verify=NO_CA)
        async with anthropic.AsyncAnthropic(
            base_url=url, api_key=CLIENT_KEY, max_retries=0, timeout=BOUND, http_client=http
        ) as sdk:
            messages: Any = [{"role": "user", "content": "Hi"}]
            if not stream:
                message = await sdk.messages.create(model=model, max_tokens=64, messages=messages)
                text += [b.text for b in message.content if b.type == "text"]
                return
            async for event in await sdk.messages.create(model=model, max_tokens=64, messages=messages, stream=True):
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    text.append(event.delta.text)


class GeminiClient:
    name = "gemini"

    def request(self, model: str, stream: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
        return f"/v1beta/models/{model}:{method}", {"x-goog-api-key": CLIENT_KEY}, body

    def answer(self, body: dict[str, Any], seen: Seen) -> None:
        answer = genai_types.GenerateContentResponse.model_validate(body)  # extra fields forbidden
        seen.text = answer.text or ""
        seen.complete = answer.candidates[0].finish_reason == genai_types.FinishReason.STOP

    def events(self, raw: bytes, seen: Seen) -> None:
        blocks = split_events(raw)
        for position, block in enumerate(blocks):
            assert block.startswith(b"data: ") and b"\n" not in block, block
            assert not seen.complete, "nothing after the finishing chunk"
            payload = orjson.loads(block[6:])
            if "error" in payload:
                assert position == len(blocks) - 1, "the error event is the last one"
                seen.error = payload["error"]
                assert seen.error["code"] == 503 and seen.error["status"] == "UNAVAILABLE"
                continue
            answer = genai_types.GenerateContentResponse.model_validate(payload)
            seen.text += "".join(p.text or "" for p in answer.candidates[0].content.parts or [])
            seen.complete = answer.candidates[0].finish_reason == genai_types.FinishReason.STOP

    def error(self, body: dict[str, Any], status: int) -> dict[str, Any]:
        error = body["error"]
        assert set(error) == {"code", "message", "status"} and error["code"] == status
        assert error["status"] == {502: "INTERNAL", 504: "DEADLINE_EXCEEDED", 429: "RESOURCE_EXHAUSTED"}[status]
        return error

    async def sdk(self, url: str, model: str, stream: bool, text: list[str]) -> None:
        options = genai_types.HttpOptions(
            base_url=url + "/",
            api_version="v1beta",
            timeout=int(BOUND * 1000),
            retry_options=genai_types.HttpRetryOptions(attempts=1),
            client_args={"verify": NO_CA},
            async_client_args={"ssl": NO_CA},
        )
        client = genai.Client(api_key=CLIENT_KEY, http_options=options)
        try:
            if not stream:
                text.append((await client.aio.models.generate_content(model=model, contents="Hi")).text or "")
                return
            async for piece in await client.aio.models.generate_content_stream(model=model, contents="Hi"):
                text.append(piece.text or "")
        finally:
            await client.aio.aclose()


Client = ChatClient | AnthropicClient | GeminiClient
CLIENTS: dict[str, Client] = {c.name: c for c in (ChatClient(), ResponsesClient(), AnthropicClient(), GeminiClient())}


def split_events(raw: bytes) -> list[bytes]:
    """A gateway stream's events: LF framing only, every event ends with a blank line."""
    assert raw.endswith(b"\n\n") and b"\r" not in raw, raw[-200:]
    return [block for block in raw[:-2].split(b"\n\n") if not block.startswith(b":")]


async def call(url: str, client: Client, model: str, stream: bool) -> Seen:
    """One request as raw HTTP; whatever comes back is validated in the client's own format."""
    path, headers, body = client.request(model, stream)
    async with (
        asyncio.timeout(BOUND),
        aiohttp.ClientSession() as session,
        session.post(url + path, json=body, headers=headers) as response,
    ):
        raw = await response.read()
    assert b"sk-upstream-secret" not in raw, "an upstream key reached a client"
    assert "sk-upstream-secret" not in str(response.headers)
    assert response.status != 500, raw
    seen = Seen(response.status, response.headers["x-gateway-attempts"], response.headers.get("x-gateway-connection"))
    if response.status != 200:
        assert response.content_type == "application/json"
        seen.error = client.error(orjson.loads(raw), response.status)
    elif stream:
        assert response.content_type == "text/event-stream", f"a stream request answered with {response.content_type}"
        client.events(raw, seen)
    else:
        assert response.content_type == "application/json"
        client.answer(orjson.loads(raw), seen)
    return seen


async def sdk_call(url: str, client: Client, model: str, stream: bool) -> tuple[str, BaseException | None]:
    """The same request through the client's official SDK: the text it assembled, and what it raised."""
    text: list[str] = []
    try:
        async with asyncio.timeout(BOUND):
            await client.sdk(url, model, stream, text)
    except (openai.APIError, anthropic.APIError, genai_errors.APIError) as exc:
        assert "sk-upstream-secret" not in str(exc)
        return "".join(text), exc
    return "".join(text), None


def sdk_status(exc: BaseException | None) -> int | None:
    if isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        return exc.status_code
    return exc.code if isinstance(exc, genai_errors.APIError) else None


# --- the gateway under test ----------------------------------------------------------------------


def spare_handler(pieces: Sequence[str] = ("from ", "secondary")):
    """A healthy Chat upstream: the whole answer, streamed when asked."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if (await request.json()).get("stream"):
            return await stream_handler(text_stream(list(pieces)))(request)
        return web.json_response(completion("".join(pieces)))

    return handler


@pytest.fixture
async def faults():
    servers: list[FaultServer] = []

    async def _start(script: Callable[[RawRequest], Sequence[Step]]) -> FaultServer:
        servers.append(await FaultServer(script).start())
        return servers[-1]

    yield _start
    for server in servers:
        await server.close()


@pytest.fixture
def closed_port():
    """A loopback URL whose port is bound but never listens, held for the test: connecting is refused, and
    nothing else can take the port meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.fixture
async def gateway(start_upstream, start_gateway):
    """A gateway whose `primary` connection is given: model `with-spare` falls back to a healthy
    `secondary`, model `alone` has only the primary, model `healthy` only the secondary."""

    async def _start(primary_url: str, **primary: Any):
        spare = await start_upstream(spare_handler())
        gw = await start_gateway(
            gateway_config(
                connection("primary", primary_url, timeout=FAST, **primary),
                connection("secondary", spare, priority=200),
                routes={"with-spare": ["primary", "secondary"], "alone": ["primary"], "healthy": ["secondary"]},
                reliability={"breaker": {"failures": 0}},  # every request meets the fault, none is skipped
            )
        )
        return gw, spare

    return _start


async def still_healthy(url: str) -> None:
    """After the faults the process serves as before."""
    async with asyncio.timeout(BOUND), aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as response:
        assert response.status == 200
    answers = await asyncio.gather(*(call(url, client, "healthy", stream=True) for client in CLIENTS.values()))
    for client, seen in zip(CLIENTS.values(), answers, strict=True):
        assert (seen.status, seen.text, seen.complete) == (200, SPARE_TEXT, True), client.name


# --- (a) and (b): faults before the commit point ---------------------------------------------------

ROLE = sse(chunk({"role": "assistant", "content": ""}))
HEL = sse(chunk({"content": "Hel"}))
ANSWER = orjson.dumps(completion("from primary"))
SSE_HEAD = head(200, "text/event-stream")
JSON_HEAD = head(200, "application/json", len(ANSWER))
GARBAGE = b"\x00\xff\x16\x03\x01SSH-2.0-OpenSSH_9.6 " + KEY.encode() + b"\r\n\r\n"


@dataclass
class Fault:
    reason: str  # the attempt's reason in x-gateway-attempts
    status: int  # what a client gets with no spare connection
    json: list[Step] | None  # the script for a non-streamed request (None: not a fault for it)
    stream: list[Step] | None  # ... and for a streamed one
    closed_port: bool = False


def both(reason: str, status: int, steps: list[Step]) -> Fault:
    return Fault(reason, status, steps, steps)


BEFORE_COMMIT: dict[str, Fault] = {
    "closed_port": Fault("connect_error", 502, [], [], closed_port=True),
    "reset_before_headers": both("connect_error", 502, [RESET]),
    "close_before_headers": both("connect_error", 502, [CLOSE]),
    "garbage_then_close": both("bad_response", 502, [GARBAGE, CLOSE]),
    "garbage_then_reset": both("bad_response", 502, [GARBAGE, PAUSE, RESET]),
    "malformed_header": both("bad_response", 502, [b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n{}", CLOSE]),
    "partial_status_line_then_stall": both("timeout", 504, [b"HTTP/1.1 20", STALL]),
    "stall_before_headers": both("timeout", 504, [STALL]),
    "stall_after_headers": Fault("timeout", 504, [JSON_HEAD, STALL], [SSE_HEAD, STALL]),
    "stall_mid_body": Fault("timeout", 504, [JSON_HEAD + ANSWER[:40], STALL], [SSE_HEAD + chunked(ROLE), STALL]),
    "drip_slower_than_idle": Fault(
        "timeout", 504, [head(200, "application/json"), *drip(ANSWER, 16, 0.7)], [SSE_HEAD, *drip(ROLE + HEL, 16, 0.7)]
    ),
    "reset_after_headers": Fault("bad_response", 502, [JSON_HEAD, PAUSE, RESET], [SSE_HEAD, PAUSE, RESET]),
    "reset_mid_body": Fault(
        "bad_response", 502, [JSON_HEAD + ANSWER[:40], PAUSE, RESET], [SSE_HEAD + chunked(ROLE), PAUSE, RESET]
    ),
    "close_mid_body": Fault(
        "bad_response", 502, [JSON_HEAD + ANSWER[:40], PAUSE, CLOSE], [SSE_HEAD + chunked(ROLE), PAUSE, CLOSE]
    ),
    "sse_cut_mid_event": Fault("bad_response", 502, None, [SSE_HEAD + chunked(ROLE + HEL[:30]) + LAST_CHUNK]),
    "sse_ends_without_content": Fault("bad_response", 502, None, [SSE_HEAD + chunked(ROLE) + LAST_CHUNK]),
    "sse_invalid_json": Fault(
        "bad_response", 502, None, [SSE_HEAD + chunked(ROLE + b'data: {"choices": [' + KEY.encode() + b"\n\n")]
    ),
    "sse_error_event": Fault(
        "server_error",
        502,
        None,
        [SSE_HEAD + chunked(ROLE + sse({"error": {"message": "overloaded", "type": "server_error", "code": 503}}))],
    ),
    "invalid_json_200": both("bad_response", 502, whole(b'{"choices": [{"message": ' + KEY.encode())),
    "error_object_200": both(
        "server_error", 502, whole(orjson.dumps({"error": {"message": "upstream exploded", "code": 502}}))
    ),
    "error_object_200_rate_limited": both(
        "rate_limited",
        429,
        whole(orjson.dumps({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rl"}})),
    ),
    "error_object_200_echoing_the_key": Fault(
        "server_error",
        502,
        whole(orjson.dumps({"error": {"message": f"invalid key {KEY}", "code": 502}})),
        [SSE_HEAD + chunked(sse({"error": {"message": f"invalid key {KEY}", "code": 502}})) + LAST_CHUNK],
    ),
    "html_instead_of_json": both("bad_response", 502, whole(b"<html><body>502 Bad Gateway</body></html>", "text/html")),
    "sse_labelled_text_plain": Fault("bad_response", 502, None, whole(b"".join(text_stream(["x"])), "text/plain")),
    "gzip_header_on_plain_body": both(
        "bad_response", 502, [head(200, "application/json", len(ANSWER), Content_Encoding="gzip") + ANSWER, CLOSE]
    ),
    "empty_200": Fault("bad_response", 502, whole(b""), whole(b"", "text/event-stream")),
}
BUGS_BEFORE_COMMIT: dict[str, str] = {}  # fault -> why it is expected to fail (none now)


def before_commit_params() -> list[Any]:
    params = []
    for name in BEFORE_COMMIT:
        bug = BUGS_BEFORE_COMMIT.get(name)
        params.append(pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=bug) if bug else ()))
    return params


async def check_falls_back(url: str, client: Client, stream: bool, reason: str) -> None:
    (seen, (text, exc)) = await asyncio.gather(
        call(url, client, "with-spare", stream), sdk_call(url, client, "with-spare", stream)
    )
    where = f"{client.name} stream={stream}"
    assert seen.status == 200, (where, seen)
    assert seen.attempts == f"primary:{reason},secondary:ok", where
    assert seen.connection == "secondary" and (seen.text, seen.complete) == (SPARE_TEXT, True), (where, seen)
    assert (text, exc) == (SPARE_TEXT, None), where


async def check_fails(url: str, client: Client, stream: bool, fault: Fault) -> None:
    (seen, (text, exc)) = await asyncio.gather(
        call(url, client, "alone", stream), sdk_call(url, client, "alone", stream)
    )
    where = f"{client.name} stream={stream}"
    assert seen.status == fault.status and seen.attempts == f"primary:{fault.reason}", (where, seen)
    assert seen.error is not None and f"primary: {fault.reason}" in seen.error["message"], (where, seen)
    assert text == "" and sdk_status(exc) == fault.status, (where, exc)


@pytest.mark.parametrize("name", before_commit_params())
async def test_fault_before_commit(faults, gateway, closed_port, name):
    fault = BEFORE_COMMIT[name]
    Reason(fault.reason)  # the vocabulary of gateway/errors.py
    if fault.closed_port:
        url = closed_port
    else:
        server = await faults(lambda request: (fault.stream if request.json.get("stream") else fault.json) or [])
        url = server.url
    gw, _ = await gateway(url)
    modes = [stream for stream, steps in ((False, fault.json), (True, fault.stream)) if steps is not None]
    checks = []
    for client in CLIENTS.values():
        for stream in modes:
            checks += [
                check_falls_back(gw.url, client, stream, fault.reason),
                check_fails(gw.url, client, stream, fault),
            ]
    await asyncio.gather(*checks)  # concurrently: the stalls overlap
    await still_healthy(gw.url)


async def test_json_answer_to_a_stream_request_still_reaches_the_client_as_a_stream(faults, gateway):
    """An upstream that ignores `stream: true`: the client gets a stream, either of this answer or of
    the spare's after a fallback, never a JSON body its SDK reads as an empty stream."""
    server = await faults(lambda request: whole(ANSWER))
    gw, _ = await gateway(server.url)
    for client in CLIENTS.values():
        (seen, (text, exc)) = await asyncio.gather(
            call(gw.url, client, "with-spare", True), sdk_call(gw.url, client, "with-spare", True)
        )
        assert seen.complete and seen.text in ("from primary", SPARE_TEXT), (client.name, seen)
        assert seen.attempts in ("primary:ok", "primary:bad_response,secondary:ok"), client.name
        assert (text, exc) == (seen.text, None), client.name
    await still_healthy(gw.url)


# --- (c): stream faults after the first content event ----------------------------------------------


@dataclass
class Kind:
    """A primary connection's wire format, as the events of one answer, "Hel" + "lo"."""

    extra: dict[str, Any]  # the connection's keys
    prefix: bytes  # every event up to the first content event ("Hel"), which commits the stream
    rest: list[bytes]  # the events that would complete the answer ("lo", the finish, ...)
    error: bytes  # the provider's own mid-stream error, echoing the key
    error_reason: str  # the reason the gateway gives that error


def gemini_sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"  # Google frames with CRLF


ANTHROPIC_EVENTS = Answer([Block("text", ["Hel", "lo"])]).events()  # start, ping, block start, "Hel", ...
KINDS: dict[str, Kind] = {
    "chat": Kind(
        {},
        ROLE + HEL,
        [sse(chunk({"content": "lo"})), sse(chunk({}, finish="stop")), sse(usage_chunk()), b"data: [DONE]\n\n"],
        sse({"error": {"message": f"overloaded {KEY}", "type": "server_error", "code": 503}}),
        "server_error",
    ),
    "anthropic": Kind(
        {"provider": "anthropic"},
        b"".join(ANTHROPIC_EVENTS[:4]),
        ANTHROPIC_EVENTS[4:],
        anthropic_event("error", {"type": "error", "error": {"type": "overloaded_error", "message": f"Over {KEY}"}}),
        "server_error",
    ),
    "gemini": Kind(
        {"provider": "gemini"},
        gemini_sse(chunk_body(Chunk([{"text": "Hel"}]), last=False)),
        [gemini_sse(chunk_body(Chunk([{"text": "lo"}], finish="STOP"), last=True))],
        gemini_sse({"error": {"code": 503, "message": f"overloaded {KEY}", "status": "UNAVAILABLE"}}),
        "server_error",
    ),
}
# (client, primary's format): every client on a Chat upstream (translated), and on its own format (passed through)
PAIRS = [
    ("chat", "chat"),
    ("responses", "chat"),
    ("anthropic", "chat"),
    ("gemini", "chat"),
    ("responses", "responses"),
    ("anthropic", "anthropic"),
    ("gemini", "gemini"),
]


@pytest.fixture
async def kinds(start_upstream, start_gateway):
    """KINDS, plus `responses`: a native Responses stream (as the gateway itself streams a Responses
    answer: spec-checked), made once and kept in KINDS."""
    if "responses" not in KINDS:
        chat = await start_upstream(spare_handler(("Hel", "lo")))
        helper = await start_gateway(gateway_config(connection("chat", chat)))
        path, headers, body = CLIENTS["responses"].request("m", True)
        async with (
            aiohttp.ClientSession() as session,
            session.post(helper.url + path, json=body, headers=headers) as response,
        ):
            events = parse_sse(await response.text())
        assert check_stream(events)["status"] == "completed"
        raw = [f"event: {e['type']}\n".encode() + sse(e) for e in events]
        first = next(i for i, e in enumerate(events) if e["type"] == "response.output_text.delta")
        failure = {"type": "server_error", "code": "server_error", "message": f"boom {KEY}", "param": None}
        failed = {**events[0]["response"], "status": "failed", "error": {"code": "server_error", "message": "boom"}}
        error = [
            {"type": "error", "sequence_number": first + 1, "error": failure},
            {"type": "response.failed", "sequence_number": first + 2, "response": failed},
        ]
        KINDS["responses"] = Kind(
            {"responses": "native"},
            b"".join(raw[: first + 1]),
            raw[first + 1 :],
            b"".join(f"event: {e['type']}\n".encode() + sse(e) for e in error),
            "server_error",
        )
    return KINDS


def cut(event: bytes) -> bytes:
    return event[: len(event) // 2]


AFTER_COMMIT: dict[str, tuple[Callable[[Kind], list[Step]], str | None]] = {
    "reset": (lambda kind: [PAUSE, RESET], "bad_response"),
    "close_mid_stream": (lambda kind: [PAUSE, CLOSE], "bad_response"),
    "end_without_terminal_event": (lambda kind: [PAUSE, LAST_CHUNK, CLOSE], "bad_response"),
    "cut_mid_event": (lambda kind: [PAUSE, chunked(cut(kind.rest[0])) + LAST_CHUNK], "bad_response"),
    "invalid_json_event": (
        lambda kind: [PAUSE, chunked(cut(kind.rest[0]) + KEY.encode() + b"\n\n") + LAST_CHUNK],
        "bad_response",
    ),
    "error_event": (lambda kind: [PAUSE, chunked(kind.error) + LAST_CHUNK], None),  # None: the kind's error_reason
    "stall_beyond_idle": (lambda kind: [STALL], "timeout"),
    "drip_slower_than_idle": (lambda kind: drip(b"".join(kind.rest), 8, 0.7), "timeout"),
}


BUGS_AFTER_COMMIT: dict[tuple[str, str, str], str] = {}  # (client, upstream, fault) -> why (none now)


def after_commit_params() -> list[Any]:
    """Every fault on every pair; a slow drip is a stall to the same watchdog, so once is enough."""
    params = []
    for client_name, kind_name in PAIRS:
        for fault_name in AFTER_COMMIT:
            if fault_name == "drip_slower_than_idle" and (client_name, kind_name) != ("chat", "chat"):
                continue
            bug = BUGS_AFTER_COMMIT.get((client_name, kind_name, fault_name))
            marks = pytest.mark.xfail(strict=True, reason=bug) if bug else ()
            params.append(pytest.param(client_name, kind_name, fault_name, marks=marks))
    return params


@pytest.mark.parametrize(("client_name", "kind_name", "fault_name"), after_commit_params())
async def test_stream_fault_after_commit(faults, gateway, kinds, client_name, kind_name, fault_name):
    kind, client = kinds[kind_name], CLIENTS[client_name]
    steps, reason = AFTER_COMMIT[fault_name]
    reason = Reason(reason or kind.error_reason)
    server = await faults(lambda request: [SSE_HEAD + chunked(kind.prefix), *steps(kind)])
    gw, spare = await gateway(server.url, **kind.extra)
    (seen, (text, exc)) = await asyncio.gather(
        call(gw.url, client, "with-spare", True), sdk_call(gw.url, client, "with-spare", True)
    )
    assert (seen.status, seen.attempts, seen.connection) == (200, "primary:ok", "primary")  # sent at the commit
    assert seen.text == "Hel" and not seen.complete, seen  # the content once, and no clean end
    assert seen.error is not None, "the stream ends with an error event"
    # the gateway's own error event, even where the upstream's was already in the client's format
    assert f"connection primary failed mid-stream: {reason}" in seen.error["message"], seen.error
    if client_name in ("chat", "responses"):
        assert seen.error["code"] == reason
    assert text == "Hel" and exc is not None, (text, exc)  # the SDK raises, it does not end quietly
    assert seen.error["message"] in str(exc), exc
    assert spare.requests == [] and len(server.requests) == 2, "no fallback after the commit"
    await still_healthy(gw.url)


@pytest.mark.parametrize(("client_name", "kind_name"), PAIRS)
async def test_connection_lost_after_the_complete_answer(faults, gateway, kinds, client_name, kind_name):
    """The upstream sent every event of its answer, then the connection broke (no end of the chunked
    body): the client's answer is complete, and nothing may follow its terminal event."""
    kind, client = kinds[kind_name], CLIENTS[client_name]
    server = await faults(lambda request: [SSE_HEAD + chunked(kind.prefix + b"".join(kind.rest)), PAUSE, RESET])
    gw, _ = await gateway(server.url, **kind.extra)
    (seen, (text, exc)) = await asyncio.gather(
        call(gw.url, client, "with-spare", True), sdk_call(gw.url, client, "with-spare", True)
    )
    assert (seen.status, seen.attempts, seen.text, seen.complete, seen.error) == (
        200,
        "primary:ok",
        "Hello",
        True,
        None,
    )
    assert (text, exc) == ("Hello", None)
    await still_healthy(gw.url)


async def test_streams_dripping_faster_than_idle_succeed(faults, start_upstream, start_gateway, kinds):
    """The rest of each answer trickles in 8 pieces 0.075 s apart: longer than `idle` in all, but never a
    gap as long, so every client gets the whole answer, on every upstream format."""
    primaries, routes = [], {}
    for name, kind in kinds.items():
        rest = b"".join(kind.rest)
        steps = [SSE_HEAD + chunked(kind.prefix), *drip(rest, -(-len(rest) // 8), 0.075), LAST_CHUNK]
        server = await faults(lambda request, steps=steps: steps)
        primaries.append(connection(name, server.url, timeout=FAST, **kind.extra))
        routes[name] = [name]
    gw = await start_gateway(gateway_config(*primaries, routes=routes))
    pairs = [(CLIENTS[c], k) for c, k in PAIRS]
    results = await asyncio.gather(
        *(call(gw.url, client, kind_name, True) for client, kind_name in pairs),
        *(sdk_call(gw.url, client, kind_name, True) for client, kind_name in pairs),
    )
    for (client, kind_name), seen in zip(pairs, results, strict=False):
        assert (seen.status, seen.attempts, seen.text, seen.complete, seen.error) == (
            200,
            f"{kind_name}:ok",
            "Hello",
            True,
            None,
        ), (client.name, kind_name)
    assert results[len(pairs) :] == [("Hello", None)] * len(pairs)


async def test_json_body_dripping_faster_than_idle_succeeds(faults, gateway):
    """A non-streamed body trickling in (as providers that keep a connection alive with whitespace do):
    no gap reaches `idle`, so it is not a stall."""
    server = await faults(
        lambda request: [head(200, "application/json"), *drip(b" " * 24 + ANSWER, 24, 0.1), b"0\r\n\r\n"]
    )
    gw, _ = await gateway(server.url)
    seen = await call(gw.url, CLIENTS["chat"], "with-spare", False)
    assert (seen.status, seen.attempts, seen.text) == (200, "primary:ok", "from primary")
    await still_healthy(gw.url)
