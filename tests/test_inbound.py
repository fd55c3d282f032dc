"""What the gateway accepts: client auth, bad input, passthrough, and never leaking a key."""

from __future__ import annotations

import logging

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.auth import ClientAuth, is_loopback
from gateway.errors import GatewayError
from gateway.logs import JsonFormatter, TextFormatter

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_openai import completion, error_handler, json_handler, stream_handler, text_stream

MESSAGES = [{"role": "user", "content": "hi"}]


async def post(url: str, *, data: bytes | None = None, json: object = None, headers: dict | None = None):
    async with aiohttp.ClientSession() as session, session.post(url, data=data, json=json, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


@pytest.fixture
async def gw(start_upstream, start_gateway):
    upstream = await start_upstream(json_handler(completion("ok")))
    return await start_gateway(gateway_config(connection("main", upstream), server={"max_body_bytes": 4096}))


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {CLIENT_KEY}"},
        {"x-api-key": CLIENT_KEY},
        {"x-goog-api-key": CLIENT_KEY},
    ],
)
async def test_client_key_accepted_in_every_sdk_header(gw, headers):
    status, _, _ = await post(
        f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, headers=headers
    )
    assert status == 200


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic"), ("/v1beta/models/m:generateContent", "gemini")],
)
@pytest.mark.parametrize("key", [None, "wrong-key"])
async def test_missing_or_wrong_key_is_401_in_the_clients_format(gw, path, shape, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    status, response_headers, body = await post(f"{gw.url}{path}", json={"model": "m"}, headers=headers)
    assert status == 401
    error = orjson.loads(body)
    if shape == "openai":
        assert error["error"]["type"] == "authentication_error" and error["error"]["message"]
    elif shape == "anthropic":
        assert error["type"] == "error" and error["error"]["type"] == "authentication_error"
    else:
        assert error["error"]["code"] == 401 and error["error"]["status"] == "UNAUTHENTICATED"
    assert response_headers["x-gateway-connection"] == "none"


async def test_sdk_with_wrong_key_gets_authentication_error(gw):
    with pytest.raises(openai.AuthenticationError):
        await gw.client(api_key="nope").chat.completions.create(model="m", messages=MESSAGES)


async def test_probes_need_no_key(gw):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{gw.url}/readyz") as response:
            body = await response.json()
            assert response.status == 200 and body["connections"][0]["name"] == "main"


def _request_from(address: str, headers: dict | None = None) -> web.Request:
    class Transport:
        def get_extra_info(self, name, default=None):
            return (address, 50000) if name == "peername" else default

        def is_closing(self):
            return False

    return make_mocked_request("POST", "/v1/chat/completions", headers=headers or {}, transport=Transport())


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("192.0.2.7", False),
        ("2001:db8::1", False),
    ],
)
def test_without_client_keys_only_loopback_is_served(address, loopback):
    assert is_loopback(address) is loopback
    auth = ClientAuth(())
    request = _request_from(address, {"X-Forwarded-For": "127.0.0.1"})  # a forged header changes nothing
    if loopback:
        auth.check(request)
    else:
        with pytest.raises(GatewayError) as caught:
            auth.check(request)
        assert caught.value.status == 401 and "client_keys" in caught.value.message


async def test_without_client_keys_loopback_needs_no_key(start_upstream, start_gateway):
    upstream = await start_upstream(json_handler())
    gw = await start_gateway({"connections": [connection("main", upstream)]})
    status, _, _ = await post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert status == 200
    assert upstream.requests[0].headers["Authorization"] == "Bearer sk-upstream-secret-main"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"messages": []}', "'model'"),
        (b'{"model": 5, "messages": []}', "'model'"),
        (b'{"model": "m"}', "'messages'"),
        (b'{"model": "m", "messages": "hi"}', "'messages'"),
        (b'{"model": "m", "messages": [{"role":"user","content":"x"}], "stream": "yes"}', "'stream'"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_bad_bodies_are_400_in_openai_format(gw, body, fragment):
    status, _, raw = await post(
        f"{gw.url}/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"},
    )
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


async def test_oversized_body_is_413_in_openai_format(gw):
    big = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 10_000}]})
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    status, _, raw = await post(f"{gw.url}/v1/chat/completions", data=big, headers=headers)
    assert status == 413
    assert "4096" in orjson.loads(raw)["error"]["message"]

    async def chunked():  # no Content-Length: the limit must hold while reading
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gw.url}/v1/chat/completions", data=chunked(), headers=headers) as response,
    ):
        assert response.status == 413
        assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_unknown_path_and_method_are_openai_errors(gw):
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as session:
        async with session.get(f"{gw.url}/nothing-here") as response:
            assert response.status == 404
            assert (await response.json())["error"]["message"].startswith("Unknown path")
        async with session.post(f"{gw.url}/healthz") as response:
            assert response.status == 405
            assert "error" in await response.json()


async def test_passthrough_forwards_as_is_once(start_upstream, start_gateway):
    files = await start_upstream(json_handler({"object": "list", "data": []}), prefix="/api/v1")
    failing = await start_upstream(error_handler(500))
    other = await start_upstream(json_handler())
    gw = await start_gateway(gateway_config(connection("files", files), connection("other", other, priority=200)))
    client = gw.client()
    page = await client.files.list(purpose="batch")
    assert page.data == []
    (seen,) = files.requests
    assert (seen.method, seen.path, seen.query) == ("GET", "/api/v1/files", "purpose=batch")
    assert seen.headers["Authorization"] == "Bearer sk-upstream-secret-files"

    uploaded = await client.files.create(file=("data.jsonl", b'{"a": 1}\n'), purpose="batch")
    assert uploaded is not None
    upload = files.requests[-1]
    assert upload.method == "POST" and upload.headers["Content-Type"].startswith("multipart/form-data")
    assert b'{"a": 1}' in upload.body

    gw = await start_gateway(gateway_config(connection("failing", failing), connection("other", other, priority=200)))
    with pytest.raises(openai.InternalServerError):
        await gw.client().batches.list()
    assert len(failing.requests) == 1 and other.requests == []  # never retried, never fallen back


async def test_no_configured_key_in_logs_headers_or_bodies(start_upstream, start_gateway, caplog):
    secret_echo = await start_upstream(error_handler(400, "bad request for key sk-upstream-secret-echo"))
    unauthorized = await start_upstream(error_handler(401, "Incorrect API key provided: sk-upstream-secret-auth"))
    stream = await start_upstream(stream_handler(text_stream(["fine"])))
    gw = await start_gateway(
        gateway_config(
            connection("auth", unauthorized),
            connection("echo", secret_echo, priority=150),
            connection("stream", stream, priority=200),
        )
    )
    caplog.set_level(logging.DEBUG)
    seen: list[bytes] = []
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    for path, body in [
        ("/v1/chat/completions", {"model": "m", "messages": MESSAGES}),
        ("/v1/chat/completions", {"model": "m", "messages": MESSAGES, "stream": True}),
        ("/v1/chat/completions", {"model": "m"}),
        ("/v1/embeddings", {"model": "m", "input": "x"}),
        ("/v1/files", {}),
    ]:
        _status, response_headers, raw = await post(f"{gw.url}{path}", json=body, headers=headers)
        seen.append(raw + repr(response_headers).encode())
    logged = "\n".join(f(r) for r in caplog.records for f in (JsonFormatter().format, TextFormatter().format))
    assert "client_error" in logged and "auth_error" in logged  # the attempts, with their details, were logged
    everything = b"\n".join(seen) + logged.encode()
    assert b"sk-upstream-secret" not in everything
    assert CLIENT_KEY.encode() not in everything
    assert b"[redacted]" in everything  # the echoed key was scrubbed, not the whole body dropped
    assert unauthorized.requests[0].headers["Authorization"] == "Bearer sk-upstream-secret-auth"
