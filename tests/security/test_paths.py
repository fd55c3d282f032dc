"""Hostile paths: nothing a client sends (path, model, query) reaches an upstream outside the
connection's base path, or skips a route's checks. Raw sockets send each request line exactly as
written (no client library normalises it); every test asserts the status, the error's shape in the
client's dialect, and what reached (or did not reach) the upstream."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from gateway import paths
from gateway.errors import GatewayError
from tests.conftest import CLIENT_KEY, connection, gateway_config
from tests.mock_openai import completion, json_handler

ADMIN_TOKEN = "admin-token-paths"
CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


async def raw(url: str, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None):
    """One request with `target` on the request line byte for byte: (status, parsed JSON body)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = {"Host": parts.netloc, "Authorization": f"Bearer {CLIENT_KEY}", "Connection": "close",
            "Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}  # fmt: skip
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items()), "", ""]
    writer.write("\r\n".join(lines).encode() + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), (orjson.loads(payload) if payload.startswith(b"{") else payload)


@pytest.fixture
async def setup(start_upstream, start_gateway):
    openai_up = await start_upstream(json_handler(completion()), prefix="/base/v1")
    gemini_up = await start_upstream(json_handler({"candidates": []}), prefix="/v1beta")
    gateway = await start_gateway(
        gateway_config(
            connection("main", openai_up, models={"meta-llama/llama-3.3-70b-instruct": "llama"}),
            connection("gem", gemini_up, provider="gemini", priority=200),
            admin={"token": ADMIN_TOKEN},
        )
    )
    return gateway, openai_up, gemini_up


def openai_error(body) -> dict:
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


TRAVERSALS = [
    "/v1/../../admin/secret",
    "/v1/%2e%2e/%2e%2e/admin",
    "/v1/%2E%2E/admin",
    "/v1/files/..%2F..%2Fadmin",
    "/v1/files/./x",
    "/v1/files/%2e/x",
    "/v1/files/a%3Fkey=1",
    "/v1/files/a%23frag",
    "/v1/files/a%00b",
    "/v1/files/a%5C..%5Cadmin",
    "/v1/files/%ff%fe",
]


@pytest.mark.parametrize("target", TRAVERSALS)
async def test_passthrough_paths_that_would_escape_are_refused(setup, target):
    gateway, openai_up, gemini_up = setup
    status, body = await raw(gateway.url, "GET", target)
    assert status == 400, body
    assert openai_error(body)["code"] == "invalid_path"
    assert not openai_up.requests and not gemini_up.requests


@pytest.mark.parametrize(
    "target",
    ["/v1/x/../chat/completions", "/v1/chat%2Fcompletions", "/v1/./chat/completions", "/v1/chat/%2e/completions"],
)
async def test_no_path_form_skips_the_chat_route(setup, target):
    gateway, openai_up, _ = setup
    status, body = await raw(gateway.url, "POST", target, CHAT)
    assert status == 400 and openai_error(body)["code"] == "invalid_path"
    assert not openai_up.requests


async def test_repeated_slashes_are_the_route_they_name(setup):
    gateway, openai_up, _ = setup
    chat = orjson.dumps({"model": "meta-llama/llama-3.3-70b-instruct", "messages": [{"role": "user", "content": "hi"}]})
    status, body = await raw(gateway.url, "POST", "//v1//chat///completions", chat)
    assert status == 200 and body["choices"][0]["message"]["content"] == "Hello there!"
    (received,) = openai_up.requests
    assert received.raw_path == "/base/v1/chat/completions"  # through the chat route: its base path kept
    assert received.json["model"] == "llama"  # the route's model mapping applied


async def test_a_model_id_with_an_encoded_slash_is_still_served(setup):
    gateway, openai_up, _ = setup
    status, body = await raw(gateway.url, "GET", "/v1/models/meta-llama%2Fllama-3.3-70b-instruct")
    assert status == 200 and body["id"] == "meta-llama/llama-3.3-70b-instruct"
    # ... but only there, and only for GET
    status, body = await raw(gateway.url, "POST", "/v1/models/meta-llama%2Fllama:generateContent", b"{}")
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    assert not openai_up.requests


async def test_errors_speak_the_dialect_of_the_route(setup):
    gateway, openai_up, gemini_up = setup
    status, body = await raw(gateway.url, "POST", "/v1/messages/../messages", b"{}")
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    status, body = await raw(gateway.url, "POST", "/v1beta/models/..%2F..%2Fcorpora:generateContent", b"{}")
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    status, body = await raw(gateway.url, "POST", "/v1beta/models/x%3Falt=json%23:generateContent", b"{}")
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    assert not openai_up.requests and not gemini_up.requests


@pytest.mark.parametrize("model", ["../../../../escaped/tunedModels", "x?alt=json#", "a/b", "models/../x", "%2e%2e"])
async def test_a_gemini_model_name_never_leaves_the_models_path(setup, model):
    gateway, openai_up, gemini_up = setup
    body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    status, answer = await raw(gateway.url, "POST", f"/v1beta/models/{model}:generateContent", body)
    assert status in (400, 404), answer  # refused as a path, or as a model name
    # Through translation (an OpenAI client; the Gemini connection passes names through): skipped.
    chat = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    async with aiohttp.ClientSession() as session:
        # the OpenAI connection serves only its mapped name, so the Gemini one is the only candidate
        response = await session.post(
            f"{gateway.url}/v1/chat/completions", data=chat, headers={"Authorization": f"Bearer {CLIENT_KEY}"}
        )
        assert response.status == 400, await response.text()
        assert "not a Gemini model id" in (await response.json())["error"]["message"]
    assert not gemini_up.requests and not openai_up.requests


async def test_the_admin_connection_test_checks_its_model_too(setup):
    gateway, _, gemini_up = setup
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{gateway.url}/admin/connections/gem/test",
            json={"model": "../../x"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        result = await response.json()
    assert response.status == 200 and result["status"] == "unsupported", result
    assert not [r for r in gemini_up.requests if r.method == "POST"]


async def test_a_passthrough_query_is_reencoded_from_its_parameters(setup):
    gateway, openai_up, _ = setup
    status, _ = await raw(gateway.url, "GET", "/v1/files?purpose=fine-tune&after=x%26y&q=%23frag&q=two")
    assert status == 200
    (received,) = openai_up.requests
    path, _, query = received.raw_path.partition("?")
    assert path == "/base/v1/files"
    assert query == "purpose=fine-tune&after=x%26y&q=%23frag&q=two"
    # a passthrough path is quoted segment by segment below the base path
    status, _ = await raw(gateway.url, "GET", "/v1/files/file%20id%C3%A9/content")
    assert status == 200
    assert openai_up.requests[-1].raw_path == "/base/v1/files/file%20id%C3%A9/content"


@pytest.mark.parametrize(
    ("raw_path", "method", "expected"),
    [
        ("/v1/chat/completions", "POST", None),
        ("/v1/chat/completions?x=../..", "POST", None),  # a query is not a path
        ("/v1//chat/completions", "POST", "/v1/chat/completions"),
        ("//v1/models/", "GET", "/v1/models/"),
        ("/v1/files/a%20b", "GET", None),
        ("/v1/models/a%2Fb", "GET", None),
        ("/v1/.well-known", "GET", None),
    ],
)
def test_canonical_paths(raw_path, method, expected):
    assert paths.canonical(raw_path, method) == expected


@pytest.mark.parametrize("raw_path", [*TRAVERSALS, "/v1/models/a%2Fb/c", "/v1/models/..", "/v1/a%2fb"])
def test_refused_paths(raw_path):
    with pytest.raises(GatewayError) as caught:
        paths.canonical(raw_path, "GET")
    assert caught.value.status == 400
