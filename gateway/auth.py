"""Client authentication: no open relay.

With client keys configured, every API request must present one (in whichever header its SDK uses),
compared in constant time. With none configured, only loopback clients are served: a sidecar works out
of the box, a shared service must set keys.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress

from aiohttp import web

from .errors import GatewayError

NO_KEYS_MESSAGE = (
    "This gateway has no client keys configured, so it serves loopback clients only. "
    "To serve other hosts, set auth.client_keys in the config (e.g. [env:GATEWAY_CLIENT_KEY])."
)


@functools.lru_cache(maxsize=4096)
def is_loopback(remote: str | None) -> bool:
    if remote is None:  # a Unix socket: local by construction
        return True
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def presented_key(request: web.Request) -> str | None:
    """The credential the client sent: `Authorization: Bearer`, `x-api-key`, `x-goog-api-key`, or
    on Gemini paths `?key=`."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("x-api-key") or request.headers.get("x-goog-api-key")
    if key:
        return key
    if (
        request.path.startswith("/v1beta/")
        or ":generateContent" in request.path
        or ":streamGenerateContent" in request.path
    ):
        return request.query.get("key") or None  # Gemini's ?key= (the gateway never logs URLs)
    return None


class ClientAuth:
    def __init__(self, client_keys: tuple[str, ...]) -> None:
        self._keys = [key.encode() for key in client_keys]

    def check(self, request: web.Request) -> None:
        """Raise a 401 GatewayError unless the request may be served."""
        if not self._keys:
            if is_loopback(request.remote):
                return
            raise GatewayError(401, NO_KEYS_MESSAGE, code="client_keys_required")
        key = presented_key(request)
        if key is None:
            raise GatewayError(
                401,
                "Missing API key: send a gateway client key as `Authorization: Bearer`, "
                "`x-api-key` or `x-goog-api-key`.",
                code="missing_api_key",
            )
        given = key.encode()
        matched = False
        for known in self._keys:  # compare against every key: the time taken says nothing about which
            matched |= hmac.compare_digest(known, given)
        if not matched:
            raise GatewayError(
                401, "Invalid API key: it is not one of this gateway's client keys.", code="invalid_api_key"
            )
