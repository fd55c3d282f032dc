"""Property-based tests (hypothesis): the SSE parser under any framing, and every inbound endpoint under
any body: never a 5xx or a traceback; an invalid body gets a 4xx in that API's own error format; a valid
one is served.

One gateway (in a background thread, with its own event loop) serves the whole module, in front of one
permissive mock upstream speaking all three formats: Chat Completions (`chat`), Anthropic Messages
(`claude`) and Gemini (`gem`). The requested model picks the connection (`to-chat`, `to-claude`,
`to-gem`; any other name goes to `chat`), so every client format is fuzzed both on its byte fast path
and through every translation. Examples are derandomized and no database is kept: the suite is
deterministic.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import start
from gateway.config.sections import parse_config
from gateway.sse import SSEEvent, SSEParser, encode_event

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


# --- the SSE parser ---------------------------------------------------------------------------------

BOM = b"\xef\xbb\xbf"
ENDINGS = (b"\n", b"\r\n", b"\r")
# Field values: any bytes but line breaks (a BOM inside the stream is data, not stripped).
values = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")) | st.sampled_from(
    [b"", b" ", b"  x", b"[DONE]", b'{"a": 1}', b"a: b", BOM, BOM + b"x", b":", b"data: y"]
)
names = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=8)
# One line of a block: ("data", value, space after the colon), ("event", name), ("comment", text),
# ("ignored", line): id, retry, unknown fields (none of which starts with "data" or "event").
lines = st.one_of(
    st.tuples(st.just("data"), values, st.booleans()),
    st.tuples(st.just("event"), names),
    st.tuples(st.just("comment"), values),
    st.tuples(st.just("ignored"), st.sampled_from([b"id: 7", b"id", b"retry: 100", b"foo: bar", b"x", b"dat: a"])),
)
blocks = st.lists(st.lists(lines, max_size=4), min_size=1, max_size=5)


def encode_line(line: tuple) -> bytes:
    kind = line[0]
    if kind == "data":
        _, value, space = line
        # Without the space a value that itself starts with one would lose it: keep the space then.
        return b"data: " + value if space or value.startswith(b" ") else b"data:" + value
    if kind == "event":
        return b"event: " + line[1].encode()
    if kind == "comment":
        return b":" + line[1]
    return line[1]


def expected_events(blocks_: list[list[tuple]]) -> list[SSEEvent]:
    """What the SSE spec dispatches: comments at once; data lines joined by the next blank line (or the
    end of the stream), with the last `event:` name of their block; a block without data is dropped."""
    out: list[SSEEvent] = []
    for block in blocks_:
        data: list[bytes] = []
        name: str | None = None
        for line in block:
            if line[0] == "comment":
                out.append(SSEEvent(line[1].strip(), comment=True))
            elif line[0] == "data":
                data.append(line[1])
            elif line[0] == "event":
                name = line[1]
        if data:
            out.append(SSEEvent(b"\n".join(data), name))
    return out


@st.composite
def framed_streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """A stream of blocks with a line ending drawn per line (LF, CRLF, CR mixed), a BOM or not, and
    the last block's blank line (or even its last line break) perhaps missing."""
    drawn = draw(blocks)
    out = [BOM] if draw(st.booleans()) else []
    previous = b""

    def ending() -> bytes:
        nonlocal previous
        chosen = draw(st.sampled_from(ENDINGS))
        previous = chosen
        return chosen

    for i, block in enumerate(drawn):
        last = i == len(drawn) - 1
        for j, line in enumerate(block):
            out.append(encode_line(line))
            if not (last and j == len(block) - 1 and draw(st.booleans())):
                out.append(ending())
        if not last or draw(st.booleans()):
            # A blank line right after a CR must not start with LF: CR LF would be one line break.
            blank = ending()
            if out[-2:-1] and out[-1] == b"\r" and blank == b"\n":
                blank = b"\r\n"
            out.append(blank)
    return b"".join(out), expected_events(drawn)


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def parse_chunks(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events = [e for chunk in chunks for e in parser.feed(chunk)]
    return events + parser.close()


@fuzz(400)
@given(framed_streams(), st.lists(st.integers(0, 400), max_size=8))
def test_sse_framed_stream_any_split_gives_the_spec_events(stream: tuple[bytes, list[SSEEvent]], cuts: list[int]):
    data, expected = stream
    assert parse_chunks(splits(data, cuts)) == expected
    assert parse_chunks([data[i : i + 1] for i in range(len(data))]) == expected


# Arbitrary bytes, weighted towards the characters that matter to framing.
framing_bytes = st.lists(
    st.sampled_from([b"\n", b"\r", b"\r\n", b":", b" ", b"data", b"event", b"x", BOM, b"\xef", b"\xbb", b"\xff"])
    | st.binary(max_size=3),
    max_size=40,
).map(b"".join)


@fuzz(400)
@given(framing_bytes, st.lists(st.integers(0, 120), max_size=10))
def test_sse_arbitrary_bytes_same_events_whatever_the_split(data: bytes, cuts: list[int]):
    whole = parse_chunks([data])
    assert parse_chunks(splits(data, cuts)) == whole
    assert parse_chunks([data[i : i + 1] for i in range(len(data))]) == whole
    for event in whole:  # nothing of the framing leaks into what is delivered
        assert b"\r" not in event.data and (event.comment or b"\n\n" not in event.data)


@fuzz(200)
@given(st.lists(st.tuples(st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"")), names), max_size=5))
def test_sse_encoded_events_round_trip(events: list[tuple[bytes, str]]):
    """Whatever the gateway writes (data with LFs, any event name) its own parser reads back unchanged."""
    stream = b"".join(encode_event(data, name or None) for data, name in events)
    assert parse_chunks([stream]) == [SSEEvent(data, name or None) for data, name in events]


def test_sse_bom_only_at_the_start_and_a_cr_split_from_its_lf():
    """Regressions the properties above guard: a BOM split across reads, and CR | LF across a read."""
    assert parse_chunks([b"\xef", b"\xbb", b"\xbfdata: a\r", b"\n\r", b"\n"]) == [SSEEvent(b"a")]
    assert parse_chunks([b"data: " + BOM + b"\r\n\r\n"]) == [SSEEvent(BOM)]


# --- one gateway for the module, in front of a permissive mock of all three formats ------------------

MARKER = "fuzz-ok"
ROUTE_MODELS = ("to-chat", "to-claude", "to-gem")


def _sse(payload: Any, event: str | None = None) -> bytes:
    return encode_event(orjson.dumps(payload), event)


def _chat_answer(stream: bool, completions: bool) -> tuple[bytes, bool]:
    if completions:
        answer = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "u"}
        answer["choices"] = [{"text": MARKER, "index": 0, "finish_reason": "stop"}]
        return (_sse(answer) + b"data: [DONE]\n\n", True) if stream else (orjson.dumps(answer), False)
    base = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "u"}
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if not stream:
        message = {"role": "assistant", "content": MARKER}
        return orjson.dumps({**base, "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                             "usage": usage}), False  # fmt: skip
    base["object"] = "chat.completion.chunk"
    events = [
        _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
        _sse({**base, "choices": [{"index": 0, "delta": {"content": MARKER}, "finish_reason": None}]}),
        _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        _sse({**base, "choices": [], "usage": usage}),
        b"data: [DONE]\n\n",
    ]
    return b"".join(events), True


def _anthropic_answer(stream: bool) -> tuple[bytes, bool]:
    usage = {"input_tokens": 3, "output_tokens": 2}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "u", "stop_reason": None,
               "stop_sequence": None, "usage": usage}  # fmt: skip
    if not stream:
        content = [{"type": "text", "text": MARKER}]
        return orjson.dumps({**message, "content": content, "stop_reason": "end_turn"}), False
    events = [
        _sse({"type": "message_start", "message": {**message, "content": []}}, "message_start"),
        _sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        ),
        _sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": MARKER}},
            "content_block_delta",
        ),
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 2},
            },
            "message_delta",
        ),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
    return b"".join(events), True


def _gemini_answer(stream: bool) -> tuple[bytes, bool]:
    body = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": MARKER}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5},
        "modelVersion": "u",
    }
    return (_sse(body), True) if stream else (orjson.dumps(body), False)


async def mock_upstream(request: web.Request) -> web.Response:
    """Answers whatever it is sent (the gateway decides what is valid) in the format its path names."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    stream = isinstance(body, dict) and body.get("stream") is True
    path = request.path
    if path.startswith("/oa/"):
        if path == "/oa/chat/completions":
            answer, sse = _chat_answer(stream, completions=False)
        elif path == "/oa/completions":
            answer, sse = _chat_answer(stream, completions=True)
        elif path == "/oa/embeddings":
            data = [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}]
            answer, sse = orjson.dumps({"object": "list", "data": data, "model": "u"}), False
        else:  # a passthrough: files, batches, anything
            answer, sse = orjson.dumps({"object": "list", "data": [], "echo": MARKER}), False
    elif path == "/an/messages/count_tokens":
        answer, sse = orjson.dumps({"input_tokens": 3}), False
    elif path == "/an/messages":
        answer, sse = _anthropic_answer(stream)
    elif path.startswith("/ge/models/") and path.endswith(":countTokens"):
        answer, sse = orjson.dumps({"totalTokens": 3}), False
    elif path.startswith("/ge/models/"):
        answer, sse = _gemini_answer(path.endswith(":streamGenerateContent"))
    else:
        return web.Response(status=404, text="unknown mock path")
    return web.Response(body=answer, content_type="text/event-stream" if sse else "application/json")


@dataclass
class FuzzGateway:
    port: int = 0
    errors: list[logging.LogRecord] = field(default_factory=list)

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            headers = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def tracebacks(self) -> list[str]:
        found = [f"{r.name}: {r.getMessage()}" + (" (with traceback)" if r.exc_info else "") for r in self.errors]
        self.errors.clear()
        return found


class _ErrorCollector(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[FuzzGateway]:
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []
    gateway = FuzzGateway()

    async def setup() -> None:
        mock = web.Application()
        mock.router.add_route("*", "/{tail:.*}", mock_upstream)
        runner = web.AppRunner(mock, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        timeout = {"connect": 2, "first_byte": 5, "idle": 5, "total": 10}
        config = parse_config(
            {
                "store": {"path": str(tmp_path_factory.mktemp("fuzz") / "responses.db")},
                "server": {"max_body_bytes": 65536},
                "connections": [
                    {
                        "name": "chat",
                        "provider": "openai_compatible",
                        "base_url": f"{url}/oa",
                        "api_key": "sk-fuzz-1",
                        "timeout": timeout,
                    },
                    {
                        "name": "claude",
                        "provider": "anthropic",
                        "base_url": f"{url}/an",
                        "api_key": "sk-fuzz-2",
                        "timeout": timeout,
                    },
                    {
                        "name": "gem",
                        "provider": "gemini",
                        "base_url": f"{url}/ge",
                        "api_key": "sk-fuzz-3",
                        "timeout": timeout,
                    },
                ],
                "routes": {"to-chat*": ["chat"], "to-claude*": ["claude"], "to-gem*": ["gem"]},
            },
            "fuzz.yaml",
        )
        runner = await start(config, "127.0.0.1", 0)
        runners.append(runner)
        gateway.port = runner.addresses[0][1]

    async def cleanup() -> None:
        for runner in reversed(runners):
            await runner.cleanup()

    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(setup())
        ready.set()
        loop.run_forever()

    collector = _ErrorCollector(gateway.errors)
    logging.getLogger().addHandler(collector)
    thread = threading.Thread(target=run, name="fuzz-gateway", daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the gateway did not start"
        yield gateway
    finally:
        asyncio.run_coroutine_threadsafe(cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        logging.getLogger().removeHandler(collector)


# --- checking answers ---------------------------------------------------------------------------------

OPENAI, ANTHROPIC, GEMINI = "openai", "anthropic", "gemini"


def check_error(api: str, status: int, body: bytes) -> None:
    """A 4xx in exactly the error shape clients of `api` parse."""
    assert 400 <= status < 500, (status, body[:300])
    error = orjson.loads(body)
    if api == ANTHROPIC:
        assert set(error) == {"type", "error"} and error["type"] == "error", error
        assert set(error["error"]) == {"type", "message"}, error
        assert isinstance(error["error"]["type"], str) and isinstance(error["error"]["message"], str), error
    elif api == GEMINI:
        assert set(error) == {"error"} and set(error["error"]) == {"code", "message", "status"}, error
        assert error["error"]["code"] == status and isinstance(error["error"]["status"], str), error
        assert isinstance(error["error"]["message"], str), error
    else:
        assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}, error
        inner = error["error"]
        assert isinstance(inner["message"], str) and isinstance(inner["type"], str), error
        assert all(inner[k] is None or isinstance(inner[k], str) for k in ("param", "code")), error


def is_error_event(event: SSEEvent) -> bool:
    """An error event of any client format: OpenAI `{"error": ...}`, Anthropic `{"type": "error"}`,
    Responses `error` / `response.failed`, Gemini `{"error": ...}`."""
    try:
        payload = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(payload, dict):
        return False
    return bool(payload.get("error")) or payload.get("type") in ("error", "response.failed")


def check_answer(
    gw: FuzzGateway, api: str, status: int, headers: dict[str, str], body: bytes, *, valid: bool, served: bytes = b""
) -> None:
    """Never a 5xx or a logged traceback; a 4xx in the API's error format; a valid request served (its
    answer holds `served`: the mock's marker, or what the endpoint answers with)."""
    assert gw.tracebacks() == [], (status, body[:500])
    assert status < 500, (status, body[:500])
    if status >= 400:
        assert not valid, f"a valid request was refused: {status} {body[:500]!r}"
        check_error(api, status, body)
        return
    assert status == 200, (status, body[:300])
    if headers.get("content-type", "").startswith("text/event-stream"):
        events = parse_chunks([body])
        assert events, body[:300]
        # A stream the upstream served completely ends cleanly: no error event in any format.
        assert not [e for e in events if is_error_event(e)], body[:800]
    if valid:
        assert served in body, body[:800]


# --- request bodies -------------------------------------------------------------------------------------

text = st.text(max_size=12)
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
    | st.sampled_from(["", "user", "assistant", "system", "tool", "text", "function", "auto", "none", "image_url"])
)
KNOWN_KEYS = [
    "role", "content", "type", "text", "parts", "name", "arguments", "tool_calls", "tool_call_id", "function",
    "input_schema", "parameters", "id", "image_url", "url", "source", "data", "mimeType", "inlineData",
    "functionCall", "functionResponse", "args", "response", "thought", "tool_use_id", "input", "output",
    "call_id", "thinking", "signature", "cache_control", "system", "tools", "tool_choice", "max_tokens",
    "temperature", "top_p", "stream", "stop", "n", "logprobs", "response_format", "json_schema", "schema",
    "instructions", "reasoning", "effort", "text.format", "format", "generationConfig", "toolConfig",
    "functionCallingConfig", "mode", "allowedFunctionNames", "systemInstruction", "contents", "messages",
    "thinkingConfig", "thinkingBudget", "budget_tokens", "metadata", "user_id", "store", "previous_response_id",
    "output_config", "stop_sequences", "max_output_tokens", "stream_options", "include_usage", "functionDeclarations",
    "responseMimeType", "responseSchema", "candidateCount", "maxOutputTokens", "file", "file_data", "input_image",
    "reasoning_effort", "max_completion_tokens", "parallel_tool_calls", "user", "topP", "stopSequences",
    "thinkingLevel", "includeThoughts", "disable_parallel_tool_use", "is_error", "refusal", "reasoning_content",
    "function_call", "function_call_output", "output_text", "input_text", "text", "media_type", "title",
    "strict", "modalities", "audio", "prediction", "seed", "top_k", "presence_penalty", "background", "include",
]  # fmt: skip
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=6)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8
)


def _paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every place inside `value` (below the root) a mutation can hit."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield (*path, key)
        yield from _paths(inner, (*path, key))


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[dict], fields: tuple[str, ...] = ()) -> dict:
    """A valid body with one to three things wrong: one of the API's own top-level `fields` set to
    junk, a value of the wrong type or nested junk, a key removed, or a known key added where it does
    not belong."""
    body = copy.deepcopy(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        if fields and draw(st.booleans()):
            body[draw(st.sampled_from(fields))] = draw(json_values)
            continue
        containers = [(), *(p for p in _paths(body) if isinstance(_at(body, p), dict | list))]
        where = draw(st.sampled_from(containers))
        container = _at(body, where)
        members = list(container) if isinstance(container, dict) else list(range(len(container)))
        action = draw(st.sampled_from(["replace", "delete", "add"])) if members else "add"
        if action == "add":
            if isinstance(container, dict):
                container[draw(keys)] = draw(json_values)
            else:
                container.insert(draw(st.integers(0, len(container))), draw(json_values))
        else:
            member = draw(st.sampled_from(members))
            if action == "replace":
                container[member] = draw(json_values)
            else:
                del container[member]
    return body


def _at(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


def _dump(body: Any) -> bytes:
    # json, not orjson: integers beyond 64 bits, NaN and Infinity reach the gateway as clients may send them
    return json.dumps(body).encode()


models = st.sampled_from(ROUTE_MODELS)
system_text = st.one_of(words, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": words}), min_size=1))
chat_content = words | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": words}), min_size=1, max_size=2)
maybe = st.booleans()


@st.composite
def chat_bodies(draw: st.DrawFn, model: st.SearchStrategy[str] = models) -> dict:
    messages = [{"role": "system", "content": draw(words)}] if draw(maybe) else []
    for _ in range(draw(st.integers(0, 2))):
        messages += [{"role": "user", "content": draw(chat_content)}, {"role": "assistant", "content": draw(words)}]
    messages.append({"role": "user", "content": draw(chat_content)})
    body: dict[str, Any] = {"model": draw(model), "messages": messages}
    if draw(maybe):
        body["stream"] = draw(st.booleans())
    if draw(maybe):
        body["max_tokens"] = draw(st.integers(1, 4096))
    if draw(maybe):
        body["temperature"] = draw(st.floats(0, 1))
    if draw(maybe):
        body["stop"] = draw(st.lists(words, min_size=1, max_size=2))
    if draw(maybe):
        function = {"name": draw(st.from_regex(r"[a-z_]{1,10}", fullmatch=True)), "description": draw(words),
                    "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}  # fmt: skip
        body["tools"] = [{"type": "function", "function": function}]
        body["tool_choice"] = draw(st.sampled_from(["auto", "none", "required"]))
    return body


@st.composite
def completion_bodies(draw: st.DrawFn) -> dict:
    body = {"model": "to-chat", "prompt": draw(words | st.lists(words, min_size=1, max_size=2))}
    if draw(maybe):
        body["stream"] = draw(st.booleans())
    if draw(maybe):
        body["max_tokens"] = draw(st.integers(1, 100))
    return body


embedding_bodies = st.fixed_dictionaries(
    {"model": st.just("to-chat"), "input": words | st.lists(words, min_size=1, max_size=3)}
)


@st.composite
def responses_bodies(draw: st.DrawFn) -> dict:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        given_input: Any = draw(words)
    elif kind == 1:
        given_input = [{"role": "user", "content": draw(words)}]
    else:
        given_input = [{"role": "user", "content": [{"type": "input_text", "text": draw(words)}]}]
    body: dict[str, Any] = {"model": draw(models), "input": given_input}
    if draw(maybe):
        body["instructions"] = draw(words)
    if draw(maybe):
        body["stream"] = draw(st.booleans())
    if draw(maybe):
        body["max_output_tokens"] = draw(st.integers(16, 4096))
    if draw(maybe):
        body["temperature"] = draw(st.floats(0, 1))
    if draw(maybe):
        body["store"] = draw(st.booleans())
    if draw(maybe):
        body["tools"] = [{"type": "function", "name": "get_x", "parameters": {"type": "object", "properties": {}}}]
    return body


@st.composite
def anthropic_bodies(draw: st.DrawFn, count: bool = False) -> dict:
    messages: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        messages += [{"role": "user", "content": draw(chat_content)}, {"role": "assistant", "content": draw(words)}]
    messages.append({"role": "user", "content": draw(chat_content)})
    body: dict[str, Any] = {"model": draw(models), "messages": messages}
    if not count:
        body["max_tokens"] = draw(st.integers(1, 4096))
        if draw(maybe):
            body["stream"] = draw(st.booleans())
        if draw(maybe):
            body["temperature"] = draw(st.floats(0, 1))
        if draw(maybe):
            body["stop_sequences"] = draw(st.lists(words, min_size=1, max_size=2))
    if draw(maybe):
        body["system"] = draw(system_text)
    if draw(maybe):
        body["tools"] = [{"name": "get_x", "description": draw(words), "input_schema": {"type": "object"}}]
    return body


@st.composite
def gemini_bodies(draw: st.DrawFn) -> dict:
    contents: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        contents += [{"role": "user", "parts": [{"text": draw(words)}]}, {"role": "model", "parts": [{"text": "ok"}]}]
    contents.append({"role": "user", "parts": [{"text": draw(words)}]})
    body: dict[str, Any] = {"contents": contents}
    if draw(maybe):
        body["systemInstruction"] = {"parts": [{"text": draw(words)}]}
    if draw(maybe):
        body["generationConfig"] = {"temperature": draw(st.floats(0, 1)), "maxOutputTokens": draw(st.integers(1, 999))}
    if draw(maybe):
        declaration = {"name": "get_x", "description": draw(words), "parameters": {"type": "object"}}
        body["tools"] = [{"functionDeclarations": [declaration]}]
    return body


@dataclass(frozen=True)
class Endpoint:
    path: str
    api: str
    valid: st.SearchStrategy[dict]
    served: bytes = MARKER.encode()  # in every answer to a valid request
    fields: tuple[str, ...] = ()  # the API's own top-level fields


CHAT_FIELDS = (
    "model", "messages", "stream", "tools", "tool_choice", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "reasoning_effort", "user", "metadata", "stop", "response_format", "n", "logprobs",
    "parallel_tool_calls", "stream_options",
)  # fmt: skip
RESPONSES_FIELDS = (
    "model", "input", "instructions", "stream", "tools", "tool_choice", "text", "reasoning", "max_output_tokens",
    "temperature", "top_p", "store", "previous_response_id", "metadata", "user", "parallel_tool_calls",
    "background", "include",
)  # fmt: skip
MESSAGES_FIELDS = (
    "model", "messages", "max_tokens", "stream", "system", "tools", "tool_choice", "temperature", "top_p",
    "stop_sequences", "metadata", "thinking", "output_config",
)  # fmt: skip
GEMINI_FIELDS = ("contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings")


GEMINI_METHODS = ("generateContent", "streamGenerateContent", "streamGenerateContent?alt=sse")
ENDPOINTS = {
    "chat": Endpoint("/v1/chat/completions", OPENAI, chat_bodies(), fields=CHAT_FIELDS),
    "completions": Endpoint("/v1/completions", OPENAI, completion_bodies(), fields=("prompt", "max_tokens", "stream")),
    "embeddings": Endpoint("/v1/embeddings", OPENAI, embedding_bodies, b'"embedding"', ("input", "dimensions")),
    "responses": Endpoint("/v1/responses", OPENAI, responses_bodies(), fields=RESPONSES_FIELDS),
    "messages": Endpoint("/v1/messages", ANTHROPIC, anthropic_bodies(), fields=MESSAGES_FIELDS),
    "count_tokens": Endpoint(
        "/v1/messages/count_tokens", ANTHROPIC, anthropic_bodies(count=True), b'"input_tokens"', MESSAGES_FIELDS
    ),
    **{
        f"{version} {method}": Endpoint(
            f"/{version}/models/{{model}}:{method}", GEMINI, gemini_bodies(), fields=GEMINI_FIELDS
        )
        for version in ("v1beta", "v1")
        for method in GEMINI_METHODS
    },
    **{
        f"{version} countTokens": Endpoint(
            f"/{version}/models/{{model}}:countTokens", GEMINI, gemini_bodies(), b'"totalTokens"', GEMINI_FIELDS
        )
        for version in ("v1beta", "v1")
    },
}
POST_PATHS = [*ENDPOINTS]


def _path(endpoint: Endpoint, model: str) -> str:
    return endpoint.path.replace("{model}", urllib.parse.quote(model, safe=""))


@pytest.mark.parametrize("name", POST_PATHS)
@fuzz(12)
@given(data=st.data())
def test_valid_bodies_are_served(gw: FuzzGateway, name: str, data: st.DataObject):
    endpoint = ENDPOINTS[name]
    body = data.draw(endpoint.valid)
    status, headers, answer = gw.call("POST", _path(endpoint, data.draw(models)), _dump(body))
    check_answer(gw, endpoint.api, status, headers, answer, valid=True, served=endpoint.served)


@pytest.mark.parametrize("name", POST_PATHS)
@fuzz(40)
@given(data=st.data())
def test_plausible_bodies_with_wrong_parts(gw: FuzzGateway, name: str, data: st.DataObject):
    """Right keys with wrong types and values, nested junk, keys missing or added: served or a 4xx."""
    endpoint = ENDPOINTS[name]
    body = data.draw(mutated(endpoint.valid, endpoint.fields))
    status, headers, answer = gw.call("POST", _path(endpoint, data.draw(models | words)), _dump(body))
    check_answer(gw, endpoint.api, status, headers, answer, valid=False)


not_objects = (
    st.binary(max_size=64)
    | st.text(max_size=30).map(str.encode)
    | json_values.filter(lambda v: not isinstance(v, dict)).map(_dump)
    | st.sampled_from([b"", b"{", b'{"model": "to-chat"', b"\xef\xbb\xbf{}", b"[{}]", b"null", b"NaN", b"{}" * 2])
)


@fuzz(120)
@given(st.sampled_from(POST_PATHS), not_objects)
def test_non_object_bodies_get_a_400_in_the_apis_format(gw: FuzzGateway, name: str, raw: bytes):
    endpoint = ENDPOINTS[name]
    if raw.lstrip(b" \t\r\n").startswith(b"{"):
        try:
            if isinstance(orjson.loads(raw), dict):
                return
        except orjson.JSONDecodeError:
            pass
    status, _, answer = gw.call("POST", _path(endpoint, "to-chat"), raw)
    assert gw.tracebacks() == []
    assert status == 400, (status, answer[:300])
    check_error(endpoint.api, status, answer)


@fuzz(60)
@given(st.sampled_from(POST_PATHS), st.dictionaries(keys, json_values, max_size=4))
def test_arbitrary_json_objects(gw: FuzzGateway, name: str, body: dict):
    endpoint = ENDPOINTS[name]
    status, headers, answer = gw.call("POST", _path(endpoint, "to-gem"), _dump(body))
    check_answer(gw, endpoint.api, status, headers, answer, valid=False)


gemini_targets = st.text(max_size=20) | st.builds(
    lambda m, method: f"{m}:{method}", st.text(max_size=10), st.sampled_from([*GEMINI_METHODS, "countTokens", "x", ""])
)


@fuzz(60)
@given(st.sampled_from(["/v1beta/models/", "/v1/models/"]), gemini_targets, gemini_bodies())
def test_gemini_paths_any_model_and_method(gw: FuzzGateway, prefix: str, target: str, body: dict):
    quoted = urllib.parse.quote(target, safe=":?=")
    status, headers, answer = gw.call("POST", prefix + quoted, _dump(body))
    api = (
        GEMINI if prefix == "/v1beta/models/" or ":generateContent" in quoted or ":streamGenerate" in quoted else OPENAI
    )
    check_answer(gw, api, status, headers, answer, valid=False)


# --- GET and DELETE endpoints, passthrough ----------------------------------------------------------------

queries = st.dictionaries(
    st.sampled_from(["order", "limit", "after", "x"]),
    st.sampled_from(["asc", "desc", "0", "1", "20", "100", "101", "-1", "1e3", "", "msg_x", "ünï"])
    | st.text(max_size=6),
    max_size=3,
)
ids = st.text(max_size=20)
model_headers = st.sampled_from([{}, {"anthropic-version": "2023-06-01"}, {"x-goog-api-key": "k"}])


@pytest.fixture(scope="module")
def stored_id(gw: FuzzGateway) -> str:
    status, _, answer = gw.call("POST", "/v1/responses", _dump({"model": "to-chat", "input": "hi"}))
    assert status == 200, answer
    return orjson.loads(answer)["id"]


@fuzz(80)
@given(
    st.sampled_from(["GET", "DELETE", "GET items"]),
    st.one_of(ids, st.just("")),
    queries,
    st.booleans(),
)
def test_stored_responses_any_id_and_query(gw: FuzzGateway, stored_id: str, method: str, given_id: str, query, real):
    response_id = stored_id if real and method != "DELETE" else given_id
    path = "/v1/responses/" + urllib.parse.quote(response_id, safe="")
    if method == "GET items":
        path += "/input_items"
    path += "?" + urllib.parse.urlencode(query) if query else ""
    status, headers, answer = gw.call(method.split()[0], path)
    check_answer(gw, OPENAI, status, headers, answer, valid=False)
    if status == 200:
        assert orjson.loads(answer)["object"] in ("response", "list")


@fuzz(60)
@given(st.sampled_from(["/v1/models", "/v1beta/models", "/v1/models/", "/v1beta/models/"]), ids, model_headers)
def test_models_any_name_and_client(gw: FuzzGateway, prefix: str, name: str, headers: dict[str, str]):
    path = prefix + urllib.parse.quote(name, safe="") if prefix.endswith("/") else prefix
    status, response_headers, answer = gw.call("GET", path, headers=headers)
    if prefix.startswith("/v1beta") or "x-goog-api-key" in headers:
        api = GEMINI
    elif "anthropic-version" in headers:
        api = ANTHROPIC
    else:
        api = OPENAI
    check_answer(gw, api, status, response_headers, answer, valid=False)
    if status == 200:
        assert orjson.loads(answer)


@fuzz(60)
@given(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    st.sampled_from(["files", "batches", "uploads", "audio/speech", "fine_tuning/jobs"]) | st.text(max_size=10),
    st.binary(max_size=40),
)
def test_passthrough_any_path_method_and_body(gw: FuzzGateway, method: str, tail: str, raw: bytes):
    path = "/v1/" + urllib.parse.quote(tail, safe="/")
    status, headers, answer = gw.call(method, path, raw or None)
    decoded = urllib.parse.unquote(path)
    api = ANTHROPIC if decoded.startswith("/v1/messages") else OPENAI
    if ":generateContent" in decoded or ":streamGenerateContent" in decoded:
        api = GEMINI
    check_answer(gw, api, status, headers, answer, valid=False)


# --- regressions: what the fuzzer found ------------------------------------------------------------------

HI = [{"role": "user", "content": "hi"}]
GEMINI_HI = [{"role": "user", "parts": [{"text": "hi"}]}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # gemini.parse_generate_request: a systemInstruction part whose text is not a string (TypeError)
        ("/v1beta/models/to-chat:generateContent",
         {"contents": GEMINI_HI, "systemInstruction": {"parts": [{"text": ["x"]}]}}),
        ("/v1beta/models/to-chat:generateContent", {"contents": GEMINI_HI, "systemInstruction": {"parts": 3}}),
        # ... a function declaration that is not an object (AttributeError)
        ("/v1beta/models/to-claude:generateContent", {"contents": GEMINI_HI, "tools": [{"functionDeclarations": [0]}]}),
        # ... generationConfig, toolConfig that are not objects (AttributeError)
        ("/v1/models/to-claude:streamGenerateContent?alt=sse", {"contents": GEMINI_HI, "generationConfig": 2}),
        ("/v1beta/models/to-chat:generateContent", {"contents": GEMINI_HI, "toolConfig": [1]}),
        # ... tools or allowedFunctionNames of the wrong type (TypeError)
        ("/v1beta/models/to-chat:generateContent", {"contents": GEMINI_HI, "tools": 5}),
        ("/v1beta/models/to-chat:generateContent",
         {"contents": GEMINI_HI, "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": 1}}}),
        # anthropic.client._text_of: a system or tool_result text block whose text is not a string (TypeError)
        ("/v1/messages/count_tokens", {"model": "to-chat", "messages": HI, "system": [{"type": "text", "text": []}]}),
        ("/v1/messages", {"model": "to-gem", "max_tokens": 9, "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                          "content": [{"type": "text", "text": {}}]}]}]}),
        # openai_chat / anthropic parse: tools that are not an array (TypeError)
        ("/v1/chat/completions", {"model": "to-claude", "messages": HI, "tools": -5}),
        ("/v1/messages", {"model": "to-gem", "max_tokens": 9, "messages": HI, "tools": True}),
        # a chat reasoning_effort that is not a string reached gemini.build_request (unhashable: TypeError)
        ("/v1/chat/completions", {"model": "to-gem", "messages": HI, "reasoning_effort": [1]}),
        ("/v1/responses", {"model": "to-gem", "input": "hi", "reasoning": {"effort": {"a": 1}}}),
        # scalars a translation computes with: checked like the Responses parser already did
        ("/v1/chat/completions", {"model": "to-claude", "messages": HI, "reasoning_effort": "high", "max_tokens": "9"}),
        ("/v1/messages", {"model": "to-chat", "max_tokens": 9, "messages": HI, "top_p": "1"}),
        ("/v1beta/models/to-claude:generateContent", {"contents": GEMINI_HI, "generationConfig": {"topP": [0.9]}}),
    ],
)  # fmt: skip
def test_regression_malformed_fields_are_a_400_not_a_500(gw: FuzzGateway, path: str, body: dict):
    status, _, answer = gw.call("POST", path, _dump(body))
    api = ANTHROPIC if path.startswith("/v1/messages") else GEMINI if "models/" in path else OPENAI
    assert gw.tracebacks() == []
    assert status == 400, answer
    check_error(api, status, answer)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # a thinking budget above the last effort step: StopIteration inside a coroutine (RuntimeError)
        ("/v1beta/models/to-claude:generateContent",
         {"contents": GEMINI_HI, "generationConfig": {"thinkingConfig": {"thinkingBudget": 10**12}}}),
        ("/v1/messages", {"model": "to-chat", "max_tokens": 9, "messages": HI,
                          "thinking": {"type": "enabled", "budget_tokens": 10**12}}),
    ],
)  # fmt: skip
def test_regression_huge_thinking_budget_is_served(gw: FuzzGateway, path: str, body: dict):
    status, _, answer = gw.call("POST", path, _dump(body))
    assert gw.tracebacks() == []
    assert status == 200 and MARKER.encode() in answer, answer


@pytest.mark.parametrize("version", ["v1beta", "v1"])
def test_regression_gemini_count_tokens(gw: FuzzGateway, version: str):
    """countTokens was a 404 (and under /v1/ in the OpenAI error format): now asked of a Gemini connection
    serving the model, else estimated, and its errors in Gemini's format."""
    body = _dump({"contents": GEMINI_HI})
    status, headers, answer = gw.call("POST", f"/{version}/models/to-gem:countTokens", body)
    assert status == 200 and orjson.loads(answer) == {"totalTokens": 3}, answer
    assert headers["x-gateway-connection"] == "gem"
    status, headers, answer = gw.call("POST", f"/{version}/models/to-chat:countTokens", body)
    assert status == 200 and headers["x-gateway-usage"] == "estimated", answer
    assert orjson.loads(answer)["totalTokens"] >= 1
    status, _, answer = gw.call("POST", f"/{version}/models/to-gem:countTokens", b"[]")
    check_error(GEMINI, status, answer)
    assert gw.tracebacks() == []


def test_metrics_count_the_event_loops_tasks(gw: FuzzGateway):
    """`gateway_asyncio_tasks` (read by the soak benchmark): computed at scrape time, at least the
    task serving the scrape itself."""
    status, _, body = gw.call("GET", "/metrics")
    found = [line for line in body.decode().splitlines() if line.startswith("gateway_asyncio_tasks ")]
    assert status == 200 and len(found) == 1, body[-500:]
    assert float(found[0].split()[1]) >= 1
