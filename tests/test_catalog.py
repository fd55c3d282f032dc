"""Connection tests (CLI and admin endpoint), the model catalog, and aliases."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from openai.types import Model
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from gateway.__main__ import main
from gateway.config.model import ConfigError
from gateway.config.sections import parse_config

from .conftest import CLIENT_KEY, closed_port_url, connection, gateway_config
from .mock_openai import completion, error_handler, stall_handler

ADMIN_TOKEN = "admin-token-456"
FAST = {"connect": 0.5, "first_byte": 0.4, "idle": 0.4, "total": 2}


def listing(*ids: str) -> dict:
    return {"object": "list", "data": [{"id": i, "object": "model", "created": 1, "owned_by": "x"} for i in ids]}


def provider(models: list[str], *, generation=None, listing_handler=None):
    """A mock provider with GET /models and POST /chat/completions."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path.endswith("/models"):
            if listing_handler is not None:
                return await listing_handler(request)
            return web.json_response(listing(*models))
        if generation is not None:
            return await generation(request)
        body = await request.json()
        return web.json_response(completion("Hello!", model=body["model"]))

    return handler


def listing_calls(upstream) -> int:
    return sum(1 for r in upstream.requests if r.method == "GET")


# --- connection tests -----------------------------------------------------------------------------


def raw(status: int, body: bytes):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    return handler


OUTCOMES = {
    "ok": None,
    "auth_error": error_handler(401, "bad key"),
    "not_found": error_handler(404, "The model `m` does not exist", code="model_not_found"),
    "rate_limited": error_handler(429, "slow down", headers={"Retry-After": "3"}),
    "timeout": stall_handler(5),
    "bad_response": raw(200, b"<html>not json</html>"),
}


async def outcome_upstreams(start_upstream) -> dict[str, str]:
    urls = {}
    for status, generation in OUTCOMES.items():
        upstream = await start_upstream(provider(["model-a"], generation=generation))
        urls[status] = upstream.url
    urls["connect_error"] = closed_port_url()
    return urls


def outcome_connections(urls: dict[str, str]) -> list[dict]:
    return [connection(status.replace("_", "-"), url, model="model-a", timeout=FAST) for status, url in urls.items()]


async def test_cli_test_reports_each_outcome(start_upstream, tmp_path, capsys):
    urls = await outcome_upstreams(start_upstream)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config(*outcome_connections(urls))))
    code = await asyncio.to_thread(main, ["test", "--config", str(path), "--json"])
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    results = {r["connection"]: r for r in lines}
    assert code == 1  # not every connection is ok
    for status in urls:
        result = results[status.replace("_", "-")]
        assert result["status"] == status, result
        assert result["latency_ms"] is not None
    ok = results["ok"]
    assert ok["model"] == "model-a" and ok["listing"] == "ok" and ok["listed_models"] == 1
    assert results["timeout"]["latency_ms"] < 1500  # bounded by the connection's own timeouts
    assert "sk-upstream-secret" not in str(lines)


async def test_cli_test_names_connections_and_prints_a_table(start_upstream, tmp_path, capsys):
    upstream = await start_upstream(provider(["model-a", "text-embedding-3-small"]))
    path = tmp_path / "gateway.yaml"
    config = gateway_config(connection("good", upstream), connection("other", closed_port_url(), timeout=FAST))
    path.write_text(yaml.safe_dump(config))
    assert await asyncio.to_thread(main, ["test", "good", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "ok" in out and "model-a" in out and "other" not in out
    chat = [r for r in upstream.requests if r.method == "POST"]
    assert chat[-1].json["model"] == "model-a"  # a chat model from the listing, not the embedding model
    assert chat[-1].json["messages"] == [{"role": "user", "content": "Hi"}]
    assert chat[-1].json["max_tokens"] == 16
    assert await asyncio.to_thread(main, ["test", "missing", "--config", str(path)]) == 2
    assert "no such connection" in capsys.readouterr().err


async def test_connection_test_uses_max_completion_tokens_where_the_connection_says(start_upstream, tmp_path):
    upstream = await start_upstream(provider(["o3-mini"]))
    path = tmp_path / "gateway.yaml"
    conn = connection("reasoner", upstream, model="o3-mini", max_tokens_param="max_completion_tokens")
    path.write_text(yaml.safe_dump(gateway_config(conn)))
    assert await asyncio.to_thread(main, ["test", "--config", str(path), "--json"]) == 0
    body = [r for r in upstream.requests if r.method == "POST"][-1].json
    assert body["max_completion_tokens"] == 16 and "max_tokens" not in body


async def admin_post(url: str, name: str, token: str | None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/admin/connections/{name}/test", headers=headers, json=body) as response,
    ):
        return response.status, await response.json()


async def test_admin_endpoint_reports_each_outcome(start_upstream, start_gateway):
    urls = await outcome_upstreams(start_upstream)
    gateway = await start_gateway(gateway_config(*outcome_connections(urls), admin={"token": ADMIN_TOKEN}))
    for status in urls:
        code, result = await admin_post(gateway.url, status.replace("_", "-"), ADMIN_TOKEN)
        assert code == 200 and result["status"] == status, result
    code, result = await admin_post(gateway.url, "ok", ADMIN_TOKEN, {"model": "model-z"})
    assert result["model"] == "model-z"  # the mock answers with the model it was asked for
    code, error = await admin_post(gateway.url, "nope", ADMIN_TOKEN)
    assert code == 404 and "nope" in error["error"]["message"]


async def test_admin_endpoint_needs_the_admin_token(start_upstream, start_gateway):
    upstream = await start_upstream(provider(["model-a"]))
    gateway = await start_gateway(gateway_config(connection("main", upstream), admin={"token": ADMIN_TOKEN}))
    for token in (None, CLIENT_KEY, "wrong"):
        code, error = await admin_post(gateway.url, "main", token)
        assert code == 401, token
        assert error["error"]["code"] == "invalid_admin_token"
    assert not [r for r in upstream.requests if r.method == "POST"]


async def test_admin_endpoints_are_off_without_a_token(start_upstream, start_gateway):
    upstream = await start_upstream(provider(["model-a"]))
    gateway = await start_gateway(gateway_config(connection("main", upstream)))
    code, error = await admin_post(gateway.url, "main", CLIENT_KEY)
    assert code == 404 and "admin.token" in error["error"]["message"]
    assert not upstream.requests


# --- the model catalog ----------------------------------------------------------------------------


async def get_models(url: str, headers: dict | None = None) -> dict:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}", **(headers or {})}
        async with session.get(f"{url}/v1/models", headers=headers) as response:
            assert response.status == 200
            return await response.json()


async def test_catalog_aggregates_and_deduplicates(start_upstream, start_gateway):
    first = await start_upstream(provider(["model-a", "model-b"]))
    second = await start_upstream(provider(["model-b", "model-c"]))
    mapped = await start_upstream(provider(["never-listed"]))
    gateway = await start_gateway(
        gateway_config(
            connection("first", first, priority=1),
            connection("second", second, priority=2),
            connection("mapped", mapped, priority=3, models={"house-model": "upstream-x", "model-a": "y"}),
            routes={"route-name": ["second"], "glob-*": ["first"]},
            aliases={"fast-text": ["second/model-c"], "model-c": ["first/model-a"]},
        )
    )
    client = gateway.client()
    page = await client.models.list()
    ids = [m.id for m in page.data]
    assert ids == ["model-a", "model-b", "model-c", "house-model", "fast-text", "route-name"]
    owners = {m.id: m.owned_by for m in page.data}
    assert owners["model-a"] == "first" and owners["model-c"] == "second" and owners["fast-text"] == "gateway"
    for m in page.data:
        Model.model_validate(m.model_dump())
    assert listing_calls(mapped) == 0  # its names are the mapping's, not the provider's
    assert (await client.models.retrieve("fast-text")).id == "fast-text"
    gemini = await get_models(gateway.url, {"x-goog-api-key": CLIENT_KEY})
    assert [m["name"] for m in gemini["models"]][:2] == ["models/model-a", "models/model-b"]


async def test_catalog_reads_anthropic_and_gemini_listings(start_upstream, start_gateway):
    async def anthropic(request: web.Request) -> web.Response:
        assert request.headers["anthropic-version"] and request.headers["x-api-key"]
        return web.json_response({"data": [{"type": "model", "id": "claude-x"}], "has_more": False})

    async def gemini(request: web.Request) -> web.Response:
        assert request.headers["x-goog-api-key"]
        return web.json_response({"models": [{"name": "models/gemini-x"}, {"name": "models/gemini-y"}]})

    anthropic_upstream = await start_upstream(anthropic)
    gemini_upstream = await start_upstream(gemini)
    gateway = await start_gateway(
        gateway_config(
            {"name": "claude", "provider": "anthropic", "base_url": anthropic_upstream.url, "api_key": "k1"},
            {"name": "gem", "provider": "gemini", "base_url": gemini_upstream.url, "api_key": "k2"},
        )
    )
    ids = [m["id"] for m in (await get_models(gateway.url))["data"]]
    assert ids == ["claude-x", "gemini-x", "gemini-y"]
    assert anthropic_upstream.requests[0].path == "/models" and "limit=" in anthropic_upstream.requests[0].query


async def test_catalog_caches_and_refreshes_in_the_background(start_upstream, start_gateway):
    models = ["model-a"]
    upstream = await start_upstream(provider(models))
    gateway = await start_gateway(
        gateway_config(connection("main", upstream), catalog={"ttl": 0.6, "refresh_ahead": 0.3, "timeout": 1})
    )
    client = gateway.client()
    assert [m.id for m in (await client.models.list()).data] == ["model-a"]
    assert [m.id for m in (await client.models.list()).data] == ["model-a"]
    assert listing_calls(upstream) == 1  # the second answer came from the cache
    models.append("model-new")
    deadline = time.monotonic() + 3
    while listing_calls(upstream) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert listing_calls(upstream) == 2  # refreshed before expiry, without a client asking
    assert [m.id for m in (await client.models.list()).data] == ["model-a", "model-new"]
    assert listing_calls(upstream) == 2


async def test_dead_upstream_cools_down_and_its_last_good_list_is_served(start_upstream, start_gateway):
    state = {"dead": False}

    async def flaky_listing(request: web.Request) -> web.StreamResponse:
        if state["dead"]:
            await asyncio.sleep(5)
        return web.json_response(listing("model-a"))

    upstream = await start_upstream(provider([], listing_handler=flaky_listing))
    gateway = await start_gateway(
        gateway_config(
            connection("main", upstream),
            catalog={"ttl": 0.3, "refresh_ahead": 0, "timeout": 1, "cooldown": 30},
        )
    )
    client = gateway.client()
    assert [m.id for m in (await client.models.list()).data] == ["model-a"]
    state["dead"] = True
    await asyncio.sleep(0.35)  # past the TTL
    for _ in range(3):
        started = time.monotonic()
        assert [m.id for m in (await client.models.list()).data] == ["model-a"]
        assert time.monotonic() - started < 0.9  # served from the last good list, never waiting on the dead one
    await asyncio.sleep(1.1)  # the one listing call in flight times out; the cooldown starts
    calls = listing_calls(upstream)
    assert [m.id for m in (await client.models.list()).data] == ["model-a"]
    await asyncio.sleep(0.2)
    assert listing_calls(upstream) == calls == 2  # cooling down: not asked again


async def test_never_listed_dead_upstream_answers_within_the_bound(start_upstream, start_gateway):
    async def dead(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response(listing())

    upstream = await start_upstream(provider([], listing_handler=dead))
    gateway = await start_gateway(
        gateway_config(
            connection("main", upstream),
            connection("curated", closed_port_url(), listed_models=["sonar", "sonar-pro"]),
            routes={"my-route": ["main"]},
            catalog={"timeout": 0.3},
        )
    )
    started = time.monotonic()
    ids = [m.id for m in (await gateway.client().models.list()).data]
    assert time.monotonic() - started < 1.0
    assert ids == ["sonar", "sonar-pro", "my-route"]


# --- aliases --------------------------------------------------------------------------------------


async def test_alias_rewrites_the_model_and_falls_back_along_its_list(start_upstream, start_gateway):
    failing = await start_upstream(error_handler(503, "overloaded"))
    serving = await start_upstream(provider([]))
    unrelated = await start_upstream(provider([]))
    gateway = await start_gateway(
        gateway_config(
            connection("unrelated", unrelated, priority=0),
            connection("primary", failing, priority=5),
            connection("backup", serving, priority=9),
            aliases={"gpt-4o-mini": ["primary/llama-3.3-70b", "backup/qwen/qwen3-32b"]},
            routes={"gpt-4o-mini": ["unrelated"]},  # the alias is resolved first
        )
    )
    client = gateway.client()
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    answer = ChatCompletion.model_validate(orjson.loads(raw.content))
    assert answer.choices[0].message.content == "Hello!"
    assert raw.headers["x-gateway-connection"] == "backup"
    assert raw.headers["x-gateway-attempts"].startswith("primary:server_error")
    assert failing.requests[-1].json["model"] == "llama-3.3-70b"
    assert serving.requests[-1].json["model"] == "qwen/qwen3-32b"
    assert not unrelated.requests

    response = await client.responses.create(model="gpt-4o-mini", input="Hi")
    Response.model_validate(response.model_dump())
    assert response.output_text == "Hello!"
    assert serving.requests[-1].json["model"] == "qwen/qwen3-32b"
    assert serving.requests[-1].path.endswith("/chat/completions")
    assert "gpt-4o-mini" in [m.id for m in (await client.models.list()).data]


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"a": []}, "aliases.a: must be a non-empty list"),
        ({"a": ["main"]}, "aliases.a: 'main' is not connection/model"),
        ({"a": ["mian/x"]}, "aliases.a: names no connection 'mian'. Fix: did you mean `main`?"),
        ({"gpt-*": ["main/x"]}, "aliases.gpt-*: is a pattern"),
    ],
)
def test_alias_config_errors(aliases, message):
    config = gateway_config(connection("main", "http://127.0.0.1:9/v1"), aliases=aliases)
    with pytest.raises(ConfigError) as info:
        parse_config(config, "g.yaml")
    assert message in str(info.value)


def test_catalog_and_admin_config():
    base = gateway_config(connection("main", "http://127.0.0.1:9/v1"))
    parsed = parse_config({**base, "catalog": {"ttl": 60, "timeout": 2}, "admin": {"token": "t"}}, "g.yaml")
    assert parsed.catalog.ttl == 60 and parsed.catalog.timeout == 2 and parsed.admin.token == "t"
    assert "t" not in repr(parsed.admin)
    with pytest.raises(ConfigError, match=r"g.yaml: catalog.ttl: must be greater than 0"):
        parse_config({**base, "catalog": {"ttl": 0}}, "g.yaml")
    with pytest.raises(ConfigError, match=r"catalog.tll: unknown key.*did you mean `ttl`"):
        parse_config({**base, "catalog": {"tll": 5}}, "g.yaml")
    with pytest.raises(ConfigError, match=r"connections\[0\].listed_models: must be a list"):
        parse_config(gateway_config(connection("main", "http://127.0.0.1:9/v1", listed_models="x")), "g.yaml")
