"""Thin HTTP handlers: parse the inbound request, hand it to the router, return its answer."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from . import conversations
from .contracts import Dialect, Relay
from .errors import GatewayError
from .formats import canonical as c
from .formats import registry
from .formats.anthropic import client as anthropic_client
from .formats.anthropic import native as anthropic_native
from .formats.base import random_hex
from .formats.canonical import estimate_tokens, request_chars
from .formats.gemini import client as gemini_client
from .formats.gemini import native as gemini_native
from .formats.gemini import upstream as gemini_upstream
from .formats.openai_chat import client as chat_client
from .formats.openai_chat import native as chat_native
from .formats.openai_responses import client as responses_client
from .formats.openai_responses import native as responses_native
from .formats.relay import FormatRelay
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .record import RequestRecord
from .routing.engine import EndHook
from .routing.passthrough import forward
from .routing.plan import plan
from .runtime import GATEWAY, RECORD
from .store import StoredResponse

# Routes that need no client key: probes and scrapers come from other addresses.
PUBLIC_ROUTES = frozenset({"healthz", "readyz", "metrics"})
GEMINI_METHODS = (":generateContent", ":streamGenerateContent", ":countTokens")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


# The API a route's clients speak, for the generation routes; the rest are decided by path and headers.
_ROUTE_API = {
    "chat": Dialect.OPENAI,
    "completions": Dialect.OPENAI,
    "embeddings": Dialect.OPENAI,
    "responses": Dialect.OPENAI,
    "messages": Dialect.ANTHROPIC,
    "count_tokens": Dialect.ANTHROPIC,
    "generate_content_beta": Dialect.GEMINI,  # (under /v1/ only the Gemini methods make a Gemini client)
}


def client_api_for(request: web.Request, route: str) -> Dialect:
    """The API a client speaks: it decides the shape of our answers and errors. By route; on shared
    paths (/v1/models) by the header its SDK always sends; elsewhere by path."""
    api = _ROUTE_API.get(route)
    if api is not None:
        return api
    path = request.path
    if path.startswith("/v1/messages"):
        return Dialect.ANTHROPIC
    if path.startswith("/v1beta/") or any(method in path for method in GEMINI_METHODS):
        return Dialect.GEMINI
    if path.startswith("/v1/models"):
        if "anthropic-version" in request.headers:
            return Dialect.ANTHROPIC
        if "x-goog-api-key" in request.headers:
            return Dialect.GEMINI
    return Dialect.OPENAI


def error_response(api: Dialect, error: GatewayError) -> web.Response:
    """A GatewayError in the error JSON of the client's dialect."""
    return web.Response(
        status=error.status,
        body=registry.APIS[api].error_body(error.status, error.message, error.code, error.param),
        headers={"Content-Type": "application/json", **error.headers},
    )


async def read_json_object(request: web.Request) -> dict[str, Any]:
    config = request.app[GATEWAY].config
    limit = config.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError(413, f"Request body is larger than the limit of {limit} bytes.", code="request_too_large")
    raw = await request.read()  # aiohttp's client_max_size also enforces the limit for chunked bodies
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"Request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "Request body must be a JSON object.", code="invalid_json")
    depth = config.limits.max_json_depth
    # Only a body with more brackets than the limit can be nested deeper (counting them is C-fast).
    if raw.count(b"{") + raw.count(b"[") > depth and _deeper_than(body, depth):
        raise GatewayError(
            400, f"Request body is nested deeper than {depth} levels (limits.max_json_depth).", code="invalid_json"
        )
    return body


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests objects and arrays more than `limit` levels deep (without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if type(item) is dict else item
        stack += [(child, depth + 1) for child in children if type(child) is dict or type(child) is list]
    return False


def _require(body: dict[str, Any], field: str, kinds: type | tuple[type, ...], what: str) -> Any:
    value = body.get(field)
    if value is None:
        raise GatewayError(
            400, f"Missing required parameter: '{field}'.", code="missing_required_parameter", param=field
        )
    if not isinstance(value, kinds) or isinstance(value, bool) or value in ("", []):
        raise GatewayError(400, f"Invalid type for '{field}': expected {what}.", code="invalid_type", param=field)
    return value


def _booleans(body: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if not isinstance(body.get(key, False), bool):
            raise GatewayError(400, f"Invalid type for '{key}': expected a boolean.", code="invalid_type", param=key)


def _openai_handler(
    path: str, required: str, what: str, kinds: type | tuple[type, ...], *, same_model_only: bool = False
):
    """A handler for one OpenAI generation endpoint served through the router. Chat Completions
    reach every connection; completions and embeddings only OpenAI-format ones."""

    async def handler(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        record: RequestRecord = request[RECORD]
        body = await read_json_object(request)
        model = _require(body, "model", str, "a string")
        _require(body, required, kinds, what)
        _booleans(body, "stream")
        native = chat_native.Native(path, body, same_model_only=same_model_only)
        relay: Relay = native
        if path == "/chat/completions":
            relay = FormatRelay(
                native,
                lambda: chat_client.Renderer(model, native.wants_usage),
                lambda: chat_client.parse_request(body),
                gateway.upstreams,
                stream=native.stream,
            )
        return await _serve(request, record, relay, model, body)

    return handler


async def responses(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses: natively where the connection serves it, else translated (to Chat
    Completions or Anthropic Messages); `previous_response_id` resolved from the gateway's own store."""
    gateway = request.app[GATEWAY]
    record: RequestRecord = request[RECORD]
    body = await read_json_object(request)
    model = _require(body, "model", str, "a string")
    if body.get("input") is None:
        raise GatewayError(
            400, "Missing required parameter: 'input'.", code="missing_required_parameter", param="input"
        )
    _booleans(body, "stream", "store")
    rebuilt, previous = await conversations.resolve(gateway.store, body)
    context = responses_client.ResponseContext(body, model, stored=body.get("store") is not False)
    producer = previous.connection if previous is not None and previous.native else None
    native = responses_native.Native(context, rebuilt, producer)
    relay = FormatRelay(
        native,
        lambda: responses_client.Renderer(context),
        lambda: responses_client.parse_request(rebuilt),
        gateway.upstreams,
        stream=body.get("stream") is True,
    )
    keep = conversations.keeper(gateway.store, context, native, previous)
    return await _serve(request, record, relay, model, body, keep)


async def _stored(request: web.Request) -> StoredResponse:
    response_id = request.match_info["response_id"]
    stored = await request.app[GATEWAY].store.get(response_id)
    if stored is None:
        raise GatewayError(404, f"Response with id '{response_id}' not found.", code="not_found", param="response_id")
    return stored


async def get_response(request: web.Request) -> web.Response:
    return _json((await _stored(request)).response)


async def delete_response(request: web.Request) -> web.Response:
    stored = await _stored(request)
    await request.app[GATEWAY].store.delete(stored.id)
    return _json({"id": stored.id, "object": "response", "deleted": True})


async def list_input_items(request: web.Request) -> web.Response:
    """OpenAI list format; `order` (asc / desc, default desc), `limit` (1-100, default 20), `after`."""
    items = conversations.listed_items(await _stored(request))
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise GatewayError(400, "Invalid 'order': expected asc or desc.", param="order")
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise GatewayError(400, "Invalid 'limit': expected a whole number from 1 to 100.", param="limit")
    if order == "desc":
        items.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers)


chat_completions = _openai_handler("/chat/completions", "messages", "an array of messages", list)
completions = _openai_handler("/completions", "prompt", "a string or an array", (str, list))
embeddings = _openai_handler("/embeddings", "input", "a string or an array", (str, list), same_model_only=True)


async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages (Anthropic clients, Claude Code): passed through to Anthropic connections,
    translated for every other one."""
    gateway = request.app[GATEWAY]
    record: RequestRecord = request[RECORD]
    body = await read_json_object(request)
    model = _require(body, "model", str, "a string")
    _require(body, "messages", list, "an array of messages")
    if not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool):
        raise GatewayError(400, "max_tokens: Field required (a whole number).", param="max_tokens")
    _booleans(body, "stream")
    stream = body.get("stream") is True

    def parse() -> c.Request:
        return anthropic_client.parse_request(body)

    native = anthropic_native.Native(body, request.headers)
    relay = FormatRelay(
        native, lambda: anthropic_client.Renderer(model, parse), parse, gateway.upstreams, stream=stream
    )
    return await _serve(request, record, relay, model, body)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages/count_tokens (an Anthropic connection's count, or the estimate)."""
    body = await read_json_object(request)
    model = _require(body, "model", str, "a string")
    _require(body, "messages", list, "an array of messages")
    native = anthropic_native.Native(body, request.headers, path="/messages/count_tokens")
    return await _token_count(
        request, model, native, "input_tokens", lambda: request_chars(anthropic_client.parse_request(body))
    )


async def _token_count(
    request: web.Request, model: str, native: Relay, field: str, chars: Callable[[], int]
) -> web.StreamResponse:
    """A token count: asked of a connection of the client's own format when the model has one,
    otherwise the documented estimate (about four characters per token), marked as such."""
    gateway = request.app[GATEWAY]
    try:
        candidates = [c for c in plan(gateway.config, model, native) if c.skip is None]
    except GatewayError:
        candidates = []
    if candidates:
        request[RECORD].model = model
        return await gateway.router.serve(request, request[RECORD], native, candidates)
    return _json({field: estimate_tokens(chars())}, headers={"x-gateway-usage": "estimated"})


async def generate_content(request: web.Request) -> web.StreamResponse:
    """POST /v1beta/models/{model}:generateContent and :streamGenerateContent (alt=sse: SSE; without:
    a JSON array), also under /v1/ (google-genai's default)."""
    gateway = request.app[GATEWAY]
    record: RequestRecord = request[RECORD]
    model, _, method = request.match_info["target"].partition(":")
    if method not in ("generateContent", "streamGenerateContent", "countTokens") or not model:
        raise GatewayError(
            404, f"Unknown method {method or '(none)'!r}: use generateContent, streamGenerateContent or countTokens."
        )
    if gemini_upstream.MODEL_NAME.fullmatch(model.removeprefix("models/")) is None:
        raise GatewayError(400, f"Invalid model name {model[:100]!r}.", code="invalid_model", param="model")
    body = await read_json_object(request)
    if method == "countTokens":
        return await _gemini_count_tokens(request, model, body)
    sse = method == "streamGenerateContent" and request.query.get("alt") == "sse"
    array = method == "streamGenerateContent" and not sse  # the stream method without SSE answers an array
    relay = FormatRelay(
        gemini_native.Native(body, sse, array=array),
        lambda: gemini_client.Renderer(model, array=array),
        lambda: gemini_client.parse_request(body, sse),
        gateway.upstreams,
        stream=sse,
    )
    return await _serve(request, record, relay, model, body)


async def _gemini_count_tokens(request: web.Request, model: str, body: dict[str, Any]) -> web.StreamResponse:
    """POST .../models/{model}:countTokens (a Gemini connection's count, or the estimate)."""
    inner = body.get("generateContentRequest")  # the other documented shape: a whole generateContent request
    counted = inner if isinstance(inner, dict) else body
    return await _token_count(
        request, model, gemini_native.NativeCountTokens(body), "totalTokens",
        lambda: request_chars(gemini_client.parse_request(counted, False)),
    )  # fmt: skip


def _serve(
    request: web.Request,
    record: RequestRecord,
    relay: Relay,
    model: str,
    body: dict[str, Any],
    on_end: EndHook | None = None,
) -> Awaitable[web.StreamResponse]:
    """Every generation handler ends here: the record learns the request, the router serves it;
    `on_end` hears how its answer ended. (Not a coroutine of its own: each level of awaiting costs
    every request.)"""
    gateway = request.app[GATEWAY]
    record.model, record.stream = model, relay.stream
    if gateway.config.logging.bodies:
        record.request_body = body
    return gateway.router.serve(request, record, relay, plan(gateway.config, model, relay), on_end)


async def model_ids(request: web.Request) -> list[tuple[str, str]]:
    """(id, owner) for every name the gateway serves (the model catalog)."""
    gateway = request.app[GATEWAY]
    return await gateway.catalog.models(gateway.config)


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models (and /v1beta/models): in the shape of the client's dialect (OpenAI's list,
    Anthropic's with the anthropic-version header, Gemini's with x-goog-api-key or the /v1beta path)."""
    api = registry.APIS[request[RECORD].client_api]
    created = request.app[GATEWAY].started_at
    models = [api.model_object(model_id, owner, created) for model_id, owner in await model_ids(request)]
    return _json(api.model_list(models))


async def get_model(request: web.Request) -> web.Response:
    wanted = request.match_info["model"].removeprefix("models/")
    for model_id, owner in await model_ids(request):
        if model_id == wanted:
            api = registry.APIS[request[RECORD].client_api]
            return _json(api.model_object(model_id, owner, request.app[GATEWAY].started_at))
    raise GatewayError(
        404, f"The model {wanted!r} does not exist on this gateway.", code="model_not_found", param="model"
    )


async def passthrough(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    body = await request.read() if request.body_exists else b""
    return await forward(gateway.router, request, request[RECORD], "/" + request.match_info["tail"], body)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: config loaded, at least one connection enabled, not draining. Lists why any is disabled."""
    gateway = request.app[GATEWAY]
    config = gateway.config
    connections = [
        {"name": c.name, "provider": c.provider, "enabled": c.enabled}
        | ({"reason": c.disabled_reason} if not c.enabled else {})
        for c in config.connections
    ]
    reasons = []
    if gateway.draining:
        reasons.append("draining: the gateway is shutting down")
    if not any(c.enabled for c in config.connections):
        reasons.append("no connection is enabled")
    body = {"ready": not reasons, "draining": gateway.draining, "connections": connections}
    if reasons:
        body["reasons"] = reasons
    return web.json_response(body, status=503 if reasons else 200)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if given and REQUEST_ID_RE.match(given) else random_hex(16)
