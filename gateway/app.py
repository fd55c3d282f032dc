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
from .record import RequestRecord
from .router import Router
from .state import GATEWAY, RECORD, Gateway
from .transport import Transport

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")

_HTTP_MESSAGES = {
    404: "Unknown path: {method} {path}.",
    405: "Method {method} is not allowed on {path}.",
    413: "Request body is larger than the limit of {limit} bytes.",
}


@web.middleware
async def gateway_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every request: a record, client auth, and errors rendered in the client's own API format."""
    gateway = request.app[GATEWAY]
    route = request.match_info.route.name or "unmatched"
    record = RequestRecord(
        request_id=handlers.request_id(request),
        route=route,
        client_api=handlers.client_api_for(request.path),
        started=asyncio.get_running_loop().time(),
    )
    request[RECORD] = record
    response: web.StreamResponse | None = None
    try:
        if route not in handlers.PUBLIC_ROUTES:
            gateway.auth.check(request)
        response = await handler(request)
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
        record.status = response.status if response is not None else 499
        _log_request(record)
    return response


def _log_request(record: RequestRecord) -> None:
    elapsed = asyncio.get_running_loop().time() - record.started
    access_log.info(
        "%s %s status=%s connection=%s attempts=%s duration=%.3f",
        record.request_id,
        record.route,
        record.status,
        record.connection or "none",
        record.attempts_header() or "-",
        elapsed,
    )


async def _add_gateway_headers(request: web.Request, response: web.StreamResponse) -> None:
    record: RequestRecord | None = request.get(RECORD)
    if record is None:
        return
    response.headers["x-request-id"] = record.request_id
    response.headers["x-gateway-connection"] = record.connection or "none"
    response.headers["x-gateway-attempts"] = record.attempts_header()


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[gateway_middleware], client_max_size=config.server.max_body_bytes)
    transport = Transport()
    app[GATEWAY] = Gateway(
        config=config,
        transport=transport,
        router=Router(config, transport),
        auth=ClientAuth(config.auth.client_keys),
        started_at=int(time.time()),
    )

    async def transport_lifecycle(app: web.Application):
        await transport.start()
        yield
        await transport.close()

    app.cleanup_ctx.append(transport_lifecycle)
    app.on_response_prepare.append(_add_gateway_headers)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions, name="chat")
    app.router.add_post("/v1/completions", handlers.completions, name="completions")
    app.router.add_post("/v1/embeddings", handlers.embeddings, name="embeddings")
    app.router.add_get("/v1/models", handlers.list_models, name="models")
    app.router.add_get("/v1/models/{model}", handlers.get_model, name="model")
    app.router.add_route("*", "/v1/{tail:.*}", handlers.passthrough, name="passthrough")
    app.router.add_get("/healthz", handlers.healthz, name="healthz")
    app.router.add_get("/readyz", handlers.readyz, name="readyz")
    return app


async def start(config: Config, host: str, port: int) -> web.AppRunner:
    """Start serving; returns the runner (its `addresses` say where)."""
    # handler_cancellation: a client that hangs up cancels its handler, and so its upstream request.
    runner = web.AppRunner(create_app(config), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner


async def serve(config: Config, host: str, port: int) -> None:
    runner = await start(config, host, port)
    enabled = [c.name for c in config.connections if c.enabled]
    log.info("listening on http://%s:%s with connections: %s", host, port, ", ".join(enabled) or "none enabled")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
