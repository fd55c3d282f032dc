"""The aiohttp application: routes, the request middleware, and the server lifecycle."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from . import handlers
from .auth import ClientAuth
from .config import Config
from .errors import GatewayError
from .logs import log_request
from .metrics import Metrics
from .record import RequestRecord
from .router import Router
from .state import GATEWAY, RECORD, Gateway
from .store import ResponseStore
from .transport import Transport

log = logging.getLogger("gateway")

_HTTP_MESSAGES = {
    404: "Unknown path: {method} {path}.",
    405: "Method {method} is not allowed on {path}.",
    413: "Request body is larger than the limit of {limit} bytes.",
}


@web.middleware
async def gateway_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every request: a record, client auth, errors in the client's own API format, metrics, a log line."""
    gateway = request.app[GATEWAY]
    route = request.match_info.route.name or "unmatched"
    loop = asyncio.get_running_loop()
    record = RequestRecord(
        request_id=handlers.request_id(request),
        route=route,
        client_api=handlers.client_api_for(request),
        started=loop.time(),
    )
    request[RECORD] = record
    if route in handlers.PUBLIC_ROUTES:  # probes and scrapes: no key, no metrics, no log line
        return await handler(request)
    if gateway.config.logging.bodies:
        record.response_body = bytearray()
    inflight = gateway.metrics.inflight
    inflight.add((route,), 1)
    response: web.StreamResponse | None = None
    try:
        gateway.auth.check(request)
        response = await handler(request)
        if not response.prepared:  # the client gets its answer before the bookkeeping below runs
            await response.prepare(request)
            await response.write_eof()
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
        inflight.add((route,), -1)
        record.status = response.status if response is not None else 499  # 499: the client went away
        duration = loop.time() - record.started
        gateway.metrics.observe(record, duration)
        log_request(record, duration)
    return response


async def _add_gateway_headers(request: web.Request, response: web.StreamResponse) -> None:
    record = request.get(RECORD)
    if record is None:
        return
    response.headers["x-request-id"] = record.request_id
    response.headers["x-gateway-connection"] = record.connection or "none"
    response.headers["x-gateway-attempts"] = record.attempts_header()


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[gateway_middleware], client_max_size=config.server.max_body_bytes)
    transport = Transport()
    store = ResponseStore(config.store.path, config.store.max_age_days, config.store.max_bytes)
    app[GATEWAY] = Gateway(
        config=config,
        transport=transport,
        router=Router(config, transport),
        auth=ClientAuth(config.auth.client_keys),
        metrics=Metrics(config.connections),
        store=store,
        started_at=int(time.time()),
    )

    async def lifecycle(app: web.Application):
        await transport.start()
        await store.open()
        yield
        await transport.close()
        await store.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(_add_gateway_headers)
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
    app.router.add_get("/healthz", handlers.healthz, name="healthz")
    app.router.add_get("/readyz", handlers.readyz, name="readyz")
    app.router.add_get("/metrics", handlers.metrics, name="metrics")
    return app


async def start(config: Config, host: str, port: int) -> web.AppRunner:
    """Start serving; returns the runner (its `addresses` say where, its `app` holds the state)."""
    # handler_cancellation: a client that hangs up cancels its handler, and so its upstream request.
    # shutdown_timeout: how long in-flight requests and streams get to finish once the listener closes.
    runner = web.AppRunner(
        create_app(config),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=config.server.drain_timeout,
    )
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
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


async def serve(config: Config, host: str, port: int) -> None:
    runner = await start(config, host, port)
    enabled = [c.name for c in config.connections if c.enabled]
    log.info("listening on http://%s:%s with connections: %s", host, port, ", ".join(enabled) or "none enabled")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(runner)
