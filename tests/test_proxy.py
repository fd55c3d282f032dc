"""The openai SDK against the gateway in front of OpenAI-compatible mock upstreams: the happy paths."""

from __future__ import annotations

import aiohttp
import orjson
from aiohttp import web
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_openai import completion, json_handler, stream_handler, text_stream

MESSAGES = [{"role": "user", "content": "Say hello"}]


async def test_chat_non_streaming_rewrites_model_and_credentials(start_upstream, start_gateway):
    upstream = await start_upstream(json_handler(completion("Hi from upstream")))
    gw = await start_gateway(gateway_config(connection("main", upstream, models={"gpt-4o-mini": "llama-3.1-8b"})))
    client = gw.client(organization="org-secret", project="proj-secret")

    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_body={"custom_field": {"kept": True}}
    )
    result = ChatCompletion.model_validate(orjson.loads(raw.content))
    assert result.choices[0].message.content == "Hi from upstream"
    assert raw.headers["x-gateway-connection"] == "main"
    assert raw.headers["x-gateway-attempts"] == "main:ok"
    assert raw.headers["x-request-id"]

    (seen,) = upstream.requests
    assert seen.path == "/chat/completions"
    body = seen.json
    assert body["model"] == "llama-3.1-8b"
    assert body["custom_field"] == {"kept": True}  # unknown fields pass through
    assert "stream_options" not in body
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["authorization"] == "Bearer sk-upstream-secret-main"
    assert CLIENT_KEY not in str(seen.headers)
    assert "openai-organization" not in headers and "openai-project" not in headers
    assert headers["x-request-id"] == raw.headers["x-request-id"]


async def test_chat_streaming_passes_events_and_hides_usage_chunk_unless_asked(start_upstream, start_gateway):
    upstream = await start_upstream(stream_handler(text_stream(["Hel", "lo", "!"])))
    gw = await start_gateway(gateway_config(connection("main", upstream)))
    client = gw.client()

    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    chunks = [ChatCompletionChunk.model_validate(c.model_dump()) async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert upstream.requests[0].json["stream_options"] == {"include_usage": True}

    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 12


async def test_stream_bytes_are_sse_with_done_and_gateway_headers(start_upstream, start_gateway):
    upstream = await start_upstream(stream_handler(text_stream(["a", "b"], done=False)))  # upstream omits [DONE]
    gw = await start_gateway(gateway_config(connection("main", upstream)))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {CLIENT_KEY}", "x-request-id": "req-42"},
        ) as response,
    ):
        text = await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["x-request-id"] == "req-42"
        assert response.headers["x-gateway-attempts"] == "main:ok"
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"  # added after the finish chunk
    assert text.count("[DONE]") == 1
    assert "\r" not in text


async def test_base_url_path_prefix_is_kept(start_upstream, start_gateway):
    upstream = await start_upstream(json_handler(), prefix="/openai/v1")
    gw = await start_gateway(gateway_config(connection("groq-like", upstream)))
    await gw.client().chat.completions.create(model="m", messages=MESSAGES)
    assert upstream.requests[0].path == "/openai/v1/chat/completions"


async def test_model_override_and_route_order(start_upstream, start_gateway):
    a = await start_upstream(json_handler(completion("from a")))
    b = await start_upstream(json_handler(completion("from b")))
    gw = await start_gateway(
        gateway_config(
            connection("a", a, priority=1),
            connection("b", b, priority=2, model="fixed-model"),
            routes={"special-*": ["b", "a"]},
        )
    )
    client = gw.client()
    answer = await client.chat.completions.create(model="special-1", messages=MESSAGES)
    assert answer.choices[0].message.content == "from b"
    assert b.requests[0].json["model"] == "fixed-model"
    answer = await client.chat.completions.create(model="plain", messages=MESSAGES)
    assert answer.choices[0].message.content == "from a"  # priority order without a route
    assert a.requests[0].json["model"] == "plain"


async def test_embeddings_and_completions(start_upstream, start_gateway):
    embedding = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "model": "emb",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    upstream = await start_upstream(json_handler(embedding))
    gw = await start_gateway(gateway_config(connection("main", upstream)))
    result = await gw.client().embeddings.with_raw_response.create(model="emb", input="hi")
    CreateEmbeddingResponse.model_validate(orjson.loads(result.content))
    assert upstream.requests[0].path == "/embeddings"


async def test_models_listing(start_upstream, start_gateway):
    upstream = await start_upstream(json_handler())
    gw = await start_gateway(
        gateway_config(
            connection("a", upstream, models={"gpt-4o-mini": "llama"}),
            connection("b", upstream, model="qwen"),
            routes={"fast": ["a"], "gpt-*": ["b"]},
        )
    )
    client = gw.client()
    ids = [m.id async for m in client.models.list()]
    assert ids == ["gpt-4o-mini", "qwen", "fast"]
    model = await client.models.retrieve("qwen")
    assert model.owned_by == "b"
    assert upstream.requests == []  # served by the gateway itself


async def test_compressed_upstream_bodies_are_not_resent_with_stale_encoding(start_upstream, start_gateway):
    async def gzip_json(request):
        response = web.Response(body=orjson.dumps(completion("zipped " * 50)), content_type="application/json")
        response.enable_compression(web.ContentCoding.gzip)
        return response

    async def gzip_stream(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.enable_compression(web.ContentCoding.gzip)
        await response.prepare(request)
        for event in text_stream(["zip", "ped"]):
            await response.write(event)
        await response.write_eof()
        return response

    json_upstream = await start_upstream(gzip_json)
    stream_upstream = await start_upstream(gzip_stream)
    gw = await start_gateway(
        gateway_config(connection("j", json_upstream), connection("s", stream_upstream), routes={"s": ["s"]})
    )
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {CLIENT_KEY}", "Accept-Encoding": "gzip"},
        ) as response,
    ):
        raw = await response.read()
        encoding = response.headers.get("Content-Encoding")
    assert "gzip" in upstream_accept_encoding(json_upstream)
    assert encoding is None and orjson.loads(raw)["choices"][0]["message"]["content"].startswith("zipped")
    stream = await gw.client().chat.completions.create(model="s", messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "zipped"


def upstream_accept_encoding(upstream) -> str:
    return upstream.requests[0].headers.get("Accept-Encoding", "")
