"""Hostile request bodies and log fields: JSON nested deeper than `limits.max_json_depth` is a 400 in
the client's dialect before any translation (never a 500 or a traceback); log fields a client
chose are cut at 1 KiB, and the text format escapes control characters."""

from __future__ import annotations

import json
import logging

import aiohttp
import orjson
import pytest

from gateway import logs
from gateway.contracts import Dialect
from gateway.errors import Reason
from gateway.record import Attempt, RequestRecord
from tests.conftest import CLIENT_KEY, connection, gateway_config
from tests.mock_openai import completion, json_handler


def nested(depth: int) -> object:
    value: object = "x"
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return value


def deep_bodies(depth: int) -> dict[str, tuple[str, dict]]:
    """A request of every dialect with `depth` levels of nesting in a field that the formats read."""
    deep = nested(depth)
    return {
        "chat": ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                          "metadata": deep}),
        "messages": ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                                      "metadata": deep}),
        "responses": ("/v1/responses", {"model": "m", "input": "hi", "metadata": deep}),
        "gemini": ("/v1beta/models/m:generateContent",
                   {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": deep}),
    }  # fmt: skip


async def post(url: str, body: bytes) -> tuple[int, dict]:
    headers = {
        "Authorization": f"Bearer {CLIENT_KEY}",
        "x-goog-api-key": CLIENT_KEY,
        "Content-Type": "application/json",
    }
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("route", ["chat", "messages", "responses", "gemini"])
async def test_json_nested_too_deep_is_a_400_in_the_clients_dialect(start_upstream, start_gateway, route, caplog):
    upstream = await start_upstream(json_handler(completion()))
    gateway = await start_gateway(gateway_config(connection("main", upstream)))
    path, body = deep_bodies(260)[route]
    raw = json.dumps(body, separators=(",", ":")).encode()  # (orjson itself refuses to write it)
    assert len(raw) < 2000
    with caplog.at_level(logging.ERROR):
        status, answer = await post(gateway.url + path, raw)
    assert status == 400, answer
    if route == "messages":
        assert answer["type"] == "error" and "max_json_depth" in answer["error"]["message"]
    elif route == "gemini":
        assert answer["error"]["status"] == "INVALID_ARGUMENT" and "max_json_depth" in answer["error"]["message"]
    else:
        assert answer["error"]["code"] == "invalid_json" and "max_json_depth" in answer["error"]["message"]
    assert not upstream.requests
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"


async def test_json_within_the_depth_limit_is_served(start_upstream, start_gateway):
    upstream = await start_upstream(json_handler(completion()))
    gateway = await start_gateway(gateway_config(connection("main", upstream), limits={"max_json_depth": 40}))
    path, body = deep_bodies(38)["chat"]
    status, answer = await post(gateway.url + path, json.dumps(body).encode())
    assert status == 200, answer
    assert len(upstream.requests) == 1
    path, body = deep_bodies(41)["chat"]
    status, answer = await post(gateway.url + path, json.dumps(body).encode())
    assert status == 400 and "40 levels" in answer["error"]["message"]


async def test_a_huge_model_name_makes_a_bounded_log_line(start_upstream, start_gateway, caplog):
    upstream = await start_upstream(json_handler(completion()))
    gateway = await start_gateway(gateway_config(connection("main", upstream, model="fixed")))
    model = "m" * 5_000_000
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        status, _ = await post(gateway.url + "/v1/chat/completions", body)
    assert status == 200
    (line,) = [r for r in caplog.records if r.name == "gateway.request"]
    logged = line.fields["model"]
    assert logged.startswith("m" * logs.FIELD_LIMIT) and logged.endswith(
        f"[{5_000_000 - logs.FIELD_LIMIT} more characters]"
    )
    assert len(logs.JsonFormatter().format(line)) < 4 * logs.FIELD_LIMIT


def test_a_newline_in_a_model_name_cannot_forge_a_text_log_line():
    record = RequestRecord(
        "rid", "chat", Dialect.OPENAI, 0.0, model="x\n2026-01-01T00:00:00.000Z INFO gateway.request: request status=200"
    )
    record.attempts.append(Attempt("main", Reason.SERVER_ERROR, detail="upstream said \r\n\x1b[31mred"))
    line = logs.TextFormatter().format(logs.RequestLine(logs.request_fields(record, 0.1)))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "model=x\\n2026" in line
    text = logging.LogRecord("gateway", logging.WARNING, "", 0, "proxy refused %s", ("evil\nhost",), None)
    assert "\n" not in logs.TextFormatter().format(text)
