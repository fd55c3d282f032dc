"""`/admin/*`: operator endpoints, behind `admin.token` (a client key is not an admin token)."""

from __future__ import annotations

import hmac

from aiohttp import web

from .errors import GatewayError
from .handlers import read_json_object
from .probe import probe_connection
from .reload import WATCHER
from .runtime import GATEWAY

ADMIN_ROUTES = frozenset({"admin_test", "admin_reload"})


def check(request: web.Request) -> None:
    """Raise unless the request carries the configured admin token; without one the endpoints are off."""
    token = request.app[GATEWAY].config.admin.token
    if token is None:
        raise GatewayError(404, "The admin endpoints are off: set admin.token in the config to use them.")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise GatewayError(
            401, "Admin endpoints need `Authorization: Bearer <admin token>`.", code="invalid_admin_token"
        )


async def test_connection(request: web.Request) -> web.Response:
    """POST /admin/connections/{name}/test, optional JSON body {"model": "..."}: list, then generate once."""
    gateway = request.app[GATEWAY]
    name = request.match_info["name"]
    connection = next((c for c in gateway.config.connections if c.name == name), None)
    if connection is None:
        raise GatewayError(404, f"No connection is named {name!r}.", code="connection_not_found")
    model = None
    if request.body_exists:
        body = await read_json_object(request)
        model = body.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise GatewayError(400, "Invalid 'model': expected a model name.", code="invalid_type", param="model")
    result = await probe_connection(gateway.transport, gateway.config, connection, model)
    return web.json_response(result.as_dict())


async def reload(request: web.Request) -> web.Response:
    """POST /admin/reload: read the config file again; an invalid one is refused and the old one stays."""
    watcher = request.app.get(WATCHER)
    if watcher is None:
        raise GatewayError(400, "This gateway was not started from a config file: there is nothing to reload.")
    error = await watcher.reload("POST /admin/reload")
    if error is not None:
        raise GatewayError(
            400, f"The new configuration was rejected; the running one stays. {error}", code="bad_config"
        )
    return web.json_response({"reloaded": True})
