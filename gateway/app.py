"""The aiohttp application: routes, the request middleware, and the server lifecycle."""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import logging
import signal
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from yarl import URL

from . import admin, handlers, paths
from .catalog import Catalog
from .config.model import Config
from .errors import GatewayError
from .metrics import Metrics
from .proxy.listener import ProxySite
from .record import RequestRecord
from .reload import WATCHER, ConfigWatcher
from .runtime import GATEWAY, RECORD, Gateway
from .server import ClientSite, headers_too_large
from .state.memory import MemoryStates
from .store import ResponseStore
from .transport import Transport

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_MESSAGES = {
    404: "Unknown path: {method} {path}.",
    405: "Method {method} is not allowed on {path}.",
    413: "Request body is larger than the limit of {limit} bytes.",
}


@web.middleware
async def bookkeeping(request: web.Request, handler) -> web.StreamResponse:
    """The outer layer of every request: its record, errors in the client's own dialect, metrics, the
    log line, and the headers that say which connections were tried."""
    gateway = request.app[GATEWAY]
    route = request.match_info.route.name or "unmatched"
    loop = asyncio.get_running_loop()
    record = RequestRecord(
        request_id=handlers.request_id(request),
        route=route,
        client_api=handlers.client_api_for(request, route),
        started=loop.time(),
    )
    try:
        fixed, bad_path = paths.canonical(request.raw_path, request.method), None
    except GatewayError as err:
        fixed, bad_path = None, err
    if fixed is not None:  # merged slashes: routed as the path it names
        request, handler = await _rerouted(request, fixed, record)
    request[RECORD] = record
    if record.route in handlers.PUBLIC_ROUTES:  # probes and scrapes: no key, no metrics, no log line
        response = await handler(request)
        response.headers.update(record.headers())
        return response
    if gateway.config.logging.bodies:
        record.response_body = bytearray()
    gateway.begin(record)
    response: web.StreamResponse | None = None
    try:
        if bad_path is not None:
            raise bad_path
        response = await handler(request)
        if not response.prepared:  # the client gets its answer before the bookkeeping below runs
            response.headers.update(record.headers())
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionResetError:  # the client hung up before its answer was written
                record.client_disconnected = True
    except GatewayError as err:
        response = handlers.error_response(record.client_api, err)
    except web.HTTPException as exc:  # aiohttp's own: unknown path, wrong method, body too large
        template = _HTTP_MESSAGES.get(exc.status, exc.reason + ".")
        message = template.format(method=request.method, path=request.path, limit=gateway.config.server.max_body_bytes)
        response = handlers.error_response(record.client_api, GatewayError(exc.status, message))
    except asyncio.CancelledError:
        record.client_disconnected = True
        raise
    except Exception:
        log.exception("internal error serving request %s", record.request_id)
        response = handlers.error_response(record.client_api, GatewayError(500, "Internal gateway error."))
    finally:
        gateway.finish(record, response)
    if not response.prepared:  # an error answer, sent once the middleware returns
        response.headers.update(record.headers())
    return response


async def _rerouted(request: web.Request, path: str, record: RequestRecord) -> tuple[web.Request, Handler]:
    """The request as if it had come with its canonical `path`, and the handler of the route that
    path matches behind the inner middleware layers (the route was matched on the raw path)."""
    clone = request.clone(rel_url=URL.build(path=path, query_string=request.query_string, encoded=True))
    match_info = await request.app.router.resolve(clone)
    match_info.add_app(request.app)
    match_info.freeze()
    clone._match_info = match_info  # as aiohttp's Application._handle sets it
    record.route = match_info.route.name or "unmatched"
    record.client_api = handlers.client_api_for(clone, record.route)
    inner: Handler = match_info.handler
    for layer in reversed(MIDDLEWARES[1:]):
        inner = functools.partial(layer, handler=inner)
    return clone, inner


@web.middleware
async def limits(request: web.Request, handler) -> web.StreamResponse:
    """Bounds every request must keep before anything reads it: `limits.max_header_bytes`."""
    if request[RECORD].route not in handlers.PUBLIC_ROUTES:
        _check_header_size(request, request.app[GATEWAY].config.limits.max_header_bytes)
    return await handler(request)


@web.middleware
async def authentication(request: web.Request, handler) -> web.StreamResponse:
    """`/admin/*` needs the admin token; every other route but the public ones a client key (or a
    loopback peer when no keys are configured). Raises GatewayError(401)."""
    route = request[RECORD].route
    if route in admin.ADMIN_ROUTES:
        admin.check(request)
    elif route not in handlers.PUBLIC_ROUTES:
        request.app[GATEWAY].auth.check(request)
    return await handler(request)


# Outermost first: a limit or an auth failure is answered and logged like any other error.
MIDDLEWARES = (bookkeeping, limits, authentication)


def _check_header_size(request: web.Request, limit: int) -> None:
    """`limits.max_header_bytes` over the request line and all headers together, as a head that reached
    the parser is counted (gateway/server.py refuses one that is not finished within it)."""
    headers = request.raw_headers
    size = len(request.method) + len(request.raw_path) + 12 + 4 * len(headers)
    size += sum(map(len, itertools.chain.from_iterable(headers)))
    if size > limit:
        raise headers_too_large(limit)


def create_app(config: Config, config_path: str | None = None) -> web.Application:
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=config.server.max_body_bytes)
    transport = Transport()
    store = ResponseStore(config.store.path, config.store.max_age_days, config.store.max_bytes)
    catalog = Catalog(transport, config.catalog)
    app[GATEWAY] = Gateway(
        config=config,
        transport=transport,
        metrics=Metrics(config.connections),
        store=store,
        catalog=catalog,
        states=MemoryStates(),
        started_at=int(time.time()),
    )

    watcher = ConfigWatcher(app[GATEWAY], config_path) if config_path is not None else None
    if watcher is not None:
        app[WATCHER] = watcher

    async def lifecycle(app: web.Application):
        await transport.start()
        await store.open()
        await catalog.start()
        if watcher is not None:
            await watcher.start()
        yield
        if watcher is not None:
            await watcher.close()
        await catalog.close()
        await transport.close()
        await store.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions, name="chat")
    app.router.add_post("/v1/completions", handlers.completions, name="completions")
    app.router.add_post("/v1/embeddings", handlers.embeddings, name="embeddings")
    app.router.add_post("/v1/responses", handlers.responses, name="responses")
    app.router.add_get("/v1/responses/{response_id}", handlers.get_response, name="response")
    app.router.add_delete("/v1/responses/{response_id}", handlers.delete_response, name="response_delete")
    app.router.add_get("/v1/responses/{response_id}/input_items", handlers.list_input_items, name="input_items")
    app.router.add_post("/v1/messages", handlers.messages, name="messages")
    app.router.add_post("/v1/messages/count_tokens", handlers.count_tokens, name="count_tokens")
    app.router.add_get("/v1/models", handlers.list_models, name="models")
    app.router.add_get("/v1/models/{model}", handlers.get_model, name="model")
    app.router.add_post("/v1/models/{target}", handlers.generate_content, name="generate_content")
    app.router.add_post("/v1beta/models/{target}", handlers.generate_content, name="generate_content_beta")
    app.router.add_get("/v1beta/models", handlers.list_models, name="models_beta")
    app.router.add_get("/v1beta/models/{model}", handlers.get_model, name="model_beta")
    app.router.add_route("*", "/v1/{tail:.*}", handlers.passthrough, name="passthrough")
    app.router.add_post("/admin/connections/{name}/test", admin.test_connection, name="admin_test")
    app.router.add_post("/admin/reload", admin.reload, name="admin_reload")
    app.router.add_get("/healthz", handlers.healthz, name="healthz")
    app.router.add_get("/readyz", handlers.readyz, name="readyz")
    app.router.add_get("/metrics", handlers.metrics, name="metrics")
    return app


async def start(config: Config, host: str, port: int, config_path: str | None = None) -> web.AppRunner:
    """Start serving; returns the runner (its `addresses` say where, its `app` holds the state)."""
    # handler_cancellation: a client that hangs up cancels its handler, and so its upstream request.
    # shutdown_timeout: how long in-flight requests and streams get to finish once the listener closes.
    # The request handlers' own settings (parser limits, keep-alive, no access log) are gateway/server.py's.
    runner = web.AppRunner(
        create_app(config, config_path), handler_cancellation=True, shutdown_timeout=config.server.drain_timeout
    )
    await runner.setup()
    await ClientSite(runner, config, host, port).start()
    if config.proxy.enabled:  # the HTTPS proxy listener: a site of the same runner, so drain stops it too
        await ProxySite(runner, config).start()
    return runner


async def drain(runner: web.AppRunner) -> None:
    """Graceful stop: readiness fails at once; the listener keeps accepting for `drain_delay` (so load
    balancers and Kubernetes endpoints catch up), then closes; in-flight work gets `drain_timeout`."""
    gateway = runner.app[GATEWAY]
    server = gateway.config.server
    gateway.draining = True
    log.info(
        "draining: not ready; accepting for %gs, then up to %gs for in-flight requests",
        server.drain_delay,
        server.drain_timeout,
    )
    await asyncio.sleep(server.drain_delay)
    await runner.cleanup()
    log.info("drained; exiting")


# The youngest generation is collected every GC_YOUNG_THRESHOLD allocations of container objects.
# Python's default, 700, comes round several times per request, and each collection walks every
# in-flight request's objects: at 64 concurrent requests that was 8% of the instructions per request
# (callgrind). At 10,000 most of a request's objects are gone before a collection sees them.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """For a long-running server: rarer young collections, and the objects that live as long as the
    process (modules, configuration, the app) moved out of the collector's way."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    gc.freeze()


async def serve(config: Config, host: str, port: int, config_path: str | None = None) -> None:
    runner = await start(config, host, port, config_path)
    tune_gc()
    enabled = [c.name for c in config.connections if c.enabled]
    log.info("listening on http://%s:%s with connections: %s", host, port, ", ".join(enabled) or "none enabled")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = runner.app.get(WATCHER)
    reloads: set[asyncio.Task] = set()
    if watcher is not None:

        def on_sighup() -> None:
            task = asyncio.create_task(watcher.reload("SIGHUP"))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    await drain(runner)
